"""``render_preview``: a grid of phantom (or real raw) cases with their label overlays, as a PNG.

The pictures in ``docs/images/phantoms_*.png`` (the hard preset's ``phantoms_acdc_hard.png`` with ``crop_mm=130``).
"""

from __future__ import annotations

import os
from typing import Any

import nibabel as nib
import numpy as np

from ideal_components.facts import ACDC_CLASS_NAMES, MMWHS_CODE_NAMES

__all__ = ["render_preview"]

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
            difficulty = _acdc_row(axes[row], folder, name, crop_mm)
            difficulties |= {difficulty} if difficulty else set()
        else:
            _mmwhs_row(axes[row], folder, name)
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


def _acdc_row(axes_row: Any, folder: str, name: str, crop_mm: float | None) -> str | None:
    """Draw one ACDC patient's panels (basal, mid, apical ED slices, mid ES); return its ``synth_acdc`` difficulty
    (``None`` for files that do not record one)."""
    cfg = dict(line.split(":", 1) for line in open(os.path.join(folder, name, "Info.cfg")).read().splitlines() if line)
    ed, es = int(cfg["ED"]), int(cfg["ES"])

    def load(frame: int, gt: bool) -> np.ndarray:
        path = os.path.join(folder, name, f"{name}_frame{frame:02d}{'_gt' if gt else ''}.nii.gz")
        return np.asanyarray(nib.load(path).dataobj)

    img_ed, lab_ed, img_es, lab_es = load(ed, False), load(ed, True), load(es, False), load(es, True)
    shape = img_ed.shape
    header = nib.load(os.path.join(folder, name, f"{name}_frame{ed:02d}.nii.gz")).header
    descrip = bytes(header["descrip"].item()).split(b"\0")[0].decode(errors="replace")
    difficulty = None
    if descrip.startswith("synth_acdc difficulty="):
        difficulty = descrip.split("=", 1)[1]
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
        ax = axes_row[col]
        _overlay(ax, im[:, :, k].T, None if lb is None else lb[:, :, k].T, _ACDC_COLOURS)
        ax.set_title(f"{title} (slice {k})", fontsize=8)
    axes_row[0].set_ylabel(
        f"{name} {cfg['Group'].strip()}\n{shape[0]}x{shape[1]}x{n}, "
        f"{zooms[0]:.2f}x{zooms[1]:.2f}x{zooms[2]:.1f} mm",
        fontsize=8,
    )
    return difficulty


def _mmwhs_row(axes_row: Any, folder: str, name: str) -> None:
    """Draw one MMWHS volume's panels, reoriented to RAS: axial without and with labels, coronal, sagittal."""
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
        ax = axes_row[col]
        _overlay(ax, a2, l2, _MMWHS_COLOURS, extent=extent)
        ax.set_title(title, fontsize=8)
        if title in ("axial", "axial + labels", "coronal"):
            ax.invert_xaxis()  # radiological convention: the subject's right on the left
    axes_row[0].set_ylabel(
        f"{name}\nstored {codes} {'x'.join(map(str, img.shape))}\n"
        + "x".join(f"{z:.2f}" for z in img.header.get_zooms()[:3])
        + " mm",
        fontsize=8,
    )
