"""The training steps near the hardware (issue #28): profiled, against a matmul ceiling, compiled, and the paper's
ACDC protocol timed from the measured step rates.

Run on a CUDA machine through ``benchmarks/gpu_profile.sh`` (which first runs the CUDA-only tests and the bundles'
end-to-end tests, then this script; about 8 minutes on an H100 in all), or alone::

    python benchmarks/gpu_profile.py              # writes benchmarks/results/gpu_profile.md (+ .json)
    python benchmarks/gpu_profile.py --cpu        # tiny sizes on the CPU: checks the script (the test suite)

GPU runtime estimate of this script (H100 / H200, ResNet50 at the bundles' sizes; reasoned from the H200 figures of
``gpu.md`` / ``gpu_options.md``, not yet measured): 15 s of start-up, then about 1.5 minutes for sections 1, 2, 4 and
the eager rows of 3 (ten variants of about 4 s, three profiles and FLOP counts of about 8 s, the inference runs about
15 s); each ``torch.compile`` row 30-90 s (compilation with cold caches). The compiled rows run last, in order of
interest; one starts only while ``--compile-reserve`` (60 s) of the ``--budget`` (default 300 s from start-up) is
left, and a variant still running ``--grace`` (30 s) past the budget is stopped (an eager one past the budget does not
start): at most budget + grace + 15 s in all, about 5.75 minutes with the defaults, 4.5 to 5.5 under
``gpu_profile.sh`` (which gives it what remains of 8 minutes).

At the bundles' sizes (read from ``bundles/ideal_acdc/configs``: backbone, spatial size, fine-tuning batch
``labeled_batch_size`` + the rest, pre-training batch and ``feature_level`` / ``head_layers``), cuDNN as the bundles
set it (``set_determinism``), the engines as ``gpu_check.py`` builds them (its ``cpl_engine``, ``plain_engine`` and
``pretrain_engine``, ``decollate=True`` as MONAI's default and the bundles):

1. **Profile** (``torch.profiler``) of the plain ``SupervisedTrainer`` step, the cross-pseudo-label (CPL) step and
   the pre-training step, as the bundles run them (channels-last, ``amp = default_amp(device)``, torch's default
   TF32 convolutions): device busy time (the union of kernel, memcpy and memset intervals) against the step's wall
   time, the top-10 kernels by device time and the largest idle gaps between kernels, with the CPU op that launched
   the kernel after each gap. On the CPU the same code reads the CPU ops instead: busy = the union of the ``aten::``
   ops' intervals, the top-10 by self CPU time, the gaps between ops (Python time).
2. **Matmul ceiling** in the same run: a large square ``torch.mm`` in float32 (IEEE), TF32 and bfloat16 (on the CPU:
   small, and TF32 is float32), achieved FLOP/s; each step's achieved FLOP/s (FLOPs counted by
   ``torch.utils.flop_counter.FlopCounterMode`` over one whole iteration: convolutions, matmuls and the like, forward
   and backward) as a fraction of the ceiling in the precision it uses.
3. **Variants** of the CPL and pre-training steps: eager float32 (TF32 off: the reference), eager TF32 (convolutions
   and matmuls; the bundles run torch's defaults, TF32 convolutions and float32 matmuls, which are a small share of
   the FLOPs), bf16 autocast without a GradScaler, channels-first, ``torch.compile`` default and
   ``mode="reduce-overhead"`` (CUDA graphs). Step time: median over ``--repeats`` runs of ``--steps`` iterations
   after ``--warmup`` runs; the first run's time beyond its steps is reported as compile / warm-up time. Numerical
   equivalence to the eager float32 step, from the same initial weights on the same ``--steps`` batches (the
   pre-training shifts seeded alike): the largest relative loss difference over the steps, the relative L2 difference
   of the last step's gradients, and the largest absolute parameter difference after the steps (Adam moves a
   parameter by about ``lr`` a step, so this one is bounded by ``2 x steps x lr`` and is reported against that
   bound). A variant that fails is reported with its error's first line.
4. **Inference end to end**: ``inference.json`` (``ConfigWorkflow``, ``benchmarks/bench_inference.py``'s helpers) in
   volumes per second, against the network under the bundles' ``SliceInferer`` on the same number of slices of the
   same size (``gpu_check.inference_rate``).
5. **The paper's ACDC protocol**: pre-training plus fine-tuning at each label fraction, estimated from the measured
   step times and the bundles' schedule (epochs, batch sizes, validation interval) with the published split
   (``ideal_components.facts.PUBLISHED``); the assumptions are written with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_inference import _volumes, _workflow  # noqa: E402
from bench_train_step import make_batch  # noqa: E402
from gpu_check import (  # noqa: E402
    _sync,
    cpl_engine,
    inference_rate,
    parse_device_args,
    plain_engine,
    pretrain_batch,
    pretrain_engine,
    time_runs,
    write_report,
)
from ignite.engine import Events  # noqa: E402
from monai.networks.nets import FlexibleUNet  # noqa: E402

from ideal_components.batchnorm import default_implementation  # noqa: E402
from ideal_components.engines import default_amp  # noqa: E402
from ideal_components.facts import PUBLISHED  # noqa: E402
from ideal_components.utils import atomic_write_text  # noqa: E402

CONFIGS = REPO / "bundles" / "ideal_acdc" / "configs"
# ACDC's end-diastole volumes have 6-21 short-axis slices, about 9.5 on average (1,902 slices in the 200 ED + ES
# volumes of its 100 training patients); the prepared data keep the slices, so an epoch's length follows from it
ACDC_SLICES_PER_VOLUME = 9.5
# (dtype, TF32 on) of each precision's matmul ceiling
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, True)}
# largest relative loss difference, relative L2 gradient difference: what counts as the same step, by precision
TOLERANCES = {"fp32": (1e-4, 1e-3), "tf32": (1e-2, 5e-2), "bf16": (5e-2, 2e-1)}


def bundle_sizes() -> dict:
    """The sizes the bundles train at, from the ACDC bundle's configs."""
    train = json.loads((CONFIGS / "train.json").read_text())
    pre = json.loads((CONFIGS / "pretrain.json").read_text())
    return {
        "backbone": train["backbone"],
        "size": int(train["spatial_size"][0]),
        "labeled": int(train["labeled_batch_size"]),
        "unlabeled": int(train["batch_size"]) - int(train["labeled_batch_size"]),
        "pretrain_batch": int(pre["batch_size"]),
        "pretrain_net": {"feature_level": pre["feature_level"], "head_layers": pre["head_layers"]},
        "slices": 10,
        "volumes": 4,
        "volume_shape": (216, 256),
        "matmul": 8192,
    }


