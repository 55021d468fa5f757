"""The contrastive losses of IDEAL's two strongest rivals, written from their papers' definitions (and their code's).

- :class:`PositionalContrastiveLoss`: PCL (Zeng et al., MICCAI 2021): pooled slice features; a slice's positives are
  the slices whose relative position along the slice axis is within ``threshold`` of its own (its other view
  included), the negatives every other slice of the batch.
- :class:`PartitionContrastiveLoss`: Chaitanya et al. (NeurIPS 2020), global loss with domain-specific positives
  ``G^D``: each volume is split into ``n_parts`` partitions along the slice axis; a slice's positives are its other
  view and the slices of the same partition of *other* volumes; its negatives are the slices of other partitions.
- :class:`LocalRegionContrastiveLoss`: Chaitanya et al.'s local loss on a decoder feature map: 13 fixed 3x3 regions
  per image, the positive of a region is the same region in the other view, its negatives 5 fixed nearby regions
  taken from both views.

Every loss takes the two views' projections ``z1``, ``z2`` (view 1 of sample ``i`` is ``z1[i]``), works in float32
(float64 kept) outside autocast, and uses log-sum-exp forms, so small temperatures stay finite. Each has
``retrieval_accuracy(z1, z2, ...)``: the fraction of anchors whose most similar other feature is one of their
positives (logged as the pretext accuracy).

Relative slice positions come from the datalist's slice items (:func:`~ideal_components.data.slices.expand_to_slices`
gives ``slice`` and ``num_slices``): :func:`relative_position` and :func:`partition_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from ideal_components.losses import _autocast_off, _check_temperature, _float32, _plain

__all__ = [
    "relative_position",
    "partition_index",
    "PositionalContrastiveLoss",
    "PartitionContrastiveLoss",
    "LocalRegionContrastiveLoss",
    "local_regions",
]


def relative_position(slice_index: Any, num_slices: Any) -> torch.Tensor:
    """``slice / (num_slices - 1)`` in ``[0, 1]`` (float64): 0 the first slice, 1 the last; a volume of one slice
    gives 0.5.

    Raises:
        ValueError: a slice outside ``[0, num_slices)`` or ``num_slices < 1``.

    Example:
        >>> relative_position([0, 2, 4, 0], [5, 5, 5, 1]).tolist()
        [0.0, 0.5, 1.0, 0.5]
    """
    k = torch.as_tensor(_plain(slice_index)).reshape(-1).double()
    n = torch.as_tensor(_plain(num_slices)).reshape(-1).double()
    if k.shape != n.shape:
        raise ValueError(f"slice_index and num_slices must have one entry per sample, got {k.numel()}, {n.numel()}.")
    if bool((n < 1).any()) or bool((k < 0).any()) or bool((k >= n).any()):
        raise ValueError(f"need 0 <= slice < num_slices, got slices {k.tolist()} of {n.tolist()}.")
    return torch.where(n > 1, k / (n - 1).clamp_min(1), torch.full_like(k, 0.5))


def partition_index(slice_index: Any, num_slices: Any, n_parts: int) -> torch.Tensor:
    """The partition of each slice when its volume is cut into ``n_parts`` equal runs of slices:
    ``floor(slice * n_parts / num_slices)`` (long), in ``[0, n_parts)``.

    With ``num_slices`` not a multiple of ``n_parts`` the partitions differ by at most one slice; with fewer slices
    than ``n_parts`` some partitions are empty.

    Example:
        >>> partition_index([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10] * 10, 4).tolist()
        [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    """
    n_parts = int(n_parts)
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}.")
    k = torch.as_tensor(_plain(slice_index)).reshape(-1).long()
    n = torch.as_tensor(_plain(num_slices)).reshape(-1).long()
    if k.shape != n.shape:
        raise ValueError(f"slice_index and num_slices must have one entry per sample, got {k.numel()}, {n.numel()}.")
    if bool((n < 1).any()) or bool((k < 0).any()) or bool((k >= n).any()):
        raise ValueError(f"need 0 <= slice < num_slices, got slices {k.tolist()} of {n.tolist()}.")
    return torch.div(k * n_parts, n, rounding_mode="floor")


def _pooled(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``(2B, C)`` L2-normalised: the two views' features (spatial dims averaged), view 1 first."""
    if not isinstance(z1, torch.Tensor) or not isinstance(z2, torch.Tensor):
        raise ValueError("z1 and z2 must be torch.Tensors.")
    z1, z2 = _plain(z1), _plain(z2)
    if z1.ndim < 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must be (B, C[, *spatial]) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}."
        )
    if z1.shape[0] < 1:
        raise ValueError("empty batch.")
    z = torch.cat([_float32(z1), _float32(z2)], dim=0)
    if z.ndim > 2:
        z = z.flatten(2).mean(dim=2)
    return F.normalize(z, dim=1)


