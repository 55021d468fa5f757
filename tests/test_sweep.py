"""Label-fraction sweeps: argument parsing, the plan, resuming, the results table and one real phantom sweep."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from ideal_components import experiments as sw
from ideal_components.evaluation.metrics import METRIC_NAMES, aggregate
from ideal_components.experiments.sweep import bundle_configs_sha256

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ideal_acdc"
CONFIGS = BUNDLE / "configs"
TINY = {"backbone": "resnet10", "spatial_size": [64, 64], "num_workers": 0, "max_epochs": 1, "val_interval": 1}


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """A prepared-dataset folder holding only a datalist (enough for planning and for fake bundle runs)."""
    d = tmp_path / "prepared"
    d.mkdir()
    datalist = {"fractions": ["1.25", "2.5", "10", "100"], "preparation": {"dataset": "acdc"}, "training": []}
    (d / "datalist.json").write_text(json.dumps(datalist))
    return d


def _arg(cmd: list[str], key: str) -> str | None:
    return cmd[cmd.index(key) + 1] if key in cmd else None


def _configs(cmd: list[str]) -> list[str]:
    return [Path(p).name for p in json.loads(_arg(cmd, "--config_file"))]


def write_summary(cell: Path, dice: float, dist: float = 2.0, units: str = "mm") -> None:
    """``eval/metrics_summary.json`` in VolumeMetricsWriter's format: two volumes x three classes."""
    rows = []
    for v, offset in (("patient003_ED", 0.05), ("patient005_ED", -0.05)):
        for i, name in enumerate(["RV", "MYO", "LV"], 1):
            row = {"volume": v, "class_index": i, "class_name": name, "empty": None}
            row.update({m: dist + offset for m in METRIC_NAMES})
            row["dice"] = dice + offset
            rows.append(row)
    summary = aggregate(rows)
    summary.update(units=units, hd95_convention="medpy", connectivity=1, empty_policy="...")
    (cell / "eval").mkdir(parents=True, exist_ok=True)
    (cell / "eval" / "metrics_summary.json").write_text(json.dumps(summary, indent=2))


# ---------------------------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    "value, expected",
    [
        ("supervised,global_cl,ideal", ["supervised", "global_cl", "ideal"]),
        (("supervised", "Global-CL"), ["supervised", "global_cl"]),
        (["ideal", "ideal", "cps"], ["ideal", "cps"]),
        ("local_cl", ["local_cl"]),
    ],
)
def test_parse_methods(value, expected):
    assert sw.parse_methods(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [(0, [0]), ("0", [0]), ("0,1,2", [0, 1, 2]), ((0, 1, 2), [0, 1, 2]), ([2, "0"], [2, 0]), (3.0, [3])],
)
def test_parse_seeds(value, expected):
    assert sw.parse_seeds(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1.25,2.5,10,100", ["1.25", "2.5", "10", "100"]),
        ((1.25, 2.5), ["1.25", "2.5"]),
        (10, ["10"]),
        ("10", ["10"]),
        ([100.0, "10%"], ["10", "100"]),
        (None, ["1.25", "2.5", "10", "100"]),
    ],
)
def test_parse_fractions(value, expected):
    assert sw.parse_sweep_fractions(value, "acdc") == expected


@pytest.mark.parametrize(
    "func, value",
    [
        (sw.parse_methods, "supervised,mean_teacher"),
        (sw.parse_methods, ""),
        (sw.parse_seeds, "a"),
        (sw.parse_seeds, -1),
        (sw.parse_seeds, 1.5),
        (sw.parse_sweep_fractions, "0"),
        (sw.parse_sweep_fractions, "101"),
        (sw.parse_overrides, "{'a': "),
        (sw.parse_overrides, "[1, 2]"),
    ],
)
def test_parse_errors(func, value):
    with pytest.raises(ValueError):
        func(value)


def test_parse_overrides():
    assert sw.parse_overrides(None) == {} and sw.parse_overrides("") == {}
    got = sw.parse_overrides("{'backbone': 'resnet18', 'spatial_size': (64, 64), 'amp': False}")
    assert got == {"backbone": "resnet18", "spatial_size": [64, 64], "amp": False}
    assert sw.parse_overrides({"max_epochs": 20}) == {"max_epochs": 20}


# ---------------------------------------------------------------------------------------------------------------
# the plan


