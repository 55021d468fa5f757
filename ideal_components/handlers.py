"""Ignite handlers that make long runs survive: atomic checkpoints, resuming, and per-epoch seeding.

- :class:`AtomicCheckpointSaver` is MONAI's :class:`~monai.handlers.CheckpointSaver` whose files are written to a
  temporary file, flushed to disk and moved into place, so a kill during a save leaves the previous checkpoint and
  never a truncated one. It also records, inside every interval checkpoint, which files it manages, so a resumed run
  keeps rotating them (``n_saved``) and keeps the best key-metric model instead of overwriting it with a worse one.
- :class:`CheckpointResumer` loads, at ``Events.STARTED``, the newest interval checkpoint that loads
  (``torch.load(weights_only=True)``) into the networks, optimiser and engine, so ``trainer.run()`` continues from the
  end of that epoch.
- :class:`EpochSeedHandler` reseeds every random number generator (torch, numpy, random, the dataset's random
  transforms, hence the data-loader workers) at the start of every epoch from ``(seed, epoch, rank)``. An epoch's
  randomness then depends on its number only, which is what makes a resumed run end with the same weights as an
  uninterrupted one.
- :class:`NonFiniteGuard` stops training at the first non-finite loss (and at non-finite weights or optimiser
  states, checked every ``interval`` iterations and at every epoch end), naming the iteration, the epoch and the
  batch's items, before any checkpoint of that epoch is written; :class:`AtomicDiskSaver` refuses to write a file
  holding NaN/Inf in any case, so the newest checkpoint on disk is always a good one.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver

from ideal_components.data.sampler import set_loader_epoch
from ideal_components.distributed import get_rank, get_world_size, is_main_process
from ideal_components.finite import NonFiniteError, check_finite, non_finite_entries
from ideal_components.utils import atomic_path

__all__ = [
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "find_latest_checkpoint",
    "CheckpointResumer",
    "EpochSeedHandler",
    "NonFiniteGuard",
    "NullSummaryWriter",
    "summary_writer",
    "rank_handlers",
    "attach_on_main_process",
    "validate_last_epoch",
]

_LOGGER = logging.getLogger(__name__)
_INTERVAL_NAME = re.compile(r"_checkpoint_(epoch|iteration)=(\d+)\.pt$")


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler that writes ``torch.save`` output atomically (temporary file, fsync, ``os.replace``).

    Args:
        dirname: the folder of the checkpoints (created).
        filename: a fixed file name used instead of the one ignite proposes (MONAI's ``key_metric_filename``).
        refuse_non_finite: raise :class:`~ideal_components.finite.NonFiniteError` instead of writing a checkpoint
            in which a floating-point tensor holds NaN/Inf (the previous file stays).
    """

    def __init__(self, dirname: str, filename: str | None = None, refuse_non_finite: bool = True) -> None:
        self.dirname = str(dirname)
        self.filename = filename
        self.refuse_non_finite = bool(refuse_non_finite)
        os.makedirs(self.dirname, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not is_main_process():
            return
        path = os.path.join(self.dirname, self.filename or filename)
        if self.refuse_non_finite:
            check_finite(checkpoint, f"checkpoint {path}")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def remove(self, filename: str) -> None:
        if not is_main_process():
            return
        if self.filename is not None:
            # a fixed name (model.pt): ignite removes the old file before writing the new one; the atomic write
            # replaces it anyway, and removing it first would leave no model.pt if the job died in between
            return
        path = os.path.join(self.dirname, filename)
        if os.path.exists(path):
            os.remove(path)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with atomic writes and a resumable state.

    Takes the same arguments as MONAI's saver. Differences:

    - every file (final, key-metric, interval) is written by :class:`AtomicDiskSaver`;
    - interval checkpoints also hold ``"checkpointer"``: the list of interval files this saver keeps, restored by
      :class:`CheckpointResumer` so that ``n_saved`` still rotates the files of the interrupted run;
    - :meth:`state_dict` / :meth:`load_state_dict` hold the key-metric list (best score and file), so a saver of the
      best validation model can be put in a trainer checkpoint's ``save_dict`` and a resumed run only replaces the
      best model with a better one.

    Example (bundle config)::

        "checkpointer": {"_target_": "ideal_components.handlers.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
                         "save_dict": {"network": "@network", "optimizer": "@optimizer", "trainer": "@train#trainer"},
                         "file_prefix": "train", "save_interval": 1, "n_saved": 1}
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:  # keep the fixed file name (final_filename, key_metric_filename) MONAI set
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)
        if self._interval_checkpoint is not None:
            # ignite writes {"_saved": [(priority, filename), ...]} under "checkpointer" (after appending the new file)
            self._interval_checkpoint.include_self = True

    def state_dict(self) -> dict:
        """The key-metric list ``[(score, filename), ...]`` (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return {"_saved": []}
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric list written by :meth:`state_dict`."""
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.load_state_dict(state_dict)

    def load_interval_state_dict(self, state_dict: dict) -> None:
        """Restore the list of interval files (the ``"checkpointer"`` entry of an interval checkpoint)."""
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.load_state_dict(state_dict)


