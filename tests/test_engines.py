"""Tests of ContrastivePretrainTrainer and CrossPseudoLabelTrainer (tiny networks and data, CPU)."""

from __future__ import annotations

import contextlib
import glob
import os
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, StatsHandler, from_engine
from monai.utils import set_determinism

from ideal_components.batchnorm import GroupBatchNorm2d
from ideal_components.data.sampler import LabeledUnlabeledBatchSampler
from ideal_components.engines import ContrastivePretrainTrainer, CrossPseudoLabelTrainer, forward_both
from ideal_components.losses import CrossPseudoLabelLoss, LocalContrastiveLoss
from ideal_components.networks import DenseContrastiveNet, TwoBranchFlexibleUNet
from ideal_components.transforms import EnsureLabeld

DEVICE = torch.device("cpu")
SIZE = 32


@pytest.fixture(autouse=True)
def _determinism():
    set_determinism(seed=0)
    yield
    set_determinism(seed=None)


def _views_data(n=4):
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(n):
        x = torch.rand(1, SIZE, SIZE, generator=g)
        data.append({"image": x, "image_view2": (x * 1.2 + 0.1).clamp(0, 1)})
    return data


def _contrastive_net(momentum=0.9):
    return DenseContrastiveNet(backbone="resnet10", feature_level=-3, head_out_channels=16, momentum=momentum)


def _out(output):
    """The iteration output as one dict (the first item of a decollated output; losses are replicated)."""
    return output[0] if isinstance(output, list) else output


def _record_losses(engine):
    losses = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(_out(e.state.output)["loss"])))
    return losses


def _run_without_stats_warning(trainer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    assert not [w for w in caught if "non-scalar output" in str(w.message)], "StatsHandler could not read the loss"


def test_contrastive_trainer_lowers_loss_with_handlers(tmp_path):
    net = _contrastive_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loader = DataLoader(Dataset(_views_data()), batch_size=4, shuffle=False)
    handlers = [
        StatsHandler(output_transform=from_engine(["loss"], first=True), iteration_log=True),
        CheckpointSaver(str(tmp_path), save_dict={"network": net, "optimizer": opt}, save_final=True),
    ]
    trainer = ContrastivePretrainTrainer(
        device=DEVICE,
        max_epochs=15,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=LocalContrastiveLoss(temperature=0.2),
        train_handlers=handlers,
        max_shift=0,  # the whole 4x4 map in the output (the shift crops it to the overlap)
    )
    losses = _record_losses(trainer)
    _run_without_stats_warning(trainer)
    assert from_engine(["loss"], first=True)(trainer.state.output) == losses[-1]
    assert len(losses) == 15 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    out = trainer.state.output
    assert isinstance(out, list) and len(out) == 4  # decollated, as SupervisedTrainer
    assert isinstance(out[0]["loss"], float)  # decollate_batch turns the scalar loss tensor into a number
    assert out[0]["image"].shape == (1, SIZE, SIZE) and out[0]["pred"].shape == (16, 4, 4)
    ckpts = glob.glob(os.path.join(str(tmp_path), "*final_iteration=15.pt"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], weights_only=True)
    assert set(state) == {"network", "optimizer"}
    _contrastive_net().load_state_dict(state["network"])


def test_contrastive_momentum_update_is_exact_ema_and_key_encoder_gets_no_grad():
    m = 0.9
    net = _contrastive_net(momentum=m)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(Dataset(_views_data()), batch_size=4)
    trainer = ContrastivePretrainTrainer(
        device=DEVICE, max_epochs=1, epoch_length=1, train_data_loader=loader, network=net, optimizer=opt,
        loss_function=LocalContrastiveLoss(temperature=0.2),
    )  # fmt: skip
    k_before = [p.detach().clone() for p in net.encoder_k.parameters()] + [
        p.detach().clone() for p in net.head_k.parameters()
    ]
    q_before = [p.detach().clone() for p in net.encoder.parameters()]
    trainer.run()
    q_after = list(net.encoder.parameters()) + list(net.head.parameters())
    k_after = list(net.encoder_k.parameters()) + list(net.head_k.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(q_before, net.encoder.parameters()))  # the query was trained
    assert all(p.grad is None for p in k_after)
    assert any(not torch.equal(a, b) for a, b in zip(k_before, k_after))
    for kb, ka, qa in zip(k_before, k_after, q_after):  # EMA with the query weights after the step
        torch.testing.assert_close(ka, m * kb + (1 - m) * qa.detach(), rtol=1e-5, atol=1e-6)
    for bk, bq in zip(net.encoder_k.buffers(), net.encoder.buffers()):
        assert torch.equal(bk, bq)


def test_contrastive_event_order_and_output_before_model_completed():
    net = _contrastive_net(momentum=0.0)
    loader = DataLoader(Dataset(_views_data()), batch_size=2)
    trainer = ContrastivePretrainTrainer(
        device=DEVICE, max_epochs=1, epoch_length=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=LocalContrastiveLoss(), decollate=False,
    )  # fmt: skip
    seen = []
    for ev in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED):
        trainer.add_event_handler(ev, lambda e, ev=ev: seen.append(ev))

    def _model_completed(engine):
        seen.append(IterationEvents.MODEL_COMPLETED)
        loss = engine.state.output["loss"]  # set before MODEL_COMPLETED, a detached scalar tensor
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad

    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, _model_completed)
    trainer.run()
    assert seen == [
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]


