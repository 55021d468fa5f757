"""Tests of the synthetic ACDC / MMWHS phantoms (ideal_components.data.phantoms)."""

from __future__ import annotations

import os
import re

import nibabel as nib
import numpy as np
import pytest

from ideal_components.data.phantoms import (
    ACDC_GROUPS,
    MMWHS_LABELS,
    MMWHS_STRAY_LABELS,
    render_preview,
    synth_acdc,
    synth_mmwhs,
)


def _cfg(path: str) -> dict[str, str]:
    with open(path) as f:
        return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in f.read().splitlines() if line)}


def _arr(path: str) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _frames(root: str, pid: int) -> tuple[str, int, int]:
    folder = os.path.join(root, "training", f"patient{pid:03d}")
    cfg = _cfg(os.path.join(folder, "Info.cfg"))
    return folder, int(cfg["ED"]), int(cfg["ES"])


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synth_acdc(str(tmp_path_factory.mktemp("acdc")), patients=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def mmwhs_root(tmp_path_factory):
    return synth_mmwhs(str(tmp_path_factory.mktemp("mmwhs")), volumes=3, seed=0, progress=False)


def test_acdc_layout_and_info(acdc_root):
    assert sorted(os.listdir(os.path.join(acdc_root, "training"))) == ["patient001", "patient002", "patient003"]
    groups = set()
    for pid in (1, 2, 3):
        folder, ed, es = _frames(acdc_root, pid)
        cfg = _cfg(os.path.join(folder, "Info.cfg"))
        assert set(cfg) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
        assert ed == 1 and 7 <= es <= 14 and es < int(cfg["NbFrame"])
        assert cfg["Group"] in ACDC_GROUPS
        groups.add(cfg["Group"])
        assert 140 <= float(cfg["Height"]) <= 200 and 35 <= float(cfg["Weight"]) <= 140
        name = f"patient{pid:03d}"
        expected = {f"{name}_frame{f:02d}{s}.nii.gz" for f in (ed, es) for s in ("", "_gt")} | {"Info.cfg"}
        assert set(os.listdir(folder)) == expected
    assert len(groups) == 3


def test_acdc_volumes(acdc_root):
    for pid in (1, 2, 3):
        folder, ed, es = _frames(acdc_root, pid)
        cavity = {}
        for frame in (ed, es):
            img = nib.load(os.path.join(folder, f"patient{pid:03d}_frame{frame:02d}.nii.gz"))
            lab = nib.load(os.path.join(folder, f"patient{pid:03d}_frame{frame:02d}_gt.nii.gz"))
            assert img.shape == lab.shape and img.ndim == 3
            assert np.allclose(img.affine, lab.affine)
            assert lab.get_data_dtype() == np.uint8 and img.get_data_dtype() == np.int16
            h, w, d = img.shape
            assert 180 <= h <= 260 and 180 <= w <= 260 and 6 <= d <= 12
            sx, sy, sz = img.header.get_zooms()
            assert sx == pytest.approx(sy) and 1.2 <= sx <= 1.9 and 5.0 <= sz <= 10.0
            assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), (sx, sy, sz), atol=1e-4)
            off_diag = img.affine[:3, :3] - np.diag(np.diag(img.affine[:3, :3]))
            assert np.abs(off_diag).max() > 0.1  # oblique short axis
            assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
            labels = _arr(lab.get_filename())
            assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
            assert not (labels[..., -1] == 1).any(), "the RV must be absent from the most apical slice"
            image = _arr(img.get_filename())
            assert image.min() >= 0 and image.max() > 200
            background = image[labels == 0]
            assert background.std() > 0
            corner = image[:10, :10, :]
            assert corner.std() > 0, "Rician noise in the air"
            # contrast: blood bright, myocardium dark
            assert image[labels == 3].mean() > 1.5 * image[labels == 2].mean()
            cavity[frame] = (labels == 3).sum()
        assert cavity[es] < cavity[ed]


def test_acdc_deterministic_subset_and_4d(acdc_root, tmp_path):
    alone = synth_acdc(str(tmp_path), patients=1, first_id=3, seed=0, with_4d=True, progress=False)
    f_all, ed, es = _frames(acdc_root, 3)
    f_one, ed1, es1 = _frames(alone, 3)
    assert (ed, es) == (ed1, es1)
    for frame in (ed, es):
        for suffix in ("", "_gt"):
            name = f"patient003_frame{frame:02d}{suffix}.nii.gz"
            a, b = nib.load(os.path.join(f_all, name)), nib.load(os.path.join(f_one, name))
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            assert np.array_equal(a.affine, b.affine)
    cine = nib.load(os.path.join(f_one, "patient003_4d.nii.gz"))
    nb = int(_cfg(os.path.join(f_one, "Info.cfg"))["NbFrame"])
    assert cine.shape[:3] == nib.load(os.path.join(f_one, "patient003_frame01.nii.gz")).shape
    assert cine.shape[3] == nb
    data = np.asanyarray(cine.dataobj)
    assert np.array_equal(data[..., ed - 1], _arr(os.path.join(f_one, "patient003_frame01.nii.gz")))
    assert np.array_equal(data[..., es - 1], _arr(os.path.join(f_one, f"patient003_frame{es:02d}.nii.gz")))


