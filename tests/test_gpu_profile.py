"""benchmarks/gpu_profile.py runs end to end on the CPU at tiny size, and every section of its report holds finite,
positive figures (on a GPU, ``benchmarks/gpu_profile.sh`` runs it after the CUDA-only and bundle tests)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## 1. Profile", "## 2. Matmul ceiling", "## 3. Variants", "## 4. Inference end to end",
            "## 5. The paper's ACDC protocol", "## Tests run before")  # fmt: skip
STEPS = ("plain SupervisedTrainer", "CPL", "pre-training")


def _positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what}: {value!r}"


def test_gpu_profile_script_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_profile.md"
    log = tmp_path / "tests.log"  # as gpu_profile.sh writes it
    log.write_text("### CUDA-only tests\n...\n=========== 4 passed, 90 deselected in 3.21s ===========\n"
                   "### CUDA-only tests: exit 0 after 9 s\n")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py"), "--cpu", "--output", str(out),
         "--tests-log", str(log)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    numbers = json.loads(out.with_suffix(".json").read_text())
    for section in SECTIONS:
        assert section in text, section
    assert "Card: CPU" in text and "torch " in text and "Command: `python benchmarks/gpu_profile.py --cpu`" in text
    assert "- 4 passed, 90 deselected in 3.21s" in text and "- CUDA-only tests: exit 0 after 9 s" in text

    # 1. profile and counted FLOPs of each step
    for step in STEPS:
        prof = numbers["profile"][step]
        for key in ("wall_s", "profiled_wall_s", "busy_s", "events"):
            _positive(prof[key], f"{step} {key}")
        assert len(prof["top"]) == 10 and prof["gaps"], step
        for name, seconds, calls in prof["top"]:
            _positive(seconds, name), _positive(calls, name)
        for seconds, _, _ in prof["gaps"]:
            _positive(seconds, f"{step} gap")
        _positive(numbers["flops"][step], f"{step} FLOPs")
        assert f"**{step}: top 10" in text and f"**{step}: largest idle gaps**" in text
    # 2. the ceilings
    for precision in ("fp32", "tf32", "bf16"):
        _positive(numbers["ceilings"][precision], precision)
    # 3. variants: every eager one measured and compared; the compiled pre-training ones ran (eager backend here)
    for step in ("CPL", "pre-training"):
        rows = {row["variant"]: row for row in numbers["variants"][step]}
        for name, row in rows.items():
            if name.startswith("eager") or (step == "pre-training" and "TF32" in name and "limit" not in name):
                assert row["status"] == "ok", (step, name, row["status"])
                for key in ("step_s", "tflops", "ceiling_fraction", "param_bound"):
                    _positive(row[key], f"{step} {name} {key}")
                for key in ("loss_rel", "grad_rel", "param_abs", "first_run_extra_s"):
                    assert math.isfinite(row[key]) and row[key] >= 0, (step, name, key, row[key])
            else:
                assert row["status"].startswith("skipped"), (step, name, row["status"])
        reference = rows["eager fp32 (reference)"]
        assert reference["loss_rel"] == reference["grad_rel"] == reference["param_abs"] == 0.0
        assert reference["equivalent"]
        compiled = rows["compile default, TF32"] if step == "pre-training" else None
        if compiled:
            assert compiled["graphs"] >= 1 and compiled["equivalent"], compiled
    # 4. inference
    for key in ("end_to_end_volumes_s", "network_volumes_s"):
        _positive(numbers["inference"][key], key)
    # 5. the protocol: one row per published ACDC fraction, all hours positive
    rows = numbers["protocol"]["rows"]
    assert [r["fraction"] for r in rows] == ["1.25", "2.5", "10", "100"]
    for r in rows:
        for key in ("iterations", "pretrain_h", "finetune_h", "validation_h", "total_h", "fastest_total_h"):
            _positive(r[key], f"{r['fraction']} {key}")
        assert r["labeled"] + r["unlabeled"] == numbers["protocol"]["patients"] == 78
    assert "| 10 | 8 / 70 |" in text


def test_kernel_analysis_busy_time_top_and_gaps(monkeypatch):
    """The CUDA branch of the profile's analysis, on made-up events (the CPU run above takes the other branch):
    overlapping kernels count once, the gap before a kernel names the op that launched it and that op's caller."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import Interval

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_profile

    def event(id_, name, device, start, end, linked=0, parent=None):
        return SimpleNamespace(id=id_, name=name, device_type=device, time_range=Interval(start, end),
                               linked_correlation_id=linked, cpu_parent=parent)  # fmt: skip

    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    step = event(1, "Optimizer.step#Adam.step", cpu, 0, 100)
    events = [
        step,
        event(2, "aten::mm", cpu, 10, 20, parent=step),
        event(3, "aten::cudnn_convolution", cpu, 0, 5),
        event(4, "cudaLaunchKernel", cpu, 11, 12, linked=2),  # a runtime call: linked to its op, launches nothing
        event(5, "conv_kernel", cuda, 0, 30, linked=3),
        event(6, "Memset", cuda, 10, 40, linked=3),  # overlaps the kernel before: busy 0-40
        event(7, "gemm", cuda, 100, 110, linked=2),  # after a 60 us gap
        event(8, "gemm", cuda, 115, 120, linked=2),  # after a 5 us gap
    ]
    out = gpu_profile.analyse_events(events, steps=1)
    assert math.isclose(out["busy_s"], 55e-6) and math.isclose(out["idle_total_s"], 65e-6)
    assert out["events"] == 4
    assert dict((name, (t, n)) for name, t, n in out["top"])["gemm"] == (15e-6, 2)
    assert [(round(g * 1e6), name) for g, name, _ in out["gaps"]] == [(60, "gemm"), (5, "gemm")]
    assert out["gaps"][0][2] == "aten::mm (under Optimizer.step#Adam.step)"
    halved = gpu_profile.analyse_events(events, steps=2)  # per iteration of a run of two
    assert math.isclose(halved["busy_s"], 27.5e-6) and halved["events"] == 2
