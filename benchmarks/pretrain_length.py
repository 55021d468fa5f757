"""Pre-training length as a measured axis (issue #24, section 2; the plan: ``docs/plan_equal_footing.md``).

Run (resumable: every finished step is kept and not run again; two processes with different ``--seeds`` may run side
by side on the 2 cores)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrain_length.py --out runs/pretrain_length --seeds 0

What it does, in this order, for each length (optimiser steps, ``--lengths 90,900,2700``) and seed:

1. **data** (once): the hard phantoms (``synth_acdc --patients 20 --seed 0 --difficulty hard``) prepared at 2 mm /
   128x128, as the hard sweep's.
2. **pre-training**: one run per (method, seed) of the ACDC bundle's ``pretrain.json`` (local) and ``pretrain.json``
   + ``pretrain_global.json`` (global), continued to each length in turn with ``--resume True`` and a raised
   ``max_epochs`` (bit-identical to an uninterrupted run; the learning rate is constant), its encoder copied to
   ``snapshots/<method>/seed<k>/epochs<E>.pt`` after each. The steps per epoch come from the prepared data; a length
   is rounded to whole epochs and the table names the steps actually made.
3. **probe**: each snapshot against ``random:0,random:1,random:2`` (``python -m ideal_components probe``, 5 single
   labelled volumes, classifier seeds 0-2); the random encoders' results are cached in ``probe_cache`` and fitted
   once for all snapshots.
4. **fine-tuning**: a sweep per length into ``finetune/steps<N>`` (``ideal``, ``local_cl`` from the local snapshot,
   ``global_cps``, ``global_cl`` from the global one), the snapshot placed where the sweep reads its encoder; ``cps``
   and ``supervised`` (random init, independent of the length) run once into ``finetune/random`` and are copied into
   each length's sweep, so that its paired differences include them.
5. **report**: ``--results`` (Markdown): the probe per (method, length, seed) and across seeds, and the fine-tuning's
   paired differences per length, with t-intervals.

``--tiny`` runs the same code on a tiny set (6 patients at 4 mm / 64x64, ResNet10, short lengths) for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.data.sampler import batches_per_pass  # noqa: E402
from ideal_components.experiments.compare import paired_differences, paired_markdown, t_interval  # noqa: E402
from ideal_components.experiments.sweep import sweep  # noqa: E402
from ideal_components.utils import atomic_write_text  # noqa: E402

BUNDLE = REPO / "bundles" / "ideal_acdc"
CONFIGS = BUNDLE / "configs"
PRETRAIN_CONFIGS = {"local": ["pretrain.json"], "global": ["pretrain.json", "pretrain_global.json"]}
#: which sweep method owns each pre-training's encoder folder, and the methods fine-tuned from it
SWEEP_OWNER = {"local": ("ideal", ["ideal", "local_cl"]), "global": ("global_cl", ["global_cps", "global_cl"])}
RANDOM_METHODS = ["cps", "supervised"]
FULL = {
    "patients": 20,
    "prepare": ["--pixdim", "2.0", "--spatial_size", "128"],
    "schedule": {"backbone": "resnet18", "spatial_size": [128, 128], "num_workers": 0},
    "pretrain": {"learning_rate": 1e-3, "batch_size": 16},
    "finetune": {"learning_rate": 1e-3, "max_epochs": 8, "val_interval": 2, "dice_weight": 1.0},
    "fractions": "2.5,10",
    "probe": ["--labeled_volumes", "5", "--seeds", "0,1,2", "--spatial_size", "128"],
}
TINY = {
    "patients": 6,
    "prepare": ["--pixdim", "4.0", "--spatial_size", "64"],
    "schedule": {"backbone": "resnet10", "spatial_size": [64, 64], "num_workers": 0},
    "pretrain": {"learning_rate": 1e-3, "batch_size": 4},
    "finetune": {"learning_rate": 1e-3, "max_epochs": 1, "val_interval": 1, "batch_size": 4},
    "fractions": None,  # the smallest fraction of the tiny datalist
    "probe": ["--labeled_volumes", "2", "--seeds", "0", "--steps", "20", "--bn_slices", "8", "--pretext_slices", "4"],
}


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log}:\n" + "\n".join(tail))


def _cli(values: dict[str, Any]) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]


def prepare_data(out: Path, setup: dict[str, Any]) -> Path:
    """The hard phantoms, synthesised and prepared once under ``out``."""
    raw, prepared, py = out / "raw", out / "prepared", sys.executable
    if not (raw / "training").is_dir():
        cmd = [py, "-m", "ideal_components", "synth_acdc", str(raw), "--patients", str(setup["patients"])]
        _run(cmd + ["--seed", "0", "--difficulty", "hard", "--progress", "False"], out / "synth.log")
    if not (prepared / "datalist.json").is_file():
        _run([py, "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), *setup["prepare"]],
             out / "prepare.log")  # fmt: skip
    return prepared


def steps_per_epoch(prepared: Path, batch_size: int) -> int:
    """Pre-training steps per epoch: the ``training`` list's slices at ``batch_size`` (as ``pretrain.json``)."""
    datalist = json.loads((prepared / "datalist.json").read_text())
    slices = sum(int(d["num_slices"]) for d in datalist["training"])
    return batches_per_pass(slices, 0, batch_size, batch_size, num_replicas=1)


