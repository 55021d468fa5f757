"""Losses of IDEAL (Basak et al., ICASSP 2023).

- :class:`LocalContrastiveLoss`: the dense (per-location) InfoNCE loss ``L_loc`` of the pre-training phase.
- :class:`GlobalContrastiveLoss`: SimCLR's NT-Xent on globally pooled features (the "global CL" baseline).
- :class:`SegmentationLoss`: the supervised loss of every fine-tuning arm (cross-entropy [+ foreground soft Dice]).
- :class:`CrossPseudoLabelLoss`: the fine-tuning loss ``L_SSF``: :class:`SegmentationLoss` to the mask on labelled
  images and cross pseudo-label supervision between the two decoder branches on unlabelled images.
- :func:`pretext_accuracy`: top-1 positive retrieval of the dense pretext (logged during pre-training).
- :func:`sigmoid_rampup`: the sigmoid-shaped ramp-up of Laine & Aila (2017) for the unlabelled weight.

All losses compute their logits / log-probabilities in float32 (also under ``torch.autocast``) and use the
log-softmax form, so they are stable for small temperatures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ideal_components.transforms import class_index_problem

__all__ = [
    "LocalContrastiveLoss",
    "GlobalContrastiveLoss",
    "SegmentationLoss",
    "CrossPseudoLabelLoss",
    "pretext_accuracy",
    "sigmoid_rampup",
]

_IGNORE_INDEX = -100


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}.")
    return temperature


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device`` (nothing to disable on a device without autocast, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, or float64 when it already is float64 (so that float64 checks keep their precision)."""
    return x if x.dtype == torch.float64 else x.float()


