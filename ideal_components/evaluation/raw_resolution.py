"""Metrics at the raw resolution: each prediction brought back to its raw volume's grid and compared with the raw label.

The bundles evaluate on the prepared grid (in-plane ``pixdim``, cropped or padded to ``spatial_size``), where the
prepared label is a nearest-neighbour resampling of the raw one. Published numbers are computed against the raw
labels, at the scanner's spacing. :func:`raw_resolution_metrics` reads the datalist's provenance (raw image and label
paths) and its ``preparation`` record (the settings of the chain), re-applies that invertible chain
(:func:`ideal_components.data.preprocessing.preprocessing_transforms`) to the raw image to recover the exact
transforms, inverts them on the one-hot prediction (bilinear per class, then argmax, as ``inference.json`` does),
maps the raw label with the dataset's label codes and computes the same metrics as
:class:`~ideal_components.evaluation.writer.VolumeMetricsWriter` at the raw spacing. Raw files that are no longer
where they were prepared are reported and skipped; the raw folders are only read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from ideal_components.data.io import DataError, load_nifti
from ideal_components.data.preprocessing import preprocessing_transforms, to_metatensor
from ideal_components.evaluation.writer import VolumeMetricsWriter
from ideal_components.utils import image_stem

__all__ = ["map_raw_label", "prediction_to_raw", "raw_resolution_metrics"]

logger = logging.getLogger(__name__)


def map_raw_label(data: np.ndarray, label_map: str | Mapping[str, int], path: str = "label") -> np.ndarray:
    """Raw label codes -> the class indices used in training, as the preparation did.

    Args:
        data: the raw label array.
        label_map: the preparation record's ``label_map``: ``"acdc"`` (0-3 stored as such, anything else is an
            error), ``"mmwhs"`` or a ``{raw code: class index}`` mapping (other values -> background, as in
            preparation).
        path: the file, for error messages.
    """
    if isinstance(label_map, Mapping):
        out = np.zeros(data.shape, dtype=np.uint8)
        for code, index in label_map.items():
            out[data == float(code)] = int(index)
        return out
    if label_map == "acdc":
        from ideal_components.data.acdc import AcdcLayout

        return AcdcLayout().map_label(data, Path(path))[0]
    if label_map == "mmwhs":
        from ideal_components.data.mmwhs import map_mmwhs_labels

        return map_mmwhs_labels(data)[0]
    raise ValueError(f"unknown label_map {label_map!r} (expected 'acdc' or 'mmwhs').")


def prediction_to_raw(
    pred: np.ndarray, raw_image: str | os.PathLike, preparation: Mapping[str, Any], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a label map on the prepared grid back to the grid of ``raw_image``.

    Args:
        pred: the prediction ``(H, W, D)`` on the prepared grid (integer classes).
        raw_image: the raw image it was prepared from.
        preparation: the datalist's ``"preparation"`` record (``pixdim``, ``spatial_size``, ``percentiles``,
            ``slice_axis``).
        num_classes: classes including the background.

    Returns:
        ``(labels, affine)``: the label map with the raw image's shape, and the raw image's affine.

    Raises:
        DataError: the raw image is unreadable, or ``pred`` does not have the prepared grid's shape.
    """
    img = load_nifti(raw_image, what="raw image")
    chain = preprocessing_transforms(
        keys=("image",),
        pixdim=preparation["pixdim"],
        spatial_size=preparation["spatial_size"],
        percentiles=preparation.get("percentiles", (1.0, 99.0)),
        slice_axis=preparation.get("slice_axis", "last"),
    )
    prepared = chain({"image": to_metatensor(np.asanyarray(img.dataobj), img.affine, str(raw_image))})["image"]
    if tuple(prepared.shape[1:]) != tuple(pred.shape):
        raise DataError(
            f"{raw_image}: the prediction has shape {tuple(pred.shape)}, but preparing this raw image gives "
            f"{tuple(prepared.shape[1:])}: was it prepared with other settings?"
        )
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long), num_classes)
    onehot = MetaTensor(onehot.permute(3, 0, 1, 2).float(), affine=prepared.affine)
    inverted = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=False)(
        {"pred": onehot, "image": prepared}
    )["pred"]
    labels = torch.argmax(torch.as_tensor(inverted), dim=0).numpy().astype(np.uint8)
    if labels.shape != img.shape:
        raise DataError(f"{raw_image}: the inverted prediction has shape {labels.shape}, expected {img.shape}.")
    return labels, np.asarray(img.affine)


