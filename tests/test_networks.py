"""Tests of ideal_components.networks (small backbones, 64x64 inputs)."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from ideal_components.encoders import (
    build_flexunet_encoder,
    flexunet_encoder_channels,
    load_pretrained_encoder,
    save_encoder,
)
from ideal_components.networks import DenseContrastiveNet, DenseProjectionHead, TwoBranchFlexibleUNet

BACKBONE = "resnet10"  # scriptable (shortcut type B) and small


def _seed(s: int = 0) -> None:
    torch.manual_seed(s)


def _x(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=g)


def _randomise_bn(net: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial BN statistics so that eval-mode comparisons are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ---------------------------------------------------------------- DenseProjectionHead
def test_projection_head_shapes_and_layers():
    _seed()
    head = DenseProjectionHead(32, hidden_channels=16, out_channels=8, num_layers=3)
    y = head(torch.rand(2, 32, 5, 7))
    assert y.shape == (2, 8, 5, 7)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (32, 16, (1, 1)),
        (16, 16, (1, 1)),
        (16, 8, (1, 1)),
    ]
    # no norm / activation after the last conv
    assert isinstance(head.layers[-1], torch.nn.Conv2d)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == 2
    assert DenseProjectionHead(12).layers[0].out_channels == 12  # hidden defaults to in_channels
    y3 = DenseProjectionHead(4, out_channels=3, spatial_dims=3)(torch.rand(2, 4, 3, 3, 3))
    assert y3.shape == (2, 3, 3, 3, 3)


def test_projection_head_is_pointwise():
    """A 1x1 head is a per-location MLP: permuting locations permutes the outputs."""
    _seed()
    head = DenseProjectionHead(6, out_channels=4).eval()
    _randomise_bn(head)
    x = torch.rand(1, 6, 4, 4)
    perm = torch.randperm(16)
    y = head(x).flatten(2)
    yp = head(x.flatten(2)[..., perm].reshape(1, 6, 4, 4)).flatten(2)
    torch.testing.assert_close(y[..., perm], yp)


@pytest.mark.parametrize("kwargs", [{"num_layers": 0}, {"in_channels": 0}, {"spatial_dims": 4}])
def test_projection_head_invalid(kwargs):
    args = {"in_channels": 4, **kwargs}
    with pytest.raises(ValueError):
        DenseProjectionHead(**args)


# ---------------------------------------------------------------- TwoBranchFlexibleUNet
def test_two_branch_shapes_and_forward_equals_branch_a():
    _seed()
    net = TwoBranchFlexibleUNet(in_channels=1, out_channels=4, backbone=BACKBONE).eval()
    _randomise_bn(net)
    x = _x()
    with torch.no_grad():
        out = net(x)
        a, b = net.forward_both(x)
    assert out.shape == a.shape == b.shape == (2, 4, 64, 64)
    assert torch.equal(out, a)
    assert not torch.allclose(a, b)  # two different decoders
    assert isinstance(net.branch_a, FlexibleUNet)
    assert net.encoder is net.branch_a.encoder
    # decoder A up-samples with transposed convs, decoder B without
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.branch_a.decoder.modules())
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.decoder_b.modules())
    ups = [m for m in net.decoder_b.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and all(u.mode == "bilinear" for u in ups)


def test_forward_both_runs_encoder_once():
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=3, backbone=BACKBONE)
    calls = []
    handle = net.branch_a.encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        net.forward_both(_x())
    finally:
        handle.remove()
    assert len(calls) == 1


def test_forward_both_train_mode_consistent():
    """In train mode (batch statistics) forward and forward_both's first output still agree."""
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=3, backbone=BACKBONE).train()
    x = _x()
    a = net(x)
    a2, _ = net.forward_both(x)
    torch.testing.assert_close(a, a2)


def test_branch_a_strict_load_into_flexible_unet():
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=4, backbone=BACKBONE, decoder_channels=(64, 32, 16, 8, 8)).eval()
    _randomise_bn(net)
    _seed(123)
    plain = FlexibleUNet(1, 4, BACKBONE, decoder_channels=(64, 32, 16, 8, 8), upsample="deconv").eval()
    x = _x()
    with torch.no_grad():
        assert not torch.allclose(plain(x), net(x))
        plain.load_state_dict(net.branch_a.state_dict(), strict=True)
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)