def pretrain_snapshot(prepared: Path, out: Path, method: str, seed: int, epochs: int, setup: dict) -> Path:
    """The encoder after ``epochs`` epochs of ``method``'s pre-training (continuing the run of this method and seed)."""
    snapshot = out / "snapshots" / method / f"seed{seed}" / f"epochs{epochs}.pt"
    if snapshot.is_file():
        return snapshot
    root = out / "pretrain" / method / f"seed{seed}"
    files = json.dumps([str(CONFIGS / c) for c in PRETRAIN_CONFIGS[method]])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file",
           str(CONFIGS / "metadata.json"), "--bundle_root", str(root), "--dataset_dir", str(prepared)]  # fmt: skip
    cmd += _cli({**setup["schedule"], **setup["pretrain"], "seed": seed, "max_epochs": epochs, "resume": True})
    _run(cmd, root / f"pretrain_epochs{epochs}.log")
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = snapshot.with_suffix(".tmp")
    shutil.copyfile(root / "models" / "pretrained_encoder.pt", tmp)
    os.replace(tmp, snapshot)
    return snapshot


def probe_snapshot(prepared: Path, snapshot: Path, setup: dict, cache_dir: Path) -> dict:
    """The probe of one snapshot against three random encoders (its JSON, computed once; the random encoders'
    results are kept in ``cache_dir`` and shared by every snapshot's probe)."""
    report = snapshot.with_suffix(".probe.json")
    if not report.is_file():
        cmd = [sys.executable, "-m", "ideal_components", "probe", "--dataset_dir", str(prepared), "--encoder",
               str(snapshot), "--baseline", "random:0,random:1,random:2", "--backbone", setup["schedule"]["backbone"],
               "--out", str(report), "--cache_dir", str(cache_dir), *setup["probe"]]  # fmt: skip
        _run(cmd, snapshot.with_suffix(".probe.log"))
    return json.loads(report.read_text())


def _fractions(prepared: Path, setup: dict) -> str:
    if setup["fractions"]:
        return setup["fractions"]
    fractions = json.loads((prepared / "datalist.json").read_text())["fractions"]
    return str(min((f for f in fractions if str(f) != "100"), key=float))


def epoch_lengths(lengths: str, per_epoch: int) -> dict[int, int]:
    """``"90,900,2700"`` (steps) -> ``{epochs: steps actually made}``, each length rounded to whole epochs."""
    epochs = sorted({max(1, round(int(n) / per_epoch)) for n in lengths.split(",") if n})
    return {e: e * per_epoch for e in epochs}


def place_encoder(snapshot: Path, sweep_out: Path, owner: str, seed: int) -> Path | None:
    """Copy ``snapshot`` to where a sweep in ``sweep_out`` reads ``owner``'s encoder of ``seed`` (atomically), unless
    one is there; returns the new file or ``None``."""
    encoder = sweep_out / owner / f"seed{seed}" / "pretrain" / "models" / "pretrained_encoder.pt"
    if encoder.exists():
        return None
    encoder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshot, encoder.with_suffix(".tmp"))
    os.replace(encoder.with_suffix(".tmp"), encoder)
    return encoder


