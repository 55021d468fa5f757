"""Report figures: overlay PNGs of predictions on the test volumes, and training curves from TensorBoard logs.

Drawn with matplotlib's Agg backend and written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ideal_components.reporting.tables import PREDICTIONS_DIR, SUMMARY_NAME, _as_list
from ideal_components.utils import atomic_write_bytes, image_stem

__all__ = ["find_predictions", "choose_slices", "plot_overlay", "read_scalars", "plot_training_curves"]

logger = logging.getLogger(__name__)

_NIFTI_EXTS = (".nii.gz", ".nii")


def _save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------------------------
# overlays
# ----------------------------------------------------------------------------------------------------------------
def _datalist_items(datalist: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``{image basename without extension: item with absolute paths}`` for the test / validation items."""
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt datalist, not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt datalist, expected a JSON object with 'test' / 'validation' lists.")
    keys = [k for k in ("test", "validation") if isinstance(data.get(k), list)]
    keys += [k for k, v in data.items() if k not in keys and isinstance(v, list)]  # e.g. 'training' as a fallback
    items: dict[str, dict[str, Any]] = {}
    for key in keys:
        for item in data[key]:
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                continue
            resolved = dict(item)
            for k in ("image", "label"):
                if isinstance(item.get(k), str):
                    resolved[k] = str((path.parent / item[k]) if not os.path.isabs(item[k]) else Path(item[k]))
            items.setdefault(image_stem(item["image"]), resolved)
    return items, data


def find_predictions(run_dir: str | os.PathLike, postfix: str = "seg") -> dict[str, Path]:
    """``{image basename: prediction file}`` for the NIfTI files under ``<run_dir>/predictions`` (any depth).

    Example:
        >>> find_predictions("bundles/ideal_acdc/eval")  # doctest: +SKIP
        {'patient007_frame01': PosixPath('bundles/ideal_acdc/eval/predictions/patient007_frame01_seg.nii.gz')}
    """
    folder = Path(run_dir) / PREDICTIONS_DIR
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or not p.name.lower().endswith(_NIFTI_EXTS):
            continue  # hidden: a temporary file of an atomic write that a kill left behind
        stem = image_stem(p.name)
        if postfix and stem.endswith("_" + postfix):
            stem = stem[: -len(postfix) - 1]
        found.setdefault(stem, p)
    return found