def test_branch_a_scripts():
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE).eval()
    _randomise_bn(net)
    scripted = torch.jit.script(net.branch_a)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_decoder_b_gradients_independent():
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE)
    _, b = net.forward_both(_x())
    b.square().mean().backward()
    for name, p in list(net.branch_a.decoder.named_parameters()) + list(
        net.branch_a.segmentation_head.named_parameters()
    ):
        assert p.grad is None or not p.grad.any(), name
    assert any(p.grad is not None and p.grad.any() for p in net.decoder_b.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.segmentation_head_b.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.encoder.parameters())


def test_two_branch_invalid_args():
    with pytest.raises(ValueError, match="backbone"):
        TwoBranchFlexibleUNet(out_channels=2, backbone="resnet7")
    with pytest.raises(ValueError, match="spatial_dims"):
        TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE, spatial_dims=1)


def test_two_branch_3d():
    _seed()
    net = TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE, spatial_dims=3, decoder_channels=(8, 8, 8, 8, 8))
    with torch.no_grad():
        a, b = net.eval().forward_both(torch.rand(1, 1, 32, 32, 32))
    assert a.shape == b.shape == (1, 2, 32, 32, 32)
    ups = [m for m in net.decoder_b.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and all(u.mode == "trilinear" for u in ups)


# ---------------------------------------------------------------- DenseContrastiveNet
@pytest.mark.parametrize("level,size", [(-1, 2), (-2, 4), (-3, 8), (0, 32), (1, 16)])
def test_contrastive_shapes(level, size):
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, feature_level=level, head_out_channels=16, momentum=0.9)
    x = _x()
    q, k = net(x), net.forward_key(x)
    assert q.shape == k.shape == (2, 16, size, size)
    assert net.head.layers[0].in_channels == flexunet_encoder_channels(BACKBONE)[level]


def test_contrastive_multi_level_heads_and_gradients():
    """Several levels: one head per level, outputs in the given order, and every encoder stage down to the deepest
    projected level gets a gradient (with one level at -2 the deepest stage gets none)."""
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, feature_level=[-1, -3], head_out_channels=16, momentum=0.9)
    x = _x()
    q, k = net(x), net.forward_key(x)
    assert [t.shape for t in q] == [t.shape for t in k] == [(2, 16, 2, 2), (2, 16, 8, 8)]
    channels = flexunet_encoder_channels(BACKBONE)
    assert [h.layers[0].in_channels for h in net.head] == [channels[-1], channels[-3]]
    assert net.feature_level == len(channels) - 1 and net.uses_whole_encoder
    sum(t.square().mean() for t in q).backward()
    deepest = [p for n, p in net.encoder.named_parameters() if n.startswith("layer4")]
    assert deepest and all(p.grad is not None and p.grad.abs().sum() > 0 for p in deepest)
    assert all(p.grad is None for p in net.encoder_k.parameters())
    net.momentum_update()  # the key heads mirror the list structure

    single = DenseContrastiveNet(backbone=BACKBONE, feature_level=-2, head_out_channels=16, momentum=0.0)
    assert not single.uses_whole_encoder
    single(x).square().mean().backward()
    assert all(p.grad is None for n, p in single.encoder.named_parameters() if n.startswith("layer4"))
    # a one-element list is the single-level network (same state-dict keys)
    assert (
        DenseContrastiveNet(backbone=BACKBONE, feature_level=[-2]).state_dict().keys()
        == DenseContrastiveNet(backbone=BACKBONE, feature_level=-2).state_dict().keys()
    )


def test_contrastive_paper_head_is_one_conv():
    net = DenseContrastiveNet(backbone=BACKBONE, feature_level=-1, head_layers=1, head_out_channels=8, momentum=0.0)
    convs = [m for m in net.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (1, 1) and convs[0].out_channels == 8
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.head.modules())


def test_contrastive_pool_before_head():
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, pool_before_head=True, momentum=0.0)
    assert net(_x()).shape == (2, 8, 1, 1)


def test_contrastive_invalid_args():
    for bad in (5, [], [-1, 4], [-1, 7], [True], "-1"):
        with pytest.raises(ValueError, match="feature_level"):
            DenseContrastiveNet(backbone=BACKBONE, feature_level=bad)
    with pytest.raises(ValueError, match="momentum"):
        DenseContrastiveNet(backbone=BACKBONE, momentum=1.5)