def find_latest_checkpoint(
    ckpt_dir: str, file_prefix: str, map_location: Any = "cpu"
) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    """The newest ``{file_prefix}_checkpoint_{epoch|iteration}=N.pt`` in ``ckpt_dir`` that loads, and its content.

    Files are tried from the highest ``N`` down; one that fails to load (truncated by a kill on a file system
    without atomic renames, or corrupted) is logged and skipped. Loading uses ``weights_only=True``: a checkpoint
    cannot run code.

    Returns:
        ``(path, checkpoint)``, or ``(None, None)`` when there is none.
    """
    candidates = []
    for path in glob.glob(os.path.join(glob.escape(str(ckpt_dir)), f"{glob.escape(file_prefix)}_checkpoint_*.pt")):
        match = _INTERVAL_NAME.search(os.path.basename(path))
        if match is not None and os.path.basename(path).startswith(f"{file_prefix}_checkpoint_"):
            candidates.append((int(match.group(2)), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a damaged file: fall back to an older one
            _LOGGER.warning(f"skipping checkpoint {path}: it does not load ({type(e).__name__}: {e}).")
            continue
        if not isinstance(checkpoint, dict):
            _LOGGER.warning(f"skipping checkpoint {path}: expected a dict of state dicts, got {type(checkpoint)}.")
            continue
        return path, checkpoint
    return None, None


class CheckpointResumer:
    """Resume a trainer from the newest interval checkpoint of an :class:`AtomicCheckpointSaver` (or MONAI's).

    At ``Events.STARTED`` it loads the newest loadable ``{file_prefix}_checkpoint_*.pt`` of ``ckpt_dir`` into the
    objects of ``load_dict`` (strictly: every key must be in the file and module state dicts must match), restores
    the saver's file list, and keeps the engine's ``max_epochs`` (so a run can be extended). The trainer then goes on
    from the end of the saved epoch; the partial epoch that was running when the job died is run again. Without a
    checkpoint it logs that and starts from scratch, so the same command can be used for the first start and for
    every restart of a pre-empted job.

    Args:
        ckpt_dir: folder of the checkpoints.
        file_prefix: the saver's ``file_prefix``.
        load_dict: name -> object with ``load_state_dict``; the same names as the saver's ``save_dict``.
        saver: the :class:`AtomicCheckpointSaver` that wrote the files, to restore its file list.
        enabled: when False, :meth:`attach` does nothing (the bundles' ``resume`` switch).
        map_location: passed to ``torch.load``.

    Example::

        resumer = CheckpointResumer("models", "train", {"network": net, "optimizer": opt, "trainer": trainer})
        resumer.attach(trainer)
        trainer.run()
    """

    def __init__(
        self,
        ckpt_dir: str,
        file_prefix: str,
        load_dict: Mapping[str, Any],
        saver: CheckpointSaver | None = None,
        enabled: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        if not load_dict:
            raise ValueError("load_dict must name at least one object to restore.")
        self.ckpt_dir = str(ckpt_dir)
        self.file_prefix = file_prefix
        self.load_dict = dict(load_dict)
        self.saver = saver
        self.enabled = bool(enabled)
        self.map_location = map_location
        self.resumed_from: str | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self._remove_stale_temporaries()
        path, checkpoint = find_latest_checkpoint(self.ckpt_dir, self.file_prefix, self.map_location)
        if path is None:
            engine.logger.info(f"resume: no '{self.file_prefix}' checkpoint in {self.ckpt_dir}, starting from scratch.")
            return
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise KeyError(
                f"cannot resume from {path}: it has no {missing} (it holds {sorted(checkpoint)}); "
                "was it written by another config?"
            )
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=True)
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"cannot resume from {path}: it is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}."
                )
            engine.state.max_epochs = max_epochs
        if isinstance(self.saver, AtomicCheckpointSaver) and "checkpointer" in checkpoint:
            self.saver.load_interval_state_dict(checkpoint["checkpointer"])
        self.resumed_from = path
        engine.logger.info(f"resume: restored {sorted(self.load_dict)} from {path} (epoch {engine.state.epoch}).")

    def _remove_stale_temporaries(self) -> None:
        # temporary files of saves interrupted by a kill: ".{name}.XXXX.tmp.pt" (see ideal_components.utils)
        if not is_main_process():
            return
        pattern = os.path.join(glob.escape(self.ckpt_dir), f".{glob.escape(self.file_prefix)}_*.tmp*")
        for tmp in glob.glob(pattern):
            try:
                os.remove(tmp)
            except OSError:
                pass


class EpochSeedHandler:
    """Reseed all random number generators at every ``EPOCH_STARTED`` from ``(seed, epoch, rank)``.

    Reseeds torch (CPU and CUDA), numpy and ``random`` in the main process, the random transforms of the data
    loader's dataset (used when ``num_workers=0``) and, through torch's generator, the seeds of the loader's workers;
    then restarts the loader's iterator so the epoch's workers start from those seeds even when ``epoch_length`` is
    shorter than the loader. An epoch then draws the same augmentations, key-view shifts and batch order whether the
    run went through the epochs before it or was resumed from a checkpoint.

    Args:
        seed: the run's seed.
        rank: the process's rank, default the distributed rank (0 without ``torch.distributed``).

    Example::

        EpochSeedHandler(seed=0).attach(trainer)
    """

    def __init__(self, seed: int, rank: int | None = None) -> None:
        self.seed = int(seed)
        self.rank = rank

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        """The 32-bit seed of ``epoch`` on this rank."""
        rank = get_rank() if self.rank is None else self.rank
        return int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(epoch), int(rank)]).generate_state(1)[0])

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        dataloader = engine.state.dataloader
        dataset = getattr(dataloader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)
        # an iterator left over from the previous epoch (epoch_length shorter than the loader) would carry on with
        # the previous epoch's workers and order: start this epoch's now, after the reseed and with this epoch's
        # sampler order (a multi-worker iterator draws its first indices when it is created)
        if dataloader is not None and getattr(engine, "_dataloader_iter", None) is not None:
            set_loader_epoch(dataloader, engine.state.epoch)
            engine.set_data(dataloader)


