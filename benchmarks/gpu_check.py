"""GPU check: training steps, pre-training step, inference rate and peak memory on one CUDA device.

Run through ``benchmarks/gpu_check.sh`` (about 2-4 minutes on a recent GPU; under 8 by design) or, to check that the
script works without a GPU, ``benchmarks/gpu_check.sh --cpu`` (tiny sizes, seconds; run by the test suite).

Measured, each with AMP off and on (``torch.autocast`` float16 + GradScaler, the bundles' ``amp`` on CUDA GPUs
before Ampere), channels-last as the bundles' default:

- the cross-pseudo-label step (``CrossPseudoLabelTrainer``, ``batch_statistics="per_group"`` and
  ``"separate_forwards"``) against a MONAI ``SupervisedTrainer`` step (FlexibleUNet, cross-entropy) on the same
  L + U slices, and the FLOP floor of their ratio;
- the pre-training step (``ContrastivePretrainTrainer`` + ``DenseContrastiveNet`` + ``LocalContrastiveLoss``, the
  bundles' pre-training settings);
- inference: volumes per second of the bundles' ``SliceInferer`` over in-memory volumes (network only; the whole
  ``inference.json`` pipeline is ``benchmarks/bench_inference.py``);
- peak device memory of each (``torch.cuda.max_memory_allocated``);
- channels-first rows of the CPL and plain steps, so that the channels-last default is a measured choice;
- host synchronisations per iteration (``torch.cuda.set_sync_debug_mode("warn")``, one warning per blocking call)
  of the CPL, pre-training and plain steps, with the batch as the bundles' loaders give it (pageable memory,
  ``non_blocking=False``) and pinned with ``non_blocking=True``, and where each comes from. On the CPU (``--cpu``)
  there is nothing to count; the CPU suite's proof is the ``meta``-device tests in ``tests/test_engines.py``.

Step times: ``engine.run()`` of a one-iteration epoch between two ``torch.cuda.synchronize()``, after warm-up runs;
medians; cuDNN as the bundles set it (``set_determinism``). Writes ``benchmarks/results/gpu.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import NUM_CLASSES, count_flops, make_batch  # noqa: E402
from monai.engines import SupervisedTrainer  # noqa: E402
from monai.inferers import SliceInferer  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import FlexibleUNet  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

from ideal_components.batchnorm import default_implementation  # noqa: E402
from ideal_components.engines import ContrastivePretrainTrainer, CrossPseudoLabelTrainer  # noqa: E402
from ideal_components.losses import CrossPseudoLabelLoss, LocalContrastiveLoss  # noqa: E402
from ideal_components.networks import DenseContrastiveNet, TwoBranchFlexibleUNet  # noqa: E402

SIZES = {  # --cpu: a check that the script runs, not a measurement
    "gpu": {"backbone": "resnet50", "size": 192, "labeled": 8, "unlabeled": 8, "pretrain_batch": 16, "slices": 10},
    "cpu": {"backbone": "resnet10", "size": 64, "labeled": 2, "unlabeled": 2, "pretrain_batch": 4, "slices": 3},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def time_runs(run, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds of ``run()``, peak memory GiB over the timed runs)."""
    for _ in range(warmup):
        run()
    _sync(device)
    # engines timed before are unreachable but not yet freed (ignite engines hold reference cycles): without a
    # collection their networks and optimiser states would count in this peak
    gc.collect()
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak_gib(device)


