"""Cost of one cross-pseudo-label training step vs one plain MONAI SupervisedTrainer step on the same slices.

Run: ``.venv/bin/python benchmarks/bench_train_step.py`` (about 4-6 minutes on 2 busy CPU cores). Prints a Markdown
report and writes it to ``benchmarks/results/train_step.md``.

Requirement checked: one :class:`ideal_components.engines.CrossPseudoLabelTrainer` step (TwoBranchFlexibleUNet,
:class:`ideal_components.losses.CrossPseudoLabelLoss`, Adam) on L labelled + U unlabelled slices costs at most
1.6x one :class:`monai.engines.SupervisedTrainer` step (FlexibleUNet ``upsample="deconv"``, the same backbone,
``DiceCELoss(lambda_dice=0, to_onehot_y=True, softmax=True)`` i.e. cross-entropy, Adam) on the same L+U slices.
The floor of that ratio is the FLOP ratio of one encoder + two decoders to one encoder + one decoder.

What is measured (CPU, float32, torch's default thread count):

- both engines are real MONAI / ignite engines built as in a bundle (default ``decollate=True``, no handlers), each
  fed a list holding one fixed in-memory batch dict (``image`` ``(L+U, 1, S, S)``, ``label`` ``(L+U, 1, S, S)``
  integer-valued float in ``[0, 4)``, ``labeled`` = L ones then U zeros), ``max_epochs=1``, ``epoch_length=1``, so
  each ``engine.run()`` is one iteration and no data loading is timed;
- step time: from ``Events.ITERATION_STARTED`` to ``Events.ITERATION_COMPLETED`` of that iteration, i.e. prepare
  batch + forward + loss + backward + Adam step + decollate. After ``--warmup`` runs of each engine the two engines
  run interleaved (CPL, plain, CPL, plain, ...) ``--repeats`` times each so that they share the machine's noise;
  reported: the medians, the ratio of the medians and the median of the per-pair ratios;
- phases (medians, same runs): ``forward`` = ITERATION_STARTED -> FORWARD_COMPLETED (prepare batch, zero_grad,
  forward), ``loss`` -> LOSS_COMPLETED, ``backward`` -> BACKWARD_COMPLETED, ``optimizer`` -> the optimizer's step
  post-hook, ``rest`` -> ITERATION_COMPLETED (decollate of batch and output);
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the network's forward (``forward_both`` for the two-branch
  net) and over forward + backward of ``logits.sum()`` on the same input. It counts convolutions (incl. transposed),
  matmuls and the like only: no normalisation, activation, interpolation, loss or optimizer arithmetic. The
  backward counted is ~2x the forward minus the input gradient of the first convolution. Achieved GFLOP/s = counted
  forward + backward FLOPs / median step time; the reference is a 2048x2048 float32 ``torch.mm`` (2 * 2048^3 FLOP),
  median of ``--matmul-repeats`` runs before, one run after each CPL/plain pair and ``--matmul-repeats`` runs after
  the step timings of each row;
- loss only: forward + backward of each loss function alone on fixed random logits (median of 20).

``--profile`` additionally runs ``torch.profiler`` (CPU) over one step of each engine and prints the operators with
the largest self CPU time (not written to the report).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ignite.engine import Events  # noqa: E402
from monai.engines import SupervisedTrainer  # noqa: E402
from monai.engines.utils import IterationEvents  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import FlexibleUNet  # noqa: E402

from ideal_components.cpu import retain_freed_memory  # noqa: E402
from ideal_components.engines import BATCH_STATISTICS, CrossPseudoLabelTrainer  # noqa: E402
from ideal_components.losses import CrossPseudoLabelLoss  # noqa: E402
from ideal_components.networks import TwoBranchFlexibleUNet  # noqa: E402

NUM_CLASSES = 4
DEFAULT_THREADS = torch.get_num_threads()
PHASES = ("forward", "loss", "backward", "optimizer", "rest")


def make_batch(labeled: int, unlabeled: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = labeled + unlabeled
    return {
        "image": torch.randn(b, 1, size, size, generator=g),
        "label": torch.randint(0, NUM_CLASSES, (b, 1, size, size), generator=g).float(),
        "labeled": torch.tensor([1] * labeled + [0] * unlabeled),
    }


class StepTimer:
    """Per-iteration wall time and phase split of an engine, from ignite events and an optimizer post-hook."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer) -> None:
        self.marks: dict[str, float] = {}
        self.steps: list[float] = []
        self.phases: dict[str, list[float]] = {p: [] for p in PHASES}
        engine.add_event_handler(Events.ITERATION_STARTED, self._mark, "start")
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._mark, "forward")
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._mark, "loss")
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._mark, "backward")
        optimizer.register_step_post_hook(lambda *_: self._mark(None, "optimizer"))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._done)

    def _mark(self, _engine, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def _done(self, _engine) -> None:
        end = time.perf_counter()
        m = self.marks
        self.steps.append(end - m["start"])
        prev = m["start"]
        for p in PHASES[:-1]:
            self.phases[p].append(m[p] - prev)
            prev = m[p]
        self.phases["rest"].append(end - prev)

    def reset(self) -> None:
        self.steps.clear()
        for v in self.phases.values():
            v.clear()


def build_engines(backbone: str, batch: dict[str, torch.Tensor], args: argparse.Namespace, lr: float = 1e-4):
    device = torch.device("cpu")
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.preserve_format
    # as the bundles build both networks: no (zero-width) decoder padding at sizes divisible by 32
    pad = {"is_pad": args.size % 32 != 0}
    torch.manual_seed(0)
    net_cpl = TwoBranchFlexibleUNet(in_channels=1, out_channels=NUM_CLASSES, backbone=backbone, **pad)
    net_cpl = net_cpl.to(memory_format=fmt)
    opt_cpl = torch.optim.Adam(net_cpl.parameters(), lr)
    cpl = CrossPseudoLabelTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch],
        epoch_length=1,
        network=net_cpl,
        optimizer=opt_cpl,
        loss_function=CrossPseudoLabelLoss(),
        batch_statistics=args.batch_statistics,
        compile=args.compile,
    )
    torch.manual_seed(0)
    net_sup = FlexibleUNet(in_channels=1, out_channels=NUM_CLASSES, backbone=backbone, upsample="deconv", **pad)
    net_sup = net_sup.to(memory_format=fmt)
    opt_sup = torch.optim.Adam(net_sup.parameters(), lr)
    sup = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch],
        epoch_length=1,
        network=net_sup,
        optimizer=opt_sup,
        loss_function=DiceCELoss(lambda_dice=0.0, to_onehot_y=True, softmax=True),
        compile=args.compile,
        compile_kwargs={"dynamic": False},
    )
    return (cpl, net_cpl, opt_cpl), (sup, net_sup, opt_sup)


