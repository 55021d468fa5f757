"""What ``keep_largest_component`` does to test Dice: the saved predictions of finished runs, re-scored with and
without MONAI's ``KeepLargestConnectedComponent`` (the transform ``evaluate.json`` applies when the id is true).

Run: ``python benchmarks/largest_component_effect.py --dataset_dir PREPARED --runs 'runs/sweep_hard/*/f*/seed*'
[--runs ...] --title NAME``. Every run folder must hold ``eval/predictions/<id>_seg.nii.gz`` (as ``evaluate.json``
writes them, on the prepared grid) for the test volumes of ``PREPARED/datalist.json``. Mean Dice over the foreground
classes per volume, then over volumes, as the evaluation reports it. The change is paired by run (the same
predictions with and without the filter); the interval is a Student-t 95 % interval over runs. Appends a section to
``benchmarks/results/largest_component.md`` (``--reset`` starts the file afresh).
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import statistics
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import KeepLargestConnectedComponent

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.experiments.compare import t_interval  # noqa: E402
from ideal_components.utils import atomic_write_text, image_stem  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "largest_component.md"


def mean_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    p = one_hot(torch.as_tensor(pred)[None, None].long(), num_classes)
    y = one_hot(torch.as_tensor(label)[None, None].long(), num_classes)
    return float(torch.nanmean(compute_dice(p, y, include_background=False)))


def score_run(run: Path, labels: dict[str, Path], num_classes: int) -> tuple[float, float]:
    """Mean test Dice of one run without and with the filter."""
    keep = KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), independent=True)
    before, after = [], []
    for stem, label_path in sorted(labels.items()):
        pred_path = run / "eval" / "predictions" / f"{stem}_seg.nii.gz"
        if not pred_path.is_file():
            raise FileNotFoundError(f"{pred_path}: no prediction for test volume {stem}")
        label = np.asarray(nib.load(str(label_path)).dataobj).astype(np.int64)
        pred = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.int64).reshape(label.shape)
        kept = np.asarray(keep(torch.tensor(pred)[None]))[0]  # a copy: the transform may write in place
        before.append(mean_dice(pred, label, num_classes))
        after.append(mean_dice(kept, label, num_classes))
    return statistics.mean(before), statistics.mean(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--runs", action="append", required=True, help="a glob of run folders (repeatable)")
    parser.add_argument("--title", required=True)
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--reset", action="store_true")
    args = parser.parse_args()
    dataset = Path(args.dataset_dir)
    test = json.loads((dataset / "datalist.json").read_text())["test"]
    labels = {image_stem(item["image"]): dataset / item["label"] for item in test}
    runs = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern)})
    if not runs:
        raise SystemExit(f"no run folder matches {args.runs}")
    rows, changes = [], []
    for run in runs:
        before, after = score_run(run, labels, args.num_classes)
        changes.append(after - before)
        rows.append(f"| {run.relative_to(run.parents[2])} | {before:.3f} | {after:.3f} | {after - before:+.3f} |")
        print(rows[-1], flush=True)
    lo, hi = t_interval(changes)
    better, worse = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    lines = [
        f"## {args.title}",
        "",
        f"Command: `python benchmarks/largest_component_effect.py {shlex.join(sys.argv[1:])}`",
        "",
        f"**Change in test Dice with the filter: {statistics.mean(changes):+.4f} [{lo:+.4f}, {hi:+.4f}]** "
        f"(mean over {len(changes)} runs, 95 % t-interval); raised in {better}, lowered in {worse}; "
        f"range {min(changes):+.3f} to {max(changes):+.3f}.",
        "",
        "| run | test Dice | with the largest component | change |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    previous = "" if args.reset or not RESULTS.is_file() else RESULTS.read_text()
    if not previous:
        previous = "# `keep_largest_component`: test Dice of finished runs with and without the filter\n\n"
    atomic_write_text(str(RESULTS), previous + "\n".join(lines) + "\n")
    print("\n".join(lines[:5]))


if __name__ == "__main__":
    main()
