"""Batches for Chaitanya et al.'s domain-specific positives (``G^D``): several volumes x all their partitions.

:class:`VolumePartitionBatchSampler` yields lists of dataset indices (slice items of
:func:`~ideal_components.data.slices.expand_to_slices`); pass it as ``batch_sampler=`` to a DataLoader. Every batch
holds ``volumes_per_batch`` distinct volumes and, from each, one slice of each of its ``n_parts`` partitions
(:func:`~ideal_components.rival_losses.partition_index`), so that every slice has positives (the same partition of
the other volumes) and negatives (the other partitions) in its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ideal_components.distributed import get_rank, get_world_size

__all__ = ["VolumePartitionBatchSampler"]

logger = logging.getLogger(__name__)
_MASK64 = (1 << 64) - 1


def _partition(slice_index: int, num_slices: int, n_parts: int) -> int:
    return (int(slice_index) * n_parts) // int(num_slices)


class VolumePartitionBatchSampler(Sampler[list[int]]):
    """``volumes_per_batch`` volumes x ``n_parts`` partitions, one slice each, per batch (volume-major order).

    - An epoch shuffles the volumes and cuts them into groups of ``volumes_per_batch``; each group is one batch, and
      within it each (volume, partition) gives one slice drawn at random from that partition. So an epoch sees every
      volume once (the last incomplete group is dropped) and ``len(sampler)`` is
      ``n_volumes // (volumes_per_batch * num_replicas)``.
    - A volume with fewer slices than ``n_parts`` has an empty partition: it is left out (a warning names it).
    - The order depends only on ``(seed, epoch)``, the rank and the pass: call :meth:`set_epoch` every epoch (the
      trainers and :class:`~ideal_components.handlers.EpochSeedHandler` do), so a resumed run repeats an
      uninterrupted one. When an epoch is longer than one pass (an ``epoch_length`` above ``len(sampler)``, as
      ``pretrain.json`` sets for every pre-training, the local one's steps per epoch), every further pass within
      the epoch draws a fresh shuffle and fresh slices (a pass counter in the seed), never a replay of the first.
    - Distributed: the epoch's groups (the same on every rank) are dealt out to the ranks, group ``g`` to rank
      ``g % num_replicas``; every rank gets the same number of batches. The loss sees its own rank's batch only.

    Args:
        items: the slice items, in dataset order; each needs ``volume_key`` (default ``"id"``), ``"slice"`` and
            ``"num_slices"``.
        n_parts: partitions per volume (>= 2).
        volumes_per_batch: distinct volumes per batch (>= 2: with one volume no slice would have a positive from
            another volume).
        seed: base seed of the shuffles.
        num_replicas, rank: distributed processes and this one's rank (default: from ``torch.distributed``).
        volume_key: the item key that names a slice's volume.

    Raises:
        ValueError: ``volumes_per_batch < 2``, ``n_parts < 2``, an item without its keys, or fewer eligible volumes
            than one batch per rank needs.

    Example:
        >>> items = [{"id": f"v{v}", "slice": k, "num_slices": 8} for v in range(4) for k in range(8)]
        >>> sampler = VolumePartitionBatchSampler(items, n_parts=4, volumes_per_batch=2)
        >>> len(sampler), [len(b) for b in sampler]
        (2, [8, 8])
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        n_parts: int = 4,
        volumes_per_batch: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        volume_key: str = "id",
    ) -> None:
        n_parts, volumes_per_batch = int(n_parts), int(volumes_per_batch)
        if n_parts < 2:
            raise ValueError(f"n_parts must be >= 2, got {n_parts}.")
        if volumes_per_batch < 2:
            raise ValueError(
                f"volumes_per_batch must be >= 2 (a single volume gives no positive from another volume), got "
                f"{volumes_per_batch}; raise batch_size to at least 2 x n_parts."
            )
        num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        rank = get_rank() if rank is None else int(rank)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}.")
        # volume -> partition -> dataset indices, volumes in order of first appearance
        volumes: dict[Any, list[list[int]]] = {}
        for index, item in enumerate(items):
            missing = [k for k in (volume_key, "slice", "num_slices") if k not in item]
            if missing:
                raise ValueError(f"slice item #{index} has no {missing}: VolumePartitionBatchSampler needs them.")
            parts = volumes.setdefault(item[volume_key], [[] for _ in range(n_parts)])
            parts[_partition(item["slice"], item["num_slices"], n_parts)].append(index)
        short = [v for v, parts in volumes.items() if not all(parts)]
        if short:
            logger.warning("left out of the G^D batches (a partition without slices): %s", short)
        self.volumes = [parts for v, parts in volumes.items() if all(parts)]
        self.volume_ids = [v for v, parts in volumes.items() if all(parts)]
        self.n_parts, self.volumes_per_batch = n_parts, volumes_per_batch
        self.seed, self.num_replicas, self.rank = int(seed), num_replicas, rank
        self.epoch = 0
        self._pass_epoch, self._pass = None, 0  # the passes made in the current epoch
        self._num_batches = len(self.volumes) // (volumes_per_batch * num_replicas)
        if self._num_batches == 0:
            raise ValueError(
                f"{len(self.volumes)} volumes with slices in all {n_parts} partitions are too few for one batch of "
                f"{volumes_per_batch} volumes on each of {num_replicas} rank(s)."
            )

    @property
    def batch_size(self) -> int:
        """Slices per batch: ``volumes_per_batch * n_parts``."""
        return self.volumes_per_batch * self.n_parts

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used (with ``seed``) to shuffle; call before iterating each epoch."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        if self._pass_epoch != self.epoch:  # a new epoch starts at its first pass
            self._pass_epoch, self._pass = self.epoch, 0
        passes, self._pass = self._pass, self._pass + 1
        base = [self.seed & _MASK64, self.epoch & _MASK64]
        rng = np.random.default_rng(base if passes == 0 else base + [2, passes])
        order = rng.permutation(len(self.volumes))
        for b in range(self._num_batches):
            group = b * self.num_replicas + self.rank
            chosen = order[group * self.volumes_per_batch : (group + 1) * self.volumes_per_batch]
            # the slice draws depend on (seed, epoch, pass, group) only: the same on any rank count that deals it
            pick = np.random.default_rng(base + [1, int(group)] + ([passes] if passes else []))
            yield [int(parts[pick.integers(len(parts))]) for v in chosen for parts in self.volumes[v]]

    def __len__(self) -> int:
        return self._num_batches