def count_flops(fn, x: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) counted by FlopCounterMode; ``fn(x)`` returns logits (or a tuple)."""
    with FlopCounterMode(display=False) as fc:
        fn(x)
    fwd = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        out = fn(x)
        out = out if isinstance(out, (tuple, list)) else (out,)
        sum(o.sum() for o in out).backward()
    return fwd, fc.get_total_flops()


def matmul_gflops(repeats: int, n: int = 2048) -> list[float]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return rates


def time_losses(batch: dict[str, torch.Tensor], repeats: int = 20) -> dict[str, float]:
    """Median forward + backward time (s) of each loss alone on fixed random logits."""
    g = torch.Generator().manual_seed(1)
    b, _, h, w = batch["image"].shape
    la = torch.randn(b, NUM_CLASSES, h, w, generator=g).requires_grad_(True)
    lb = torch.randn(b, NUM_CLASSES, h, w, generator=g).requires_grad_(True)
    cpl, ce = CrossPseudoLabelLoss(), DiceCELoss(lambda_dice=0.0, to_onehot_y=True, softmax=True)
    fns = {
        "CrossPseudoLabelLoss.compute (2 branches)": lambda: cpl.compute(la, lb, batch["label"], batch["labeled"])[
            "loss"
        ],
        "DiceCELoss(lambda_dice=0) (1 branch)": lambda: ce(la, batch["label"]),
    }
    out = {}
    for name, fn in fns.items():
        times = []
        for i in range(repeats + 2):
            la.grad = lb.grad = None
            t0 = time.perf_counter()
            fn().backward()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def profile_steps(cpl, sup, rows: int = 12) -> dict[str, str]:
    """torch.profiler (CPU) over one step of each engine: op-call counts and the ops with the largest self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, engine in (("CPL", cpl), ("plain", sup)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.run()
        avg = prof.key_averages()
        n_aten = sum(e.count for e in avg if e.key.startswith("aten::"))
        total = sum(e.self_cpu_time_total for e in avg) / 1e6
        top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        body = [
            f"{name}: {n_aten} aten op calls (nested calls included), {total:.2f} s self CPU time in total (with the "
            "profiler's overhead)",
            "",
            "| op | calls | self CPU (ms) | per call (ms) |",
            "|---|---:|---:|---:|",
        ]
        body += [
            f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
            f"{e.self_cpu_time_total / 1e3 / e.count:.2f} |"
            for e in top
        ]
        out[name] = "\n".join(body)
        print(out[name], flush=True)
    return out


def bench_backbone(backbone: str, threads: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(threads)
    batch = make_batch(args.labeled, args.unlabeled, args.size)
    (cpl, net_cpl, opt_cpl), (sup, net_sup, opt_sup) = build_engines(backbone, batch, args)
    x = batch["image"]
    fl_cpl = count_flops(net_cpl.forward_both, x)
    fl_sup = count_flops(net_sup, x)
    net_cpl.zero_grad(set_to_none=True)
    net_sup.zero_grad(set_to_none=True)
    mm = matmul_gflops(args.matmul_repeats)

    t_cpl, t_sup = StepTimer(cpl, opt_cpl), StepTimer(sup, opt_sup)
    for _ in range(args.warmup):
        cpl.run()
        sup.run()
    t_cpl.reset()
    t_sup.reset()
    for _ in range(args.repeats):
        cpl.run()
        sup.run()
        mm += matmul_gflops(1)  # the reference shares the steps' noise too
    mm += matmul_gflops(args.matmul_repeats)
    losses = time_losses(batch)
    prof = profile_steps(cpl, sup) if args.profile else {}

    med_cpl, med_sup = statistics.median(t_cpl.steps), statistics.median(t_sup.steps)
    return {
        "backbone": backbone,
        "threads": threads,
        "label": f"{backbone}, {threads} thr",
        "profile": prof,
        "cpl": t_cpl,
        "sup": t_sup,
        "med_cpl": med_cpl,
        "med_sup": med_sup,
        "ratio": med_cpl / med_sup,
        "pair_ratio": statistics.median(a / b for a, b in zip(t_cpl.steps, t_sup.steps)),
        "flops_cpl": fl_cpl,
        "flops_sup": fl_sup,
        "matmul": statistics.median(mm),
        "matmul_runs": mm,
        "losses": losses,
    }


def report(results: list[dict], args: argparse.Namespace, load: tuple[float, float, float], wall: float) -> str:
    b = args.labeled + args.unlabeled
    cmd = " ".join([".venv/bin/python", "benchmarks/bench_train_step.py"] + sys.argv[1:])
    lines = [
        "# Training step: CrossPseudoLabelTrainer vs MONAI SupervisedTrainer",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, {os.cpu_count()} CPU cores visible, "
        f"shared with other jobs (load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} over 1/5/15 min, "
        f"so expect noise); Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch's default {DEFAULT_THREADS} threads (rows say which count was used), float32, no AMP; "
        f"CPL `batch_statistics={args.batch_statistics!r}`; memory format {args.memory_format}; "
        f"allocator: glibc {'keeping freed memory' if args.allocator == 'retain' else 'default'}; "
        f"torch.compile {'on (dynamic=False, warm-up runs include compiling)' if args.compile else 'off'}; "
        f"decoders' is_pad={args.size % 32 != 0} (as the bundles: padding only for sizes not divisible by 32).",
        "",
        f"Batch: L={args.labeled} labelled + U={args.unlabeled} unlabelled = {b} slices of {args.size}x{args.size}, "
        f"{NUM_CLASSES} classes, one fixed in-memory batch (no data loading timed). CPL = `CrossPseudoLabelTrainer` + "
        "`TwoBranchFlexibleUNet` + `CrossPseudoLabelLoss()` + Adam; plain = `monai.engines.SupervisedTrainer` + "
        '`FlexibleUNet(upsample="deconv")` + `DiceCELoss(lambda_dice=0, to_onehot_y=True, softmax=True)` + Adam; '
        f"same backbone. Step = ITERATION_STARTED -> ITERATION_COMPLETED; {args.warmup} warm-up run(s) each, then "
        f"{args.repeats} interleaved runs each (CPL, plain, CPL, plain, ...); medians.",
        "",
        "## Step time and FLOPs",
        "",
        "| backbone, torch threads | CPL step (s) | plain step (s) | ratio of medians | median per-pair ratio "
        "| requirement <= 1.6x | within 5 % of the floor "
        "| FLOP ratio fwd (floor) | FLOP ratio fwd+bwd | CPL fwd / fwd+bwd GFLOP | plain fwd / fwd+bwd GFLOP "
        "| CPL GFLOP/s (% of matmul) | plain GFLOP/s (% of matmul) | 2048^2 matmul GFLOP/s |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        (fc, fcb), (fs, fsb) = r["flops_cpl"], r["flops_sup"]
        g_cpl, g_sup = fcb / r["med_cpl"] / 1e9, fsb / r["med_sup"] / 1e9
        ok = "PASS" if r["ratio"] <= 1.6 else "FAIL"
        floor_ok = f"{'PASS' if r['ratio'] <= 1.05 * fc / fs else 'FAIL'} (<= {1.05 * fc / fs:.2f}x)"
        lines.append(
            f"| {r['label']} | {r['med_cpl']:.2f} (min {min(r['cpl'].steps):.2f}) | {r['med_sup']:.2f} "
            f"(min {min(r['sup'].steps):.2f}) | {r['ratio']:.2f}x | {r['pair_ratio']:.2f}x | {ok} | {floor_ok} | "
            f"{fc / fs:.3f}x | "
            f"{fcb / fsb:.3f}x | {fc / 1e9:.1f} / {fcb / 1e9:.1f} | {fs / 1e9:.1f} / {fsb / 1e9:.1f} | "
            f"{g_cpl:.1f} ({100 * g_cpl / r['matmul']:.0f} %) | {g_sup:.1f} ({100 * g_sup / r['matmul']:.0f} %) | "
            f"{r['matmul']:.1f} (range {min(r['matmul_runs']):.0f}-{max(r['matmul_runs']):.0f}) |"
        )
    lines += [
        "",
        "FLOPs: `torch.utils.flop_counter.FlopCounterMode` (convolutions incl. transposed, matmuls; not norms, "
        "activations, interpolation, losses or Adam) over the network forward (`forward_both` for CPL) and over "
        "forward + backward on the same input. GFLOP/s = counted fwd+bwd FLOPs / median step time. Matmul: median of "
        f"{2 * args.matmul_repeats + args.repeats} runs of a 2048x2048 float32 `torch.mm`: {args.matmul_repeats} "
        f"before, one after each CPL/plain pair and {args.matmul_repeats} after the step timings.",
        "",
        "## Phases (median s)",
        "",
        "forward = ITERATION_STARTED -> FORWARD_COMPLETED (prepare batch, zero_grad, forward); loss -> LOSS_COMPLETED; "
        "backward -> BACKWARD_COMPLETED; optimizer -> Adam step post-hook; rest -> ITERATION_COMPLETED (decollate).",
        "",
        "| backbone, threads | engine | " + " | ".join(PHASES) + " | step |",
        "|---|---|" + "---:|" * (len(PHASES) + 1),
    ]
    for r in results:
        for key, name in (("cpl", "CPL"), ("sup", "plain")):
            t = r[key]
            ph = " | ".join(f"{statistics.median(t.phases[p]):.3f}" for p in PHASES)
            lines.append(f"| {r['label']} | {name} | {ph} | {statistics.median(t.steps):.3f} |")
        ph = " | ".join(
            f"{statistics.median(r['cpl'].phases[p]) / max(statistics.median(r['sup'].phases[p]), 1e-9):.2f}x"
            for p in PHASES
        )
        lines.append(f"| {r['label']} | CPL / plain | {ph} | {r['ratio']:.2f}x |")
    lines += [
        "",
        f"## Loss alone (forward + backward on fixed random logits {b}x{NUM_CLASSES}x{args.size}x{args.size}, "
        "median of 20, ms)",
        "",
        "| backbone, threads | " + " | ".join(results[0]["losses"]) + " |",
        "|---|" + "---:|" * len(results[0]["losses"]),
    ]
    for r in results:
        lines.append(f"| {r['label']} | " + " | ".join(f"{1e3 * v:.1f}" for v in r["losses"].values()) + " |")
    lines += ["", "## Per-run step times (s)", ""]
    for r in results:
        lines.append(f"- {r['label']} CPL: " + ", ".join(f"{t:.2f}" for t in r["cpl"].steps))
        lines.append(f"- {r['label']} plain: " + ", ".join(f"{t:.2f}" for t in r["sup"].steps))
    for r in results:
        if r["profile"]:
            lines += ["", f"## torch.profiler, one step each ({r['label']}), ops by self CPU time", ""]
            lines += [r["profile"]["CPL"], "", r["profile"]["plain"]]
    lines += ["", f"Total benchmark wall time: {wall:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["resnet50", "resnet18"], help="FlexibleUNet backbone(s)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch thread count(s), each a row per backbone (default: torch's default)",
    )
    parser.add_argument("--labeled", type=int, default=4, help="labelled slices per batch (L)")
    parser.add_argument("--unlabeled", type=int, default=4, help="unlabelled slices per batch (U)")
    parser.add_argument("--size", type=int, default=192, help="slice size (S x S)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per engine (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per engine first")
    parser.add_argument("--matmul-repeats", type=int, default=5, help="matmul runs before and after the steps")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one step each")
    parser.add_argument(
        "--batch_statistics", default="per_group", choices=BATCH_STATISTICS, help="the CPL trainer's option"
    )
    parser.add_argument(
        "--memory_format",
        default="channels_last",
        choices=["channels_last", "contiguous"],
        help="both networks' memory format (the bundles' channels_last, default on)",
    )
    parser.add_argument(
        "--allocator",
        default="retain",
        choices=["retain", "default"],
        help="retain: ideal_components.cpu.retain_freed_memory() first, as the bundles do on CPU; default: glibc's",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both engines' networks")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train_step.md"))
    args = parser.parse_args()
    if args.repeats < 1 or args.labeled < 0 or args.unlabeled < 0 or args.labeled + args.unlabeled < 1:
        parser.error("need --repeats >= 1 and at least one slice")

    if args.allocator == "retain":
        retain_freed_memory()
    load = os.getloadavg()
    t_start = time.perf_counter()
    results = []
    for backbone, threads in [(b, n) for b in args.backbone for n in args.threads]:
        results.append(bench_backbone(backbone, threads, args))
        r = results[-1]
        print(
            f"{r['label']}: CPL {r['med_cpl']:.2f} s, plain {r['med_sup']:.2f} s, ratio {r['ratio']:.2f}x "
            f"(per-pair {r['pair_ratio']:.2f}x), FLOP ratio {r['flops_cpl'][0] / r['flops_sup'][0]:.3f}x",
            flush=True,
        )
    text = report(results, args, load, time.perf_counter() - t_start)
    print()
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
