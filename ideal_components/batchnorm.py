"""Batch normalisation with separate statistics per group of a batch, in one forward.

Cross-pseudo-label batches mix a few labelled volumes (half of every batch) with many unlabelled ones; normalising
both groups with the mixed batch's statistics biases them (see
:class:`~ideal_components.engines.CrossPseudoLabelTrainer`). One forward per group avoids that but splits every
convolution into half batches. :class:`GroupBatchNorm2d` (and its 1D / 3D versions) runs the convolutions once on
the whole batch and normalises each group with its own statistics; outputs, loss and gradients equal one forward per
group (``tests/test_batchnorm.py`` checks 1e-5 on ResNet18 and ResNet50). How the groups are normalised
(``"slices"`` or ``"concat"``, the same numbers) is :func:`default_implementation`'s choice per device.

Running statistics: in training mode each group updates the running mean and variance in turn, in batch order (the
labelled group first when the trainer sorts the batch), exactly as one forward per group would: with momentum ``m``
one step gives ``r <- (1 - m)^2 r + m (1 - m) mean_labelled + m mean_unlabelled``. Inference and the bundles'
validation (eval mode) use these running statistics, dominated by the unlabelled slices but not biased towards the
labelled few, so the checkpoint selected is the one that does best with them.

Use :func:`convert_group_batch_norm` to swap a network's BatchNorm layers (sharing their parameters and buffers,
so state dicts and optimizers are unaffected) and :func:`batch_norm_groups` to set the group sizes for a forward.

Example::

    net = convert_group_batch_norm(TwoBranchFlexibleUNet(out_channels=4, backbone="resnet18"))
    x = torch.cat([labelled, unlabelled])  # groups must be contiguous along the batch axis
    with batch_norm_groups(net, (len(labelled), len(unlabelled))):
        logits_a, logits_b = net.forward_both(x)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "GroupBatchNorm1d",
    "GroupBatchNorm2d",
    "GroupBatchNorm3d",
    "default_implementation",
    "convert_group_batch_norm",
    "batch_norm_groups",
    "group_batch_norm_layers",
]


class _GroupBatchNormFunction(torch.autograd.Function):
    """Batch normalisation of consecutive groups of the batch, each group with its own batch statistics.

    Forward and backward call the native kernels (``native_batch_norm`` / ``native_batch_norm_backward``) once per
    group, writing into slices of one output (and one input gradient) tensor: the same arithmetic as one BatchNorm
    forward per group, without concatenating the groups' results (a copy of every activation, forward and backward,
    which cost 10 % of a ResNet50 step on CPU).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, sizes, factors, eps):  # type: ignore[override]
        out = torch.empty_like(x)
        save_means, save_invstds = [], []
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype  # the kernels' statistics type
        start = 0
        for n, factor in zip(sizes, factors):
            mean, invstd = x.new_empty(0, dtype=acc), x.new_empty(0, dtype=acc)
            torch.ops.aten.native_batch_norm.out(
                x.narrow(0, start, n), weight, bias, running_mean, running_var, True, factor, eps,
                out=out.narrow(0, start, n), save_mean=mean, save_invstd=invstd,
            )  # fmt: skip
            save_means.append(mean), save_invstds.append(invstd)
            start += n
        ctx.sizes, ctx.eps = tuple(sizes), eps
        ctx.save_for_backward(x, weight, *save_means, *save_invstds)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, *saved = ctx.saved_tensors
        k = len(ctx.sizes)
        means, invstds = saved[:k], saved[k:]
        channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(weight) if need_b else None
        start = 0
        for n, mean, invstd in zip(ctx.sizes, means, invstds):
            gx = grad_x.narrow(0, start, n) if need_x else x.new_empty(0)
            gw, gb = (x if weight is None else weight).new_empty(0), (x if weight is None else weight).new_empty(0)
            torch.ops.aten.native_batch_norm_backward.out(
                grad_out.narrow(0, start, n), x.narrow(0, start, n), weight, None, None, mean, invstd, True, ctx.eps,
                [need_x, need_w, need_b], out0=gx, out1=gw, out2=gb,
            )  # fmt: skip
            if need_w:
                grad_w += gw
            if need_b:
                grad_b += gb
            start += n
        return grad_x, grad_w, grad_b, None, None, None, None, None


def default_implementation(device_type: str) -> str:
    """The per-group BatchNorm implementation used on a device type when none is set.

    ``"slices"`` on the CPU: the native kernels write into slices of one output, no copy of the activations (see
    ``_GroupBatchNormFunction``). ``"concat"`` elsewhere: on CUDA cuDNN's BatchNorm per group plus one concatenation
    was the faster of the two (``benchmarks/results/gpu_options.md``), and every backend has the stock kernels.

    Example::

        >>> default_implementation("cpu"), default_implementation("cuda")
        ('slices', 'concat')
    """
    return "slices" if device_type == "cpu" else "concat"