def test_encoder_matches_flexible_unet_encoder():
    """Same class, same keys and shapes as FlexibleUNet's encoder; the registry is not mutated."""
    import monai.networks.nets.flexible_unet as fu

    before = copy.deepcopy(fu.FLEXUNET_BACKBONE.register_dict[BACKBONE]["parameter"])
    enc = build_flexunet_encoder(BACKBONE, in_channels=2, spatial_dims=2)
    assert fu.FLEXUNET_BACKBONE.register_dict[BACKBONE]["parameter"] == before
    ref = FlexibleUNet(2, 3, BACKBONE).encoder
    assert type(enc) is type(ref)
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_contrastive_encoder_strict_load_into_two_branch():
    _seed()
    pre = DenseContrastiveNet(backbone=BACKBONE, momentum=0.0)
    _randomise_bn(pre)
    net = TwoBranchFlexibleUNet(out_channels=4, backbone=BACKBONE)
    net.encoder.load_state_dict(pre.encoder_state_dict(), strict=True)
    plain = FlexibleUNet(1, 4, BACKBONE, upsample="deconv")
    plain.encoder.load_state_dict(pre.encoder_state_dict(), strict=True)
    pre.eval(), net.eval()
    x = _x()
    with torch.no_grad():
        for fp, fn in zip(pre.encoder(x), net.encoder(x)):
            torch.testing.assert_close(fp, fn, rtol=0, atol=0)


def test_momentum_update_exact():
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, momentum=0.9)
    # key starts as a copy of the query
    for pq, pk in zip(net.encoder.parameters(), net.encoder_k.parameters()):
        assert torch.equal(pq, pk) and pq.data_ptr() != pk.data_ptr()
    # make query and key differ, and the query BN statistics non-trivial
    with torch.no_grad():
        for p in list(net.encoder.parameters()) + list(net.head.parameters()):
            p.add_(torch.randn_like(p))
    _randomise_bn(net.encoder)
    k_old = [p.detach().clone().double() for p in list(net.encoder_k.parameters()) + list(net.head_k.parameters())]
    q = [p.detach().clone().double() for p in list(net.encoder.parameters()) + list(net.head.parameters())]
    net.momentum_update()
    k_new = list(net.encoder_k.parameters()) + list(net.head_k.parameters())
    assert len(k_new) == len(q) > 0
    for kn, ko, qq in zip(k_new, k_old, q):
        torch.testing.assert_close(kn.double(), 0.9 * ko + 0.1 * qq, rtol=1e-6, atol=1e-6)
    for bq, bk in zip(net.encoder.buffers(), net.encoder_k.buffers()):
        assert torch.equal(bq, bk)


def test_key_branch_gets_no_grad():
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, momentum=0.99)
    x = _x()
    k = net.forward_key(x)
    assert k.grad_fn is None and not k.requires_grad
    (net(x) * k).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in net.encoder_k.parameters())
    assert all(not p.requires_grad and p.grad is None for p in net.head_k.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.encoder.parameters())
    # the optimiser sees only the query branch
    n_query = sum(1 for _ in net.encoder.parameters()) + sum(1 for _ in net.head.parameters())
    assert len([p for p in net.parameters() if p.requires_grad]) == n_query


def test_momentum_zero_shares_weights():
    _seed()
    net = DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, momentum=0.0).eval()
    _randomise_bn(net)
    assert net.encoder_k is None and net.head_k is None
    assert not any(k.startswith(("encoder_k.", "head_k.")) for k in net.state_dict())
    x = _x()
    k = net.forward_key(x)
    assert k.grad_fn is None and not k.requires_grad
    q = net(x)
    assert q.grad_fn is not None
    torch.testing.assert_close(q.detach(), k, rtol=0, atol=0)
    before = [p.detach().clone() for p in net.parameters()]
    net.momentum_update()  # no-op
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ---------------------------------------------------------------- load_pretrained_encoder
def _pretrained(tmp_path, fmt: str):
    _seed(7)
    pre = DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, momentum=0.9)
    _randomise_bn(pre)
    with torch.no_grad():
        for p in pre.encoder_k.parameters():
            p.add_(1.0)  # key encoder differs: must not be the one loaded
    if fmt == "encoder":
        obj = pre.encoder_state_dict()
    elif fmt == "checkpoint":
        obj = {"encoder": pre.encoder_state_dict(), "epoch": 3}
    else:
        obj = pre.state_dict()
    path = tmp_path / f"pretrained_{fmt}.pt"
    torch.save(obj, path)
    return pre, path


