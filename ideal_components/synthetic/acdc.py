"""Synthetic ACDC: short-axis cine MRI phantoms in the raw ACDC layout (``synth_acdc``).

``training/patientXXX/`` with the ED frame (frame 01), the ES frame, their ``_gt`` label maps (0 background, 1 RV
cavity, 2 myocardium, 3 LV cavity), ``Info.cfg`` and optionally the ``_4d`` cine file. Each subject has its own
pathology group (DCM, HCM, MINF, NOR, RV) that shapes the heart, its own field of view, spacing, number of slices,
oblique orientation, contrast, bias field and Rician noise level. ``difficulty="hard"`` gives the same subjects what
makes real cine MRI hard at one labelled volume (appearance shift between subjects, wider shapes, unlabelled
heart-bright neighbours, partial volume, breath-hold misalignment; see ``synth_acdc``), from random sub-streams of
its own, so the standard phantoms stay byte-identical.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ideal_components.data.io import atomic_write_nifti
from ideal_components.utils import atomic_write_text

from ._acdc_anatomy import _acdc_affine, _acdc_background, _acdc_bias, _acdc_frame, _acdc_params, acdc_patient_group
from ._acdc_hard import _acdc_hard_frame, _acdc_hard_layers, _acdc_hard_params
from ._common import _ACDC_STREAM, _F32, _check_seed, _nifti, _progress, _refuse_existing, _rng, _smooth_field

__all__ = ["ACDC_DIFFICULTIES", "acdc_patient_group", "synth_acdc"]

ACDC_DIFFICULTIES: tuple[str, ...] = ("standard", "hard")


def _acdc_patient(seed: int, pid: int, with_4d: bool, difficulty: str = "standard") -> dict[str, Any]:
    """Everything written for one ACDC phantom patient (arrays, affine, Info.cfg fields)."""
    p = _acdc_params(seed, pid)
    hard = difficulty == "hard"
    if hard:
        _acdc_hard_params(p, seed, pid)
    bg = _acdc_background(p, _rng(seed, pid, _ACDC_STREAM, 1))
    bias = _acdc_bias(p, _rng(seed, pid, _ACDC_STREAM, 2))
    if hard:  # sub-streams 3 (parameters), 4 (layers, bias) and 1000 + frame (noise) are the hard preset's own
        rng = _rng(seed, pid, _ACDC_STREAM, 4)
        layers = _acdc_hard_layers(p, bg, rng)
        sigma = (40.0 / p["px"], 40.0 / p["px"], 40.0 / p["dz"])  # coil sensitivity: smooth field on the polynomial
        bias = bias * np.exp(_F32(p["bias_smooth"]) * _smooth_field(rng, bias.shape, sigma))
        bias = (bias / bias.mean()).astype(_F32)
    nb, es = p["nb_frame"], p["es"]

    def phase(frame: int) -> float:  # 1-based frame -> contraction (0 at ED = frame 1, 1 at ES), smooth cycle
        if frame <= es:
            return 0.5 - 0.5 * math.cos(math.pi * (frame - 1) / (es - 1))
        return 0.5 + 0.5 * math.cos(math.pi * (frame - es) / (nb + 1 - es))

    def render(frame: int) -> tuple[np.ndarray, np.ndarray]:
        if hard:
            return _acdc_hard_frame(p, layers, bias, phase(frame), _rng(seed, pid, _ACDC_STREAM, 1000 + frame))
        return _acdc_frame(p, bg, bias, phase(frame), _rng(seed, pid, _ACDC_STREAM, 100 + frame))

    out: dict[str, Any] = {"params": p, "affine": _acdc_affine(p)}
    out["ed"] = render(1)
    out["es"] = render(es)
    if with_4d:
        frames = [out["ed"][0] if f == 1 else out["es"][0] if f == es else render(f)[0] for f in range(1, nb + 1)]
        out["4d"] = np.stack(frames, axis=-1)
    return out


def _acdc_paths(root: str, pid: int, es: int | None = None) -> dict[str, str]:
    name = f"patient{pid:03d}"
    folder = os.path.join(root, "training", name)
    paths = {"folder": folder, "cfg": os.path.join(folder, "Info.cfg"), "4d": os.path.join(folder, f"{name}_4d.nii.gz")}
    paths["ed"] = os.path.join(folder, f"{name}_frame01.nii.gz")
    paths["ed_gt"] = os.path.join(folder, f"{name}_frame01_gt.nii.gz")
    if es is not None:
        paths["es"] = os.path.join(folder, f"{name}_frame{es:02d}.nii.gz")
        paths["es_gt"] = os.path.join(folder, f"{name}_frame{es:02d}_gt.nii.gz")
    return paths


def synth_acdc(
    out: str,
    patients: int = 20,
    seed: int = 0,
    first_id: int = 1,
    with_4d: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    difficulty: str = "standard",
) -> str:
    """Write synthetic short-axis cine MRI phantoms in the raw ACDC layout.

    ``out/training/patientXXX/`` receives ``patientXXX_frame01.nii.gz`` (ED), ``patientXXX_frameYY.nii.gz`` (ES),
    both with ``_gt`` label maps (uint8: 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity), ``Info.cfg``
    (``ED``, ``ES``, ``Group``, ``Height``, ``NbFrame``, ``Weight``) and, with ``with_4d``, ``patientXXX_4d.nii.gz``
    (H, W, D, NbFrame; its frames 1 and ES equal the 3D frame files). Images are int16 (0..~1500), stored with an
    oblique affine; the slice axis is the third voxel axis. Patient ``i`` depends only on ``(seed, i)``.

    ``difficulty="hard"`` adds what makes real cine MRI hard to segment from one labelled volume (a network learns
    the standard preset's bright, regular hearts from a single volume). Same subjects (ids, groups, Info.cfg, slice
    plan, field of view, affine), with:

    - appearance shift between subjects: a contrast curve ``x ** gamma`` (gamma 0.6-1.6, log-uniform) on the
      blood-normalised image; myocardium at 0.2-0.5 of blood (standard 0.18-0.42); a stronger coil bias (polynomial
      strength 0.25-0.5 instead of 0.15-0.45, times a smooth random field); point spread 0.6-1.8 px (standard
      0.5-1.0); acquisition at a 1-2.2x coarser in-plane resolution (truncated k-space: blur, ringing, spatially
      correlated noise); noise 0.04-0.14 of blood (log-uniform; standard 0.02-0.07), over sqrt(resolution factors)
      per pixel as larger voxels collect more signal;
    - shape variability: twice the spread of each group's LV radius, wall thickness, ES contraction and RV size
      ranges, a wider RV, an irregular RV outline (Fourier modes 2-4), stronger regional wall thickness variation,
      thin epicardial fat;
    - unlabelled structures of heart-like intensity: left and right atria cutting into the one or two basal slices
      (further at ES, as the base descends; their wall and blood are label 0, as ACDC labels the ventricles only),
      the ascending aorta and pulmonary trunk coming down onto the base, a liver of myocardium-like intensity
      touching the inferior wall and a fluid-filled stomach next to the apex;
    - partial volume: the two basal and two apical slices average three positions across their thickness (the rest
      hardly change along it), the label is that of the slice centre, as annotators draw it;
    - breath-hold misalignment: per slice, the heart and its neighbours (atria, great vessels, liver, stomach)
      shift in-plane by N(0, s) mm relative to the chest wall, s = 2-5 mm per subject, image and label alike.

    Harder by numbers (ED, patients 1-20, seed 0; standard -> hard): median blood-myocardium contrast-to-noise
    ratio (LV cavity minus myocardium median over the air noise) 16 -> 10, its spread between subjects (std of the
    log) 0.33 -> 0.63, std of the myocardium / blood intensity ratio 0.07 -> 0.13, RMS in-plane offset of the LV
    centroids from a straight line along the stack 0.08 -> 4.4 mm. Hard takes about 2-2.5x the standard time. The
    hard files say ``synth_acdc difficulty=hard`` in their NIfTI ``descrip``; Info.cfg keeps the ACDC keys only.

    Args:
        out: root folder (created if missing).
        patients: number of patients.
        seed: non-negative integer seed.
        first_id: id of the first patient (ids ``first_id .. first_id + patients - 1``, written as ``%03d``).
        with_4d: also write the 4D cine file (NbFrame frames, a smooth ED -> ES -> ED cycle).
        overwrite: replace existing files; without it an existing target file raises ``FileExistsError``.
        progress: show a tqdm progress bar.
        difficulty: ``"standard"`` or ``"hard"`` (see above); the standard phantoms are unchanged by the preset.

    Returns:
        ``out``, the data set root (the folder that holds ``training/``).

    Example:
        >>> root = synth_acdc("/tmp/acdc_phantoms", patients=2, progress=False)  # doctest: +SKIP
        >>> sorted(os.listdir(os.path.join(root, "training")))  # doctest: +SKIP
        ['patient001', 'patient002']
    """
    seed = _check_seed(seed)
    if int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients!r}.")
    if int(first_id) < 1 or int(first_id) + int(patients) - 1 > 999:
        raise ValueError(f"patient ids must lie in 1..999 (3 digits), got first_id={first_id}, patients={patients}.")
    if difficulty not in ACDC_DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(map(repr, ACDC_DIFFICULTIES))}, got {difficulty!r}.")
    descrip = None if difficulty == "standard" else f"synth_acdc difficulty={difficulty}"
    ids = list(range(int(first_id), int(first_id) + int(patients)))
    if not overwrite:
        targets = []
        for pid in ids:
            es = _acdc_params(seed, pid)["es"]
            paths = _acdc_paths(out, pid, es)
            targets += [paths[k] for k in ("ed", "ed_gt", "es", "es_gt", "cfg")] + ([paths["4d"]] if with_4d else [])
        _refuse_existing(targets)
    for pid in _progress(ids, "synth_acdc", progress):
        case = _acdc_patient(seed, pid, with_4d, difficulty)
        p, aff = case["params"], case["affine"]
        paths = _acdc_paths(out, pid, p["es"])
        os.makedirs(paths["folder"], exist_ok=True)
        zooms = (p["px"], p["px"], p["dz"])
        for key in ("ed", "es"):
            image, label = case[key]
            atomic_write_nifti(_nifti(image, aff, zooms, descrip), paths[key])
            atomic_write_nifti(_nifti(label, aff, zooms, descrip), paths[f"{key}_gt"])
        if with_4d:
            atomic_write_nifti(_nifti(case["4d"], aff, zooms + (1.0,), descrip), paths["4d"])
        elif os.path.exists(paths["4d"]):  # overwrite=True: a stale cine of the old phantom would not match
            os.remove(paths["4d"])
        cfg = (
            f"ED: 1\nES: {p['es']}\nGroup: {p['group']}\nHeight: {p['height']:.1f}\n"
            f"NbFrame: {p['nb_frame']}\nWeight: {p['weight']:.1f}\n"
        )
        atomic_write_text(paths["cfg"], cfg)
    return out
