"""Which training and inference options are fastest on a GPU: the measurements behind the bundles' CUDA defaults.

Run on a CUDA machine (about 4 minutes on an H200)::

    python benchmarks/bench_gpu_options.py            # writes benchmarks/results/gpu_options.md
    python benchmarks/bench_gpu_options.py --cpu      # tiny sizes on the CPU: checks the script (the test suite)

Measured at the bundles' own training size (ResNet50, 192x192 slices, 4 labelled + 4 unlabelled) and at
``gpu_check.py``'s (8 + 8):

1. **Step time** (median of ``--repeats`` one-iteration epochs, each between two ``torch.cuda.synchronize()``):
   the plain ``SupervisedTrainer`` step; the cross-pseudo-label (CPL) step with per-group BatchNorm in its two
   implementations (``slices``: native kernels writing into slices of one output; ``concat``: the stock BatchNorm,
   cuDNN's, per group, then one concatenation) and with ``separate_forwards``; each channels-last and channels-first,
   AMP off and on.
2. **Epoch throughput** of the CPL trainer over ``--iterations`` iterations with no synchronisation between them,
   as a bundle runs: batches as the bundles' loaders give them (pageable memory, blocking copy, ``decollate=True``),
   and without each of the host synchronisations that ``gpu_check.py`` counts (``decollate=False``; pinned memory
   with ``non_blocking=True``; the bundles' per-iteration logging of the loss and its two parts on or off: after
   decollation it reads Python floats, without it three ``.item()`` calls).
3. **Inference**: volumes per second of the network under the bundles' ``SliceInferer``, channels-last or not,
   AMP off and on.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import make_batch  # noqa: E402
from gpu_check import (  # noqa: E402
    _sync,
    cpl_engine,
    inference_rate,
    parse_device_args,
    plain_engine,
    time_runs,
    write_report,
)
from ignite.engine import Events  # noqa: E402

from ideal_components.batchnorm import GroupBatchNorm2d  # noqa: E402

SIZES = {  # --cpu: a check that the script runs, not a measurement
    "gpu": {"backbone": "resnet50", "size": 192, "batches": [(4, 4), (8, 8)], "slices": 10},
    "cpu": {"backbone": "resnet10", "size": 32, "batches": [(2, 2)], "slices": 2},
}
CPL_VARIANTS = {  # row name -> (batch_statistics, GroupBatchNorm implementation)
    "CPL per_group, slices": ("per_group", "slices"),
    "CPL per_group, concat": ("per_group", "concat"),
    "CPL separate_forwards": ("separate_forwards", None),
}


@contextlib.contextmanager
def bn_implementation(implementation: str | None):
    """Per-group BatchNorm ``implementation`` for the networks built inside (``None``: the device's default)."""
    GroupBatchNorm2d.implementation = implementation
    try:
        yield
    finally:
        GroupBatchNorm2d.implementation = None


def step_times(cfg: dict, device: torch.device, args: argparse.Namespace) -> list[tuple]:
    rows = []
    for labeled, unlabeled in cfg["batches"]:
        c = {**cfg, "labeled": labeled, "unlabeled": unlabeled}
        for amp in (False, True):
            for channels_last in (True, False):
                plain = time_runs(plain_engine(c, device, amp, channels_last).run, device, args.warmup, args.repeats)
                rows.append((f"{labeled}+{unlabeled}", amp, channels_last, "plain SupervisedTrainer", *plain, 1.0))
                for name, (mode, impl) in CPL_VARIANTS.items():
                    with bn_implementation(impl):
                        engine = cpl_engine(c, device, amp, mode, channels_last)
                        sec, peak = time_runs(engine.run, device, args.warmup, args.repeats)
                    rows.append((f"{labeled}+{unlabeled}", amp, channels_last, name, sec, peak, sec / plain[0]))
                    print(rows[-1], flush=True)
                print(f"steps {labeled}+{unlabeled} AMP {amp} channels-last {channels_last}: done", flush=True)
    return rows


def epoch_throughput(cfg: dict, device: torch.device, args: argparse.Namespace, implementation: str) -> list[tuple]:
    """Iterations per second of CPL epochs with and without each host synchronisation of a bundle's iteration."""
    labeled, unlabeled = cfg["batches"][0]
    c = {**cfg, "labeled": labeled, "unlabeled": unlabeled}
    variants = [  # (name, decollate, pinned + non_blocking, per-iteration loss logging)
        ("as the bundles: decollate, blocking copy, loss logging", True, False, True),
        ("no decollate", False, False, True),
        ("no decollate, pinned non_blocking", False, True, True),
        ("no decollate, pinned non_blocking, no loss logging", False, True, False),
    ]
    rows = []
    with bn_implementation(implementation):
        for name, decollate, pinned, logging in variants:
            batch = make_batch(labeled, unlabeled, cfg["size"])
            if pinned and device.type == "cuda":  # page-locked memory needs a CUDA device
                batch = {k: v.pin_memory() for k, v in batch.items()}
            engine = cpl_engine(
                c, device, False, loader=[batch] * args.iterations, decollate=decollate, non_blocking=pinned
            )
            if logging:  # what the bundles' StatsHandler / TensorBoardStatsHandler read every iteration

                def log(e) -> None:
                    out = e.state.output
                    out = out[0] if isinstance(out, list) else out
                    for key in ("loss", "loss_supervised", "loss_cross_pseudo"):
                        float(out[key])

                engine.add_event_handler(Events.ITERATION_COMPLETED, log)
            sec, _ = time_runs(engine.run, device, 1, args.epochs)
            rows.append((name, args.iterations / sec))
    print("epoch throughput: done", flush=True)
    return rows


def inference_rates(cfg: dict, device: torch.device, args: argparse.Namespace) -> list[tuple]:
    rows = []
    for amp in (False, True):
        for channels_last in (True, False):
            rate, peak = inference_rate(cfg, device, amp, args, channels_last)
            rows.append((amp, channels_last, rate, peak))
    return rows


def report(device: torch.device, cfg: dict, steps, epochs, infer, implementation: str, wall: float, args) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    cmd = "python benchmarks/bench_gpu_options.py" + (" --cpu" if args.cpu else "")
    on = {True: "on", False: "off"}
    lines = [
        "# Training and inference options on a GPU",
        "",
        f"Command: `{cmd}`. Device: {name}; torch {torch.__version__}; cuDNN as the bundles set it "
        f"(`set_determinism`: deterministic, no autotuning); {cfg['backbone']}, "
        f"{cfg['size']}x{cfg['size']} slices. Step times: medians of {args.repeats} one-iteration epochs after "
        f"{args.warmup} warm-up runs, each between two synchronisations.",
        "",
        "## Step time",
        "",
        "| batch (L+U) | AMP | channels-last | step | time (s) | vs plain (same AMP, format) | peak memory (GiB) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for batch, amp, cl, what, sec, peak, ratio in steps:
        lines.append(f"| {batch} | {on[amp]} | {on[cl]} | {what} | {sec:.4f} | {ratio:.2f}x | {peak:.2f} |")
    lines += [
        "",
        f"## Epoch throughput (CPL per_group, {implementation}, AMP off, channels-last, batch "
        f"{'+'.join(map(str, cfg['batches'][0]))}, {args.iterations} iterations per epoch, median of {args.epochs})",
        "",
        "| iteration | iterations/s |",
        "|---|---:|",
    ]
    lines += [f"| {what} | {rate:.2f} |" for what, rate in epochs]
    lines += ["", f"## Inference (network + SliceInferer, {cfg['slices']}-slice volumes)", ""]
    lines += ["| AMP | channels-last | volumes/s | peak memory (GiB) |", "|---|---|---:|---:|"]
    lines += [f"| {on[amp]} | {on[cl]} | {rate:.1f} | {peak:.2f} |" for amp, cl, rate, peak in infer]
    lines += ["", f"Wall time: {wall:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=None, help="iterations per throughput epoch (20 / 2)")
    parser.add_argument("--epochs", type=int, default=3, help="timed throughput epochs")
    parser.add_argument(
        "--implementation", default="concat", choices=("slices", "concat"), help="per-group BatchNorm of part 2"
    )
    args, device = parse_device_args(parser, argv, "gpu_options.md", warmup=(3, 1), repeats=(10, 1))
    args.iterations = (2 if args.cpu else 20) if args.iterations is None else args.iterations
    cfg = SIZES["cpu" if args.cpu else "gpu"]
    t0 = time.perf_counter()
    infer = inference_rates(cfg, device, args)
    epochs = epoch_throughput(cfg, device, args, args.implementation)
    steps = step_times(cfg, device, args)
    _sync(device)
    text = report(device, cfg, steps, epochs, infer, args.implementation, time.perf_counter() - t0, args)
    return write_report(text, args.output)


if __name__ == "__main__":
    main()
