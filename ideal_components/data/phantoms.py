"""Synthetic cardiac MRI phantoms written in the raw ACDC and MMWHS layouts.

The phantoms let the whole pipeline (preparation, pre-training, fine-tuning, evaluation, inference) run without the
real data sets, which need a registration to download. They are built with numpy, scipy.ndimage and nibabel only,
fully vectorised, and deterministic: the content of patient / volume ``i`` depends only on ``(seed, i)``, never on how
many cases are generated, so any subset of a larger set is byte-identical to the same cases generated alone.

ACDC (``synth_acdc``): short-axis cine stacks, ``training/patientXXX/`` with the ED frame (frame 01), the ES frame,
their ``_gt`` label maps (0 background, 1 RV cavity, 2 myocardium, 3 LV cavity), ``Info.cfg`` and optionally the
``_4d`` cine file. Each subject has its own pathology group (DCM, HCM, MINF, NOR, RV) that shapes the heart, its own
field of view, spacing, number of slices, oblique orientation, contrast, bias field and Rician noise level.
``difficulty="hard"`` gives the same subjects what makes real cine MRI hard at one labelled volume (appearance shift
between subjects, wider shapes, unlabelled heart-bright neighbours, partial volume, breath-hold misalignment; see
``synth_acdc``), from random sub-streams of its own, so the standard phantoms stay byte-identical.

MMWHS (``synth_mmwhs``): 3D whole-heart MRI, ``mr_train_1001_image.nii.gz`` / ``mr_train_1001_label.nii.gz`` with
the seven MMWHS structures (205 LV myocardium, 420 left atrium, 500 LV cavity, 550 right atrium, 600 RV cavity,
820 ascending aorta, 850 pulmonary artery) plus a few voxels of stray label values (421, 1, 244) as in the real
labels. The anatomy is laid out in world (RAS) coordinates and sampled through each volume's affine, which differ in
axis order and direction (RAS, LPS, permuted axes, slightly oblique), so the anatomy agrees in world space whatever
the storage orientation.

``render_preview`` draws a few cases with their label overlays (``docs/images/phantoms_*.png``; the hard preset's
``phantoms_acdc_hard.png`` with ``crop_mm=130``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from ideal_components.facts import ACDC_CLASS_NAMES, ACDC_GROUPS, MMWHS_CODE_NAMES
from ideal_components.utils import atomic_path, atomic_write_text

__all__ = [
    "MMWHS_ORIENTATIONS",
    "ACDC_DIFFICULTIES",
    "acdc_patient_group",
    "synth_acdc",
    "synth_mmwhs",
    "render_preview",
]

# storage orientations of the MMWHS phantoms (nibabel axis codes); volume ``i`` uses entry (i + seed) % 8
MMWHS_ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "ASL", "LAS", "PIR", "RSP", "SRA", "LPI")

_ACDC_STREAM, _MMWHS_STREAM = 1, 2
# ACDC group shape ranges (mm; es_r = ES/ED endocardial radius ratio, rv_scale = RV size relative to normal)
_ACDC_SHAPE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": dict(a=(23, 28), t=(7.0, 10.0), es_r=(0.62, 0.72), rv_scale=(0.95, 1.15), length=(72, 90)),
    "DCM": dict(a=(31, 39), t=(5.0, 7.0), es_r=(0.84, 0.92), rv_scale=(0.9, 1.1), length=(85, 105)),
    "HCM": dict(a=(18, 23), t=(13.0, 18.0), es_r=(0.45, 0.60), rv_scale=(0.85, 1.05), length=(70, 88)),
    "MINF": dict(a=(26, 33), t=(7.0, 10.0), es_r=(0.76, 0.86), rv_scale=(0.9, 1.1), length=(80, 98)),
    "RV": dict(a=(22, 27), t=(6.5, 9.0), es_r=(0.65, 0.75), rv_scale=(1.45, 1.8), length=(72, 90)),
}
_F32 = np.float32


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def _rng(seed: int, key: int, stream: int, sub: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, case id, data set, sub-stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(key), int(stream), int(sub)]))


def _check_seed(seed: int) -> int:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _pv(d: np.ndarray, px: float) -> np.ndarray:
    """Partial-volume fraction of a shape from its (approximate) signed distance ``d`` in mm (negative inside)."""
    return np.clip(0.5 - d * (1.0 / px), 0.0, 1.0).astype(_F32, copy=False)


def _paint(img: np.ndarray, d: np.ndarray, value: Any, px: float) -> None:
    """Alpha-blend ``value`` into ``img`` with the anti-aliased coverage of the shape ``d < 0`` (in place)."""
    f = _pv(d, px)
    img += f * (value - img)


def _ellipse_d(u: np.ndarray, v: np.ndarray, a: Any, b: Any) -> np.ndarray:
    """Approximate signed distance (mm) to the ellipse (u/a)^2 + (v/b)^2 = 1 (first-order, exact on circles)."""
    a = np.maximum(a, 1e-3)
    b = np.maximum(b, 1e-3)
    f = (u / a) ** 2 + (v / b) ** 2
    g = 2.0 * np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-6
    return (f - 1.0) / g


def _ellipsoid_d(q: Sequence[np.ndarray], radii: Sequence[float]) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid in local coordinates ``q`` with semi-axes ``radii``."""
    f = sum((qi / ri) ** 2 for qi, ri in zip(q, radii)) - 1.0
    g = 2.0 * np.sqrt(sum((qi / ri**2) ** 2 for qi, ri in zip(q, radii))) + 1e-6
    return f / g


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise, computed at low resolution)."""
    shape = tuple(int(s) for s in shape)
    factor = [max(1, int(s // 3)) if s > 1 else 1 for s in sigma]
    low_shape = tuple(max(2, int(math.ceil(n / f))) for n, f in zip(shape, factor))
    low = rng.standard_normal(low_shape).astype(_F32)
    low = ndimage.gaussian_filter(low, [s / f for s, f in zip(sigma, factor)], mode="wrap")
    field = ndimage.zoom(low, [n / m for n, m in zip(shape, low_shape)], order=1, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, n) for n in shape)]
    if field.shape != shape:  # zoom rounding: pad by edge values
        field = np.pad(field, [(0, n - m) for n, m in zip(shape, field.shape)], mode="edge")
    field -= field.mean()
    return (field / (field.std() + 1e-6)).astype(_F32)


def _rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    re = img + rng.standard_normal(img.shape, dtype=_F32) * _F32(sigma)
    im = rng.standard_normal(img.shape, dtype=_F32) * _F32(sigma)
    return np.sqrt(re * re + im * im)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix R = Rz(az) @ Ry(ay) @ Rx(ax) (radians)."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _to_int16(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 32767).astype(np.int16)


def _nifti(
    data: np.ndarray, affine: np.ndarray, zooms: Sequence[float] | None = None, descrip: str | None = None
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    if descrip is not None:
        img.header["descrip"] = descrip.encode()[:79]
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if zooms is not None:
        img.header.set_zooms(tuple(float(z) for z in zooms))
    return img


def _atomic_save(img: nib.Nifti1Image, path: str) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _refuse_existing(paths: Sequence[str]) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"refusing to overwrite existing file {existing[0]!r}{more}; pass overwrite=True to replace the phantoms."
        )


def _progress(iterable: Sequence[int], desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="case")


# ----------------------------------------------------------------------------------------------------------------
# ACDC
# ----------------------------------------------------------------------------------------------------------------
def acdc_patient_group(patient_id: int) -> str:
    """Pathology group of phantom patient ``patient_id``: the groups cycle DCM, HCM, MINF, NOR, RV (1 -> DCM).

    Cycling (rather than the real data set's blocks of 20) keeps every group present in small phantom sets and in
    every published split.
    """
    return ACDC_GROUPS[(int(patient_id) - 1) % len(ACDC_GROUPS)]


def _acdc_params(seed: int, pid: int) -> dict[str, Any]:
    """Draw every per-subject parameter of ACDC phantom ``pid``."""
    rng = _rng(seed, pid, _ACDC_STREAM)
    u = rng.uniform
    group = acdc_patient_group(pid)
    p: dict[str, Any] = {"group": group}
    # -- acquisition
    h = int(rng.integers(180, 261))
    w = h if u() < 0.4 else int(rng.integers(180, 261))
    p["shape2d"] = (h, w)
    p["px"] = float(np.round(u(1.2, 1.9), 4))
    # -- LV size / thickness / contraction per group (``_ACDC_SHAPE_RANGES``)
    # (every group's values are drawn, in table order, so that each subject's stream is the same whatever its group)
    lv = {g: {k: u(lo, hi) for k, (lo, hi) in ranges.items()} for g, ranges in _ACDC_SHAPE_RANGES.items()}
    p.update(lv[group])
    # -- slices: 6..12 slices covering base..near apex, spacing 5..10 mm
    length = p["length"]
    n = int(rng.integers(6, 13))
    dz = float(np.clip(length * u(0.82, 0.95) / (n - 1), 5.0, 10.0))
    if (n - 1) * dz < 0.75 * length:
        n = int(min(12, math.ceil(0.82 * length / dz) + 1))
    p["dz"] = float(np.round(dz * 2) / 2)  # ACDC spacings are round numbers (5, 6.5, 10 mm ...)
    p["n_slices"] = n
    coverage = (n - 1) * p["dz"]
    p["L_epi"] = coverage / u(0.86, 0.96)  # last slice sits at 86-96 % of the epicardial long axis
    p["L_endo"] = p["L_epi"] - p["t"] * u(0.8, 1.2)
    p["z_off"] = u(4.0, 16.0)  # the widest section lies a little above the basal slice
    p["shorten"] = u(0.03, 0.10)  # ES long-axis shortening
    p["L_rv"] = coverage * u(0.72, 0.9)  # RV stops before the apex
    # -- in-plane shape modulation (Fourier coefficients of the endocardial and epicardial radius)
    p["endo_c"] = rng.uniform(0, 1, 4) * np.array([0.08, 0.035, 0.025, 0.015])
    p["endo_ph"] = rng.uniform(0, 2 * np.pi, 4)
    p["t_c"] = rng.uniform(0, 1, 3) * np.array([0.18, 0.12, 0.08])
    p["t_ph"] = rng.uniform(0, 2 * np.pi, 3)
    p["minf_phi"] = u(-np.pi, np.pi)
    p["minf_width"] = u(0.5, 1.0)  # half-width (rad) of the infarcted sector
    p["minf_depth"] = u(0.45, 0.65) if group == "MINF" else 0.0
    p["minf_z"] = (u(0.0, 0.4), u(0.6, 1.0))  # slice range (fraction of coverage) of the infarct
    # -- RV
    p["rv_w"] = u(0.35, 0.60) * p["rv_scale"]  # RV width beyond the LV (fraction of LV epicardial radius)
    p["rv_b"] = u(1.1, 1.35) * p["rv_scale"] ** 0.5
    p["rv_c"] = u(0.45, 0.70)
    p["rv_vshift"] = u(-0.15, 0.15)
    p["rv_es"] = u(0.86, 0.93) if group == "RV" else u(0.70, 0.82)
    p["rv_wall"] = u(2.0, 3.5)
    p["rvot"] = u(0.10, 0.25)
    p["pap"] = [u(2.5, 4.5), u(2.0, 4.0)]
    p["pap_phi"] = [u(2.0, 2.6), -u(2.0, 2.6)]
    # -- placement (body frame: origin at the body centre, +x subject's left, +y anterior; mm)
    p["theta"] = np.deg2rad(u(150, 195))  # direction of the RV from the LV centre
    p["tilt"] = rng.uniform(-0.15, 0.15, 2)  # drift of the LV centre per mm along the stack
    p["h_body"] = np.array([u(10, 40), u(5, 35)])
    p["h_img"] = rng.uniform(-0.08, 0.08, 2) * np.array(p["shape2d"]) * p["px"]
    p["psi"] = np.deg2rad(u(-35, 35))  # in-plane rotation of the whole anatomy
    p["flip"] = bool(u() < 0.25)  # mirrored in-plane display for some subjects
    p["body"] = (u(165, 230), u(110, 150))
    p["fat_t"] = u(6, 20)
    r_heart = (p["a"] + p["t"]) * 1.1
    hx, hy = p["h_body"]
    # lungs hug the heart laterally and posteriorly: (centre x, centre y, semi-axis x, semi-axis y)
    la_l, la_r = u(50, 75), u(50, 75)
    p["lungs"] = [
        (hx + r_heart + u(3, 15) + 0.9 * la_l, hy - u(15, 40), la_l, u(70, 100)),
        (hx - r_heart * (1 + p["rv_w"]) - u(3, 15) - 0.9 * la_r, hy - u(15, 40), la_r, u(70, 100)),
    ]
    p["lung_c"] = rng.uniform(0, 0.08, (2, 3))
    p["lung_ph"] = rng.uniform(0, 2 * np.pi, (2, 3))
    p["liver"] = (hx - u(40, 80), hy - u(20, 50), u(70, 100), u(55, 75), u(0.25, 0.55))
    p["stomach"] = (hx + u(40, 70), hy - u(10, 40), u(20, 35), u(0.03, 0.8), u(0.4, 1.2))
    p["spine_y"] = -p["body"][1] + u(30, 45)
    p["aorta"] = (u(12, 28), u(18, 30), u(9, 13))
    p["vessels"] = rng.uniform(0, 1, (12, 3))
    p["peri_c"] = rng.uniform(0, 1, 4)
    p["peri_ph"] = rng.uniform(0, 2 * np.pi, 4)
    p["peri_t"] = u(1.0, 6.0)
    # -- contrast (relative to LV blood = 1)
    p["I"] = dict(
        blood=1.0,
        rv_blood=u(0.82, 1.0),
        myo=u(0.18, 0.42),
        tissue=u(0.22, 0.48),
        fat=u(0.55, 0.95),
        lung=u(0.02, 0.09),
        liver=u(0.22, 0.5),
        spine=u(0.25, 0.45),
        csf=u(0.6, 0.95),
        aorta=u(0.6, 1.0),
        vessel=u(0.4, 0.8),
    )
    p["scale"] = u(250, 1100)
    p["noise"] = u(0.02, 0.07)
    p["psf"] = u(0.5, 1.0)
    p["bias"] = u(0.15, 0.45)
    p["texture"] = u(0.03, 0.08)
    # -- Info.cfg
    p["nb_frame"] = int(rng.choice([20, 25, 28, 30, 30, 30, 30, 35]))
    p["es"] = int(rng.integers(8, 15)) if p["nb_frame"] >= 25 else int(rng.integers(7, 11))
    height = {"DCM": u(160, 190), "HCM": u(155, 188), "MINF": u(158, 190), "NOR": u(150, 192), "RV": u(150, 190)}
    p["height"] = float(np.round(height[group]))
    bmi = u(19, 32)
    p["weight"] = float(np.round(bmi * (p["height"] / 100) ** 2))
    # -- oblique short-axis orientation in the scanner frame
    p["rot"] = _rotation(np.deg2rad(u(-140, -40)), np.deg2rad(u(-50, 50)), np.deg2rad(u(-180, 180)))
    p["trans"] = rng.uniform(-120, 120, 3)
    return p


def _acdc_affine(p: dict[str, Any]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = p["rot"] @ np.diag([p["px"], p["px"], p["dz"]])
    aff[:3, 3] = p["trans"]
    return aff


def _acdc_body_coords(p: dict[str, Any], rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame coordinates (mm) of the pixel grid ``rows`` x ``cols`` (index vectors)."""
    h, w = p["shape2d"]
    x = ((rows - (h - 1) / 2.0) * p["px"] - p["h_img"][0]).astype(_F32)[:, None, None]
    y = ((cols - (w - 1) / 2.0) * p["px"] - p["h_img"][1]).astype(_F32)[None, :, None]
    if p["flip"]:
        y = -y
    c, s = math.cos(p["psi"]), math.sin(p["psi"])
    bx = c * x - s * y + _F32(p["h_body"][0])
    by = s * x + c * y + _F32(p["h_body"][1])
    return bx.astype(_F32), by.astype(_F32)


def _acdc_background(p: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Everything but the heart: body, fat, lungs with vessels, liver, spine, descending aorta."""
    h, w = p["shape2d"]
    n = p["n_slices"]
    px = p["px"]
    tone = p["I"]
    bx, by = _acdc_body_coords(p, np.arange(h), np.arange(w))
    zf = (np.arange(n, dtype=_F32) / max(n - 1, 1))[None, None, :]  # 0 base .. 1 apex
    img = np.zeros((h, w, n), _F32)
    # body: fat layer over soft tissue
    ba, bb = p["body"]
    _paint(img, _ellipse_d(bx, by, ba, bb) + 0 * zf, tone["fat"], px)
    _paint(img, _ellipse_d(bx, by, ba - p["fat_t"], bb - p["fat_t"] * 0.8), tone["tissue"], px)
    # lungs (smaller towards the apex, where the liver and the diaphragm come in)
    inner = _ellipse_d(bx, by, ba - p["fat_t"], bb - p["fat_t"] * 0.8)
    for (lx, ly, la, lb), cs, phs in zip(p["lungs"], p["lung_c"], p["lung_ph"]):
        shrink = 1.0 - 0.3 * zf
        ang = np.arctan2(by - ly, bx - lx)
        mod = 1.0 + sum(c * np.cos((k + 1) * ang + ph) for k, (c, ph) in enumerate(zip(cs, phs)))
        d_lung = _ellipse_d(bx - lx, by - ly, la * shrink * mod, lb * shrink * mod)
        _paint(img, np.maximum(d_lung, inner + 10.0), tone["lung"], px)
    # pulmonary vessels: small bright spots inside the lungs
    for k, (fx, fy, fr) in enumerate(p["vessels"]):
        lx, ly, la, lb = p["lungs"][k % 2]
        ang = 2 * np.pi * fx
        vx, vy = lx + 0.7 * fy * la * math.cos(ang), ly + 0.7 * fy * lb * math.sin(ang)
        drift = (zf - 0.5) * 8.0 * (fr - 0.5)
        _paint(img, np.hypot(bx - vx - drift, by - vy) - (1.5 + 3.0 * fr), tone["vessel"], px)
    if "breath" not in p:  # (the hard preset draws liver and stomach next to the heart, moving with it)
        # liver: comes in from below towards the apex
        lx, ly, la, lb, start = p["liver"]
        grow = np.clip((zf - start) / (1.0 - start + 1e-3), 0, 1) ** 0.7
        d_liver = _ellipse_d(bx - lx, by - ly + 60 * (1 - grow), la * (0.3 + 0.7 * grow), lb * np.maximum(grow, 0.05))
        _paint(img, np.where(grow > 0, np.maximum(d_liver, inner + 5.0), 1e3), tone["liver"], px)
        # stomach (fluid, bright; or air, dark) in the apical slices
        sx, sy_, sr, sval, sstart = p["stomach"]
        sgrow = np.clip((zf - sstart) / (1.0 - sstart + 1e-3), 0, 1)
        d_st = np.hypot(bx - sx, by - sy_) - sr * sgrow
        _paint(img, np.where(sgrow > 0, np.maximum(d_st, inner + 5.0), 1e3), sval, px)
    # spine, spinal canal, descending aorta
    sy = p["spine_y"]
    _paint(img, np.hypot(bx - 0.0, by - sy) - 17.0 + 0 * zf, tone["spine"], px)
    _paint(img, np.hypot(bx, by - sy + 22.0) - 6.0 + 0 * zf, tone["csf"], px)
    ax_, ay_, ar = p["aorta"]
    _paint(img, np.hypot(bx - ax_, by - sy - ay_) - ar + 0 * zf, tone["aorta"], px)
    # fine tissue texture (static across the cine)
    img *= 1.0 + _F32(p["texture"]) * _smooth_field(rng, img.shape, (2.0, 2.0, 0.0))
    return img


def _acdc_heart(
    p: dict[str, Any], bx: np.ndarray, by: np.ndarray, alpha: float, z: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Signed distance fields (mm) of the heart structures at cardiac phase ``alpha`` (0 = ED, 1 = ES).

    ``z``: positions (mm, broadcast as ``(1, 1, n)``) along the stack; the slice centres when omitted.
    """
    n = p["n_slices"]
    if z is None:
        z = (np.arange(n, dtype=_F32) * _F32(p["dz"]))[None, None, :]
    zfrac = z / max((n - 1) * p["dz"], 1e-3)
    shorten = 1.0 - alpha * p["shorten"]
    cx = p["h_body"][0] + p["tilt"][0] * z
    cy = p["h_body"][1] + p["tilt"][1] * z
    dx, dy = bx - cx, by - cy
    ct, st = math.cos(p["theta"]), math.sin(p["theta"])
    uu = ct * dx + st * dy
    vv = -st * dx + ct * dy
    rho = np.sqrt(uu * uu + vv * vv)
    phi = np.arctan2(vv, uu)

    def profile(length: float) -> np.ndarray:
        zr = (z + p["z_off"]) / (length * shorten + p["z_off"])
        return np.sqrt(np.clip(1.0 - zr * zr, 0.0, None))

    mod = 1.0 + sum(c * np.cos((k + 2) * phi + ph) for k, (c, ph) in enumerate(zip(p["endo_c"], p["endo_ph"])))
    tmod = 1.0 + sum(c * np.cos((k + 1) * phi + ph) for k, (c, ph) in enumerate(zip(p["t_c"], p["t_ph"])))
    # infarct: a thin, hypokinetic sector
    dphi = np.angle(np.exp(1j * (phi - p["minf_phi"])))
    z0, z1 = p["minf_z"]
    in_z = ((zfrac >= z0) & (zfrac <= z1)).astype(_F32)
    sector = np.exp(-((dphi / p["minf_width"]) ** 4)) * in_z * (p["minf_depth"] > 0)
    thick = p["t"] * tmod * (1.0 - p["minf_depth"] * sector)
    endo_ed = p["a"] * mod * profile(p["L_endo"])
    epi_ed = (p["a"] * mod + thick) * profile(p["L_epi"])
    es_r = p["es_r"] + (1.0 - p["es_r"]) * 0.8 * sector
    endo = endo_ed * (1.0 - alpha * (1.0 - es_r))
    epi = np.sqrt(endo**2 + (epi_ed**2 - endo_ed**2) * (1.0 + 0.04 * alpha))
    d: dict[str, np.ndarray] = {}
    d["endo"] = np.where(endo_ed > 0.5, rho - endo, 1e3).astype(_F32)
    d["epi"] = np.where(epi_ed > 0.5, rho - epi, 1e3).astype(_F32)
    # papillary muscles (inside the cavity label, as in ACDC), mid-ventricular slices
    rmean = p["a"] * profile(p["L_endo"]) * (1.0 - alpha * (1.0 - p["es_r"]))
    window = np.clip(np.minimum(zfrac - 0.1, 0.85 - zfrac) * 6.0, 0, 1)
    dpap = np.full(rho.shape, 1e3, _F32)
    for rp, ph in zip(p["pap"], p["pap_phi"]):
        pu, pv = 0.62 * rmean * math.cos(ph), 0.62 * rmean * math.sin(ph)
        dpap = np.minimum(dpap, np.hypot(uu - pu, vv - pv) - rp * window * (1 + 0.3 * alpha))
    d["pap"] = np.where(window > 0, dpap, 1e3).astype(_F32)
    # RV: ellipse around the septum minus the LV; absent below L_rv, wider near the base (outflow)
    re_ed = (p["a"] + p["t"]) * profile(p["L_epi"])
    zr = z / (p["L_rv"] * shorten)
    prof_rv = np.sqrt(np.clip(1.0 - zr**3, 0.0, None))
    rv_f = 1.0 - alpha * (1.0 - p["rv_es"])
    uc = p["rv_c"] * re_ed
    a_rv = (re_ed * (1.0 + p["rv_w"] * rv_f) - uc * (1.0 - 0.3 * (1.0 - prof_rv))) * np.maximum(prof_rv, 1e-3) ** 0.5
    a_rv = np.maximum(a_rv, 0.5 * uc)
    base = np.exp(-z / max(p["dz"], 1e-3))
    b_rv = re_ed * p["rv_b"] * (0.55 + 0.45 * rv_f) * prof_rv**0.5 * (1.0 + p["rvot"] * base)
    bend = 0.1 * vv**2 / np.maximum(b_rv, 1.0)
    ru, rv = uu - uc + bend, vv - p["rv_vshift"] * b_rv
    if "rv_modes" in p:  # hard preset: irregular (non-elliptic) RV, Fourier modes 2..4 of its radius
        ang = np.arctan2(rv, ru)
        m = 1.0 + sum(c * np.cos((k + 2) * ang + ph) for k, (c, ph) in enumerate(zip(*p["rv_modes"])))
        a_rv, b_rv = a_rv * m, b_rv * m
    drv = _ellipse_d(ru, rv, a_rv, b_rv)
    d["rv"] = np.where(prof_rv > 0.2, drv, 1e3).astype(_F32)
    d["rv_wall"] = np.where(prof_rv > 0.2, drv - p["rv_wall"], 1e3).astype(_F32)
    peri = 1.0 + sum(c * np.cos((k + 1) * phi + ph) for k, (c, ph) in enumerate(zip(p["peri_c"], p["peri_ph"])))
    d["peri"] = (np.minimum(d["epi"], d["rv_wall"]) - p["peri_t"] * peri).astype(_F32)
    return d, zfrac


def _acdc_paint_heart(crop: np.ndarray, d: dict[str, np.ndarray], tone: dict[str, float], px: float) -> None:
    """Paint the heart (``_acdc_heart`` distances) into ``crop`` in place, back to front."""
    _paint(crop, d["peri"], tone["fat"], px)
    _paint(crop, d["rv_wall"], tone["myo"], px)
    _paint(crop, d["rv"], tone["rv_blood"], px)
    _paint(crop, d["epi"], tone["myo"], px)
    _paint(crop, d["endo"], tone["blood"], px)
    _paint(crop, np.maximum(d["pap"], d["endo"]), tone["myo"] * 1.15, px)


def _acdc_label_heart(lcrop: np.ndarray, d: dict[str, np.ndarray]) -> None:
    """ACDC labels of the heart (1 RV cavity, 2 myocardium, 3 LV cavity with papillary muscles) in place."""
    lcrop[(d["rv"] < 0) & (d["epi"] >= 0)] = 1
    lcrop[d["epi"] < 0] = 2
    lcrop[d["endo"] < 0] = 3


def _acdc_heart_box(p: dict[str, Any], margin: float = 0.0) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Body coordinates of the image grid and the crop (r0, r1, c0, c1) that the heart never leaves."""
    h, w = p["shape2d"]
    extent = (p["a"] * 1.2 + p["t"]) * (2.0 + p["rv_w"]) + 20.0 + np.abs(p["tilt"]).max() * p["n_slices"] * p["dz"]
    bx, by = _acdc_body_coords(p, np.arange(h), np.arange(w))
    dist = np.hypot(bx[:, :, 0] - p["h_body"][0], by[:, :, 0] - p["h_body"][1])
    ii, jj = np.nonzero(dist <= extent + margin)
    return bx, by, (ii.min(), ii.max() + 1, jj.min(), jj.max() + 1)


def _acdc_frame(
    p: dict[str, Any], bg: np.ndarray, bias: np.ndarray, alpha: float, noise_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one cardiac phase: int16 image and uint8 label map."""
    h, w = p["shape2d"]
    px = p["px"]
    tone = p["I"]
    bx, by, (r0, r1, c0, c1) = _acdc_heart_box(p)
    d, _ = _acdc_heart(p, bx[r0:r1, c0:c1], by[r0:r1, c0:c1], alpha)
    img = bg.copy()
    _acdc_paint_heart(img[r0:r1, c0:c1], d, tone, px)
    lab = np.zeros((h, w, p["n_slices"]), np.uint8)
    _acdc_label_heart(lab[r0:r1, c0:c1], d)
    # MRI: point spread, bias field, scaling, Rician noise
    img = ndimage.gaussian_filter(img, (p["psf"], p["psf"], 0), truncate=3.0)
    img *= bias
    scale = p["scale"]
    img = _rician(img * _F32(scale), p["noise"] * scale, noise_rng)
    return _to_int16(img), lab


def _acdc_bias(p: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    h, w = p["shape2d"]
    n = p["n_slices"]
    x = np.linspace(-1, 1, h, dtype=_F32)[:, None, None]
    y = np.linspace(-1, 1, w, dtype=_F32)[None, :, None]
    z = np.linspace(-1, 1, n, dtype=_F32)[None, None, :]
    c = rng.normal(0, 1, 7)
    c /= np.abs(c).sum()
    poly = c[0] * x + c[1] * y + c[2] * x * y + c[3] * x * x + c[4] * y * y + c[5] * z * 0.3 + c[6] * x * z * 0.3
    field = np.exp(_F32(p["bias"] * 2.0) * poly)  # coil sensitivity: smooth, up to about x0.5..x2
    return (field / field.mean()).astype(_F32)


# -- hard preset ------------------------------------------------------------------------------------------------
ACDC_DIFFICULTIES: tuple[str, ...] = ("standard", "hard")
_HARD_SPREAD = 2.0  # the hard preset doubles the spread of each group's shape ranges around their centres
_HARD_SUBSLICES = (0.0, -1.0 / 3.0, 1.0 / 3.0)  # positions (x slice spacing) averaged per slice; 0 is labelled


def _hard_subslices(n: int) -> list[tuple[float, np.ndarray]]:
    """(offset, slice indices): every slice at its centre, the two basal and two apical ones also off-centre (the
    heart changes fast along the stack only there, mid-ventricular slices hardly change over their thickness)."""
    edge = np.array(sorted({0, 1, n - 2, n - 1}))
    return [(off, np.arange(n) if off == 0.0 else edge) for off in _HARD_SUBSLICES]


def _acdc_hard_params(p: dict[str, Any], seed: int, pid: int) -> None:
    """Turn the standard parameters ``p`` of patient ``pid`` into the hard preset's (in place).

    All new draws come from sub-stream 3, so the draws the hard preset shares with the standard one (anatomy,
    background, bias polynomial) are those of the standard preset, and patient ``i`` still depends on ``(seed, i)``.
    """
    rng = _rng(seed, pid, _ACDC_STREAM, 3)
    u = rng.uniform
    a0, t0, rv0, rvw0 = p["a"], p["t"], p["rv_scale"], p["rv_w"]
    # -- shape: wider group ranges (LV size, wall thickness, contraction, RV size), irregular RV, regional thickness
    for key, (lo, hi) in _ACDC_SHAPE_RANGES[p["group"]].items():
        if key != "length":  # (the length sets the slice plan; kept)
            p[key] = (lo + hi) / 2 + _HARD_SPREAD * (p[key] - (lo + hi) / 2)
    p["a"], p["t"], p["rv_scale"] = max(p["a"], 14.0), max(p["t"], 3.5), max(p["rv_scale"], 0.6)
    p["es_r"] = float(np.clip(p["es_r"], 0.35, 0.95))
    p["L_endo"] = p["L_epi"] - (p["L_epi"] - p["L_endo"]) * p["t"] / t0
    p["rv_w"] *= p["rv_scale"] / rv0 * u(0.75, 1.35)
    p["rv_b"] *= (p["rv_scale"] / rv0) ** 0.5 * u(0.85, 1.2)
    p["rv_modes"] = (rng.uniform(0, 1, 3) * np.array([0.14, 0.09, 0.05]), rng.uniform(0, 2 * np.pi, 3))
    p["endo_c"] = p["endo_c"] * 1.5
    p["t_c"] = p["t_c"] * 1.8
    p["peri_t"] = u(0.3, 4.0)  # thin epicardial fat: the heart touches the liver and the chest wall
    r0, r1 = 1.1 * (a0 + t0), 1.1 * (p["a"] + p["t"])  # lungs keep their distance to the (resized) heart
    (x0, y0, la0, lb0), (x1, y1, la1, lb1) = p["lungs"]
    p["lungs"] = [(x0 + r1 - r0, y0, la0, lb0), (x1 - r1 * (1 + p["rv_w"]) + r0 * (1 + rvw0), y1, la1, lb1)]
    # -- appearance: blood-like myocardium for some subjects, contrast curve, bias, noise, blur, resolution
    tone = p["I"]
    tone["myo"], tone["rv_blood"] = u(0.2, 0.5), u(0.8, 1.0)
    tone["liver"] = tone["myo"] * u(0.85, 1.2)
    p["gamma"] = float(np.exp(u(np.log(0.6), np.log(1.6))))
    p["bias"], p["bias_smooth"] = u(0.25, 0.5), u(0.1, 0.3)
    p["noise"], p["psf"] = float(np.exp(u(np.log(0.04), np.log(0.14)))), u(0.6, 1.8)  # (noise: log-uniform)
    f = u(1.0, 2.2)
    p["res"] = (f, float(np.clip(f * u(0.8, 1.25), 1.0, 2.2)))
    # -- breath-hold misalignment: in-plane shift (mm) of the heart and its neighbours, one per slice
    p["breath"] = rng.normal(0.0, u(2.0, 5.0), (p["n_slices"], 2))
    # -- unlabelled neighbours (angles from the LV -> RV direction; +90 deg points to the inferior wall)
    rh, th, dz = p["a"] + p["t"], p["theta"], p["dz"]

    def at(deg: float, dist: float) -> tuple[float, float]:
        e = th + math.radians(deg)
        return p["h_body"][0] + dist * math.cos(e), p["h_body"][1] + dist * math.sin(e)

    # atria (x, y, radius, half-height, apical end at ED in mm below the basal slice centre, tone): LA, RA
    p["atria"] = [
        (*at(u(110, 150), u(0.3, 0.6) * rh), u(16, 24), u(20, 30), u(0.1, 1.3) * dz, u(0.8, 1.0)),
        (*at(u(15, 45), rh * (1 + p["rv_w"]) * u(0.7, 1.0)), u(17, 26), u(20, 30), u(0.0, 1.1) * dz, u(0.8, 1.0)),
    ]
    r_ao, r_pa = u(11, 15), u(10, 14)
    # great vessels coming down onto the base (x, y, radius, apical end, tone): ascending aorta, pulmonary trunk
    p["great_vessels"] = [
        (*at(-u(20, 50), rh * u(0.8, 1.0) + 0.5 * r_ao), r_ao, u(0.0, 1.2) * dz, u(0.8, 1.0)),
        (*at(-u(60, 90), rh * u(1.1, 1.4) + r_pa), r_pa, u(0.0, 1.0) * dz, tone["rv_blood"] * u(0.8, 1.0)),
    ]
    # liver under the inferior wall (angle, half-length, half-thickness, gap, first slice as a fraction), stomach
    p["liver_h"] = (90 + u(-30, 10), u(60, 90), u(35, 55), u(-2.0, 3.0), u(0.35, 0.65))
    p["stomach_h"] = (90 + u(40, 80), u(14, 28), u(2.0, 12.0), u(0.5, 0.85), u(0.55, 1.0))


def _acdc_hard_layers(p: dict[str, Any], bg: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The background plus the unlabelled structures that move with the heart (great vessels, liver, stomach),
    shifted per slice by the breath-hold offsets, at each sub-slice position of ``_HARD_SUBSLICES``."""
    h, w = p["shape2d"]
    n, dz, px = p["n_slices"], p["dz"], p["px"]
    bx, by = _acdc_body_coords(p, np.arange(h), np.arange(w))
    inner = _ellipse_d(bx, by, p["body"][0] - p["fat_t"], p["body"][1] - p["fat_t"] * 0.8)
    mx, my = bx - _F32(p["breath"][:, 0]), by - _F32(p["breath"][:, 1])
    liver = p["I"]["liver"] * (1.0 + _F32(p["texture"]) * _smooth_field(rng, (h, w, n), (2.0, 2.0, 0.0)))
    layers = []
    for off, ks in _hard_subslices(n):
        z = ((ks + off) * dz).astype(_F32)
        zf = z / max((n - 1) * dz, 1e-3)
        cx, cy = p["h_body"][0] + p["tilt"][0] * z, p["h_body"][1] + p["tilt"][1] * z  # LV centre
        r_epi = (p["a"] + p["t"]) * np.sqrt(np.clip(1 - ((z + p["z_off"]) / (p["L_epi"] + p["z_off"])) ** 2, 0, 1))

        def beside(deg: float, la: float, lb: float, gap: float, start: float) -> np.ndarray:
            """Ellipse lying ``gap`` mm off the epicardium in direction ``deg``, growing from slice fraction start."""
            g = np.clip((zf - start) / (1.0 - start), 0, 1) ** 0.7
            c, s = math.cos(p["theta"] + math.radians(deg)), math.sin(p["theta"] + math.radians(deg))
            dist = r_epi + lb * g + gap
            dx, dy = mx[..., ks] - (cx + c * dist), my[..., ks] - (cy + s * dist)
            d = _ellipse_d(c * dy - s * dx, c * dx + s * dy, la * np.maximum(g, 0.05), lb * np.maximum(g, 0.05))
            return np.where(g > 0, np.maximum(d, inner + 5.0), 1e3)

        img = bg[..., ks]  # (a copy: fancy indexing)
        for vx, vy, r, low, value in p["great_vessels"]:  # tubes with a round end, coming down onto the base
            d_xy = np.hypot(mx[..., ks] - vx, my[..., ks] - vy)
            _paint(img, np.hypot(d_xy, np.maximum(z - low + r, 0)) - r, value, px)
        _paint(img, beside(*p["liver_h"]), liver[..., ks], px)
        deg, r, gap, start, value = p["stomach_h"]
        _paint(img, beside(deg, r, r, gap, start), value, px)
        layers.append(img)
    return layers


def _acdc_hard_frame(
    p: dict[str, Any], layers: list[np.ndarray], bias: np.ndarray, alpha: float, noise_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one cardiac phase of the hard preset: int16 image and uint8 label map.

    The image averages the slice over its thickness (partial volume), the label is that of the slice centre; the
    atria cut into the basal slices unlabelled (they come down further at ES, as the base descends)."""
    h, w = p["shape2d"]
    n, dz, px, tone = p["n_slices"], p["dz"], p["px"], p["I"]
    bx, by, (r0, r1, c0, c1) = _acdc_heart_box(p, margin=float(np.hypot(*p["breath"].T).max()))
    mx = bx[r0:r1, c0:c1] - _F32(p["breath"][:, 0])
    my = by[r0:r1, c0:c1] - _F32(p["breath"][:, 1])
    lab = np.zeros((h, w, n), np.uint8)
    descent = alpha * p["shorten"] * p["L_epi"]
    for (off, ks), layer in zip(_hard_subslices(n), layers):
        z = ((ks + off) * dz).astype(_F32)
        mxk, myk = mx[..., ks], my[..., ks]
        d, _ = _acdc_heart(p, mxk, myk, alpha, z=z)
        d_at = [
            _ellipsoid_d((mxk - x, myk - y, z - (low + descent - hz)), (r, r, hz)) for x, y, r, hz, low, _ in p["atria"]
        ]
        d_atria = np.minimum(*d_at)
        img = layer.copy()
        crop = img[r0:r1, c0:c1]
        _acdc_paint_heart(crop, d, tone, px)
        _paint(crop, d_atria - 2.0, tone["myo"], px)  # atrial wall
        for d_a, atrium in zip(d_at, p["atria"]):
            _paint(crop, d_a, atrium[-1], px)
        if off == 0.0:
            acc = img
            _acdc_label_heart(lab[r0:r1, c0:c1], d)
            lab[r0:r1, c0:c1][d_atria < 2.0] = 0  # ACDC labels the ventricles only
        else:
            acc[..., ks] += img
    edge = _hard_subslices(n)[-1][1]
    acc[..., edge] *= _F32(1.0 / len(layers))  # the edge slices: the mean over their positions
    img = acc.clip(0.0, None) ** _F32(p["gamma"])  # scanner contrast curve
    return _to_int16(_acdc_acquire(p, img * bias, noise_rng)), lab


def _acdc_acquire(p: dict[str, Any], img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k-space acquisition at a per-subject lower in-plane resolution ``res`` (factors per axis): complex Gaussian
    noise, then a low-pass (truncated, lightly tapered k-space times the Gaussian point spread) and the magnitude.
    The noise is spatially correlated like zero-filled data, with a standard deviation per channel of ``noise`` (x
    blood) divided by sqrt(res_x * res_y): larger voxels, less noise per pixel, as on a scanner."""
    h, w, _ = img.shape
    kx, ky = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]  # cycles per pixel

    def taper(q: np.ndarray) -> np.ndarray:  # 1 up to 80 % of the cut-off, raised cosine to 0 at the cut-off
        return np.where(q < 0.8, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((q - 0.8) / 0.2, 0, 1)))

    tf = taper(2 * np.abs(kx) * p["res"][0]) * taper(2 * np.abs(ky) * p["res"][1])
    tf = (tf * np.exp(-2 * (np.pi * p["psf"]) ** 2 * (kx**2 + ky**2))).astype(_F32)
    sigma = _F32(p["noise"] * p["scale"] / math.sqrt(float(np.mean(tf**2)) * p["res"][0] * p["res"][1]))
    data = img * _F32(p["scale"]) + sigma * rng.standard_normal(img.shape, dtype=_F32)
    data = data + 1j * sigma * rng.standard_normal(img.shape, dtype=_F32)
    return np.abs(sp_fft.ifft2(sp_fft.fft2(data.astype(np.complex64), axes=(0, 1)) * tf[:, :, None], axes=(0, 1)))


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
            _atomic_save(_nifti(image, aff, zooms, descrip), paths[key])
            _atomic_save(_nifti(label, aff, zooms, descrip), paths[f"{key}_gt"])
        if with_4d:
            _atomic_save(_nifti(case["4d"], aff, zooms + (1.0,), descrip), paths["4d"])
        elif os.path.exists(paths["4d"]):  # overwrite=True: a stale cine of the old phantom would not match
            os.remove(paths["4d"])
        cfg = (
            f"ED: 1\nES: {p['es']}\nGroup: {p['group']}\nHeight: {p['height']:.1f}\n"
            f"NbFrame: {p['nb_frame']}\nWeight: {p['weight']:.1f}\n"
        )
        atomic_write_text(paths["cfg"], cfg)
    return out


# ----------------------------------------------------------------------------------------------------------------
# MMWHS
# ----------------------------------------------------------------------------------------------------------------
_AXIS_VECTORS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _mmwhs_params(seed: int, vid: int) -> dict[str, Any]:
    """Draw every per-volume parameter of MMWHS phantom ``vid`` (world frame: RAS+, mm, origin at the LV base)."""
    rng = _rng(seed, vid, _MMWHS_STREAM)
    u = rng.uniform
    p: dict[str, Any] = {}
    # -- storage: shape, spacing, orientation (axis order / direction, sometimes slightly oblique)
    p["orientation"] = MMWHS_ORIENTATIONS[(int(vid) + int(seed)) % len(MMWHS_ORIENTATIONS)]
    p["shape"] = tuple(int(x) for x in rng.integers(96, 129, 3))
    fov = rng.uniform(165, 210, 3)
    p["spacing"] = tuple(float(s) for s in np.round(fov / np.array(p["shape"]), 4))
    direction = np.array([_AXIS_VECTORS[c] for c in p["orientation"]], dtype=float).T
    oblique = _rotation(*np.deg2rad(rng.uniform(-8, 8, 3))) if u() < 0.5 else np.eye(3)
    lin = oblique @ direction @ np.diag(p["spacing"])
    centre = np.array([u(-25, -5), u(0, 20), u(-20, 0)])  # FOV centre near the heart's centre
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = centre - lin @ ((np.array(p["shape"]) - 1) / 2.0)
    p["affine"] = aff
    # -- heart
    p["e1"] = _unit(np.array([-0.55, 0.5, -0.6]) + rng.normal(0, 0.1, 3))  # LV long axis, base -> apex
    rv_dir = np.array([0.75, 0.55, 0.25]) + rng.normal(0, 0.1, 3)
    p["u_rv"] = _unit(rv_dir - rv_dir.dot(p["e1"]) * p["e1"])
    p["w_rv"] = np.cross(p["e1"], p["u_rv"])
    p["a"], p["t"], p["L"] = u(20, 28), u(7, 11), u(62, 82)
    p["rv"] = (u(0.55, 0.75), u(0.7, 0.9), u(1.0, 1.2), u(0.4, 0.55))  # along e1, u_rv, w (x LV size), centre
    jit = lambda s: rng.normal(0, s, 3)  # noqa: E731
    p["la"] = (np.array([-5.0, -30.0, 12.0]) + jit(3), np.array([28.0, 18.0, 22.0]) * u(0.85, 1.15, 3))
    p["ra"] = (np.array([40.0, -8.0, 2.0]) + jit(3), np.array([25.0, 22.0, 30.0]) * u(0.85, 1.15, 3))
    a0 = np.array([10.0, 3.0, 4.0]) + jit(2)
    p["aa"] = (np.cumsum([a0, [6, 3, 25], [0, -3, 30], [-4, -10, 25]] + jit(3) * 0, axis=0), u(11, 15))
    q0 = np.array([-8.0, 28.0, 8.0]) + jit(3)
    q1 = q0 + [-8, -4, 24] + jit(3)
    q2 = q1 + [-5, -20, 10] + jit(3)
    p["pa"] = (q0, q1, q2, q2 + [-38, -15, -2] + jit(4), q2 + [48, -18, -5] + jit(4), u(11, 14), u(7, 10))
    p["x_mid"] = u(-5, 15)
    p["body"] = (u(150, 185), u(105, 130), u(8, 18))
    p["lungs"] = [
        (np.array([p["x_mid"] - u(85, 105), u(-45, -20), u(0, 30)]), np.array([u(55, 70), u(75, 95), 130.0])),
        (np.array([p["x_mid"] + u(80, 100), u(-45, -20), u(0, 30)]), np.array([u(50, 65), u(70, 90), 130.0])),
    ]
    p["liver"] = (np.array([p["x_mid"] + u(30, 60), u(-20, 0), u(-125, -100)]), np.array([110.0, 85.0, 60.0]))
    p["fat_t"] = u(2, 6)
    # -- contrast (relative to LV blood) and MR effects
    p["I"] = dict(
        lv=1.0,
        rv=u(0.85, 1.02),
        la=u(0.8, 1.0),
        ra=u(0.8, 1.0),
        aa=u(0.85, 1.05),
        pa=u(0.8, 1.0),
        vessel=u(0.7, 0.95),
        myo=u(0.18, 0.4),
        tissue=u(0.22, 0.45),
        fat=u(0.55, 0.95),
        lung=u(0.02, 0.09),
        liver=u(0.25, 0.5),
        spine=u(0.25, 0.45),
    )
    p["scale"], p["noise"], p["psf"], p["bias"] = u(300, 1500), u(0.02, 0.06), u(0.4, 0.8), u(0.15, 0.4)
    p["stray"] = (int(rng.integers(3, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    return p


def _tube_d(xyz: Sequence[np.ndarray], points: Sequence[np.ndarray], r0: float, r1: float | None = None) -> np.ndarray:
    """Signed distance (mm) to a tube of radius r0 (tapering to r1) along the polyline ``points``."""
    r1 = r0 if r1 is None else r1
    x, y, z = xyz
    d = np.full(x.shape, 1e3, _F32)
    nseg = len(points) - 1
    for k in range(nseg):
        a, b = np.asarray(points[k], float), np.asarray(points[k + 1], float)
        ab = b - a
        t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab.dot(ab))
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
        r = r0 + (r1 - r0) * (k + t) / nseg
        np.minimum(d, dist - r, out=d)
    return d


def _ellipsoid_world(xyz: Sequence[np.ndarray], centre: np.ndarray, radii: Sequence[float], axes=None) -> np.ndarray:
    x, y, z = (c - float(o) for c, o in zip(xyz, centre))
    if axes is None:
        q = (x, y, z)
    else:
        q = tuple(x * ax[0] + y * ax[1] + z * ax[2] for ax in axes)
    return _ellipsoid_d(q, radii)


def _mmwhs_volume(seed: int, vid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render MMWHS phantom ``vid``: int16 image, uint16 label map, affine."""
    p = _mmwhs_params(seed, vid)
    shape, aff = p["shape"], p["affine"]
    tone = p["I"]
    px = float(min(p["spacing"]))
    ii, jj, kk = (np.arange(n, dtype=_F32) for n in shape)
    ii, jj, kk = ii[:, None, None], jj[None, :, None], kk[None, None, :]
    xyz = tuple((aff[r, 0] * ii + aff[r, 1] * jj + aff[r, 2] * kk + aff[r, 3]).astype(_F32) for r in range(3))
    x, y, z = xyz
    img = np.zeros(shape, _F32)
    lab = np.zeros(shape, np.uint16)
    # -- chest: body with subcutaneous fat, lungs, liver, spine, great vessels (unlabelled)
    ba, bb, ft = p["body"]
    xm = p["x_mid"]
    _paint(img, _ellipse_d(x - xm, y + 20, ba, bb) + 0 * z, tone["fat"], px)
    inner = _ellipse_d(x - xm, y + 20, ba - ft, bb - ft) + 0 * z
    _paint(img, inner, tone["tissue"], px)
    for c, r in p["lungs"]:
        _paint(img, np.maximum(_ellipsoid_world(xyz, c, r), inner + 8), tone["lung"], px)
    _paint(img, np.maximum(_ellipsoid_world(xyz, *p["liver"]), inner + 5), tone["liver"], px)
    _paint(img, np.hypot(x - xm, y + 85) - 18 + 0 * z, tone["spine"], px)
    aa_pts, aa_r = p["aa"]
    desc = np.array([xm - 22, -55.0, 0.0])
    _paint(img, _tube_d(xyz, [desc + [0, 0, -200], desc + [0, 0, 60], aa_pts[-1]], 11.0), tone["vessel"], px)
    _paint(img, _tube_d(xyz, [[45, -5, 200], [42, -6, 20]], 9.0), tone["vessel"], px)  # SVC
    _paint(img, _tube_d(xyz, [[40, -15, -200], [38, -12, -10]], 11.0), tone["vessel"], px)  # IVC
    la_c, la_r = p["la"]
    pvs = [la_c + off for off in ([-30, -15, 10], [-30, -15, -10], [25, -20, 10], [25, -20, -10])]
    _paint(img, np.minimum.reduce([_tube_d(xyz, [la_c, v], 6.0) for v in pvs]), tone["vessel"], px)
    # -- heart (painter's order: later structures win, in the image and in the labels)
    e1, urv, wrv = p["e1"], p["u_rv"], p["w_rv"]
    s = x * e1[0] + y * e1[1] + z * e1[2]  # position along the LV long axis (0 at the base plane)
    rho = np.sqrt(np.maximum(x * x + y * y + z * z - s * s, 0.0))
    a, t, L = p["a"], p["t"], p["L"]
    d_endo = np.maximum(_ellipsoid_d((s, rho), (L, a)), -s)
    d_epi = np.maximum(_ellipsoid_d((s, rho), (L + t, a + t)), -s - 2.0)
    fe1, fu, fw, fc = p["rv"]
    c_rv = e1 * L * 0.35 + urv * (a + t) * (fc + 0.3)
    d_rv = _ellipsoid_world(xyz, c_rv, (L * fe1, (a + t) * fu, (a + t) * fw), axes=(e1, urv, wrv))
    q0, q1, q2, lpa, rpa, pa_r, br_r = p["pa"]
    d_rv = np.minimum(d_rv, _tube_d(xyz, [c_rv, q0], 12.0))  # RV outflow tract
    d_pa = np.minimum(_tube_d(xyz, [q0, q1, q2], pa_r), _tube_d(xyz, [q2, lpa], br_r))
    d_pa = np.minimum(d_pa, _tube_d(xyz, [q2, rpa], br_r))
    d_aa = _tube_d(xyz, list(aa_pts), aa_r)
    d_la = _ellipsoid_world(xyz, la_c, la_r)
    d_ra = _ellipsoid_world(xyz, *p["ra"])
    fat_field = _smooth_field(_rng(seed, vid, _MMWHS_STREAM, 1), shape, (6.0, 6.0, 6.0))
    d_fat = np.minimum(d_epi, d_rv - 3.0) - p["fat_t"] * np.clip(1.0 + 0.5 * fat_field, 0.2, None)
    _paint(img, d_fat, tone["fat"], px)
    structures = [
        (d_la, "la", 420),
        (d_ra, "ra", 550),
        (d_pa, "pa", 850),
        (d_aa, "aa", 820),
        (d_rv - 3.0, "myo", None),  # RV free wall: visible, unlabelled
        (d_rv, "rv", 600),
        (d_epi, "myo", 205),
        (d_endo, "lv", 500),
    ]
    for d, key, code in structures:
        _paint(img, d, tone[key], px)
        if code is not None:
            lab[d < 0] = code
    # -- stray label values, as in the real labels (421 next to the left atrium, isolated 1 and 244)
    rng = _rng(seed, vid, _MMWHS_STREAM, 2)
    n421, n1, n244 = p["stray"]
    la_idx = np.flatnonzero(lab == 420)
    if la_idx.size:
        lab.flat[rng.choice(la_idx, size=min(n421, la_idx.size), replace=False)] = 421
    bg_idx = np.flatnonzero(lab == 0)
    picks = rng.choice(bg_idx, size=n1 + n244, replace=False)
    lab.flat[picks[:n1]] = 1
    lab.flat[picks[n1:]] = 244
    # -- MRI: texture, point spread, bias field, Rician noise
    img *= 1.0 + 0.05 * _smooth_field(rng, shape, (1.5, 1.5, 1.5))
    img = ndimage.gaussian_filter(img, p["psf"], truncate=3.0)
    cx, cy, cz = (np.linspace(-1, 1, n, dtype=_F32) for n in shape)
    cx, cy, cz = cx[:, None, None], cy[None, :, None], cz[None, None, :]
    coef = rng.normal(0, 1, 6)
    coef /= np.abs(coef).sum()
    poly = coef[0] * cx + coef[1] * cy + coef[2] * cz + coef[3] * cx * cy + coef[4] * cx * cx + coef[5] * cz * cy
    img *= np.exp(_F32(2.0 * p["bias"]) * poly)
    img = _rician(img * _F32(p["scale"]), p["noise"] * p["scale"], rng)
    return _to_int16(img), lab, aff


def synth_mmwhs(
    out: str, volumes: int = 20, seed: int = 0, first_id: int = 1001, overwrite: bool = False, progress: bool = True
) -> str:
    """Write synthetic 3D whole-heart MRI phantoms in the raw MMWHS layout.

    ``out/mr_train_<id>_image.nii.gz`` (int16) and ``out/mr_train_<id>_label.nii.gz`` (uint16 codes 205, 420, 500,
    550, 600, 820, 850, 0 and a few stray voxels of 421, 1 and 244 that preparation must map to background). The
    volumes differ in shape (96-128 voxels a side), spacing (about 1.3-2.2 mm), storage orientation
    (``MMWHS_ORIENTATIONS``: RAS, LPS, permuted axes, sometimes a few degrees oblique), contrast, bias and noise; the
    anatomy is consistent in world coordinates. Volume ``i`` depends only on ``(seed, i)``.

    Args:
        out: output folder (created if missing).
        volumes: number of volumes.
        seed: non-negative integer seed.
        first_id: id of the first volume (the real training ids are 1001-1020).
        overwrite: replace existing files; without it an existing target file raises ``FileExistsError``.
        progress: show a tqdm progress bar.

    Returns:
        ``out``.

    Example:
        >>> root = synth_mmwhs("/tmp/mmwhs_phantoms", volumes=2, progress=False)  # doctest: +SKIP
        >>> sorted(os.listdir(root))[:2]  # doctest: +SKIP
        ['mr_train_1001_image.nii.gz', 'mr_train_1001_label.nii.gz']
    """
    seed = _check_seed(seed)
    if int(volumes) < 1:
        raise ValueError(f"volumes must be >= 1, got {volumes!r}.")
    if int(first_id) < 0:
        raise ValueError(f"first_id must be >= 0, got {first_id!r}.")
    ids = list(range(int(first_id), int(first_id) + int(volumes)))
    paths = {
        vid: (os.path.join(out, f"mr_train_{vid}_image.nii.gz"), os.path.join(out, f"mr_train_{vid}_label.nii.gz"))
        for vid in ids
    }
    if not overwrite:
        _refuse_existing([q for pair in paths.values() for q in pair])
    os.makedirs(out, exist_ok=True)
    for vid in _progress(ids, "synth_mmwhs", progress):
        image, label, aff = _mmwhs_volume(seed, vid)
        _atomic_save(_nifti(image, aff), paths[vid][0])
        _atomic_save(_nifti(label, aff), paths[vid][1])
    return out


# ----------------------------------------------------------------------------------------------------------------
# preview
# ----------------------------------------------------------------------------------------------------------------
_ACDC_COLOURS = {1: "#e6194b", 2: "#3cb44b", 3: "#4363d8"}
_MMWHS_COLOURS = {
    205: "#3cb44b",
    420: "#f58231",
    500: "#4363d8",
    550: "#ffe119",
    600: "#e6194b",
    820: "#911eb4",
    850: "#42d4f4",
}


def _overlay(ax: Any, image: np.ndarray, label: np.ndarray | None, colours: dict[int, str], extent=None) -> None:
    """Draw ``image`` (rows = vertical axis) with a translucent colour fill and contours of ``label``."""
    from matplotlib.colors import to_rgba

    lo, hi = np.percentile(image, (0.5, 99.5))
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin="lower", interpolation="nearest")
    if label is not None:
        rgba = np.zeros(label.shape + (4,), np.float32)
        for code, colour in colours.items():
            mask = label == code
            if mask.any():
                rgba[mask] = to_rgba(colour, 0.3)
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8, extent=extent)
        ax.imshow(rgba, extent=extent, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def render_preview(
    raw_root: str, out_png: str, dataset: str = "acdc", cases: int = 4, seed: int = 0, crop_mm: float | None = None
) -> str:
    """Draw a grid of phantom (or real raw) cases with their label overlays into a PNG (matplotlib, Agg).

    ACDC: per patient, the basal, mid and apical ED slices and the mid ES slice (the mid ED slice also without
    labels); the title names the ``synth_acdc`` difficulty when the files record one. MMWHS: per volume, reoriented
    to RAS, an axial slice without and with labels and coronal and sagittal slices with labels, all through the LV
    cavity's centre and drawn in mm.

    Args:
        raw_root: a raw data set root: the folder holding ``training/`` (ACDC) or the ``mr_train_*`` files (MMWHS).
        out_png: PNG path to write (folders are created).
        dataset: ``"acdc"`` or ``"mmwhs"``.
        cases: number of cases drawn (one row each).
        seed: picks which cases are drawn (all of them if there are no more than ``cases``).
        crop_mm: ACDC only: show a square of this side (mm) around the heart, the same box on every slice of a
            patient (so slice misalignment shows), instead of the whole field of view.

    Returns:
        ``out_png``.

    Example:
        >>> render_preview(synth_acdc("/tmp/acdc", patients=4), "/tmp/acdc.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dataset = dataset.lower()
    if dataset not in ("acdc", "mmwhs"):
        raise ValueError(f"dataset must be 'acdc' or 'mmwhs', got {dataset!r}.")
    rng = np.random.default_rng(int(seed))
    if dataset == "acdc":
        folder = os.path.join(raw_root, "training")
        names = sorted(n for n in os.listdir(folder) if n.startswith("patient")) if os.path.isdir(folder) else []
    else:
        folder = raw_root
        names = sorted(n[: -len("_image.nii.gz")] for n in os.listdir(folder) if n.endswith("_image.nii.gz"))
    if not names:
        raise FileNotFoundError(f"no {dataset.upper()} cases found under {raw_root!r}.")
    if len(names) > cases:
        names = sorted(rng.choice(names, size=cases, replace=False).tolist())
    ncol = 5 if dataset == "acdc" else 4
    difficulties: set[str] = set()
    fig, axes = plt.subplots(len(names), ncol, figsize=(3.0 * ncol, 3.1 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        if dataset == "acdc":
            cfg = dict(
                line.split(":", 1) for line in open(os.path.join(folder, name, "Info.cfg")).read().splitlines() if line
            )
            ed, es = int(cfg["ED"]), int(cfg["ES"])

            def load(frame: int, gt: bool) -> np.ndarray:
                path = os.path.join(folder, name, f"{name}_frame{frame:02d}{'_gt' if gt else ''}.nii.gz")
                return np.asanyarray(nib.load(path).dataobj)

            img_ed, lab_ed, img_es, lab_es = load(ed, False), load(ed, True), load(es, False), load(es, True)
            shape = img_ed.shape
            header = nib.load(os.path.join(folder, name, f"{name}_frame{ed:02d}.nii.gz")).header
            descrip = bytes(header["descrip"].item()).split(b"\0")[0].decode(errors="replace")
            if descrip.startswith("synth_acdc difficulty="):
                difficulties.add(descrip.split("=", 1)[1])
            if crop_mm is not None:  # a fixed box around the heart (its centre over the whole ED volume)
                ci, cj = np.argwhere(lab_ed > 0)[:, :2].mean(0).round().astype(int)
                half = int(round(crop_mm / 2 / float(header.get_zooms()[0])))
                box = (slice(max(ci - half, 0), ci + half), slice(max(cj - half, 0), cj + half))
                img_ed, lab_ed, img_es, lab_es = (a[box] for a in (img_ed, lab_ed, img_es, lab_es))
            n = img_ed.shape[2]
            panels = [
                (img_ed, lab_ed, 0, "ED basal"),
                (img_ed, None, n // 2, "ED mid"),
                (img_ed, lab_ed, n // 2, "ED mid + labels"),
                (img_ed, lab_ed, n - 1, "ED apical"),
                (img_es, lab_es, n // 2, f"ES (frame {es}) mid"),
            ]
            zooms = nib.load(os.path.join(folder, name, f"{name}_frame{ed:02d}.nii.gz")).header.get_zooms()
            for col, (im, lb, k, title) in enumerate(panels):
                ax = axes[row, col]
                _overlay(ax, im[:, :, k].T, None if lb is None else lb[:, :, k].T, _ACDC_COLOURS)
                ax.set_title(f"{title} (slice {k})", fontsize=8)
            axes[row, 0].set_ylabel(
                f"{name} {cfg['Group'].strip()}\n{shape[0]}x{shape[1]}x{n}, "
                f"{zooms[0]:.2f}x{zooms[1]:.2f}x{zooms[2]:.1f} mm",
                fontsize=8,
            )
        else:
            img = nib.load(os.path.join(folder, f"{name}_image.nii.gz"))
            lab = nib.load(os.path.join(folder, f"{name}_label.nii.gz"))
            codes = "".join(nib.aff2axcodes(img.affine))
            img_c, lab_c = nib.as_closest_canonical(img), nib.as_closest_canonical(lab)
            im, lb = np.asanyarray(img_c.dataobj), np.asanyarray(lab_c.dataobj)
            sp = img_c.header.get_zooms()[:3]
            lb_known = np.where(np.isin(lb, list(_MMWHS_COLOURS)), lb, 0)
            ci, cj, ck = np.round(np.argwhere(lb_known == 500).mean(0)).astype(int)
            ext = lambda a, b: (0, im.shape[a] * sp[a], 0, im.shape[b] * sp[b])  # noqa: E731
            panels = [
                (im[:, :, ck].T, None, ext(0, 1), "axial"),
                (im[:, :, ck].T, lb_known[:, :, ck].T, ext(0, 1), "axial + labels"),
                (im[:, cj, :].T, lb_known[:, cj, :].T, ext(0, 2), "coronal"),
                (im[ci, :, :].T, lb_known[ci, :, :].T, ext(1, 2), "sagittal"),
            ]
            for col, (a2, l2, extent, title) in enumerate(panels):
                ax = axes[row, col]
                _overlay(ax, a2, l2, _MMWHS_COLOURS, extent=extent)
                ax.set_title(title, fontsize=8)
                if title in ("axial", "axial + labels", "coronal"):
                    ax.invert_xaxis()  # radiological convention: the subject's right on the left
            axes[row, 0].set_ylabel(
                f"{name}\nstored {codes} {'x'.join(map(str, img.shape))}\n"
                + "x".join(f"{z:.2f}" for z in img.header.get_zooms()[:3])
                + " mm",
                fontsize=8,
            )
    if dataset == "acdc":
        handles = [Patch(color=c, label=ACDC_CLASS_NAMES[k]) for k, c in _ACDC_COLOURS.items()]
    else:
        handles = [Patch(color=c, label=f"{k} {MMWHS_CODE_NAMES[k]}") for k, c in _MMWHS_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    title = f"{dataset.upper()} phantoms" + (f", difficulty {'/'.join(sorted(difficulties))}" if difficulties else "")
    fig.suptitle(title + (f", {crop_mm:g} mm around the heart" if crop_mm is not None else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
