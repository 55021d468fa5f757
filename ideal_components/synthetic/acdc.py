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
from scipy import fft as sp_fft
from scipy import ndimage

from ideal_components.data.io import atomic_write_nifti
from ideal_components.facts import ACDC_GROUPS
from ideal_components.utils import atomic_write_text

from ._common import (
    _ACDC_STREAM,
    _F32,
    _check_seed,
    _ellipse_d,
    _ellipsoid_d,
    _nifti,
    _paint,
    _progress,
    _refuse_existing,
    _rician,
    _rng,
    _rotation,
    _smooth_field,
    _to_int16,
)

__all__ = ["ACDC_DIFFICULTIES", "acdc_patient_group", "synth_acdc"]

# ACDC group shape ranges (mm; es_r = ES/ED endocardial radius ratio, rv_scale = RV size relative to normal)
_ACDC_SHAPE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": dict(a=(23, 28), t=(7.0, 10.0), es_r=(0.62, 0.72), rv_scale=(0.95, 1.15), length=(72, 90)),
    "DCM": dict(a=(31, 39), t=(5.0, 7.0), es_r=(0.84, 0.92), rv_scale=(0.9, 1.1), length=(85, 105)),
    "HCM": dict(a=(18, 23), t=(13.0, 18.0), es_r=(0.45, 0.60), rv_scale=(0.85, 1.05), length=(70, 88)),
    "MINF": dict(a=(26, 33), t=(7.0, 10.0), es_r=(0.76, 0.86), rv_scale=(0.9, 1.1), length=(80, 98)),
    "RV": dict(a=(22, 27), t=(6.5, 9.0), es_r=(0.65, 0.75), rv_scale=(1.45, 1.8), length=(72, 90)),
}


def acdc_patient_group(patient_id: int) -> str:
    """Pathology group of phantom patient ``patient_id``: the groups cycle DCM, HCM, MINF, NOR, RV (1 -> DCM).

    Cycling (rather than the real data set's blocks of 20) keeps every group present in small phantom sets and in
    every published split.
    """
    return ACDC_GROUPS[(int(patient_id) - 1) % len(ACDC_GROUPS)]


def _acdc_params(seed: int, pid: int) -> dict[str, Any]:
    """Draw every per-subject parameter of ACDC phantom ``pid``.

    One long function on purpose: every draw comes from one random stream in a fixed order, and that order is the
    phantom's identity (a test pins the standard phantoms' bytes). Reading the draws top to bottom shows the order;
    splitting them over helpers would hide it and invite a reordering that silently changes every subject.
    """
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
