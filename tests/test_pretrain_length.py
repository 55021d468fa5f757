"""The pre-training length driver (``benchmarks/pretrain_length.py``) end to end on a tiny phantom set."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("pretrain_length", REPO / "benchmarks" / "pretrain_length.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section3_driver():
    spec = importlib.util.spec_from_file_location("efs", REPO / "benchmarks" / "equal_footing_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_datalist(prepared: Path) -> None:
    """A section-2 datalist: 15 training volumes of 10 slices (9 pre-training steps of 16 per epoch)."""
    training = [{"id": f"p{i:03d}", "image": f"i{i}.nii.gz", "num_slices": 10} for i in range(15)]
    prepared.mkdir(parents=True)
    datalist = {"fractions": ["2.5", "10", "100"], "preparation": {"dataset": "acdc"}, "training": training}
    (prepared / "datalist.json").write_text(json.dumps(datalist))


@pytest.mark.slow
def test_pretrain_length_driver(tmp_path):
    """Snapshots of one continued pre-training at two lengths (the longer one bit-identical to an uninterrupted run
    of that length), their probes against three random encoders, fine-tuning from each snapshot with the random-init
    arm shared, and a report of what is done; a rerun does nothing new."""
    driver = _driver()
    out = tmp_path / "length"
    prepared = driver.prepare_data(out, driver.TINY)
    per_epoch = driver.steps_per_epoch(prepared, driver.TINY["pretrain"]["batch_size"])
    args = ["--tiny", "--out", str(out), "--lengths", f"{per_epoch},{2 * per_epoch}", "--seeds", "0"]
    args += ["--pretrain", "local", "--finetune", "ideal,cps"]
    driver.main(args)

    snaps = [out / "snapshots" / "local" / "seed0" / f"epochs{e}.pt" for e in (1, 2)]
    one, two = (torch.load(s, weights_only=True) for s in snaps)
    assert one.keys() == two.keys() and any(not torch.equal(one[k], two[k]) for k in one)
    # the 2-epoch snapshot (1 epoch, then resumed to 2) equals a 2-epoch run without the stop
    direct = tmp_path / "direct"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(driver.CONFIGS / "pretrain.json"),
           "--meta_file", str(driver.CONFIGS / "metadata.json"), "--bundle_root", str(direct),
           "--dataset_dir", str(prepared)]  # fmt: skip
    cmd += driver._cli({**driver.TINY["schedule"], **driver.TINY["pretrain"], "seed": 0, "max_epochs": 2})
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uninterrupted = torch.load(direct / "models" / "pretrained_encoder.pt", weights_only=True)
    assert all(torch.equal(uninterrupted[k], two[k]) for k in two)

    probes = [json.loads(s.with_suffix(".probe.json").read_text()) for s in snaps]
    for probe in probes:
        assert probe["baselines"] == ["random:0", "random:1", "random:2"] and probe["independent_units"] == 2
    # the random encoders are fitted once (cached) and the same figures serve both snapshots' probes
    assert len(list((out / "probe_cache").glob("random*.json"))) == 3
    assert [p["dice_baselines"] for p in probes[0]["pairs"]] == [p["dice_baselines"] for p in probes[1]["pairs"]]
    for steps in (per_epoch, 2 * per_epoch):
        folder = out / "finetune" / f"steps{steps}"
        done = sorted(p.relative_to(folder).parts[:3] for p in folder.glob("*/f*/seed0/eval/metrics_summary.json"))
        assert [d[0] for d in done] == ["cps", "ideal"], done
    cps = [(out / "finetune" / f"steps{s}").glob("cps/f*/seed0/eval/metrics_summary.json") for s in (1, 2)]
    assert len({p.read_text() for g in cps for p in g}) <= 1  # the random-init cell is copied, not re-run
    text = (out / "results.md").read_text()
    assert "| local | " in text and "ideal - cps" in text and f"### {2 * per_epoch} pre-training steps" in text
    assert f"Trend, probe Dice at {2 * per_epoch} minus at {per_epoch} steps" in text and "| local | 0 | 2 | " in text
    assert "**Length for section 3** (the plan's rule, over seeds [0]): not decided" in text
    driver.main(args + ["--report_only", "--results", str(tmp_path / "report.md")])
    assert (tmp_path / "report.md").read_text().split("\n", 3)[3] == text.split("\n", 3)[3]  # all but the command
    mtimes = {p: p.stat().st_mtime for p in out.rglob("*.pt")}
    driver.main(args)  # resumable: nothing is redone
    assert {p: p.stat().st_mtime for p in out.rglob("*.pt")} == mtimes


@pytest.mark.parametrize(
    "diffs, expected",
    [
        # the longest is best: the longest
        ({90: [0.01, 0.02, 0.03], 900: [0.03, 0.04, 0.05], 2700: [0.06, 0.07, 0.08]}, 2700),
        # 900 best, 2700's interval overlaps it: the longest
        ({90: [0.01, 0.02, 0.03], 900: [0.05, 0.10, 0.15], 2700: [0.02, 0.06, 0.10]}, 2700),
        # 900 best and clearly apart from 2700: 900
        ({90: [0.01, 0.02, 0.03], 900: [0.20, 0.21, 0.22], 2700: [0.01, 0.02, 0.03]}, 900),
        # a probe missing: not decided
        ({90: [0.01, 0.02, 0.03], 900: [0.20, 0.21], 2700: [0.01, 0.02, 0.03]}, None),
    ],
)
def test_length_choice_follows_the_plans_rule(tmp_path, diffs, expected):
    """The rule committed in docs/plan_equal_footing.md before the runs: the largest mean local probe difference
    over the seeds; the longest when its interval overlaps the best one's; undecided while a probe is missing."""
    driver = _driver()
    lengths = {steps // 9: steps for steps in diffs}
    for steps, values in diffs.items():
        for seed, value in enumerate(values):
            path = tmp_path / "snapshots" / "local" / f"seed{seed}" / f"epochs{steps // 9}.probe.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"mean_difference": value}))
    chosen, reason = driver.choose_length(tmp_path, lengths, [0, 1, 2])
    assert chosen == expected, reason
    assert ("not decided" in reason) == (expected is None) and "not completed" not in reason
    # 2,700 steps did not fit: the longest completed length stands in for it, and the reason says so
    shorter = {e: s for e, s in lengths.items() if s < 2700}
    chosen, reason = driver.choose_length(tmp_path, shorter, [0, 1, 2])
    if expected is not None:
        assert chosen == (900 if expected == 2700 else expected) and "2700 steps were not completed" in reason


def test_section3_driver_reuses_section2_and_plans_the_sweep(tmp_path, capsys):
    """``benchmarks/equal_footing_sweep.py``: the length from section 2's probes by the plan's rule, section 2's
    encoders and fine-tuned cells of that length reused (so they are planned as done), the rest planned with the
    same settings; it refuses to start while the rule cannot decide."""
    efs = _section3_driver()
    section2, out = tmp_path / "length", tmp_path / "sweep"
    _write_datalist(section2 / "prepared")
    args = ["--out", str(out), "--lengths_from", str(section2), "--dry_run"]
    with pytest.raises(SystemExit, match="not decided"):
        efs.main(args)
    for seed in range(3):  # 900 steps (100 epochs of 9) clearly best
        for epochs, diff in ((10, 0.01), (100, 0.20 + 0.01 * seed), (300, 0.02 + 0.01 * seed)):
            path = section2 / "snapshots" / "local" / f"seed{seed}" / f"epochs{epochs}.probe.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"mean_difference": diff}))
    for method in ("local", "global"):
        (section2 / "snapshots" / method / "seed0").mkdir(parents=True, exist_ok=True)
        (section2 / "snapshots" / method / "seed0" / "epochs100.pt").write_bytes(method.encode())
    cell = section2 / "finetune" / "steps900" / "cps" / "f2.5" / "seed0"
    (cell / "eval").mkdir(parents=True)
    (cell / "eval" / "metrics_summary.json").write_text("{}")
    (section2 / "finetune" / "steps900" / "cps" / "f2.5" / "seed7" / "eval").mkdir(parents=True)  # not a seed here

    copied = efs.reuse_section2(section2, out, 100, 900, [0, 1, 2, 3, 4])
    assert sorted(copied) == sorted([
        "ideal/seed0/pretrain/models/pretrained_encoder.pt", "global_cl/seed0/pretrain/models/pretrained_encoder.pt",
        "cps/f2.5/seed0",
    ])  # fmt: skip
    assert (out / "global_cl" / "seed0" / "pretrain" / "models" / "pretrained_encoder.pt").read_bytes() == b"global"
    assert efs.reuse_section2(section2, out, 100, 900, [0]) == []  # nothing present is overwritten
    capsys.readouterr()
    efs.main(args)
    text = capsys.readouterr().out
    assert "pre-training length: 900 steps" in text and "100 epochs of 9 steps" in text
    for done in ("ideal/seed0/pretrain (done, skip)", "global_cl/seed0/pretrain (done, skip)",
                 "cps/f2.5/seed0/train (done, skip)", "cps/f2.5/seed0/evaluate (done, skip)"):  # fmt: skip
        assert done in text, done
    for pending in (
        "ideal/seed1/pretrain (run)",
        "chaitanya/seed4/pretrain_decoder (run)",
        "cps/f100/seed2/train (run)",
    ):
        assert pending in text, pending
    assert "cps/f100/seed3" not in text  # 100 % with seeds 0-2 only
    efs.main(args + ["--only_seeds", "1,3"])  # one of two processes side by side: its seeds only
    text_only = capsys.readouterr().out
    assert "ideal/seed1/pretrain (run)" in text_only and "chaitanya/seed3/pretrain_decoder (run)" in text_only
    assert "cps/f100/seed1/train (run)" in text_only
    for other in ("/seed0/", "/seed2/", "/seed4/", "cps/f100/seed3"):
        assert other not in text_only, other
    # a folder that ran another length is refused before anything is copied into it
    (out / "length.json").write_text(json.dumps({"steps": 2700}))
    with pytest.raises(SystemExit, match="another length"):
        efs.main(args)
    assert "--max_epochs 100" in text and "--learning_rate 0.001" in text


def test_section3_report_joins_both_parts_with_their_own_seeds(tmp_path, capsys):
    """``--report_only``: one table over 2.5 / 10 % (seeds 0-4) and 100 % (seeds 0-2) and the paired differences,
    each part over its own seeds (a 100 % cell of seed 3 is not the plan's and is left out), with the count of
    cells done; what is not done is shown as missing, not dropped."""
    efs = _section3_driver()
    out = tmp_path / "sweep"
    dice = {
        ("ideal", "2.5", 0): 0.60,
        ("ideal", "2.5", 1): 0.70,
        ("cps", "2.5", 0): 0.50,
        ("cps", "2.5", 1): 0.65,
        ("ideal", "100", 0): 0.90,
        ("cps", "100", 0): 0.80,
        ("ideal", "100", 3): 0.10,
        ("cps", "100", 3): 0.90,
        ("supervised", "2.5", 0): 0.30,  # a method outside the plan (--methods cps,ideal)
        ("supervised", "100", 3): 0.30,
    }
    for (method, fraction, seed), value in dice.items():
        summary = out / method / f"f{fraction}" / f"seed{seed}" / "eval" / "metrics_summary.json"
        summary.parent.mkdir(parents=True)
        metrics = {m: {"mean": v} for m, v in (("dice", value), ("hd95", 5.0), ("asd", 1.0))}
        summary.write_text(json.dumps({"metrics": metrics, "units": "mm", "hd95_convention": "monai"}))
    (out / "length.json").write_text(json.dumps({"length": "2700 steps: the rule", "steps": 2700}))
    efs.main(["--out", str(out), "--methods", "cps,ideal", "--report_only"])
    text = (out / "report.md").read_text()
    assert text in capsys.readouterr().out  # printed too
    assert "Pre-training length: 2700 steps: the rule" in text
    assert "**6 of 26 cells done** (partial" in text  # 2 methods x (2 fractions x 5 seeds + 1 x 3)
    table = [line for line in text.splitlines() if line.startswith("| ") and "% | " in line and " - " not in line]
    assert len(table) == 6 and "| Supervised |" not in text and "- supervised |" not in text  # 2 methods x 3 fractions
    rows = {line.split(" | ")[0] + "|" + line.split(" | ")[1]: line for line in table}
    assert "| 2/5 | 0.650 ± 0.050 |" in rows["| IDEAL|2.5%"] and "| 0/5 | n/a |" in rows["| IDEAL|10%"]
    assert "| 1/3 | 0.900 ± 0.000 |" in rows["| IDEAL|100%"]  # seed 3 is not one of the 100 % seeds
    assert "| 2.5% | ideal - cps | 2 | +0.075 [" in text and "| 100% | ideal - cps | 1 | +0.100 [n/a, n/a] |" in text


def test_section3_run_writes_the_report_after_each_part_and_when_stopped(tmp_path, monkeypatch, capsys):
    """The run path with the sweep stubbed: each part runs with --only_seeds' seeds, the report is written after the
    first part and again when the second stops; a report that cannot be read does not hide the error that stopped
    the run; wrong --only_seeds or overlapping parts are refused."""
    efs = _section3_driver()
    section2, out = tmp_path / "length", tmp_path / "sweep"
    _write_datalist(section2 / "prepared")
    calls = []

    def fake_sweep(bundle, fractions, methods, seeds, **kwargs):
        calls.append((fractions, seeds))
        for fraction in fractions.split(","):
            for seed in seeds.split(","):
                for method in methods.split(","):
                    summary = out / method / f"f{fraction}" / f"seed{seed}" / "eval" / "metrics_summary.json"
                    summary.parent.mkdir(parents=True, exist_ok=True)
                    metrics = {m: {"mean": 0.5} for m in ("dice", "hd95", "asd")}
                    summary.write_text("{}" if fraction == "100" and seed == "1" else json.dumps({"metrics": metrics}))
        if fractions == "100":
            raise RuntimeError("stopped in the second part")

    monkeypatch.setattr(efs, "sweep", fake_sweep)
    args = ["--out", str(out), "--lengths_from", str(section2), "--steps", "900", "--methods", "cps,ideal"]
    for bad, message in ((["--only_seeds", "7"], "only_seeds"), (["--fractions", "2.5,100"], "100 % is in")):
        with pytest.raises(SystemExit, match=message):
            efs.main(args + bad)
    assert calls == [] and not out.exists()
    with pytest.raises(RuntimeError, match="stopped in the second part"):
        efs.main(args + ["--only_seeds", "0,1"])
    assert calls == [("2.5,10", "0,1"), ("100", "0,1")]
    printed = capsys.readouterr().out
    assert "report.md not written: ValueError" in printed and "corrupt metrics summary" in printed
    text = (out / "report.md").read_text()  # the one written after the first part
    assert "**8 of 26 cells done** (partial" in text and "--only_seeds 0,1" in text
    assert json.loads((out / "length.json").read_text())["steps"] == 900
