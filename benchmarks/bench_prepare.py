"""Preparation throughput and peak memory of ``prepare_acdc`` on synthetic ACDC-layout patients.

Each measurement runs ``prepare_acdc`` in a fresh subprocess (into an empty output folder) and reports its wall time
and peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that subprocess); the median of ``--repeats`` runs is
reported for a small and a large patient set, to show that peak memory does not grow with the number of patients
(preparation streams one patient at a time). A rerun over complete outputs (everything skipped) is timed as well.

Usage::

    .venv/bin/python benchmarks/bench_prepare.py --patients 100 --small 20 --repeats 3 \
        --output benchmarks/results/prepare.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from ideal_components.data.acdc import prepare_acdc
t1 = time.perf_counter()
root, out, frames, overwrite, workers = sys.argv[1:6]
import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if root != "-":
    path = prepare_acdc(root, out, frames=frames, overwrite=overwrite == "1", num_workers=int(workers))
    n = sum(len(v) for k, v in json.load(open(path)).items() if k in ("training", "validation", "test"))
else:
    n = 0
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "prepare_s": t2 - t1, "volumes": n, "import_rss_kb": import_rss,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _child(root: str, out: str, frames: str, overwrite: bool = False, workers: int = 0) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, "-c", _CHILD, root, out, frames, "1" if overwrite else "0", str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"prepare_acdc subprocess failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", default="ED")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder, removed)")
    parser.add_argument("--output", default=None, help="write a Markdown report here")
    args = parser.parse_args()

    from ideal_components.synthetic import synth_acdc

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        raw_big = work / f"raw{args.patients}"
        if not (raw_big / "training").is_dir():
            t = time.perf_counter()
            synth_acdc(str(raw_big), patients=args.patients, seed=0, progress=False)
            print(f"synth_acdc: {args.patients} patients in {time.perf_counter() - t:.1f} s", flush=True)
        raw_small = work / f"raw{args.small}"
        if not (raw_small / "training").is_dir():
            (raw_small / "training").mkdir(parents=True)
            for pid in range(1, args.small + 1):
                os.symlink(raw_big / "training" / f"patient{pid:03d}", raw_small / "training" / f"patient{pid:03d}")

        base = _child("-", "-", args.frames)
        rows = []
        for label, root in ((args.small, raw_small), (args.patients, raw_big)):
            runs = []
            for r in range(args.repeats):
                out = work / f"out{label}_{r}"
                shutil.rmtree(out, ignore_errors=True)
                runs.append(_child(str(root), str(out), args.frames, workers=args.workers))
                print(f"{label} patients, run {r}: {runs[-1]}", flush=True)
            rerun = _child(str(root), str(work / f"out{label}_0"), args.frames, workers=args.workers)
            secs = statistics.median(x["prepare_s"] for x in runs)
            rows.append(
                {
                    "patients": label,
                    "volumes": runs[0]["volumes"],
                    "seconds": secs,
                    "vol_per_s": runs[0]["volumes"] / secs,
                    "peak_rss_mb": statistics.median(x["peak_rss_kb"] for x in runs) / 1024,
                    "rerun_s": rerun["prepare_s"],
                }
            )
        import nibabel as nib

        shapes = [nib.load(str(p)).shape for p in sorted(raw_big.glob("training/*/*_frame01.nii.gz"))]
        shape = "x".join(f"{sum(s[i] for s in shapes) / len(shapes):.0f}" for i in range(3))
        lines = [
            "# Preparation benchmark (`prepare_acdc`)",
            "",
            f"Command: `.venv/bin/python benchmarks/bench_prepare.py --patients {args.patients} --small {args.small} "
            f"--repeats {args.repeats} --frames {args.frames} --workers {args.workers} --output {args.output}`",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with other "
            f"jobs while measured), Python {platform.python_version()}, torch {torch.__version__} (CPU), "
            f"torch threads {torch.get_num_threads()}.",
            f"Data: `synth_acdc` phantoms (mean ED frame size {shape}, int16, oblique affines), "
            f"frames `{args.frames}`, default settings "
            "(1.367 mm in-plane, 192x192), `num_workers` " + str(args.workers) + ".",
            "Each run is a fresh subprocess writing into an empty folder; median of "
            f"{args.repeats} runs. Peak RSS = `ru_maxrss` of that subprocess (imports alone: "
            f"{base['import_rss_kb'] / 1024:.0f} MB). Rerun = the same command again over complete outputs "
            "(every volume skipped, datalist rewritten).",
            "",
            "| patients | volumes | prepare time (s) | volumes/s | peak RSS (MB) | rerun, all skipped (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['patients']} | {row['volumes']} | {row['seconds']:.1f} | {row['vol_per_s']:.2f} | "
                f"{row['peak_rss_mb']:.0f} | {row['rerun_s']:.2f} |"
            )
        growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
        lines += [
            "",
            f"Peak RSS difference {args.patients} vs {args.small} patients: {growth:+.0f} MB "
            "(preparation streams one patient at a time; the datalist items are the only per-patient state kept).",
        ]
        report = "\n".join(lines) + "\n"
        print(report)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(report)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