class _GroupBatchNormMixin:
    """``forward`` normalises each group of ``group_sizes`` (contiguous along the batch axis) on its own."""

    #: sizes of the consecutive groups of the next forwards' batches; ``None``: the whole batch is one group
    group_sizes: tuple[int, ...] | None = None
    #: how the groups are normalised: ``"slices"`` (the native kernels write into slices of one output, no copy of
    #: the activations) or ``"concat"`` (the stock BatchNorm per group, cuDNN's on CUDA, then one concatenation);
    #: ``None``: :func:`default_implementation` of the input's device. Both give the same numbers
    #: (``tests/test_batchnorm.py``).
    implementation: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = self.group_sizes
        # eval mode with running statistics normalises every slice alike: no need to split
        if sizes is None or not (self.training or self.running_mean is None):  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        if sum(sizes) != x.shape[0]:
            raise ValueError(f"group sizes {tuple(sizes)} do not add up to the batch size {x.shape[0]}.")
        per_channel = x.numel() // max(x.shape[0] * x.shape[1], 1)
        if min(sizes) * per_channel < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got groups {tuple(sizes)} of input size "
                f"{tuple(x.shape)}."
            )
        impl = self.implementation or default_implementation(x.device.type)
        if impl not in ("slices", "concat"):
            raise ValueError(f"implementation must be 'slices', 'concat' or None, got {impl!r}.")
        # torch.compile traces the stock forward of each group (it fuses the concatenation itself)
        if impl == "concat" or torch.compiler.is_compiling():
            plain_forward = super().forward  # type: ignore[misc]
            return torch.cat([plain_forward(chunk) for chunk in x.split(list(sizes))])
        track = self.training and self.track_running_stats  # type: ignore[attr-defined]
        factors = [self._update_factor() if track else 0.0 for _ in sizes]
        running = (self.running_mean, self.running_var) if track else (None, None)  # type: ignore[attr-defined]
        return _GroupBatchNormFunction.apply(
            x, self.weight, self.bias, *running, sizes, factors, self.eps  # type: ignore[attr-defined]
        )

    def _update_factor(self) -> float:
        """Count one more batch and return the running-average factor, as ``torch.nn.BatchNorm`` does per forward."""
        if self.num_batches_tracked is None:  # type: ignore[attr-defined]
            return 0.0 if self.momentum is None else self.momentum  # type: ignore[attr-defined]
        self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
        if self.momentum is None:  # type: ignore[attr-defined]
            return 1.0 / float(self.num_batches_tracked)  # type: ignore[attr-defined]
        return self.momentum  # type: ignore[attr-defined]


class GroupBatchNorm1d(_GroupBatchNormMixin, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with per-group batch statistics (see the module docstring)."""


class GroupBatchNorm2d(_GroupBatchNormMixin, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with per-group batch statistics (see the module docstring).

    Shapes:
        ``(B, C, H, W)`` -> ``(B, C, H, W)``; ``group_sizes`` must add up to ``B``.

    Example:
        >>> bn = GroupBatchNorm2d(8)
        >>> bn.group_sizes = (2, 3)
        >>> bn(torch.randn(5, 8, 4, 4)).shape
        torch.Size([5, 8, 4, 4])
    """


class GroupBatchNorm3d(_GroupBatchNormMixin, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with per-group batch statistics (see the module docstring)."""


_GROUP_TYPES: dict[type, type] = {
    nn.BatchNorm1d: GroupBatchNorm1d,
    nn.BatchNorm2d: GroupBatchNorm2d,
    nn.BatchNorm3d: GroupBatchNorm3d,
}


def _converted(bn: nn.Module) -> nn.Module:
    new = _GROUP_TYPES[type(bn)](bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    # share, not copy: the optimizer's parameters, DDP's buffers and the state dict keys stay the same
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    new.train(bn.training)
    return new


def convert_group_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` of ``module`` by its group version, in place.

    Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, but the new layers share the old layers' parameters
    and buffers, so an optimizer built before the conversion keeps training them and the state dict (keys and
    values) is unchanged. Subclasses of BatchNorm (e.g. ``SyncBatchNorm``, whose statistics span processes) are
    left alone. Converting twice is a no-op.

    Args:
        module: any network, e.g. :class:`~ideal_components.networks.TwoBranchFlexibleUNet`.

    Returns:
        ``module`` (or the converted layer when ``module`` itself is a BatchNorm).

    Example:
        >>> net = convert_group_batch_norm(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)))
        >>> type(net[1]).__name__
        'GroupBatchNorm2d'
    """
    if type(module) in _GROUP_TYPES:
        return _converted(module)
    for name, child in module.named_children():
        new = convert_group_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def group_batch_norm_layers(module: nn.Module) -> list[nn.Module]:
    """The group BatchNorm layers of ``module`` (empty when it was not converted)."""
    return [m for m in module.modules() if isinstance(m, _GroupBatchNormMixin)]


@contextlib.contextmanager
def batch_norm_groups(module: nn.Module | Sequence[nn.Module], sizes: Sequence[int] | None) -> Iterator[None]:
    """Within the context, the group BatchNorm layers of ``module`` normalise groups of ``sizes`` separately.

    Args:
        module: a network converted with :func:`convert_group_batch_norm`, or the list of its group layers
            (:func:`group_batch_norm_layers`, to save the module traversal on every step).
        sizes: sizes of the consecutive groups along the batch axis; ``None``: one group (plain BatchNorm).

    Raises:
        ValueError: a size is not positive.
    """
    layers = group_batch_norm_layers(module) if isinstance(module, nn.Module) else list(module)
    value = None if sizes is None else tuple(int(s) for s in sizes)
    if value is not None and min(value) < 1:
        raise ValueError(f"group sizes must be positive, got {value}.")
    previous = [m.group_sizes for m in layers]
    for m in layers:
        m.group_sizes = value
    try:
        yield
    finally:
        for m, p in zip(layers, previous):
            m.group_sizes = p