def _load_volume(path: str | os.PathLike, what: str, reference: Any = None) -> tuple[np.ndarray, Any]:
    """Read a NIfTI as a 3D array (one-hot / multi-channel labels are arg-maxed), reoriented like ``reference``."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what} file.")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several kinds for truncated / corrupt files
        raise ValueError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}).") from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 5 and arr.shape[3] == 1:
        arr = arr[:, :, :, 0]
    if arr.ndim == 4:
        arr = arr[..., 0] if what == "image" else np.argmax(arr, axis=-1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: the {what} must be a 3D volume, got shape {arr.shape}.")
    if reference is not None:
        ref_ornt, own_ornt = io_orientation(reference.affine), io_orientation(img.affine)
        if not np.array_equal(ref_ornt, own_ornt):
            arr = apply_orientation(arr, ornt_transform(own_ornt, ref_ornt))
    return np.asarray(arr), img


def choose_slices(label: np.ndarray | None, num: int, fallback: np.ndarray | None = None) -> list[int]:
    """Pick ``num`` slices along the last axis, spread from the first to the last slice holding foreground.

    The slices with foreground in ``label`` (else in ``fallback``, else all) are cut into ``num`` consecutive groups
    and the slice with the most foreground of each group is taken (for short-axis stacks: apex to base).

    Example:
        >>> lab = np.zeros((4, 4, 10), int); lab[1:3, 1:3, 2:8] = 1; lab[:, :, 4] = 1
        >>> choose_slices(lab, 3)
        [2, 4, 6]
    """
    if num < 1:
        raise ValueError(f"slices must be >= 1, got {num}.")
    counts = None
    for arr in (label, fallback):
        if arr is not None and np.any(arr):
            counts = np.count_nonzero(arr.reshape(-1, arr.shape[-1]), axis=0)
            break
    depth = (label if label is not None else fallback).shape[-1] if (label is not None or fallback is not None) else 0
    if counts is None:
        return sorted({int(round(x)) for x in np.linspace(0, max(depth - 1, 0), num)})
    candidates = np.flatnonzero(counts)
    if len(candidates) <= num:
        return [int(c) for c in candidates]
    chosen = [int(g[np.argmax(counts[g])]) for g in np.array_split(candidates, num)]
    return sorted(set(chosen))


def _class_table(rows: Sequence[Mapping[str, Any]], labels: Sequence[int], class_names: Any) -> dict[int, str]:
    names: dict[int, str] = {}
    for r in rows:
        try:
            names.setdefault(int(float(r.get("class_index") or 0)), str(r["class_name"]))
        except (TypeError, ValueError):
            continue
    if isinstance(class_names, Mapping):
        names.update({int(k): str(v) for k, v in class_names.items()})
    elif class_names is not None:
        lst = _as_list(class_names) or []
        fg = sorted(set(names) | set(labels))
        if len(lst) == len(fg) + 1:
            lst = lst[1:]
        names.update(dict(zip(fg, lst)))
    for c in labels:
        names.setdefault(int(c), str(c))
    return names


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray,
    path: str | os.PathLike,
    slices: int = 3,
    class_names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> list[int]:
    """Write a PNG with ``slices`` slices of a volume: image grey, reference contours solid, prediction dashed.

    Args:
        image: ``(H, W, D)`` intensities.
        label: ``(H, W, D)`` reference label map, or None (only the prediction is drawn).
        pred: ``(H, W, D)`` predicted label map.
        path: the PNG file (written atomically).
        slices: how many slices to show, see :func:`choose_slices`.
        class_names: ``{label value: name}`` for the legend.
        title: the figure title.

    Returns:
        the slice indices shown.

    Example:
        >>> img = np.random.rand(32, 32, 4); lab = np.zeros((32, 32, 4), int); lab[8:20, 8:20] = 1
        >>> plot_overlay(img, lab, np.roll(lab, 2, 0), "/tmp/overlay.png", slices=2)  # doctest: +SKIP
        [0, 2]
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    if image.shape != pred.shape or (label is not None and label.shape != image.shape):
        shapes = f"image {image.shape}, prediction {pred.shape}" + (
            f", label {label.shape}" if label is not None else ""
        )
        raise ValueError(f"{path}: the volumes to overlay differ in shape ({shapes}).")
    ks = choose_slices(label, slices, fallback=pred)
    values = sorted(
        {int(v) for v in np.unique(pred) if v > 0}
        | ({int(v) for v in np.unique(label) if v > 0} if label is not None else set())
    )
    class_names = dict(class_names or {})
    values = sorted(set(values) | {c for c in class_names if c > 0})
    cmap = plt.get_cmap("tab10")
    colours = {c: cmap(i % 10) for i, c in enumerate(values)}
    finite = image[np.isfinite(image)]
    vmin, vmax = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    n = len(ks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        ax.imshow(image[..., k].T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
        for c in values:
            for arr, style in ((label, "solid"), (pred, "dashed")):
                if arr is None:
                    continue
                mask = (arr[..., k] == c).T
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colours[c]], linestyles=style, linewidths=1.4)
        ax.set_title(f"slice {k + 1}/{image.shape[-1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colours[c], lw=3, label=class_names.get(c, str(c))) for c in values]
    handles += [
        Line2D([], [], color="black", lw=1.4, ls="solid", label="reference"),
        Line2D([], [], color="black", lw=1.4, ls="dashed", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    _save_figure(fig, path)
    return ks


def _resolve_datalist(run: Mapping[str, Any], datalist: Any) -> Path | None:
    if datalist:
        return Path(datalist)
    recorded = run["summary"].get("datalist")
    if isinstance(recorded, str) and recorded:
        p = Path(recorded)
        return p if p.is_absolute() else Path(run["run_dir"]) / p
    default = Path(run["run_dir"]).parent / "data" / "prepared" / "datalist.json"
    return default if default.is_file() else None


def _overlays_for_run(run: Mapping[str, Any], out_dir: Path, datalist: Any, slices: int, class_names: Any) -> list[str]:
    predictions = find_predictions(run["run_dir"])
    if not predictions:
        logger.warning("%s: no predictions found; skipping the overlays.", Path(run["run_dir"]) / PREDICTIONS_DIR)
        return []
    dl = _resolve_datalist(run, datalist)
    if dl is None:
        logger.warning(
            "%s: no datalist given (--datalist) nor recorded in %s; skipping the overlays.",
            run["run_dir"],
            SUMMARY_NAME,
        )
        return []
    items, _ = _datalist_items(dl)
    dice_by_volume = {str(v["volume"]): v["dice"] for v in run["per_volume"]}
    labels = sorted({int(float(r.get("class_index") or 0)) for r in run["rows"]} - {0})
    names = _class_table(run["rows"], labels, class_names)
    written = []
    for vid, pred_path in predictions.items():
        item = items.get(vid)
        if item is None:
            logger.warning("%s: no datalist item in %s has the image %s; skipped.", pred_path, dl, vid)
            continue
        image, image_img = _load_volume(item["image"], "image")
        label = _load_volume(item["label"], "label", image_img)[0] if item.get("label") else None
        pred = _load_volume(pred_path, "prediction", image_img)[0]
        if pred.shape != image.shape or (label is not None and label.shape != image.shape):
            raise ValueError(
                f"{pred_path}: prediction shape {pred.shape} does not match the image {item['image']} {image.shape}"
                + (f" / label {label.shape}" if label is not None else "")
                + "; were the predictions saved in the prepared image space?"
            )
        out_id = str(item.get("id") or vid)
        dice = None
        for key in (out_id, vid, image_stem(str(item.get("label", "")))):
            if key in dice_by_volume:
                dice = dice_by_volume[key]
                break
        title = out_id + (f" (mean DSC {dice:.3f})" if dice is not None else "")
        png = out_dir / "overlays" / f"{out_id}.png"
        plot_overlay(image, label, pred, png, slices=slices, class_names=names, title=title)
        written.append(str(png))
    return written


# ----------------------------------------------------------------------------------------------------------------
# training curves
# ----------------------------------------------------------------------------------------------------------------
def read_scalars(logs: str | os.PathLike) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Every TensorBoard scalar under ``logs``: ``{run folder (relative to logs): {tag: (steps, values)}}``.

    Each folder holding ``events.out.tfevents.*`` files is read with tensorboard's ``EventAccumulator`` (all
    points kept); e.g. ``{"pretrain": {"pretrain_loss": ...}, "train": {"train_loss": ..., "val_mean_dice": ...}}``.

    Example:
        >>> curves = read_scalars("bundles/ideal_acdc/logs")  # doctest: +SKIP
    """
    from tensorboard.backend.event_processing import event_accumulator as ea

    root = Path(logs)
    folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})
    result: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for folder in folders:
        acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0})
        try:
            acc.Reload()
        except Exception as e:  # a truncated event file must not stop the report
            logger.warning("%s: cannot read the TensorBoard events (%s); skipped.", folder, e)
            continue
        tags = acc.Tags().get("scalars", [])
        if not tags:
            continue
        rel = folder.relative_to(root).as_posix()
        result[rel if rel != "." else ""] = {}
        for tag in sorted(tags):
            events = sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))
            result[rel if rel != "." else ""][tag] = ([int(e.step) for e in events], [float(e.value) for e in events])
    return result


def plot_training_curves(logs: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> bool:
    """Write one subplot per TensorBoard scalar tag found under ``logs`` (x = step) to ``path``.

    Returns:
        False (and writes nothing) when no scalar was found.

    Example:
        >>> plot_training_curves("bundles/ideal_acdc/logs", "training_curves.png")  # doctest: +SKIP
        True
    """
    scalars = read_scalars(logs)
    panels = [(folder, tag, xy) for folder, tags in scalars.items() for tag, xy in tags.items()]
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (folder, tag, (steps, values)) in zip(axes.ravel(), panels):
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=3, lw=1.2)
        ax.set_title(f"{folder}: {tag}" if folder else tag, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    return True
