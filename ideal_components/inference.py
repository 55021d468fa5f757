"""Segmentation outputs that an unattended pipeline can rely on: exact geometry, atomic files, provenance, reruns.

:class:`SegmentationOutputs` decides where the segmentation of each input goes and in which format, writes it
atomically (a temporary file in the output folder, then ``os.replace``: a file under a final name is always
complete), records which model made it in a sidecar JSON (and, for NIfTI, in the header's ``descrip``), and tells
which inputs are already done by the same model, so that a rerun after a kill skips them. :class:`SaveSegmentationd`
is the MONAI transform that ends the bundles' post-processing with it.

Formats (the segmentation is written in a format that opens next to its input, with the input's shape and affine):

====================================  ==============================================
input                                 segmentation
====================================  ==============================================
``x.nii.gz`` / ``x.nii``              ``x_seg.nii.gz`` (nibabel)
``x.nrrd`` / ``x.nhdr``               ``x_seg.nrrd`` (ITK)
``x.mha`` / ``x.mhd``                 ``x_seg.mha`` (ITK; one file, so that the write is atomic)
a DICOM series folder ``x/``          ``x_seg.nii.gz`` (the series' geometry as ITK reads it, RAS affine)
any other file the reader accepts     ``x_seg.nii.gz``
====================================  ==============================================

Each segmentation ``x_seg.<ext>`` has a sidecar ``x_seg.json``, written after it, with the input path and md5, the
model file and its md5, and the bundle name and version. A segmentation counts as complete for a rerun only when
both files exist and the sidecar names the same input content and the same model.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ideal_components.data.io import affines_close
from ideal_components.utils import atomic_path, atomic_write_text, md5sum

__all__ = ["OUTPUT_FORMATS", "SegmentationOutputs", "SaveSegmentationd", "split_format"]

#: input suffix -> suffix of the segmentation written for it (a folder, i.e. a DICOM series, gives NIfTI)
OUTPUT_FORMATS: dict[str, str] = {
    ".nii.gz": ".nii.gz",
    ".nii": ".nii.gz",
    ".nrrd": ".nrrd",
    ".nhdr": ".nrrd",
    ".mha": ".mha",
    ".mhd": ".mha",
}
_DEFAULT_OUTPUT = ".nii.gz"  # also for any other file type a reader accepts


def split_format(path: str | os.PathLike) -> tuple[str, str]:
    """``(stem, segmentation suffix)`` of an input: ``"a/x.nii.gz" -> ("x", ".nii.gz")``, a folder -> NIfTI.

    A file type outside :data:`OUTPUT_FORMATS` that the reader accepted (``x.tif`` through ITK) gets a NIfTI
    segmentation named after its stem.
    """
    p = Path(path)
    if p.is_dir():
        return p.name, _DEFAULT_OUTPUT
    name = p.name
    for suffix in sorted(OUTPUT_FORMATS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], OUTPUT_FORMATS[suffix]
    return p.stem, _DEFAULT_OUTPUT


class SegmentationOutputs:
    """Where each input's segmentation goes, how it is written, which model made it, and which inputs are done.

    Args:
        output_dir: the folder of the segmentations (created when needed; never the input folder's files).
        model_file: the weights the segmentations come from (``models/model.pt``); its md5 is recorded.
        bundle_name: recorded in the sidecar and the NIfTI ``descrip``.
        bundle_version: idem.
        postfix: appended to the input's stem (``x.nii.gz -> x_<postfix>.nii.gz``).

    Attributes:
        written: the segmentations written by this run, in order.

    Example::

        outputs = SegmentationOutputs("segs", "models/model.pt", "ideal_acdc", "0.5.0")
        todo = [item for item in datalist if not outputs.is_complete(item)]
        outputs.write(seg, affine, "scans/x.nii.gz")  # segs/x_seg.nii.gz + segs/x_seg.json
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        model_file: str | os.PathLike,
        bundle_name: str = "",
        bundle_version: str = "",
        postfix: str = "seg",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.model_file = Path(model_file)
        self.bundle_name = str(bundle_name)
        self.bundle_version = str(bundle_version)
        self.postfix = str(postfix)
        self.written: list[str] = []
        self._model_md5: str | None = None

    @property
    def model_md5(self) -> str:
        """md5 of ``model_file`` (read once, when first needed)."""
        if self._model_md5 is None:
            if not self.model_file.is_file():
                raise FileNotFoundError(f"{self.model_file}: model weights not found.")
            self._model_md5 = md5sum(self.model_file)
        return self._model_md5

    def output_path(self, image_path: str | os.PathLike) -> Path:
        """The segmentation file of an input (see the module's table of formats)."""
        stem, suffix = split_format(image_path)
        return self.output_dir / f"{stem}_{self.postfix}{suffix}"

    def sidecar_path(self, image_path: str | os.PathLike) -> Path:
        """The JSON that records the provenance of an input's segmentation."""
        stem, _ = split_format(image_path)
        return self.output_dir / f"{stem}_{self.postfix}.json"

    def is_complete(self, item: Mapping[str, Any] | str | os.PathLike, image_key: str = "image") -> bool:
        """Whether an input's segmentation exists, is complete, and was made from the same input by the same model.

        Args:
            item: a datalist item (``{"image": path}``) or the input path.
            image_key: the key of the input path in ``item``.
        """
        image_path = item[image_key] if isinstance(item, Mapping) else item
        seg, sidecar = self.output_path(image_path), self.sidecar_path(image_path)
        if not (seg.is_file() and sidecar.is_file()):
            return False
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            return (
                record.get("model_md5") == self.model_md5
                and record.get("input_md5") == md5sum(image_path)
                and record.get("segmentation") == seg.name
            )
        except (OSError, ValueError):
            return False

    def write(self, seg: np.ndarray, affine: np.ndarray, image_path: str | os.PathLike) -> Path:
        """Write one segmentation atomically, then its sidecar; returns the segmentation's path.

        Args:
            seg: the label map with exactly the input's spatial shape (integer class indices).
            affine: the input's voxel-to-world affine (RAS, 4x4).
            image_path: the input it belongs to (file or DICOM folder).
        """
        path = self.output_path(image_path)
        seg = np.asarray(seg)
        if seg.size and (seg.min() < 0 or seg.max() > 255):
            raise ValueError(f"{image_path}: class indices outside 0..255 cannot be written as uint8.")
        seg = seg.astype(np.uint8)
        affine = np.asarray(affine, dtype=np.float64)
        for stale in (path, self.sidecar_path(image_path)):  # temporary files that a killed run left behind
            for tmp in stale.parent.glob(f".{stale.name}.*.tmp*"):
                tmp.unlink(missing_ok=True)
        # NIfTI's descrip holds 79 characters: the model's md5 first, so that it is never cut
        description = f"model md5 {self.model_md5} {self.bundle_name} {self.bundle_version}".strip()
        with atomic_path(path) as tmp:
            if path.name.endswith(".nii.gz"):
                img = nib.Nifti1Image(seg, affine)
                img.header["descrip"] = description[:79].encode("ascii", "replace")
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                nib.save(img, tmp)
            else:
                from monai.data import ITKWriter

                writer = ITKWriter(output_dtype=np.uint8)
                writer.set_data_array(seg, channel_dim=None, squeeze_end_dims=False)
                writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
                writer.write(tmp, verbose=False)
        record = {
            "segmentation": path.name,
            "input": str(image_path),
            "input_md5": md5sum(image_path),
            "model_file": str(self.model_file),
            "model_md5": self.model_md5,
            "bundle": self.bundle_name,
            "bundle_version": self.bundle_version,
            "shape": [int(s) for s in seg.shape],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.sidecar_path(image_path), json.dumps(record, indent=2) + "\n")
        self.written.append(str(path))
        return path

    def summary(self, check: Any) -> str:
        """One line for the end of a run: how many inputs were segmented, skipped and failed.

        Args:
            check: the run's :class:`~ideal_components.data.checks.DatalistCheck`.
        """
        return (
            f"inference: {check.total} input(s): {len(self.written)} segmented, {len(check.skipped)} skipped "
            f"(complete segmentation by this model in {self.output_dir}), {len(check.errors)} failed."
        )


class SaveSegmentationd(MapTransform):
    """Write ``data[key]`` (a ``(1, *spatial)`` label map) through :class:`SegmentationOutputs`.

    With ``geometry="input"`` (inference, after ``Invertd``) the label map must have the spatial shape the reader
    gave for the input (``meta["spatial_shape"]``) and an affine within tolerance of the input's
    (``meta["original_affine"]`` of ``image_key``); it is written with the input's affine exactly, so a volume of
    one slice stays a volume of one slice. With ``geometry="prediction"`` (evaluation on the prepared grid) it is
    written with its own affine.

    Args:
        keys: the label-map key (``"pred"``).
        outputs: where and how to write.
        image_key: the key whose metadata names the input file and its geometry.
        geometry: ``"input"`` or ``"prediction"``.
        allow_missing_keys: as in MONAI.

    Example::

        SaveSegmentationd("pred", outputs=SegmentationOutputs("segs", "models/model.pt"))
    """

    def __init__(
        self,
        keys: KeysCollection,
        outputs: SegmentationOutputs,
        image_key: str = "image",
        geometry: str = "input",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if geometry not in ("input", "prediction"):
            raise ValueError(f"geometry must be 'input' or 'prediction', got {geometry!r}.")
        self.outputs = outputs
        self.image_key = image_key
        self.geometry = geometry

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d[self.image_key].meta
        image_path = meta["filename_or_obj"]
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.shape[0] != 1:
                raise ValueError(f"{image_path}: expected a (1, *spatial) label map, got shape {tuple(pred.shape)}.")
            seg = pred[0].detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)[0]
            affine = np.asarray(pred.meta["affine"], dtype=np.float64)
            if self.geometry == "input":
                shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
                original = np.asarray(meta["original_affine"], dtype=np.float64)
                if tuple(seg.shape) != shape or not affines_close(affine, original):
                    raise RuntimeError(
                        f"{image_path}: the inverted prediction (shape {tuple(seg.shape)}) is not in the input's "
                        f"geometry (shape {shape}); affine\n{np.round(affine, 4)}\ninput\n{np.round(original, 4)}"
                    )
                affine = original
            self.outputs.write(seg, affine, image_path)
        return d
