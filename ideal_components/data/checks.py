"""Checking a datalist before inference or evaluation: one clear error per bad file, the good files still processed.

MONAI's engines stop at the first exception raised by a data loader, so one corrupt file among hundreds would end a
run with a traceback from deep inside a transform. :class:`DatalistCheck` reads every file of a datalist up front
with :func:`ideal_components.data.io.load_image` through the reader the pipeline uses (which names the file and the
problem: missing, unreadable, truncated, wrong number of dimensions, NaN/Inf voxels, singular affine) and, for items
with a label, :func:`~ideal_components.data.io.check_pair` (shape and affine of the label against its image). The
bundles run on :attr:`DatalistCheck.valid` and end with :meth:`DatalistCheck.raise_if_failed`, so the run's exit
status says that something failed while every readable file has been processed. An empty datalist is reported by
:meth:`~DatalistCheck.raise_if_failed` too, not while the config is built, so that tools which only inspect a bundle
(``check_properties``, the model zoo's checks) work without data. Nothing is written to the input folders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ideal_components.data.io import DataError, check_pair, load_image

__all__ = ["InputFilesError", "DatalistCheck"]

_LOGGER = logging.getLogger(__name__)


class InputFilesError(RuntimeError):
    """Some input files could not be processed; the message lists each file with its problem."""


class DatalistCheck:
    """Validate the files of a datalist; keep the items whose files are all readable and consistent.

    Args:
        datalist: items such as ``{"image": path, "label": path}`` (what ``load_decathlon_datalist`` returns, or
            ``[{"image": f} for f in files]``).
        image_key: the key of the image file.
        label_key: the key of the label file; checked (and compared with the image) when present in an item.
        expect_ndim: the number of spatial dimensions of an image (3: one volume; a 2D slice or a 4D cine fails).
        require_label: when True, an item without ``label_key`` fails.
        empty_ok: when False, an empty datalist is an error raised by :meth:`raise_if_failed` (nothing to process
            usually means a wrong folder or file pattern).
        reader: the MONAI image reader of the pipeline (``"NibabelReader"`` or ``None``: NIfTI, checked with
            :func:`~ideal_components.data.io.load_nifti`; ``"ITKReader"``: NRRD, MetaImage, DICOM series folders).
        skip: ``skip(item) -> bool``; items for which it is True are neither read nor processed (e.g. volumes whose
            segmentation already exists, :meth:`ideal_components.inference.SegmentationOutputs.is_complete`).

    Attributes:
        valid: the items that passed, in their original order.
        errors: one message per failed item, each starting with the offending file.
        skipped: the items that ``skip`` excluded.

    Example::

        check = DatalistCheck([{"image": "a.nii.gz"}, {"image": "broken.nii.gz"}])
        run_inference(check.valid)
        check.raise_if_failed()  # InputFilesError naming broken.nii.gz
    """

    def __init__(
        self,
        datalist: Sequence[Mapping[str, Any]],
        image_key: str = "image",
        label_key: str | None = "label",
        expect_ndim: int = 3,
        require_label: bool = False,
        empty_ok: bool = False,
        reader: str | None = None,
        skip: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.expect_ndim = int(expect_ndim)
        self.require_label = bool(require_label)
        self.reader = reader
        self.empty_ok = bool(empty_ok)
        items = list(datalist)
        self.valid: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.skipped: list[dict[str, Any]] = []
        for item in items:
            if skip is not None and skip(item):
                self.skipped.append(dict(item))
                continue
            problem = self._check(item)
            if problem is None:
                self.valid.append(dict(item))
            else:
                self.errors.append(problem)
                _LOGGER.error(f"skipping input: {problem}")
        self.total = len(items)

    def _check(self, item: Mapping[str, Any]) -> str | None:
        if self.image_key not in item:
            return f"{dict(item)}: no '{self.image_key}' entry."
        image_path = str(item[self.image_key])
        try:
            image = load_image(image_path, reader=self.reader, expect_ndim=self.expect_ndim, what="image")
            has_label = self.label_key is not None and item.get(self.label_key) is not None
            if self.require_label and not has_label:
                return f"{image_path}: no '{self.label_key}' file given for this image."
            if has_label:
                label_path = str(item[self.label_key])
                label = load_image(label_path, reader=self.reader, expect_ndim=self.expect_ndim, what="label")
                check_pair(image, label, (image_path, label_path))
        except DataError as e:
            return str(e)
        return None

    def raise_if_failed(self) -> None:
        """Raise :class:`InputFilesError` listing every failed file, if any failed, or saying that the datalist was
        empty (unless ``empty_ok``); call it at the end of a run."""
        if self.total == 0 and not self.empty_ok:
            raise InputFilesError("the datalist is empty: no input file to process (check the folder and pattern).")
        if self.errors:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            raise InputFilesError(
                f"{len(self.errors)} of {self.total} input item(s) failed and were not processed "
                f"({len(self.valid)} processed):\n{lines}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(valid={len(self.valid)}, failed={len(self.errors)}, skipped={len(self.skipped)})"
