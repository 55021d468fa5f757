"""Cost of the fine-tuning checkpoints: saving one per epoch, and resuming from one.

Run: ``.venv/bin/python benchmarks/bench_checkpoint.py`` (about 2 minutes on 2 CPU cores). Prints a Markdown report
and writes it to ``benchmarks/results/checkpoint.md``.

What is measured (CPU, float32), for the bundles' fine-tuning checkpoint (``train.json``'s ``train#checkpointer``:
the two-branch network, Adam with its moment estimates after one real step, the trainer's state and the best-model
saver's record):

- ``save``: one epoch-end save by :class:`ideal_components.handlers.AtomicCheckpointSaver` (``torch.save`` to a
  temporary file, ``fsync``, ``os.replace``, removal of the previous epoch's file), and the same save by MONAI's
  :class:`monai.handlers.CheckpointSaver` (written in place, no ``fsync``): the price of never leaving a truncated
  checkpoint. Median of ``--repeats`` saves, interleaved (atomic, MONAI, atomic, ...).
- ``resume``: :class:`ideal_components.handlers.CheckpointResumer` at ``Events.STARTED`` of a fresh trainer: finding
  the newest loadable checkpoint, ``torch.load(weights_only=True)`` and loading every state dict strictly. Median of
  ``--repeats``.
- ``step``: one cross-pseudo-label training step (batch 8: 4 labelled + 4 unlabelled slices at the bundle's
  192x192), median of ``--steps`` after 2 warm-up steps, to express the save as a share of an epoch. The epoch
  length is that of the bundles' :class:`~ideal_components.data.sampler.LabeledUnlabeledBatchSampler` for ACDC at
  10 % labels with the defaults (batch 8 = 4 + 4; 78 training patients x about 9.5 ED slices, 8 of them labelled).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ignite.engine import Engine, Events  # noqa: E402
from monai.handlers import CheckpointSaver  # noqa: E402

from ideal_components.data.sampler import LabeledUnlabeledBatchSampler  # noqa: E402
from ideal_components.engines import CrossPseudoLabelTrainer  # noqa: E402
from ideal_components.handlers import AtomicCheckpointSaver, CheckpointResumer  # noqa: E402
from ideal_components.losses import CrossPseudoLabelLoss  # noqa: E402
from ideal_components.networks import TwoBranchFlexibleUNet  # noqa: E402


def acdc_iterations_per_epoch() -> int:
    slices_per_volume, labelled, unlabelled = 9.5, 8, 70
    flags = [1] * round(labelled * slices_per_volume) + [0] * round(unlabelled * slices_per_volume)
    return len(LabeledUnlabeledBatchSampler(flags, batch_size=8, labeled_batch_size=4, num_replicas=1, rank=0))


def _trainer(backbone: str, size: int):
    net = TwoBranchFlexibleUNet(1, 4, backbone=backbone, spatial_dims=2)
    opt = torch.optim.Adam(net.parameters(), 1e-5)
    batch = {
        "image": torch.rand(8, 1, size, size),
        "label": torch.randint(0, 4, (8, 1, size, size)).float(),
        "labeled": torch.tensor([1.0] * 4 + [0.0] * 4),
    }
    trainer = CrossPseudoLabelTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        epoch_length=1,
        train_data_loader=[batch],
        network=net,
        optimizer=opt,
        loss_function=CrossPseudoLabelLoss(),
    )
    times = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: times.append(time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.append(time.perf_counter() - times.pop()))
    return net, opt, trainer, times


def _saver(cls, folder, save_dict):
    return cls(str(folder), save_dict=save_dict, file_prefix="train", save_interval=1, n_saved=1)


def bench(backbone: str, size: int, repeats: int, steps: int) -> dict:
    net, opt, trainer, times = _trainer(backbone, size)
    for _ in range(2 + steps):
        trainer.run()
    step = statistics.median(times[2:])
    best = AtomicCheckpointSaver(tempfile.mkdtemp(), save_dict={"model": net.branch_a}, save_key_metric=True)
    save_dict = {"network": net, "optimizer": opt, "trainer": trainer, "best_model_saver": best}
    folders = {"atomic": Path(tempfile.mkdtemp()), "monai": Path(tempfile.mkdtemp())}
    savers = {
        "atomic": _saver(AtomicCheckpointSaver, folders["atomic"], save_dict),
        "monai": _saver(CheckpointSaver, folders["monai"], save_dict),
    }
    durations = {"atomic": [], "monai": []}
    engine = Engine(lambda e, b: None)
    for i in range(repeats):
        for name, saver in savers.items():
            engine.state.epoch = i + 1
            t0 = time.perf_counter()
            saver.interval_completed(engine)
            durations[name].append(time.perf_counter() - t0)
    size_mb = sum(p.stat().st_size for p in folders["atomic"].glob("*.pt")) / 2**20

    resume = []
    for _ in range(repeats):
        fresh_net, fresh_opt, fresh_trainer, _ = _trainer(backbone, size)
        fresh_best = AtomicCheckpointSaver(tempfile.mkdtemp(), save_dict={"model": fresh_net.branch_a})
        load = {"network": fresh_net, "optimizer": fresh_opt, "trainer": fresh_trainer, "best_model_saver": fresh_best}
        resumer = CheckpointResumer(str(folders["atomic"]), "train", load)
        t0 = time.perf_counter()
        resumer(fresh_trainer)
        resume.append(time.perf_counter() - t0)
        assert torch.equal(next(iter(fresh_net.parameters())), next(iter(net.parameters())))
    return {
        "backbone": backbone,
        "size": size,
        "file_mb": size_mb,
        "atomic": statistics.median(durations["atomic"]),
        "monai": statistics.median(durations["monai"]),
        "resume": statistics.median(resume),
        "step": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet50,resnet18")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "checkpoint.md"))
    args = parser.parse_args()
    rows = [bench(b, args.size, args.repeats, args.steps) for b in args.backbones.split(",")]
    epoch = acdc_iterations_per_epoch()
    lines = [
        "# Checkpoint cost: save per epoch and resume",
        "",
        f"`python benchmarks/bench_checkpoint.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s), torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
        f"{args.repeats} (saves interleaved atomic/MONAI), step: median of {args.steps}. Batch 8 (4+4) at "
        f"{args.size}x{args.size}; epoch = {epoch} iterations (ACDC, 10 % labels, bundle defaults).",
        "",
        "| backbone | checkpoint (MB) | atomic save (s) | MONAI save (s) | atomic / MONAI | resume (s) | "
        "step (s) | save / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['file_mb']:.0f} | {r['atomic']:.3f} | {r['monai']:.3f} | "
            f"{r['atomic'] / r['monai']:.2f}x | {r['resume']:.3f} | {r['step']:.2f} | "
            f"{100 * r['atomic'] / (epoch * r['step']):.2f} % |"
        )
    lines += [
        "",
        "save / epoch = atomic save / (epoch iterations x step), the share of a fine-tuning epoch spent checkpointing "
        "on this CPU (on a GPU the step is far shorter and the share larger; the save itself is disk-bound).",
        "Resume = find the newest loadable checkpoint + `torch.load(weights_only=True)` + strict loads; the partial "
        "epoch interrupted by the kill is then run again.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
