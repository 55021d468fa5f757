"""Per-volume segmentation metrics in physical units: Dice, HD, HD95, ASD and ASSD (medpy conventions).

Conventions (the same as ``medpy.metric.binary``, checked against it to 1e-4 by ``tests/test_metrics.py``):

- a mask is every non-zero voxel; its *surface* is ``mask XOR binary_erosion(mask, structure)`` with
  ``structure = generate_binary_structure(ndim, connectivity)`` (connectivity 1 by default) and voxels outside the
  array counted as background, so a mask touching the array border has a surface there;
- the distance from a surface voxel of A to B is the Euclidean distance (in mm when ``spacing`` is given, in voxels
  when ``spacing`` is None) to the nearest surface voxel of B, computed with
  ``scipy.ndimage.distance_transform_edt(~surface_B, sampling=spacing)``;
- ``hd``: the largest distance over both directions (symmetric Hausdorff distance);
- ``hd95``: with ``hd95_convention="medpy"`` (default) the 95th percentile (``np.percentile``, linear interpolation)
  of the *pooled* distances of both directions; with ``hd95_convention="monai"`` the larger of the two directed
  95th percentiles, like ``monai.metrics.HausdorffDistanceMetric(percentile=95)``. The two can differ by a few mm;
  every output says which one was used;
- ``asd``: the mean distance from the prediction's surface to the reference's (directed, medpy's ``asd``);
- ``assd``: the mean of the concatenated distances of both directions (medpy's ``assd``).

Empty-mask policy (medpy raises on an empty mask; returning 0 would reward a missed structure):

- both masks empty: ``dice = 1`` and every distance ``0``, ``empty = "both"`` (the structure is correctly absent);
- exactly one mask empty: ``dice = 0`` and every distance equals the *worst case*, the diagonal of the whole volume
  ``sqrt(sum((shape * spacing) ** 2))`` (in mm, or in voxels without spacing), ``empty = "pred"`` (nothing
  predicted) or ``"ref"`` (a false positive structure). These values are finite and are counted in
  :func:`aggregate` like any other volume, so a missed structure is penalised and never turns into NaN;
- otherwise ``empty = None``.

The computation is faster than calling medpy's five functions: both surfaces and both distance transforms are
computed once and shared by all metrics (medpy recomputes them per metric, seven distance transforms for
dc + hd + hd95 + asd + assd), and the masks are first cropped to their joint bounding box plus a one-voxel margin
(see :func:`_crop_box` for why that leaves every distance unchanged). ``benchmarks/bench_metrics.py`` measures it.

:class:`~ideal_components.evaluation.writer.VolumeMetricsWriter` computes them in a MONAI evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt, find_objects, generate_binary_structure

__all__ = [
    "METRIC_NAMES",
    "HD95_CONVENTIONS",
    "worst_case_distance",
    "binary_metrics",
    "multiclass_metrics",
    "aggregate",
]

#: the metrics computed per (volume, class), in output order
METRIC_NAMES: tuple[str, ...] = ("dice", "hd", "hd95", "asd", "assd")
#: accepted values of ``hd95_convention``
HD95_CONVENTIONS: tuple[str, ...] = ("medpy", "monai")

_EMPTY_KINDS = ("pred", "ref", "both")


# ----------------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object.")
    return arr


def _normalize_spacing(spacing: float | Sequence[float] | np.ndarray | None, ndim: int) -> np.ndarray | None:
    """None stays None (voxel units); a number is used for every axis; a sequence needs one positive value per axis."""
    if spacing is None:
        return None
    sp = np.asarray(
        spacing.detach().cpu().numpy() if isinstance(spacing, torch.Tensor) else spacing, dtype=np.float64
    ).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing must have one value per spatial axis ({ndim}), got {sp.size} values: {spacing}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing values must be finite and positive, got {spacing}.")
    return np.ascontiguousarray(sp)


def _check_convention(hd95_convention: str) -> str:
    if hd95_convention not in HD95_CONVENTIONS:
        raise ValueError(f"hd95_convention must be one of {HD95_CONVENTIONS}, got {hd95_convention!r}.")
    return hd95_convention


def _check_connectivity(connectivity: int, ndim: int) -> int:
    if not isinstance(connectivity, (int, np.integer)) or not 1 <= int(connectivity) <= ndim:
        raise ValueError(f"connectivity must be an integer in [1, {ndim}] for {ndim}D masks, got {connectivity!r}.")
    return int(connectivity)


def worst_case_distance(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """The distance used when exactly one mask is empty: the diagonal of the volume, ``sqrt(sum((shape*spacing)^2))``.

    Args:
        shape: the spatial shape of the volume, e.g. ``(H, W, D)``.
        spacing: voxel size per axis (mm); None means voxel units.

    Example:
        >>> worst_case_distance((3, 4), spacing=None)
        5.0
    """
    sp = _normalize_spacing(spacing, len(shape))
    extent = np.asarray(shape, dtype=np.float64) * (1.0 if sp is None else sp)
    return float(np.sqrt(np.sum(extent**2)))


# ----------------------------------------------------------------------------------------------------------------
# core computation
# ----------------------------------------------------------------------------------------------------------------
def _crop_box(bbox_a: tuple[slice, ...] | None, bbox_b: tuple[slice, ...] | None, shape: Sequence[int]):
    """The joint bounding box of two masks, grown by one voxel on every side and clipped to the array.

    Why the surface distances computed inside this box equal those on the whole array:

    - surfaces: a surface voxel lies inside the joint bounding box; its erosion neighbourhood (one voxel away) lies
      inside the grown box or outside the array. A neighbour outside the array counts as background in both cases
      (``binary_erosion``'s ``border_value=0``), and a neighbour cut off by the box would be a margin voxel, which is
      background in both masks anyway. So each mask's surface in the box is exactly its surface on the full array,
      and both masks have no voxel outside the box.
    - distances: ``distance_transform_edt(~surface_ref)`` at voxel x is the minimum of ``|x - z|`` (with spacing)
      over the zero voxels z, i.e. over the surface voxels of the reference. *Every* surface voxel of the reference
      lies in the box, so the minimum runs over the same set of points with the same coordinates (up to a common
      offset) and the nearest surface voxel, wherever it is, is found. Only values at surface voxels of the
      other mask are read, and those are in the box too. The cropped transform is therefore exact, not an
      approximation, and its cost scales with the box instead of the volume.
    """
    box = []
    for ax, n in enumerate(shape):
        starts = [b[ax].start for b in (bbox_a, bbox_b) if b is not None]
        stops = [b[ax].stop for b in (bbox_a, bbox_b) if b is not None]
        box.append(slice(max(min(starts) - 1, 0), min(max(stops) + 1, n)))
    return tuple(box)


def _surface(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    # medpy: result ^ binary_erosion(result, structure=footprint, iterations=1), border_value=0
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def _empty_result(n_pred: int, n_ref: int, worst: float, hd95_convention: str) -> dict[str, Any]:
    if n_pred == 0 and n_ref == 0:
        values, kind = {"dice": 1.0, "hd": 0.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}, "both"
    else:
        values = {"dice": 0.0, "hd": worst, "hd95": worst, "asd": worst, "assd": worst}
        kind = "pred" if n_pred == 0 else "ref"
    return {**values, "empty": kind, "pred_voxels": n_pred, "ref_voxels": n_ref, "hd95_convention": hd95_convention}


def _metrics_in_box(
    pred: np.ndarray,
    ref: np.ndarray,
    n_pred: int,
    n_ref: int,
    spacing: np.ndarray | None,
    connectivity: int,
    hd95_convention: str,
) -> dict[str, Any]:
    """All five metrics for two non-empty boolean masks already cropped with :func:`_crop_box`."""
    structure = generate_binary_structure(pred.ndim, connectivity)
    intersection = int(np.count_nonzero(pred & ref))
    dice = 2.0 * intersection / float(n_pred + n_ref)
    surf_pred = _surface(pred, structure)
    surf_ref = _surface(ref, structure)
    # each distance transform is computed once and shared by hd, hd95, asd and assd
    d_pred_to_ref = distance_transform_edt(~surf_ref, sampling=spacing)[surf_pred]
    d_ref_to_pred = distance_transform_edt(~surf_pred, sampling=spacing)[surf_ref]
    pooled = np.hstack((d_pred_to_ref, d_ref_to_pred))
    if hd95_convention == "medpy":
        hd95 = float(np.percentile(pooled, 95))
    else:
        hd95 = float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))
    return {
        "dice": float(dice),
        "hd": float(max(d_pred_to_ref.max(), d_ref_to_pred.max())),
        "hd95": hd95,
        "asd": float(d_pred_to_ref.mean()),
        "assd": float(pooled.mean()),
        "empty": None,
        "pred_voxels": int(n_pred),
        "ref_voxels": int(n_ref),
        "hd95_convention": hd95_convention,
    }


def binary_metrics(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    spacing: float | Sequence[float] | np.ndarray | None = None,
    hd95_convention: str = "medpy",
    connectivity: int = 1,
) -> dict[str, Any]:
    """Dice, HD, HD95, ASD and ASSD of one binary prediction against one binary reference.

    Values equal ``medpy.metric.binary.dc / hd / hd95 / asd / assd(pred, ref, voxelspacing=spacing,
    connectivity=connectivity)``; see the module docstring for the conventions and the empty-mask policy.

    Args:
        pred: predicted mask, any shape ``(H, W[, D])``; non-zero voxels are foreground. NumPy array or tensor.
        ref: reference mask of the same shape.
        spacing: voxel size per axis (e.g. mm), or one number for every axis; None gives voxel units.
        hd95_convention: ``"medpy"`` (95th percentile of the pooled distances of both directions) or ``"monai"``
            (larger of the two directed 95th percentiles).
        connectivity: neighbourhood defining the surface (``generate_binary_structure(ndim, connectivity)``).

    Returns:
        ``{"dice", "hd", "hd95", "asd", "assd"}`` as floats, plus ``"empty"`` (None, ``"pred"``, ``"ref"`` or
        ``"both"``), ``"pred_voxels"``, ``"ref_voxels"`` and ``"hd95_convention"``.

    Raises:
        ValueError: on a shape mismatch, NaN values, a 0-d input, a bad spacing, connectivity or convention.

    Example:
        >>> ref = np.zeros((32, 32, 8), bool); ref[8:24, 8:24, 2:6] = True
        >>> pred = np.roll(ref, 2, axis=0)
        >>> m = binary_metrics(pred, ref, spacing=(1.5, 1.5, 8.0))
        >>> round(m["dice"], 3), m["hd"]
        (0.875, 3.0)
    """
    hd95_convention = _check_convention(hd95_convention)
    p, r = _to_numpy(pred, "pred"), _to_numpy(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    if p.ndim == 0:
        raise ValueError("pred and ref must have at least one dimension, got scalars.")
    for name, arr in (("pred", p), ("ref", r)):
        if arr.dtype.kind in "fc" and np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN values.")
    sp = _normalize_spacing(spacing, p.ndim)
    connectivity = _check_connectivity(connectivity, p.ndim)
    p, r = p.astype(bool, copy=False), r.astype(bool, copy=False)
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    if n_pred == 0 or n_ref == 0:
        return _empty_result(n_pred, n_ref, worst_case_distance(p.shape, sp), hd95_convention)
    bbox_p = find_objects(p.view(np.uint8))[0]
    bbox_r = find_objects(r.view(np.uint8))[0]
    box = _crop_box(bbox_p, bbox_r, p.shape)
    return _metrics_in_box(p[box], r[box], n_pred, n_ref, sp, connectivity, hd95_convention)


# ----------------------------------------------------------------------------------------------------------------
# multi-class label maps
# ----------------------------------------------------------------------------------------------------------------
def _as_label_map(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind in "fc":
        if arr.dtype.kind == "c":
            raise ValueError(f"{name} must be a real-valued label map, got dtype {arr.dtype}.")
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN values; expected an integer label map.")
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} contains non-integer values; expected an integer label map (argmax first).")
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}.")
    return arr


def _foreground_labels(num_classes: int | None, labels: Sequence[int] | None) -> list[int]:
    if (num_classes is None) == (labels is None):
        raise ValueError("give exactly one of num_classes (background included) or labels (foreground values).")
    if num_classes is not None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be an integer >= 2, got {num_classes}.")
        return list(range(1, int(num_classes)))
    fg = [int(v) for v in labels]  # type: ignore[union-attr]
    if not fg or any(v <= 0 for v in fg) or len(set(fg)) != len(fg) or any(v != w for v, w in zip(fg, labels)):
        raise ValueError(f"labels must be distinct positive integers (0 is the background), got {list(labels)}.")
    return fg


def _class_names(class_names: Sequence[str] | Mapping[int, str] | None, fg: list[int]) -> list[str]:
    if class_names is None:
        return [str(c) for c in fg]
    if isinstance(class_names, Mapping):
        missing = [c for c in fg if c not in class_names]
        if missing:
            raise ValueError(f"class_names has no name for label(s) {missing}.")
        return [str(class_names[c]) for c in fg]
    names = [str(n) for n in class_names]
    if len(names) == len(fg):
        return names
    if len(names) == len(fg) + 1:  # background name included first, e.g. ["background", "RV", "MYO", "LV"]
        return names[1:]
    raise ValueError(
        f"class_names must name the {len(fg)} foreground classes (optionally preceded by the background), "
        f"got {len(names)} names: {names}."
    )


def _check_values(arr: np.ndarray, name: str, allowed_max: int, allowed: set[int]) -> list:
    """Validate a label map and return ``find_objects`` boxes (index v-1 is the box of value v)."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    vmin, vmax = int(arr.min()), int(arr.max())
    if vmin < 0 or vmax > allowed_max:
        bad = vmin if vmin < 0 else vmax
        raise ValueError(f"{name} contains value {bad} outside the labels {sorted(allowed | {0})}.")
    boxes = find_objects(arr if arr.dtype.kind == "i" or arr.dtype.itemsize < 8 else arr.astype(np.int64))
    present = {i + 1 for i, b in enumerate(boxes) if b is not None}
    outside = sorted(present - allowed)
    if outside:
        raise ValueError(f"{name} contains value(s) {outside} outside the labels {sorted(allowed | {0})}.")
    return boxes


def multiclass_metrics(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    num_classes: int | None = None,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | np.ndarray | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    hd95_convention: str = "medpy",
    connectivity: int = 1,
) -> list[dict[str, Any]]:
    """:func:`binary_metrics` for every foreground class of two label maps.

    Args:
        pred: predicted label map ``(H, W, D)`` (or 2D), integer values (floats holding integers are accepted).
        ref: reference label map of the same shape.
        num_classes: number of classes *including* the background 0; foreground classes are ``1..num_classes-1``.
        labels: alternatively, the foreground label values, e.g. ``[205, 420, 500]``. Give exactly one of the two.
        spacing: voxel size per axis (mm); None gives voxel units.
        class_names: names of the foreground classes (a sequence aligned with them, optionally preceded by the
            background's name, or a ``{label: name}`` mapping); default: the label values as strings.
        hd95_convention: ``"medpy"`` or ``"monai"``, see :func:`binary_metrics`.
        connectivity: surface neighbourhood, see :func:`binary_metrics`.

    Returns:
        one dict per foreground class, in label order: ``class_index``, ``class_name`` and the keys of
        :func:`binary_metrics`. The empty-mask worst case is the diagonal of the whole label map.

    Raises:
        ValueError: on a shape mismatch, NaN or non-integer values, values that are not 0 or a listed label.

    Example:
        >>> ref = np.zeros((16, 16, 4), np.int64); ref[2:8, 2:8] = 1; ref[8:14, 8:14] = 2
        >>> rows = multiclass_metrics(ref, ref, num_classes=3, spacing=(1.5, 1.5, 5.0), class_names=["A", "B"])
        >>> [(r["class_name"], r["dice"], r["hd"]) for r in rows]
        [('A', 1.0, 0.0), ('B', 1.0, 0.0)]
    """
    hd95_convention = _check_convention(hd95_convention)
    fg = _foreground_labels(num_classes, labels)
    names = _class_names(class_names, fg)
    p, r = _as_label_map(pred, "pred"), _as_label_map(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}.")
    if p.ndim == 0:
        raise ValueError("pred and ref must be label maps with at least one dimension, got scalars.")
    sp = _normalize_spacing(spacing, p.ndim)
    connectivity = _check_connectivity(connectivity, p.ndim)
    allowed = set(fg)
    boxes_p = _check_values(p, "pred", max(fg), allowed)
    boxes_r = _check_values(r, "ref", max(fg), allowed)
    worst = worst_case_distance(p.shape, sp)
    rows = []
    for c, name in zip(fg, names):
        bp, br = boxes_p[c - 1] if c <= len(boxes_p) else None, boxes_r[c - 1] if c <= len(boxes_r) else None
        if bp is None or br is None:
            n_pred = 0 if bp is None else int(np.count_nonzero(p[bp] == c))
            n_ref = 0 if br is None else int(np.count_nonzero(r[br] == c))
            res = _empty_result(n_pred, n_ref, worst, hd95_convention)
        else:
            box = _crop_box(bp, br, p.shape)
            pc, rc = p[box] == c, r[box] == c
            res = _metrics_in_box(
                pc, rc, int(np.count_nonzero(pc)), int(np.count_nonzero(rc)), sp, connectivity, hd95_convention
            )
        rows.append({"class_index": c, "class_name": name, **res})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float], ddof: int) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else 0.0
    return {"mean": float(arr.mean()), "std": std}