def _batch_item_names(batch: Any, paths: Mapping[str, str], limit: int) -> list[str]:
    """Names of a batch's items from what lives on the host (ids, slice indices, file paths), never a device read.

    ``batch`` is the collated dict or MONAI's decollated list of dicts."""
    if isinstance(batch, Mapping):
        ids = batch.get("id")
        if isinstance(ids, (list, tuple)):
            slices = batch.get("slice")
            if isinstance(slices, torch.Tensor):
                slices = slices.tolist() if slices.device.type == "cpu" else None
            rows = [
                {"id": i, "slice": slices[n] if isinstance(slices, (list, tuple)) and n < len(slices) else None}
                for n, i in enumerate(ids)
            ]
        else:
            return []
    elif isinstance(batch, (list, tuple)):
        rows = [b for b in batch if isinstance(b, Mapping)]
    else:
        return []
    groups: dict[tuple[str, str | None], list[str]] = {}  # (id or file, file) -> slices, in batch order
    for row in rows:
        name = str(row.get("id")) if row.get("id") is not None else None
        path = row.get("image") if isinstance(row.get("image"), str) else paths.get(name) if name else None
        if name is None and path is None:
            continue
        sl = row.get("slice")
        if isinstance(sl, torch.Tensor):
            sl = int(sl) if sl.device.type == "cpu" and sl.numel() == 1 else None
        slices = groups.setdefault((name or str(path), None if name is None else path), [])
        if sl is not None:
            slices.append(str(sl))
    names = []
    for (name, path), slices in list(groups.items())[:limit]:
        if slices:
            name += f" slice{'s' if len(slices) > 1 else ''} {', '.join(slices)}"
        names.append(name + (f" ({path})" if path is not None else ""))
    if len(groups) > limit:
        names.append(f"... {len(groups) - limit} more volume(s)")
    return names