@pytest.mark.parametrize("fmt", ["encoder", "checkpoint", "full"])
def test_load_pretrained_encoder_formats(tmp_path, fmt):
    pre, path = _pretrained(tmp_path, fmt)
    ref = pre.encoder_state_dict()
    _seed(11)
    targets = [
        TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE),
        FlexibleUNet(1, 2, BACKBONE, upsample="deconv"),
        DenseContrastiveNet(backbone=BACKBONE, head_out_channels=8, momentum=0.0),
    ]
    for net in targets:
        assert not torch.equal(net.encoder.state_dict()["conv1.weight"], ref["conv1.weight"])
        assert load_pretrained_encoder(net, path) is True
        loaded = net.encoder.state_dict()
        assert loaded.keys() == ref.keys()
        assert all(torch.equal(loaded[k], ref[k]) for k in ref), type(net).__name__


def test_load_pretrained_encoder_through_module_wrapper(tmp_path):
    pre, path = _pretrained(tmp_path, "encoder")

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel's `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    net = TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE)
    assert load_pretrained_encoder(Wrapper(net), path)
    assert torch.equal(net.encoder.state_dict()["conv1.weight"], pre.encoder.state_dict()["conv1.weight"])


def test_load_pretrained_encoder_missing(tmp_path, caplog):
    net = TwoBranchFlexibleUNet(out_channels=2, backbone=BACKBONE)
    before = copy.deepcopy(net.encoder.state_dict())
    missing = tmp_path / "nope" / "pretrained_encoder.pt"
    assert load_pretrained_encoder(net, missing) is False
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())
    with pytest.raises(FileNotFoundError, match="pretrained_encoder.pt"):
        load_pretrained_encoder(net, missing, required=True)


def test_load_pretrained_encoder_mismatch(tmp_path):
    _, path = _pretrained(tmp_path, "encoder")
    net = TwoBranchFlexibleUNet(out_channels=2, backbone="resnet50")  # channel counts differ
    with pytest.raises(RuntimeError, match="pretrained_encoder.pt"):
        load_pretrained_encoder(net, path)
    bad = tmp_path / "unrelated.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="unrelated.pt"):
        load_pretrained_encoder(net, bad, strict=False)
    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), not_a_dict)
    with pytest.raises(ValueError, match="tensor.pt"):
        load_pretrained_encoder(net, not_a_dict)
    with pytest.raises(ValueError, match="encoder"):
        load_pretrained_encoder(torch.nn.Linear(2, 2), path)


# ---------------------------------------------------------------- default backbone (resnet50)
def test_resnet50_strict_loads(tmp_path):
    _seed()
    pre = DenseContrastiveNet()  # resnet50, momentum 0.99
    net = TwoBranchFlexibleUNet(in_channels=1, out_channels=4)
    net.encoder.load_state_dict(pre.encoder_state_dict(), strict=True)
    path = tmp_path / "pretrained_encoder.pt"
    torch.save(pre.encoder_state_dict(), path)
    plain = FlexibleUNet(1, 4, "resnet50", upsample="deconv")
    assert load_pretrained_encoder(plain, path, required=True)
    plain.load_state_dict(net.branch_a.state_dict(), strict=True)
    assert pre.head.layers[0].in_channels == 2048
    x = _x(1, 64)
    net.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)
        assert pre.eval()(x).shape == (1, 128, 2, 2)


def test_forward_branch_argument():
    torch.manual_seed(0)
    net = TwoBranchFlexibleUNet(in_channels=1, out_channels=3, backbone="resnet10").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = net.forward_both(x)
        assert torch.equal(net(x), a)
        assert torch.equal(net(x, branch="a"), a)
        assert torch.equal(net(x, branch="b"), b)
        both = net(x, branch="both")
        assert torch.equal(both[0], a) and torch.equal(both[1], b)
    with pytest.raises(ValueError, match="branch must be"):
        net(x, branch="c")


def test_save_encoder_round_trip(tmp_path):
    torch.manual_seed(0)
    pre = DenseContrastiveNet(backbone="resnet10", momentum=0.0)
    path = str(tmp_path / "sub" / "pretrained_encoder.pt")
    assert save_encoder(pre, path) == path
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["pretrained_encoder.pt"]  # no temp file left
    net = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
    assert load_pretrained_encoder(net, path, required=True)
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v)
    with pytest.raises(ValueError, match="no `encoder`"):
        save_encoder(torch.nn.Linear(2, 2), path)
