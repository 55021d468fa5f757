"""Validated NIfTI reading and atomic writing.

Every error raised here is a :class:`DataError` (a ``ValueError``) whose message starts with the offending file, so
that a user preparing hundreds of volumes learns at once which file is broken and how.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from ideal_components.utils import atomic_path, atomic_write_text

__all__ = [
    "DataError",
    "load_nifti",
    "load_image",
    "check_pair",
    "atomic_write_nifti",
    "atomic_write_json",
    "AFFINE_RTOL",
    "affines_close",
]

AFFINE_RTOL = 1e-3
"""Relative tolerance for two affines to be considered equal (relative to the voxel size / largest entry)."""


class DataError(ValueError):
    """A raw input file is missing, unreadable or inconsistent; the message names the file and the problem."""


def _existing(path: str | os.PathLike, what: str, folder_ok: bool) -> Path:
    """``path`` as a ``Path`` if it is a non-empty file (or, with ``folder_ok``, a folder holding files)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing {what} file.")
    if path.is_dir():
        if not folder_ok:
            raise DataError(f"{path}: {what} path is not a file.")
        if not any(p.is_file() for p in path.iterdir()):
            raise DataError(f"{path}: empty {what} folder (no file of a DICOM series).")
    elif path.stat().st_size == 0:
        raise DataError(f"{path}: empty {what} file (0 bytes).")
    return path


def load_nifti(path: str | os.PathLike, expect_ndim: int = 3, what: str = "image") -> nib.Nifti1Image:
    """Read a NIfTI file completely and validate it.

    The voxel data are read at once (so that a truncated or corrupt file fails here, not later), trailing singleton
    dimensions beyond ``expect_ndim`` are dropped, and the result is returned as an in-memory nibabel image whose
    ``dataobj`` is the array (scaling already applied).

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        expect_ndim: the number of spatial dimensions expected (3 for volumes).
        what: what the file is (``"image"``, ``"label"``), used in error messages.

    Raises:
        DataError: the file is missing, not a NIfTI, truncated or corrupt, has the wrong number of dimensions,
            contains NaN/Inf voxels or has a singular affine. The message starts with the path.

    Example::

        img = load_nifti("training/patient001/patient001_frame01.nii.gz")
        data, affine = np.asanyarray(img.dataobj), img.affine
    """
    path = _existing(path, what, folder_ok=False)
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as e:
        raise DataError(f"{path}: not a readable NIfTI {what} ({e}).") from e
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"{path}: truncated or corrupt {what} file ({type(e).__name__}: {e}).") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI {what} (nibabel read it as {type(img).__name__}).")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"{path}: truncated or corrupt {what} file ({type(e).__name__}: {e}).") from e
    data, affine = _validated(path, data, img.affine, expect_ndim, what)
    return nib.Nifti1Image(data, affine, img.header.copy())


def _validated(path: Path, data: np.ndarray, affine: Any, expect_ndim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The checks shared by every reader: dimensions (trailing singletons beyond ``expect_ndim`` dropped), finite
    voxels, a finite and non-singular affine. Returns ``(data, affine as float64)``."""
    shape = tuple(data.shape)
    while data.ndim > expect_ndim and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != expect_ndim:
        raise DataError(f"{path}: expected a {expect_ndim}D {what}, got shape {shape} ({data.ndim}D).")
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise DataError(f"{path}: {what} has {int(bad.sum())} NaN/Inf voxel(s).")
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataError(f"{path}: {what} affine has NaN/Inf entries:\n{affine}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-8:
        raise DataError(f"{path}: {what} affine is singular (zero voxel size or degenerate axes):\n{affine}")
    return data, affine


def load_image(
    path: str | os.PathLike, reader: str | None = None, expect_ndim: int = 3, what: str = "image"
) -> nib.Nifti1Image:
    """Read an image with the reader the pipeline uses and validate it as :func:`load_nifti` does.

    ``reader`` ``None`` / ``"NibabelReader"`` is :func:`load_nifti`. Any other MONAI reader name (``"ITKReader"``
    for NRRD, MetaImage and DICOM series folders) reads through ``monai.transforms.LoadImage`` exactly as the
    bundle's ``LoadImaged`` does, so that the check accepts what the pipeline can read and names what it cannot.

    Args:
        path: a file, or a folder holding one DICOM series (``ITKReader``).
        reader: the name of a MONAI image reader.
        expect_ndim: the number of spatial dimensions expected.
        what: what the file is, used in error messages.

    Returns:
        an in-memory NIfTI image holding the voxels and the (RAS) affine the reader gives.

    Raises:
        DataError: the path is missing or empty, the reader cannot read it, or a check of :func:`load_nifti` fails.

    Example::

        img = load_image("scans/case01.mha", reader="ITKReader")
    """
    if reader is None or str(reader) == "NibabelReader":
        return load_nifti(path, expect_ndim=expect_ndim, what=what)
    from monai.transforms import LoadImage

    path = _existing(path, what, folder_ok=True)
    try:
        img = LoadImage(reader=reader, image_only=True)(str(path))
    except Exception as e:  # the readers raise anything from RuntimeError to ITK's own errors
        raise DataError(f"{path}: not readable by {reader} ({type(e).__name__}: {str(e).strip()[:300]}).") from e
    data, affine = _validated(path, np.asarray(img), img.affine, expect_ndim, what)
    return nib.Nifti1Image(data, affine)


def affines_close(a: np.ndarray, b: np.ndarray, rtol: float = AFFINE_RTOL) -> bool:
    """Whether two 4x4 affines agree to ``rtol`` relative to their entries (at least to the largest voxel axis)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.abs(a[:3, :3]).max()))
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(a), scale)))


def check_pair(
    image: nib.spatialimages.SpatialImage, label: nib.spatialimages.SpatialImage, paths: Sequence[Any]
) -> None:
    """Check that an image and its label share the voxel grid.

    Args:
        image: the image (as returned by :func:`load_nifti`).
        label: its label.
        paths: ``(image_path, label_path)``, used in the messages.

    Raises:
        DataError: different shapes, or affines differing by more than ``AFFINE_RTOL`` (relative); the message names
            the label file and the image it was compared with.

    Example::

        check_pair(load_nifti(img_path), load_nifti(lab_path, what="label"), (img_path, lab_path))
    """
    image_path, label_path = paths
    if tuple(image.shape) != tuple(label.shape):
        raise DataError(
            f"{label_path}: label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)} "
            f"of {image_path}."
        )
    if not affines_close(image.affine, label.affine):
        raise DataError(
            f"{label_path}: label affine does not match the affine of {image_path} (relative tolerance "
            f"{AFFINE_RTOL}):\nlabel\n{np.round(label.affine, 4)}\nimage\n{np.round(image.affine, 4)}"
        )


def atomic_write_nifti(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> None:
    """Write a nibabel image so that ``path`` is either absent or complete (temporary file + ``os.replace``).

    Args:
        img: the image to save.
        path: destination (``.nii`` or ``.nii.gz``); its folder is created if needed.

    Example::

        atomic_write_nifti(nib.Nifti1Image(data, affine), "out/imagesTr/patient001_ED.nii.gz")
    """
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON so that ``path`` is either absent or complete.

    Args:
        obj: a JSON-serialisable object.
        path: destination file; its folder is created if needed.

    Example::

        atomic_write_json({"training": []}, "out/datalist.json")
    """
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