def test_plan_commands_and_shared_pretraining(tmp_path, fake_data):
    overrides = {**TINY, "learning_rate": 0.001}
    plan = sw.plan_sweep(
        str(BUNDLE),
        fractions=(1.25, 10),
        methods="supervised,global_cl,local_cl,ideal,cps,global_cps",
        seeds="0,1",
        dataset_dir=str(fake_data),
        out=str(tmp_path / "out"),
        overrides=overrides,
        pretrain_overrides="{'max_epochs': 3, 'temperature': 0.2}",
    )
    assert plan.dataset == "acdc" and plan.fractions == ["1.25", "10"] and plan.seeds == [0, 1]
    assert not any(s.done for s in plan.steps)
    out = tmp_path / "out"
    pretrain = [s for s in plan.steps if s.kind == "pretrain"]
    # pre-training once per (pre-training, seed): local_cl reuses ideal's, global_cps global_cl's
    assert sorted((s.method, s.seed) for s in pretrain) == sorted(
        (m, k) for m in ("global_cl", "ideal") for k in (0, 1)
    )
    expected = {
        # method: (pretrain configs, fine-tuning configs, use_pretrained)
        "supervised": (None, ["train.json", "train_supervised.json"], "False"),
        "global_cl": (["pretrain.json", "pretrain_global.json"], ["train.json", "train_supervised.json"], "True"),
        "local_cl": (["pretrain.json"], ["train.json", "train_supervised.json"], "True"),
        "ideal": (["pretrain.json"], ["train.json"], "True"),
        "cps": (None, ["train.json"], "False"),
        "global_cps": (["pretrain.json", "pretrain_global.json"], ["train.json"], "True"),
    }
    owner = {"local_cl": "ideal", "global_cps": "global_cl"}
    for s in pretrain:
        root = out / s.method / f"seed{s.seed}" / "pretrain"
        assert s.bundle_root == str(root) and s.done_file == str(root / "models" / "pretrained_encoder.pt")
        assert _configs(s.command) == expected[s.method][0]
        assert _arg(s.command, "--bundle_root") == str(root) and _arg(s.command, "--seed") == str(s.seed)
        assert _arg(s.command, "--dataset_dir") == str(fake_data)
        # shared ids from overrides, pre-training ids from pretrain_overrides, no fine-tuning-only ids
        assert _arg(s.command, "--backbone") == "resnet10" and _arg(s.command, "--spatial_size") == "[64,64]"
        assert _arg(s.command, "--num_workers") == "0" and _arg(s.command, "--max_epochs") == "3"
        assert _arg(s.command, "--temperature") == "0.2"
        for key in ("--learning_rate", "--val_interval", "--label_fraction", "--use_pretrained"):
            assert key not in s.command
        assert s.command[1:4] == ["-m", "monai.bundle", "run"] and s.command[0] == sys.executable
    cells = [s for s in plan.steps if s.kind != "pretrain"]
    assert len(cells) == 6 * 2 * 2 * 2
    for s in cells:
        cell = out / s.method / f"f{s.fraction}" / f"seed{s.seed}"
        assert s.bundle_root == str(cell) and _arg(s.command, "--bundle_root") == str(cell)
        pre, fine, use = expected[s.method]
        assert _configs(s.command) == (fine if s.kind == "train" else [*fine, "evaluate.json"])
        assert s.log == str(cell / ("train.log" if s.kind == "train" else "eval.log"))
        assert _arg(s.command, "--label_fraction") == s.fraction and _arg(s.command, "--seed") == str(s.seed)
        assert _arg(s.command, "--use_pretrained") == use
        assert _arg(s.command, "--learning_rate") == "0.001" and _arg(s.command, "--max_epochs") == "1"
        assert "--temperature" not in s.command
        encoder = _arg(s.command, "--pretrained_encoder")
        if pre is None:
            assert encoder is None
        else:  # every fraction of a (method, seed) starts from the one pre-training of that (owner, seed)
            (shared,) = [p for p in pretrain if (p.method, p.seed) == (owner.get(s.method, s.method), s.seed)]
            assert encoder == shared.done_file
            assert plan.steps.index(shared) < plan.steps.index(s)
    # a cell is train then evaluate; the evaluation marks the cell done
    keys = [s.key for s in plan.steps]
    assert keys.index("ideal/f10/seed1/train") + 1 == keys.index("ideal/f10/seed1/evaluate")
    ev = plan.steps[keys.index("ideal/f10/seed1/evaluate")]
    assert ev.done_file == str(out / "ideal" / "f10" / "seed1" / "eval" / "metrics_summary.json")


