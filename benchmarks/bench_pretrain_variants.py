"""Which pre-training configuration gives the better encoder? The bundle's pre-training variants, probed.

Run: ``.venv/bin/python benchmarks/bench_pretrain_variants.py --out runs/pretrain_variants`` (about 5 minutes per
variant and pre-training seed on 2 CPU cores). Resumable: a variant's pre-training or probe that has finished is not
run again. Prints a Markdown table and writes it to ``benchmarks/results/pretrain_variants[_<preset>].md``.

What is measured, fixed before any result was seen: each variant is the ACDC bundle's ``pretrain.json`` with
overrides (the demo's CPU schedule: ResNet18, 128x128 at 2 mm, learning rate 1e-3, ``--pretrain_epochs`` epochs),
run as a ``python -m monai.bundle run`` subprocess for every ``--pretrain_seeds`` seed on phantoms prepared like the
demo's (``--patients`` patients of ``synth_acdc``, ``--difficulty``). Its encoder is then compared with a randomly
initialised one (``random:0``) by ``python -m ideal_components probe`` (frozen encoder, BatchNorm statistics
re-estimated, per-pixel linear classifier on all five levels from one labelled volume, test Dice), paired over
3 probe seeds x 3 single labelled volumes; the table gives the mean paired difference with its bootstrap 95 %
interval and sign count, and the pretext accuracy (top-1 positive retrieval) of both encoders at the variant's
deepest projected level.

Variants:

- ``level-2_head2``: the bundle default before this benchmark (stride-16 map, two-layer head);
- ``paper``: the paper's configuration, the encoder output (``feature_level -1``) and one 1x1 convolution;
- ``level-1_head2``: the encoder output with the two-layer head (separates the level from the head);
- ``multi2``: levels ``[-1, -2]``, one 1x1 convolution each, loss summed;
- ``multi3``: levels ``[-1, -2, -3]``, one 1x1 convolution each, loss summed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.utils import atomic_write_text  # noqa: E402

BUNDLE = REPO / "bundles" / "ideal_acdc"
VARIANTS: dict[str, dict[str, str]] = {
    "level-2_head2": {"feature_level": "-2", "head_layers": "2"},
    "paper": {"feature_level": "-1", "head_layers": "1"},
    "level-1_head2": {"feature_level": "-1", "head_layers": "2"},
    "multi2": {"feature_level": "[-1,-2]", "head_layers": "1"},
    "multi3": {"feature_level": "[-1,-2,-3]", "head_layers": "1"},
}
SCHEDULE = ["--backbone", "resnet18", "--spatial_size", "[128,128]", "--learning_rate", "1e-3", "--num_workers", "0"]


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log}")


def _data(out: Path, patients: int, difficulty: str) -> Path:
    raw, prepared = out / "raw", out / "prepared"
    py = sys.executable
    if not (raw / "training").is_dir():
        cmd = [py, "-m", "ideal_components", "synth_acdc", str(raw), "--patients", str(patients), "--seed", "0"]
        _run(cmd + (["--difficulty", difficulty] if difficulty != "standard" else []), out / "synth.log")
    if not (prepared / "datalist.json").is_file():
        cmd = [py, "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "2.0"]
        _run(cmd + ["--spatial_size", "128"], out / "prepare.log")
    return prepared


def _pretrain(prepared: Path, root: Path, variant: dict[str, str], seed: int, epochs: int) -> Path:
    encoder = root / "models" / "pretrained_encoder.pt"
    if encoder.is_file():
        return encoder
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "pretrain.json")]
    cmd += ["--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(root)]
    cmd += ["--dataset_dir", str(prepared), "--seed", str(seed), "--max_epochs", str(epochs), *SCHEDULE]
    for key, value in variant.items():
        cmd += [f"--{key}", value]
    _run(cmd + ["--resume", "True"], root / "pretrain.log")
    return encoder


def _probe(prepared: Path, encoder: Path, out_json: Path, level: int) -> dict:
    if not out_json.is_file():
        cmd = [sys.executable, "-m", "ideal_components", "probe", "--dataset_dir", str(prepared)]
        cmd += ["--encoder", str(encoder), "--baseline", "random:0", "--backbone", "resnet18", "--seeds", "0,1,2"]
        cmd += ["--labeled_volumes", "3", "--pretext_level", str(level), "--out", str(out_json)]
        _run(cmd, out_json.with_suffix(".log"))
    return json.loads(out_json.read_text())


def _deepest(variant: dict[str, str]) -> int:
    levels = json.loads(variant["feature_level"])
    return max(levels) if isinstance(levels, list) else int(levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/pretrain_variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--pretrain_seeds", default="0")
    parser.add_argument("--pretrain_epochs", type=int, default=10)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--difficulty", default="standard")
    parser.add_argument("--results", default=None, help="Markdown file (default benchmarks/results/...)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    prepared = _data(out, args.patients, args.difficulty)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    seeds = [int(s) for s in args.pretrain_seeds.split(",") if s]
    rows = []
    for name in names:
        for seed in seeds:
            root = out / name / f"seed{seed}"
            encoder = _pretrain(prepared, root, VARIANTS[name], seed, args.pretrain_epochs)
            level = _deepest(VARIANTS[name])
            report = _probe(prepared, encoder, root / "probe.json", level)
            acc = report["pretext_accuracy_encoder_features"]
            lo, hi = report["ci95"]
            signs = f"{report['sign_count']['encoder_better']} / {report['sign_count']['baseline_better']}"
            rows.append(
                f"| {name} | {VARIANTS[name]['feature_level']} | {VARIANTS[name]['head_layers']} | {seed} "
                f"| {report['mean_dice']['encoder']:.3f} | {report['mean_dice']['baseline']:.3f} "
                f"| {report['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {signs} "
                f"| {acc['encoder']:.3f} / {acc['baseline']:.3f} ({level}) |"
            )
            print(rows[-1], flush=True)
    cmd = " ".join(["python benchmarks/bench_pretrain_variants.py"] + sys.argv[1:])
    lines = [
        f"# Pre-training variants, probed ({args.difficulty} phantoms)",
        "",
        f"Command: `{cmd}`. {args.patients} phantom patients (`synth_acdc --seed 0`), prepared at 2 mm / 128x128; "
        f"pre-training {args.pretrain_epochs} epochs (ResNet18, lr 1e-3, batch 16); probe: ResNet18 encoder vs "
        "`random:0`, 3 probe seeds x 3 single labelled volumes (the units: t-interval over the 3 volumes, each the "
        "mean of its 3 seeds), 4 test volumes; pretext accuracy on the encoder features. Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| variant | feature_level | head_layers | pre-training seed | probe Dice | random probe Dice "
        "| paired difference [95 % t-interval] | volumes A>B / A<B "
        "| pretext accuracy (encoder features) pre-trained / random (level) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    default = (
        REPO
        / "benchmarks"
        / "results"
        / ("pretrain_variants.md" if args.difficulty == "standard" else f"pretrain_variants_{args.difficulty}.md")
    )
    target = Path(args.results) if args.results else default
    atomic_write_text(str(target), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