def copy_done_cells(src: Path, dst: Path, methods: list[str], seeds: list[int]) -> list[Path]:
    """Copy the evaluated fine-tuning cells of ``methods`` and ``seeds`` from sweep folder ``src`` to ``dst``
    (``<method>/f<fraction>/seed<k>``), leaving the cells ``dst`` has; returns the new ones."""
    copied = []
    for method in methods:
        for cell in sorted((src / method).glob("f*/seed*")):
            target = dst / cell.relative_to(src)
            if int(cell.name[4:]) in seeds and (cell / "eval" / "metrics_summary.json").is_file():
                if not target.exists():
                    shutil.copytree(cell, target)
                    copied.append(target)
    return copied


def finetune(prepared: Path, out: Path, length: int, seeds: list[int], snapshots: dict, methods: list[str], setup):
    """Fine-tune every method of ``methods`` at one pre-training length (a resumable sweep); returns its folder."""
    fractions, overrides = _fractions(prepared, setup), {**setup["schedule"], **setup["finetune"]}
    random_methods = [m for m in RANDOM_METHODS if m in methods]
    random_out = out / "finetune" / "random"
    if random_methods:
        sweep(str(BUNDLE), fractions, ",".join(random_methods), ",".join(map(str, seeds)), str(prepared),
              str(random_out), overrides)  # fmt: skip
    length_out = out / "finetune" / f"steps{length}"
    # the same cells (random init does not depend on the length): copied, not re-run
    copy_done_cells(random_out, length_out, random_methods, seeds)
    pretrained = []
    for method, (owner, finetuned) in SWEEP_OWNER.items():
        finetuned = [m for m in finetuned if m in methods]
        if not finetuned:
            continue
        pretrained += finetuned
        for seed in seeds:
            place_encoder(snapshots[(method, seed)], length_out, owner, seed)
    if pretrained:
        sweep(str(BUNDLE), fractions, ",".join(pretrained + random_methods), ",".join(map(str, seeds)),
              str(prepared), str(length_out), overrides)  # fmt: skip
    return length_out


def choose_length(
    out: Path, lengths: dict[int, int], seeds: list[int], planned: tuple[int, ...] = (90, 900, 2700)
) -> tuple[int | None, str]:
    """The pre-training length for section 3, by the rule the plan fixed before the runs.

    The length whose local encoder has the largest mean probe difference against the random encoders (mean over
    the pre-training seeds); if the longest length's t-interval (over the seeds) overlaps that length's, the
    longest. Decided only when every length has the local probe of every seed in ``seeds`` (at least 2). When
    ``lengths`` stops short of the plan's longest (``planned``, in steps: it did not fit the time), the longest
    given takes its place, and the reason says so.

    Returns:
        ``(steps, reason)``, or ``(None, what is missing)``.
    """
    per_length: dict[int, list[float]] = {}
    missing = []
    for epochs, steps in sorted(lengths.items()):
        for seed in seeds:
            path = out / "snapshots" / "local" / f"seed{seed}" / f"epochs{epochs}.probe.json"
            if path.is_file():
                per_length.setdefault(steps, []).append(float(json.loads(path.read_text())["mean_difference"]))
            else:
                missing.append(f"{steps} steps seed {seed}")
    if missing or len(seeds) < 2:
        return None, "not decided: local probes missing for " + (", ".join(missing) or "a second seed")
    steps, reason = _apply_rule(per_length)
    if max(per_length) < max(planned):
        reason += f" (the plan's {max(planned)} steps were not completed: the longest completed length stands in)"
    return steps, reason


