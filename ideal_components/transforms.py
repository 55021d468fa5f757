"""Dictionary transforms for training 2D networks on slices of 3D volumes (usable from bundle JSON by ``_target_``).

- :class:`ExtractSliced`: pick slice ``k`` (from the item's ``"slice"``) of channel-first ``(C, H, W, D)`` volumes.
- :class:`EnsureLabeld`: give unlabelled slices an all-zero placeholder label and set the ``"labeled"`` flag, so
  that labelled and unlabelled slices collate into one batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

__all__ = ["ExtractSliced", "EnsureLabeld", "class_index_problem"]


def _source_name(img: Any, data: Mapping, key: Hashable) -> str:
    name = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
    if not name:
        for k in ("id", "image"):
            if isinstance(data.get(k), str):
                name = data[k]
                break
    return f"{key!r} of {name}" if name else repr(key)


def _slice_affine(affine: torch.Tensor, spatial_dim: int, k: int) -> torch.Tensor:
    """Affine of slice ``k`` along ``spatial_dim``: origin moved to the slice, that axis' row and column removed."""
    a = torch.as_tensor(affine, dtype=torch.float64).clone()
    r = a.shape[0] - 1
    if not 0 <= spatial_dim < r:
        return a
    a[:r, r] = a[:r, r] + k * a[:r, spatial_dim]
    keep = [i for i in range(r + 1) if i != spatial_dim]
    return a[keep][:, keep]


