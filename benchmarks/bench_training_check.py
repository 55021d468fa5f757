"""Cost of the training-data check (``TrainingDataCheck``) against the preparation step, on the demo's data.

``make demo``'s data: ``synth_acdc --patients 20 --seed 0``, prepared with ``--pixdim 2.0 --spatial_size 128``. The
preparation (``prepare_acdc``) is timed once per repeat into an empty folder; the check is timed as the bundles run
it: ``train.json`` reads the labelled, unlabelled and validation lists of the demo's label fraction (10 %, labels
checked for the first and the last), ``pretrain.json`` the ``training`` list (images only). Medians of ``--repeats``
runs, in this process, after one untimed warm-up of each (imports, file cache).

Usage::

    .venv/bin/python benchmarks/bench_training_check.py --repeats 5 --output benchmarks/results/training_check.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.data import load_decathlon_datalist

from ideal_components.data.acdc import prepare_acdc
from ideal_components.data.checks import TrainingDataCheck
from ideal_components.synthetic.acdc import synth_acdc
from ideal_components.utils import atomic_write_text


def _train_check(prepared: Path) -> TrainingDataCheck:
    datalist = str(prepared / "datalist.json")
    keys = {"labeled": "labeled_10", "unlabeled": "unlabeled_10", "validation": "validation"}
    lists = {name: load_decathlon_datalist(datalist, True, key, str(prepared)) for name, key in keys.items()}
    return TrainingDataCheck(
        lists, required=["labeled", "validation"], labeled=["labeled", "validation"], num_classes=4
    )


def _pretrain_check(prepared: Path) -> TrainingDataCheck:
    lists = {"training": load_decathlon_datalist(str(prepared / "datalist.json"), True, "training", str(prepared))}
    return TrainingDataCheck(lists, required=["training"])


def _timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    logging.getLogger("ideal_components").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        synth_acdc(str(raw), patients=args.patients, seed=0)
        prep_times, train_times, pretrain_times = [], [], []
        prepared = Path(tmp) / "prepared"
        for repeat in range(args.repeats + 1):
            shutil.rmtree(prepared, ignore_errors=True)
            t, _ = _timed(prepare_acdc, str(raw), str(prepared), "ED", 2.0, 128)
            t_train, check = _timed(_train_check, prepared)
            assert not check.errors, check.errors
            t_pre, check = _timed(_pretrain_check, prepared)
            assert not check.errors, check.errors
            if repeat:  # the first round warms imports and the file cache
                prep_times.append(t)
                train_times.append(t_train)
                pretrain_times.append(t_pre)
        train = _train_check(prepared)
        counts = {name: c.total for name, c in train.checks.items()}
        n_training = _pretrain_check(prepared).checks["training"].total
        size = sum(f.stat().st_size for f in prepared.rglob("*.nii.gz"))
    prep, tr, pre = (statistics.median(x) for x in (prep_times, train_times, pretrain_times))
    command = "python benchmarks/bench_training_check.py " + " ".join(sys.argv[1:])
    lines = [
        "# Training-data check vs preparation (the demo's data)",
        "",
        f"`{command}`",
        "",
        f"{args.patients} synthetic ACDC patients (`synth_acdc --seed 0`), prepared as `make demo` does "
        f"(`--pixdim 2.0 --spatial_size 128`, ED frames; {size / 1e6:.1f} MB of prepared NIfTI). Medians of "
        f"{args.repeats} runs after one warm-up, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}.",
        "",
        "| step | volumes read | median | share of preparation |",
        "|---|---|---|---|",
        f"| `prepare_acdc` (the preparation step) | {args.patients} patients | {prep:.2f} s | 100 % |",
        f"| `train.json` check (labeled_10 + unlabeled_10 + validation; images, labels of labelled and validation) | "
        f"{' + '.join(str(n) for n in counts.values())} | {tr:.3f} s | {100 * tr / prep:.1f} % |",
        f"| `pretrain.json` check (training; images) | {n_training} | {pre:.3f} s | {100 * pre / prep:.1f} % |",
        "",
        f"Runs: preparation {', '.join(f'{t:.2f}' for t in prep_times)} s; train check "
        f"{', '.join(f'{t:.3f}' for t in train_times)} s; pretrain check "
        f"{', '.join(f'{t:.3f}' for t in pretrain_times)} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
