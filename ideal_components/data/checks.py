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

Training (``pretrain.json``, ``train.json``) uses the same check through :class:`TrainingDataCheck`, which runs one
:class:`DatalistCheck` per list it reads (labelled, unlabelled, validation, pre-training) before any caching, adds
the checks that only training needs (label values integer and within the bundle's classes, each image's slice count
equal to the datalist's ``num_slices``), and stops with every bad item listed unless told to skip them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from ideal_components.data.io import DataError, check_pair, load_image

__all__ = ["InputFilesError", "DatalistCheck", "TrainingDataCheck", "check_label_values"]

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
        num_classes: when given, label values must be integers in ``[0, num_classes)`` (:func:`check_label_values`).
        num_slices_key: when given and present in an item, the image's last axis must have that many slices (what
            :func:`~ideal_components.data.slices.expand_to_slices` made slice items from).
        log_prefix: the words before each failed item's message in the log.

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
        num_classes: int | None = None,
        num_slices_key: str | None = None,
        log_prefix: str = "skipping input",
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.expect_ndim = int(expect_ndim)
        self.require_label = bool(require_label)
        self.reader = reader
        self.empty_ok = bool(empty_ok)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.num_slices_key = num_slices_key
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
                _LOGGER.error(f"{log_prefix}: {problem}")
        self.total = len(items)

    def _check(self, item: Mapping[str, Any]) -> str | None:
        if self.image_key not in item:
            return f"{dict(item)}: no '{self.image_key}' entry."
        image_path = str(item[self.image_key])
        try:
            image = load_image(image_path, reader=self.reader, expect_ndim=self.expect_ndim, what="image")
            if self.num_slices_key is not None and item.get(self.num_slices_key) is not None:
                expected = item[self.num_slices_key]
                if image.shape[-1] != expected:
                    return (
                        f"{image_path}: image has {image.shape[-1]} slice(s) along its last axis, the datalist says "
                        f"{self.num_slices_key}={expected!r}."
                    )
            has_label = self.label_key is not None and item.get(self.label_key) is not None
            if self.require_label and not has_label:
                return f"{image_path}: no '{self.label_key}' file given for this image."
            if has_label:
                label_path = str(item[self.label_key])
                label = load_image(label_path, reader=self.reader, expect_ndim=self.expect_ndim, what="label")
                check_pair(image, label, (image_path, label_path))
                if self.num_classes is not None:
                    check_label_values(np.asanyarray(label.dataobj), self.num_classes, label_path)
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


def check_label_values(data: np.ndarray, num_classes: int, path: Any) -> None:
    """Check that a label volume holds class indices only: integers in ``[0, num_classes)``.

    One pass over the voxels (minimum, maximum; the integer test only for floating-point labels); the offending
    values are listed only when there are some.

    Args:
        data: the label's voxels.
        num_classes: the number of classes of the bundle, background included.
        path: the label file, used in the message.

    Raises:
        DataError: non-integer values, or values outside the classes; the message starts with ``path``.

    Example:
        >>> check_label_values(np.array([[0, 1], [3, 2]], dtype=np.uint8), 4, "lab.nii.gz")
    """
    data = np.asarray(data)
    if data.size == 0:
        return
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_)):
        if not np.issubdtype(data.dtype, np.floating):
            raise DataError(f"{path}: label has data type {data.dtype}; expected integer class indices.")
        fractional = data != np.round(data)
        if fractional.any():
            examples = np.unique(data[fractional])[:5].tolist()
            raise DataError(
                f"{path}: label has {int(fractional.sum())} voxel(s) with non-integer values (e.g. {examples}); "
                "expected integer class indices."
            )
    low, high = data.min(), data.max()
    if low < 0 or high >= num_classes:
        outside = (data < 0) | (data >= num_classes)
        values = np.unique(data[outside])
        shown = [int(v) for v in values[:10]] + (["..."] if len(values) > 10 else [])
        raise DataError(
            f"{path}: label has {int(outside.sum())} voxel(s) with value(s) {shown} outside the bundle's classes "
            f"0..{num_classes - 1} (num_classes={num_classes})."
        )


