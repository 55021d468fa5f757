"""Tests of ideal_components.losses against naive implementations written directly from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from ideal_components.losses import (
    CrossPseudoLabelLoss,
    GlobalContrastiveLoss,
    LocalContrastiveLoss,
    SegmentationLoss,
    sigmoid_rampup,
)


def _seed(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# naive references (float64, explicit exp / sum / log, Python loops)
# ----------------------------------------------------------------------------------------------------------------
def naive_local_loss(q, k, t, batch_negatives=False, symmetric=False, indices=None):
    """The paper's L_loc per image, mean over the batch, from explicit loops. q, k: (B, C, *spatial)."""
    b, c = q.shape[:2]
    q = q.reshape(b, c, -1)
    k = k.reshape(b, c, -1)
    if indices is not None:
        q = torch.stack([q[i][:, indices[i]] for i in range(b)])
        k = torch.stack([k[i][:, indices[i]] for i in range(b)])
    n = q.shape[2]

    def one_direction(qq, kk):
        per_image = []
        for img in range(b):
            total = 0.0
            for i in range(n):
                qi = qq[img, :, i] / torch.sqrt((qq[img, :, i] ** 2).sum())
                pos_k = kk[img, :, i] / torch.sqrt((kk[img, :, i] ** 2).sum())
                pos = torch.exp((qi * pos_k).sum() / t)
                neg = 0.0
                for other in range(b) if batch_negatives else [img]:
                    for j in range(n):
                        if other == img and j == i:
                            continue
                        kj = kk[other, :, j] / torch.sqrt((kk[other, :, j] ** 2).sum())
                        neg = neg + torch.exp((qi * kj).sum() / t)
                total = total + torch.log(pos / (pos + neg))
            per_image.append(-total / n)
        return torch.stack(per_image).mean()

    if symmetric:
        return 0.5 * (one_direction(q, k) + one_direction(k, q))
    return one_direction(q, k)


def naive_nt_xent(z1, z2, t):
    b = z1.shape[0]
    z = torch.cat([z1, z2]).reshape(2 * b, z1.shape[1], -1).mean(dim=2)
    z = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for a in range(2 * b):
        p = (a + b) % (2 * b)
        num = torch.exp((z[a] * z[p]).sum() / t)
        den = sum(torch.exp((z[a] * z[c]).sum() / t) for c in range(2 * b) if c != a)
        total = total - torch.log(num / den)
    return total / (2 * b)


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    value = fn(*xs)
    grads = torch.autograd.grad(value, xs)
    return value.detach(), grads


# ----------------------------------------------------------------------------------------------------------------
# LocalContrastiveLoss
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,t,batch_negatives,symmetric",
    [
        ((2, 5, 3, 4), 0.1, False, False),
        ((2, 5, 3, 4), 0.07, False, False),
        ((1, 3, 2, 5), 0.5, False, False),
        ((3, 4, 2, 3), 0.1, True, False),
        ((2, 4, 3, 3), 0.07, False, True),
        ((2, 6, 2, 3), 0.5, True, True),
        ((2, 3, 2, 2, 3), 0.1, False, False),  # 3D maps
    ],
)
def test_local_matches_naive_values_and_grads(shape, t, batch_negatives, symmetric):
    _seed(1)
    q = torch.randn(shape, dtype=torch.float64)
    k = q + 0.5 * torch.randn(shape, dtype=torch.float64)
    loss_fn = LocalContrastiveLoss(temperature=t, batch_negatives=batch_negatives, symmetric=symmetric)
    v_fast, g_fast = _grads(loss_fn, q, k)
    v_ref, g_ref = _grads(lambda a, b: naive_local_loss(a, b, t, batch_negatives, symmetric), q, k)
    assert v_fast.dtype == torch.float64
    torch.testing.assert_close(v_fast, v_ref, atol=1e-5, rtol=0)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch_negatives,symmetric", [(False, False), (True, True)])
