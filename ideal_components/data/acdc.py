"""ACDC preparation: ``python -m ideal_components prepare_acdc --root ACDC/database --out prepared/acdc``.

Raw layout (``root/training/patientXXX/`` and, when present, ``root/testing/patientXXX/``)::

    patient001/Info.cfg                      ED: 1 / ES: 12 / Group: DCM / Height / NbFrame: 30 / Weight
    patient001/patient001_frame01.nii.gz     the ED (or ES) frame
    patient001/patient001_frame01_gt.nii.gz  its labels: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .io import DataError
from .prepare import DatasetLayout, VolumeSpec, prepare_dataset

__all__ = ["AcdcLayout", "parse_info_cfg", "parse_frames", "prepare_acdc", "ACDC_LABELS", "ACDC_GROUPS"]

ACDC_LABELS = {"0": "background", "1": "RV cavity", "2": "myocardium", "3": "LV cavity"}
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
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
    """

    name = "acdc"
    slice_axis = "last"
    label_names = ACDC_LABELS

    def __init__(self, frames: Sequence[str] = ("ED",)) -> None:
        self.frames = parse_frames(frames)

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
) -> str:
    """Prepare ACDC for the bundles: validate, preprocess and write ``out/imagesTr``, ``out/labelsTr``,
    ``out/datalist.json`` (format: ``docs/architecture.md``). ``root`` is only read.

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

    Returns:
        the path of ``datalist.json``.

    Example::

        python -m ideal_components prepare_acdc --root ACDC/database --out prepared/acdc --frames ED,ES
    """
    return prepare_dataset(
        AcdcLayout(frames=frames),
        root,
        out,
        pixdim=pixdim,
        spatial_size=spatial_size,
        seed=seed,
        fractions=fractions,
        skip_bad=skip_bad,
        overwrite=overwrite,
        num_workers=num_workers,
        extra_preparation={"frames": list(parse_frames(frames))},
    )