def _apply_rule(per_length: dict[int, list[float]]) -> tuple[int, str]:
    means = {steps: float(np.mean(v)) for steps, v in per_length.items()}
    intervals = {steps: t_interval(v) for steps, v in per_length.items()}
    best, longest = max(means, key=lambda k: means[k]), max(means)
    overlap = intervals[longest][0] <= intervals[best][1] and intervals[best][0] <= intervals[longest][1]
    if best == longest:
        return longest, f"{longest} steps: the largest mean probe difference ({means[longest]:+.3f})"
    if overlap:
        return longest, (
            f"{longest} steps: {best} steps has the largest mean probe difference ({means[best]:+.3f}), but the "
            f"{longest}-step interval {_fmt((means[longest], *intervals[longest]))} overlaps it "
            f"{_fmt((means[best], *intervals[best]))}, so the longest"
        )
    return best, (
        f"{best} steps: the largest mean probe difference {_fmt((means[best], *intervals[best]))}, its interval "
        f"apart from the {longest}-step one {_fmt((means[longest], *intervals[longest]))}"
    )


def probe_trend(out: Path, lengths: dict[int, int], seeds: list[int]) -> list[str]:
    """The plan's trend: each encoder's probe Dice at the longest length minus at the shortest, same pre-training
    seed and same labelled volume (t over the volumes per seed; t over the seeds' means across them)."""
    if len(lengths) < 2:
        return []
    (short, short_steps), (long, long_steps) = min(lengths.items()), max(lengths.items())
    lines = [
        "",
        f"Trend, probe Dice at {long_steps} minus at {short_steps} steps (same seed, same labelled volume):",
        "",
    ]
    lines += ["| pre-training | seed | volumes | longer - shorter [95 % t] |", "|---|---|---|---|"]
    for method in PRETRAIN_CONFIGS:
        means = []
        for seed in seeds:
            paths = [out / "snapshots" / method / f"seed{seed}" / f"epochs{e}.probe.json" for e in (short, long)]
            if not all(p.is_file() for p in paths):
                continue
            a, b = ({tuple(u["labeled"]): u["dice_encoder"] for u in json.loads(p.read_text())["units"]} for p in paths)
            diffs = [b[k] - a[k] for k in a if k in b]
            means.append(float(np.mean(diffs)))
            lines.append(f"| {method} | {seed} | {len(diffs)} | {_fmt((means[-1], *t_interval(diffs)))} |")
        if len(means) > 1:
            lines.append(f"| {method} | {len(means)} seeds | | {_fmt((float(np.mean(means)), *t_interval(means)))} |")
    return lines


def _fmt(lo_mean_hi: tuple[float, float, float]) -> str:
    mean, lo, hi = lo_mean_hi
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else f"{mean:+.3f} [n/a]"


