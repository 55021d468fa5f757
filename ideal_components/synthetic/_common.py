"""Primitives shared by the phantom generators: seeded sub-streams, anti-aliased shapes, smooth fields, Rician
noise, rotations, NIfTI writing (atomic) and the refusal to overwrite.

Private to :mod:`ideal_components.synthetic`; the names keep their leading underscore because they are not API.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

_F32 = np.float32
_ACDC_STREAM, _MMWHS_STREAM = 1, 2  # the data set's id in every random stream: ACDC and MMWHS never share a draw


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
