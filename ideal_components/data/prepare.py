"""The preparation driver shared by :func:`~ideal_components.data.acdc.prepare_acdc` and
:func:`~ideal_components.data.mmwhs.prepare_mmwhs`.

A dataset differs only in a :class:`DatasetLayout` (how patients and their volumes are found in the raw folder, and
how raw label values map to ``0..K``). The driver validates, preprocesses (:mod:`.preprocessing`) and writes one
patient at a time (never the whole dataset in memory), skips volumes already prepared with the same settings, and
writes ``datalist.json`` as described in ``docs/architecture.md``:

``imagesTr/<id>.nii.gz`` (float32), ``labelsTr/<id>.nii.gz`` (uint8), ``provenance/<id>.json`` (the volume's
datalist item and the settings it was made with; written last, it marks the volume as complete) and
``datalist.json``.

A layout may also offer unlabelled pre-training volumes per patient (:meth:`DatasetLayout.pretraining`: ACDC's cine
frames). They are prepared for training patients only, with the image part of the same chain, into
``imagesPt/<id>.nii.gz`` (float32) with the same ``provenance/<id>.json`` record, and listed under the datalist key
``pretraining`` (items without ``label``).
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

from ..utils import parse_bool, parse_pair
from .io import AFFINE_RTOL, DataError, affines_close, atomic_write_json, atomic_write_nifti, check_pair, load_nifti
from .preprocessing import preprocessing_transforms, to_metatensor
from .splits import Split, parse_fractions, split_patients

__all__ = ["VolumeSpec", "PretrainSpec", "DatasetLayout", "prepare_dataset", "DEFAULT_PERCENTILES"]

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


@dataclass
class PretrainSpec:
    """The frames of one training patient's 4D file to prepare as unlabelled pre-training volumes.

    Attributes:
        patient: patient id (must be a training patient).
        source: the raw 4D file (``H x W x D x T``; the frames share its spatial affine).
        frames: 1-based frame numbers to prepare (output ids ``<patient>_f<NN>``).
        num_frames: the number of frames the 4D file must have (its 4th dimension).
        reference: a raw 3D image of the patient (ACDC: the ED frame) whose shape and affine the 4D file's first three
            axes must match.
        reference_frame: the 1-based frame of the 4D file expected to hold the voxels of ``reference`` (a warning if
            not), or ``None``.
        extra: additional provenance (e.g. ACDC group, ED / ES frame numbers).
    """

    patient: str
    source: Path
    frames: list[int]
    num_frames: int
    reference: Path
    reference_frame: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def frame_id(self, frame: int) -> str:
        """The output id of frame ``frame`` (1-based): ``patient001_f07``."""
        return f"{self.patient}_f{int(frame):02d}"


class DatasetLayout:
    """How a raw dataset is laid out; subclasses implement the three methods (and optionally :meth:`pretraining`).

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

    @property
    def pretraining_enabled(self) -> bool:
        """Whether :meth:`pretraining` is used (then the datalist gets a ``pretraining`` key)."""
        return False

    def pretraining(self, patient: str, source: Any) -> PretrainSpec | None:
        """The unlabelled pre-training frames of one TRAINING patient, or ``None`` (called only when
        :attr:`pretraining_enabled`; raises ``DataError`` naming the file, e.g. a missing 4D file)."""
        return None


# ---------------------------------------------------------------------------------------------------------------
# one volume / one patient (run in the main process or in workers)

_CHAINS: dict[str, Any] = {}