def report(out: Path, lengths: dict[int, int], seeds: list[int], methods: list[str], command: str) -> str:
    """The Markdown report of what is done so far (probe and fine-tuning), with what is missing named."""
    lines = [
        "# Pre-training length (issue #24, section 2)",
        "",
        f"Command: `{command}`. Plan: `docs/plan_equal_footing.md`. Partial while cells are missing (each table "
        "counts what is done).",
        "",
        "## Probe: each snapshot against the mean of random:0,1,2 (t-interval over the labelled volumes)",
        "",
        "| pre-training | steps | seed | probe Dice A / random | A - random [95 % t] | volumes A>B / A<B "
        "| pretext acc. (encoder features) A / random |",
        "|---|---|---|---|---|---|---|",
    ]
    across: dict[tuple[str, int], list[float]] = {}
    for method in PRETRAIN_CONFIGS:
        for epochs, steps in lengths.items():
            for seed in seeds:
                path = out / "snapshots" / method / f"seed{seed}" / f"epochs{epochs}.probe.json"
                if not path.is_file():
                    continue
                r = json.loads(path.read_text())
                acc, sc, dice = r["pretext_accuracy_encoder_features"], r["sign_count"], r["mean_dice"]
                lines.append(
                    f"| {method} | {steps} | {seed} | {dice['encoder']:.3f} / {dice['baseline']:.3f}"
                    f" | {_fmt((r['mean_difference'], *r['ci95']))} | {sc['encoder_better']} / {sc['baseline_better']}"
                    f" | {acc['encoder']:.3f} / {acc['baseline']:.3f} |"
                )
                across.setdefault((method, steps), []).append(r["mean_difference"])
    lines += ["", "Across pre-training seeds (the unit there: t-interval over the seeds' mean differences):", ""]
    lines += ["| pre-training | steps | seeds | A - random [95 % t] |", "|---|---|---|---|"]
    for (method, steps), diffs in across.items():
        lines.append(f"| {method} | {steps} | {len(diffs)} | {_fmt((float(np.mean(diffs)), *t_interval(diffs)))} |")
    lines += probe_trend(out, lengths, seeds)
    chosen, reason = choose_length(out, lengths, seeds)
    lines += ["", f"**Length for section 3** (the plan's rule, over seeds {seeds}): {reason}.", ""]
    lines += ["", "## Fine-tuning from each snapshot: paired differences by seed", ""]
    comparisons = (
        ("ideal", "cps", "local pre-training, CPS fine-tuning: IDEAL - CPS"),
        ("local_cl", "supervised", "local pre-training, supervised fine-tuning"),
        ("global_cps", "cps", "global pre-training, CPS fine-tuning"),
        ("global_cl", "supervised", "global pre-training, supervised fine-tuning"),
        ("cps", "supervised", "CPS vs supervised, random init (the same at every length)"),
    )
    for steps in lengths.values():
        folder = out / "finetune" / f"steps{steps}"
        fractions = sorted({p.name[1:] for p in folder.glob("*/f*") if p.is_dir()}, key=float)
        rows = paired_differences(str(folder), fractions, seeds, comparisons=comparisons) if fractions else []
        lines += [f"### {steps} pre-training steps", ""]
        lines += [paired_markdown(rows) if rows else "(no fine-tuning cell done yet)", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/pretrain_length")
    parser.add_argument("--lengths", default="90,900,2700", help="pre-training lengths in optimiser steps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pretrain", default="local,global", help="which pre-trainings")
    parser.add_argument("--finetune", default="ideal,local_cl,global_cps,global_cl,cps,supervised",
                        help="methods to fine-tune ('' for none)")  # fmt: skip
    parser.add_argument("--stop_after", default="finetune", choices=["pretrain", "probe", "finetune"])
    parser.add_argument("--results", default=None, help="Markdown report (default <out>/results.md)")
    parser.add_argument("--tiny", action="store_true", help="tiny data and network (the tests)")
    parser.add_argument("--report_only", action="store_true", help="write the report of what is done, run nothing")
    args = parser.parse_args(argv)
    setup = TINY if args.tiny else FULL
    out = Path(args.out).resolve()
    prepared = prepare_data(out, setup)
    per_epoch = steps_per_epoch(prepared, setup["pretrain"]["batch_size"])
    lengths = epoch_lengths(args.lengths, per_epoch)  # epochs -> steps actually made
    seeds = [int(s) for s in args.seeds.split(",") if s]
    pretrain = [m for m in args.pretrain.split(",") if m]
    unknown = [m for m in pretrain if m not in PRETRAIN_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown pre-training {unknown}; known: {list(PRETRAIN_CONFIGS)}")
    methods = [m for m in args.finetune.split(",") if m]
    print(f"{per_epoch} pre-training steps per epoch; lengths (epochs: steps) {lengths}; seeds {seeds}", flush=True)
    results = Path(args.results) if args.results else out / "results.md"
    command = " ".join(["python benchmarks/pretrain_length.py", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        atomic_write_text(str(results), report(out, lengths, seeds, methods, command))
        print(results.read_text(), flush=True)
        return
    for e, steps in lengths.items():
        snapshots = {}
        for seed in seeds:
            for method in pretrain:
                snapshots[(method, seed)] = pretrain_snapshot(prepared, out, method, seed, e, setup)
                if args.stop_after != "pretrain":
                    probe_snapshot(prepared, snapshots[(method, seed)], setup, out / "probe_cache")
            atomic_write_text(str(results), report(out, lengths, seeds, methods, command))
        if args.stop_after == "finetune" and methods:
            finetune_methods = [m for m in methods if m in RANDOM_METHODS or any(
                m in SWEEP_OWNER[p][1] for p in pretrain)]  # fmt: skip
            finetune(prepared, out, steps, seeds, snapshots, finetune_methods, setup)
        atomic_write_text(str(results), report(out, lengths, seeds, methods, command))
    print(results.read_text(), flush=True)


if __name__ == "__main__":
    main()
