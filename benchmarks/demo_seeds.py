"""The demo over several training seeds and fine-tuning schedules: how steady is ``make demo``'s test Dice?

Run: ``.venv/bin/python benchmarks/demo_seeds.py --seeds 0,1,2 --arms constant,warmup_cosine`` (4 to 10 minutes per
seed and arm on 2 CPU cores, depending on the machine, plus one pre-training per seed). Resumable: a finished step is
not run again. Prints a Markdown table and writes it to ``benchmarks/results/demo_seeds.md`` (``--results`` names
another file).

Every step is the ``make demo`` command (the same phantoms, preparation, overrides and bundle configs; see the
``demo`` target of the ``Makefile``) with ``--seed K``; the pre-training of seed ``K`` is run once and every arm of
that seed fine-tunes from its encoder, so the arms differ only in the fine-tuning schedule (paired by seed). Arms,
fixed before any of them was run:

- ``constant``: the bundle default, constant learning rate (1e-3 in the demo);
- ``warmup_cosine``: ``--warmup_epochs 1 --cosine_decay True`` (linear warm-up over the first of the 16 epochs, then
  a half-cosine to 0);
- ``epochs32``: ``--max_epochs 32`` (twice the demo's fine-tuning steps, still well inside its 15-minute budget),
  added after the 6 seeds of the other two arms had been seen, with its rule fixed before its runs: it becomes the
  demo's schedule if its worst seed (largest component kept) reaches 0.85, otherwise the demo keeps 16 epochs. It did
  (worst seed 0.866, ``benchmarks/results/demo_seeds_epochs32.md``), so ``make demo`` fine-tuned 32 epochs from then.
  Its "well inside its 15-minute budget" was not checked before its adoption, and it is wrong on a slower
  machine of the same kind: a fresh-clone ``time make demo`` there took 15 min 58 s (and 15 min 54 s the session
  before), about 25 s per fine-tuning epoch (validation included) plus 159 s for the install, phantoms, preparation,
  pre-training and evaluation;
- ``epochs24``: ``--max_epochs 24``, added after that timing and after every arm above had been seen. 24 is chosen by
  time alone: the largest even epoch count whose fresh-clone wall time on that slower machine, estimated as
  159 s + 25 s per epoch, stays 15 % under the budget (12.75 min; the per-epoch time there spread 22-30 s). Rule fixed
  before its runs: it becomes the demo's schedule if its worst seed of 0-5 (largest component kept) reaches 0.85 and
  a measured fresh-clone ``time make demo`` with it on the slower machine takes at most 15 minutes; otherwise the demo
  goes back to the 16 epochs of version 0.6.0, which fit the time (5 of 6 seeds reaching 0.85). Both held: worst seed
  0.866 (``benchmarks/results/demo_seeds_epochs24.md``) and 11 min 13 s for the fresh clone (test Dice 0.878), so
  ``make demo`` fine-tunes 24 epochs since. ``constant`` / ``warmup_cosine`` are the 16-epoch schedule of 0.6.0.

Every arm is evaluated twice: the network's output, and with ``--keep_largest_component True`` (the largest 3D
connected component of each structure kept, as ``make demo`` evaluates). That post-processing was added after seeds
0-2 had been run and their test Dice seen; seeds 3-5 were run after the choice, as a check of it.

The table gives, per seed and arm, the test mean Dice (prepared grid and raw resolution) with and without the
post-processing, and the best validation Dice; then the worst seed and the mean per arm and post-processing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.utils import atomic_write_text  # noqa: E402

BUNDLE = REPO / "bundles" / "ideal_acdc"
CONFIGS = BUNDLE / "configs"
# the Makefile's DEMO_OVERRIDES (without the seed) and DEMO_TRAIN_OVERRIDES, with the 16 epochs of version 0.6.0
DEMO = ["--backbone", "resnet18", "--spatial_size", "[128,128]", "--learning_rate", "1e-3", "--num_workers", "0"]
DEMO_TRAIN = {
    "--dice_weight": "1.0",
    "--rampup_epochs": "10",
    "--label_fraction": "10",
    "--max_epochs": "16",
    "--val_interval": "2",
}
ARMS = {
    "constant": {},
    "warmup_cosine": {"--warmup_epochs": "1", "--cosine_decay": "True"},
    "epochs32": {"--max_epochs": "32"},
    "epochs24": {"--max_epochs": "24"},
}
# every arm is evaluated twice: the network output, and with the largest component of each structure kept
POSTPROCESSING = {"eval": [], "eval_largest_component": ["--keep_largest_component", "True"]}
POST_NAMES = {"eval": "none", "eval_largest_component": "largest component"}


def _run(cmd: list[str], log: Path) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log}")
    return proc.stdout


def _bundle(configs: list[str], root: Path, prepared: Path, *args: str) -> list[str]:
    files = [str(CONFIGS / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0] if len(files) == 1 else str(files)]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    return cmd + ["--bundle_root", str(root), "--dataset_dir", str(prepared), *DEMO, *args]


def _best_validation(train_log: str) -> float:
    values = [float(v) for v in re.findall(r"Metrics -- val_mean_dice: ([0-9.]+)", train_log)]
    return max(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo_seeds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--results", default="benchmarks/results/demo_seeds.md", help="the Markdown file written")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    raw, prepared = out / "raw", out / "prepared"
    py = sys.executable
    if not (raw / "training").is_dir():
        _run([py, "-m", "ideal_components", "synth_acdc", str(raw), "--patients", "20", "--seed", "0"], out / "s.log")
    if not (prepared / "datalist.json").is_file():
        cmd = [py, "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "2.0"]
        _run(cmd + ["--spatial_size", "128"], out / "prepare.log")
    arms = [a for a in args.arms.split(",") if a]
    if any(a not in ARMS for a in arms):
        raise SystemExit(f"unknown arm in {arms}; known: {list(ARMS)}")
    rows, results = [], {(a, n): [] for a in arms for n in POSTPROCESSING}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        pre = out / f"seed{seed}" / "pretrain"
        encoder = pre / "models" / "pretrained_encoder.pt"
        if not encoder.is_file():
            _run(_bundle(["pretrain.json"], pre, prepared, "--seed", str(seed), "--max_epochs", "10"), pre / "log")
        for arm in arms:
            root = out / f"seed{seed}" / arm
            train = [a for kv in {**DEMO_TRAIN, **ARMS[arm]}.items() for a in kv]  # the arm's ids replace the demo's
            common = ["--seed", str(seed), "--pretrained_encoder", str(encoder), *train]
            if not (root / "models" / "model.pt").is_file() or not (root / "train.log").is_file():
                _run(_bundle(["train.json"], root, prepared, *common), root / "train.log")
            dice = {}
            for name, post in POSTPROCESSING.items():
                eval_dir = root / name
                if not (eval_dir / "metrics_summary.json").is_file():
                    cmd = _bundle(["train.json", "evaluate.json"], root, prepared, *common, *post)
                    _run(cmd + ["--output_dir", str(eval_dir)], root / f"{name}.log")
                for suffix in ("", "_raw"):
                    summary = json.loads((eval_dir / f"metrics_summary{suffix}.json").read_text())
                    dice[name + suffix] = summary["metrics"]["dice"]["mean"]
            best = _best_validation((root / "train.log").read_text())
            for name in POSTPROCESSING:
                results[(arm, name)].append(dice[name])
            values = " | ".join(f"{dice[n]:.3f} | {dice[n + '_raw']:.3f}" for n in POSTPROCESSING)
            rows.append(f"| {seed} | {arm} | {values} | {best:.3f} |")
            print(rows[-1], flush=True)
    summary_rows = [
        f"| {a} | {POST_NAMES[n]} | {min(v):.3f} | {statistics.mean(v):.3f} | {max(v):.3f} | {len(v)} |"
        for (a, n), v in results.items()
        if v
    ]
    lines = [
        "# The demo over training seeds and fine-tuning schedules",
        "",
        f"Command: `python benchmarks/demo_seeds.py {' '.join(sys.argv[1:])}`. Each row is `make demo` with "
        "`DEMO_SEED` = seed (pre-training shared by the arms of a seed). Test mean Dice over the 4 test patients.",
        "",
        "| seed | arm | test Dice | (raw resolution) | test Dice, largest component | (raw resolution) "
        "| best validation Dice |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| arm | post-processing | worst seed | mean | best seed | seeds |",
        "|---|---|---|---|---|---|",
        *summary_rows,
        "",
    ]
    atomic_write_text(str(REPO / args.results), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
