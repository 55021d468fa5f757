"""Helpers shared by the tests that run the bundles as real ``python -m monai.bundle run`` subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]

# a CPU-sized network and grid for tests; every test that trains uses these
TINY = ["--backbone", "resnet10", "--num_workers", "0", "--spatial_size", "[64,64]", "--batch_size", "4"]


def config_dir(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def bundle_command(bundle: str, names: list[str | Path], bundle_root: Path, *args: str) -> list[str]:
    """``python -m monai.bundle run`` with the bundle's configs ``names`` (paths outside the bundle are kept)."""
    root = config_dir(bundle)
    files = "[" + ",".join(f"'{n if os.path.isabs(str(n)) else root / n}'" for n in names) + "]"
    cmd = ["-m", "monai.bundle", "run", "--config_file", files]
    cmd += ["--meta_file", str(root / "metadata.json"), "--logging_file", str(root / "logging.conf")]
    return cmd + ["--bundle_root", str(bundle_root), *args]


def run_bundle_process(
    bundle: str, names: list[str | Path], bundle_root: Path, *args: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run a bundle and return the finished process (the caller checks the exit status)."""
    cmd = [sys.executable, *bundle_command(bundle, names, bundle_root, *args)]
    bundle_root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=str(bundle_root.parent), timeout=timeout)


def run_bundle_ok(bundle: str, names: list[str | Path], bundle_root: Path, *args: str) -> str:
    """Run a bundle, assert that it succeeded, return its output."""
    proc = run_bundle_process(bundle, names, bundle_root, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-6000:]}"
    return out


def python_ok(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def tiny_acdc(base: Path, patients: int = 6, seed: int = 1) -> tuple[Path, Path]:
    """Synthesise and prepare a tiny ACDC-layout phantom set (4 mm, 64x64); returns ``(raw, prepared)``."""
    raw, prepared = base / "raw", base / "prepared"
    python_ok("-m", "ideal_components", "synth_acdc", str(raw), "--patients", str(patients), "--seed", str(seed))
    python_ok(
        "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "4.0", "--spatial_size", "64"
    )
    return raw, prepared


def kill_config(path: Path, bundle: str, *configs: str) -> Path:
    """A config merged last over ``configs`` that SIGKILLs the run after ``kill_at_iteration`` iterations (the merged
    configs' own run list follows, so the run is the real one up to the kill)."""
    base: dict = {}
    for config in configs:  # top-level ids of a later config replace an earlier one's, as in a merged run
        base.update(json.loads((config_dir(bundle) / config).read_text()))
    extra = {
        "imports": base["imports"] + ["$import signal"],
        "kill_at_iteration": 0,
        "kill_handler": "$lambda engine: os.kill(os.getpid(), signal.SIGKILL) "
        "if engine.state.iteration == @kill_at_iteration else None",
        "run": ["$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, @kill_handler)"]
        + base["run"],
    }
    path.write_text(json.dumps(extra, indent=1))
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (to show that a run left a folder untouched)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_segmentation(seg_path: Path, image_path: Path, num_classes: int) -> None:
    """An inference output is in its input's geometry (shape and affine) and holds only class indices."""
    seg, img = nib.load(str(seg_path)), nib.load(str(image_path))
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(num_classes))
