"""A batch sampler that mixes labelled and unlabelled samples in every batch (semi-supervised fine-tuning).

:class:`LabeledUnlabeledBatchSampler` yields lists of dataset indices; pass it as ``batch_sampler=`` to
:class:`monai.data.DataLoader` (or ``torch.utils.data.DataLoader``). :func:`set_loader_epoch` calls its
``set_epoch`` (the trainers do it at every ``EPOCH_STARTED``: MONAI's workflows only do that for a
``DistributedSampler`` set as ``sampler``). :func:`evaluation_sampler` shares the validation volumes out among the
distributed ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ideal_components.distributed import get_rank, get_world_size, is_distributed

__all__ = ["LabeledUnlabeledBatchSampler", "set_loader_epoch", "evaluation_sampler"]

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


class LabeledUnlabeledBatchSampler(Sampler[list[int]]):
    """Batches of ``labeled_batch_size`` labelled + ``batch_size - labeled_batch_size`` unlabelled indices.

    - An epoch is one pass over the unlabelled indices (shuffled per epoch when ``shuffle``). The labelled indices
      form an endless stream that is reshuffled every time it runs out (so, with few labelled slices, each is seen
      many times per epoch).
    - Without unlabelled indices (100 % labels), or with ``labeled_batch_size == batch_size`` (unlabelled indices are
      then ignored), every batch holds ``batch_size`` labelled indices and an epoch is one pass over them.
    - Every batch is full. With ``drop_last=True`` the tail of the epoch's stream that does not fill a batch on every
      rank is dropped (it is in another position next epoch); with ``drop_last=False`` the stream is padded by
      wrapping around, so every index is seen at least once per epoch.
    - Distributed: the epoch stream (the same permutation on every rank) is split into ``num_replicas`` disjoint
      shards, so every rank gets different samples and the same number of batches; each rank's labelled stream is
      a disjoint shard of the labelled indices for the epoch (padded by wrapping when the labelled count is not a
      multiple of ``num_replicas``), reshuffled locally whenever it runs out.
    - The order depends only on ``(seed, epoch, rank)``: call :meth:`set_epoch` at the start of every epoch (see
      :func:`set_loader_epoch`; the trainers of :mod:`ideal_components.engines` do it themselves).

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
        per_step = self._per_batch * num_replicas
        n = len(self._epoch_stream)
        self._num_batches = n // per_step if self.drop_last else -(-n // per_step)
        if self._num_batches == 0:
            kind = "labelled" if self.labeled_only else "unlabelled"
            raise ValueError(
                f"{n} {kind} indices are too few for one batch of {self._per_batch} {kind} indices on each of "
                f"{num_replicas} rank(s) with drop_last=True; use drop_last=False or a smaller batch."
            )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used (with ``seed``) to shuffle; call before iterating each epoch."""
        self.epoch = int(epoch)

    def _permutation(self, indices: list[int], stream: int, cycle: int = 0) -> list[int]:
        if not self.shuffle:
            return list(indices)
        rng = np.random.default_rng([self.seed & _MASK64, self.epoch & _MASK64, stream, cycle])
        return [indices[i] for i in rng.permutation(len(indices))]

    @staticmethod
    def _wrap_to(seq: list[int], length: int) -> list[int]:
        if len(seq) >= length:
            return seq[:length]
        reps = -(-length // len(seq))
        return (seq * reps)[:length]

    def _shard(self, seq: list[int], per_rank: int) -> list[int]:
        total = self._wrap_to(seq, per_rank * self.num_replicas)
        return total[self.rank :: self.num_replicas]

    def _labeled_stream(self) -> Iterator[int]:
        # this epoch's shard (disjoint across ranks), then endless local reshuffles of it
        per_rank = -(-len(self.labeled_indices) // self.num_replicas)
        shard = self._shard(self._permutation(self.labeled_indices, _LABELED_STREAM), per_rank)
        yield from shard
        cycle = 1
        while True:
            if self.shuffle:
                rng = np.random.default_rng(
                    [self.seed & _MASK64, self.epoch & _MASK64, _LABELED_STREAM, cycle, self.rank]
                )
                shard = [shard[i] for i in rng.permutation(len(shard))]
            yield from shard
            cycle += 1

    def __iter__(self) -> Iterator[list[int]]:
        stream = _LABELED_ONLY_STREAM if self.labeled_only else _UNLABELED_STREAM
        main = self._shard(self._permutation(self._epoch_stream, stream), self._num_batches * self._per_batch)
        labeled = None if self.labeled_only else self._labeled_stream()
        for b in range(self._num_batches):
            chunk = main[b * self._per_batch : (b + 1) * self._per_batch]
            if labeled is not None:
                chunk = [next(labeled) for _ in range(self.labeled_batch_size)] + chunk
            yield chunk

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