def _plain(x):
    """A ``MetaTensor`` as a plain ``torch.Tensor`` (same storage and autograd graph); anything else unchanged."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def sigmoid_rampup(current: float | None, rampup_length: float) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)``, ``t = clip(current / rampup_length, 0, 1)`` (Laine & Aila 2017).

    Args:
        current: the current epoch (may be fractional). ``None`` means "no schedule" and gives 1.
        rampup_length: the number of epochs to reach 1. ``0`` disables the ramp-up (always 1).

    Returns:
        a float in ``(0, 1]``: ``exp(-5) ~ 0.0067`` at ``current=0``, 1 from ``current >= rampup_length`` on.

    Raises:
        ValueError: when ``rampup_length`` is negative or not finite.

    Example::

        >>> sigmoid_rampup(0, 10), sigmoid_rampup(5, 10), sigmoid_rampup(10, 10)
        (0.006737946999085467, 0.2865047968601901, 1.0)
    """
    rampup_length = float(rampup_length)
    if not math.isfinite(rampup_length) or rampup_length < 0:
        raise ValueError(f"rampup_length must be a finite number >= 0, got {rampup_length}.")
    if current is None or rampup_length == 0:
        return 1.0
    t = min(max(float(current) / rampup_length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a :class:`~monai.utils.LossReduction` (``"mean"``, ``"sum"`` or ``"none"``) to per-sample losses."""
    if reduction == LossReduction.MEAN.value:
        return values.mean()
    if reduction == LossReduction.SUM.value:
        return values.sum()
    return values


def pretext_accuracy(query: torch.Tensor, key: torch.Tensor, max_queries: int | None = None) -> torch.Tensor:
    """Top-1 positive retrieval of the dense local contrastive pretext (what :class:`LocalContrastiveLoss` trains).

    For every image and query location ``n`` the key locations of the same image are ranked by the cosine similarity
    of the L2-normalised features; the query counts as correct when its own location ``n`` is strictly the most
    similar (a tie with another location counts as wrong, so identical features cannot be retrieved). A pretext that
    a randomly initialised encoder already solves teaches little.

    Args:
        query: ``(B, C, *spatial)`` features of the first view.
        key: features of the second view, the same shape, aligned: location ``n`` corresponds to ``query``'s ``n``
            (e.g. after :func:`~ideal_components.engines.overlapping_features`).
        max_queries: if set and an image has more locations, score only ``max_queries`` evenly spaced query
            locations (each still ranked against every key location): memory ``O(max_queries * N)`` per image.
            Deterministic (no random draw).

    Returns:
        a float32 scalar tensor: the fraction of the query locations retrieved correctly (no host synchronisation).

    Example:
        >>> q = torch.randn(2, 8, 4, 4)
        >>> pretext_accuracy(q, q).item(), pretext_accuracy(q, q.flip(-1)).item()
        (1.0, 0.0)
    """
    if query.ndim not in (4, 5) or query.shape != key.shape:
        raise ValueError(f"query and key must be (B, C, *spatial) of one shape, got {tuple(query.shape)}, {key.shape}.")
    with torch.no_grad(), _autocast_off(query.device):
        q, k = F.normalize(_plain(query).flatten(2).float(), dim=1), F.normalize(_plain(key).flatten(2).float(), dim=1)
        n = q.shape[-1]
        rows = torch.arange(n, device=q.device)
        if max_queries is not None and n > int(max_queries):
            rows = torch.linspace(0, n - 1, int(max_queries), device=q.device).round().long()
        hits = []
        for qb, kb in zip(q, k):  # one (rows, N) similarity matrix at a time
            sim = qb[:, rows].t() @ kb
            positive = sim.gather(1, rows[:, None]).squeeze(1)
            best_other = sim.scatter(1, rows[:, None], -float("inf")).amax(1)
            hits.append(positive > best_other)
        return torch.cat(hits).float().mean()


class LocalContrastiveLoss(_Loss):
    """Dense local contrastive loss ``L_loc`` of IDEAL (an InfoNCE loss at every spatial location).

    For every image, with ``q_i`` / ``k_i`` the L2-normalised query / key features at location ``i`` of ``N = H*W``
    (or ``D*H*W``) locations and ``t`` the temperature::

        L = -1/N * sum_i log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_{j != i} exp(q_i.k_j/t)) )

    The positive of ``q_i`` is the key feature at the same location in the other view; the negatives are the key
    features at all other locations of the same image. This is a cross-entropy over the rows of the ``(N, N)``
    similarity matrix with target ``i`` for row ``i`` (the denominator includes the positive), which is how it is
    computed here: one batched matrix product and ``F.cross_entropy`` (log-softmax, stable for small ``t``), in
    float32 even under ``torch.autocast``.

    Args:
        temperature: the temperature ``t > 0``.
        batch_negatives: also use the key features of the *other* images of the batch as negatives (the
            similarity matrix becomes ``(B*N, B*N)``, memory ``O((B*N)^2)``).
        symmetric: average the query->key and key->query losses (the key->query logits are the transposed
            query->key logits, so this costs one more cross-entropy, no further matrix product).
        max_locations: if set (>= 2; default 1024, as ``pretrain.json``) and an image has more locations, compute
            the loss on ``max_locations`` locations drawn at random without replacement, independently per image,
            the same locations in the query and the key map. Memory then is ``O(B * max_locations^2)`` instead of
            ``O(B * N^2)``; ``None``: every location. The draw
            uses ``generator`` when given (it must live on the device of the features or on the CPU), otherwise
            torch's global RNG of the features' device (seeded by ``monai.utils.set_determinism``).
        reduction: ``"mean"`` (mean over the batch of the per-image losses), ``"sum"`` (their sum) or ``"none"``
            (the per-image losses, shape ``(B,)``).
        generator: optional ``torch.Generator`` for ``max_locations``.

    Shapes:
        query, key: ``(B, C, H, W)`` or ``(B, C, D, H, W)``, the same shape; output: a scalar, or ``(B,)`` with
        ``reduction="none"``.

    Raises:
        ValueError: temperature <= 0, ``max_locations < 2``, wrong ranks, mismatched shapes, empty batch, fewer
            than two candidates (positive + negatives) per query.

    Example::

        >>> loss_fn = LocalContrastiveLoss(temperature=0.1)
        >>> q, k = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
        >>> loss_fn(q, k).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        batch_negatives: bool = False,
        symmetric: bool = False,
        max_locations: int | None = 1024,
        reduction: LossReduction | str = LossReduction.MEAN,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.temperature = _check_temperature(temperature)
        if max_locations is not None:
            if isinstance(max_locations, bool) or int(max_locations) != max_locations or max_locations < 2:
                raise ValueError(f"max_locations must be None or an integer >= 2, got {max_locations!r}.")
            max_locations = int(max_locations)
        self.max_locations = max_locations
        self.batch_negatives = bool(batch_negatives)
        self.symmetric = bool(symmetric)
        self.generator = generator

    def sample_locations(self, batch_size: int, num_locations: int, device: torch.device | str) -> torch.Tensor:
        """Draw the location indices used when ``max_locations`` is set.

        Args:
            batch_size: number of images ``B``.
            num_locations: number of locations ``N`` per image (must exceed ``max_locations``).
            device: the device of the returned indices.

        Returns:
            a long tensor ``(B, max_locations)``: per image, distinct indices in ``[0, N)`` in random order.
        """
        if self.max_locations is None:
            raise ValueError("sample_locations needs max_locations to be set.")
        rng_device = self.generator.device if self.generator is not None else torch.device(device)
        noise = torch.rand((batch_size, num_locations), generator=self.generator, device=rng_device)
        return noise.argsort(dim=1)[:, : self.max_locations].to(device)

    @staticmethod
    def _flatten(x: torch.Tensor, name: str) -> torch.Tensor:
        if x.ndim not in (4, 5):
            raise ValueError(f"{name} must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}.")
        return x.flatten(2)  # (B, C, N)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: dense features of view 1, ``(B, C, H, W)`` or ``(B, C, D, H, W)`` (not necessarily normalised).
            key: dense features of view 2, the same shape.

        Returns:
            the loss (see ``reduction``).
        """
        if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
            raise ValueError("query and key must be torch.Tensors.")
        query, key = _plain(query), _plain(key)
        q = self._flatten(query, "query")
        k = self._flatten(key, "key")
        if query.shape != key.shape:
            raise ValueError(
                f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}."
            )
        b, c, n = q.shape
        if b == 0:
            raise ValueError("empty batch: query and key have batch size 0.")
        if c == 0:
            raise ValueError("query and key have no feature channels (C == 0).")
        with _autocast_off(query.device):
            q, k = _float32(q), _float32(k)
            if self.max_locations is not None and n > self.max_locations:
                idx = self.sample_locations(b, n, q.device).unsqueeze(1).expand(b, c, self.max_locations)
                q, k = q.gather(2, idx), k.gather(2, idx)
                n = self.max_locations
            candidates = b * n if self.batch_negatives else n
            if candidates < 2:
                raise ValueError(
                    f"need at least 2 locations per image (or batch_negatives with B >= 2) to have a negative, got "
                    f"B={b}, N={n}."
                )
            # 1/t is applied to the (B, N, C) queries rather than to the (B, N, N) logits: one pass less over the
            # largest tensor, forward and backward.
            q = (F.normalize(q, dim=1) / self.temperature).transpose(1, 2)  # (B, N, C)
            k = F.normalize(k, dim=1)  # (B, C, N)
            if self.batch_negatives:
                # (B*N, B*N): row b*N+i holds q_{b,i} . k_{b',j} / t for every image b' and location j of the batch.
                logits = q.reshape(b * n, c) @ k.transpose(1, 2).reshape(b * n, c).T
                rows = candidates
            else:
                logits = torch.bmm(q, k)  # (B, N, N): [b, i, j] = q_{b,i} . k_{b,j} / t
                rows = n
            target = torch.arange(rows, device=logits.device)
            target = target if self.batch_negatives else target.repeat(b)
            flat = logits.reshape(-1, rows)
            loss = F.cross_entropy(flat, target, reduction="none")
            if self.symmetric:
                flat_t = logits.transpose(-1, -2).reshape(-1, rows)
                loss = 0.5 * (loss + F.cross_entropy(flat_t, target, reduction="none"))
            per_image = loss.view(b, n).mean(dim=1)
        return _reduce(per_image, self.reduction)


class GlobalContrastiveLoss(_Loss):
    """SimCLR's NT-Xent loss on globally average-pooled features (the global contrastive baseline).

    ``z1[i]`` and ``z2[i]`` are two views of sample ``i``. With the ``2B`` L2-normalised pooled features, the
    positive of each feature is its partner view and the negatives are the other ``2B - 2`` features::

        L = 1/(2B) * sum_a -log( exp(s_{a,p(a)}/t) / sum_{c != a} exp(s_{a,c}/t) )

    This is the value of ``monai.losses.ContrastiveLoss(temperature=t)`` (whose ``batch_size`` argument is deprecated
    and ignored: the batch size is read from the input), but computed as a log-softmax cross-entropy in float32,
    which stays finite where MONAI's direct ``exp(s/t)`` overflows (``t`` below about 0.012 in float32).

    Args:
        temperature: the temperature ``t > 0``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the ``2B`` per-feature terms, ``z1`` rows first).

    Shapes:
        z1, z2: ``(B, C)`` or ``(B, C, *spatial)`` (spatial dims are averaged), the same shape, ``B >= 2``.

    Example::

        >>> loss_fn = GlobalContrastiveLoss(temperature=0.1)
        >>> loss_fn(torch.randn(4, 32, 6, 6), torch.randn(4, 32, 6, 6)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.1, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.temperature = _check_temperature(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z1: features of view 1, ``(B, C)`` or ``(B, C, *spatial)``.
            z2: features of view 2, the same shape.
        """
        if not isinstance(z1, torch.Tensor) or not isinstance(z2, torch.Tensor):
            raise ValueError("z1 and z2 must be torch.Tensors.")
        z1, z2 = _plain(z1), _plain(z2)
        if z1.ndim < 2:
            raise ValueError(f"z1 and z2 must be (B, C) or (B, C, *spatial), got shape {tuple(z1.shape)}.")
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}.")
        b = z1.shape[0]
        if b < 2:
            raise ValueError(f"GlobalContrastiveLoss needs a batch of at least 2 samples (negatives), got {b}.")
        with _autocast_off(z1.device):
            z = torch.cat([_float32(z1), _float32(z2)], dim=0)
            if z.ndim > 2:
                z = z.flatten(2).mean(dim=2)
            z = F.normalize(z, dim=1)
            logits = (z @ z.T) / self.temperature
            eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(eye, float("-inf"))
            target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
            loss = F.cross_entropy(logits, target, reduction="none")
        return _reduce(loss, self.reduction)


def _check_segmentation_shapes(logits: torch.Tensor, label: torch.Tensor) -> tuple[int, int]:
    """Check ``logits (B, K, *spatial)`` against ``label (B, 1, *spatial)``; return ``(B, K)``."""
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must be (B, K, H, W) or (B, K, D, H, W), got shape {tuple(logits.shape)}.")
    b, k = logits.shape[:2]
    if b == 0:
        raise ValueError("empty batch: logits have batch size 0.")
    if k < 2:
        raise ValueError(f"logits need at least 2 classes (channel dim), got {k}.")
    if label.ndim != logits.ndim:
        raise ValueError(
            f"label must be (B, 1, *spatial) with the rank of the logits ({logits.ndim}), got shape "
            f"{tuple(label.shape)}."
        )
    if label.shape[1] != 1:
        raise ValueError(f"label must have 1 channel (class indices), got {label.shape[1]} channels.")
    if label.shape[0] != b or label.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match the logits {tuple(logits.shape)} (B and spatial)."
        )
    if label.dtype == torch.bool or label.is_complex():
        raise ValueError(f"label must hold integer class indices, got dtype {label.dtype}.")
    return b, k


def _ce_mean(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE (from log-probabilities) summed over the non-ignored pixels divided by their count (exact 0, still in the
    graph, if none)."""
    total = F.nll_loss(log_probs, target, ignore_index=_IGNORE_INDEX, reduction="sum")
    return total / (target != _IGNORE_INDEX).sum().clamp_min(1)


class SegmentationLoss(_Loss):
    """The supervised loss of every fine-tuning arm: cross-entropy [+ ``dice_weight`` x foreground soft Dice].

    ::

        loss = CE(p, m) [+ dice_weight * Dice(p, m)]

    ``CE``: averaged over the pixels of the labelled samples (all classes). ``Dice``: MONAI's
    ``DiceLoss(softmax=True, to_onehot_y=True, include_background=False)`` per sample and foreground class, averaged
    over the classes, then over the labelled samples (the foreground, as the metrics score it). On an all-labelled
    batch this is ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
    lambda_dice=dice_weight)``. :class:`CrossPseudoLabelLoss` uses it for each branch's labelled samples and
    ``train_supervised.json`` for the supervised baseline, so that both arms learn from the labels by one loss.

    Args:
        dice_weight: weight ``>= 0`` of the soft Dice term (0: not computed, the paper's CE alone).

    Shapes:
        logits: ``(B, K, H, W)`` or ``(B, K, D, H, W)``; label: ``(B, 1, *spatial)`` class indices in ``[0, K)``;
        labeled (optional): ``B`` flags, only those samples count (default: all).

    Example:
        >>> loss_fn = SegmentationLoss(dice_weight=1.0)
        >>> out = loss_fn.compute(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 1, 8, 8)))
        >>> sorted(out)
        ['ce', 'dice', 'loss']
    """

    def __init__(self, dice_weight: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(float(dice_weight)) or dice_weight < 0:
            raise ValueError(f"dice_weight must be a finite number >= 0, got {dice_weight}.")
        self.dice_weight = float(dice_weight)
        # per-sample, per-class Dice, averaged here over the labelled samples with a mask (no host-side indexing)
        self.dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False, reduction="none")

    def parts(
        self, logits: torch.Tensor, log_probs: torch.Tensor, label: torch.Tensor, flags: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The loss of checked inputs: float logits, their log-softmax, ``(B, *spatial)`` long labels, ``B`` bool
        flags. Returns ``{"ce", "loss"}`` (+ ``"dice"`` when ``dice_weight > 0``)."""
        spatial = (1,) * (label.ndim - 1)
        target = torch.where(flags.view(-1, *spatial).expand_as(label), label, torch.full_like(label, _IGNORE_INDEX))
        ce = _ce_mean(log_probs, target)
        out = {"ce": ce, "loss": ce}
        if self.dice_weight > 0:
            # mean over the labelled samples and the classes; an exact 0 (still in the graph) without any
            weight = flags.to(logits.dtype)
            per_sample = self.dice(logits, label.unsqueeze(1)).flatten(1).mean(1)
            out["dice"] = (per_sample * weight).sum() / weight.sum().clamp_min(1)
            out["loss"] = ce + self.dice_weight * out["dice"]
        return out

    def compute(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        labeled: torch.Tensor | Sequence[bool] | Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"ce", "loss"}`` (+ ``"dice"``) of ``logits`` against ``label`` on the ``labeled`` samples (all when
        ``None``)."""
        logits, label = _plain(logits), _plain(label)
        b, _ = _check_segmentation_shapes(logits, label)
        if labeled is None:
            flags = torch.ones(b, dtype=torch.bool, device=logits.device)
        else:
            flags = torch.as_tensor(_plain(labeled), device=logits.device).reshape(-1)
            if flags.numel() != b:
                raise ValueError(f"labeled must hold one flag per sample ({b}), got {flags.numel()}.")
            flags = flags if flags.dtype == torch.bool else flags != 0
        with _autocast_off(logits.device):
            x = _float32(logits)
            return self.parts(x, F.log_softmax(x, dim=1), label[:, 0].long(), flags)

    def forward(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        labeled: torch.Tensor | Sequence[bool] | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``compute(logits, label, labeled)["loss"]``."""
        return self.compute(logits, label, labeled)["loss"]


class CrossPseudoLabelLoss(_Loss):
    """IDEAL's semi-supervised fine-tuning loss ``L_SSF`` for a two-branch segmentation network.

    With ``p_a``, ``p_b`` the two branches' predictions, ``m`` the mask and ``y_a = argmax p_a``,
    ``y_b = argmax p_b`` (no gradient through ``y``)::

        labelled:    CE(p_a, m) + CE(p_b, m)  [+ dice_weight * (Dice(p_a, m) + Dice(p_b, m))]
        unlabelled:  CE(p_a, y_b) + CE(p_b, y_a)
        loss = supervised [+ dice_weight * dice]
               + unlabeled_weight * sigmoid_rampup(epoch, rampup_epochs) * cross_pseudo

    ``supervised``: each CE averaged over the pixels of the labelled samples of the batch. ``cross_pseudo``: each
    CE averaged over the kept pixels of the unlabelled samples, where a pixel is ignored (``ignore_index``) when the
    *other* branch's maximum softmax probability is below ``confidence_threshold`` (0 keeps every pixel). A part
    with nothing to average (no labelled / no unlabelled sample in the batch, or every pixel ignored) is an exact 0
    that is still connected to the graph, so ``backward()`` works on any batch. The soft Dice terms use
    ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False)`` on the labelled samples
    (the foreground classes, as the metrics).

    Args:
        unlabeled_weight: weight ``>= 0`` of the cross pseudo-label term (after ramp-up).
        rampup_epochs: length of the sigmoid ramp-up of the unlabelled weight, in epochs (0, the default: no
            ramp-up). The bundles use 0.1 x ``max_epochs`` (``train.json``'s ``rampup_fraction``), a length this
            loss cannot know, so it is not the default here.
        confidence_threshold: in ``[0, 1)``; pseudo-labels whose confidence is below it are ignored.
        dice_weight: weight ``>= 0`` of the soft Dice terms on labelled samples (0: not computed).
        check_values: also check the values of the inputs on every call (flags 0/1, label finite, integer and in
            ``[0, K)`` on labelled samples). Each check reads a device tensor on the host, a synchronisation per
            step on a GPU, so it is off by default: the bundles check labels on the data side
            (:class:`~ideal_components.transforms.EnsureLabeld` with ``num_classes``). Shapes are always checked.

    Shapes:
        logits_a, logits_b: ``(B, K, H, W)`` or ``(B, K, D, H, W)``, ``K >= 2``; label: ``(B, 1, *spatial)`` class
        indices in ``[0, K)`` (integer or integer-valued float; only labelled samples are checked, unlabelled ones
        may carry any placeholder); labeled: ``B`` flags (bool or 0/1), any shape with ``B`` elements.

    Example::

        >>> loss_fn = CrossPseudoLabelLoss(unlabeled_weight=1.0, rampup_epochs=10)
        >>> la, lb = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
        >>> label = torch.randint(0, 3, (4, 1, 8, 8))
        >>> out = loss_fn.compute(la, lb, label, torch.tensor([1, 1, 0, 0]), epoch=5)
        >>> sorted(out)
        ['cross_pseudo', 'loss', 'supervised']
    """

    def __init__(
        self,
        unlabeled_weight: float = 1.0,
        rampup_epochs: float = 0.0,
        confidence_threshold: float = 0.0,
        dice_weight: float = 0.0,
        check_values: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("unlabeled_weight", unlabeled_weight), ("dice_weight", dice_weight)):
            if not math.isfinite(float(value)) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if not math.isfinite(float(rampup_epochs)) or rampup_epochs < 0:
            raise ValueError(f"rampup_epochs must be a finite number >= 0, got {rampup_epochs}.")
        if not 0.0 <= float(confidence_threshold) < 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1), got {confidence_threshold}.")
        self.unlabeled_weight = float(unlabeled_weight)
        self.rampup_epochs = float(rampup_epochs)
        self.confidence_threshold = float(confidence_threshold)
        self.dice_weight = float(dice_weight)
        self.check_values = bool(check_values)
        self.segmentation = SegmentationLoss(dice_weight)

    def unlabeled_weight_at(self, epoch: float | None = None) -> float:
        """``unlabeled_weight * sigmoid_rampup(epoch, rampup_epochs)`` (``epoch=None``: no ramp-up)."""
        return self.unlabeled_weight * sigmoid_rampup(epoch, self.rampup_epochs)

    def _validate(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        label: torch.Tensor,
        labeled: torch.Tensor | Sequence[bool] | Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x in (("logits_a", logits_a), ("logits_b", logits_b), ("label", label)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if logits_a.shape != logits_b.shape:
            raise ValueError(
                f"logits_a and logits_b must have the same shape, got {tuple(logits_a.shape)} and "
                f"{tuple(logits_b.shape)}."
            )
        b, k = _check_segmentation_shapes(logits_a, label)
        flags = torch.as_tensor(labeled, device=logits_a.device).reshape(-1)
        if flags.numel() != b:
            raise ValueError(f"labeled must hold one flag per sample ({b}), got {flags.numel()}.")
        lab = label[:, 0]
        if self.check_values:
            self._check_values(flags, lab, k)
        flags = flags if flags.dtype == torch.bool else flags != 0
        return lab.long(), flags

    @staticmethod
    def _check_values(flags: torch.Tensor, lab: torch.Tensor, k: int) -> None:
        """The value checks of ``check_values`` (each one a device-to-host read)."""
        if flags.dtype != torch.bool and not bool(((flags == 0) | (flags == 1)).all()):
            raise ValueError(f"labeled flags must be bool or 0/1, got {flags.tolist()}.")
        flags = flags if flags.dtype == torch.bool else flags != 0
        problem = class_index_problem(lab[flags], k)
        if problem is not None:
            raise ValueError(f"label must hold integer class indices in [0, {k}) on labelled samples: {problem}.")

    def compute(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        label: torch.Tensor,
        labeled: torch.Tensor | Sequence[bool] | Sequence[int],
        epoch: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss and its parts.

        Args:
            logits_a: branch A's logits ``(B, K, *spatial)``.
            logits_b: branch B's logits, the same shape.
            label: ``(B, 1, *spatial)`` class indices (placeholders for unlabelled samples).
            labeled: ``B`` flags, true for the samples whose label is real.
            epoch: the current (possibly fractional) epoch for the ramp-up; ``None``: full weight.

        Returns:
            ``{"loss", "supervised", "cross_pseudo"}`` (+ ``"dice"`` when ``dice_weight > 0``) scalar tensors;
            ``supervised``, ``cross_pseudo`` and ``dice`` are unweighted (sums of the two branches' terms).
        """
        logits_a, logits_b, label, labeled = _plain(logits_a), _plain(logits_b), _plain(label), _plain(labeled)
        lab, flags = self._validate(logits_a, logits_b, label, labeled)
        spatial = (1,) * (lab.ndim - 1)
        sup_mask = flags.view(-1, *spatial).expand_as(lab)
        with _autocast_off(logits_a.device):
            la, lb = _float32(logits_a), _float32(logits_b)
            # one log-softmax per branch serves both CE terms and the pseudo-labels (the supervised and the
            # pseudo-label pixels are disjoint, so each term reads its own pixels of the same log-probabilities)
            logp_a, logp_b = F.log_softmax(la, dim=1), F.log_softmax(lb, dim=1)
            # the labelled samples' loss, one definition for every arm (SegmentationLoss), per branch
            sup_a = self.segmentation.parts(la, logp_a, lab, flags)
            sup_b = self.segmentation.parts(lb, logp_b, lab, flags)
            supervised = sup_a["ce"] + sup_b["ce"]

            with torch.no_grad():
                ignore = torch.full_like(lab, _IGNORE_INDEX)
                log_conf_a, y_a = logp_a.max(dim=1)
                log_conf_b, y_b = logp_b.max(dim=1)
                unl = ~sup_mask
                if self.confidence_threshold > 0:
                    unl_a = unl & (log_conf_a.exp() >= self.confidence_threshold)
                    unl_b = unl & (log_conf_b.exp() >= self.confidence_threshold)
                else:
                    unl_a = unl_b = unl
                target_for_b = torch.where(unl_a, y_a, ignore)
                target_for_a = torch.where(unl_b, y_b, ignore)
            cross_pseudo = _ce_mean(logp_a, target_for_a) + _ce_mean(logp_b, target_for_b)

            loss = supervised + self.unlabeled_weight_at(epoch) * cross_pseudo
            out = {"supervised": supervised, "cross_pseudo": cross_pseudo}
            if self.dice_weight > 0:
                out["dice"] = sup_a["dice"] + sup_b["dice"]
                loss = loss + self.dice_weight * out["dice"]
        out["loss"] = loss
        return out

    def forward(
        self,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        label: torch.Tensor,
        labeled: torch.Tensor | Sequence[bool] | Sequence[int],
        epoch: float | None = None,
    ) -> torch.Tensor:
        """``compute(logits_a, logits_b, label, labeled, epoch)["loss"]``."""
        return self.compute(logits_a, logits_b, label, labeled, epoch)["loss"]