def test_local_max_locations_matches_naive_on_same_indices(batch_negatives, symmetric):
    _seed(2)
    shape, m, t = (2, 4, 4, 5), 7, 0.1
    q = torch.randn(shape, dtype=torch.float64)
    k = torch.randn(shape, dtype=torch.float64)
    loss_fn = LocalContrastiveLoss(
        t, batch_negatives, symmetric, max_locations=m, generator=torch.Generator().manual_seed(5)
    )
    indices = LocalContrastiveLoss(t, max_locations=m, generator=torch.Generator().manual_seed(5)).sample_locations(
        2, 20, "cpu"
    )
    assert indices.shape == (2, m)
    assert all(len(set(row.tolist())) == m for row in indices)  # without replacement
    assert not torch.equal(indices[0], indices[1])  # independent per image
    v_fast, g_fast = _grads(loss_fn, q, k)
    v_ref, g_ref = _grads(lambda a, b: naive_local_loss(a, b, t, batch_negatives, symmetric, indices), q, k)
    torch.testing.assert_close(v_fast, v_ref, atol=1e-5, rtol=0)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr, atol=1e-5, rtol=0)
    # locations that were not drawn get no gradient
    drawn = torch.zeros(2, 20, dtype=torch.bool)
    drawn.scatter_(1, indices, True)
    grad_q = g_fast[0].reshape(2, 4, 20)
    for img in range(2):
        assert torch.all(grad_q[img][:, ~drawn[img]] == 0) and grad_q[img][:, drawn[img]].abs().sum() > 0


def test_local_max_locations_not_applied_when_small_and_global_rng():
    _seed(3)
    q, k = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    full = LocalContrastiveLoss(0.1)(q, k)
    torch.testing.assert_close(LocalContrastiveLoss(0.1, max_locations=9)(q, k), full)
    torch.manual_seed(7)
    a = LocalContrastiveLoss(0.1, max_locations=4)(q, k)
    torch.manual_seed(7)
    b = LocalContrastiveLoss(0.1, max_locations=4)(q, k)
    torch.testing.assert_close(a, b)


def test_local_log_n_for_random_features_large_temperature():
    _seed(4)
    b, c, h, w = 2, 512, 6, 8
    q, k = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    loss = LocalContrastiveLoss(temperature=10.0)(q, k)
    assert abs(loss.item() - math.log(h * w)) < 0.01


def test_local_near_zero_for_aligned_separated_features():
    n = 16
    q = torch.eye(n).reshape(1, n, 4, 4).repeat(2, 1, 1, 1)  # one-hot feature per location
    loss = LocalContrastiveLoss(temperature=0.05)(q, q.clone())
    assert loss.item() < 1e-6
    # with batch negatives, the other (identical) image's key at the same location is as close as the positive
    loss_bn = LocalContrastiveLoss(temperature=0.05, symmetric=True, batch_negatives=True)(q, q)
    assert loss_bn.item() == pytest.approx(math.log(2), abs=1e-6)


def test_local_permutation_invariance():
    _seed(5)
    q, k = torch.randn(2, 8, 4, 6), torch.randn(2, 8, 4, 6)
    perm = torch.randperm(24)
    qp = q.flatten(2)[:, :, perm].reshape(2, 8, 4, 6)
    kp = k.flatten(2)[:, :, perm].reshape(2, 8, 4, 6)
    for kwargs in ({}, {"batch_negatives": True, "symmetric": True}):
        loss_fn = LocalContrastiveLoss(0.1, **kwargs)
        torch.testing.assert_close(loss_fn(q, k), loss_fn(qp, kp), atol=1e-6, rtol=1e-6)


def test_local_float32_vs_float64_and_scale_invariance():
    _seed(6)
    q, k = torch.randn(3, 16, 7, 5), torch.randn(3, 16, 7, 5)
    loss_fn = LocalContrastiveLoss(0.07, symmetric=True)
    v32 = loss_fn(q, k)
    v64 = loss_fn(q.double(), k.double())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_fn(3.0 * q, 0.5 * k), v32, atol=1e-5, rtol=1e-5)  # features L2-normalised


