"""Time ``ideal_components.evaluation.metrics.binary_metrics`` against medpy computing dc + hd + hd95 + asd + assd.

Both compute the same five numbers (the largest absolute difference is printed); medpy runs one distance transform
per direction per metric (7 in all), ``binary_metrics`` two, on the joint bounding box of the masks.

Usage::

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 5] [--output benchmarks/results/metrics.md]

Cases: (a) random smooth blobs in the centre of a 192x192x10 ACDC-like volume, spacing (1.4, 1.4, 8) mm;
(a') the same blobs spread over the whole field of view (no cropping gain, only the shared transforms);
(b) an MMWHS-like 160x160x128 volume with a whole-heart-sized irregular structure, spacing (1.5, 1.5, 2) mm.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from medpy.metric import binary as mb
from scipy.ndimage import gaussian_filter

from ideal_components.evaluation.metrics import METRIC_NAMES, binary_metrics


def _blob_field(shape, rng, sigma):
    """Smooth Gaussian noise with unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / field.std()


def _centred(shape, radii):
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return sum(((g - n / 2) / r) ** 2 for g, n, r in zip(grid, shape, radii))


def case_acdc_like(seed: int = 0, whole_fov: bool = False):
    """Reference and prediction blobs in a 192x192x10 volume; the prediction is a perturbed reference."""
    rng = np.random.default_rng(seed)
    shape = (192, 192, 10)
    field = _blob_field(shape, rng, (4, 4, 1))
    noise = _blob_field(shape, rng, (3, 3, 1))
    if whole_fov:
        ref = field > 0.5
        pred = field + 0.6 * noise > 0.5
    else:
        envelope = _centred(shape, (40, 36, 6))  # a cardiac-sized region in the centre
        ref = (field > -0.5) & (envelope < 1.0)
        pred = (field + 0.6 * noise > -0.5) & (envelope < 1.1)
    return pred, ref, (1.4, 1.4, 8.0)


def case_mmwhs_like(seed: int = 1):
    """An irregular whole-heart-sized structure in a 160x160x128 volume, and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    shape = (160, 160, 128)
    envelope = _centred(shape, (48, 42, 36))
    wobble = 0.25 * _blob_field(shape, rng, 6)
    ref = envelope + wobble < 1.0
    pred = envelope * 1.05 + wobble + 0.15 * _blob_field(shape, rng, 3) < 1.0
    return pred, ref, (1.5, 1.5, 2.0)


def medpy_all(pred, ref, spacing):
    return {
        "dice": mb.dc(pred, ref),
        "hd": mb.hd(pred, ref, spacing),
        "hd95": mb.hd95(pred, ref, spacing),
        "asd": mb.asd(pred, ref, spacing),
        "assd": mb.assd(pred, ref, spacing),
    }


def _time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(repeats: int = 5) -> str:
    cases = [
        ("(a) ACDC-like blobs, 192x192x10, (1.4, 1.4, 8) mm", case_acdc_like()),
        ("(a') blobs over the whole FOV, 192x192x10", case_acdc_like(whole_fov=True)),
        ("(b) MMWHS-like, 160x160x128, (1.5, 1.5, 2) mm", case_mmwhs_like()),
    ]
    lines = [
        f"Median of {repeats} runs per method, both timed in the same process, one after the other "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible).",
        "",
        "| case | medpy dc+hd+hd95+asd+assd (s) | binary_metrics (s) | speed-up | max abs diff | dice | hd95 (mm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (pred, ref, spacing) in cases:
        binary_metrics(pred, ref, spacing)  # warm-up (imports, caches)
        t_ours, ours = _time(lambda: binary_metrics(pred, ref, spacing), repeats)
        t_medpy, theirs = _time(lambda: medpy_all(pred, ref, spacing), repeats)
        diff = max(abs(ours[k] - theirs[k]) for k in METRIC_NAMES)
        lines.append(
            f"| {name} | {t_medpy:.3f} | {t_ours:.3f} | {t_medpy / t_ours:.1f}x | {diff:.1e} | "
            f"{ours['dice']:.3f} | {ours['hd95']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per method and case (median reported)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "metrics.md"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    table = run(args.repeats)
    print(table)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        header = "# Surface-distance metrics: binary_metrics vs medpy\n\n"
        command = f"Command: `.venv/bin/python benchmarks/bench_metrics.py --repeats {args.repeats}`\n\n"
        with open(args.output, "w") as f:
            f.write(header + command + table)


if __name__ == "__main__":
    main()
