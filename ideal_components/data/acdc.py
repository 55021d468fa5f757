"""ACDC preparation: ``python -m ideal_components prepare_acdc --root ACDC/database --out prepared/acdc``.

Raw layout (``root/training/patientXXX/`` and, when present, ``root/testing/patientXXX/``)::

    patient001/Info.cfg                      ED: 1 / ES: 12 / Group: DCM / Height / NbFrame: 30 / Weight
    patient001/patient001_frame01.nii.gz     the ED (or ES) frame
    patient001/patient001_frame01_gt.nii.gz  its labels: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity
    patient001/patient001_4d.nii.gz          the whole cine, H x W x D x NbFrame (read only with ``cine_frames``)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..facts import ACDC_CLASS_NAMES, ACDC_GROUPS, label_names_record
from .io import DataError
from .prepare import DatasetLayout, PretrainSpec, VolumeSpec, prepare_dataset

__all__ = ["AcdcLayout", "parse_info_cfg", "parse_frames", "parse_cine_frames", "select_cine_frames", "prepare_acdc"]
_PATIENT = re.compile(r"^patient\d{3}$")


def parse_frames(frames: str | Sequence[str]) -> tuple[str, ...]:
    """``"ED"``, ``"ES"``, ``"ED,ES"`` or a sequence (python-fire gives a tuple) -> ``("ED",)`` / ``("ED", "ES")``."""
    if isinstance(frames, str):
        frames = frames.split(",")
    names = {str(f).strip().upper() for f in frames if str(f).strip()}
    bad = names - {"ED", "ES"}
    if bad or not names:
        raise ValueError(f"frames must be ED, ES or ED,ES; got {frames!r}.")
    return tuple(f for f in ("ED", "ES") if f in names)


def parse_cine_frames(cine_frames: Any) -> str | int | None:
    """The ``cine_frames`` option -> ``None`` (off), ``"all"`` or a positive number of frames.

    ``None``, ``"none"``, ``False``, ``0`` (or ``""``, ``"0"``, ``"false"``, ``"no"``, ``"off"``): off; ``"all"`` or
    ``True``: every frame; a positive integer ``N`` (or its string): ``N`` frames evenly spaced over the cycle.

    Example::

        parse_cine_frames("all"), parse_cine_frames("10"), parse_cine_frames("none")  # ('all', 10, None)
    """
    if cine_frames is None or isinstance(cine_frames, (bool, np.bool_)):
        return "all" if cine_frames else None
    if isinstance(cine_frames, str):
        text = cine_frames.strip().lower()
        if text in ("", "none", "0", "false", "no", "off"):
            return None
        if text in ("all", "true", "yes"):
            return "all"
        if text.isdigit():
            return int(text)
    elif isinstance(cine_frames, (int, np.integer)) and cine_frames >= 0:
        return int(cine_frames) or None
    raise ValueError(f"cine_frames must be 'none', 'all' or a positive number of frames, got {cine_frames!r}.")


def select_cine_frames(num_frames: int, cine_frames: str | int) -> list[int]:
    """The 1-based frames taken from a cine of ``num_frames`` frames: all of them (``"all"``, or ``N >= num_frames``)
    or ``N`` frames evenly spaced over the (periodic) cardiac cycle, ``1 + floor(k * num_frames / N)``,
    ``k = 0 .. N-1`` (frame 1 always included).

    Example::

        select_cine_frames(30, 4)  # [1, 8, 16, 23]
    """
    num_frames = int(num_frames)
    if cine_frames == "all" or int(cine_frames) >= num_frames:
        return list(range(1, num_frames + 1))
    n = int(cine_frames)
    return [1 + (k * num_frames) // n for k in range(n)]


def parse_info_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate an ACDC ``Info.cfg`` -> ``{"ED": int, "ES": int, "Group": str, "NbFrame": int, ...}``.

    Args:
        path: the ``Info.cfg`` file.

    Raises:
        DataError: missing file, missing or malformed ``ED`` / ``ES`` / ``Group`` / ``NbFrame``, or frames outside
            ``1..NbFrame``; the message names the file.

    Example::

        parse_info_cfg("training/patient001/Info.cfg")["ED"]  # 1
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing Info.cfg.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable Info.cfg ({e}).") from e
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES", "NbFrame"):
        if key not in info:
            raise DataError(f"{path}: Info.cfg has no '{key}:' line.")
        try:
            value = float(info[key])
        except ValueError:
            raise DataError(f"{path}: Info.cfg {key} is not a number: {info[key]!r}.") from None
        if value != int(value) or value < 1:
            raise DataError(f"{path}: Info.cfg {key} must be a positive integer, got {info[key]!r}.")
        info[key] = int(value)
    if info.get("Group") not in ACDC_GROUPS:
        raise DataError(f"{path}: Info.cfg Group must be one of {'|'.join(ACDC_GROUPS)}, got {info.get('Group')!r}.")
    for key in ("ED", "ES"):
        if info[key] > info["NbFrame"]:
            raise DataError(f"{path}: Info.cfg {key} = {info[key]} is beyond NbFrame = {info['NbFrame']}.")
    return info


def _nifti(folder: Path, stem: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return folder / f"{stem}.nii.gz"


class AcdcLayout(DatasetLayout):
    """The ACDC layout (patients under ``training/`` and ``testing/``, or directly under the root).

    Args:
        frames: cardiac phases to prepare (``("ED",)`` or ``("ED", "ES")``).
        cine_frames: frames of ``patientXXX_4d.nii.gz`` to prepare as unlabelled pre-training volumes of the training
            patients (:func:`parse_cine_frames`: ``None`` off, ``"all"``, or a number of evenly spaced frames).
    """

    name = "acdc"
    slice_axis = "last"
    label_names = label_names_record(ACDC_CLASS_NAMES)

    def __init__(self, frames: Sequence[str] = ("ED",), cine_frames: str | int | None = None) -> None:
        self.frames = parse_frames(frames)
        self.cine_frames = parse_cine_frames(cine_frames)

    def discover(self, root: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in (root / "training", root / "testing", root):
            if not folder.is_dir():
                continue
            for sub in sorted(folder.iterdir()):
                if sub.is_dir() and _PATIENT.match(sub.name):
                    if sub.name in found:
                        raise DataError(f"{sub}: patient {sub.name} also found in {found[sub.name]}.")
                    found[sub.name] = sub
        if not found:
            raise DataError(f"{root}: no ACDC patientXXX folders under {root}/training, {root}/testing or {root}.")
        return found

    def volumes(self, patient: str, source: Path) -> list[VolumeSpec]:
        if not any(source.iterdir()):
            raise DataError(f"{source}: empty patient folder (no Info.cfg, no frame files).")
        info = parse_info_cfg(source / "Info.cfg")
        specs = []
        for frame in self.frames:
            number = info[frame]
            stem = f"{patient}_frame{number:02d}"
            specs.append(
                VolumeSpec(
                    id=f"{patient}_{frame}",
                    patient=patient,
                    image=_nifti(source, stem),
                    label=_nifti(source, f"{stem}_gt"),
                    frame=frame,
                    extra={"group": info["Group"], "frame_number": number, "num_frames": info["NbFrame"]},
                )
            )
        return specs

    def map_label(self, data: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        values = np.unique(data)
        bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
        if bad:
            count = int(np.isin(data, bad).sum())
            raise DataError(f"{path}: label values {bad[:10]} outside {{0, 1, 2, 3}} ({count} voxels).")
        return data.astype(np.uint8), {}

    def settings(self) -> dict[str, Any]:
        return {"label_map": "acdc"}

    @property
    def pretraining_enabled(self) -> bool:
        return self.cine_frames is not None

    def pretraining(self, patient: str, source: Path) -> PretrainSpec | None:
        if self.cine_frames is None:
            return None
        info = parse_info_cfg(source / "Info.cfg")
        nb, ed = info["NbFrame"], info["ED"]
        return PretrainSpec(
            patient=patient,
            source=_nifti(source, f"{patient}_4d"),
            frames=select_cine_frames(nb, self.cine_frames),
            num_frames=nb,
            reference=_nifti(source, f"{patient}_frame{ed:02d}"),
            reference_frame=ed,
            extra={"group": info["Group"], "num_frames": nb, "ed_frame": ed, "es_frame": info["ES"]},
        )


def prepare_acdc(
    root: str,
    out: str,
    frames: str | Sequence[str] = "ED",
    pixdim: float | Sequence[float] = 1.367,
    spatial_size: int | Sequence[int] = 192,
    seed: int | None = None,
    fractions: Iterable[float | str] | float | str | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
    cine_frames: str | int | None = "none",
) -> str:
    """Prepare ACDC for the bundles: validate, preprocess and write ``out/imagesTr``, ``out/labelsTr``,
    ``out/datalist.json`` (format: ``docs/architecture.md``) and, with ``cine_frames``, ``out/imagesPt``. ``root``
    is only read.

    Each frame is reoriented (slice axis kept last), resampled in-plane to ``pixdim`` (slice spacing kept),
    min-max normalised between its 1st and 99th percentile and centre cropped / padded to ``spatial_size``.
    With all 100 patients the published split is used (test 007-010, 027-030, ...; validation 031, 071;
    labelled 1.25 % = 002 ...); any other patient set gets a seeded split in the same proportions.

    Args:
        root: ACDC folder holding ``training/patientXXX`` (and optionally ``testing/patientXXX``).
        out: output folder (created; must not be inside ``root``).
        frames: ``"ED"`` (Chaitanya et al.: one volume per patient), ``"ES"`` or ``"ED,ES"``; frames of one
            patient always share a split.
        pixdim: in-plane spacing in mm (number or pair).
        spatial_size: in-plane size (number or pair).
        seed: ``None``: published labelled subsets; an int redraws them (nested, same sizes) or seeds the split of
            a non-standard patient set.
        fractions: label fractions in percent (default 1.25, 2.5, 10, 100).
        skip_bad: log and skip bad volumes (listed under ``"skipped"`` in the datalist) instead of stopping.
        overwrite: re-prepare volumes whose outputs already exist (default: skip them).
        num_workers: worker processes (0: prepare in this process).
        cine_frames: unlabelled pre-training frames from each TRAINING patient's ``patientXXX_4d.nii.gz`` (never a
            validation or test patient's): ``"none"`` (default: no cine is read, outputs as without the option),
            ``"all"`` (every frame, about 30 per patient), or ``N`` (``N`` frames evenly spaced over the cardiac
            cycle, frames ``1 + floor(k * NbFrame / N)``; every frame if ``N >= NbFrame``). Each frame is the 3D
            volume of the 4D file (its spatial affine, which must match the ED frame's shape and affine; the 4D file
            must hold ``NbFrame`` frames), preprocessed exactly as the ED / ES images and written to
            ``imagesPt/patientXXX_fNN.nii.gz`` (float32, ``NN`` the 1-based frame) with
            ``provenance/patientXXX_fNN.json``, and listed under the datalist key ``pretraining``: ``{"image", "id",
            "patient", "frame" (int, 1-based), "num_slices", "provenance"}``, no ``label`` (consumed like
            ``training``: ``expand_to_slices(..., labeled=False)``). A missing or inconsistent 4D file stops with a
            ``DataError`` naming it (with ``skip_bad``: the patient's cine is skipped, listed under ``"skipped"`` as
            ``"id": "patientXXX_4d"``). Already prepared frames are skipped on a rerun like the other volumes.

    Returns:
        the path of ``datalist.json``.

    Example::

        python -m ideal_components prepare_acdc --root ACDC/database --out prepared/acdc --frames ED,ES
        python -m ideal_components prepare_acdc ACDC/database prepared/acdc --cine_frames all  # + "pretraining"
    """
    layout = AcdcLayout(frames=frames, cine_frames=cine_frames)
    extra = {"frames": list(parse_frames(frames))}
    if layout.cine_frames is not None:
        extra["cine_frames"] = layout.cine_frames
    return prepare_dataset(
        layout,
        root,
        out,
        pixdim=pixdim,
        spatial_size=spatial_size,
        seed=seed,
        fractions=fractions,
        skip_bad=skip_bad,
        overwrite=overwrite,
        num_workers=num_workers,
        extra_preparation=extra,
    )
