"""Volume datalist items -> one item per 2D slice (the bundles train 2D networks on slices of 3D volumes)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["expand_to_slices"]


def _item_name(item: Mapping, index: int) -> str:
    for key in ("id", "image"):
        if item.get(key) is not None:
            return f"{key}={item[key]!r}"
    return f"item #{index}"


def _non_empty_slices(label_path: Any, num_slices: int, name: str) -> list[int]:
    import nibabel as nib

    if not isinstance(label_path, (str, os.PathLike)):
        raise ValueError(f"skip_empty_label needs a label file path for {name}, got {type(label_path).__name__}.")
    data = np.asanyarray(nib.load(os.fspath(label_path)).dataobj)
    if data.ndim < 3 or data.shape[-1] != num_slices:
        raise ValueError(
            f"label {os.fspath(label_path)} of {name} has shape {data.shape}; expected {num_slices} slices along the "
            "last axis (num_slices)."
        )
    return [k for k in range(num_slices) if np.any(data[..., k] != 0)]


def expand_to_slices(
    items: Iterable[Mapping[str, Any]],
    labeled: bool = True,
    slice_key: str = "slice",
    num_slices_key: str = "num_slices",
    drop_label: bool | None = None,
    skip_empty_label: bool = False,
    label_key: str = "label",
    labeled_key: str = "labeled",
) -> list[dict]:
    """One item per slice: a copy of each volume item with ``slice_key: k`` and ``labeled_key: int(labeled)``.

    Slices are along the volume's last axis (the datalist contract), ``k in range(item[num_slices_key])``.
    Unlabelled items lose their label path (``drop_label`` defaults to ``not labeled``), so that no label reaches
    unlabelled training; :class:`~ideal_components.transforms.EnsureLabeld` later gives them a zero placeholder.

    Args:
        items: volume items, e.g. from ``monai.data.load_decathlon_datalist(..., data_list_key="unlabeled_10")``.
        labeled: whether these volumes' labels may be used (the ``labeled_key`` flag of every slice).
        slice_key: key of the slice index in the output items.
        num_slices_key: key of the number of slices in the input items.
        drop_label: remove ``label_key`` from the output items; default ``not labeled``.
        skip_empty_label: skip the slices whose label is all background (reads each label file with nibabel; only
            for items that keep their label).
        label_key: key of the label path.
        labeled_key: key of the 0/1 flag in the output items.

    Returns:
        the slice items, volume by volume, slices in order.

    Raises:
        ValueError: an item lacks ``num_slices_key`` or it is not a positive integer (the message names the item).

    Example:
        >>> items = [{"image": "imagesTr/p1.nii.gz", "label": "labelsTr/p1.nii.gz", "id": "p1", "num_slices": 2}]
        >>> [(d["slice"], d["labeled"], "label" in d) for d in expand_to_slices(items, labeled=False)]
        [(0, 0, False), (1, 0, False)]
    """
    drop = (not labeled) if drop_label is None else bool(drop_label)
    out: list[dict] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"datalist item #{index} must be a dict, got {type(item).__name__}.")
        name = _item_name(item, index)
        if num_slices_key not in item:
            raise ValueError(f"datalist item {name} has no {num_slices_key!r}: cannot expand it to slices.")
        raw = item[num_slices_key]
        try:
            num_slices = int(raw)
        except (TypeError, ValueError):
            num_slices = -1
        if isinstance(raw, bool) or num_slices < 1 or num_slices != raw:
            raise ValueError(f"datalist item {name}: {num_slices_key!r} must be a positive integer, got {raw!r}.")
        base = {k: v for k, v in item.items() if not (drop and k == label_key)}
        keep = range(num_slices)
        if skip_empty_label and not drop and base.get(label_key) is not None:
            keep = _non_empty_slices(base[label_key], num_slices, name)
        for k in keep:
            d = copy.deepcopy(base)
            d[slice_key] = k
            d[labeled_key] = int(bool(labeled))
            out.append(d)
    return out
