"""The preparation driver shared by :func:`~ideal_components.data.acdc.prepare_acdc` and
:func:`~ideal_components.data.mmwhs.prepare_mmwhs`.

A dataset differs only in a :class:`DatasetLayout` (how patients and their volumes are found in the raw folder, and
how raw label values map to ``0..K``). The driver validates, preprocesses (:mod:`.preprocessing`) and writes one
patient at a time (never the whole dataset in memory), skips volumes already prepared with the same settings, and
writes ``datalist.json`` as described in ``docs/architecture.md``:

``imagesTr/<id>.nii.gz`` (float32), ``labelsTr/<id>.nii.gz`` (uint8), ``provenance/<id>.json`` (the volume's
datalist item and the settings it was made with; written last, it marks the volume as complete) and
``datalist.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from .io import DataError, atomic_write_json, atomic_write_nifti, check_pair, load_nifti
from .preprocessing import preprocessing_transforms, to_metatensor
from .splits import Split, parse_fractions, split_patients

__all__ = ["VolumeSpec", "DatasetLayout", "prepare_dataset", "parse_bool", "parse_pair", "DEFAULT_PERCENTILES"]

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (1.0, 99.0)


@dataclass
class VolumeSpec:
    """One raw volume to prepare.

    Attributes:
        id: output id (``patient001_ED``, ``mr_train_1001``), used for file names.
        patient: patient id (the split unit).
        image, label: raw files.
        frame: cardiac phase (``"ED"`` / ``"ES"``) or ``None``.
        extra: additional provenance (e.g. ACDC group and frame number).
    """

    id: str
    patient: str
    image: Path
    label: Path
    frame: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetLayout:
    """How a raw dataset is laid out; subclasses implement the three methods.

    Attributes:
        name: ``"acdc"`` / ``"mmwhs"`` (splits and defaults).
        slice_axis: ``"last"`` or ``"canonical"`` (see :func:`preprocessing_transforms`).
        label_names: ``{"0": "background", ...}``.
    """

    name: str = ""
    slice_axis: str = "last"
    label_names: dict[str, str] = {}

    def discover(self, root: Path) -> dict[str, Any]:
        """Patient id -> whatever :meth:`volumes` needs (cheap: no file is read). Raises ``DataError`` if none."""
        raise NotImplementedError

    def volumes(self, patient: str, source: Any) -> list[VolumeSpec]:
        """The volumes of one patient (may read small metadata files; raises ``DataError`` naming the file)."""
        raise NotImplementedError

    def map_label(self, data: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """Raw label array -> (uint8 array of ``0..K``, provenance info). Raises ``DataError`` naming ``path``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Layout options that change the prepared volumes (compared on a rerun)."""
        return {}


def parse_bool(value: Any, name: str) -> bool:
    """``True``/``False`` from a bool or the strings python-fire passes (``"false"``, ``"0"``, ``"yes"`` ...)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "y", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "n", "off", ""):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def parse_pair(value: Any, name: str, kind: type = float) -> tuple:
    """A number, ``"a,b"`` or a pair -> a pair of positive ``kind``."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(value) == 1:
        value = [value[0], value[0]]
    try:
        pair = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a pair of numbers, got {value!r}.") from None
    if len(pair) != 2 or any(v <= 0 for v in pair):
        raise ValueError(f"{name} must be one or two positive numbers, got {value!r}.")
    if kind is int and any(float(v) != float(o) for v, o in zip(pair, value)):
        raise ValueError(f"{name} must be integers, got {value!r}.")
    return pair


# ---------------------------------------------------------------------------------------------------------------
# one volume / one patient (run in the main process or in workers)

_CHAINS: dict[str, Any] = {}


def _chain(settings: dict[str, Any]):
    key = json.dumps(settings, sort_keys=True)
    if key not in _CHAINS:
        _CHAINS[key] = preprocessing_transforms(
            keys=("image", "label"),
            pixdim=settings["pixdim"],
            spatial_size=settings["spatial_size"],
            percentiles=settings["percentiles"],
            slice_axis=settings["slice_axis"],
        )
    return _CHAINS[key]


def _out_paths(out: Path, vid: str) -> dict[str, Path]:
    return {
        "image": out / "imagesTr" / f"{vid}.nii.gz",
        "label": out / "labelsTr" / f"{vid}.nii.gz",
        "record": out / "provenance" / f"{vid}.json",
    }


def _save(array: np.ndarray, affine: np.ndarray, dtype: type, path: Path) -> None:
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write_nifti(img, path)


def _prepare_volume(layout: DatasetLayout, spec: VolumeSpec, out: Path, settings: dict, overwrite: bool) -> dict:
    paths = _out_paths(out, spec.id)
    if not overwrite and all(p.exists() for p in paths.values()):
        with open(paths["record"]) as f:
            record = json.load(f)
        if record.get("settings") != settings:
            raise DataError(
                f"{paths['record']}: {spec.id} was prepared with different settings {record.get('settings')} "
                f"(now {settings}); prepare into another folder or pass overwrite=True."
            )
        logger.debug("%s: already prepared, skipped", spec.id)
        return record["item"]

    image = load_nifti(spec.image, what="image")
    label = load_nifti(spec.label, what="label")
    check_pair(image, label, (spec.image, spec.label))
    image_data = np.asanyarray(image.dataobj)
    if float(image_data.max()) == float(image_data.min()):
        raise DataError(f"{spec.image}: constant image (every voxel is {float(image_data.min())}).")
    label_data, label_info = layout.map_label(np.asanyarray(label.dataobj), spec.label)
    raw_affine = np.asarray(image.affine, dtype=np.float64)
    raw_shape = [int(s) for s in image_data.shape]
    data = {
        "image": to_metatensor(image_data, raw_affine, str(spec.image)),
        "label": to_metatensor(label_data, raw_affine, str(spec.label)),
    }
    del image, label, image_data, label_data
    result = _chain(settings)(data)
    out_img, out_lab = result["image"], result["label"]
    affine = out_img.affine.numpy().astype(np.float64)
    _save(out_img[0].numpy(), affine, np.float32, paths["image"])
    _save(np.rint(out_lab[0].numpy()), affine, np.uint8, paths["label"])

    item: dict[str, Any] = {
        "image": f"imagesTr/{spec.id}.nii.gz",
        "label": f"labelsTr/{spec.id}.nii.gz",
        "id": spec.id,
        "patient": spec.patient,
    }
    if spec.frame is not None:
        item["frame"] = spec.frame
    item["num_slices"] = int(out_img.shape[-1])
    item["provenance"] = {
        "raw_image": str(spec.image),
        "raw_label": str(spec.label),
        "raw_shape": raw_shape,
        "raw_spacing": [float(s) for s in np.sqrt((raw_affine[:3, :3] ** 2).sum(axis=0))],
        "raw_affine": raw_affine.tolist(),
        **spec.extra,
        **label_info,
    }
    atomic_write_json({"item": item, "settings": settings}, paths["record"])
    return item


def _prepare_patient(args: tuple) -> tuple[list[dict], list[dict]]:
    """Prepare every volume of one patient -> (items, skipped entries)."""
    layout, patient, source, out, settings, overwrite, skip_bad = args
    items: list[dict] = []
    skipped: list[dict] = []
    try:
        specs = layout.volumes(patient, source)
    except DataError as e:
        if not skip_bad:
            raise
        logger.warning("skipped patient %s: %s", patient, e)
        return items, [{"patient": patient, "id": None, "error": str(e)}]
    for spec in specs:
        try:
            items.append(_prepare_volume(layout, spec, out, settings, overwrite))
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipped %s: %s", spec.id, e)
            skipped.append({"patient": patient, "id": spec.id, "error": str(e)})
    return items, skipped


def _run(tasks: list[tuple], num_workers: int, desc: str) -> Iterator[tuple[list[dict], list[dict]]]:
    bar = tqdm(total=len(tasks), desc=desc, unit="patient", dynamic_ncols=True)
    try:
        if num_workers > 0 and len(tasks) > 1:
            # spawn: forking a process that already ran torch's OpenMP thread pool can deadlock
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for result in pool.map(_prepare_patient, tasks, chunksize=1):
                    bar.update(1)
                    yield result
        else:
            for task in tasks:
                result = _prepare_patient(task)
                bar.update(1)
                yield result
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------------------
# the driver


def _check_out(root: Path, out: Path) -> None:
    if out == root or root in out.parents:
        raise ValueError(f"{out}: the output folder must not be inside the raw data folder {root} (never written).")


def _datalist(
    items: list[dict], split: Split, fractions: Sequence[str], skipped: list[dict], preparation: dict, path: Path
) -> dict[str, Any]:
    by_split: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for item in sorted(items, key=lambda it: it["id"]):
        name = split.split_of(item["patient"])
        if name is not None:
            by_split[name].append(item)
    datalist: dict[str, Any] = dict(by_split)
    for f in fractions:
        labeled = set(split.labeled[f])
        datalist[f"labeled_{f}"] = [it for it in by_split["training"] if it["patient"] in labeled]
        datalist[f"unlabeled_{f}"] = [it for it in by_split["training"] if it["patient"] not in labeled]
        if not datalist[f"labeled_{f}"]:
            lost = [s for s in skipped if s["patient"] in labeled]
            why = "; ".join(s["error"] for s in lost) if lost else "no labelled patient was prepared"
            raise DataError(
                f"{path}: label fraction {f} % has no labelled volume (labelled patients {sorted(labeled)}): {why}"
            )
    for name in ("training", "validation", "test"):
        if not by_split[name]:
            logger.warning("%s: the %s split is empty", path, name)
    datalist["fractions"] = list(fractions)
    datalist["preparation"] = preparation
    datalist["skipped"] = skipped
    return datalist


def prepare_dataset(
    layout: DatasetLayout,
    root: str | os.PathLike,
    out: str | os.PathLike,
    pixdim: Any,
    spatial_size: Any,
    seed: int | None = None,
    fractions: Iterable[float | str] | float | str | None = None,
    skip_bad: Any = False,
    overwrite: Any = False,
    num_workers: int = 0,
    extra_preparation: dict[str, Any] | None = None,
) -> str:
    """Validate, preprocess and write a raw dataset patient by patient, then write ``out/datalist.json``.

    Args:
        layout: the dataset's :class:`DatasetLayout`.
        root: the raw data folder (only read).
        out: the output folder (must not be inside ``root``).
        pixdim: in-plane spacing (number or pair, mm).
        spatial_size: in-plane size (number or pair).
        seed: ``None``: published split if every published patient is present (else seeded with 0); an int:
            seeded draw (labelled subsets of the published split, or the whole seeded split).
        fractions: label fractions (default: the dataset's published ones).
        skip_bad: log and skip (list under ``"skipped"``) bad volumes instead of raising.
        overwrite: re-prepare volumes whose outputs exist.
        num_workers: worker processes (0: in this process).
        extra_preparation: more entries for the datalist's ``preparation`` (e.g. ACDC frames).

    Returns:
        The path of ``datalist.json``.

    Raises:
        DataError: a bad input (unless ``skip_bad``), a label fraction left without labelled volume, or outputs
            prepared with other settings (unless ``overwrite``). Messages name the file.

    Example::

        prepare_dataset(AcdcLayout(frames=("ED",)), "ACDC/database", "prepared/acdc", 1.367, 192)
    """
    root_p, out_p = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root_p.is_dir():
        raise DataError(f"{root_p}: raw data folder not found.")
    _check_out(root_p, out_p)
    px = parse_pair(pixdim, "pixdim", float)
    size = parse_pair(spatial_size, "spatial_size", int)
    skip_bad, overwrite = parse_bool(skip_bad, "skip_bad"), parse_bool(overwrite, "overwrite")
    seed = None if seed is None or (isinstance(seed, str) and seed.lower() == "none") else int(seed)
    num_workers = int(num_workers)
    keys = parse_fractions(fractions, layout.name)

    patients = layout.discover(root_p)
    split = split_patients(layout.name, patients, seed=seed, fractions=keys)
    if split.unassigned:
        logger.warning(
            "%s: %d patient(s) outside the published %s split are not prepared: %s",
            root_p,
            len(split.unassigned),
            layout.name,
            split.unassigned,
        )
    settings = {
        "dataset": layout.name,
        "pixdim": list(px),
        "spatial_size": list(size),
        "percentiles": list(DEFAULT_PERCENTILES),
        "slice_axis": layout.slice_axis,
        **layout.settings(),
    }
    out_p.mkdir(parents=True, exist_ok=True)
    assigned = sorted(set(split.training) | set(split.validation) | set(split.test))
    tasks = [(layout, p, patients[p], out_p, settings, overwrite, skip_bad) for p in assigned]
    items: list[dict] = []
    skipped: list[dict] = []
    for patient_items, patient_skipped in _run(tasks, num_workers, f"prepare {layout.name}"):
        items += patient_items
        skipped += patient_skipped

    preparation = {
        **settings,
        **(extra_preparation or {}),
        "label_names": dict(layout.label_names),
        "seed": split.seed,
        "split_source": split.source,
        "split": split.as_dict(),
        "root": str(root_p),
    }
    path = out_p / "datalist.json"
    datalist = _datalist(items, split, keys, skipped, preparation, path)
    atomic_write_json(datalist, path)
    logger.info("%s: %d volumes prepared, %d skipped", path, len(items), len(skipped))
    return str(path)