def _net(model: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def cpl_engine(cfg: dict, device: torch.device, amp: bool, mode: str = "per_group", channels_last: bool = True,
               loader: list | None = None, **kwargs) -> CrossPseudoLabelTrainer:  # fmt: skip
    torch.manual_seed(0)
    net = _net(TwoBranchFlexibleUNet(out_channels=NUM_CLASSES, backbone=cfg["backbone"], is_pad=False), device,
               channels_last)  # fmt: skip
    loader = [make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"])] if loader is None else loader
    return CrossPseudoLabelTrainer(
        network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-4), loss_function=CrossPseudoLabelLoss(),
        batch_statistics=mode, device=device, max_epochs=1, epoch_length=len(loader), train_data_loader=loader,
        amp=amp, **kwargs,
    )  # fmt: skip


def plain_engine(cfg: dict, device: torch.device, amp: bool, channels_last: bool = True, loader: list | None = None,
                 **kwargs) -> SupervisedTrainer:  # fmt: skip
    torch.manual_seed(0)
    net = _net(FlexibleUNet(1, NUM_CLASSES, backbone=cfg["backbone"], upsample="deconv", is_pad=False), device,
               channels_last)  # fmt: skip
    loader = [make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"])] if loader is None else loader
    return SupervisedTrainer(
        network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-4), device=device, max_epochs=1,
        loss_function=DiceCELoss(lambda_dice=0.0, to_onehot_y=True, softmax=True), epoch_length=len(loader),
        train_data_loader=loader, amp=amp, **kwargs,
    )  # fmt: skip


def pretrain_batch(cfg: dict) -> dict[str, torch.Tensor]:
    """Two random views of ``cfg["pretrain_batch"]`` slices, seeded."""
    g = torch.Generator().manual_seed(0)
    shape = (cfg["pretrain_batch"], 1, cfg["size"], cfg["size"])
    return {"image": torch.randn(*shape, generator=g), "image_view2": torch.randn(*shape, generator=g)}


def pretrain_engine(cfg: dict, device: torch.device, amp: bool, loader: list | None = None, channels_last: bool = True,
                    net_kwargs: dict | None = None, **kwargs) -> ContrastivePretrainTrainer:  # fmt: skip
    """The pre-training engine; ``net_kwargs`` override the network's ``feature_level=-2, momentum=0.99,
    head_layers=2`` (the settings its recorded timings used)."""
    loader = [pretrain_batch(cfg)] if loader is None else loader
    torch.manual_seed(0)
    net_kwargs = {"feature_level": -2, "momentum": 0.99, "head_layers": 2, **(net_kwargs or {})}
    net = _net(DenseContrastiveNet(backbone=cfg["backbone"], **net_kwargs), device, channels_last)
    return ContrastivePretrainTrainer(
        device=device, max_epochs=1, epoch_length=len(loader), train_data_loader=loader, network=net, amp=amp,
        max_shift=2, optimizer=torch.optim.Adam(net.parameters(), 1e-5),
        loss_function=LocalContrastiveLoss(max_locations=1024), **kwargs,
    )  # fmt: skip


def train_steps(cfg: dict, device: torch.device, amp: bool, args: argparse.Namespace) -> dict[str, tuple]:
    out = {}
    for mode in ("per_group", "separate_forwards"):
        name = f"CPL ({mode}, {default_implementation(device.type)})" if mode == "per_group" else f"CPL ({mode})"
        out[name] = time_runs(cpl_engine(cfg, device, amp, mode).run, device, args.warmup, args.repeats)
    out["plain SupervisedTrainer"] = time_runs(plain_engine(cfg, device, amp).run, device, args.warmup, args.repeats)
    first = cpl_engine(cfg, device, amp, channels_last=False)
    out["CPL (per_group), channels-first"] = time_runs(first.run, device, args.warmup, args.repeats)
    first = plain_engine(cfg, device, amp, channels_last=False)
    out["plain SupervisedTrainer, channels-first"] = time_runs(first.run, device, args.warmup, args.repeats)
    return out


def count_host_syncs(run, iterations: int) -> tuple[float, Counter]:
    """Blocking device-to-host waits per iteration of ``run()`` and the ``file:line`` each comes from.

    ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising CUDA call (``.item()``, ``nonzero``, a
    ``non_blocking=False`` copy, ...) warn, and the warning names the Python line that made the call.
    """
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    return len(syncs) / iterations, Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)


