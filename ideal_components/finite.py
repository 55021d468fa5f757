"""Non-finite values (NaN, Inf) in weights, optimiser states and checkpoints: found, named, never written.

A NaN that reaches the weights spreads to every tensor within a few steps, and a run that goes on writes it into the
checkpoints, the encoder file and ``model.pt``. :func:`non_finite_entries` lists the floating-point tensors of a
(nested) state that hold a non-finite value, with one device-to-host read for the whole state;
:func:`check_finite` raises :class:`NonFiniteError` naming them. The writers of
:mod:`ideal_components.handlers` and :func:`ideal_components.encoders.save_encoder` call it before writing, and
:class:`ideal_components.handlers.NonFiniteGuard` stops training at the first non-finite loss or weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["NonFiniteError", "non_finite_entries", "check_finite"]


class NonFiniteError(FloatingPointError):
    """A loss, weight or state holds NaN or Inf; the message says where (iteration, batch, tensor names)."""


def _float_tensors(obj: Any, prefix: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            out.append((prefix, obj.detach()))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _float_tensors(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _float_tensors(v, f"{prefix}[{i}]" if prefix else f"[{i}]", out)
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):
        _float_tensors(obj.state_dict(), prefix, out)


def non_finite_entries(obj: Any) -> list[str]:
    """The names of the floating-point tensors in ``obj`` that hold NaN or Inf.

    ``obj`` is a tensor, a module / optimiser / anything with ``state_dict()``, or nested mappings and sequences of
    those (a checkpoint's ``save_dict``). The test runs on each tensor's device and the flags are read with one
    device-to-host copy per device.

    Example:
        >>> non_finite_entries({"net": {"w": torch.tensor([1.0, float("nan")]), "step": torch.tensor(3)}})
        ['net.w']
    """
    tensors: list[tuple[str, torch.Tensor]] = []
    _float_tensors(obj, "", tensors)
    if not tensors:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    bad: list[int] = []
    for indices in by_device.values():
        flags = torch.stack([~torch.isfinite(tensors[i][1]).all() for i in indices]).cpu()
        bad += [i for i, flag in zip(indices, flags.tolist()) if flag]
    return [tensors[i][0] for i in sorted(bad)]


def check_finite(obj: Any, what: str, limit: int = 8) -> None:
    """Raise :class:`NonFiniteError` when :func:`non_finite_entries` finds any tensor of ``obj`` with NaN / Inf.

    Args:
        obj: what is about to be written (a state dict, a checkpoint's save dict, a module).
        what: how to name it in the message (e.g. ``"checkpoint models/train_checkpoint_epoch=3.pt"``).
        limit: how many tensor names the message lists.

    Example::

        check_finite(encoder.state_dict(), "encoder file models/pretrained_encoder.pt")
    """
    bad = non_finite_entries(obj)
    if bad:
        names = ", ".join(bad[:limit]) + (f" and {len(bad) - limit} more" if len(bad) > limit else "")
        raise NonFiniteError(f"not writing {what}: {len(bad)} tensor(s) hold NaN/Inf values ({names}).")