def test_contrastive_dict_loss_parts_and_errors():
    net = _contrastive_net(momentum=0.0)
    base = LocalContrastiveLoss()

    def loss_fn(q, k):
        v = base(q, k)
        return {"loss": v, "local": v.detach()}

    loader = DataLoader(Dataset(_views_data()), batch_size=2)
    trainer = ContrastivePretrainTrainer(
        device=DEVICE, max_epochs=1, epoch_length=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=loss_fn,
    )  # fmt: skip
    trainer.run()
    assert set(_out(trainer.state.output)) >= {"loss", "loss_local"}
    with pytest.raises(ValueError, match="forward_key"):
        ContrastivePretrainTrainer(
            device=DEVICE, max_epochs=1, train_data_loader=loader, network=torch.nn.Conv2d(1, 1, 1),
            optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=base,
        )  # fmt: skip
    bad = ContrastivePretrainTrainer(
        device=DEVICE, max_epochs=1, epoch_length=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=base, view_keys=("image", "other"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="other"):
        bad._iteration(bad, next(iter(loader)))


def _seg_items(n_lab=4, n_unl=8):
    """Bright squares on noise; label 1 = square, 2 = its left half; unlabelled items carry no label."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n_lab + n_unl):
        img = rng.random((1, SIZE, SIZE), dtype=np.float32) * 0.2
        lab = np.zeros((1, SIZE, SIZE), dtype=np.float32)
        r, c = rng.integers(4, 16, size=2)
        img[:, r : r + 12, c : c + 12] += 0.8
        lab[:, r : r + 12, c : c + 12] = 1
        lab[:, r : r + 12, c : c + 6] = 2
        item = {"image": img, "id": f"s{i}"}
        if i < n_lab:
            item.update(label=lab, labeled=1)
        else:
            item.update(labeled=0)
        items.append(item)
    return items


def _seg_loader(items, batch_size=4, labeled_batch_size=2):
    sampler = LabeledUnlabeledBatchSampler(
        [d["labeled"] for d in items], batch_size=batch_size, labeled_batch_size=labeled_batch_size, seed=0
    )
    return DataLoader(Dataset(items, transform=EnsureLabeld()), batch_sampler=sampler, num_workers=0), sampler


def _seg_net():
    return TwoBranchFlexibleUNet(
        in_channels=1, out_channels=3, backbone="resnet10", decoder_channels=(32, 16, 16, 8, 8)
    )


def test_cross_pseudo_label_trainer_end_to_end(tmp_path):
    items = _seg_items()
    loader, sampler = _seg_loader(items)
    assert len(loader) == 4
    net = _seg_net()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    flags_seen = []
    epochs_seen = []

    class RecordingLoss(CrossPseudoLabelLoss):
        def compute(self, logits_a, logits_b, label, labeled, epoch=None):
            flags_seen.append(labeled.tolist())
            epochs_seen.append(epoch)
            return super().compute(logits_a, logits_b, label, labeled, epoch)

    trainer = CrossPseudoLabelTrainer(
        device=DEVICE,
        max_epochs=4,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=RecordingLoss(unlabeled_weight=0.5),
        train_handlers=[
            StatsHandler(output_transform=from_engine(["loss"], first=True)),
            CheckpointSaver(str(tmp_path), save_dict={"network": net}, save_final=True),
        ],
    )
    losses = _record_losses(trainer)
    _run_without_stats_warning(trainer)
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert all(f == [1, 1, 0, 0] for f in flags_seen)
    np.testing.assert_allclose(epochs_seen[:5], [0.0, 0.25, 0.5, 0.75, 1.0])
    assert sampler.epoch == 4  # the trainer sets the batch sampler's epoch
    out = trainer.state.output
    assert len(out) == 4 and out[0]["pred"].shape == out[0]["pred_b"].shape == (3, SIZE, SIZE)
    assert out[0]["label"].shape == (1, SIZE, SIZE) and [int(o["labeled"]) for o in out] == [1, 1, 0, 0]
    for k in ("loss", "loss_supervised", "loss_cross_pseudo"):
        assert isinstance(out[0][k], float) and out[0][k] == out[3][k]
    assert all(float(o["label"].abs().sum()) == 0.0 for o in out[2:])
    assert len(glob.glob(os.path.join(str(tmp_path), "*final_iteration=16.pt"))) == 1


def test_cross_pseudo_label_plain_loss_and_errors():
    items = _seg_items(n_lab=2, n_unl=2)
    loader, _ = _seg_loader(items, batch_size=2, labeled_batch_size=1)
    net = _seg_net()
    base = CrossPseudoLabelLoss()
    trainer = CrossPseudoLabelTrainer(
        device=DEVICE, max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=lambda a, b, y, f: base(a, b, y, f),
    )  # fmt: skip
    trainer.run()
    out = _out(trainer.state.output)
    assert set(out) >= {"loss", "pred", "pred_b"} and "loss_supervised" not in out
    batch = next(iter(loader))
    del batch["labeled"]
    with pytest.raises(ValueError, match="labeled"):
        trainer._iteration(trainer, batch)


def _one_iteration_logits(batch_statistics, flags):
    torch.manual_seed(0)
    net = _seg_net()
    x = torch.rand(len(flags), 1, SIZE, SIZE)
    batch = {"image": x, "label": torch.zeros(len(flags), 1, SIZE, SIZE), "labeled": torch.tensor(flags)}
    trainer = CrossPseudoLabelTrainer(
        device=DEVICE, max_epochs=1, train_data_loader=[batch], network=net, decollate=False,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=CrossPseudoLabelLoss(),
        batch_statistics=batch_statistics,
    )  # fmt: skip
    trainer.run()
    torch.manual_seed(0)
    ref = _seg_net().train()
    return trainer.state.output, ref, x


@pytest.mark.parametrize("mode", ["per_group", "separate_forwards"])
def test_labelled_and_unlabelled_slices_are_normalised_separately(mode):
    flags = [0.0, 1.0, 0.0, 1.0, 0.0]  # mixed positions: the logits must come back in batch order
    out, ref, x = _one_iteration_logits(mode, flags)
    lab, unl = torch.tensor([1, 3]), torch.tensor([0, 2, 4])
    exp_lab_a, exp_lab_b = ref.forward_both(x[lab])  # BatchNorm statistics of the labelled slices only
    exp_unl_a, exp_unl_b = ref.forward_both(x[unl])
    torch.testing.assert_close(out["pred"][lab].detach(), exp_lab_a.detach())
    torch.testing.assert_close(out["pred_b"][unl].detach(), exp_unl_b.detach())
    # one joint forward gives other values for the same slices (the statistics of the mixed batch)
    joint, _, _ = _one_iteration_logits("joint", flags)
    torch.testing.assert_close(joint["pred"].detach(), ref.forward_both(x)[0].detach())
    assert not torch.allclose(joint["pred"][lab].detach(), exp_lab_a.detach(), atol=1e-3)
    # an all-labelled batch is one forward either way
    all_lab, ref, x = _one_iteration_logits(mode, [1.0, 1.0])
    torch.testing.assert_close(all_lab["pred"].detach(), ref.forward_both(x)[0].detach())


def test_batch_statistics_option_errors():
    net = _seg_net()
    kwargs = dict(device=DEVICE, max_epochs=1, train_data_loader=[], network=net, loss_function=CrossPseudoLabelLoss())
    with pytest.raises(ValueError, match="batch_statistics must be one of"):
        CrossPseudoLabelTrainer(optimizer=torch.optim.SGD(net.parameters(), lr=0.0), batch_statistics="x", **kwargs)
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_seg_net())
    kwargs["network"] = sync
    with pytest.raises(ValueError, match="SyncBatchNorm.*separate_forwards"):
        CrossPseudoLabelTrainer(optimizer=torch.optim.SGD(sync.parameters(), lr=0.0), **kwargs)
    trainer = CrossPseudoLabelTrainer(
        optimizer=torch.optim.SGD(sync.parameters(), lr=0.0), batch_statistics="separate_forwards", **kwargs
    )
    assert trainer.batch_statistics == "separate_forwards"


class _BranchNet(TwoBranchFlexibleUNet):
    """``forward(x, branch=...)`` so that DDP's forward covers both branches."""

    def forward(self, x, branch="a"):
        return self.forward_both(x) if branch == "both" else super().forward(x)


class _NoBranchNet(torch.nn.Module):
    """A two-branch network whose forward has no ``branch`` argument (only ``forward_both``)."""

    def __init__(self, body):
        super().__init__()
        self.body = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.body(x)

    def forward_both(self, x):
        return self.body(x), self.body(x)


def test_forward_both_under_ddp(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        x = torch.rand(2, 1, SIZE, SIZE)
        plain = torch.nn.parallel.DistributedDataParallel(_NoBranchNet(torch.nn.Identity()))
        with pytest.raises(ValueError, match="bypass"):
            forward_both(plain, x)
        real = torch.nn.parallel.DistributedDataParallel(_seg_net())  # TwoBranchFlexibleUNet has forward(x, branch)
        a, b = forward_both(real, x)
        assert a.shape == b.shape
        net = _BranchNet(in_channels=1, out_channels=3, backbone="resnet10", decoder_channels=(32, 16, 16, 8, 8))
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        a, b = forward_both(ddp, x)
        assert a.shape == b.shape == (2, 3, SIZE, SIZE)
        loader, _ = _seg_loader(_seg_items(n_lab=2, n_unl=2), batch_size=2, labeled_batch_size=1)
        trainer = CrossPseudoLabelTrainer(
            device=DEVICE, max_epochs=1, train_data_loader=loader, network=ddp,
            optimizer=torch.optim.SGD(ddp.parameters(), lr=0.01), loss_function=CrossPseudoLabelLoss(),
        )  # fmt: skip
        trainer.run()
        assert np.isfinite(float(_out(trainer.state.output)["loss"]))
        assert all(p.grad is not None for p in net.decoder_b.parameters())  # branch B trained through DDP
    finally:
        dist.destroy_process_group()


def test_amp_on_cpu_does_not_crash():
    amp_kwargs = {"dtype": torch.bfloat16}
    net = _contrastive_net()
    loader = DataLoader(Dataset(_views_data()), batch_size=2)
    trainer = ContrastivePretrainTrainer(
        device=DEVICE, max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=LocalContrastiveLoss(), amp=True,
        amp_kwargs=amp_kwargs,
    )  # fmt: skip
    trainer.run()
    assert trainer.scaler is None and np.isfinite(float(_out(trainer.state.output)["loss"]))
    seg = _seg_net()
    loader, _ = _seg_loader(_seg_items(n_lab=2, n_unl=2), batch_size=2, labeled_batch_size=1)
    trainer = CrossPseudoLabelTrainer(
        device=DEVICE, max_epochs=1, train_data_loader=loader, network=seg,
        optimizer=torch.optim.Adam(seg.parameters(), 1e-3), loss_function=CrossPseudoLabelLoss(), amp=True,
        amp_kwargs=amp_kwargs,
    )  # fmt: skip
    trainer.run()
    assert np.isfinite(float(_out(trainer.state.output)["loss"]))


@pytest.mark.parametrize("shift", [(0, 0), (1, -2), (-3, 1), (2, 2)])
def test_shifted_views_correspond_on_the_overlap(shift):
    from ideal_components.engines import overlapping_features, shift_image

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 48)
    stride = (8, 8)
    features = torch.nn.AvgPool2d(8)  # translation-equivariant for shifts by whole cells
    q, k = overlapping_features(features(x), features(shift_image(x, shift, stride)), shift)
    h, w = 8 - abs(shift[0]), 6 - abs(shift[1])
    assert q.shape == k.shape == (2, 3, h, w)
    torch.testing.assert_close(q, k)
    if shift != (0, 0):  # without the crop, the maps do not correspond
        assert not torch.allclose(features(x), features(shift_image(x, shift, stride)))


@pytest.mark.parametrize("offset", [0.3, -0.3])
def test_shifted_key_view_has_no_band(offset):
    """The key view's shift leaves no tell: the shifted image holds exactly the original's pixels (no filled band),
    whatever the view's brightness offset, so only content says where a cell came from."""
    from ideal_components.engines import shift_image

    torch.manual_seed(1)
    view = (torch.rand(2, 1, 64, 64) * 0.5 + offset).clamp(0, 1)  # a photometric view, clipped as in pretrain.json
    shifted = shift_image(view, (2, -1), (8, 8))
    torch.testing.assert_close(shifted.flatten(1).sort(1).values, view.flatten(1).sort(1).values)
    band = shifted[..., :16, :]  # the rows a zero-filling shift would have vacated
    assert band.min() >= view.min() and band.mean() == pytest.approx(float(view[..., -16:, :].mean()), abs=1e-6)


def test_pretrain_with_shift_runs_and_lowers_loss():
    from ideal_components.engines import ContrastivePretrainTrainer
    from ideal_components.losses import LocalContrastiveLoss
    from ideal_components.networks import DenseContrastiveNet

    torch.manual_seed(0)
    net = DenseContrastiveNet(backbone="resnet10", feature_level=-2, head_out_channels=16, momentum=0.0)
    x = torch.rand(8, 1, 64, 64)
    data = [{"image": x[i : i + 4], "image_view2": (x[i : i + 4] * 0.9 + 0.05)} for i in (0, 4)] * 6
    losses = []
    trainer = ContrastivePretrainTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=LocalContrastiveLoss(temperature=0.2),
        max_shift=1,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    with pytest.raises(ValueError, match="max_shift"):
        ContrastivePretrainTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=data,
            network=net,
            optimizer=torch.optim.Adam(net.parameters()),
            loss_function=LocalContrastiveLoss(),
            max_shift=-1,
        )