CPU_SIZES = {  # --cpu: a check that the script runs, not a measurement
    "backbone": "resnet10",
    "size": 64,
    "labeled": 2,
    "unlabeled": 2,
    "pretrain_batch": 4,
    "pretrain_net": {"feature_level": -1, "head_layers": 1},
    "slices": 3,
    "volumes": 2,
    "volume_shape": (56, 64),
    "matmul": 256,
}


@contextlib.contextmanager
def precision(name: str):
    """float32 convolutions and matmuls in IEEE float32 (``"fp32"``) or TF32 (``"tf32"``, ``"bf16"``) inside; after,
    torch's settings as they were. The ``fp32_precision`` API where torch has it (from 2.9; mixing it with
    ``allow_tf32`` raises), else ``allow_tf32``."""
    tf32 = PRECISIONS[name][1]
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        flags = [(torch.backends.cudnn.conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
        value = "tf32" if tf32 else "ieee"
    else:
        flags = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
        value = tf32
    before = [getattr(obj, attr) for obj, attr in flags]
    for obj, attr in flags:
        setattr(obj, attr, value)
    try:
        yield
    finally:
        for (obj, attr), old in zip(flags, before):
            setattr(obj, attr, old)


def _clear(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


# ---- 1. profile ------------------------------------------------------------------------------------------------


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _top_ancestor(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event


def profile_step(run, device: torch.device, steps: int) -> dict:
    """Busy time, top-10 and the largest gaps of one run of ``run`` (``steps`` iterations) under ``torch.profiler``;
    times per iteration."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    run()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        run()
        _sync(device)
        wall = time.perf_counter() - t0
    self_cpu = None if cuda else {a.key: (a.self_cpu_time_total, a.count) for a in prof.key_averages()}
    return {"profiled_wall_s": wall / steps, **analyse_events(prof.events(), steps, self_cpu)}


def analyse_events(events, steps: int, self_cpu: dict | None = None) -> dict:
    """From profiler ``events``: busy time (the union of the kernels', memcpys' and memsets' intervals), the top-10
    kernels by device time and the 10 largest gaps between them, each with the CPU op that launched the kernel after
    it and that op's outermost caller. ``self_cpu`` (``{name: (self CPU us, calls)}``) given: the CPU's ``aten::``
    ops instead of kernels, the top-10 by self CPU time. Times per iteration of the ``steps`` profiled."""
    if self_cpu is None:
        work = [e for e in events if e.device_type == DeviceType.CUDA]
        # the ops as called from Python (linked to no other event): what a kernel's linked_correlation_id names
        launchers = {e.id: e for e in events if e.device_type == DeviceType.CPU and not e.linked_correlation_id}
        totals: dict[str, list[float]] = {}
        for e in work:
            totals.setdefault(e.name, [0.0, 0])
            totals[e.name][0] += e.time_range.elapsed_us()
            totals[e.name][1] += 1
    else:
        work = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
        totals = {name: list(v) for name, v in self_cpu.items() if name.startswith("aten::")}
    ordered = sorted(work, key=lambda e: e.time_range.start)
    merged = _union([(e.time_range.start, e.time_range.end) for e in ordered])
    busy_us = sum(b - a for a, b in merged)
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:10]
    # gaps: the idle time between merged intervals; the event that starts after each gap, and what launched it
    starts = {e.time_range.start: e for e in reversed(ordered)}
    gaps = []
    for (_, end), (start, _) in zip(merged, merged[1:]):
        after = starts[start]
        if self_cpu is None:
            op = launchers.get(after.linked_correlation_id)
            origin = f"{op.name} (under {_top_ancestor(op).name})" if op is not None else "?"
        else:
            origin = f"(under {_top_ancestor(after).name})"
        gaps.append((start - end, after.name, origin))
    gaps.sort(key=lambda g: -g[0])
    return {
        "busy_s": busy_us / 1e6 / steps,
        "events": len(work) / steps,
        "top": [(name, t / 1e6 / steps, n / steps) for name, (t, n) in top],
        "gaps": [(g / 1e6, name, origin) for g, name, origin in gaps[:10]],
        "idle_total_s": max(0.0, (merged[-1][1] - merged[0][0] - busy_us) / 1e6 / steps) if merged else 0.0,
    }


def step_flops(run) -> int:
    """FLOPs of one run of ``run``, counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


# ---- 2. matmul ceiling -----------------------------------------------------------------------------------------


def matmul_ceiling(name: str, n: int, device: torch.device, args: argparse.Namespace) -> float:
    """FLOP/s of ``torch.mm`` of two ``n x n`` random matrices in precision ``name`` (10 products a run)."""
    dtype = PRECISIONS[name][0]
    torch.manual_seed(0)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    inner = 10

    def run() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    with precision(name):
        sec, _ = time_runs(run, device, max(1, args.warmup), max(3, args.repeats))
    return 2 * n**3 * inner / sec


# ---- 3. variants -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # "fp32" | "tf32" | "bf16"
    channels_last: bool = True
    compile: str | None = None  # None | "default" | "reduce-overhead"
    recompile_limit: int | None = None  # dynamo's limit of graphs per function (None: torch's default, as the bundles)
    steps: tuple[str, ...] = ("CPL", "pre-training")


EAGER = [
    Variant("eager fp32 (reference)", "fp32"),
    Variant("eager TF32", "tf32"),
    Variant("eager bf16 autocast", "bf16"),
    Variant("eager TF32, channels-first", "tf32", channels_last=False),
    Variant("eager bf16 autocast, channels-first", "bf16", channels_last=False),
]
COMPILED = [  # in order of interest: the budget may cut the last
    Variant("compile reduce-overhead (CUDA graphs), TF32", "tf32", compile="reduce-overhead"),
    Variant("compile default, TF32", "tf32", compile="default"),
    # MONAI's UpCat breaks the graph (torch.jit.isinstance), so each of the two decoders' stages is a graph of its own:
    # more than dynamo's default limit of 8 per function, after which the rest runs eagerly
    Variant(
        "compile reduce-overhead (CUDA graphs), TF32, recompile limit 64",
        "tf32",
        compile="reduce-overhead",
        recompile_limit=64,
        steps=("CPL",),
    ),
    Variant("compile reduce-overhead (CUDA graphs), bf16", "bf16", compile="reduce-overhead"),
    Variant("compile default, bf16", "bf16", compile="default"),
]
STEPS = ("CPL", "pre-training")


def _drop_grad_scaler(engine) -> None:
    """bf16 needs no loss scaling; the engines make a GradScaler whenever ``amp`` is on CUDA: drop it at start."""
    engine.scaler = None


def build_variant(step: str, v: Variant, cfg: dict, device: torch.device, loader: list, cpu_compile: bool):
    amp = v.precision == "bf16"
    kwargs: dict = {"amp_kwargs": {"dtype": torch.bfloat16}} if amp else {}
    if v.compile is not None:
        compile_kwargs: dict = {"dynamic": False}
        if cpu_compile:  # on the CPU only the code path: dynamo's tracing, no code generation
            compile_kwargs["backend"] = "eager"
        elif v.compile != "default":
            compile_kwargs["mode"] = v.compile
        kwargs.update(compile=True, compile_kwargs=compile_kwargs)
    if step == "CPL":
        engine = cpl_engine(cfg, device, amp, channels_last=v.channels_last, loader=loader, **kwargs)
    else:
        engine = pretrain_engine(cfg, device, amp, loader, v.channels_last, cfg["pretrain_net"], **kwargs)
    if amp:
        engine.add_event_handler(Events.STARTED, _drop_grad_scaler)
    return engine


def _loss_of(engine) -> float:
    out = engine.state.output
    out = out[0] if isinstance(out, list) else out
    return float(out["loss"])


def run_variant(step: str, v: Variant, cfg: dict, device: torch.device, args: argparse.Namespace) -> dict:
    """Equivalence run (``args.steps`` iterations from the seeded weights), then the timing of the same engine."""
    if step == "CPL":
        loader = [make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"], seed=i) for i in range(args.steps)]
    else:
        loader = [pretrain_batch(cfg)] * args.steps
    with precision(v.precision):
        engine = build_variant(step, v, cfg, device, loader, args.cpu)
        losses: list[float] = []

        def record(e) -> None:
            losses.append(_loss_of(e))

        engine.add_event_handler(Events.ITERATION_COMPLETED, record)
        torch.manual_seed(1)  # the pre-training shifts and sampled locations: the same draws in every variant
        _sync(device)
        t0 = time.perf_counter()
        engine.run()
        _sync(device)
        first = time.perf_counter() - t0
        engine.remove_event_handler(record, Events.ITERATION_COMPLETED)
        params = [p.detach().float().cpu().clone() for p in engine.network.parameters()]
        grads = [p.grad.detach().float().cpu().clone() for p in engine.network.parameters() if p.grad is not None]
        sec, peak = time_runs(engine.run, device, args.warmup, args.repeats)
        lr = engine.optimizer.param_groups[0]["lr"]
    del engine
    _clear(device)
    step_s = sec / args.steps
    return {
        "step_s": step_s,
        "first_run_extra_s": max(0.0, first - args.steps * step_s),
        "peak_gib": None if math.isnan(peak) else peak,
        "losses": losses,
        "params": params,
        "grads": grads,
        "lr": lr,
    }


def compare(result: dict, ref: dict, v: Variant, steps: int) -> dict:
    loss_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(result["losses"], ref["losses"]))
    diff = sum(float((g - r).square().sum()) for g, r in zip(result["grads"], ref["grads"]))
    norm = sum(float(r.square().sum()) for r in ref["grads"])
    grad_rel = math.sqrt(diff / max(norm, 1e-30))
    param_abs = max(float((p - r).abs().max()) for p, r in zip(result["params"], ref["params"]))
    finite = all(math.isfinite(x) for x in result["losses"]) and math.isfinite(grad_rel)
    tol_loss, tol_grad = TOLERANCES[v.precision]
    return {
        "loss_rel": loss_rel,
        "grad_rel": grad_rel,
        "param_abs": param_abs,
        "param_bound": 2 * steps * ref["lr"],
        "equivalent": finite and loss_rel <= tol_loss and grad_rel <= tol_grad,
    }


@contextlib.contextmanager
def hard_limit(until: float | None):
    """Raise ``TimeoutError`` in the block once ``time.perf_counter()`` passes ``until`` (SIGALRM; None: no limit)."""
    if until is None or not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(*_) -> None:
        raise TimeoutError("stopped: past the --budget and its --grace")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, math.ceil(until - time.perf_counter())))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _LimitHits(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.hits += "recompile_limit" in record.getMessage()


@contextlib.contextmanager
def compile_stats(v: Variant):
    """For a compiled variant: a fresh dynamo (``reset``), its recompile limit, and after the run the number of
    graphs, graph breaks and functions that hit the recompile limit (into the yielded dict)."""
    stats: dict = {}
    if v.compile is None:
        yield stats
        return
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    limit = getattr(config, name)
    setattr(config, name, v.recompile_limit or limit)
    hits = _LimitHits()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(hits)
    try:
        yield stats
    finally:
        logger.removeHandler(hits)
        setattr(config, name, limit)
        stats.update(
            graphs=int(counters["stats"]["unique_graphs"]),
            breaks=int(sum(counters["graph_break"].values())),
            limit_hits=hits.hits,
        )


def variants(cfg: dict, device: torch.device, args: argparse.Namespace, flops: dict, ceilings: dict,
             deadline: float) -> dict:  # fmt: skip
    rows: dict[str, list[dict]] = {step: [] for step in STEPS}
    refs: dict[str, dict] = {}
    plan = [(step, v) for v in EAGER + COMPILED for step in STEPS if step in v.steps]
    for step, v in plan:
        row = {"variant": v.name, "precision": v.precision}
        if v.compile is not None and args.cpu and (step == "CPL" or v.precision == "bf16" or v.recompile_limit):
            # tracing the two-branch network takes tens of seconds on a CPU; tests/test_engines.py compiles it
            row["status"] = "skipped on the CPU (--cpu: the compiled pre-training rows check the code path)"
        elif time.perf_counter() + (args.compile_reserve if v.compile else 0.0) > deadline:
            row["status"] = f"skipped: less than {args.compile_reserve if v.compile else 0:.0f} s of the --budget left"
        elif step not in refs and v.precision != "fp32":
            row["status"] = "skipped: the reference failed"
        else:
            try:
                with compile_stats(v) as stats, hard_limit(deadline + args.grace):
                    result = run_variant(step, v, cfg, device, args)
            except Exception as exc:  # a failing variant is a result, not the end of the run
                row["status"] = "failed: " + _first_line(exc)
                _clear(device)
            else:
                row.update(stats)
                if v.precision == "fp32" and v.compile is None and v.channels_last:
                    refs[step] = result
                row.update({k: result[k] for k in ("step_s", "first_run_extra_s", "peak_gib")})
                row.update(compare(result, refs[step], v, args.steps))
                row["tflops"] = flops[step] / result["step_s"] / 1e12
                row["ceiling_fraction"] = flops[step] / result["step_s"] / ceilings[v.precision]
                row["status"] = "ok"
        rows[step].append(row)
        print(f"{step} / {v.name}: {row.get('status')} {row.get('step_s', '')}", flush=True)
    return rows


# ---- 4. inference ----------------------------------------------------------------------------------------------


def inference_end_to_end(cfg: dict, device: torch.device, args: argparse.Namespace) -> dict:
    """Volumes/s of ``inference.json`` end to end, and of the network + SliceInferer on as many slices."""
    logging.disable(logging.INFO)
    backbone, size = cfg["backbone"], cfg["size"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs, root, outputs = tmp / "inputs", tmp / "run", tmp / "segs"
        inputs.mkdir()
        (root / "models").mkdir(parents=True)
        _volumes(inputs, cfg["volumes"], tuple(cfg["volume_shape"]), cfg["slices"])
        torch.manual_seed(0)
        torch.save(FlexibleUNet(1, 4, backbone=backbone, upsample="deconv").state_dict(), root / "models" / "model.pt")

        def end_to_end() -> float:
            shutil.rmtree(outputs, ignore_errors=True)
            wf = _workflow(root, inputs, outputs, backbone, spatial_size=[size, size])
            _sync(device)
            start = time.perf_counter()
            wf.run()
            _sync(device)
            seconds = time.perf_counter() - start
            wf.finalize()
            if len(list(outputs.glob("*_seg.nii.gz"))) != cfg["volumes"]:
                raise RuntimeError("inference.json did not write a segmentation per volume")
            return seconds

        end_to_end()  # warm-up
        e2e = statistics.median(end_to_end() for _ in range(max(1, args.repeats // 3)))
    logging.disable(logging.NOTSET)
    amp = default_amp(device)
    network, _ = inference_rate(cfg, device, amp, args)
    return {"end_to_end_volumes_s": cfg["volumes"] / e2e, "network_volumes_s": network, "amp": amp}


# ---- 5. the paper's protocol -----------------------------------------------------------------------------------


def protocol(step_s: dict, fastest_s: dict, network_volumes_s: float | None, slices_per_volume: float) -> dict:
    """Estimated hours of pre-training + fine-tuning at each ACDC label fraction with the bundles' defaults
    (``network_volumes_s`` None: the validation is not timed, counted as 0)."""
    train = json.loads((CONFIGS / "train.json").read_text())
    pre = json.loads((CONFIGS / "pretrain.json").read_text())
    split = PUBLISHED["acdc"]
    patients = len(split["training"])
    pre_iters = math.floor(patients * slices_per_volume / pre["batch_size"]) * pre["max_epochs"]
    unlabeled_per_batch = train["batch_size"] - train["labeled_batch_size"]
    rows = []
    for fraction, labeled in split["labeled"].items():
        unlabeled = patients - len(labeled)
        if unlabeled:  # an epoch: one pass over the unlabelled slices
            per_epoch = math.floor(unlabeled * slices_per_volume / unlabeled_per_batch)
        else:  # 100 %: one pass over the labelled slices, whole batches of them
            per_epoch = math.floor(len(labeled) * slices_per_volume / train["batch_size"])
        iters = per_epoch * train["max_epochs"]
        validations = train["max_epochs"] // train["val_interval"]
        val_s = validations * len(split["validation"]) / network_volumes_s if network_volumes_s else 0.0
        hours = {
            key: (pre_iters * s["pre-training"] + iters * s["CPL"] + val_s) / 3600
            for key, s in (("bundles", step_s), ("fastest", fastest_s))
        }
        rows.append(
            {
                "fraction": fraction,
                "labeled": len(labeled),
                "unlabeled": unlabeled,
                "per_epoch": per_epoch,
                "iterations": iters,
                "pretrain_h": pre_iters * step_s["pre-training"] / 3600,
                "finetune_h": iters * step_s["CPL"] / 3600,
                "validation_h": val_s / 3600,
                "total_h": hours["bundles"],
                "fastest_total_h": hours["fastest"],
            }
        )
    return {
        "patients": patients,
        "validation": len(split["validation"]),
        "pretrain_iterations": pre_iters,
        "pretrain_epochs": pre["max_epochs"],
        "pretrain_batch": pre["batch_size"],
        "epochs": train["max_epochs"],
        "batch": (train["labeled_batch_size"], unlabeled_per_batch),
        "val_interval": train["val_interval"],
        "rows": rows,
    }


# ---- report ----------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _gib(peak: float | None) -> str:
    return "n/a" if peak is None or math.isnan(peak) else f"{peak:.2f}"


def _inference_lines(cfg: dict, inf: dict) -> list[str]:
    return [
        "",
        "## 4. Inference end to end",
        "",
        f"{cfg['volumes']} synthetic volumes of {cfg['volume_shape'][0]}x{cfg['volume_shape'][1]}x{cfg['slices']} "
        f"voxels (1.25 mm, rotated); AMP {'on' if inf['amp'] else 'off'}, channels-last.",
        "",
        "| what | volumes/s |",
        "|---|---:|",
        f"| `inference.json` end to end (check, load, resample, slice inference, invert, write) | "
        f"{inf['end_to_end_volumes_s']:.2f} |",
        f"| network + `SliceInferer` (sw_batch_size 8) on {cfg['slices']} in-memory slices of {cfg['size']}x"
        f"{cfg['size']} | {inf['network_volumes_s']:.2f} |",
        "",
        f"The pipeline around the network: {inf['network_volumes_s'] / inf['end_to_end_volumes_s'] - 1:.0%} over "
        "the network's time.",
    ]


def report(device: torch.device, cfg: dict, res: dict, args: argparse.Namespace, wall: float) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    else:
        card = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    cmd = "python benchmarks/gpu_profile.py" + (" --cpu" if args.cpu else "")
    cmd += "" if args.budget == DEFAULT_BUDGET[args.cpu] else f" --budget {args.budget:g}"
    impl = default_implementation(device.type)
    lines = [
        "# The training steps near the hardware: profile, matmul ceiling, variants, inference, protocol",
        "",
        f"Command: `{cmd}` (run by `benchmarks/gpu_profile.sh`). Card: {card}. Versions: {versions}.",
        "",
        f"Sizes (the bundles' unless `--cpu`): {cfg['backbone']}, {cfg['size']}x{cfg['size']} slices; CPL batch "
        f"{cfg['labeled']} labelled + {cfg['unlabeled']} unlabelled, per-group BatchNorm `{impl}`; pre-training batch "
        f"{cfg['pretrain_batch']}, network {cfg['pretrain_net']}; cuDNN as the bundles set it (`set_determinism`). "
        f"Step times: median of {args.repeats} runs of {args.steps} iterations after {args.warmup} warm-up runs, "
        f"each between two synchronisations. Wall time of this script: {wall:.0f} s.",
    ]
    if args.cpu:
        lines += ["", "**`--cpu`: tiny sizes, a check that the script runs; no figure here is a measurement.**"]
    if res.get("tests"):
        lines += ["", "## Tests run before (`benchmarks/gpu_profile.sh`)", ""]
        lines += [f"- {line}" for line in res["tests"]]

    # 1
    what = "kernels" if device.type == "cuda" else "CPU ops (`aten::`)"
    lines += [
        "",
        "## 1. Profile of one step (`torch.profiler`)",
        "",
        f"As the bundles run (channels-last, AMP {'on' if default_amp(device) else 'off'}, TF32 convolutions). Busy: "
        f"the union of the {what}' intervals, per step; wall: the unprofiled median (the profiled step, in brackets, "
        "carries the profiler's own overhead, and so do the gaps)."
        + (" On the CPU the ops' own times carry that overhead too: busy can exceed the wall." if args.cpu else ""),
        "",
        "| step | wall (ms) | busy (ms) | busy / wall | events per step | idle between first and last (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step, p in res["profile"].items():
        if "error" in p:
            lines.append(f"| {step} | {_ms(p['wall_s'])} | profile failed: {p['error']} | | | |")
            continue
        lines.append(
            f"| {step} | {_ms(p['wall_s'])} ({_ms(p['profiled_wall_s'])}) | {_ms(p['busy_s'])} | "
            f"{p['busy_s'] / p['wall_s']:.1%} | {p['events']:.0f} | {_ms(p['idle_total_s'])} |"
        )
    for step, p in res["profile"].items():
        if "error" in p:
            continue
        lines += ["", f"**{step}: top 10 {what} by {'device' if device.type == 'cuda' else 'self CPU'} time**", ""]
        lines += ["| name | ms per step | calls per step |", "|---|---:|---:|"]
        lines += [f"| `{name[:100]}` | {_ms(t)} | {n:g} |" for name, t, n in p["top"]]
        lines += ["", f"**{step}: largest idle gaps** (over {args.steps} profiled steps)", ""]
        lines += ["| gap (ms) | next | launched by |", "|---:|---|---|"]
        lines += [f"| {_ms(g)} | `{name[:80]}` | {origin[:120]} |" for g, name, origin in p["gaps"]]

    # 2
    c = res["ceilings"]
    lines += [
        "",
        "## 2. Matmul ceiling and the steps' share of it",
        "",
        f"`torch.mm` of two {cfg['matmul']}x{cfg['matmul']} random matrices, 10 a run: "
        + ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in c.items())
        + (" (on the CPU TF32 is float32)." if device.type != "cuda" else "."),
        "",
        "| step | FLOPs per step (counted) | step (ms, as the bundles) | TFLOP/s | precision | share of its ceiling |",
        "|---|---:|---:|---:|---|---:|",
    ]
    # the bundles' precision: TF32 convolutions, or AMP where default_amp turns it on (float16, before Ampere and on
    # ROCm: read against the bf16 ceiling, as no float16 one is measured)
    prec = "bf16" if default_amp(device) and device.type == "cuda" else "tf32"
    for step, flops in res["flops"].items():
        sec = res["profile"][step]["wall_s"]
        lines.append(
            f"| {step} | {flops / 1e9:.1f} G | {_ms(sec)} | {flops / sec / 1e12:.3g} | {prec} | "
            f"{flops / sec / c[prec]:.1%} |"
        )

    # 3
    lines += [
        "",
        "## 3. Variants of the CPL and pre-training steps",
        "",
        f"Against the eager float32 step (TF32 off), from the same weights over the same {args.steps} batches: loss = "
        "the largest relative loss difference over the steps; grad = the relative L2 difference of the last step's "
        "gradients; param = the largest absolute parameter difference after the steps, and the Adam bound "
        "2 x steps x lr it is read against. Equivalent when loss and grad are within the tolerance of the precision: "
        + "; ".join(f"{k} loss <= {a:g}, grad <= {b:g}" for k, (a, b) in TOLERANCES.items())
        + ". Share: counted FLOPs / step time / the ceiling of its precision. First run extra: the first run's time "
        f"beyond its {args.steps} steps (compilation, CUDA-graph recording, cuDNN warm-up)."
        + (" On the CPU `torch.compile` uses the `eager` backend (tracing only) for both modes." if args.cpu else ""),
    ]
    for step, rows in res["variants"].items():
        lines += ["", f"**{step}**", ""]
        lines += [
            "| variant | step (ms) | vs TF32 eager | TFLOP/s | share of ceiling | first run extra (s) | peak (GiB) | "
            "loss | grad | param (bound) | equivalent | graphs / breaks / limit hits |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        base = next((r["step_s"] for r in rows if r["variant"] == "eager TF32" and "step_s" in r), None)
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['variant']} | {r['status']} | | | | | | | | | | |")
                continue
            rel = f"{r['step_s'] / base:.2f}x" if base else ""
            graphs = f"{r['graphs']} / {r['breaks']} / {r['limit_hits']}" if "graphs" in r else ""
            lines.append(
                f"| {r['variant']} | {_ms(r['step_s'])} | {rel} | {r['tflops']:.3g} | {r['ceiling_fraction']:.1%} | "
                f"{r['first_run_extra_s']:.1f} | {_gib(r['peak_gib'])} | {r['loss_rel']:.1e} | {r['grad_rel']:.1e} | "
                f"{r['param_abs']:.1e} ({r['param_bound']:.0e}) | {'yes' if r['equivalent'] else 'NO'} | {graphs} |"
            )

    ok = [r for r in res["variants"]["CPL"] if r["status"] == "ok" and r["equivalent"]]
    best = max(ok, key=lambda r: r["ceiling_fraction"], default=None)
    bundles_share = res["flops"]["CPL"] / res["profile"]["CPL"]["wall_s"] / c[prec]
    lines += [
        "",
        f"Issue #28's goal, the CPL step at >= 20 % of its precision's ceiling: as the bundles run it "
        f"{bundles_share:.1%}; the equivalent variant nearest to it: "
        + (f"{best['variant']}, {best['ceiling_fraction']:.1%}." if best else "none measured."),
    ]

    # 4
    inf = res["inference"]
    if "error" in inf:
        lines += ["", "## 4. Inference end to end", "", f"Failed: {inf['error']}"]
    else:
        lines += _inference_lines(cfg, inf)

    # 5
    pr = res["protocol"]
    lines += [
        "",
        "## 5. The paper's ACDC protocol, estimated from these step times",
        "",
        f"Assumptions: the published split ({pr['patients']} training, {pr['validation']} validation patients), one "
        f"ED volume per patient with {args.slices_per_volume:g} slices on average (ACDC: 6-21); pre-training on the "
        f"training patients' slices, {pr['pretrain_epochs']} epochs of "
        f"{pr['pretrain_iterations'] // pr['pretrain_epochs']}"
        f" batches of {pr['pretrain_batch']}; fine-tuning {pr['epochs']} epochs, an epoch one pass over the "
        f"unlabelled slices in batches of {pr['batch'][0]} + {pr['batch'][1]} (100 %: over the labelled slices in "
        f"whole batches, timed as the CPL step); validation every {pr['val_interval']} epochs timed as the network "
        "under SliceInferer (section 4). Not counted: data loading (assumed to keep up: one worker feeds 60-75 "
        "steps/s, `benchmarks/results/loader.md`), epoch start-up, checkpoint writes, the final evaluation. "
        "Bundles: the steps as the bundles run them (section 1); fastest: the fastest equivalent variant of section "
        "3.",
        "",
        "| label fraction (%) | labelled / unlabelled patients | iterations (epochs x per epoch) | pre-training (h) | "
        "fine-tuning (h) | validation (h) | total, bundles (h) | total, fastest equivalent (h) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in pr["rows"]:
        lines.append(
            f"| {r['fraction']} | {r['labeled']} / {r['unlabeled']} | {r['iterations']} ({pr['epochs']} x "
            f"{r['per_epoch']}) | {r['pretrain_h']:.2f} | {r['finetune_h']:.2f} | {r['validation_h']:.3f} | "
            f"{r['total_h']:.2f} | {r['fastest_total_h']:.2f} |"
        )
    lines += ["", f"Fastest equivalent variants: {res['fastest']}."]
    return "\n".join(lines) + "\n"


DEFAULT_BUDGET = {False: 300.0, True: 240.0}


def _tests_summary(path: str) -> list[str]:
    """What each pytest run logged in ``path`` (by gpu_profile.sh) came to: its title and exit lines, pytest's final
    ``== ... in ...s ==`` line and the FAILED / ERROR lines of its short summary."""
    if not path or not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("### ") or line.startswith(("FAILED ", "ERROR ")):
            out.append(line.lstrip("# ").strip())
        elif line.startswith("=") and line.rstrip().endswith("=") and " in " in line:
            out.append(line.strip("= ").strip())
    return out


def _numbers(res: dict) -> dict:
    """The report's figures as JSON (no tensors): the test reads them, and so can a later comparison."""
    out = {k: v for k, v in res.items() if k != "variants"}
    out["variants"] = {
        step: [{k: v for k, v in r.items() if k not in ("params", "grads", "losses")} for r in rows]
        for step, rows in res["variants"].items()
    }
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="iterations per timed run and equivalence run (3 / 1)")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which no compiled variant starts "
                        f"(default {DEFAULT_BUDGET[False]:g} on GPU, {DEFAULT_BUDGET[True]:g} on CPU)")  # fmt: skip
    parser.add_argument("--compile-reserve", type=float, default=None,
                        help="seconds a compiled variant needs at least (60 on GPU, 5 on CPU)")  # fmt: skip
    parser.add_argument("--grace", type=float, default=30.0, help="seconds past --budget after which a compiled "
                        "variant is stopped")  # fmt: skip
    parser.add_argument("--slices-per-volume", type=float, default=ACDC_SLICES_PER_VOLUME)
    parser.add_argument("--tests-log", default="", help="pytest log of gpu_profile.sh, summarised in the report")
    args, device = parse_device_args(parser, argv, "gpu_profile.md", warmup=(3, 0), repeats=(10, 1))
    args.steps = (1 if args.cpu else 3) if args.steps is None else args.steps
    args.budget = DEFAULT_BUDGET[args.cpu] if args.budget is None else args.budget
    args.compile_reserve = (5.0 if args.cpu else 60.0) if args.compile_reserve is None else args.compile_reserve
    cfg = CPU_SIZES if args.cpu else bundle_sizes()
    if args.cpu:  # a check, not a measurement: one thread is the least disturbed by a busy machine
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    amp = default_amp(device)
    res: dict = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    res["tests"] = _tests_summary(args.tests_log)

    # 2 first: the ceilings; then the FLOPs and the profile of each step as the bundles run it
    res["ceilings"] = {name: matmul_ceiling(name, cfg["matmul"], device, args) for name in PRECISIONS}
    print("ceilings:", {k: f"{v / 1e12:.2f} TFLOP/s" for k, v in res["ceilings"].items()}, flush=True)
    batches = [make_batch(cfg["labeled"], cfg["unlabeled"], cfg["size"], seed=i) for i in range(args.steps)]
    builders = {  # each run: args.steps iterations, so that the engine's per-run events weigh as in an epoch
        "plain SupervisedTrainer": lambda: plain_engine(cfg, device, amp, loader=batches),
        "CPL": lambda: cpl_engine(cfg, device, amp, loader=batches),
        "pre-training": lambda: pretrain_engine(
            cfg, device, amp, [pretrain_batch(cfg)] * args.steps, net_kwargs=cfg["pretrain_net"]
        ),
    }
    res["flops"], res["profile"] = {}, {}
    for step, build in builders.items():
        engine = build()
        res["flops"][step] = step_flops(engine.run) // args.steps
        try:
            res["profile"][step] = profile_step(engine.run, device, args.steps)
        except Exception as exc:  # the step's time and FLOPs still count
            res["profile"][step] = {"error": _first_line(exc)}
        res["profile"][step]["wall_s"] = time_runs(engine.run, device, args.warmup, args.repeats)[0] / args.steps
        del engine
        _clear(device)
        print(f"profile {step}: done", flush=True)
    try:
        res["inference"] = inference_end_to_end(cfg, device, args)
    except Exception as exc:  # the other sections still count
        res["inference"] = {"error": _first_line(exc)}
    print("inference: done", flush=True)
    res["variants"] = variants(cfg, device, args, res["flops"], res["ceilings"], deadline)

    def fastest(step: str) -> tuple[float, str]:
        ok = [r for r in res["variants"][step] if r["status"] == "ok" and r["equivalent"]]
        best = min(ok, key=lambda r: r["step_s"], default=None)
        return (best["step_s"], best["variant"]) if best else (res["profile"][step]["wall_s"], "as the bundles")

    as_bundles = {step: res["profile"][step]["wall_s"] for step in STEPS}
    best = {step: fastest(step) for step in STEPS}
    res["fastest"] = "; ".join(f"{step}: {name} ({_ms(sec)} ms)" for step, (sec, name) in best.items())
    res["protocol"] = protocol(
        as_bundles,
        {k: v[0] for k, v in best.items()},
        res["inference"].get("network_volumes_s"),
        args.slices_per_volume,
    )
    _sync(device)
    text = report(device, cfg, res, args, time.perf_counter() - t0)
    if args.output:
        atomic_write_text(str(Path(args.output).with_suffix(".json")), json.dumps(_numbers(res), indent=1) + "\n")
    return write_report(text, args.output)


if __name__ == "__main__":
    main()