class NonFiniteGuard:
    """Stop training at the first non-finite loss or weight, before anything non-finite is written.

    What is checked, and when:

    - the loss, every iteration. After MONAI's decollation (``decollate=True``, the bundles' setting) it is already a
      host number and the check costs nothing; a loss still on the device is folded into a device flag (which
      iteration first went bad) without a host read, and the flag is read at each check point below;
    - the weights and buffers of ``network`` and the optimiser's state (Adam's moments), at each check point: every
      ``interval`` iterations and at every ``EPOCH_COMPLETED``, one device-to-host read each. Non-finite gradients
      show up there after the step; gradients themselves are not checked, since AMP's ``GradScaler`` skips steps
      with infinite gradients on purpose.

    Attach it before the checkpoint saver and the validation handler (first in ``train#handlers`` after the seed
    handler): at the end of an epoch it runs first, so a bad epoch raises before its checkpoint, the best model
    (``model.pt``) or, after ``trainer.run()``, the encoder file is written. The run stops with
    :class:`~ideal_components.finite.NonFiniteError` naming the iteration, the epoch, the batch's items (``id``,
    ``slice`` and image file where the batch carries them) and the non-finite tensors; the newest checkpoint on disk
    is the last good epoch's, so ``--resume True`` continues from it once the cause is fixed. Under
    ``torch.distributed`` the decision is all-reduced at each check point, so every rank stops together.

    Ignite's ``TerminateOnNan`` was not used: it ends the run with a success status, reads the loss from the device
    every iteration and names neither the batch nor the weights.

    Args:
        network: the trained network (its state dict is checked).
        optimizer: the optimiser (its state is checked), or ``None``.
        interval: iterations between check points (besides every epoch end); 0: epoch ends only.
        datalist: the training items, to name an item's image file from its ``id``.
        loss_key: the loss's key in ``engine.state.output``.
        max_items: how many of a batch's volumes the message names (their slices grouped).

    Example (bundle config, in ``train#handlers`` after the ``EpochSeedHandler``)::

        {"_target_": "ideal_components.handlers.NonFiniteGuard", "network": "@network",
         "optimizer": "@optimizer", "interval": "@finite_check_interval", "datalist": "@train#datalist"}
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: Any = None,
        interval: int = 100,
        datalist: Sequence[Mapping[str, Any]] | None = None,
        loss_key: str = "loss",
        max_items: int = 16,
    ) -> None:
        self.network = network
        self.optimizer = optimizer
        self.interval = max(0, int(interval))
        self.loss_key = loss_key
        self.max_items = int(max_items)
        self._paths = {str(d["id"]): str(d["image"]) for d in datalist or [] if "id" in d and "image" in d}
        self._first_bad: torch.Tensor | None = None  # device: first iteration with a non-finite loss, 0 if none
        self._host_bad: str | None = None  # a non-finite host loss waiting for the distributed decision
        self._recent: dict[int, tuple[int, list[str]]] = {}  # iteration -> (epoch, batch items) since the last check

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def _where(self, engine: Engine, iteration: int) -> str:
        epoch, _ = self._recent.get(iteration, (engine.state.epoch, []))
        length = engine.state.epoch_length
        within = f", iteration {(iteration - 1) % length + 1} of {length} in the epoch" if length else ""
        return f"iteration {iteration} (epoch {epoch}{within})"

    def _batch(self, iteration: int) -> str:
        items = self._recent.get(iteration, (0, []))[1]
        return "; batch: " + ", ".join(items) if items else ""

    def _output_loss(self, engine: Engine) -> Any:
        output = engine.state.output
        if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
            output = output[0]
        return output.get(self.loss_key) if isinstance(output, Mapping) else None

    def iteration_completed(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        self._recent[iteration] = (
            engine.state.epoch,
            _batch_item_names(engine.state.batch, self._paths, self.max_items),
        )
        loss = self._output_loss(engine)
        if isinstance(loss, torch.Tensor) and loss.device.type != "cpu":
            bad = ~torch.isfinite(loss.detach()).all()
            if self._first_bad is None:
                self._first_bad = torch.zeros((), dtype=torch.long, device=loss.device)
            self._first_bad = torch.where((self._first_bad == 0) & bad, iteration, self._first_bad)
        elif loss is not None and self._host_bad is None:
            value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
            if not math.isfinite(value):
                self._host_bad = (
                    f"non-finite loss ({value}) at {self._where(engine, iteration)}{self._batch(iteration)}"
                )
                if get_world_size() == 1:
                    self._stop(engine, self._host_bad)
        if self.interval and iteration % self.interval == 0:
            self.check(engine)

    def check(self, engine: Engine) -> None:
        """A check point: read the deferred loss flag, check the weights and optimiser state, stop if any is bad."""
        problems = [self._host_bad] if self._host_bad else []
        if self._first_bad is not None:
            first = int(self._first_bad.item())
            if first:
                problems.append(f"non-finite loss at {self._where(engine, first)}{self._batch(first)}")
        state = (
            {"network": self.network}
            if self.optimizer is None
            else {"network": self.network, "optimizer": self.optimizer}
        )
        bad = non_finite_entries(state)
        if bad:
            iteration = engine.state.iteration
            names = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            since = sorted(self._recent)
            span = f"iterations {since[0]}-{since[-1]}" if len(since) > 1 else f"iteration {iteration}"
            problems.append(
                f"{len(bad)} weight / optimiser tensor(s) hold NaN/Inf at {self._where(engine, iteration)} "
                f"({names}); checked every {self.interval or 'epoch'} iteration(s) and at each epoch end, so it "
                f"went bad during {span}{self._batch(iteration)}"
            )
        if get_world_size() > 1:
            flag = torch.tensor([float(bool(problems))], device=next(self.network.parameters()).device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() and not problems:
                problems.append("another rank found non-finite values (see its log)")
        if problems:
            self._stop(engine, "; ".join(problems))
        self._recent.clear()

    def _stop(self, engine: Engine, problem: str) -> None:
        message = (
            f"training stopped: {problem}. Nothing of this epoch was written (no checkpoint, encoder file or "
            "model.pt): the newest checkpoint in the models folder is the last good epoch's; fix the cause (data, "
            "learning rate) and rerun with --resume True to continue from it."
        )
        raise NonFiniteError(message)


class NullSummaryWriter:
    """A stand-in for ``torch.utils.tensorboard.SummaryWriter`` that writes nothing (every method is a no-op).

    Given to MONAI's ``TensorBoardStatsHandler`` on distributed ranks other than 0: a handler built with
    ``summary_writer=None`` would create its own writer, hence an event file per rank, even if never attached.

    Example (bundle config, through :func:`summary_writer`)::

        "summary_writer": "$ideal_components.handlers.summary_writer(@output_dir, @is_main_process)"
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