def host_syncs(cfg: dict, device: torch.device, amp: bool, iterations: int = 4) -> dict[str, tuple[float, Counter]]:
    """Syncs per iteration of each engine, fed as the bundles' loaders feed it and with pinned, non-blocking input."""
    # the control: one `.item()` must count as one, or the detector is blind and every count below means nothing
    out = {"control: one `.item()`": count_host_syncs(lambda: torch.ones(1, device=device).item(), 1)}
    for pinned in (False, True):

        def loader(batch: dict) -> list[dict]:
            batch = {k: v.pin_memory() if pinned else v for k, v in batch.items()}
            return [batch] * iterations

        feed = "pinned, non_blocking" if pinned else "pageable, blocking copy"
        cpl_batch = make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"])
        pre_batch = pretrain_batch(cfg)
        engines = {
            "CPL (per_group)": cpl_engine(cfg, device, amp, loader=loader(cpl_batch), non_blocking=pinned),
            "pre-training": pretrain_engine(cfg, device, amp, loader=loader(pre_batch), non_blocking=pinned),
            "plain SupervisedTrainer": plain_engine(cfg, device, amp, loader=loader(cpl_batch), non_blocking=pinned),
        }
        for name, engine in engines.items():
            engine.run()  # warm-up: cuDNN autotuning and the GradScaler's lazy set-up are one-off
            out[f"{name}, {feed}"] = count_host_syncs(engine.run, iterations)
    return out


def pretrain_step(cfg: dict, device: torch.device, amp: bool, args: argparse.Namespace) -> tuple:
    return time_runs(pretrain_engine(cfg, device, amp).run, device, args.warmup, args.repeats)


def inference_rate(
    cfg: dict, device: torch.device, amp: bool, args: argparse.Namespace, channels_last: bool = True
) -> tuple:
    """(volumes per second of the network under the bundles' ``SliceInferer``, peak memory GiB)."""
    torch.manual_seed(0)
    net = FlexibleUNet(1, NUM_CLASSES, backbone=cfg["backbone"], upsample="deconv")
    net = _net(net, device, channels_last).eval()
    # sw_batch_size 8: the bundles' slices per network call
    inferer = SliceInferer(roi_size=(cfg["size"], cfg["size"]), sw_batch_size=8, spatial_dim=2)
    volume = torch.randn(1, 1, cfg["size"], cfg["size"], cfg["slices"], device=device)

    def run() -> None:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            inferer(volume, net).softmax(1).argmax(1)

    seconds, peak = time_runs(run, device, args.warmup, args.repeats)
    return 1.0 / seconds, peak