def test_local_reductions_and_autocast():
    _seed(7)
    q, k = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4)
    per_image = LocalContrastiveLoss(0.1, reduction="none")(q, k)
    assert per_image.shape == (3,)
    torch.testing.assert_close(LocalContrastiveLoss(0.1, reduction="sum")(q, k), per_image.sum())
    torch.testing.assert_close(LocalContrastiveLoss(0.1)(q, k), per_image.mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = LocalContrastiveLoss(0.1)(q.bfloat16(), k.bfloat16())
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, LocalContrastiveLoss(0.1)(q.bfloat16().float(), k.bfloat16().float()))


def test_local_stable_small_temperature():
    _seed(8)
    q, k = torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 8, 4, 4)
    v = LocalContrastiveLoss(1e-3)(q, k)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(q.grad).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_locations": 1}, "max_locations"),
        ({"max_locations": 2.5}, "max_locations"),
        ({"reduction": "max"}, "max"),
    ],
)
def test_local_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalContrastiveLoss(**kwargs)


@pytest.mark.parametrize(
    "q_shape,k_shape,kwargs,match",
    [
        ((2, 4, 3), (2, 4, 3), {}, "must be"),
        ((2, 4, 3, 3), (2, 4, 3, 4), {}, "same shape"),
        ((0, 4, 3, 3), (0, 4, 3, 3), {}, "empty batch"),
        ((2, 4, 1, 1), (2, 4, 1, 1), {}, "at least 2 locations"),
        ((1, 4, 1, 1), (1, 4, 1, 1), {"batch_negatives": True}, "at least 2 locations"),
    ],
)
def test_local_forward_errors(q_shape, k_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalContrastiveLoss(**kwargs)(torch.randn(q_shape), torch.randn(k_shape))


def test_local_batch_negatives_single_location_ok():
    _seed(9)
    v = LocalContrastiveLoss(0.1, batch_negatives=True)(torch.randn(3, 4, 1, 1), torch.randn(3, 4, 1, 1))
    assert torch.isfinite(v)


# ----------------------------------------------------------------------------------------------------------------
# GlobalContrastiveLoss
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,t", [((4, 6), 0.1), ((3, 5, 4, 4), 0.5), ((2, 3, 2, 2, 2), 0.07)])
def test_global_matches_naive(shape, t):
    _seed(10)
    z1 = torch.randn(shape, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(shape, dtype=torch.float64)
    v_fast, g_fast = _grads(GlobalContrastiveLoss(t), z1, z2)
    v_ref, g_ref = _grads(lambda a, b: naive_nt_xent(a, b, t), z1, z2)
    torch.testing.assert_close(v_fast, v_ref, atol=1e-6, rtol=0)
    for gf, gr in zip(g_fast, g_ref):
        torch.testing.assert_close(gf, gr, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0.5, 0.1, 0.05])
def test_global_matches_monai_contrastive_loss(t):
    _seed(11)
    z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
    ours = GlobalContrastiveLoss(t)(z1, z2)
    theirs = ContrastiveLoss(temperature=t)(z1, z2)  # batch_size is inferred (the argument is deprecated)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_global_stable_where_monai_overflows():
    _seed(12)
    z1 = torch.randn(4, 16)
    t = 0.005  # exp(1 / 0.005) overflows float32
    assert not torch.isfinite(ContrastiveLoss(temperature=t)(z1, z1))
    ours = GlobalContrastiveLoss(t)(z1, z1)
    assert torch.isfinite(ours) and ours.item() < 1e-3


def test_global_errors():
    with pytest.raises(ValueError, match="temperature"):
        GlobalContrastiveLoss(0.0)
    loss_fn = GlobalContrastiveLoss()
    with pytest.raises(ValueError, match="at least 2"):
        loss_fn(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="must be"):
        loss_fn(torch.randn(4), torch.randn(4))


# ----------------------------------------------------------------------------------------------------------------
# CrossPseudoLabelLoss
# ----------------------------------------------------------------------------------------------------------------
def _cps_inputs(b=4, k=3, h=5, w=6, seed=13):
    _seed(seed)
    la, lb = torch.randn(b, k, h, w), torch.randn(b, k, h, w)
    label = torch.randint(0, k, (b, 1, h, w))
    return la, lb, label


def test_cps_matches_hand_computation():
    la, lb, label = _cps_inputs()
    labeled = torch.tensor([True, False, True, False])
    loss_fn = CrossPseudoLabelLoss(unlabeled_weight=0.7)
    out = loss_fn.compute(la, lb, label, labeled)
    m = label[:, 0]
    sup = F.cross_entropy(la[[0, 2]], m[[0, 2]]) + F.cross_entropy(lb[[0, 2]], m[[0, 2]])
    ya, yb = la.argmax(1), lb.argmax(1)
    cps = F.cross_entropy(la[[1, 3]], yb[[1, 3]]) + F.cross_entropy(lb[[1, 3]], ya[[1, 3]])
    torch.testing.assert_close(out["supervised"], sup)
    torch.testing.assert_close(out["cross_pseudo"], cps)
    torch.testing.assert_close(out["loss"], sup + 0.7 * cps)
    assert set(out) == {"loss", "supervised", "cross_pseudo"}
    torch.testing.assert_close(loss_fn(la, lb, label, labeled), out["loss"])
    # 0/1 ints and float labels accepted
    torch.testing.assert_close(loss_fn(la, lb, label.float(), torch.tensor([1, 0, 1, 0])), out["loss"])


def test_cps_dice_term():
    from monai.losses import DiceLoss

    la, lb, label = _cps_inputs()
    labeled = torch.tensor([1, 1, 0, 0])
    out = CrossPseudoLabelLoss(dice_weight=0.5).compute(la, lb, label, labeled)
    dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
    ref = dice(la[:2], label[:2]) + dice(lb[:2], label[:2])
    torch.testing.assert_close(out["dice"], ref)
    torch.testing.assert_close(out["loss"], out["supervised"] + out["cross_pseudo"] + 0.5 * ref)


def test_cps_gradients_stop_at_pseudo_labels():
    la, lb, label = _cps_inputs()
    labeled = torch.tensor([False, False, True, False])
    loss_fn = CrossPseudoLabelLoss()
    # full loss vs. the same loss where the other branch is detached: grads w.r.t. each branch identical
    _, (ga, gb) = _grads(lambda a, b: loss_fn(a, b, label, labeled), la, lb)
    _, (gb_det,) = _grads(lambda b: loss_fn(la.detach(), b, label, labeled), lb)
    _, (ga_det,) = _grads(lambda a: loss_fn(a, lb.detach(), label, labeled), la)
    torch.testing.assert_close(gb, gb_det, atol=0, rtol=0)
    torch.testing.assert_close(ga, ga_det, atol=0, rtol=0)
    # d(unlabelled term)/d(logits_b) is the gradient of CE(p_b, y_a) with y_a constant, and only that
    unl = [0, 1, 3]
    y_a = la.argmax(1)[unl]
    _, (gb_unl,) = _grads(lambda b: loss_fn.compute(la, b, label, labeled)["cross_pseudo"], lb)
    _, (gb_ref,) = _grads(lambda b: F.cross_entropy(b[unl], y_a), lb)
    torch.testing.assert_close(gb_unl, gb_ref, atol=1e-7, rtol=1e-6)
    assert torch.all(gb_unl[2] == 0)  # labelled sample gets no pseudo-label gradient


def test_cps_confidence_threshold_ignores_right_pixels():
    # 1 unlabelled image, 2 classes, 1x3 pixels; A is confident on pixel 0 only, B on pixel 2 only
    la = torch.tensor([[[[4.0, 0.1, 0.0]], [[0.0, 0.0, 0.2]]]])
    lb = torch.tensor([[[[0.0, 0.3, 0.0]], [[0.1, 0.0, 5.0]]]])
    label = torch.zeros(1, 1, 1, 3, dtype=torch.long)
    out = CrossPseudoLabelLoss(confidence_threshold=0.9).compute(la, lb, label, torch.tensor([0]))
    ya, yb = la.argmax(1), lb.argmax(1)
    ref_b = F.cross_entropy(lb[..., :1], ya[..., :1])  # B trained on A's confident pixel 0
    ref_a = F.cross_entropy(la[..., 2:], yb[..., 2:])  # A trained on B's confident pixel 2
    torch.testing.assert_close(out["cross_pseudo"], ref_a + ref_b)
    # everything ignored -> exact 0 that still backpropagates
    la.requires_grad_(True)
    out = CrossPseudoLabelLoss(confidence_threshold=0.999).compute(la, lb, label, torch.tensor([0]))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.all(la.grad == 0)


def test_rampup_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(25, 10) == 1.0
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(3, 0) == 1.0
    assert sigmoid_rampup(None, 10) == 1.0
    with pytest.raises(ValueError, match="rampup_length"):
        sigmoid_rampup(1, -1)
    la, lb, label = _cps_inputs()
    loss_fn = CrossPseudoLabelLoss(unlabeled_weight=2.0, rampup_epochs=10)
    assert loss_fn.unlabeled_weight_at(5) == pytest.approx(2 * math.exp(-1.25))
    labeled = torch.tensor([1, 0, 0, 0])
    out = loss_fn.compute(la, lb, label, labeled, epoch=5)
    torch.testing.assert_close(out["loss"], out["supervised"] + 2 * math.exp(-1.25) * out["cross_pseudo"])
    torch.testing.assert_close(loss_fn(la, lb, label, labeled), out["supervised"] + 2 * out["cross_pseudo"])


@pytest.mark.parametrize("flags", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_cps_all_labelled_or_all_unlabelled(flags):
    la, lb, label = _cps_inputs()
    la.requires_grad_(True)
    lb.requires_grad_(True)
    out = CrossPseudoLabelLoss(dice_weight=1.0).compute(la, lb, label, torch.tensor(flags))
    missing = "cross_pseudo" if flags[0] else "supervised"
    assert out[missing].item() == 0.0 and out[missing].requires_grad
    if not flags[0]:
        assert out["dice"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(la.grad).all() and la.grad.abs().sum() > 0 and lb.grad.abs().sum() > 0


def test_metatensor_inputs_give_plain_tensors():
    from monai.data import MetaTensor

    la, lb, label = _cps_inputs()
    flags = torch.tensor([1, 0, 1, 0])
    la_m = MetaTensor(la.clone()).requires_grad_(True)
    out = CrossPseudoLabelLoss()(la_m, MetaTensor(lb), MetaTensor(label.float()), MetaTensor(flags))
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, CrossPseudoLabelLoss()(la, lb, label, flags))
    out.backward()
    assert la_m.grad is not None and la_m.grad.abs().sum() > 0
    q, k = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert type(LocalContrastiveLoss()(MetaTensor(q), MetaTensor(k))) is torch.Tensor
    assert type(GlobalContrastiveLoss()(MetaTensor(q), MetaTensor(k))) is torch.Tensor


@pytest.mark.parametrize("dice_weight", [0.0, 1.0, 0.5])
def test_segmentation_loss_is_monai_dice_ce_without_background(dice_weight):
    """On an all-labelled batch the supervised arms' loss is MONAI's DiceCELoss with the foreground Dice."""
    from monai.losses import DiceCELoss

    g = _seed(21)
    logits, label = torch.randn(3, 4, 6, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (3, 1, 6, 5))
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, lambda_dice=dice_weight)
    torch.testing.assert_close(SegmentationLoss(dice_weight)(logits, label.double()), ref(logits, label.double()))


def test_cps_labelled_part_is_the_segmentation_loss_of_each_branch():
    """One definition of the supervised loss: the CPS loss's labelled part is SegmentationLoss on the labelled
    samples of each branch (what train_supervised.json trains with), whatever the unlabelled samples hold."""
    g = _seed(22)
    la, lb = torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, 4, 6, 6, generator=g)
    label, flags = torch.randint(0, 4, (4, 1, 6, 6)), torch.tensor([1, 0, 1, 0])
    out = CrossPseudoLabelLoss(dice_weight=0.7).compute(la, lb, label, flags)
    seg = SegmentationLoss(0.7)
    lab = flags.bool()
    sup = seg(la[lab], label[lab]) + seg(lb[lab], label[lab])
    torch.testing.assert_close(out["supervised"] + 0.7 * out["dice"], sup)
    torch.testing.assert_close(seg(la, label, flags), seg(la[lab], label[lab]))