# ---------------------------------------------------------------------------------------------------------------
# small named steps of the bundle configs (each was a long one-line expression there)


def summary_writer(log_dir: str, main_process: bool) -> Any:
    """A TensorBoard ``SummaryWriter`` writing to ``log_dir`` on the main process, a :class:`NullSummaryWriter` on
    the other distributed ranks (one event file per run, not per rank).

    Example (bundle config)::

        "summary_writer": "$ideal_components.handlers.summary_writer(@output_dir, @is_main_process)"
    """
    if not main_process:
        return NullSummaryWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)


def rank_handlers(main_process: bool, every_rank: Sequence[Any], *main_only: Sequence[Any]) -> list[Any]:
    """The handlers a trainer attaches on this rank: ``every_rank``, then, on the main process only, each list of
    ``main_only`` in order (logging: progress bar, stats, TensorBoard).

    Example (bundle config: ``"$ideal_components.handlers.rank_handlers(@is_main_process, @train#handlers,
    @train#log_handlers)"``):

        >>> rank_handlers(True, ["seed"], ["log"], ["tb"])
        ['seed', 'log', 'tb']
        >>> rank_handlers(False, ["seed"], ["log"], ["tb"])
        ['seed']
    """
    handlers = list(every_rank)
    if main_process:
        for extra in main_only:
            handlers += list(extra)
    return handlers


def attach_on_main_process(handler: Any, engine: Engine, main_process: bool) -> None:
    """``handler.attach(engine)`` on the main process only: under ``torch.distributed`` rank 0 alone writes
    checkpoints (the other ranks hold the same weights).

    Example (bundle config, ``run``)::

        "$ideal_components.handlers.attach_on_main_process(@train#checkpointer, @train#trainer, @is_main_process)"
    """
    if main_process:
        handler.attach(engine)


def validate_last_epoch(evaluator: Engine, trainer: Engine, interval: int) -> None:
    """Validate once more after training when the last epoch fell between two validations.

    ``ValidationHandler(interval=val_interval)`` validates after every ``val_interval``-th epoch; when ``max_epochs``
    is not a multiple of it, the last epochs' weights would never be scored, nor kept as ``model.pt`` when they are
    the best. This runs ``evaluator`` for the trainer's last epoch in that case, and does nothing otherwise.

    Example (bundle config, ``run``, after ``"$@train#trainer.run()"``)::

        "$ideal_components.handlers.validate_last_epoch(@validate#evaluator, @train#trainer, @val_interval)"
    """
    epoch = trainer.state.epoch
    if epoch % interval:
        evaluator.run(epoch)
