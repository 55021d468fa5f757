"""A batch sampler that mixes labelled and unlabelled samples in every batch (semi-supervised fine-tuning).

:class:`LabeledUnlabeledBatchSampler` yields lists of dataset indices; pass it as ``batch_sampler=`` to
:class:`monai.data.DataLoader` (or ``torch.utils.data.DataLoader``). :func:`set_loader_epoch` calls its
``set_epoch`` (the trainers do it at every ``EPOCH_STARTED``: MONAI's workflows only do that for a
``DistributedSampler`` set as ``sampler``). :func:`evaluation_sampler` shares the validation volumes out among the
distributed ranks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ideal_components.distributed import get_rank, get_world_size, is_distributed

__all__ = ["LabeledUnlabeledBatchSampler", "batches_per_pass", "set_loader_epoch", "evaluation_sampler"]

_UNLABELED_STREAM = 0
_LABELED_STREAM = 1
_LABELED_ONLY_STREAM = 2
_MASK64 = (1 << 64) - 1


def _flags_to_list(labeled: Any) -> list[int]:
    if isinstance(labeled, torch.Tensor):
        labeled = labeled.detach().cpu().reshape(-1).tolist()
    elif isinstance(labeled, np.ndarray):
        labeled = labeled.reshape(-1).tolist()
    flags = []
    for i, f in enumerate(labeled):
        if isinstance(f, (bool, np.bool_)):
            flags.append(int(f))
            continue
        try:
            v = float(f)
        except (TypeError, ValueError):
            raise ValueError(f"labeled flags must be 0/1 or bool, got {f!r} at index {i}.") from None
        if v not in (0.0, 1.0):
            raise ValueError(f"labeled flags must be 0/1 or bool, got {f!r} at index {i}.")
        flags.append(int(v))
    return flags


def batches_per_pass(
    num_labeled: int,
    num_unlabeled: int,
    batch_size: int,
    labeled_batch_size: int,
    num_replicas: int | None = None,
    drop_last: bool = True,
) -> int:
    """Batches per rank in one pass of :class:`LabeledUnlabeledBatchSampler` (its ``len``), from the counts alone.

    A pass covers the unlabelled indices once at ``batch_size - labeled_batch_size`` per batch, or, without
    unlabelled indices or with ``labeled_batch_size == batch_size``, the labelled ones at ``batch_size``. The bundles
    use it as every arm's ``epoch_length``, so that a supervised arm (labelled slices only) takes as many optimiser
    steps per epoch as the semi-supervised arm on the same split.

    Args:
        num_labeled, num_unlabeled: the numbers of labelled and unlabelled indices (slices).
        batch_size, labeled_batch_size: as for :class:`LabeledUnlabeledBatchSampler`.
        num_replicas: distributed processes, default the world size (1 without ``torch.distributed``).
        drop_last: as for :class:`LabeledUnlabeledBatchSampler`.

    Raises:
        ValueError: no labelled index, invalid sizes, or too few indices for one batch per rank with ``drop_last``.

    Example:
        >>> batches_per_pass(10, 100, batch_size=8, labeled_batch_size=4)
        25
        >>> batches_per_pass(10, 0, batch_size=8, labeled_batch_size=4)
        1
    """
    num_labeled, num_unlabeled = int(num_labeled), int(num_unlabeled)
    batch_size, labeled_batch_size = int(batch_size), int(labeled_batch_size)
    num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
    if num_labeled < 1:
        raise ValueError(
            f"no labelled index among the {num_labeled + num_unlabeled} dataset items: the batches need at least "
            "one labelled slice (check the `labeled` flags / the label fraction)."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 1 <= labeled_batch_size <= batch_size:
        raise ValueError(f"labeled_batch_size must be in [1, batch_size={batch_size}], got {labeled_batch_size}.")
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}.")
    labeled_only = num_unlabeled == 0 or labeled_batch_size == batch_size
    n, per_batch = (num_labeled, batch_size) if labeled_only else (num_unlabeled, batch_size - labeled_batch_size)
    per_step = per_batch * num_replicas
    count = n // per_step if drop_last else -(-n // per_step)
    if count == 0:
        kind = "labelled" if labeled_only else "unlabelled"
        raise ValueError(
            f"{n} {kind} indices are too few for one batch of {per_batch} {kind} indices on each of "
            f"{num_replicas} rank(s) with drop_last=True; use drop_last=False or a smaller batch."
        )
    return count


class LabeledUnlabeledBatchSampler(Sampler[list[int]]):
    """Batches of ``labeled_batch_size`` labelled + ``batch_size - labeled_batch_size`` unlabelled indices.

    - One pass (``len(sampler)`` batches) covers the unlabelled indices once (shuffled when ``shuffle``). The
      labelled indices form an endless stream that is reshuffled every time it runs out (so, with few labelled
      slices, each is seen many times per pass).
    - Without unlabelled indices (100 % labels), or with ``labeled_batch_size == batch_size`` (unlabelled indices are
      then ignored), every batch holds ``batch_size`` labelled indices and a pass covers them once.
    - Within an epoch the streams continue across passes: when a trainer's ``epoch_length`` is longer than the
      loader, the loader is iterated again and the next pass takes the next indices of an endless sequence of
      fresh permutations (one more per cycle), never a replay of the first pass. So every index is seen about
      equally often however long the epoch is (:func:`batches_per_pass` gives the pass length).
    - Every batch is full. With ``drop_last=True`` a pass takes ``len(sampler) * per-batch`` indices of the stream
      and the rest of that permutation starts the next pass; with ``drop_last=False`` a pass is padded with the
      head of the next permutation, so every index is seen at least once in the first pass.
    - Distributed: each pass's chunk of the epoch stream (the same permutations on every rank) is split into
      ``num_replicas`` disjoint shards, so every rank gets different samples and the same number of batches; each
      rank's labelled stream is a disjoint shard of the labelled indices for the epoch (padded by wrapping when the
      labelled count is not a multiple of ``num_replicas``), reshuffled locally whenever it runs out.
    - The order depends only on ``(seed, epoch, rank)`` and the number of passes made before in that epoch: call
      :meth:`set_epoch` at the start of every epoch (see :func:`set_loader_epoch`; the trainers of
      :mod:`ideal_components.engines` do it themselves). A new epoch number starts the epoch's streams anew;
      setting the current epoch again changes nothing, so a resumed run repeats an uninterrupted one.

    Args:
        labeled: one 0/1 (or bool) flag per dataset index, e.g. ``"$[d['labeled'] for d in @train#datalist]"``.
        batch_size: indices per batch.
        labeled_batch_size: labelled indices per batch, in ``[1, batch_size]``.
        shuffle: shuffle both streams (otherwise dataset order, the labelled stream cycling in order).
        seed: base seed of the shuffles.
        num_replicas: number of distributed processes, default the world size when ``torch.distributed`` is
            initialised, else 1.
        rank: this process's rank, default the distributed rank, else 0.
        drop_last: drop (True) or wrap-pad (False) the incomplete tail of the epoch stream.

    Raises:
        ValueError: no labelled index; invalid sizes, flags or rank; ``drop_last=True`` with too few indices for one
            batch per rank.

    Example:
        >>> flags = [1, 1, 0, 0, 0, 0, 0, 0]
        >>> sampler = LabeledUnlabeledBatchSampler(flags, batch_size=4, labeled_batch_size=2, seed=0)
        >>> len(sampler)
        3
        >>> [len(b) for b in sampler]
        [4, 4, 4]
        >>> loader = monai.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    """

    def __init__(
        self,
        labeled: Sequence[int] | Sequence[bool] | torch.Tensor | np.ndarray,
        batch_size: int,
        labeled_batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = True,
    ) -> None:
        flags = _flags_to_list(labeled)
        batch_size, labeled_batch_size = int(batch_size), int(labeled_batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not 1 <= labeled_batch_size <= batch_size:
            raise ValueError(f"labeled_batch_size must be in [1, batch_size={batch_size}], got {labeled_batch_size}.")
        if num_replicas is None:
            num_replicas = get_world_size()
        if rank is None:
            rank = get_rank()
        num_replicas, rank = int(num_replicas), int(rank)
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}.")
        self.labeled_indices = [i for i, f in enumerate(flags) if f]
        self.unlabeled_indices = [i for i, f in enumerate(flags) if not f]
        if not self.labeled_indices:
            raise ValueError(
                f"no labelled index among the {len(flags)} dataset items: the cross-pseudo-label batches need at least "
                "one labelled slice (check the `labeled` flags / the label fraction)."
            )
        self.batch_size = batch_size
        self.labeled_batch_size = labeled_batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = bool(drop_last)
        self.epoch = 0
        # labelled-only mode: no unlabelled data, or no room for it in a batch
        self.labeled_only = not self.unlabeled_indices or labeled_batch_size == batch_size
        if self.labeled_only:
            self._epoch_stream, self._per_batch = self.labeled_indices, batch_size
        else:
            self._epoch_stream, self._per_batch = self.unlabeled_indices, batch_size - labeled_batch_size
        self._num_batches = batches_per_pass(
            len(self.labeled_indices), len(self.unlabeled_indices), batch_size, labeled_batch_size, num_replicas,
            self.drop_last,
        )  # fmt: skip
        # this epoch's streams (created at the epoch's first pass, continued by the passes after it)
        self._streams_epoch: int | None = None
        self._main_stream: Iterator[int] | None = None
        self._labeled: Iterator[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used (with ``seed``) to shuffle; call before iterating each epoch."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        # the running streams are generators (not picklable): a copy starts the epoch's streams anew
        state = dict(self.__dict__)
        state.update(_streams_epoch=None, _main_stream=None, _labeled=None)
        return state

    def _permutation(self, indices: list[int], epoch: int, stream: int, cycle: int) -> list[int]:
        if not self.shuffle:
            return list(indices)
        rng = np.random.default_rng([self.seed & _MASK64, epoch & _MASK64, stream, cycle])
        return [indices[i] for i in rng.permutation(len(indices))]

    def _main_permutations(self, epoch: int) -> Iterator[int]:
        # the epoch's stream, the same on every rank: permutations of cycle 0, 1, 2, ... one after the other
        stream = _LABELED_ONLY_STREAM if self.labeled_only else _UNLABELED_STREAM
        cycle = 0
        while True:
            yield from self._permutation(self._epoch_stream, epoch, stream, cycle)
            cycle += 1

    @staticmethod
    def _wrap_to(seq: list[int], length: int) -> list[int]:
        if len(seq) >= length:
            return seq[:length]
        reps = -(-length // len(seq))
        return (seq * reps)[:length]

    def _labeled_stream(self, epoch: int) -> Iterator[int]:
        # this epoch's shard (disjoint across ranks), then endless local reshuffles of it
        per_rank = -(-len(self.labeled_indices) // self.num_replicas)
        total = self._wrap_to(
            self._permutation(self.labeled_indices, epoch, _LABELED_STREAM, 0), per_rank * self.num_replicas
        )
        shard = total[self.rank :: self.num_replicas]
        yield from shard
        cycle = 1
        while True:
            if self.shuffle:
                rng = np.random.default_rng([self.seed & _MASK64, epoch & _MASK64, _LABELED_STREAM, cycle, self.rank])
                shard = [shard[i] for i in rng.permutation(len(shard))]
            yield from shard
            cycle += 1

    def _streams(self) -> tuple[Iterator[int], Iterator[int] | None]:
        """The current epoch's main and labelled streams: new for a new epoch, continued within one."""
        if self._streams_epoch != self.epoch or self._main_stream is None:
            self._streams_epoch = self.epoch
            self._main_stream = self._main_permutations(self.epoch)
            self._labeled = None if self.labeled_only else self._labeled_stream(self.epoch)
        return self._main_stream, self._labeled

    def __iter__(self) -> Iterator[list[int]]:
        main_stream, labeled = self._streams()
        chunk = list(itertools.islice(main_stream, self._num_batches * self._per_batch * self.num_replicas))
        main = chunk[self.rank :: self.num_replicas]
        for b in range(self._num_batches):
            batch = main[b * self._per_batch : (b + 1) * self._per_batch]
            if labeled is not None:
                batch = [next(labeled) for _ in range(self.labeled_batch_size)] + batch
            yield batch

    def __len__(self) -> int:
        return self._num_batches


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the data loader's batch sampler and sampler, where they have one.

    The one place the package sets a sampler's epoch: the trainers call it at every ``EPOCH_STARTED`` and
    :class:`~ideal_components.handlers.EpochSeedHandler` before it restarts a loader's iterator. Setting the same
    epoch twice is harmless (a sampler's order depends only on its seed, epoch and rank).

    Example:
        >>> sampler = LabeledUnlabeledBatchSampler([1, 0, 0, 0], batch_size=2, labeled_batch_size=1)
        >>> set_loader_epoch(torch.utils.data.DataLoader(range(4), batch_sampler=sampler), 3)
        >>> sampler.epoch
        3
    """
    for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(int(epoch))


def evaluation_sampler(dataset: Sized) -> Sampler | None:
    """The validation loader's sampler: each distributed rank evaluates its own share of ``dataset``.

    Without an initialised ``torch.distributed`` process group: ``None`` (the loader reads ``dataset`` in order).
    With one: MONAI's :class:`~monai.data.DistributedSampler` in dataset order, without padding, so that no volume is
    scored twice; padded (``even_divisible``) only when there are fewer items than ranks, since every rank must then
    still evaluate one item to take part in gathering the metric.

    Example (bundle config)::

        "sampler": "$ideal_components.data.sampler.evaluation_sampler(@validate#dataset)"
    """
    if not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, shuffle=False, even_divisible=len(dataset) < get_world_size())