def test_plan_chaitanya_two_stages_shared_and_loaded(tmp_path, fake_data):
    """Chaitanya et al.: stage 1 (encoder) then stage 2 (decoder blocks) in one folder, once per seed for both
    fine-tunings, each stage with the pre-training overrides; every cell loads the encoder and the decoder file."""
    out = tmp_path / "out"
    plan = sw.plan_sweep(str(BUNDLE), "10", "chaitanya,chaitanya_sup,ideal", "0", str(fake_data), str(out), TINY,
                         "{'max_epochs': 3}")  # fmt: skip
    root = out / "chaitanya" / "seed0" / "pretrain"
    stages = [s for s in plan.steps if s.kind.startswith("pretrain") and s.method == "chaitanya"]
    assert [(s.kind, s.key) for s in stages] == [
        ("pretrain", "chaitanya/seed0/pretrain"), ("pretrain_decoder", "chaitanya/seed0/pretrain_decoder")
    ]  # fmt: skip
    first, second = stages
    assert _configs(first.command) == ["pretrain.json", "pretrain_chaitanya.json"]
    assert _configs(second.command) == ["pretrain.json", "pretrain_chaitanya_decoder.json"]
    assert first.bundle_root == second.bundle_root == str(root) and second.log == str(root / "pretrain_decoder.log")
    assert first.done_file == str(root / "models" / "pretrained_encoder.pt")
    assert second.done_file == str(root / "models" / "pretrained_decoder.pt")
    assert all(_arg(s.command, "--max_epochs") == "3" and _arg(s.command, "--resume") == "True" for s in stages)
    cells = [s for s in plan.steps if s.method.startswith("chaitanya") and s.fraction is not None]
    assert {s.method for s in cells} == {"chaitanya", "chaitanya_sup"} and len(cells) == 4
    for s in cells:
        assert _arg(s.command, "--pretrained_encoder") == first.done_file
        assert _arg(s.command, "--pretrained_decoder") == second.done_file
        assert plan.steps.index(second) < plan.steps.index(s)
    assert all("--pretrained_decoder" not in s.command for s in plan.steps if s.method == "ideal")
    # overwrite clears the folder before stage 1 only (stage 2 needs stage 1's encoder)
    again = sw.plan_sweep(str(BUNDLE), "10", "chaitanya", "0", str(fake_data), str(out), TINY, ignore_done=True)
    clears = {s.kind: s.clear for s in again.steps if s.fraction is None}
    assert clears["pretrain"][:2] == [str(root / "models"), str(root / "logs")] and clears["pretrain_decoder"] == []

    def stages():
        plan = sw.plan_sweep(str(BUNDLE), "10", "chaitanya", "0", str(fake_data), str(out), TINY)
        return {s.kind: s for s in plan.steps if s.fraction is None}

    # stage 1 to run again, stage 2's files from an earlier run present: stage 2 reruns, stage 1 removes them first
    (root / "models").mkdir(parents=True)
    stale = [root / "models" / "pretrained_decoder.pt", root / "models" / "pretrain_decoder_checkpoint_epoch=2.pt"]
    for p in stale:
        p.write_bytes(b"old")
    plan = stages()
    assert not plan["pretrain"].done and not plan["pretrain_decoder"].done
    assert set(map(str, stale)) <= set(plan["pretrain"].clear) and plan["pretrain_decoder"].clear == []
    # stage 1 done: stage 2 is done as soon as its file exists, and resumes (its checkpoints kept) until then
    (root / "models" / "pretrained_encoder.pt").write_bytes(b"x")
    assert {k: s.done for k, s in stages().items()} == {"pretrain": True, "pretrain_decoder": True}
    stale[0].unlink()
    plan = stages()
    assert {k: s.done for k, s in plan.items()} == {"pretrain": True, "pretrain_decoder": False}
    assert plan["pretrain_decoder"].clear == [] and stale[1].exists()
    with pytest.raises(ValueError, match="pretrained_decoder"):
        sw.plan_sweep(str(BUNDLE), "10", "chaitanya", "0", str(fake_data), str(out), {"pretrained_decoder": "x"})


def test_dry_run_through_the_cli(tmp_path, fake_data, capsys):
    from ideal_components.cli import main

    out = tmp_path / "out"
    argv = ["sweep", "--bundle", str(BUNDLE), "--fractions", "1.25,2.5", "--methods", "supervised,ideal"]
    argv += ["--seeds", "0", "--dataset_dir", str(fake_data), "--out", str(out), "--dry_run", "True"]
    argv += ["--overrides", "{'backbone': 'resnet18', 'max_epochs': 20}"]
    main(argv)
    text = capsys.readouterr().out
    assert not out.exists(), "a dry run writes nothing"
    # supervised: 2 cells x (train, evaluate); ideal: 1 pre-training + 2 cells x (train, evaluate)
    assert "9 of 9 steps to run" in text
    runs = [line.strip() for line in text.splitlines() if "monai.bundle run" in line]
    assert len(runs) == 9
    assert sum("pretrain.json" in r for r in runs) == 1
    assert all("--backbone resnet18" in r and "--seed 0" in r for r in runs)
    assert sum("--label_fraction 2.5" in r for r in runs) == 4
    assert str(out / "results.md") in text


def test_plan_marks_done_steps(tmp_path, fake_data):
    out, steps = tmp_path / "out", ("train", "evaluate")
    kwargs = dict(fractions="1.25,10", methods="ideal,supervised", seeds="0", dataset_dir=str(fake_data), out=str(out))
    write_summary(out / "ideal" / "f1.25" / "seed0", 0.7)
    plan = sw.plan_sweep(str(BUNDLE), overrides=TINY, **kwargs)
    done = {s.key for s in plan.steps if s.done}
    assert done == {"ideal/f1.25/seed0/train", "ideal/f1.25/seed0/evaluate"}
    # all cells of (ideal, seed 0) done: its pre-training is not needed any more
    write_summary(out / "ideal" / "f10" / "seed0", 0.7)
    plan = sw.plan_sweep(str(BUNDLE), overrides=TINY, **kwargs)
    assert {s.key for s in plan.steps if s.done} >= {"ideal/seed0/pretrain", "ideal/f10/seed0/evaluate"}
    assert [s.key for s in plan.pending()] == [f"supervised/f{f}/seed0/{k}" for f in ("1.25", "10") for k in steps]
    # a finished training (train_done.json) is kept, only the evaluation reruns
    (out / "supervised" / "f10" / "seed0").mkdir(parents=True)
    (out / "supervised" / "f10" / "seed0" / "train_done.json").write_text("{}")
    plan = sw.plan_sweep(str(BUNDLE), overrides=TINY, **kwargs)
    assert "supervised/f10/seed0/train" not in [s.key for s in plan.pending()]
    assert all(not s.done for s in sw.plan_sweep(str(BUNDLE), overrides=TINY, ignore_done=True, **kwargs).steps)
    # a shared pre-training is needed while any method using it has a cell to run
    kwargs["methods"] = "ideal,local_cl"
    plan = sw.plan_sweep(str(BUNDLE), overrides=TINY, **kwargs)
    assert [s.key for s in plan.steps if s.kind == "pretrain"] == ["ideal/seed0/pretrain"]
    assert "ideal/seed0/pretrain" in [s.key for s in plan.pending()]
    for f in ("1.25", "10"):
        write_summary(out / "local_cl" / f"f{f}" / "seed0", 0.6)
    assert not sw.plan_sweep(str(BUNDLE), overrides=TINY, **kwargs).pending()