def _chain(settings: dict[str, Any], keys: tuple[str, ...] = ("image", "label")):
    """The preprocessing chain for ``settings``; ``keys=("image",)`` gives the image part of the very same chain
    (every step treats each key on its own, and the image is the first key, whose output shape sets the others')."""
    key = json.dumps([settings, list(keys)], sort_keys=True)
    if key not in _CHAINS:
        _CHAINS[key] = preprocessing_transforms(
            keys=keys,
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


def _pretrain_paths(out: Path, vid: str) -> dict[str, Path]:
    return {"image": out / "imagesPt" / f"{vid}.nii.gz", "record": out / "provenance" / f"{vid}.json"}


def _finished(paths: dict[str, Path], vid: str, settings: dict, overwrite: bool) -> dict | None:
    """The datalist item of an already prepared volume (every output exists; the record is written last), else
    ``None``. Raises ``DataError`` if it was prepared with other settings."""
    if overwrite or not all(p.exists() for p in paths.values()):
        return None
    with open(paths["record"]) as f:
        record = json.load(f)
    if record.get("settings") != settings:
        raise DataError(
            f"{paths['record']}: {vid} was prepared with different settings {record.get('settings')} "
            f"(now {settings}); prepare into another folder or pass overwrite=True."
        )
    logger.debug("%s: already prepared, skipped", vid)
    return record["item"]


def _save(array: np.ndarray, affine: np.ndarray, dtype: type, path: Path) -> None:
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write_nifti(img, path)


def _prepare_volume(layout: DatasetLayout, spec: VolumeSpec, out: Path, settings: dict, overwrite: bool) -> dict:
    paths = _out_paths(out, spec.id)
    done = _finished(paths, spec.id, settings, overwrite)
    if done is not None:
        return done

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


def _load_cine(spec: PretrainSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a 4D file -> (``H x W x D x T`` array, affine). Raises ``DataError`` naming the file."""
    cine = load_nifti(spec.source, expect_ndim=4, what="cine")
    reference = load_nifti(spec.reference, what="image")
    shape, ref_shape = tuple(int(s) for s in cine.shape), tuple(int(s) for s in reference.shape)
    if shape[:3] != ref_shape:
        raise DataError(
            f"{spec.source}: 4D cine spatial shape {shape[:3]} does not match the shape {ref_shape} of "
            f"{spec.reference}."
        )
    if shape[3] != spec.num_frames:
        raise DataError(f"{spec.source}: 4D cine has {shape[3]} frames, expected {spec.num_frames} (NbFrame).")
    if not affines_close(cine.affine, reference.affine):
        raise DataError(
            f"{spec.source}: 4D cine affine does not match the affine of {spec.reference} (relative tolerance "
            f"{AFFINE_RTOL}):\ncine\n{np.round(cine.affine, 4)}\nimage\n{np.round(reference.affine, 4)}"
        )
    data = np.asanyarray(cine.dataobj)
    if spec.reference_frame is not None and not np.array_equal(
        data[..., spec.reference_frame - 1], np.asanyarray(reference.dataobj)
    ):
        logger.warning("%s: frame %d differs from %s", spec.source, spec.reference_frame, spec.reference)
    return data, np.asarray(cine.affine, dtype=np.float64)


def _prepare_pretraining(
    spec: PretrainSpec, out: Path, settings: dict, overwrite: bool, skip_bad: bool
) -> tuple[list[dict], list[dict]]:
    """Prepare the frames of one patient's 4D file (read once, only if a frame is missing) -> (items, skipped).

    Each frame is a 3D volume with the 4D file's spatial affine, run through the image part of the preparation chain
    (:func:`_chain`) and written as ``imagesPt/<patient>_f<NN>.nii.gz`` (float32), then its record."""
    items: dict[int, dict] = {}
    todo = []
    for frame in spec.frames:
        vid = spec.frame_id(frame)
        done = _finished(_pretrain_paths(out, vid), vid, settings, overwrite)
        if done is None:
            todo.append(frame)
        else:
            items[frame] = done
    skipped: list[dict] = []
    if todo:
        data, raw_affine = _load_cine(spec)
        raw_shape = [int(s) for s in data.shape]
        raw_spacing = [float(s) for s in np.sqrt((raw_affine[:3, :3] ** 2).sum(axis=0))]
        for frame in todo:
            vid = spec.frame_id(frame)
            paths = _pretrain_paths(out, vid)
            volume = data[..., frame - 1]
            if float(volume.max()) == float(volume.min()):
                error = (
                    f"{spec.source}: frame {frame} of the 4D cine is constant (every voxel is {float(volume.min())})."
                )
                if not skip_bad:
                    raise DataError(error)
                logger.warning("skipped %s: %s", vid, error)
                skipped.append({"patient": spec.patient, "id": vid, "error": error})
                continue
            result = _chain(settings, keys=("image",))({"image": to_metatensor(volume, raw_affine, str(spec.source))})
            out_img = result["image"]
            _save(out_img[0].numpy(), out_img.affine.numpy().astype(np.float64), np.float32, paths["image"])
            item: dict[str, Any] = {
                "image": f"imagesPt/{vid}.nii.gz",
                "id": vid,
                "patient": spec.patient,
                "frame": int(frame),
                "num_slices": int(out_img.shape[-1]),
                "provenance": {
                    "raw_image": str(spec.source),
                    "raw_frame": int(frame),
                    "raw_shape": raw_shape,
                    "raw_spacing": raw_spacing,
                    "raw_affine": raw_affine.tolist(),
                    **spec.extra,
                },
            }
            atomic_write_json({"item": item, "settings": settings}, paths["record"])
            items[frame] = item
        del data
    return [items[f] for f in spec.frames if f in items], skipped


def _prepare_patient(args: tuple) -> tuple[list[dict], list[dict], list[dict]]:
    """Prepare every volume of one patient -> (items, pre-training items, skipped entries).

    The pre-training frames are prepared only when ``pretrain`` (the driver sets it for training patients only)."""
    layout, patient, source, out, settings, overwrite, skip_bad, pretrain = args
    items: list[dict] = []
    pretrain_items: list[dict] = []
    skipped: list[dict] = []
    try:
        specs = layout.volumes(patient, source)
    except DataError as e:
        if not skip_bad:
            raise
        logger.warning("skipped patient %s: %s", patient, e)
        return items, pretrain_items, [{"patient": patient, "id": None, "error": str(e)}]
    for spec in specs:
        try:
            items.append(_prepare_volume(layout, spec, out, settings, overwrite))
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipped %s: %s", spec.id, e)
            skipped.append({"patient": patient, "id": spec.id, "error": str(e)})
    if pretrain:
        try:
            cine = layout.pretraining(patient, source)
            if cine is not None:
                if cine.patient != patient:
                    raise AssertionError(f"pre-training spec of {cine.patient} returned for patient {patient}")
                pretrain_items, cine_skipped = _prepare_pretraining(cine, out, settings, overwrite, skip_bad)
                skipped += cine_skipped
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipped the pre-training frames of %s: %s", patient, e)
            skipped.append({"patient": patient, "id": f"{patient}_4d", "error": str(e)})
    return items, pretrain_items, skipped


def _run(tasks: list[tuple], num_workers: int, desc: str) -> Iterator[tuple[list[dict], list[dict], list[dict]]]:
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
    items: list[dict],
    split: Split,
    fractions: Sequence[str],
    skipped: list[dict],
    preparation: dict,
    path: Path,
    pretraining: list[dict] | None = None,
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
    if pretraining is not None:
        leaked = sorted({it["patient"] for it in pretraining if split.split_of(it["patient"]) != "training"})
        if leaked:  # never reached: the driver prepares pre-training frames of training patients only
            raise AssertionError(f"{path}: pre-training volumes of non-training patients {leaked}")
        datalist["pretraining"] = sorted(pretraining, key=lambda it: it["id"])
        if not pretraining:
            logger.warning("%s: the pretraining list is empty", path)
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

    With ``layout.pretraining_enabled`` the frames given by ``layout.pretraining`` are prepared for the training
    patients (only) and listed under the datalist key ``pretraining``.

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
    pretrain = bool(layout.pretraining_enabled)
    training = set(split.training)
    tasks = [
        (layout, p, patients[p], out_p, settings, overwrite, skip_bad, pretrain and p in training) for p in assigned
    ]
    leaked = [task[1] for task in tasks if task[-1] and split.split_of(task[1]) != "training"]
    if leaked:  # pre-training volumes come from training patients only, never a validation or test patient
        raise AssertionError(f"pre-training frames requested for non-training patients {leaked}")
    items: list[dict] = []
    pretrain_items: list[dict] = []
    skipped: list[dict] = []
    for patient_items, patient_pretrain, patient_skipped in _run(tasks, num_workers, f"prepare {layout.name}"):
        items += patient_items
        pretrain_items += patient_pretrain
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
    datalist = _datalist(items, split, keys, skipped, preparation, path, pretrain_items if pretrain else None)
    atomic_write_json(datalist, path)
    logger.info("%s: %d volumes prepared, %d skipped", path, len(items), len(skipped))
    if pretrain:
        logger.info("%s: %d pre-training volumes", path, len(pretrain_items))
    return str(path)