class TrainingDataCheck:
    """Check every datalist a training config reads, before anything is cached or trained.

    One :class:`DatalistCheck` per list (one pass over each file, read with the pipeline's reader): missing,
    unreadable or truncated files, wrong dimensions, NaN/Inf voxels, singular affines; for the lists whose labels
    are read, the label's shape and affine against its image and its values (integers in ``[0, num_classes)``); the
    image's slice count against the item's ``num_slices``. Every bad item is logged on one line naming the file and
    the problem. Then, on the first access to a list:

    - ``skip_bad=False`` (the default): :class:`InputFilesError` listing every bad item of every list, so that one
      run names all of them;
    - ``skip_bad=True``: the good items; the skipped ones were logged (``skipping bad <list> item: ...``) and are in
      :attr:`errors`;
    - either way, :class:`InputFilesError` when a list of ``required`` holds no (good) item.

    Args:
        lists: list name -> volume items (``monai.data.load_decathlon_datalist`` output).
        required: the names of the lists that must hold at least one good item.
        labeled: the names of the lists whose labels the config reads: each item needs a label, which is checked;
            the labels of the other lists (unlabelled, pre-training) are not read.
        num_classes: the bundle's number of classes, background included (``None``: label values not checked).
        reader: the MONAI reader of the pipeline's ``LoadImaged`` (``"NibabelReader"`` or ``None``: NIfTI).
        skip_bad: leave bad items out instead of stopping.
        image_key: the key of the image file.
        label_key: the key of the label file.
        num_slices_key: the key of an item's slice count (checked against the image's last axis when present).
        expect_ndim: the number of spatial dimensions of an image.

    Attributes:
        checks: list name -> its :class:`DatalistCheck`.
        errors: one line per bad item, ``"<list>: <file>: <problem>"``.

    Example (bundle config)::

        "data_check": {"_target_": "ideal_components.data.checks.TrainingDataCheck",
                       "lists": {"labeled": "$monai.data.load_decathlon_datalist(...)", "validation": "$..."},
                       "required": ["labeled", "validation"], "labeled": ["labeled", "validation"],
                       "num_classes": "@num_classes", "skip_bad": "@skip_bad_data"},
        "labeled": "$@train#data_check['labeled']"
    """

    def __init__(
        self,
        lists: Mapping[str, Sequence[Mapping[str, Any]]],
        required: Sequence[str] = (),
        labeled: Sequence[str] = (),
        num_classes: int | None = None,
        reader: str | None = None,
        skip_bad: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        num_slices_key: str | None = "num_slices",
        expect_ndim: int = 3,
    ) -> None:
        unknown = sorted(set(required) - set(lists)) + sorted(set(labeled) - set(lists))
        if unknown:
            raise ValueError(f"required / labeled name lists {unknown} that are not among the lists {sorted(lists)}.")
        self.skip_bad = bool(skip_bad)
        self.required = list(required)
        prefix = "skipping bad {} item" if self.skip_bad else "bad training data ({})"
        self.checks: dict[str, DatalistCheck] = {}
        for name, items in lists.items():
            with_labels = name in labeled
            self.checks[name] = DatalistCheck(
                items,
                image_key=image_key,
                label_key=label_key if with_labels else None,
                expect_ndim=expect_ndim,
                require_label=with_labels,
                empty_ok=True,
                reader=reader,
                num_classes=num_classes if with_labels else None,
                num_slices_key=num_slices_key,
                log_prefix=prefix.format(name),
            )
        self.errors = [f"{name}: {e}" for name, check in self.checks.items() for e in check.errors]
        total = sum(check.total for check in self.checks.values())
        summary = ", ".join(f"{name} {len(c.valid)}/{c.total}" for name, c in self.checks.items())
        if not self.errors:
            _LOGGER.info(f"training data check: all {total} item(s) good ({summary}).")
        elif self.skip_bad:
            _LOGGER.warning(
                f"training data check: skipping {len(self.errors)} bad item(s) of {total} (skip_bad); "
                f"training on {summary}."
            )
        else:
            _LOGGER.error(f"training data check: {len(self.errors)} bad item(s) of {total}; stopping before training.")

    def problems(self) -> list[str]:
        """Every reason to stop: the bad items (unless ``skip_bad``) and the required lists left empty."""
        problems = [] if self.skip_bad else list(self.errors)
        for name in self.required:
            check = self.checks[name]
            if not check.valid:
                why = f"all {check.total} item(s) are bad" if check.total else "it holds no item"
                problems.append(f"{name}: the list is empty ({why}); training needs at least one {name} item.")
        return problems

    def raise_if_failed(self) -> None:
        """Raise :class:`InputFilesError` naming every bad item and every empty required list, if any."""
        problems = self.problems()
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            hint = "" if self.skip_bad else " (fix or remove them, or pass --skip_bad_data True to train without them)"
            raise InputFilesError(f"the training data check failed, nothing was trained{hint}:\n{lines}")

    def __getitem__(self, name: str) -> list[dict[str, Any]]:
        """The good items of list ``name``, after :meth:`raise_if_failed`."""
        self.raise_if_failed()
        return self.checks[name].valid

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={len(c.valid)}/{c.total}" for n, c in self.checks.items())
        return f"{type(self).__name__}({counts}, bad={len(self.errors)}, skip_bad={self.skip_bad})"