@pytest.mark.parametrize(
    "overrides, pretrain_overrides, match",
    [
        ({"seed": 3}, None, "may not set"),
        ({"label_fraction": "10"}, None, "may not set"),
        (None, {"dataset_dir": "/x"}, "may not set"),
        ({"backbone": "resnet10"}, {"backbone": "resnet18"}, "same for both phases"),
        (None, {"spatial_size": [64, 64]}, "same for both phases"),
        ({"max_epochs": 2, "val_interval": 5}, None, "val_interval"),
    ],
)
def test_plan_rejects_bad_overrides(tmp_path, fake_data, overrides, pretrain_overrides, match):
    with pytest.raises(ValueError, match=match):
        sw.plan_sweep(str(BUNDLE), "10", "ideal", 0, str(fake_data), str(tmp_path / "o"), overrides, pretrain_overrides)


def test_plan_rejects_missing_fraction_and_configs(tmp_path, fake_data):
    with pytest.raises(ValueError, match="no label fraction"):
        sw.plan_sweep(str(BUNDLE), "20", "ideal", 0, str(fake_data), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="missing bundle config"):
        sw.plan_sweep(str(tmp_path), "10", "ideal", 0, str(fake_data), str(tmp_path / "o"))


# ---------------------------------------------------------------------------------------------------------------
# results


