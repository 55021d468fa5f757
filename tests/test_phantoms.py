"""Tests of the synthetic ACDC / MMWHS phantoms (ideal_components.synthetic)."""

from __future__ import annotations

import hashlib
import os
import re

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from ideal_components.facts import ACDC_GROUPS, MMWHS_CODE_NAMES, MMWHS_STRAY_CODES
from ideal_components.synthetic import ACDC_DIFFICULTIES
from ideal_components.synthetic import acdc as phantoms_acdc
from ideal_components.synthetic import render_preview, synth_acdc, synth_mmwhs


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


# sha256 of the arrays of standard patient003 (seed 0) ED image and label, computed before the hard preset existed
_STANDARD_P003_ED = {
    "": "6c00fc79d3344893c52ea3b0eb763af181cd854616859d3c4079013dad21a977",
    "_gt": "30675eb3f9a0ff87d44b91c8de75173aa7c6876ca3af063f055ca75956dacd5c",
}


def test_acdc_standard_preset_unchanged(acdc_root):
    folder = os.path.join(acdc_root, "training", "patient003")
    for suffix, digest in _STANDARD_P003_ED.items():
        img = nib.load(os.path.join(folder, f"patient003_frame01{suffix}.nii.gz"))
        data = np.ascontiguousarray(np.asanyarray(img.dataobj))
        assert hashlib.sha256(data.tobytes()).hexdigest() == digest, "the standard phantoms changed"
        assert bytes(img.header["descrip"].item()).strip(b"\0") == b""


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory):
    # patient 3: the smallest cine of seed 0 (254 x 182 x 8, 25 frames)
    root = str(tmp_path_factory.mktemp("acdc_hard"))
    return synth_acdc(root, patients=1, first_id=3, seed=0, with_4d=True, progress=False, difficulty="hard")


def test_acdc_hard_layout_volumes_and_4d(hard_root, acdc_root):
    folder, ed, es = _frames(hard_root, 3)
    std_folder, std_ed, std_es = _frames(acdc_root, 3)
    assert (ed, es) == (std_ed, std_es)
    assert _cfg(os.path.join(folder, "Info.cfg")) == _cfg(os.path.join(std_folder, "Info.cfg"))
    assert set(os.listdir(folder)) == set(os.listdir(std_folder)) | {"patient003_4d.nii.gz"}
    for frame in (ed, es):
        for suffix in ("", "_gt"):
            name = f"patient003_frame{frame:02d}{suffix}.nii.gz"
            img, std = nib.load(os.path.join(folder, name)), nib.load(os.path.join(std_folder, name))
            assert img.shape == std.shape and img.get_data_dtype() == std.get_data_dtype()
            assert np.array_equal(img.affine, std.affine) and img.header.get_zooms() == std.header.get_zooms()
            assert bytes(img.header["descrip"].item()).strip(b"\0") == b"synth_acdc difficulty=hard"
        labels = _arr(os.path.join(folder, f"patient003_frame{frame:02d}_gt.nii.gz"))
        image = _arr(os.path.join(folder, f"patient003_frame{frame:02d}.nii.gz"))
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
        assert not (labels[..., -1] == 1).any()
        assert image.min() >= 0 and image.max() > 200
        assert image[labels == 3].mean() > image[labels == 2].mean()
    cine = _arr(os.path.join(folder, "patient003_4d.nii.gz"))
    assert cine.shape == nib.load(os.path.join(folder, "patient003_frame01.nii.gz")).shape + (25,)
    assert np.array_equal(cine[..., ed - 1], _arr(os.path.join(folder, "patient003_frame01.nii.gz")))
    assert np.array_equal(cine[..., es - 1], _arr(os.path.join(folder, f"patient003_frame{es:02d}.nii.gz")))


def test_acdc_hard_deterministic_subset(hard_root, tmp_path):
    more = synth_acdc(str(tmp_path), patients=2, first_id=2, seed=0, progress=False, difficulty="hard")
    folder, ed, es = _frames(hard_root, 3)
    for name in ("Info.cfg",) + tuple(f"patient003_frame{f:02d}{s}.nii.gz" for f in (ed, es) for s in ("", "_gt")):
        with open(os.path.join(folder, name), "rb") as a, open(
            os.path.join(more, "training", "patient003", name), "rb"
        ) as b:
            assert a.read() == b.read(), name


def test_acdc_bad_difficulty(tmp_path):
    assert ACDC_DIFFICULTIES == ("standard", "hard")
    for bad in ("Hard", "medium", None):
        with pytest.raises(ValueError, match="'standard', 'hard'"):
            synth_acdc(str(tmp_path), patients=1, progress=False, difficulty=bad)
    assert not os.listdir(tmp_path)