def test_acdc_seed_changes_content(acdc_root, tmp_path):
    other = synth_acdc(str(tmp_path), patients=1, seed=1, progress=False)
    a = _arr(os.path.join(acdc_root, "training", "patient001", "patient001_frame01.nii.gz"))
    b = _arr(os.path.join(other, "training", "patient001", "patient001_frame01.nii.gz"))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_acdc_overwrite(tmp_path):
    root = synth_acdc(str(tmp_path), patients=1, seed=0, progress=False)
    path = os.path.join(root, "training", "patient001", "patient001_frame01.nii.gz")
    before = os.path.getmtime(path)
    with pytest.raises(FileExistsError, match=re.escape(path)):
        synth_acdc(str(tmp_path), patients=1, seed=0, progress=False)
    assert os.path.getmtime(path) == before
    synth_acdc(str(tmp_path), patients=1, seed=2, overwrite=True, progress=False)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp")]
    with pytest.raises(ValueError):
        synth_acdc(str(tmp_path), patients=1, seed=-1)


def test_mmwhs_layout_and_labels(mmwhs_root):
    names = sorted(os.listdir(mmwhs_root))
    assert names == [f"mr_train_{i}_{k}.nii.gz" for i in (1001, 1002, 1003) for k in ("image", "label")]
    allowed = {0, *MMWHS_LABELS, *MMWHS_STRAY_LABELS}
    for vid in (1001, 1002, 1003):
        img = nib.load(os.path.join(mmwhs_root, f"mr_train_{vid}_image.nii.gz"))
        lab = nib.load(os.path.join(mmwhs_root, f"mr_train_{vid}_label.nii.gz"))
        assert img.shape == lab.shape and all(96 <= n <= 128 for n in img.shape)
        assert np.allclose(img.affine, lab.affine)
        assert all(1.0 <= z <= 2.2 for z in img.header.get_zooms())
        values = _arr(lab.get_filename())
        present = set(np.unique(values).tolist())
        assert present <= allowed and set(MMWHS_LABELS) <= present
        stray = np.isin(values, MMWHS_STRAY_LABELS).sum()
        assert 0 < stray < 40
        image = _arr(img.get_filename())
        assert image[values == 0].std() > 0


def _world_centroids(img: nib.Nifti1Image) -> dict[int, np.ndarray]:
    canonical = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    data = np.asanyarray(canonical.dataobj)
    out = {}
    for code in MMWHS_LABELS:
        ijk = np.argwhere(data == code).mean(0)
        out[code] = canonical.affine[:3, :3] @ ijk + canonical.affine[:3, 3]
    return out


def test_mmwhs_orientations_and_world_consistency(mmwhs_root):
    codes, vectors = set(), []
    for vid in (1001, 1002, 1003):
        lab = nib.load(os.path.join(mmwhs_root, f"mr_train_{vid}_label.nii.gz"))
        codes.add(nib.aff2axcodes(lab.affine))
        c = _world_centroids(lab)
        assert c[820][2] > c[500][2] + 15, "aorta superior to the LV cavity"
        assert c[850][2] > c[500][2] + 15, "pulmonary artery superior to the LV cavity"
        assert c[420][1] < c[500][1] - 10, "left atrium posterior to the LV cavity"
        assert c[550][0] > c[500][0] + 15, "right atrium on the subject's right of the LV cavity"
        assert c[600][0] > c[500][0], "RV cavity right of the LV cavity"
        vectors.append(_unit(c[820] - c[500]))
    assert len(codes) == 3, "the three volumes are stored in three different orientations"
    for v in vectors[1:]:
        assert float(v @ vectors[0]) > 0.8


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_mmwhs_determinism_and_overwrite(mmwhs_root, tmp_path):
    root = synth_mmwhs(str(tmp_path), volumes=1, first_id=1002, seed=0, progress=False)
    for kind in ("image", "label"):
        a = nib.load(os.path.join(mmwhs_root, f"mr_train_1002_{kind}.nii.gz"))
        b = nib.load(os.path.join(root, f"mr_train_1002_{kind}.nii.gz"))
        assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        assert np.array_equal(a.affine, b.affine)
    with pytest.raises(FileExistsError, match="mr_train_1002_image.nii.gz"):
        synth_mmwhs(str(tmp_path), volumes=1, first_id=1002, progress=False)


def test_render_preview(acdc_root, mmwhs_root, tmp_path):
    for dataset, root in (("acdc", acdc_root), ("mmwhs", mmwhs_root)):
        out = render_preview(root, str(tmp_path / f"{dataset}.png"), dataset=dataset, cases=2)
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        render_preview(acdc_root, str(tmp_path / "x.png"), dataset="other")