def test_results_table_from_cell_outputs(tmp_path, fake_data):
    out = tmp_path / "out"
    write_summary(out / "ideal" / "f10" / "seed0", 0.8, dist=2.0)
    write_summary(out / "ideal" / "f10" / "seed1", 0.6, dist=4.0)
    write_summary(out / "global_cl" / "f10" / "seed0", 0.5)
    write_summary(out / "supervised" / "f1.25" / "seed1", 0.3)
    write_summary(out / "cps" / "f100" / "seed0", 0.9)  # not planned: still reported, after the planned rows
    plan = sw.plan_sweep(
        str(BUNDLE), "1.25,10", "supervised,global_cl,ideal", "0,1", str(fake_data), str(out), overrides=TINY
    )
    md, path = sw.write_results(plan)
    assert path == str(out / "results.md") and Path(path).read_text() == md
    rows = {
        (r["method"], r["fraction"]): r
        for r in sw.collect_results(str(out), plan.methods, plan.fractions, [0, 1], "acdc")
    }
    ideal = rows[("ideal", "10")]
    assert ideal["seeds_done"] == [0, 1] and ideal["seeds_planned"] == 2
    assert ideal["dice_mean"] == pytest.approx(0.7) and ideal["dice_std"] == pytest.approx(0.1)
    assert ideal["hd95_mean"] == pytest.approx(3.0) and ideal["asd_std"] == pytest.approx(1.0)
    assert (ideal["paper_dice"], ideal["paper_hd"], ideal["paper_asd"]) == (0.879, 2.094, 0.556)
    assert rows[("global_cl", "10")]["paper_dice"] == 0.847 and rows[("global_cl", "10")]["paper_hd"] is None
    assert rows[("global_cl", "1.25")]["paper_dice"] == 0.729 and rows[("global_cl", "1.25")]["seeds_done"] == []
    assert rows[("supervised", "1.25")]["paper_dice"] is None
    assert list(rows)[-1] == ("cps", "100") and rows[("cps", "100")]["seeds_planned"] == 1

    lines = md.splitlines()
    ideal_line = "| IDEAL | 10% | 2/2 | 0.700 ± 0.100 | [-0.571, 1.971] | 3.000 ± 1.000 | 3.000 ± 1.000 "
    assert ideal_line + "| 0.879 | 2.094 | 0.556 |" in lines  # t(0.975, 1) = 12.706
    assert "| Global CL | 10% | 1/2 | 0.500 ± 0.000 | n/a | 2.000 ± 0.000 | 2.000 ± 0.000 | 0.847 | – | – |" in lines
    assert "| Global CL | 1.25% | 0/2 | n/a | n/a | n/a | n/a | 0.729 | – | – |" in lines
    assert "| Supervised | 1.25% | 1/2 | 0.300 ± 0.000 | n/a | 2.000 ± 0.000 | 2.000 ± 0.000 | – | – | – |" in lines
    assert "| Supervised | 10% | 0/2 | n/a | n/a | n/a | n/a | – | – | – |" in lines
    assert "HD95 (mm)" in md and "ASD (mm)" in md and "voxels" in md and "HD95 convention: medpy" in md
    table_rows = [line for line in lines if line.startswith("| ") and "%" in line and not line.startswith("| Method")]
    assert len(table_rows) == 3 * 2 + 1

    csv_lines = (out / "results.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert header[:5] == ["method", "label", "fraction", "seeds_done", "seeds_planned"]
    first = dict(zip(header, csv_lines[1].split(",")))
    assert first["method"] == "supervised" and first["fraction"] == "1.25" and first["seeds_done"] == "1"
    ideal_csv = [dict(zip(header, line.split(","))) for line in csv_lines[1:] if line.startswith("ideal,IDEAL,10,")]
    assert float(ideal_csv[0]["dice_mean"]) == pytest.approx(0.7) and ideal_csv[0]["paper_hd"] == "2.094"
    assert ideal_csv[0]["seeds"] == "0 1" and ideal_csv[0]["units"] == "mm"
    # the plot: a PNG of the rows with values
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_results_draws_means_and_intervals(tmp_path, monkeypatch):
    """One line per method at the fractions it has; the error bar is the t-interval of its seeds."""
    from ideal_components.experiments import results as res

    drawn = []
    monkeypatch.setattr(res, "_save_figure", lambda fig, path: drawn.append(fig.axes[0]))
    rows = [
        {"label": "CPS", "fraction": "2.5", "dice_values": [0.5, 0.6, 0.55]},
        {"label": "CPS", "fraction": "10", "dice_values": [0.6]},
        {"label": "Supervised", "fraction": "10", "dice_values": [0.4, 0.45]},
        {"label": "IDEAL", "fraction": "10", "dice_values": []},
    ]
    assert res.plot_results(rows, str(tmp_path / "p.png"), fraction_labels={"2.5": "1 volume"})
    ax = drawn[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 volume", "10 %"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CPS (3 seeds)", "Supervised (2 seeds)"]
    cps = ax.containers[0]
    line, bars = cps.lines[0], cps.lines[2][0]  # (data line, cap lines, bar collections)
    assert list(line.get_ydata()) == pytest.approx([0.55, 0.6]) and len(bars.get_segments()) == 2
    lo, hi = res.t_interval([0.5, 0.6, 0.55])
    assert bars.get_segments()[0][:, 1] == pytest.approx([lo, hi])
    assert not res.plot_results([{"label": "x", "fraction": "10", "dice_values": []}], str(tmp_path / "q.png"))


def test_paired_differences(tmp_path, fake_data):
    """Pairs by seed, only where both methods are done; Student-t interval; the table lands in results.md."""
    from ideal_components.experiments.compare import paired_differences, t_interval

    out = tmp_path / "out"
    for seed, (ideal, cps) in enumerate([(0.80, 0.75), (0.70, 0.72), (0.90, 0.80)]):
        write_summary(out / "ideal" / "f10" / f"seed{seed}", ideal)
        write_summary(out / "cps" / "f10" / f"seed{seed}", cps)
    write_summary(out / "ideal" / "f100" / "seed0", 0.9)  # no cps partner: no row
    (row,) = paired_differences(str(out), ["10", "100"])
    assert (row["a"], row["b"], row["fraction"], row["seeds"]) == ("ideal", "cps", "10", [0, 1, 2])
    assert row["differences"] == pytest.approx([0.05, -0.02, 0.10])
    assert row["mean"] == pytest.approx(0.13 / 3) and (row["a_better"], row["b_better"]) == (2, 1)
    half = 4.302653 * np.std([0.05, -0.02, 0.10], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert row["ci95"] == pytest.approx((0.13 / 3 - half, 0.13 / 3 + half), rel=1e-5)
    assert all(np.isnan(t_interval([0.1])))
    assert paired_differences(str(out), ["10"], seeds=[1])[0]["differences"] == pytest.approx([-0.02])
    plan = sw.plan_sweep(str(BUNDLE), "10,100", "cps,ideal", "0,1,2", str(fake_data), str(out), overrides=TINY)
    md, _ = sw.write_results(plan)
    assert "## Paired differences (test DSC)" in md and "| ideal - cps | 3 | +0.043 [" in md


def test_rivals_rows_paper_numbers_and_differences_from_ideal(tmp_path, fake_data):
    """The rivals fine-tuned as published carry the DSC IDEAL's comparison table quotes (Chaitanya et al. on both
    datasets, PCL on ACDC only); IDEAL - each rival is paired by seed."""
    out = tmp_path / "out"
    for seed, (ideal, cha, pcl) in enumerate([(0.80, 0.70, 0.75), (0.70, 0.72, 0.60)]):
        write_summary(out / "ideal" / "f2.5" / f"seed{seed}", ideal)
        write_summary(out / "chaitanya" / "f2.5" / f"seed{seed}", cha)
        write_summary(out / "pcl" / "f2.5" / f"seed{seed}", pcl)
    methods = ["ideal", "chaitanya", "chaitanya_sup", "pcl", "pcl_sup"]
    rows = {(r["method"], r["fraction"]): r for r in sw.collect_results(str(out), methods, ["2.5"], [0, 1], "acdc")}
    assert rows[("chaitanya_sup", "2.5")]["paper_dice"] == 0.789 and rows[("pcl_sup", "2.5")]["paper_dice"] == 0.850
    assert rows[("chaitanya", "2.5")]["paper_dice"] is None and rows[("pcl", "2.5")]["paper_dice"] is None
    mmwhs = sw.collect_results(str(out), ["chaitanya_sup", "pcl_sup"], ["20"], [0], "mmwhs")
    assert [r["paper_dice"] for r in mmwhs if r["fraction"] == "20"] == [0.694, None]
    plan = sw.plan_sweep(str(BUNDLE), "2.5", ",".join(methods), "0,1", str(fake_data), str(out), overrides=TINY)
    md, _ = sw.write_results(plan)
    assert "| ideal - chaitanya | 2 | +0.040 [" in md and "| ideal - pcl | 2 | +0.075 [" in md
    assert "| Chaitanya et al. | 2.5% | 0/2 |" in md and "5-fold" in md


def test_results_in_voxel_units(tmp_path):
    write_summary(tmp_path / "ideal" / "f10" / "seed0", 0.8, units="voxel")
    rows = sw.collect_results(str(tmp_path), ["ideal"], ["10"], [0], "acdc")
    md = sw.results_markdown(rows)
    assert "HD95 (voxels)" in md and rows[0]["units"] == "voxel"


# ---------------------------------------------------------------------------------------------------------------
# running, with a fake interpreter standing in for `python -m monai.bundle run`

FAKE_RUNNER = '''#!{python}
"""Stands in for `python -m monai.bundle run`: writes what the bundle would and logs the call."""
import json, os, sys
args = sys.argv[1:]
def arg(key):
    return args[args.index(key) + 1] if key in args else None
root, configs = arg("--bundle_root"), [os.path.basename(c) for c in json.loads(arg("--config_file"))]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({{"root": root, "configs": configs}}) + "\\n")
print("fake bundle run", configs)
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in root:
    print("Traceback: boom in", root)
    sys.exit(3)
os.makedirs(os.path.join(root, "models"), exist_ok=True)
if configs[0] == "pretrain.json":
    open(os.path.join(root, "models", "pretrained_encoder.pt"), "w").write("encoder")
elif configs[-1] == "evaluate.json":
    os.makedirs(os.path.join(root, "eval"), exist_ok=True)
    m = {{k: {{"mean": 0.5 + 0.1 * int(arg("--seed")), "std": 0.0}} for k in ("dice", "hd", "hd95", "asd", "assd")}}
    summary = {{"metrics": m, "units": "mm", "hd95_convention": "medpy"}}
    json.dump(summary, open(os.path.join(root, "eval", "metrics_summary.json"), "w"))
else:
    if arg("--pretrained_encoder"):
        print("loaded pretrained encoder weights from", arg("--pretrained_encoder"))
    open(os.path.join(root, "models", "model.pt"), "w").write("model")
'''


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> tuple[str, Path]:
    script = tmp_path / "fake_python"
    script.write_text(FAKE_RUNNER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    return str(script), calls


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_resume_with_fake_runs(tmp_path, fake_data, fake_python, capsys):
    python, calls = fake_python
    out = tmp_path / "out"
    kwargs = dict(
        fractions="1.25,10", methods="ideal,supervised", seeds="0,1", dataset_dir=str(fake_data), out=str(out)
    )
    sw.sweep(str(BUNDLE), overrides=TINY, python=python, max_cells=3, **kwargs)
    first = _calls(calls)
    # seed 0: ideal pretrain + 2 ideal cells + 1 supervised cell, then stop
    assert [c["configs"][0] for c in first].count("pretrain.json") == 1 and len(first) == 1 + 3 * 2
    record = json.loads((out / "sweep.json").read_text())
    assert record["settings"]["overrides"] == TINY
    assert record["steps"]["supervised/f10/seed0/train"]["status"] == "pending"
    assert record["steps"]["ideal/f10/seed0/evaluate"]["status"] == "done"
    assert "--label_fraction 10" in record["steps"]["ideal/f10/seed0/train"]["command_line"]
    # an interrupted training continues from its checkpoint; evaluation has nothing to resume
    assert "--resume True" in record["steps"]["supervised/f10/seed0/train"]["command_line"]
    assert "--resume True" in record["steps"]["ideal/seed0/pretrain"]["command_line"]
    assert "--resume" not in record["steps"]["ideal/f10/seed0/evaluate"]["command_line"]

    path = sw.sweep(str(BUNDLE), overrides=TINY, python=python, **kwargs)
    second = _calls(calls)[len(first) :]
    roots = [c["root"] for c in second]
    assert str(out / "ideal" / "seed0" / "pretrain") not in roots, "a done pre-training is not rerun"
    assert not any("/f1.25/seed0" in r or "ideal/f10/seed0" in r for r in roots), "done cells are not rerun"
    assert len(second) == 1 * 2 + 1 + 4 * 2  # supervised f10 seed0, ideal pretrain seed1, 4 cells of seed 1
    md = Path(path).read_text()
    assert "| IDEAL | 10% | 2/2 | 0.550 ± 0.050 |" in md and "| Supervised | 1.25% | 2/2 |" in md
    assert "| IDEAL | 10% | 2/2" in capsys.readouterr().out
    record = json.loads((out / "sweep.json").read_text())
    assert all(s["status"] == "done" for s in record["steps"].values())

    # everything done: nothing runs; a lost summary reruns that evaluation only (training is marked done)
    sw.sweep(str(BUNDLE), overrides=TINY, python=python, **kwargs)
    assert len(_calls(calls)) == len(first) + len(second)
    (out / "ideal" / "f10" / "seed1" / "eval" / "metrics_summary.json").unlink()
    sw.sweep(str(BUNDLE), overrides=TINY, python=python, **kwargs)
    last = _calls(calls)[len(first) + len(second) :]
    assert last == [{"root": str(out / "ideal" / "f10" / "seed1"), "configs": ["train.json", "evaluate.json"]}]


def test_failed_step_names_cell_and_log(tmp_path, fake_data, fake_python, monkeypatch):
    python, _ = fake_python
    monkeypatch.setenv("FAKE_FAIL", "f10")
    out = tmp_path / "out"
    with pytest.raises(sw.SweepStepError) as info:
        sw.sweep(str(BUNDLE), "1.25,10", "cps", 0, str(fake_data), str(out), overrides=TINY, python=python)
    cell = out / "cps" / "f10" / "seed0"
    msg = str(info.value)
    assert "cps/f10/seed0/train" in msg and str(cell) in msg and str(cell / "train.log") in msg
    assert "boom in" in msg and "exit code 3" in msg
    record = json.loads((out / "sweep.json").read_text())
    assert record["steps"]["cps/f10/seed0/train"]["status"] == "failed"
    assert record["steps"]["cps/f1.25/seed0/evaluate"]["status"] == "done"


def test_refuses_other_settings(tmp_path, fake_data, fake_python):
    python, calls = fake_python
    out = tmp_path / "out"
    kwargs = dict(fractions="10", methods="cps", seeds=0, dataset_dir=str(fake_data), out=str(out), python=python)
    sw.sweep(str(BUNDLE), overrides=TINY, **kwargs)
    assert (out / "cps" / "f10" / "seed0" / "eval" / "metrics_summary.json").is_file()
    other = {**TINY, "backbone": "resnet18"}
    with pytest.raises(ValueError, match="other settings.*backbone|other settings.*overrides"):
        sw.sweep(str(BUNDLE), overrides=other, **kwargs)
    with pytest.raises(ValueError, match="other settings"):
        sw.sweep(str(BUNDLE), overrides=other, dry_run=True, **kwargs)
    # same settings, more fractions and seeds: resuming is fine
    sw.sweep(str(BUNDLE), overrides=TINY, **{**kwargs, "fractions": "10,100", "seeds": "0,1"})
    n = len(_calls(calls))
    assert n == 2 + 3 * 2
    # overwrite starts afresh with the new settings
    sw.sweep(str(BUNDLE), overrides=other, overwrite=True, **kwargs)
    assert len(_calls(calls)) == n + 2
    record = json.loads((out / "sweep.json").read_text())
    assert record["settings"]["overrides"]["backbone"] == "resnet18"
    assert "--resume False" in record["steps"]["cps/f10/seed0/train"]["command_line"]
    assert not (out / "cps" / "f100").exists()


def test_a_moved_bundle_with_the_same_configs_resumes(tmp_path, fake_data, fake_python, capsys):
    """A copy of the bundle at another path (another checkout) resumes the sweep when its configs are the same
    bytes, for records that keep the configs' digest and for older ones that do not (the old path still there); a
    copy with one config changed, or an old record whose bundle path is gone, is refused."""
    python, calls = fake_python
    out = tmp_path / "out"
    kwargs = dict(fractions="10", methods="cps", dataset_dir=str(fake_data), out=str(out), python=python)
    sw.sweep(str(BUNDLE), overrides=TINY, seeds=0, **kwargs)
    record = json.loads((out / "sweep.json").read_text())
    assert record["bundle_configs_sha256"] == bundle_configs_sha256(BUNDLE)
    moved = tmp_path / "checkout2" / "ideal_acdc"
    shutil.copytree(BUNDLE / "configs", moved / "configs")
    n = len(_calls(calls))
    sw.sweep(str(moved), overrides=TINY, seeds="0,1", **kwargs)
    assert "the bundle moved from" in capsys.readouterr().out
    ran = _calls(calls)[n:]
    assert [c["root"] for c in ran] == [str(out / "cps" / "f10" / "seed1")] * 2, "seed 0 is done, only seed 1 runs"
    record = json.loads((out / "sweep.json").read_text())
    assert record["settings"]["bundle"] == str(moved.resolve())
    assert str(moved.resolve()) in record["steps"]["cps/f10/seed1/train"]["command_line"]
    # an older record (no digest): compared with the configs at its bundle path, which are still there
    del record["bundle_configs_sha256"]
    record["settings"]["bundle"] = str(BUNDLE)
    (out / "sweep.json").write_text(json.dumps(record))
    sw.sweep(str(moved), overrides=TINY, seeds="0,1", dry_run=True, **kwargs)
    # one config changed: another setting
    train = moved / "configs" / "train.json"
    train.write_text(train.read_text().replace('"max_epochs"', '"max_epochs" ', 1))
    with pytest.raises(ValueError, match="other settings.*bundle"):
        sw.sweep(str(moved), overrides=TINY, seeds="0,1", dry_run=True, **kwargs)
    # an older record whose bundle path is gone cannot be compared: refused
    record["settings"]["bundle"] = str(tmp_path / "gone")
    (out / "sweep.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other settings.*bundle"):
        sw.sweep(str(BUNDLE), overrides=TINY, seeds="0,1", dry_run=True, **kwargs)


def test_two_processes_on_disjoint_seeds_share_the_record(tmp_path, fake_data, fake_python, monkeypatch):
    """Two sweeps on one out (seed 0 and seed 1, as two processes side by side): the second runs from start to end
    while the first is in its first step; the first's later writes keep the second's steps, and the reverse."""
    python, calls = fake_python
    out = tmp_path / "out"
    kwargs = dict(fractions="10", methods="supervised", dataset_dir=str(fake_data), out=str(out), python=python)
    module = sys.modules["ideal_components.experiments.sweep"]  # the package's `sweep` is the function
    run_step, other = module._run_step, []

    def run_step_meanwhile(step):
        if not other:  # the other process runs its whole plan now, between this one's writes
            other.append(step.key)
            sw.sweep(str(BUNDLE), seeds="1", overrides=TINY, **kwargs)
        return run_step(step)

    monkeypatch.setattr(module, "_run_step", run_step_meanwhile)
    sw.sweep(str(BUNDLE), seeds="0", overrides=TINY, **kwargs)
    assert other == ["supervised/f10/seed0/train"] and len(_calls(calls)) == 4
    record = json.loads((out / "sweep.json").read_text())
    assert {k: v["status"] for k, v in record["steps"].items()} == {
        f"supervised/f10/seed{k}/{step}": "done" for k in (0, 1) for step in ("train", "evaluate")
    }
    assert (out / "sweep.json.lock").is_file() == (os.name == "posix")
    sw.sweep(str(BUNDLE), seeds="0", overrides=TINY, overwrite=True, **kwargs)  # overwrite starts afresh
    assert sorted(json.loads((out / "sweep.json").read_text())["steps"]) == [
        "supervised/f10/seed0/evaluate", "supervised/f10/seed0/train"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# end to end on phantoms: a 2-cell sweep, interrupted after the first cell and resumed


@pytest.mark.slow
def test_phantom_sweep_interrupted_and_resumed(tmp_path):
    from ideal_components.data.acdc import prepare_acdc
    from ideal_components.synthetic import synth_acdc

    synth_acdc(str(tmp_path / "raw"), patients=8, seed=1, progress=False)
    prepared = tmp_path / "prepared"
    prepare_acdc(str(tmp_path / "raw"), str(prepared), pixdim=6.0, spatial_size=32)
    out = tmp_path / "sweep"
    overrides = {**TINY, "spatial_size": [32, 32], "batch_size": 4, "labeled_batch_size": 2}
    # supervised, and Chaitanya et al.'s two pre-training stages whose encoder and decoder blocks CPS fine-tunes
    kwargs = dict(fractions="10", methods="supervised,chaitanya", seeds="0", dataset_dir=str(prepared), out=str(out))
    kwargs["pretrain_overrides"] = {"max_epochs": 1, "batch_size": 8}
    sw.sweep(str(BUNDLE), overrides=overrides, max_cells=1, **kwargs)  # "interrupted" after the first cell
    first = out / "supervised" / "f10" / "seed0"
    files = [p for p in first.rglob("*") if p.is_file()]
    assert (first / "eval" / "metrics_summary.json").is_file() and (first / "models" / "model.pt").is_file()
    assert not (out / "chaitanya").exists()
    assert "| Supervised | 10% | 1/1 |" in (out / "results.md").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    path = sw.sweep(str(BUNDLE), overrides=overrides, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes, "the finished cell was run again"
    assert sorted(p for p in first.rglob("*") if p.is_file()) == sorted(files)
    second = out / "chaitanya" / "f10" / "seed0"
    summary = json.loads((second / "eval" / "metrics_summary.json").read_text())
    assert 0.0 <= summary["metrics"]["dice"]["mean"] <= 1.0 and summary["units"] == "mm"
    assert (second / "train.log").is_file() and (second / "eval.log").is_file()
    log = (second / "train.log").read_text()
    assert "--use_pretrained True" in log.splitlines()[1] and "--pretrained_decoder" in log.splitlines()[1]
    assert "loaded pretrained encoder weights" in log and "loaded pretrained decoder block(s) [0, 1, 2]" in log
    pretrained = out / "chaitanya" / "seed0" / "pretrain"
    assert "saved 3 decoder block(s)" in (pretrained / "pretrain_decoder.log").read_text()
    md = Path(path).read_text()
    assert "| Supervised | 10% | 1/1 |" in md and "| Chaitanya + CPS | 10% | 1/1 |" in md
    record = json.loads((out / "sweep.json").read_text())
    assert {k: v["status"] for k, v in record["steps"].items()} == {
        **{f"{m}/f10/seed0/{k}": "done" for m in ("supervised", "chaitanya") for k in ("train", "evaluate")},
        **{f"chaitanya/seed0/{k}": "done" for k in ("pretrain", "pretrain_decoder")},
    }
    assert os.path.isfile(out / "results.csv")


def test_hard_sweep_plot_reads_the_committed_table():
    """The README's plot reads its values from docs/results_hard_sweep.md, per seed, nothing typed in again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_hard_sweep", REPO / "benchmarks" / "plot_hard_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.read_table(REPO / "docs" / "results_hard_sweep.md")
    assert len(rows) == 18 and {r["fraction"] for r in rows} == {"2.5", "10", "100"}
    cell = {(r["label"], r["fraction"]): r["dice_values"] for r in rows}
    assert cell[("Supervised", "2.5")] == [0.415, 0.462, 0.473] and cell[("CPS", "10")] == [0.621, 0.620, 0.508]