def _lv_misalignment(labels: np.ndarray, px: float) -> float:
    """RMS distance (mm) of the per-slice LV cavity centroids from a straight line through them."""
    ks = [k for k in range(labels.shape[2]) if (labels[..., k] == 3).any()]
    centres = np.array([np.argwhere(labels[..., k] == 3).mean(0) for k in ks]) * px
    design = np.stack([np.ones(len(ks)), np.array(ks, float)], 1)
    residual = centres - design @ np.linalg.lstsq(design, centres, rcond=None)[0]
    return float(np.sqrt((residual**2).sum(1).mean()))


def test_acdc_hard_slices_misaligned(hard_root, acdc_root):
    shifts = {}
    for name, root in (("standard", acdc_root), ("hard", hard_root)):
        folder, _, _ = _frames(root, 3)
        lab = nib.load(os.path.join(folder, "patient003_frame01_gt.nii.gz"))
        shifts[name] = _lv_misalignment(_arr(lab.get_filename()), float(lab.header.get_zooms()[0]))
    assert shifts["standard"] < 0.5 and shifts["hard"] > 2.0, shifts


def _hardness(img: np.ndarray, lab: np.ndarray) -> tuple[float, float]:
    """Blood-myocardium contrast-to-noise ratio (noise from the Rayleigh mean of the darkest corner's air) and the
    myocardium / blood intensity ratio of one ED volume."""
    img = img.astype(float)
    lv, myo = np.median(img[lab == 3]), np.median(img[lab == 2])
    air = min((img[:12, :12], img[-12:, :12], img[:12, -12:], img[-12:, -12:]), key=np.mean)
    return (lv - myo) / (air.mean() / np.sqrt(np.pi / 2)), myo / lv


@pytest.mark.slow
def test_acdc_hard_is_harder():
    """Over patients 1-10: lower contrast-to-noise, more appearance shift between subjects, misaligned slices."""
    out = {}
    for difficulty in ACDC_DIFFICULTIES:
        rows = []
        for pid in range(1, 11):
            case = phantoms_acdc._acdc_patient(0, pid, False, difficulty)
            img, lab = case["ed"]
            rows.append(_hardness(img, lab) + (_lv_misalignment(lab, case["params"]["px"]),))
        out[difficulty] = np.array(rows).T
    (cnr_s, ratio_s, mis_s), (cnr_h, ratio_h, mis_h) = out["standard"], out["hard"]
    assert np.median(cnr_h) < 0.7 * np.median(cnr_s)  # measured: 9.6 vs 17.4
    assert np.log(cnr_h).std() > 2 * np.log(cnr_s).std()  # 0.69 vs 0.22
    assert ratio_h.std() > 1.3 * ratio_s.std()  # 0.117 vs 0.074
    assert np.median(mis_h) > 2.0 > 0.5 > mis_s.max()  # 4.1 mm vs 0.08 mm


def test_mmwhs_layout_and_labels(mmwhs_root):
    names = sorted(os.listdir(mmwhs_root))
    assert names == [f"mr_train_{i}_{k}.nii.gz" for i in (1001, 1002, 1003) for k in ("image", "label")]
    allowed = {0, *MMWHS_CODE_NAMES, *MMWHS_STRAY_CODES}
    for vid in (1001, 1002, 1003):
        img = nib.load(os.path.join(mmwhs_root, f"mr_train_{vid}_image.nii.gz"))
        lab = nib.load(os.path.join(mmwhs_root, f"mr_train_{vid}_label.nii.gz"))
        assert img.shape == lab.shape and all(96 <= n <= 128 for n in img.shape)
        assert np.allclose(img.affine, lab.affine)
        assert all(1.0 <= z <= 2.2 for z in img.header.get_zooms())
        values = _arr(lab.get_filename())
        present = set(np.unique(values).tolist())
        assert present <= allowed and set(MMWHS_CODE_NAMES) <= present
        stray = np.isin(values, MMWHS_STRAY_CODES).sum()
        assert 0 < stray < 40
        image = _arr(img.get_filename())
        assert image[values == 0].std() > 0


def _world_centroids(img: nib.Nifti1Image) -> dict[int, np.ndarray]:
    canonical = nib.as_closest_canonical(img)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    data = np.asanyarray(canonical.dataobj)
    out = {}
    for code in MMWHS_CODE_NAMES:
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


def test_render_preview(acdc_root, mmwhs_root, hard_root, tmp_path):
    for dataset, root in (("acdc", acdc_root), ("mmwhs", mmwhs_root)):
        out = render_preview(root, str(tmp_path / f"{dataset}.png"), dataset=dataset, cases=2)
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out = render_preview(hard_root, str(tmp_path / "hard.png"), cases=1, crop_mm=120)
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 100
    with pytest.raises(ValueError):
        render_preview(acdc_root, str(tmp_path / "x.png"), dataset="other")
