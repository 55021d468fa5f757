"""benchmarks/gpu_check.sh and benchmarks/bench_gpu_options.py run end to end (on the CPU at tiny size; on a GPU
they write benchmarks/results/gpu.md and gpu_options.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("CPL (per_group, slices) step", "CPL (separate_forwards) step", "plain SupervisedTrainer step",
                "pre-training step", "inference (network + SliceInferer)"):  # fmt: skip
        assert text.count(f"| {row} |") == 2, row  # AMP off and on
    assert "FLOP floor" in text and "volumes/s" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would run the real check")
@pytest.mark.parametrize("script", ["gpu_check.py", "bench_gpu_options.py", "gpu_profile.py"])
def test_gpu_scripts_refuse_to_run_without_a_gpu(script):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--output", ""],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr


def test_gpu_options_script_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_options.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu_options.py"), "--cpu", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    # every step variant with AMP off / on and both memory formats
    for row in ("plain SupervisedTrainer", "CPL per_group, slices", "CPL per_group, concat", "CPL separate_forwards"):
        assert text.count(f"| {row} |") == 4, row
    assert text.count("| as the bundles: decollate, blocking copy, loss logging |") == 1
    assert "## Inference" in text and text.count("|") > 100


def test_time_runs_frees_engines_timed_before(monkeypatch):
    """An engine timed earlier is unreachable but kept by its reference cycles until a collection; its network must
    not count in the next peak-memory figure, so ``time_runs`` collects before it resets the peak."""
    import gc
    import weakref

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    gc.disable()
    try:
        engine = gpu_check.cpl_engine(gpu_check.SIZES["cpu"], torch.device("cpu"), False)
        engine.run()
        network = weakref.ref(engine.network)
        del engine
        assert network() is not None  # the cycle keeps it
        gpu_check.time_runs(lambda: None, torch.device("cpu"), warmup=0, repeats=1)
        assert network() is None
    finally:
        gc.enable()
