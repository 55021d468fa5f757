"""Distributed-training facts every module asks the same way: rank, world size, main process, the bare network.

``torch.distributed`` is the source (the bundles' ``multi_gpu_train.json`` initialises it with ``torchrun``); without
an initialised process group the process is rank 0 of a world of 1. Code that must run on rank 0 only (checkpoints,
encoder files, TensorBoard, metric files) asks :func:`is_main_process`.

Example::

    >>> from ideal_components.distributed import get_rank, get_world_size, unwrap_network
    >>> get_rank(), get_world_size()
    (0, 1)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "unwrap_network"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes files."""
    return get_rank() == 0


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The bare module of a ``DistributedDataParallel`` / ``DataParallel`` wrapped network (``.module``)."""
    while isinstance(getattr(network, "module", None), torch.nn.Module):
        network = network.module  # type: ignore[assignment]
    return network
