"""Throughput and overhead of the bundle's ``inference.json``, against the bare network on the same slices.

Run: ``.venv/bin/python benchmarks/bench_inference.py --repeats 5`` (a few minutes on 2 CPU cores with ResNet50).
Prints a Markdown report and writes it to ``benchmarks/results/inference.md``.

What is measured (CPU, float32, the bundle defaults: ResNet50, 1.367 mm, 192x192), on ``--volumes`` synthetic
short-axis volumes of ``--slices`` slices (``--shape`` in-plane voxels at 1.25 mm, rotated affine):

- ``end to end``: ``ConfigWorkflow(inference.json).run()`` in this process: the input check (every file read and
  validated), loading, orientation, resampling, intensity scaling, crop/pad, slice-by-slice inference
  (``SliceInferer``), softmax, inversion back to the input's grid, argmax, the atomic write of the segmentation and
  its sidecar (md5 of the input and the model). The model is loaded once per run (``CheckpointLoader``); the config
  is built before the clock starts.
- ``network``: the bare ``FlexibleUNet`` forward (eval, ``no_grad``, channels-last as the bundles' default) on the same
  number of 192x192 slices per volume, in batches of ``sw_batch_size`` (8), as ``SliceInferer`` feeds it.

Medians over ``--repeats`` runs, the two measurements interleaved. The overhead is ``end to end / network - 1``.
``--profile`` adds where one end-to-end run spends its time (``cProfile``, cumulative seconds of the stages).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai.bundle import ConfigWorkflow  # noqa: E402
from monai.networks.nets import FlexibleUNet  # noqa: E402

from ideal_components.utils import atomic_write_text  # noqa: E402

CONFIGS = REPO / "bundles" / "ideal_acdc" / "configs"


def _volumes(folder: Path, count: int, shape: tuple[int, int], slices: int) -> None:
    rng = np.random.default_rng(0)
    angle = 0.3
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
    ) @ np.diag([1.25, 1.25, 10.0])
    for i in range(count):
        data = (rng.random((*shape, slices)) * 400).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"case{i:03d}.nii.gz"))


def _workflow(root: Path, inputs: Path, outputs: Path, backbone: str, **overrides) -> ConfigWorkflow:
    """``inference.json`` as a ConfigWorkflow, initialised; ``overrides``: further config ids (``spatial_size=...``)."""
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(inputs),
        output_dir=str(outputs),
        backbone=backbone,
        progress=False,
        **overrides,
    )
    wf.initialize()
    return wf


# stage -> (file suffix, function name) of the profiled function whose cumulative time is the stage's
_STAGES = {
    "input check (every file read and validated)": ("data/checks.py", "__init__"),
    "load + preprocess (data loader)": ("data/dataloader.py", "__next__"),
    "network forward (SliceInferer)": ("inferers/utils.py", "sliding_window_inference"),
    "post-processing (softmax, Invertd, argmax, atomic write, md5s of input and model for the sidecar)": (
        "engines/workflow.py",
        "_run_postprocessing",
    ),
    "checkpoint load": ("handlers/checkpoint_loader.py", "__call__"),
}


def _profile(run) -> dict[str, float]:
    profile = cProfile.Profile()
    profile.enable()
    total = run()
    profile.disable()
    stats = pstats.Stats(profile).stats
    found = {"total": total}
    for name, (suffix, func) in _STAGES.items():
        found[name] = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == func)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=2, default=[216, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also profile one end-to-end run by stage")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs, root = tmp / "inputs", tmp / "run"
        inputs.mkdir()
        (root / "models").mkdir(parents=True)
        _volumes(inputs, args.volumes, tuple(args.shape), args.slices)
        torch.manual_seed(0)
        net = FlexibleUNet(1, 4, backbone=args.backbone, spatial_dims=2, upsample="deconv").eval()
        torch.save(net.state_dict(), root / "models" / "model.pt")
        net = net.to(memory_format=torch.channels_last)  # the bundles' channels_last default, as inference.json runs it
        slices = torch.rand(args.slices, 1, 192, 192)

        def network() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.volumes):
                    for batch in slices.split(8):
                        net(batch)
            return time.perf_counter() - start

        def end_to_end() -> float:
            outputs = tmp / "segs"
            shutil.rmtree(outputs, ignore_errors=True)
            wf = _workflow(root, inputs, outputs, args.backbone)
            start = time.perf_counter()
            wf.run()
            seconds = time.perf_counter() - start
            wf.finalize()
            assert len(list(outputs.glob("*_seg.nii.gz"))) == args.volumes
            return seconds

        network(), end_to_end()  # warm-up
        e2e, bare = [], []
        for _ in range(args.repeats):
            e2e.append(end_to_end())
            bare.append(network())
        stages = _profile(end_to_end) if args.profile else None
    per_volume = statistics.median(e2e) / args.volumes
    bare_per_volume = statistics.median(bare) / args.volumes
    ratios = sorted(e / b for e, b in zip(e2e, bare))
    lines = [
        "# Inference: bundle end to end vs the bare network",
        "",
        f"Command: `python benchmarks/bench_inference.py --repeats {args.repeats} --threads {args.threads}"
        f" --backbone {args.backbone} --volumes {args.volumes} --slices {args.slices}`",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__},"
        f" {args.threads} thread(s); {args.volumes} volumes of {args.shape[0]}x{args.shape[1]}x{args.slices}"
        " voxels (1.25 mm in-plane, rotated affine)",
        "",
        "| what | per volume (median) | volumes / minute |",
        "|---|---|---|",
        f"| `inference.json` end to end | {per_volume:.2f} s | {60 / per_volume:.1f} |",
        f"| bare `FlexibleUNet` forward, {args.slices} slices of 192x192 | {bare_per_volume:.2f} s"
        f" | {60 / bare_per_volume:.1f} |",
        "",
        f"Overhead (end to end / network - 1), median of {args.repeats} paired runs: "
        f"{100 * (statistics.median(ratios) - 1):.0f} % (range {100 * (ratios[0] - 1):.0f} to"
        f" {100 * (ratios[-1] - 1):.0f} %).",
    ]
    if stages is not None:
        total = stages.pop("total")
        lines += [
            "",
            f"Where one end-to-end run of {args.volumes} volumes spends its {total:.2f} s (cProfile, cumulative):",
        ]
        lines += ["", "| stage | seconds | share |", "|---|---|---|"]
        stages["other (building the network and transforms, ignite events, logging)"] = total - sum(stages.values())
        lines += [f"| {name} | {sec:.2f} | {100 * sec / total:.0f} % |" for name, sec in stages.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
