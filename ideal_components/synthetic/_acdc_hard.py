"""The ``hard`` ACDC preset: what it adds to a standard subject (wider shapes, an irregular RV, unlabelled
heart-bright neighbours, partial volume, breath-hold misalignment, an appearance shift) and how it renders a frame.

It draws from random sub-streams of its own, so the standard phantoms stay byte-identical. Private to
:mod:`ideal_components.synthetic`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import fft as sp_fft

from ._acdc_anatomy import (
    _ACDC_SHAPE_RANGES,
    _acdc_body_coords,
    _acdc_heart,
    _acdc_heart_box,
    _acdc_label_heart,
    _acdc_paint_heart,
)
from ._common import _ACDC_STREAM, _F32, _ellipse_d, _ellipsoid_d, _paint, _rng, _smooth_field, _to_int16

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