def _retrieval(z: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose most similar other row is a positive (no gradient)."""
    with torch.no_grad():
        sim = z @ z.T
        sim.fill_diagonal_(-float("inf"))
        best = sim.argmax(dim=1)
        return positives.gather(1, best[:, None]).squeeze(1).float().mean()


class PositionalContrastiveLoss(_Loss):
    """PCL's loss (Zeng et al., MICCAI 2021): a supervised-contrastive loss whose "labels" are slice positions.

    With ``z_a`` the ``2B`` L2-normalised pooled features (both views), ``p_a`` their relative slice positions
    (:func:`relative_position`; both views of a slice share it) and ``t`` the temperature, the positives of anchor
    ``a`` are ``P(a) = {b != a : |p_a - p_b| < threshold}`` (its other view always among them; slices of any volume,
    the anchor's own volume included, as in the authors' code) and::

        L = 1/(2B) * sum_a  -1/|P(a)| * sum_{b in P(a)} log( exp(z_a.z_b/t) / sum_{c != a} exp(z_a.z_c/t) )

    The authors' code (SupConLoss) multiplies this by ``t / 0.07``; that constant factor is left out here.

    Args:
        temperature: ``t > 0``, default 0.1 (theirs).
        threshold: the largest position difference (exclusive) of a positive pair, default 0.1 (their published
            command; their parser's default is 0.05).

    Shapes:
        z1, z2: ``(B, C)`` or ``(B, C, *spatial)`` (averaged); slice_index, num_slices: ``B`` integers. ``B >= 2``.

    Example:
        >>> loss = PositionalContrastiveLoss()
        >>> loss(torch.randn(4, 8), torch.randn(4, 8), slice_index=[0, 1, 2, 3], num_slices=[4] * 4).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, threshold: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in (0, 1] (0 would leave no positive), got {threshold}.")
        self.threshold = float(threshold)

    def positive_mask(self, slice_index: Any, num_slices: Any) -> torch.Tensor:
        """``(2B, 2B)`` bool: ``[a, b]`` true when ``b`` is a positive of ``a`` (view 1 rows first)."""
        p = relative_position(slice_index, num_slices).repeat(2)
        mask = (p[:, None] - p[None, :]).abs() < self.threshold
        mask.fill_diagonal_(False)
        return mask

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, slice_index: Any, num_slices: Any) -> torch.Tensor:
        with _autocast_off(z1.device):
            z = _pooled(z1, z2)
            if z.shape[0] < 4:
                raise ValueError(
                    f"PositionalContrastiveLoss needs a batch of at least 2 slices, got {z.shape[0] // 2}."
                )
            positives = self.positive_mask(slice_index, num_slices).to(z.device)
            if positives.shape[0] != z.shape[0]:
                raise ValueError(f"{positives.shape[0] // 2} slice positions for a batch of {z.shape[0] // 2}.")
            logits = (z @ z.T) / self.temperature
            logits = logits.masked_fill(torch.eye(z.shape[0], dtype=torch.bool, device=z.device), -float("inf"))
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            pos = positives.to(log_prob.dtype)
            per_anchor = -(log_prob.masked_fill(~positives, 0.0) * pos).sum(1) / pos.sum(1)
        return per_anchor.mean()

    def retrieval_accuracy(self, z1: torch.Tensor, z2: torch.Tensor, slice_index: Any, num_slices: Any) -> torch.Tensor:
        """Fraction of the ``2B`` anchors whose most similar other feature is one of their positives."""
        with _autocast_off(z1.device):
            z = _pooled(z1, z2)
            return _retrieval(z, self.positive_mask(slice_index, num_slices).to(z.device))


class PartitionContrastiveLoss(_Loss):
    """Chaitanya et al.'s global contrastive loss with domain-specific positives (``G^D``, NeurIPS 2020).

    Each slice's partition is :func:`partition_index` of its slice position (``n_parts`` partitions per volume).
    With the ``2B`` L2-normalised pooled features ``z_a`` (both views), for anchor ``a``:

    - positives ``P(a)``: its other view, and every feature (either view) of a slice of the same partition of a
      *different* volume;
    - negatives ``N(a)``: every feature of a slice of a different partition (any volume);
    - slices of the same partition of the same volume (which :class:`~ideal_components.data.partition_sampler.
      VolumePartitionBatchSampler` never puts in one batch) are neither.

    Each positive pair is one InfoNCE term whose denominator holds that positive and the negatives only (the other
    positives are left out, as in the authors' code)::

        l(a, b) = -log( exp(z_a.z_b/t) / (exp(z_a.z_b/t) + sum_{n in N(a)} exp(z_a.z_n/t)) )
        L = mean over all ordered pairs (a, b), b in P(a)

    The authors' code sums a hand-picked subset of these pairs (each slice with its view and with one slice of the
    same partition of the next volume, both views); all pairs are averaged here.

    A batch with a single volume is allowed: every anchor's only positive is then its own other view (``G^R`` with
    the same-partition slices left out of the negatives). A batch whose slices all share one partition has no
    negative: ``ValueError``.

    Args:
        temperature: ``t > 0``, default 0.1 (theirs).
        n_parts: partitions per volume, default 4 (theirs).

    Shapes:
        z1, z2: ``(B, C)`` or ``(B, C, *spatial)`` (averaged); slice_index, num_slices: ``B`` integers; volume: ``B``
        volume ids (strings or integers).
    """

    def __init__(self, temperature: float = 0.1, n_parts: int = 4) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if int(n_parts) < 2 or int(n_parts) != n_parts:
            raise ValueError(f"n_parts must be an integer >= 2, got {n_parts!r}.")
        self.n_parts = int(n_parts)

    def masks(self, slice_index: Any, num_slices: Any, volume: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positives, negatives)``, each ``(2B, 2B)`` bool (view 1 rows first; see the class docstring)."""
        part = partition_index(slice_index, num_slices, self.n_parts)
        volume = list(volume.tolist() if isinstance(volume, torch.Tensor) else volume)
        if len(volume) != part.numel():
            raise ValueError(f"{len(volume)} volume ids for {part.numel()} slices.")
        codes = {v: i for i, v in enumerate(dict.fromkeys(volume))}
        vol = torch.tensor([codes[v] for v in volume], dtype=torch.long)
        b = part.numel()
        part, vol = part.repeat(2), vol.repeat(2)
        sample = torch.arange(b).repeat(2)
        same_part = part[:, None] == part[None, :]
        other_view = (sample[:, None] == sample[None, :]) & ~torch.eye(2 * b, dtype=torch.bool)
        positives = (same_part & (vol[:, None] != vol[None, :])) | other_view
        return positives, ~same_part

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, slice_index: Any, num_slices: Any, volume: Sequence[Any]
    ) -> torch.Tensor:
        with _autocast_off(z1.device):
            z = _pooled(z1, z2)
            positives, negatives = (m.to(z.device) for m in self.masks(slice_index, num_slices, volume))
            if positives.shape[0] != z.shape[0]:
                raise ValueError(f"{positives.shape[0] // 2} slice positions for a batch of {z.shape[0] // 2}.")
            if not bool(negatives.any(dim=1).all()):
                raise ValueError(
                    "PartitionContrastiveLoss: some slices have no negative (every slice of the batch is in their "
                    "partition); draw batches across partitions (VolumePartitionBatchSampler)."
                )
            sim = (z @ z.T) / self.temperature
            lse_neg = torch.logsumexp(sim.masked_fill(~negatives, -float("inf")), dim=1, keepdim=True)
            terms = torch.logaddexp(sim, lse_neg) - sim  # -log(e^s / (e^s + sum_neg)) for every (a, b)
            return terms[positives].mean()

    def retrieval_accuracy(
        self, z1: torch.Tensor, z2: torch.Tensor, slice_index: Any, num_slices: Any, volume: Sequence[Any]
    ) -> torch.Tensor:
        """Fraction of the ``2B`` anchors whose most similar other feature is one of their positives."""
        with _autocast_off(z1.device):
            z = _pooled(z1, z2)
            return _retrieval(z, self.masks(slice_index, num_slices, volume)[0].to(z.device))


# Chaitanya et al.'s 13 local regions and, per region, its 5 negative regions (their code, local_reg_size=1,
# no_of_local_regions=13, no_of_neg_local_regions=5): top-left corners on the grid 0, m/4, m/2, 3m/4, m (symbols
# 0, 1, 2, 3, 4 below; m = map size - 4, each fraction rounded down) of a region of 3x3 cells.
_POSITIVES = ((0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4), (4, 0), (4, 2), (4, 4), (1, 1), (1, 3), (3, 1), (3, 3))
_NEGATIVES = (
    ((0, 2), (1, 1), (1, 2), (2, 0), (2, 1)),
    ((0, 0), (0, 4), (1, 1), (1, 3), (2, 2)),
    ((0, 2), (1, 2), (1, 3), (2, 3), (2, 4)),
    ((0, 0), (1, 1), (2, 2), (4, 0), (3, 1)),
    ((1, 1), (1, 3), (3, 1), (3, 3), (2, 0)),
    ((0, 4), (2, 2), (4, 4), (1, 3), (3, 3)),
    ((2, 0), (2, 1), (4, 2), (3, 1), (3, 2)),
    ((2, 2), (4, 0), (4, 4), (3, 1), (3, 3)),
    ((2, 3), (2, 4), (4, 2), (3, 3), (3, 2)),
    ((0, 0), (0, 2), (2, 0), (2, 2), (1, 3)),
    ((0, 2), (0, 4), (1, 1), (2, 2), (2, 4)),
    ((2, 0), (2, 2), (4, 0), (4, 2), (3, 3)),
    ((2, 2), (2, 4), (4, 2), (4, 4), (3, 1)),
)


def local_regions(height: int, width: int, region_size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners ``(y, x)`` of the 13 positive regions ``(13, 2)`` and of their 5 negatives ``(13, 5, 2)`` on a
    ``height x width`` map (Chaitanya et al.'s layout: corners on the grid ``0, m/4, m/2, 3m/4, m`` with
    ``m = size - region_size - 1``, rounded down).

    Raises:
        ValueError: a map too small for the layout (each axis needs ``region_size + 5`` cells: 8 for 3x3 regions).
    """
    if min(height, width) < region_size + 5:
        raise ValueError(
            f"the local regions need a feature map of at least {region_size + 5}x{region_size + 5} cells, got "
            f"{height}x{width}."
        )

    def grid(size: int) -> list[int]:
        m = size - region_size - 1
        return [0, m // 4, m // 2, (3 * m) // 4, m]

    gy, gx = grid(height), grid(width)
    pos = torch.tensor([[gy[i], gx[j]] for i, j in _POSITIVES], dtype=torch.long)
    neg = torch.tensor([[[gy[i], gx[j]] for i, j in row] for row in _NEGATIVES], dtype=torch.long)
    return pos, neg


class LocalRegionContrastiveLoss(_Loss):
    """Chaitanya et al.'s local contrastive loss on a dense (decoder) feature map, two views of each image.

    A region is a ``region_size x region_size`` block of cells, flattened to one vector (``C * region_size^2``) and
    L2-normalised. For image ``i``, region ``r`` (one of :func:`local_regions`' 13) and ``f1 = f(z1[i], r)``,
    ``f2 = f(z2[i], r)``, with ``N(r)`` its 5 negative regions::

        l1 = -log( e^{f1.f2/t} / (e^{f1.f2/t} + sum_{n in N(r)} (e^{f1.f(z1[i],n)/t} + e^{f1.f(z2[i],n)/t})) )
        l2 = the same with the views swapped
        L = mean over images of  sum_r (l1 + l2) / 13

    (Their code sums over the images of the batch instead of averaging: a constant factor.)

    Args:
        temperature: ``t > 0``, default 0.1 (their README's command).
        region_size: cells per side of a region, default 3 (their ``local_reg_size=1``).

    Shapes:
        z1, z2: ``(B, C, H, W)``, ``H, W >= region_size + 5``.
    """

    def __init__(self, temperature: float = 0.1, region_size: int = 3) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if int(region_size) < 1:
            raise ValueError(f"region_size must be >= 1, got {region_size}.")
        self.region_size = int(region_size)

    def _regions(self, z: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """``(B, *corners.shape[:-1], C * s * s)`` L2-normalised region vectors."""
        s = self.region_size
        patches = F.unfold(z, kernel_size=s)  # (B, C*s*s, L), L over top-left corners
        width = z.shape[-1] - s + 1
        flat = (corners[..., 0] * width + corners[..., 1]).reshape(-1).to(z.device)
        out = patches[:, :, flat].transpose(1, 2)  # (B, K, C*s*s)
        return F.normalize(out, dim=-1).reshape(z.shape[0], *corners.shape[:-1], -1)

    def _features(self, z1: torch.Tensor, z2: torch.Tensor):
        if not isinstance(z1, torch.Tensor) or not isinstance(z2, torch.Tensor):
            raise ValueError("z1 and z2 must be torch.Tensors.")
        z1, z2 = _plain(z1), _plain(z2)
        if z1.ndim != 4 or z1.shape != z2.shape or z1.shape[0] < 1:
            raise ValueError(f"z1 and z2 must be (B, C, H, W) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}.")
        pos, neg = local_regions(z1.shape[-2], z1.shape[-1], self.region_size)
        z1, z2 = _float32(z1), _float32(z2)
        return (self._regions(z1, pos), self._regions(z2, pos), self._regions(z1, neg), self._regions(z2, neg))

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        with _autocast_off(z1.device):
            p1, p2, n1, n2 = self._features(z1, z2)  # (B, 13, D), (B, 13, 5, D)
            t = self.temperature
            s12 = (p1 * p2).sum(-1) / t  # (B, 13)
            neg1 = torch.cat([torch.einsum("brd,brkd->brk", p1, n1), torch.einsum("brd,brkd->brk", p1, n2)], -1) / t
            neg2 = torch.cat([torch.einsum("brd,brkd->brk", p2, n2), torch.einsum("brd,brkd->brk", p2, n1)], -1) / t
            l1 = torch.logsumexp(torch.cat([s12[..., None], neg1], -1), -1) - s12
            l2 = torch.logsumexp(torch.cat([s12[..., None], neg2], -1), -1) - s12
            return (l1 + l2).mean(dim=1).mean()

    def retrieval_accuracy(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Fraction of (image, region, view) anchors more similar to their positive than to each of their negatives."""
        with torch.no_grad(), _autocast_off(z1.device):
            p1, p2, n1, n2 = self._features(z1, z2)
            s12 = (p1 * p2).sum(-1)
            best1 = torch.cat([torch.einsum("brd,brkd->brk", p1, n1), torch.einsum("brd,brkd->brk", p1, n2)], -1)
            best2 = torch.cat([torch.einsum("brd,brkd->brk", p2, n2), torch.einsum("brd,brkd->brk", p2, n1)], -1)
            hits = torch.cat([(s12 > best1.amax(-1)).flatten(), (s12 > best2.amax(-1)).flatten()])
            return hits.float().mean()