def raw_resolution_metrics(
    eval_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    split: str = "test",
    predictions_dir: str | os.PathLike | None = None,
    postfix: str = "seg",
    class_names: Sequence[str] | None = None,
    hd95_convention: str = "medpy",
    voxel_units: bool = False,
    csv_name: str = "metrics_per_volume_raw.csv",
    summary_name: str = "metrics_summary_raw.json",
) -> dict[str, Any] | None:
    """DSC, HD, HD95, ASD, ASSD of every prediction of a split against the raw labels, at the raw spacing.

    Args:
        eval_dir: the evaluation output dir (``evaluate.json``'s ``output_dir``); the files are written there.
        datalist: the prepared ``datalist.json`` (with ``provenance`` per item and the ``preparation`` record).
        split: the datalist key of the evaluated items.
        predictions_dir: where ``<prepared image name>_<postfix>.nii.gz`` are, default ``eval_dir/predictions``.
        postfix: the predictions' file-name postfix.
        class_names: foreground class names, default the datalist's label names.
        hd95_convention, voxel_units: as for :class:`~ideal_components.evaluation.writer.VolumeMetricsWriter`.
        csv_name, summary_name: the files written into ``eval_dir``.

    Returns:
        the summary (as in ``metrics_summary.json``, plus ``"skipped"``: one message per volume that could not be
        evaluated), or None when no volume could be evaluated (nothing is written).

    Example::

        raw_resolution_metrics("bundles/ideal_acdc/eval", "prepared/acdc/datalist.json")
    """
    eval_dir = Path(eval_dir)
    with open(datalist) as f:
        content = json.load(f)
    preparation = content.get("preparation")
    if not isinstance(preparation, Mapping):
        raise ValueError(f"{datalist}: no 'preparation' record; was it written by ideal_components' prepare?")
    label_names = preparation.get("label_names") or {}
    num_classes = len(label_names) if label_names else None
    if not num_classes:
        raise ValueError(f"{datalist}: the 'preparation' record has no 'label_names'.")
    names = list(class_names) if class_names else [label_names[str(i)] for i in range(1, num_classes)]
    writer = VolumeMetricsWriter(
        str(eval_dir),
        num_classes=num_classes,
        class_names=names,
        hd95_convention=hd95_convention,
        voxel_units=voxel_units,
        csv_name=csv_name,
        summary_name=summary_name,
    )
    pred_dir = Path(predictions_dir) if predictions_dir is not None else eval_dir / "predictions"
    rows, skipped = [], []
    for item in content.get(split, []):
        stem = image_stem(item["image"])
        pred_path = pred_dir / f"{stem}_{postfix}.nii.gz"
        provenance = item.get("provenance") or {}
        try:
            if not pred_path.is_file():
                raise DataError(f"{pred_path}: no prediction for {item.get('id', stem)}.")
            if "raw_image" not in provenance or "raw_label" not in provenance:
                raise DataError(f"{datalist}: item {item.get('id', stem)} has no raw provenance.")
            pred = np.asarray(load_nifti(pred_path, what="prediction").dataobj)
            labels, affine = prediction_to_raw(pred, provenance["raw_image"], preparation, num_classes)
            raw_label = load_nifti(provenance["raw_label"], what="raw label")
            ref = map_raw_label(
                np.asanyarray(raw_label.dataobj), preparation.get("label_map", ""), provenance["raw_label"]
            )
            if ref.shape != labels.shape:
                raise DataError(f"{provenance['raw_label']}: shape {ref.shape} differs from its image {labels.shape}.")
        except DataError as e:
            skipped.append(str(e))
            logger.warning("raw-resolution metrics: skipping %s: %s", item.get("id", stem), e)
            continue
        meta = {"affine": torch.as_tensor(affine), "filename_or_obj": f"{item.get('id', stem)}.nii.gz"}
        volume_rows = writer.add_item(
            MetaTensor(torch.as_tensor(labels)[None], meta=dict(meta)),
            MetaTensor(torch.as_tensor(ref)[None], meta=meta),
        )
        rows.extend(volume_rows)
    if not rows:
        logger.warning("raw-resolution metrics: no volume of %r could be evaluated; nothing written.", split)
        return None
    return writer.write(rows, extra={"resolution": "raw", "skipped": skipped})
