"""MMWHS (MRI) preparation: ``python -m ideal_components prepare_mmwhs --root MMWHS/mr_train --out prepared/mmwhs``.

Raw layout: ``mr_train_1001_image.nii.gz`` / ``mr_train_1001_label.nii.gz`` ... ``1020`` (anywhere under the root).
Label codes are mapped in ascending order: 205 -> 1 LV myocardium, 420 -> 2 left atrium, 500 -> 3 LV blood cavity,
550 -> 4 right atrium, 600 -> 5 RV blood cavity, 820 -> 6 ascending aorta, 850 -> 7 pulmonary artery; any other
value becomes background (counted as ``stray_voxels`` in the provenance and the log, not an error).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..facts import MMWHS_CLASS_NAMES, MMWHS_CODES, label_names_record
from .io import DataError
from .prepare import DatasetLayout, VolumeSpec, prepare_dataset

__all__ = ["MmwhsLayout", "map_mmwhs_labels", "prepare_mmwhs"]

logger = logging.getLogger(__name__)

_IMAGE = re.compile(r"^(mr_train_\d+)_image\.nii(\.gz)?$")


def map_mmwhs_labels(data: np.ndarray) -> tuple[np.ndarray, int, list[float]]:
    """Raw MMWHS codes -> ``0..7`` (uint8); other non-zero values -> 0.

    Returns:
        (mapped labels, number of stray voxels, the stray values found (at most 10)).

    Example::

        labels, stray, values = map_mmwhs_labels(np.array([0, 205, 850, 421]))  # [0, 1, 7, 0], 1, [421.0]
    """
    out = np.zeros(data.shape, dtype=np.uint8)
    known = np.zeros(data.shape, dtype=bool)
    for code, index in MMWHS_CODES.items():
        mask = data == code
        out[mask] = index
        known |= mask
    stray_mask = ~known & (data != 0)
    stray = int(stray_mask.sum())
    values = np.unique(data[stray_mask])[:10].tolist() if stray else []
    return out, stray, [float(v) for v in values]


class MmwhsLayout(DatasetLayout):
    """The MMWHS MRI layout: ``mr_train_XXXX_image`` / ``mr_train_XXXX_label`` NIfTI pairs."""

    name = "mmwhs"
    slice_axis = "canonical"
    label_names = label_names_record(MMWHS_CLASS_NAMES)

    def discover(self, root: Path) -> dict[str, VolumeSpec]:
        found: dict[str, VolumeSpec] = {}
        for path in sorted(root.rglob("mr_train_*_image.nii*")):
            match = _IMAGE.match(path.name)
            if not match or not path.is_file():
                continue
            patient = match.group(1)
            if patient in found:
                raise DataError(f"{path}: {patient} also found as {found[patient].image}.")
            label = path.with_name(f"{patient}_label.nii{match.group(2) or ''}")
            if not label.exists():
                other = path.with_name(f"{patient}_label.nii{'' if match.group(2) else '.gz'}")
                label = other if other.exists() else label
            found[patient] = VolumeSpec(id=patient, patient=patient, image=path, label=label)
        if not found:
            raise DataError(f"{root}: no MMWHS mr_train_XXXX_image.nii.gz files under {root}.")
        return found

    def volumes(self, patient: str, source: VolumeSpec) -> list[VolumeSpec]:
        return [source]

    def map_label(self, data: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        labels, stray, values = map_mmwhs_labels(data)
        if stray:
            logger.warning("%s: %d voxel(s) with unknown label values %s set to background", path, stray, values)
        return labels, {"stray_voxels": stray, "stray_values": values}

    def settings(self) -> dict[str, Any]:
        return {"label_map": {str(k): v for k, v in MMWHS_CODES.items()}}


def prepare_mmwhs(
    root: str,
    out: str,
    pixdim: float | Sequence[float] = 1.5,
    spatial_size: int | Sequence[int] = 160,
    seed: int | None = None,
    fractions: Iterable[float | str] | float | str | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
) -> str:
    """Prepare MMWHS MRI for the bundles: validate, map the label codes, preprocess and write ``out/imagesTr``,
    ``out/labelsTr``, ``out/datalist.json`` (format: ``docs/architecture.md``). ``root`` is only read.

    Each volume is reoriented to RAS (slices along S), resampled in-plane to ``pixdim`` (slice spacing kept),
    min-max normalised between its 1st and 99th percentile and centre cropped / padded to ``spatial_size``.
    With all 20 volumes the published split is used (test 1011-1020, validation 1002, 1005, labelled 10 % = 1003,
    20 % = 1001, 1003, 40 % = 1001, 1003, 1004, 1006); other sets get a seeded split in the same proportions.

    Args:
        root: folder holding ``mr_train_XXXX_image.nii.gz`` / ``mr_train_XXXX_label.nii.gz`` (searched recursively).
        out: output folder (created; must not be inside ``root``).
        pixdim: in-plane spacing in mm (number or pair).
        spatial_size: in-plane size (number or pair).
        seed: ``None``: published labelled subsets; an int redraws them (nested, same sizes) or seeds the split of
            a non-standard volume set.
        fractions: label fractions in percent (default 10, 20, 40, 100).
        skip_bad: log and skip bad volumes (listed under ``"skipped"`` in the datalist) instead of stopping.
        overwrite: re-prepare volumes whose outputs already exist (default: skip them).
        num_workers: worker processes (0: prepare in this process).

    Returns:
        the path of ``datalist.json``.

    Example::

        python -m ideal_components prepare_mmwhs --root MMWHS/mr_train --out prepared/mmwhs
    """
    return prepare_dataset(
        MmwhsLayout(),
        root,
        out,
        pixdim=pixdim,
        spatial_size=spatial_size,
        seed=seed,
        fractions=fractions,
        skip_bad=skip_bad,
        overwrite=overwrite,
        num_workers=num_workers,
        extra_preparation={"label_codes": {str(k): v for k, v in MMWHS_CODES.items()}},
    )
