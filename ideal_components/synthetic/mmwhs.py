"""Synthetic MMWHS: 3D whole-heart MRI phantoms in the raw MMWHS layout (``synth_mmwhs``).

``mr_train_1001_image.nii.gz`` / ``mr_train_1001_label.nii.gz`` with the seven MMWHS structures (205 LV myocardium,
420 left atrium, 500 LV cavity, 550 right atrium, 600 RV cavity, 820 ascending aorta, 850 pulmonary artery) plus a
few voxels of stray label values (421, 1, 244) as in the real labels. The anatomy is laid out in world (RAS)
coordinates and sampled through each volume's affine, which differ in axis order and direction (RAS, LPS, permuted
axes, slightly oblique), so the anatomy agrees in world space whatever the storage orientation.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ideal_components.data.io import atomic_write_nifti

from ._common import (
    _F32,
    _MMWHS_STREAM,
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

__all__ = ["MMWHS_ORIENTATIONS", "synth_mmwhs"]

# storage orientations of the MMWHS phantoms (nibabel axis codes); volume ``i`` uses entry (i + seed) % 8
MMWHS_ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "ASL", "LAS", "PIR", "RSP", "SRA", "LPI")


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
    """Render MMWHS phantom ``vid``: int16 image, uint16 label map, affine.

    One long function on purpose: the structures are painted in a fixed order (later ones overwrite earlier ones)
    from one random stream whose draw order is the phantom's identity; the sequence reads top to bottom.
    """
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
        atomic_write_nifti(_nifti(image, aff), paths[vid][0])
        atomic_write_nifti(_nifti(label, aff), paths[vid][1])
    return out