class _PooledLevels(torch.nn.Module):
    """Two "levels" (average pooling by 16 and by 4: translation-equivariant for shifts by whole cells of 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.momentum = 0.0

    def forward(self, x):
        return [self.scale * torch.nn.functional.avg_pool2d(x, s) for s in (16, 4)]

    def forward_key(self, x):
        with torch.no_grad():
            return [t.detach() for t in self.forward(x)]


def test_pretrain_multi_level_sums_levels_with_one_coherent_shift():
    """The key view is shifted by whole cells of the coarsest map; each level compares its corresponding cells
    (identical views give identical overlaps at both levels), the loss is the sum of the levels' losses, and the
    pretext accuracy is logged per level and as their mean."""
    torch.manual_seed(0)
    seen = []

    def loss_fn(q, k):
        seen.append((q.detach().clone(), k.clone()))
        return (q - k).abs().mean() + q.shape[-1]  # a known value per level: the overlap's width

    net = _PooledLevels()
    x = torch.randn(2, 8, 128, 128)  # zero-mean, 8 channels: distinct feature directions, no near-ties
    trainer = ContrastivePretrainTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": x, "image_view2": x}] * 8,
        network=net, optimizer=torch.optim.SGD(net.parameters(), 0.0), loss_function=loss_fn, max_shift=2,
        decollate=False,
    )  # fmt: skip
    widths = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: widths.append([q.shape[-1] for q, _ in seen[-2:]]))
    trainer.run()
    assert len(seen) == 16
    for q, k in seen:
        torch.testing.assert_close(q, k)  # both levels aligned by the same shift
    shifted = [w for w in widths if w[0] < 8]
    assert shifted, "no iteration drew a shift"
    for coarse, fine in widths:
        assert fine == 4 * coarse  # the fine level is shifted by 4x the coarse cells
    out = trainer.state.output
    assert float(out["loss"]) == pytest.approx(sum(widths[-1]))
    assert [float(out["loss_level0"]), float(out["loss_level1"])] == pytest.approx(widths[-1])
    assert float(out["pretext_accuracy_level0"]) == float(out["pretext_accuracy_level1"]) == 1.0
    assert float(out["pretext_accuracy"]) == 1.0


def test_pretrain_multi_level_dense_contrastive_net_runs():
    torch.manual_seed(0)
    net = DenseContrastiveNet(backbone="resnet10", feature_level=[-1, -2], head_out_channels=8, momentum=0.9)
    x = torch.rand(4, 1, 128, 128)
    trainer = ContrastivePretrainTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": x, "image_view2": x * 0.8}] * 3,
        network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=LocalContrastiveLoss(),
        max_shift=1, decollate=False,
    )  # fmt: skip
    trainer.run()
    out = trainer.state.output
    assert float(out["loss"]) == pytest.approx(float(out["loss_level0"]) + float(out["loss_level1"]), rel=1e-6)
    assert 0.0 <= float(out["pretext_accuracy"]) <= 1.0 and isinstance(out["pred"], list)


def test_pretrain_shift_is_limited_on_tiny_maps():
    from ideal_components.engines import ContrastivePretrainTrainer
    from ideal_components.losses import LocalContrastiveLoss
    from ideal_components.networks import DenseContrastiveNet

    torch.manual_seed(0)
    net = DenseContrastiveNet(backbone="resnet10", head_out_channels=8, momentum=0.0)  # 2x2 map at 64x64
    x = torch.rand(4, 1, 64, 64)
    trainer = ContrastivePretrainTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[{"image": x, "image_view2": x}] * 5,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=LocalContrastiveLoss(),
        max_shift=3,
        decollate=False,
    )
    trainer.run()  # a shift on a 2x2 map would leave a single location and no negative
    assert np.isfinite(float(trainer.state.output["loss"]))


@pytest.mark.parametrize(
    "batch_statistics,implementation",
    [("per_group", "slices"), ("per_group", "concat"), ("separate_forwards", None), ("joint", None)],
)
def test_iterations_never_read_a_device_tensor_on_the_host(batch_statistics, implementation, monkeypatch):
    """On the ``meta`` device every host read (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, ``nonzero``,
    ``.cpu()``) raises, so an iteration that runs there has no device-to-host synchronisation per step (what a GPU
    would wait for). The flags are read on the host from the loader's CPU tensor. Both per-group BatchNorm
    implementations (the CPU's and the GPU's default)."""
    monkeypatch.setattr(GroupBatchNorm2d, "implementation", implementation)
    meta = torch.device("meta")
    net = TwoBranchFlexibleUNet(out_channels=3, backbone="resnet10").to(meta)
    flags = torch.tensor([0, 1, 1, 0, 0])  # out of order: the gather / restore path
    batch = {"image": torch.rand(5, 1, SIZE, SIZE), "label": torch.zeros(5, 1, SIZE, SIZE), "labeled": flags}
    loss = CrossPseudoLabelLoss(dice_weight=1.0, rampup_epochs=2, confidence_threshold=0.5)
    trainer = CrossPseudoLabelTrainer(
        device=meta, max_epochs=2, train_data_loader=[batch, batch], network=net, decollate=False,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=loss, batch_statistics=batch_statistics,
    )  # fmt: skip
    trainer.run()
    assert trainer.state.iteration == 4 and trainer.state.output["loss"].device == meta

    # the detector works: the loss's opt-in value checks read the device and fail there
    trainer.loss_function = CrossPseudoLabelLoss(check_values=True)
    with pytest.raises(RuntimeError, match="meta"):
        trainer._iteration(trainer, batch)


def test_pretraining_iteration_never_reads_a_device_tensor_on_the_host():
    meta = torch.device("meta")
    net = DenseContrastiveNet(backbone="resnet10", feature_level=-2, momentum=0.99).to(meta)
    batch = {"image": torch.rand(4, 1, 64, 64), "image_view2": torch.rand(4, 1, 64, 64)}
    trainer = ContrastivePretrainTrainer(
        device=meta, max_epochs=2, train_data_loader=[batch], network=net, decollate=False, max_shift=1,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=LocalContrastiveLoss(max_locations=8),
    )  # fmt: skip
    trainer.run()
    assert trainer.state.iteration == 2 and trainer.state.output["loss"].device == meta


@contextlib.contextmanager
def _syncs_raise():
    """Every synchronising CUDA call raises inside."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the meta-device tests cover the CPU")