def aggregate(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRIC_NAMES, volume_key: str = "volume", ddof: int = 0
) -> dict[str, Any]:
    """Summarise per-(volume, class) rows: per volume mean over classes, then mean and std over volumes.

    Empty-mask rows carry their policy values (see the module docstring) and are counted like any other row.

    Args:
        rows: dicts as returned by :func:`multiclass_metrics` with an added ``volume_key`` entry naming the volume.
        metrics: the metric keys to summarise.
        volume_key: the key identifying the volume of a row.
        ddof: delta degrees of freedom of the standard deviations (0: population std, like ``np.std``).

    Returns:
        ``{"num_volumes", "num_classes", "metrics": {m: {"mean", "std"}}`` (over the per-volume class means),
        ``"per_class": {name: {"class_index", "n", m: {"mean", "std"}, "empty": {"pred", "ref", "both"}}}``,
        ``"per_volume": [{volume_key, m: mean over classes}]``, ``"empty": {"pred", "ref", "both"}`` (totals)}.

    Example:
        >>> rows = [{"volume": "a", "class_index": 1, "class_name": "LV", "dice": 0.8},
        ...         {"volume": "b", "class_index": 1, "class_name": "LV", "dice": 0.6}]
        >>> s = aggregate(rows, metrics=["dice"])
        >>> round(s["metrics"]["dice"]["mean"], 6), round(s["metrics"]["dice"]["std"], 6)
        (0.7, 0.1)
    """
    if len(rows) == 0:
        raise ValueError("aggregate needs at least one row.")
    per_volume: dict[str, list[Mapping[str, Any]]] = {}
    per_class: dict[Any, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        if volume_key not in row:
            raise ValueError(f"row {i} has no {volume_key!r} entry: {dict(row)}.")
        missing = [m for m in metrics if m not in row]
        if missing:
            raise ValueError(f"row {i} (volume {row[volume_key]!r}) lacks metric(s) {missing}.")
        per_volume.setdefault(str(row[volume_key]), []).append(row)
        key = row.get("class_name", row.get("class_index"))
        per_class.setdefault(str(key), []).append(row)

    volume_means = []
    for vol, vrows in per_volume.items():
        entry: dict[str, Any] = {volume_key: vol}
        for m in metrics:
            entry[m] = float(np.mean([float(r[m]) for r in vrows]))
        volume_means.append(entry)

    summary: dict[str, Any] = {
        "num_volumes": len(per_volume),
        "num_classes": len(per_class),
        "metrics": {m: _mean_std([v[m] for v in volume_means], ddof) for m in metrics},
        "per_class": {},
        "per_volume": volume_means,
        "empty": {k: sum(1 for r in rows if r.get("empty") == k) for k in _EMPTY_KINDS},
    }
    for name, crows in per_class.items():
        centry: dict[str, Any] = {"class_index": crows[0].get("class_index"), "n": len(crows)}
        for m in metrics:
            centry[m] = _mean_std([float(r[m]) for r in crows], ddof)
        centry["empty"] = {k: sum(1 for r in crows if r.get("empty") == k) for k in _EMPTY_KINDS}
        summary["per_class"][name] = centry
    return summary