class ExtractSliced(MapTransform):
    """Take slice ``data[slice_key]`` along ``axis`` of channel-first volumes: ``(C, H, W, D)`` -> ``(C, H, W)``.

    For a :class:`~monai.data.MetaTensor` the result is a MetaTensor with the metadata copied (``filename_or_obj``
    and the header fields kept) and updated for a 2D image: ``affine`` becomes the ``3x3`` affine of the slice (origin
    moved to slice ``k``, the sliced axis dropped, like :class:`~monai.transforms.SqueezeDim`), ``spatial_shape`` the
    2D shape, ``slice_index`` is ``k``; ``applied_operations`` is reset (3D operations cannot be inverted on a
    slice). The slice is copied, so a cached volume is not kept alive by it. NumPy arrays and plain tensors give the
    same type back.

    Args:
        keys: keys of the volumes to slice (e.g. ``["image", "label"]``).
        slice_key: key of the slice index in the item.
        axis: the sliced axis of the channel-first array (``-1``: the last one; 0, the channel axis, is not allowed).
        allow_missing_keys: do not raise when a key is absent (e.g. ``"label"`` of unlabelled slices).

    Raises:
        ValueError: the item has no ``slice_key``, ``k`` is out of range (the message names the file), or the array
            has too few dimensions.

    Example::

        Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
                 ExtractSliced(["image", "label"], allow_missing_keys=True)])
        # {"image": "p1.nii.gz", "label": "p1_gt.nii.gz", "slice": 3} -> image, label of shape (1, H, W)
    """

    def __init__(
        self, keys: KeysCollection, slice_key: str = "slice", axis: int = -1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_key = slice_key
        self.axis = int(axis)

    def _slice(self, img: Any, k: int, data: Mapping, key: Hashable) -> Any:
        ndim = len(img.shape)
        if ndim < 2:
            raise ValueError(f"{_source_name(img, data, key)}: expected a channel-first array, got shape {img.shape}.")
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise ValueError(
                f"{_source_name(img, data, key)}: axis {self.axis} is not a spatial axis of shape {tuple(img.shape)}."
            )
        depth = img.shape[axis]
        if not 0 <= k < depth:
            raise ValueError(
                f"slice {k} is out of range for {_source_name(img, data, key)}: it has {depth} slices along axis "
                f"{self.axis} (shape {tuple(img.shape)})."
            )
        if isinstance(img, np.ndarray):
            return np.take(img, k, axis=axis).copy()
        if isinstance(img, MetaTensor):
            out = img.as_tensor().select(axis, k).clone()
            meta = dict(img.meta)
            meta[ImageMetaKey.SPATIAL_SHAPE] = np.asarray(out.shape[1:])
            meta["affine"] = _slice_affine(img.affine, axis - 1, k)
            meta["slice_index"] = k
            return MetaTensor(out, meta=meta, applied_operations=[])
        if isinstance(img, torch.Tensor):
            return img.select(axis, k).clone()
        raise ValueError(f"{_source_name(img, data, key)}: unsupported type {type(img).__name__}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.slice_key not in d:
            raise ValueError(f"the item has no {self.slice_key!r} (slice index); keys: {sorted(map(str, d))}.")
        raw = d[self.slice_key]
        try:
            k = int(raw.item() if hasattr(raw, "item") else raw)
        except (TypeError, ValueError):
            raise ValueError(f"{self.slice_key!r} must be an integer slice index, got {raw!r}.") from None
        for key in keys:
            d[key] = self._slice(d[key], k, d, key)
        return d


def class_index_problem(label: Any, num_classes: int) -> str | None:
    """What keeps ``label`` from being class indices in ``[0, num_classes)``, or ``None`` when nothing does.

    Args:
        label: a tensor or array of any shape (integer, or integer-valued float).
        num_classes: the number of classes.

    Returns:
        e.g. ``"non-integer values"`` or ``"values in [0, 5], outside [0, 4)"``; ``None`` for a valid label.
    """
    label = torch.as_tensor(label)
    if label.is_floating_point() and not bool(torch.isfinite(label).all()):
        return "non-finite values (NaN or inf)"
    if label.is_floating_point() and not bool((label == label.round()).all()):
        return "non-integer values"
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        return f"values in [{int(label.min())}, {int(label.max())}], outside [0, {num_classes})"
    return None


class EnsureLabeld(MapTransform):
    """Make every item carry a label and a ``labeled`` flag, so that labelled and unlabelled slices collate.

    - Label missing (or ``None``): an all-zero label of shape ``(1, *spatial of data[ref_key])`` is added (a
      MetaTensor with the reference image's metadata when the reference is one, so metadata collates), and the flag
      defaults to 0. A flag of 1 without a label is an error.
    - Label present: the flag defaults to 1; an existing flag is kept (a 0 flag keeps the label out of the loss).

    The loss reads the flag, never the placeholder.

    Args:
        label_key: key of the label.
        ref_key: key of the image giving the placeholder's spatial shape.
        labeled_key: key of the 0/1 flag.
        dtype: dtype of the placeholder (``LoadImaged`` gives float32 labels by default).
        num_classes: when set, the label of a labelled item must hold finite integer class indices in
            ``[0, num_classes)``. The check runs here, on the loader's CPU workers, so that the training step need
            not read labels back from the GPU (:class:`~ideal_components.losses.CrossPseudoLabelLoss` does not
            check values by default).

    Raises:
        ValueError: ``ref_key`` is missing when a placeholder is needed, the flag says 1 with no label, or (with
            ``num_classes``) a label value is not a class index; the message names the item and the label file.

    Example::

        Compose([LoadImaged(["image", "label"], allow_missing_keys=True), ..., EnsureLabeld()])
        # {"image": (1, H, W)} -> {"image": ..., "label": zeros (1, H, W), "labeled": 0}
    """

    def __init__(
        self,
        label_key: str = "label",
        ref_key: str = "image",
        labeled_key: str = "labeled",
        dtype: torch.dtype | str = torch.float32,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(keys=[label_key], allow_missing_keys=True)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"num_classes must be None or a positive integer, got {num_classes!r}.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.label_key = label_key
        self.ref_key = ref_key
        self.labeled_key = labeled_key
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        has_label = d.get(self.label_key) is not None
        flag = d.get(self.labeled_key)
        if has_label:
            d[self.labeled_key] = 1 if flag is None else int(flag)
            if self.num_classes is not None and d[self.labeled_key]:
                self._check_classes(d)
            return d
        if flag is not None and int(flag):
            name = d.get("id", d.get(self.ref_key) if isinstance(d.get(self.ref_key), str) else None)
            raise ValueError(f"item {name!r} has {self.labeled_key}={flag} but no {self.label_key!r}.")
        if self.ref_key not in d:
            raise ValueError(f"cannot build a placeholder {self.label_key!r}: the item has no {self.ref_key!r}.")
        ref = d[self.ref_key]
        shape = (1, *tuple(ref.shape[1:]))
        if isinstance(ref, MetaTensor):
            zeros = MetaTensor(torch.zeros(shape, dtype=self.dtype), meta=dict(ref.meta), applied_operations=[])
        elif isinstance(ref, np.ndarray):
            zeros = np.zeros(shape, dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        else:
            zeros = torch.zeros(shape, dtype=self.dtype)
        d[self.label_key] = zeros
        d[self.labeled_key] = 0
        return d

    def _check_classes(self, d: dict) -> None:
        label = d[self.label_key]
        problem = class_index_problem(label.as_tensor() if isinstance(label, MetaTensor) else label, self.num_classes)
        if problem is not None:
            meta = getattr(d[self.label_key], "meta", {}) or {}
            source = meta.get("filename_or_obj", "")
            where = f"item {d.get('id', '?')!r}" + (f" (label file {source})" if source else "")
            raise ValueError(
                f"{where}: the label has {problem}; expected class indices for {self.num_classes} classes."
            )
