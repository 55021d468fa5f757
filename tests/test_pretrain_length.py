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
    mtimes = {p: p.stat().st_mtime for p in out.rglob("*.pt")}
    driver.main(args)  # resumable: nothing is redone
    assert {p: p.stat().st_mtime for p in out.rglob("*.pt")} == mtimes
