"""Cost of :class:`ideal_components.losses.LocalContrastiveLoss` (time, peak memory, share of a pre-training step).

Run: ``.venv/bin/python benchmarks/bench_local_contrastive_loss.py`` (about 3-5 minutes on 2 CPU cores). Prints a
Markdown report and writes it to ``benchmarks/results/local_contrastive_loss.md``.

What is measured (CPU, float32, torch's default thread count):

- time: forward + backward of the loss on random ``(B, C, S, S)`` query / key maps (``requires_grad``), B=8, C=128,
  median of ``--repeats`` runs after one warm-up run.
- peak memory: each configuration runs in a fresh subprocess; after the inputs are allocated the kernel's peak-RSS
  counter is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and the reported figure is ``VmHWM - VmRSS``
  at that point, i.e. the extra resident memory at the peak of one forward + backward (it includes what torch's CPU
  allocator keeps, which is what a training process pays). Falls back to a ``resource.getrusage`` ``ru_maxrss``
  delta where ``clear_refs`` is not writable (then import-time peaks can hide small figures).
- step: forward + backward of a ResNet50 FlexibleUNet encoder (``monai.networks.nets.flexible_unet.
  FLEXUNET_BACKBONE``, 1 input channel, random init) + the default dense projection head
  (``ideal_components.networks.DenseProjectionHead``, two 1x1 convolutions, 128 channels) on the deepest level, for
  ONE view of B=8 192x192 images. A real step also runs the key view, so the shares below are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideal_components.losses import LocalContrastiveLoss  # noqa: E402

B, C = 8, 128


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, C, size, size, generator=g).requires_grad_(True)
    k = torch.randn(B, C, size, size, generator=g).requires_grad_(True)
    return q, k


def _loss_fn(max_locations: int | None) -> LocalContrastiveLoss:
    return LocalContrastiveLoss(0.1, max_locations=max_locations, generator=torch.Generator().manual_seed(0))


def _fwd_bwd(loss_fn: LocalContrastiveLoss, q: torch.Tensor, k: torch.Tensor) -> None:
    q.grad = k.grad = None
    loss_fn(q, k).backward()


def time_loss(size: int, max_locations: int | None, repeats: int) -> list[float]:
    q, k = _inputs(size)
    loss_fn = _loss_fn(max_locations)
    _fwd_bwd(loss_fn, q, k)  # warm-up
    times: list[float] = []
    # at least `repeats` runs; cheap configurations run for up to ~2 s more (at most 50 runs) so that the median is
    # robust to the scheduling noise of a shared machine
    while len(times) < repeats or (sum(times) < 2.0 and len(times) < 50):
        t0 = time.perf_counter()
        _fwd_bwd(loss_fn, q, k)
        times.append(time.perf_counter() - t0)
    return times


def memory_child(size: int, max_locations: int | None) -> dict:
    """Runs in a fresh process: extra peak resident memory of one forward + backward, in MiB."""
    q, k = _inputs(size)
    loss_fn = _loss_fn(max_locations)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base_kb, method = _status_kb("VmRSS"), "VmHWM-VmRSS"
    except OSError:
        base_kb, method = _status_kb("VmRSS"), "ru_maxrss-VmRSS"
    _fwd_bwd(loss_fn, q, k)
    peak_kb = _status_kb("VmHWM") if method == "VmHWM-VmRSS" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_mib": (peak_kb - base_kb) / 1024.0, "method": method}


def measure_memory(size: int, max_locations: int | None) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(size), str(max_locations or 0)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_step(repeats: int) -> list[float]:
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    from ideal_components.networks import DenseProjectionHead

    torch.manual_seed(0)
    entry = FLEXUNET_BACKBONE.register_dict["resnet50"]
    params = {**entry["parameter"], "spatial_dims": 2, "in_channels": 1, "pretrained": False}
    encoder = entry["type"](**params)
    head = DenseProjectionHead(entry["feature_channel"][-1], out_channels=C)
    x = torch.randn(B, 1, 192, 192)

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        z = head(encoder(x)[-1])
        z.square().mean().backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 12, 24, 48, 96])
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--max-locations", type=int, default=1024)
    parser.add_argument("--skip-step", action="store_true", help="do not time the ResNet50 encoder step")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "local_contrastive_loss.md"))
    parser.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        size, m = args.memory_child
        print(json.dumps(memory_child(size, m or None)))
        return

    t_start = time.perf_counter()
    lines = [
        "# LocalContrastiveLoss benchmark",
        "",
        f"`{Path(sys.executable).name} benchmarks/bench_local_contrastive_loss.py`; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU ({os.cpu_count()} cores visible), float32, B={B}, C={C}, "
        f"temperature 0.1, median of >= {args.repeats} runs after a warm-up (cheap rows: up to 50 runs / 2 s). "
        f"Load average at start: {os.getloadavg()[0]:.2f} (the machine is shared, so expect noise).",
        "",
        "## Forward + backward time",
        "",
        "| map | locations N | max_locations | logits per batch | runs | median (ms) | min (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    medians: dict[tuple[int, int | None], float] = {}
    configs = [(s, None) for s in args.sizes]
    configs += [(s, args.max_locations) for s in args.sizes if s * s > args.max_locations]
    for size, m in configs:
        times = time_loss(size, m, args.repeats)
        n = size * size if m is None else m
        medians[(size, m)] = statistics.median(times)
        lines.append(
            f"| {size}x{size} | {size * size} | {m or '-'} | {B}x{n}x{n} ({B * n * n * 4 / 2**20:.0f} MiB) | "
            f"{len(times)} | {1e3 * statistics.median(times):.1f} | {1e3 * min(times):.1f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        "## Peak memory of one forward + backward",
        "",
        "Fresh subprocess per row; extra resident memory at the peak over the resident memory with the inputs "
        "allocated (Linux `clear_refs` / `VmHWM`; see the script's docstring).",
        "",
        "| map | max_locations | peak extra memory (MiB) | method |",
        "|---|---|---|---|",
    ]
    for size in args.memory_sizes:
        for m in (None, args.max_locations):
            res = measure_memory(size, m)
            lines.append(f"| {size}x{size} | {m or '-'} | {res['peak_extra_mib']:.0f} | {res['method']} |")
            print(lines[-1], flush=True)

    if not args.skip_step:
        step_times = time_step(args.repeats)
        step = statistics.median(step_times)
        lines += [
            "",
            "## Share of a pre-training step",
            "",
            f"Step = forward + backward of a ResNet50 FlexibleUNet encoder + default dense projection head on one view "
            f"of {B}x1x192x192: median {1e3 * step:.0f} ms (min {1e3 * min(step_times):.0f} ms). Share = loss / "
            "(step + loss). At 192x192 the ResNet50 levels are 96, 48, 24, 12, 6 pixels wide (strides 2-32); "
            "DenseContrastiveNet's default is the deepest (6x6).",
            "",
            "| map (level at 192x192) | max_locations | loss median (ms) | share of step |",
            "|---|---|---|---|",
        ]
        for (size, m), t in medians.items():
            level = f"{size}x{size} (stride {192 // size})"
            lines.append(f"| {level} | {m or '-'} | {1e3 * t:.1f} | {100 * t / (step + t):.2f} % |")
    lines += ["", f"Total benchmark wall time: {time.perf_counter() - t_start:.0f} s."]

    report = "\n".join(lines) + "\n"
    print()
    print(report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
