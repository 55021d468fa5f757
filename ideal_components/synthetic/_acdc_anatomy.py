"""The standard ACDC phantom subject: its parameters, anatomy (body, heart by pathology group) and one cine frame.

Private to :mod:`ideal_components.synthetic`; :mod:`.acdc` assembles patients and writes them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from ideal_components.facts import ACDC_GROUPS

from ._common import _ACDC_STREAM, _F32, _ellipse_d, _paint, _rician, _rng, _rotation, _smooth_field, _to_int16

__all__ = ["acdc_patient_group"]

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
