"""``benchmarks/diagnose_collapse.py``: each decoder of a sweep cell scored on the cell's own data, on a tiny phantom
set with weights written as the bundles write them (no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("diagnose_collapse", REPO / "benchmarks" / "diagnose_collapse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _background_only(head: torch.nn.Module) -> None:
    last = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """A sweep folder with one CPS and one supervised cell: ``sweep.json`` holding their commands as the sweep plans
    them, a train.log with validation lines, an end-of-training checkpoint and ``model.pt``. In the CPS cell decoder B
    of the end-of-training weights, and the evaluated weights (``model.pt``, decoder A otherwise equal), output
    background everywhere (a bias on the last layer); decoder A of the end-of-training weights does not."""
    from ideal_components.data.acdc import prepare_acdc
    from ideal_components.experiments.plan import plan_sweep
    from ideal_components.synthetic import synth_acdc

    base = tmp_path_factory.mktemp("diagnose")
    synth_acdc(str(base / "raw"), patients=5, seed=3, progress=False)
    prepare_acdc(str(base / "raw"), str(base / "prepared"), pixdim=4.0, spatial_size=64)
    out = base / "sweep"
    overrides = {"backbone": "resnet18", "spatial_size": [64, 64], "max_epochs": 2, "val_interval": 1, "num_workers": 0}
    plan = plan_sweep(str(REPO / "bundles" / "ideal_acdc"), "10", "supervised,cps", "0", str(base / "prepared"),
                      str(out), overrides)  # fmt: skip
    steps = {s.key: {"command": s.command} for s in plan.steps if s.kind == "train"}
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"steps": steps}))
    module = _module()
    for key in steps:
        cell = key.rsplit("/", 1)[0]
        parser = module.cell_parser(out, cell)
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
        models = out / cell / "models"
        models.mkdir(parents=True)
        if hasattr(network, "forward_both"):
            _background_only(network.segmentation_head_b)
            torch.save({"network": network.state_dict()}, models / "train_checkpoint_epoch=2.pt")
            _background_only(network.branch_a.segmentation_head)
            torch.save(network.branch_a.state_dict(), models / "model.pt")
        else:
            torch.save({"network": network.state_dict()}, models / "train_checkpoint_epoch=2.pt")
            torch.save(network.state_dict(), models / "model.pt")
        (out / cell / "train.log").write_text(
            "x - Metrics -- val_mean_dice: 0.1250\ny - Metrics -- val_mean_dice: 0.25\n"
        )
    return module, out


def test_each_decoder_scored_on_every_subset_with_both_bn_modes(cells):
    module, out = cells
    figures = module.diagnose(out, "cps/f10/seed0")
    rows = figures["rows"]
    assert set(rows) == {f"{w} | BN {bn}" for w in ("final, decoder A", "final, decoder B", "evaluated (model.pt)")
                         for bn in ("eval", "train")}  # fmt: skip
    for row in rows.values():
        assert set(row) == set(module.SUBSETS)
    # decoder B outputs background only: no foreground predicted, Dice 0 wherever the label has foreground
    for subset, fig in rows["final, decoder B | BN eval"].items():
        assert fig["predicted_foreground"] == 0.0 and fig["dice"] == 0.0, subset
    # the evaluated weights are model.pt's (background only), not the end-of-training decoder A's (random: some
    # foreground)
    for subset, fig in rows["evaluated (model.pt) | BN eval"].items():
        assert fig["predicted_foreground"] == 0.0, subset
    assert rows["final, decoder A | BN eval"]["labelled"]["predicted_foreground"] > 0
    assert figures["logged_validation_dice"] == [0.125, 0.25]
    saved = json.loads((out / "cps" / "f10" / "seed0" / "collapse_diagnosis.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    lines = module.markdown(figures)
    assert lines[0].startswith("### cps/f10/seed0") and "(best 0.2500)" in lines[0]
    assert any(line.startswith("| final, decoder B | eval | 0.000 (0.000) |") for line in lines)


def test_single_network_cell_and_untouched_running_statistics(cells):
    module, out = cells
    rows = module.diagnose(out, "supervised/f10/seed0")["rows"]
    assert set(rows) == {f"{w} | BN {bn}" for w in ("final", "evaluated (model.pt)") for bn in ("eval", "train")}
    parser = module.cell_parser(out, "supervised/f10/seed0")
    network = parser.get_parsed_content("network_def")
    bn = next(m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    x = torch.randn(2, 1, 64, 64)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    count = bn.num_batches_tracked.clone()
    module.score(lambda x: {"net": network(x)}, network, [(x, label)], "train", 4)
    assert torch.equal(before, bn.running_mean) and bn.momentum != 0.0 and torch.equal(count, bn.num_batches_tracked)


def test_bn_train_mode_normalises_with_the_batch_statistics():
    """A network of one BN layer (running mean 0, variance 1) on inputs around 5: with the running statistics every
    pixel is foreground; with the batch's own statistics about half of them."""
    module = _module()
    bn = torch.nn.BatchNorm2d(1)
    decoder = lambda x: {"bn": torch.cat([torch.zeros_like(x), bn(x)], 1)}  # noqa: E731
    x = 5.0 + torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    label = torch.ones(3, 16, 16, dtype=torch.long)
    assert module.score(decoder, bn, [(x, label)], "eval", 2)["bn"]["predicted_foreground"] == 1.0
    half = module.score(decoder, bn, [(x, label)], "train", 2)["bn"]["predicted_foreground"]
    assert 0.4 < half < 0.6
    assert bn.running_mean.item() == 0.0 and not bn.training


def test_volume_dice_as_the_evaluation_counts_it():
    module = _module()
    label = torch.zeros(4, 8, 8, dtype=torch.long)
    label[:, :4] = 1
    label[:, 4:6] = 2  # class 3 absent from the label
    pred = label.clone()
    pred[:, 4:6] = 0  # class 2 missed entirely, class 3 predicted nowhere
    assert module.volume_dice(pred, label, 4) == pytest.approx(0.5)  # (1 + 0) / 2: class 3, absent, left out
    pred[:, 7] = 3  # class 3 predicted though absent from the label: still left out (class 1 unchanged)
    assert module.volume_dice(pred, label, 4) == pytest.approx(0.5)


def test_unknown_cell_and_missing_weights_are_named(cells, tmp_path):
    module, out = cells
    with pytest.raises(SystemExit, match="no training step ideal/f10/seed0/train"):
        module.diagnose(out, "ideal/f10/seed0")
    checkpoint = out / "supervised" / "f10" / "seed0" / "models" / "model.pt"
    moved = tmp_path / "model.pt"
    checkpoint.rename(moved)
    try:
        with pytest.raises(SystemExit, match="model.pt: missing"):
            module.diagnose(out, "supervised/f10/seed0")
    finally:
        moved.rename(checkpoint)