@pytest.mark.parametrize(
    "kind,implementation", [("cross_pseudo_label", "concat"), ("cross_pseudo_label", "slices"), ("pretraining", None)]
)
def test_cuda_iterations_never_block_the_host(kind, implementation, monkeypatch):
    """On a GPU, under ``torch.cuda.set_sync_debug_mode("error")`` every synchronising call raises: iterations fed
    pinned batches with ``non_blocking=True`` (AMP off; a ``GradScaler`` reads its inf check once per step) run
    without one, after a first run that sets up cuDNN. (Ran on an H200 with ``slices``, before ``concat`` existed.)"""
    monkeypatch.setattr(GroupBatchNorm2d, "implementation", implementation)
    cuda = torch.device("cuda")
    if kind == "cross_pseudo_label":
        net = TwoBranchFlexibleUNet(out_channels=3, backbone="resnet10").to(cuda)
        batch = {"image": torch.rand(4, 1, SIZE, SIZE), "label": torch.randint(0, 3, (4, 1, SIZE, SIZE)).float()}
        batch["labeled"] = torch.tensor([0, 1, 1, 0])
        loss = CrossPseudoLabelLoss(dice_weight=1.0, rampup_epochs=2, confidence_threshold=0.5)
        make = CrossPseudoLabelTrainer
    else:
        net = DenseContrastiveNet(backbone="resnet10", feature_level=-2, momentum=0.99).to(cuda)
        batch = {"image": torch.rand(4, 1, 64, 64), "image_view2": torch.rand(4, 1, 64, 64)}
        loss = LocalContrastiveLoss(max_locations=8)
        make = ContrastivePretrainTrainer
    batch = {k: v.pin_memory() for k, v in batch.items()}
    trainer = make(
        device=cuda, max_epochs=1, train_data_loader=[batch] * 3, network=net, decollate=False, non_blocking=True,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=loss,
    )  # fmt: skip
    trainer.run()
    torch.cuda.synchronize()
    with _syncs_raise():
        trainer.run()
    assert trainer.state.iteration == 3
    # the detector works: a host read of the loss raises
    with _syncs_raise(), pytest.raises(RuntimeError, match="synchroniz"):
        trainer.state.output["loss"].item()


@pytest.mark.slow
def test_compile_option_gives_the_eager_step():
    """``compile=True`` (what the bundles' ``compile`` id sets) trains the same as eager, per-group BatchNorm
    included; the network needs ``is_pad=False`` (the bundles set it from ``compile``)."""
    batch = {"image": torch.rand(4, 1, 64, 64), "label": torch.randint(0, 3, (4, 1, 64, 64)).float()}
    batch["labeled"] = torch.tensor([1, 1, 0, 0])
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        net = TwoBranchFlexibleUNet(out_channels=3, backbone="resnet10", is_pad=False)
        trainer = CrossPseudoLabelTrainer(
            device=DEVICE, max_epochs=1, train_data_loader=[batch] * 3, network=net, decollate=False,
            optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=CrossPseudoLabelLoss(), compile=compiled,
        )  # fmt: skip
        seen = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(float(e.state.output["loss"])))
        trainer.run()
        losses[compiled] = seen
        assert (type(trainer.network).__name__ == "OptimizedModule") is compiled
    # the first loss is the same forward; Adam's normalised steps then amplify the fused kernels' rounding
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=1e-5)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)