def report(device: torch.device, cfg: dict, results: dict, floor: float, wall: float, args: argparse.Namespace) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    cmd = "bash benchmarks/gpu_check.sh" + (" --cpu" if args.cpu else "")
    lines = [
        "# GPU check",
        "",
        f"Command: `{cmd}`. Device: {name}; torch {torch.__version__}; channels-last networks; cuDNN as the bundles "
        "set it (`set_determinism`: deterministic algorithms, no autotuning); "
        f"{args.warmup} warm-up and {args.repeats} timed runs each, medians. Sizes: {cfg['backbone']}, "
        f"{cfg['size']}x{cfg['size']} slices, CPL batch {cfg['labeled']} labelled + {cfg['unlabeled']} unlabelled, "
        f"pre-training batch {cfg['pretrain_batch']}, inference volumes of {cfg['slices']} slices.",
        "",
        f"FLOP floor of CPL / plain (convolutions, forward): {floor:.3f}x.",
        "",
        "| what | AMP | time (s) or rate | vs plain step | peak memory (GiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for amp in (False, True):
        steps = results[amp]["train"]
        plain = steps["plain SupervisedTrainer"][0]
        for what, (sec, peak) in steps.items():
            lines.append(f"| {what} step | {'on' if amp else 'off'} | {sec:.4f} s | {sec / plain:.2f}x | {peak:.2f} |")
        sec, peak = results[amp]["pretrain"]
        lines.append(f"| pre-training step | {'on' if amp else 'off'} | {sec:.4f} s | | {peak:.2f} |")
        rate, peak = results[amp]["inference"]
        lines.append(
            f"| inference (network + SliceInferer) | {'on' if amp else 'off'} | {rate:.1f} volumes/s | | {peak:.2f} |"
        )
    lines += [
        "",
        'Host synchronisations per iteration (`torch.cuda.set_sync_debug_mode("warn")`, after a warm-up run):',
        "",
    ]
    if device.type != "cuda":
        lines.append("Not counted on the CPU (no CUDA stream to wait for); see the `meta`-device tests.")
    else:
        lines += [
            "| step, input | AMP | syncs per iteration | from (file:line x count per run) |",
            "|---|---|---:|---|",
        ]
        for amp in (False, True):
            for what, (per_iter, where) in results[amp]["syncs"].items():
                origin = ", ".join(f"{k} x{v}" for k, v in where.most_common()) or "none"
                lines.append(f"| {what} | {'on' if amp else 'off'} | {per_iter:g} | {origin} |")
    lines += ["", f"Wall time: {wall:.0f} s."]
    return "\n".join(lines) + "\n"


def parse_device_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    output: str,
    warmup: tuple[int, int],
    repeats: tuple[int, int],
) -> tuple[argparse.Namespace, torch.device]:
    """Add ``--cpu``, ``--warmup``, ``--repeats`` and ``--output`` to ``parser``, parse ``argv`` and refuse a GPU run
    without CUDA. ``warmup`` / ``repeats``: defaults as (GPU, ``--cpu``). Returns (args, device)."""
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed runs first (default {warmup[0]} on GPU, "
                        f"{warmup[1]} on CPU)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None, help=f"timed runs (default {repeats[0]} on GPU, "
                        f"{repeats[1]} on CPU)")  # fmt: skip
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / output))
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or with --cpu to check the script itself")
    args.warmup = warmup[args.cpu] if args.warmup is None else args.warmup
    args.repeats = repeats[args.cpu] if args.repeats is None else args.repeats
    set_determinism(seed=0)  # as the bundles' `initialize`: deterministic cuDNN algorithms, no autotuning
    return args, torch.device("cpu" if args.cpu else "cuda")


def write_report(text: str, output: str) -> str:
    """Print ``text`` and write it atomically to ``output`` (nothing written when ``output`` is empty)."""
    print(text)
    if output:
        from ideal_components.utils import atomic_write_text

        atomic_write_text(output, text)
        print(f"written to {output}")
    return text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, device = parse_device_args(parser, argv, "gpu.md", warmup=(5, 1), repeats=(20, 2))
    cfg = SIZES["cpu" if args.cpu else "gpu"]
    t0 = time.perf_counter()
    x = make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"])["image"]
    two = TwoBranchFlexibleUNet(out_channels=NUM_CLASSES, backbone=cfg["backbone"])
    plain = FlexibleUNet(1, NUM_CLASSES, backbone=cfg["backbone"], upsample="deconv")
    floor = count_flops(two.forward_both, x)[0] / count_flops(plain, x)[0]
    results = {}
    for amp in (False, True):
        results[amp] = {
            "train": train_steps(cfg, device, amp, args),
            "pretrain": pretrain_step(cfg, device, amp, args),
            "inference": inference_rate(cfg, device, amp, args),
            "syncs": host_syncs(cfg, device, amp) if device.type == "cuda" else {},
        }
        print(f"AMP {'on' if amp else 'off'}: done", flush=True)
    return write_report(report(device, cfg, results, floor, time.perf_counter() - t0, args), args.output)


if __name__ == "__main__":
    main()