def test_segmentation_loss_errors():
    with pytest.raises(ValueError, match="dice_weight"):
        SegmentationLoss(-1.0)
    with pytest.raises(ValueError, match="label shape"):
        SegmentationLoss()(torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="one flag per sample"):
        SegmentationLoss()(torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), [1])


def test_cps_3d():
    _seed(14)
    la, lb = torch.randn(2, 3, 2, 3, 4), torch.randn(2, 3, 2, 3, 4)
    label = torch.randint(0, 3, (2, 1, 2, 3, 4))
    out = CrossPseudoLabelLoss(dice_weight=1.0).compute(la, lb, label, [True, False])
    ref = F.cross_entropy(la[:1], label[:1, 0]) + F.cross_entropy(lb[:1], label[:1, 0])
    torch.testing.assert_close(out["supervised"], ref)


def test_cps_unlabelled_placeholder_labels_not_checked():
    la, lb, label = _cps_inputs()
    label[1] = 255  # e.g. an "unknown" placeholder on an unlabelled slice
    v = CrossPseudoLabelLoss()(la, lb, label, torch.tensor([1, 0, 1, 0]))
    assert torch.isfinite(v)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda la, lb, y, f: (la[..., :4], lb, y, f), "same shape"),
        (lambda la, lb, y, f: (la[:, :, 0], lb[:, :, 0], y[:, :, 0], f), "must be \\(B, K, H, W\\)"),
        (lambda la, lb, y, f: (la, lb, y.repeat(1, 2, 1, 1), f), "1 channel"),
        (lambda la, lb, y, f: (la, lb, y[:, 0], f), "rank"),
        (lambda la, lb, y, f: (la, lb, y[..., :4], f), "does not match"),
        (lambda la, lb, y, f: (la, lb, y, f[:3]), "one flag per sample"),
        (lambda la, lb, y, f: (la[:0], lb[:0], y[:0], f[:0]), "empty batch"),
        (lambda la, lb, y, f: (la[:, :1], lb[:, :1], y, f), "at least 2 classes"),
        (lambda la, lb, y, f: (la, lb, y.bool(), f), "dtype"),
    ],
)
def test_cps_forward_errors(change, match):
    la, lb, label = _cps_inputs()
    flags = torch.tensor([1, 0, 1, 0])
    with pytest.raises(ValueError, match=match):
        CrossPseudoLabelLoss()(*change(la, lb, label, flags))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda la, lb, y, f: (la, lb, y, f * 2), "0/1"),
        (lambda la, lb, y, f: (la, lb, y + 3, f), "\\[0, 3\\)"),
        (lambda la, lb, y, f: (la, lb, y - 1, f), "\\[0, 3\\)"),
        (lambda la, lb, y, f: (la, lb, y.float() + 0.5, f), "integer"),
        (lambda la, lb, y, f: (la, lb, y.float() * float("nan"), f), "integer"),
    ],
)
def test_cps_value_errors_with_check_values(change, match):
    la, lb, label = _cps_inputs()
    flags = torch.tensor([1, 0, 1, 0])
    with pytest.raises(ValueError, match=match):
        CrossPseudoLabelLoss(check_values=True)(*change(la, lb, label, flags))
    # by default values are not read on the host (a device sync per step): EnsureLabeld(num_classes=...) checks
    # labels on the data side instead (out-of-range classes still stop in torch's own nll_loss bounds check)
    try:
        CrossPseudoLabelLoss()(*change(la, lb, label, flags))
    except IndexError as e:
        assert "out of bounds" in str(e)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"unlabeled_weight": -1}, "unlabeled_weight"),
        ({"dice_weight": -0.1}, "dice_weight"),
        ({"rampup_epochs": -1}, "rampup_epochs"),
        ({"confidence_threshold": 1.0}, "confidence_threshold"),
    ],
)
def test_cps_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossPseudoLabelLoss(**kwargs)
