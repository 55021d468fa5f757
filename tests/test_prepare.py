"""Tests of ACDC / MMWHS preparation: preprocessing chain (and its inverse), validation, datalist, reruns.

Every test writes its own small raw-layout NIfTI fixtures (oblique affines, non-standard spacing) with nibabel.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged

from ideal_components.data.acdc import parse_cine_frames, parse_frames, parse_info_cfg, prepare_acdc, select_cine_frames
from ideal_components.data.io import DataError, atomic_write_json, check_pair, load_nifti
from ideal_components.data.mmwhs import map_mmwhs_labels, prepare_mmwhs
from ideal_components.data.preprocessing import (
    OrientSliceAxisLastd,
    preprocessing_transforms,
    slice_axis_last_axcodes,
    to_metatensor,
)
from ideal_components.data.splits import Split, seeded_split
from ideal_components.facts import MMWHS_CODES

SHAPE = (40, 48, 6)
SIZE = 32  # in-plane output size used by the fixtures' preparations (small: fast)


# ----------------------------------------------------------------------------------------------------------------
# fixtures: raw layouts written with nibabel


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing=(1.6, 1.5, 8.0), angles=(0.5, -0.3, 0.9), origin=(12.0, -30.0, 45.0), perm=(0, 1, 2)):
    aff = np.eye(4)
    aff[:3, :3] = (_rotation(*angles) @ np.diag(spacing))[list(perm)]
    aff[:3, 3] = origin
    return aff


def _phantom(shape=SHAPE, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 image, uint8 ACDC labels) with a ring-shaped heart in slices 1..D-2."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]) - shape[0] / 2, np.arange(shape[1]) - shape[1] / 2, indexing="ij")
    r = np.sqrt(x**2 + (y * 0.9) ** 2)
    lab2d = np.zeros(shape[:2], np.uint8)
    lab2d[(r < 12) & (x > 4)] = 1
    lab2d[r < 9] = 2
    lab2d[r < 6] = 3
    lab = np.zeros(shape, np.uint8)
    lab[..., 1 : shape[2] - 1] = lab2d[..., None]
    img = 100 + 200 * (lab == 1) + 400 * (lab == 3) + 150 * (lab == 2) + rng.normal(0, 20, shape)
    return np.clip(img, 0, None).astype(np.int16), lab


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_acdc_patient(root: Path, pid: int, folder: str = "training", affine=None, ed=1, es=3, seed=None, shape=SHAPE):
    pdir = root / folder / f"patient{pid:03d}"
    pdir.mkdir(parents=True, exist_ok=True)
    aff = _affine() if affine is None else affine
    for n in (ed, es):
        img, lab = _phantom(shape, seed=pid * 10 + n if seed is None else seed)
        _save(img, aff, pdir / f"patient{pid:03d}_frame{n:02d}.nii.gz")
        _save(lab, aff, pdir / f"patient{pid:03d}_frame{n:02d}_gt.nii.gz")
    (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 10\nWeight: 70.0\n")
    return pdir


def write_acdc(root: Path, n: int = 4, **kw) -> Path:
    for pid in range(1, n + 1):
        write_acdc_patient(root, pid, **kw)
    return root


def write_mmwhs(root: Path, n: int = 3, shape=(36, 40, 12), stray: bool = True) -> Path:
    codes = sorted(MMWHS_CODES)
    for i in range(n):
        img, _ = _phantom(shape, seed=i)
        lab = np.zeros(shape, np.int16)
        for k, code in enumerate(codes):  # one 4x4x(3) block per structure
            x0 = 2 + 4 * k
            lab[x0 : x0 + 4, 10:14, 3:6] = code
        if stray:
            lab[30:32, 30:32, 8] = 421  # 4 stray voxels
        aff = _affine(spacing=(1.3, 1.4, 2.0), angles=(0.2, 0.1, -0.2), perm=(2, 0, 1))  # slices not along S
        _save(img, aff, root / f"mr_train_{1001 + i}_image.nii.gz")
        _save(lab, aff, root / f"mr_train_{1001 + i}_label.nii.gz")
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _acdc(root: Path, out: Path, **kw) -> dict:
    kw.setdefault("spatial_size", SIZE)
    path = prepare_acdc(str(root), str(out), **kw)
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------------------
# preprocessing chain


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_orient_slice_axis_last_keeps_slice_axis(perm) -> None:
    aff = _affine(spacing=(1.4, 1.6, 9.0), angles=(0.3, -0.35, 2.5), perm=perm)
    img, lab = _phantom()
    d = OrientSliceAxisLastd(("image", "label"))({"image": to_metatensor(img, aff), "label": to_metatensor(lab, aff)})
    out_aff = d["image"].affine.numpy()
    # slice axis stays last (same direction up to sign), slice count unchanged, only flips / in-plane swaps
    assert d["image"].shape[-1] == SHAPE[2]
    assert np.allclose(np.abs(out_aff[:3, 2]), np.abs(aff[:3, 2]))
    codes = nib.aff2axcodes(out_aff)
    assert "".join(codes) == slice_axis_last_axcodes(aff)
    assert all(c in "RAS" for c in codes)
    assert "RAS".index(codes[0]) < "RAS".index(codes[1])
    # same world positions of the voxels: every output voxel holds the raw value at its world coordinate
    inv = np.linalg.inv(aff) @ out_aff
    ijk = np.rint(inv[:3, :3] @ np.array([3, 5, 2]) + inv[:3, 3]).astype(int)
    assert d["label"][0, 3, 5, 2] == lab[tuple(ijk)] and d["image"][0, 3, 5, 2] == img[tuple(ijk)]


def test_invertd_exact_without_resampling() -> None:
    """No resampling needed (spacing == pixdim, size >= shape): Invertd gives back the labels exactly."""
    aff = _affine(spacing=(1.5, 1.5, 7.0), perm=(1, 0, 2))
    img, lab = _phantom()
    chain = preprocessing_transforms(pixdim=1.5, spatial_size=(64, 64))
    d = chain({"image": to_metatensor(img, aff), "label": to_metatensor(lab, aff)})
    assert d["image"].shape == (1, 64, 64, SHAPE[2])
    d["pred"] = d["label"].clone()
    back = Invertd("pred", transform=chain, orig_keys="label", nearest_interp=True)(d)["pred"]
    assert tuple(back.shape[1:]) == SHAPE
    assert np.allclose(back.affine.numpy(), aff, atol=1e-6)
    assert np.array_equal(back[0].numpy(), lab)


@pytest.mark.parametrize("slice_axis", ["last", "canonical"])
def test_invertd_close_with_resampling(slice_axis: str) -> None:
    aff = _affine(spacing=(1.9, 1.7, 8.0), angles=(0.2, 0.4, -2.0), perm=(2, 0, 1))
    img, lab = _phantom()
    chain = preprocessing_transforms(pixdim=1.367, spatial_size=96, slice_axis=slice_axis)
    d = chain({"image": to_metatensor(img, aff), "label": to_metatensor(lab, aff)})
    pix = d["label"].pixdim.numpy()
    if slice_axis == "last":
        assert np.allclose(pix, [1.367, 1.367, 8.0], atol=1e-4)
    d["pred"] = d["label"].clone()
    back = Invertd("pred", transform=chain, orig_keys="label", nearest_interp=True)(d)["pred"]
    assert tuple(back.shape[1:]) == SHAPE and np.allclose(back.affine.numpy(), aff, atol=1e-5)
    assert set(np.unique(back.numpy())) <= {0, 1, 2, 3}
    assert (back[0].numpy() == lab).mean() > 0.97


def test_chain_matches_loadimaged_and_intensity_range(tmp_path: Path) -> None:
    """The chain on LoadImaged(NibabelReader)+EnsureChannelFirstd equals the chain on to_metatensor()."""
    aff = _affine()
    img, lab = _phantom()
    _save(img, aff, tmp_path / "img.nii.gz")
    _save(lab, aff, tmp_path / "lab.nii.gz")
    aff = nib.load(str(tmp_path / "img.nii.gz")).affine  # as stored (float32 in the header)
    chain = preprocessing_transforms(pixdim=1.2, spatial_size=48)
    loader = Compose([LoadImaged(("image", "label"), reader="NibabelReader"), EnsureChannelFirstd(("image", "label"))])
    a = chain(loader({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}))
    b = chain({"image": to_metatensor(img, aff), "label": to_metatensor(lab, aff)})
    assert torch.allclose(a["image"].as_tensor(), b["image"].as_tensor(), atol=1e-5)
    assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
    assert np.allclose(a["image"].affine.numpy(), b["image"].affine.numpy())
    # 1st / 99th percentile of the resampled volume map to 0 / 1 (no clipping, so a few voxels lie outside)
    image_chain = preprocessing_transforms(keys="image", pixdim=1.2, spatial_size=48)
    unpadded = Compose(image_chain.transforms[:3])({"image": to_metatensor(img, aff)})
    q = np.percentile(unpadded["image"].numpy(), [1, 99])
    assert np.allclose(q, [0, 1], atol=1e-4)


def test_preprocessing_arguments() -> None:
    with pytest.raises(ValueError, match="slice_axis"):
        preprocessing_transforms(slice_axis="first")
    with pytest.raises(ValueError, match="image_key"):
        preprocessing_transforms(keys=("label",))
    with pytest.raises(ValueError, match="percentiles"):
        preprocessing_transforms(percentiles=(99, 1))


# ----------------------------------------------------------------------------------------------------------------
# io


def test_io_errors_name_the_file(tmp_path: Path) -> None:
    img, lab = _phantom()
    good = tmp_path / "good.nii.gz"
    _save(img, _affine(), good)
    assert load_nifti(good).shape == SHAPE
    with pytest.raises(DataError, match="missing image"):
        load_nifti(tmp_path / "nope.nii.gz")
    p = tmp_path / "singleton.nii.gz"
    _save(img[..., None], _affine(), p)
    assert load_nifti(p).shape == SHAPE
    p = tmp_path / "singular.nii.gz"
    aff = _affine()
    aff[:3, 2] = 0
    singular = nib.Nifti1Image(img, None)
    singular.set_sform(aff, code=1)
    nib.save(singular, str(p))
    with pytest.raises(DataError, match="singular") as e:
        load_nifti(p)
    assert str(p) in str(e.value)
    a, b = load_nifti(good), load_nifti(good)
    check_pair(a, b, ("a", "b"))
    shifted = nib.Nifti1Image(np.asanyarray(b.dataobj), b.affine + np.diag([0, 0, 0.1, 0]))
    with pytest.raises(DataError, match="affine"):
        check_pair(a, shifted, ("a.nii.gz", "b.nii.gz"))
    tiny = nib.Nifti1Image(np.asanyarray(b.dataobj), b.affine + 1e-5)
    check_pair(a, tiny, ("a", "b"))
    atomic_write_json({"x": 1}, tmp_path / "sub" / "x.json")
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------------------------------------------
# ACDC preparation


def test_prepare_acdc_round_trip(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=5)
    before = _hashes(root)
    dl = _acdc(root, tmp_path / "out", frames="ED,ES", pixdim=1.367)
    assert _hashes(root) == before  # the raw folder is never written

    ids = [f"patient{i:03d}" for i in range(1, 6)]
    split = seeded_split(ids, "acdc", seed=0)
    for name in ("training", "validation", "test"):
        assert sorted({it["patient"] for it in dl[name]}) == getattr(split, name)
        for it in dl[name]:  # all frames of a patient in one split
            assert {x["frame"] for x in dl[name] if x["patient"] == it["patient"]} == {"ED", "ES"}
    assert dl["fractions"] == ["1.25", "2.5", "10", "100"]
    for f in dl["fractions"]:
        lab, unl = dl[f"labeled_{f}"], dl[f"unlabeled_{f}"]
        assert lab and sorted(it["id"] for it in lab + unl) == sorted(it["id"] for it in dl["training"])
        assert not {it["patient"] for it in lab} & {it["patient"] for it in unl}
    prep = dl["preparation"]
    assert prep["dataset"] == "acdc" and prep["frames"] == ["ED", "ES"] and prep["split_source"] == "seeded"
    assert prep["pixdim"] == [1.367, 1.367] and prep["spatial_size"] == [SIZE, SIZE] and dl["skipped"] == []

    raw_aff = _affine()
    for key in [k for k, v in dl.items() if isinstance(v, list) and v and isinstance(v[0], dict)]:
        items = load_decathlon_datalist(str(tmp_path / "out" / "datalist.json"), data_list_key=key)
        assert all(os.path.isfile(it["image"]) and os.path.isfile(it["label"]) for it in items)
    for it in dl["training"] + dl["validation"] + dl["test"]:
        image = nib.load(str(tmp_path / "out" / it["image"]))
        label = nib.load(str(tmp_path / "out" / it["label"]))
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.shape == (SIZE, SIZE, SHAPE[2]) == label.shape and it["num_slices"] == SHAPE[2]
        assert np.allclose(image.header.get_zooms(), (1.367, 1.367, 8.0), atol=1e-4)
        assert np.allclose(image.affine, label.affine)
        assert "".join(nib.aff2axcodes(image.affine)) == slice_axis_last_axcodes(raw_aff)
        assert np.allclose(np.abs(image.affine[:3, 2]), np.abs(raw_aff[:3, 2]), atol=1e-4)
        x = image.get_fdata()
        assert -0.2 < x.min() and x.max() < 1.5 and np.isfinite(x).all()
        y = np.asanyarray(label.dataobj)
        assert set(np.unique(y)) == {0, 1, 2, 3}
        # class volumes (mm^3) preserved by the nearest resampling within 10 %
        raw_lab = _phantom(seed=int(it["patient"][-3:]) * 10 + (1 if it["frame"] == "ED" else 3))[1]
        for c in (1, 2, 3):
            v_out, v_raw = (y == c).sum() * 1.367**2, (raw_lab == c).sum() * 1.6 * 1.5
            assert abs(v_out - v_raw) / v_raw < 0.1
        prov = it["provenance"]
        assert prov["raw_shape"] == list(SHAPE) and np.allclose(prov["raw_spacing"], (1.6, 1.5, 8.0))
        assert np.allclose(prov["raw_affine"], raw_aff) and Path(prov["raw_image"]).is_file()
        assert prov["raw_label"].endswith("_gt.nii.gz") and prov["group"] == "NOR"

    # determinism: a second preparation elsewhere gives the same datalist and volumes
    dl2 = _acdc(root, tmp_path / "out2", frames=("ED", "ES"), pixdim=1.367)
    assert dl2 == dl
    first = dl["training"][0]["image"]
    assert np.array_equal(
        nib.load(str(tmp_path / "out" / first)).get_fdata(), nib.load(str(tmp_path / "out2" / first)).get_fdata()
    )


def test_prepare_acdc_phantoms(tmp_path: Path) -> None:
    phantoms = pytest.importorskip("ideal_components.synthetic")
    root = phantoms.synth_acdc(str(tmp_path / "raw"), patients=3, seed=0, progress=False)
    dl = _acdc(Path(root), tmp_path / "out", frames="ED")
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 3 and all(it["frame"] == "ED" for it in items)
    for it in items:
        lab = np.asanyarray(nib.load(str(tmp_path / "out" / it["label"])).dataobj)
        assert lab.shape[:2] == (SIZE, SIZE) and set(np.unique(lab)) <= {0, 1, 2, 3}


def test_testing_folder_and_frames_parsing(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    write_acdc_patient(root, 101, folder="testing")
    dl = _acdc(root, tmp_path / "out", frames="es")
    assert sorted(it["patient"] for k in ("training", "validation", "test") for it in dl[k]) == [
        "patient001",
        "patient002",
        "patient003",
        "patient101",
    ]
    assert all(it["id"].endswith("_ES") for it in dl["training"])
    assert parse_frames(("ES", "ED")) == ("ED", "ES")
    with pytest.raises(ValueError, match="frames"):
        parse_frames("EDS")


def test_published_split_used_for_the_real_patient_set(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for pid in range(1, 101):
        write_acdc_patient(root, pid, affine=_affine(spacing=(1.5, 1.5, 10.0)), shape=(8, 8, 2), seed=0)
    dl = _acdc(root, tmp_path / "out", spatial_size=8, pixdim=1.5)
    assert dl["preparation"]["split_source"] == "published"
    assert [it["patient"] for it in dl["labeled_1.25"]] == ["patient002"]
    assert [it["patient"] for it in dl["validation"]] == ["patient031", "patient071"]
    assert len(dl["training"]) == 78 and len(dl["test"]) == 20 and len(dl["unlabeled_100"]) == 0


def test_rerun_skips_and_overwrite(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    out = tmp_path / "out"
    dl = _acdc(root, out)
    target = out / dl["training"][0]["image"]
    mtime = target.stat().st_mtime_ns
    os.utime(target, ns=(mtime - 10**9, mtime - 10**9))
    old = target.stat().st_mtime_ns
    assert _acdc(root, out) == dl
    assert target.stat().st_mtime_ns == old  # skipped
    assert _acdc(root, out, overwrite="true") == dl  # fire passes strings
    assert target.stat().st_mtime_ns != old  # rewritten
    with pytest.raises(DataError, match="different settings"):
        _acdc(root, out, pixdim=2.0)
    assert not list(out.rglob("*.tmp*"))  # no temporary file left


def test_refuses_out_inside_root(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    before = _hashes(root)
    for out in (root / "prepared", root):
        with pytest.raises(ValueError, match="must not be inside"):
            prepare_acdc(str(root), str(out))
    assert _hashes(root) == before


def _bad_patient_2(root: Path, problem: str) -> Path:
    """Break patient002 of a 3-patient ACDC fixture; return the file the message must name."""
    pdir = root / "training" / "patient002"
    img_p, gt_p = pdir / "patient002_frame01.nii.gz", pdir / "patient002_frame01_gt.nii.gz"
    aff = _affine()
    img, lab = _phantom()
    if problem == "missing Info.cfg":
        (pdir / "Info.cfg").unlink()
        return pdir / "Info.cfg"
    if problem == "missing gt":
        gt_p.unlink()
        return gt_p
    if problem == "shape mismatch":
        _save(lab[:, :-2], aff, gt_p)
        return gt_p
    if problem == "affine mismatch":
        _save(lab, _affine(origin=(0.0, 0.0, 0.0)), gt_p)
        return gt_p
    if problem == "bad label value":
        lab[0, 0, 0] = 7
        _save(lab, aff, gt_p)
        return gt_p
    if problem == "NaN":
        x = img.astype(np.float32)
        x[3, 3, 3] = np.nan
        _save(x, aff, img_p)
        return img_p
    if problem == "4D image":
        _save(np.stack([img, img], -1), aff, img_p)
        return img_p
    if problem == "truncated":
        data = img_p.read_bytes()
        img_p.write_bytes(data[: len(data) // 2])
        return img_p
    if problem == "not a nifti":
        with gzip.open(img_p, "wb") as f:
            f.write(b"this is not a NIfTI file at all" * 20)
        return img_p
    if problem == "empty folder":
        for p in pdir.iterdir():
            p.unlink()
        return pdir
    if problem == "bad Info.cfg":
        (pdir / "Info.cfg").write_text("ED: one\nES: 3\nGroup: NOR\nNbFrame: 10\n")
        return pdir / "Info.cfg"
    raise AssertionError(problem)


PROBLEMS = {
    "missing Info.cfg": "missing Info.cfg",
    "missing gt": "missing label",
    "shape mismatch": "shape",
    "affine mismatch": "affine",
    "bad label value": "outside",
    "NaN": "NaN",
    "4D image": "4D",
    "truncated": "truncated or corrupt",
    "not a nifti": "NIfTI|corrupt",
    "empty folder": "empty patient folder",
    "bad Info.cfg": "not a number",
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_bad_input_message_names_file(tmp_path: Path, problem: str) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    bad = _bad_patient_2(root, problem)
    with pytest.raises(DataError, match=PROBLEMS[problem]) as e:
        _acdc(root, tmp_path / "out")
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("problem", ["truncated", "missing Info.cfg"])
def test_skip_bad(tmp_path: Path, problem: str) -> None:
    root = write_acdc(tmp_path / "raw", n=4)
    bad = _bad_patient_2(root, problem)
    ids = [f"patient{i:03d}" for i in range(1, 5)]
    split = seeded_split(ids, "acdc", seed=5)
    assert "patient002" not in split.labeled["1.25"] or len(split.training) > 1
    dl = _acdc(root, tmp_path / "out", skip_bad="True", seed=5)
    assert len(dl["skipped"]) == 1 and dl["skipped"][0]["patient"] == "patient002"
    assert str(bad) in dl["skipped"][0]["error"]
    prepared = [it["patient"] for k in ("training", "validation", "test") for it in dl[k]]
    assert sorted(prepared) == ["patient001", "patient003", "patient004"]


def test_fraction_without_labelled_volume(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    split = seeded_split([f"patient{i:03d}" for i in range(1, 4)], "acdc", seed=0)
    (train,) = split.training  # 3 patients: one each
    gt = root / "training" / train / f"{train}_frame01_gt.nii.gz"
    gt.unlink()
    with pytest.raises(DataError, match="has no labelled volume") as e:
        _acdc(root, tmp_path / "out", skip_bad=True)
    assert str(gt) in str(e.value) and "datalist.json" in str(e.value)
    with pytest.raises(ValueError, match="fraction"):
        _acdc(root, tmp_path / "out2", fractions="0")


def test_empty_root(tmp_path: Path) -> None:
    (tmp_path / "raw" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match="no ACDC patientXXX") as e:
        _acdc(tmp_path / "raw", tmp_path / "out")
    assert str(tmp_path / "raw") in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# MMWHS preparation


def test_map_mmwhs_labels() -> None:
    raw = np.array([0, 205, 420, 500, 550, 600, 820, 850, 421, 1, 205.5])
    out, stray, values = map_mmwhs_labels(raw)
    assert out.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0] and out.dtype == np.uint8
    assert stray == 3 and values == [1.0, 205.5, 421.0]


def test_prepare_mmwhs(tmp_path: Path) -> None:
    root = write_mmwhs(tmp_path / "raw", n=3)
    before = _hashes(root)
    path = prepare_mmwhs(str(root), str(tmp_path / "out"), spatial_size=48)
    assert _hashes(root) == before
    dl = json.loads(Path(path).read_text())
    assert dl["fractions"] == ["10", "20", "40", "100"] and dl["preparation"]["dataset"] == "mmwhs"
    items = dl["training"] + dl["validation"] + dl["test"]
    assert sorted(it["id"] for it in items) == ["mr_train_1001", "mr_train_1002", "mr_train_1003"]
    for it in items:
        assert "frame" not in it and it["provenance"]["stray_voxels"] == 4
        assert it["provenance"]["stray_values"] == [421.0]
        image = nib.load(str(tmp_path / "out" / it["image"]))
        label = np.asanyarray(nib.load(str(tmp_path / "out" / it["label"])).dataobj)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert image.shape[:2] == (48, 48) and it["num_slices"] == image.shape[2]
        assert np.allclose(image.header.get_zooms()[:2], (1.5, 1.5), atol=1e-4)
        assert set(np.unique(label)) == set(range(8))
    with pytest.raises(DataError, match="no MMWHS") as e:
        prepare_mmwhs(str(tmp_path / "out" / "imagesTr"), str(tmp_path / "out3"))
    assert "imagesTr" in str(e.value)


def test_prepare_mmwhs_missing_label(tmp_path: Path) -> None:
    root = write_mmwhs(tmp_path / "raw", n=3, stray=False)
    (root / "mr_train_1002_label.nii.gz").unlink()
    with pytest.raises(DataError, match="missing label") as e:
        prepare_mmwhs(str(root), str(tmp_path / "out"), spatial_size=48)
    assert "mr_train_1002_label.nii.gz" in str(e.value)


def test_cli_fire_arguments(tmp_path: Path, capsys) -> None:
    from ideal_components.cli import main

    root = write_acdc(tmp_path / "raw", n=3)
    args = ["--root", str(root), "--out", str(tmp_path / "out"), "--frames", "ED,ES", "--skip_bad", "false"]
    main(["prepare_acdc", *args, "--fractions", "10,100", "--spatial_size", "32", "--pixdim", "1.5,1.4"])
    dl = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert dl["fractions"] == ["10", "100"] and dl["preparation"]["frames"] == ["ED", "ES"]
    assert dl["preparation"]["pixdim"] == [1.5, 1.4] and len(dl["training"]) == 2
    assert str(tmp_path / "out" / "datalist.json") in capsys.readouterr().out


def test_num_workers_same_result(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "raw", n=3)
    assert _acdc(root, tmp_path / "a", num_workers=2) == _acdc(root, tmp_path / "b", num_workers=0)


# ----------------------------------------------------------------------------------------------------------------
# ACDC cine frames as an unlabelled pre-training list (cine_frames)

NB_FRAMES = 10  # the NbFrame written by write_acdc_patient


def write_cine(root: Path, pid: int, nb: int = NB_FRAMES, shape=None, affine=None) -> Path:
    """``patientXXX_4d.nii.gz`` of a fixture patient: its ED / ES frame files at their frame numbers, other frames
    distinct phantoms (same grid as the frame files unless ``shape`` / ``affine`` say otherwise)."""
    pdir = root / "training" / f"patient{pid:03d}"
    info = parse_info_cfg(pdir / "Info.cfg")
    ref = nib.load(str(pdir / f"patient{pid:03d}_frame{info['ED']:02d}.nii.gz"))
    frames = []
    for n in range(1, nb + 1):
        if n in (info["ED"], info["ES"]):
            frames.append(np.asanyarray(nib.load(str(pdir / f"patient{pid:03d}_frame{n:02d}.nii.gz")).dataobj))
        else:
            frames.append(_phantom(ref.shape, seed=1000 * pid + n)[0])
    data = np.stack(frames, axis=-1)
    if shape is not None:
        data = data[: shape[0], : shape[1], : shape[2]]
    path = pdir / f"patient{pid:03d}_4d.nii.gz"
    _save(data, ref.affine if affine is None else affine, path)
    return path


def write_acdc_cine(root: Path, n: int = 4) -> Path:
    write_acdc(root, n=n)
    for pid in range(1, n + 1):
        write_cine(root, pid)
    return root


def _split4() -> Split:
    return seeded_split([f"patient{i:03d}" for i in range(1, 5)], "acdc", seed=0)


@pytest.fixture(scope="module")
def cine_prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    """4 fixture patients with 4D cines, prepared with ``frames="ED,ES", cine_frames="all"``."""
    base = tmp_path_factory.mktemp("cine")
    root = write_acdc_cine(base / "raw", n=4)
    return root, base / "out", _acdc(root, base / "out", frames="ED,ES", cine_frames="all")


def test_cine_frames_pretraining_list(cine_prepared, tmp_path: Path) -> None:
    root, out, dl = cine_prepared
    split = _split4()
    assert len(split.training) == 2 and split.validation and split.test
    pt = dl["pretraining"]
    # every frame of every training patient, nothing of a validation / test patient
    assert [it["id"] for it in pt] == [f"{p}_f{n:02d}" for p in split.training for n in range(1, NB_FRAMES + 1)]
    assert {it["patient"] for it in pt} == set(split.training)
    held_out = set(split.validation) | set(split.test)
    assert not any(f.name.startswith(tuple(held_out)) for f in (out / "imagesPt").iterdir())
    assert sorted(f.name for f in (out / "imagesPt").iterdir()) == [f"{it['id']}.nii.gz" for it in pt]
    assert dl["preparation"]["cine_frames"] == "all" and dl["skipped"] == []

    prepared = {it["id"]: it for it in dl["training"]}
    for it in pt:
        assert "label" not in it and it["frame"] == int(it["id"][-2:]) and isinstance(it["frame"], int)
        assert it["image"] == f"imagesPt/{it['id']}.nii.gz" and it["num_slices"] == SHAPE[2]
        image = nib.load(str(out / it["image"]))
        ed = nib.load(str(out / prepared[f"{it['patient']}_ED"]["image"]))
        assert image.get_data_dtype() == np.float32 and image.shape == (SIZE, SIZE, SHAPE[2]) == ed.shape
        assert np.allclose(image.affine, ed.affine) and np.allclose(image.header.get_zooms(), ed.header.get_zooms())
        x = image.get_fdata()
        assert np.isfinite(x).all() and -0.2 < x.min() and x.max() < 1.5
        prov = it["provenance"]
        assert prov["raw_image"] == str(root / "training" / it["patient"] / f"{it['patient']}_4d.nii.gz")
        assert prov["raw_frame"] == it["frame"] and prov["raw_shape"] == [*SHAPE, NB_FRAMES]
        assert np.allclose(prov["raw_affine"], _affine()) and np.allclose(prov["raw_spacing"], (1.6, 1.5, 8.0))
        assert (
            prov["group"] == "NOR"
            and prov["num_frames"] == NB_FRAMES
            and (prov["ed_frame"], prov["es_frame"]) == (1, 3)
        )
        record = json.loads((out / "provenance" / f"{it['id']}.json").read_text())
        assert record["item"] == it and record["settings"]["pixdim"] == dl["preparation"]["pixdim"]
    # the ED / ES frames of the cine, prepared as pre-training volumes, equal the prepared ED / ES images
    for p in split.training:
        for phase, n in (("ED", 1), ("ES", 3)):
            a = nib.load(str(out / "imagesPt" / f"{p}_f{n:02d}.nii.gz")).get_fdata()
            b = nib.load(str(out / prepared[f"{p}_{phase}"]["image"])).get_fdata()
            assert np.allclose(a, b, atol=1e-6)
        other = nib.load(str(out / "imagesPt" / f"{p}_f02.nii.gz")).get_fdata()
        assert not np.allclose(other, b, atol=1e-3)

    # without the option: no cine is read, no pretraining key, everything else as with it
    default = _acdc(root, tmp_path / "default", frames="ED,ES")
    assert "pretraining" not in default and "cine_frames" not in default["preparation"]
    assert not (tmp_path / "default" / "imagesPt").exists()
    with_cine = {k: v for k, v in dl.items() if k != "pretraining"}
    with_cine["preparation"] = {k: v for k, v in dl["preparation"].items() if k != "cine_frames"}
    assert with_cine == default and list(with_cine) == list(default)


def test_cine_pretraining_list_consumed_like_training(cine_prepared) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from ideal_components.data.slices import expand_to_slices
    from ideal_components.transforms import ExtractSliced

    _, out, dl = cine_prepared
    # what bundles/*/configs/pretrain.json does with 'training'
    items = load_decathlon_datalist(
        str(out / "datalist.json"), is_segmentation=True, data_list_key="pretraining", base_dir=str(out)
    )
    slices = expand_to_slices(items, labeled=False)
    assert len(slices) == sum(it["num_slices"] for it in dl["pretraining"]) == 2 * NB_FRAMES * SHAPE[2]
    assert all(d["labeled"] == 0 and "label" not in d and os.path.isfile(d["image"]) for d in slices)
    assert [d["slice"] for d in slices[: SHAPE[2]]] == list(range(SHAPE[2]))
    load = Compose([LoadImaged("image", reader="NibabelReader", image_only=True), EnsureChannelFirstd("image")])
    d = ExtractSliced("image")(load(slices[SHAPE[2] + 2]))
    assert tuple(d["image"].shape) == (1, SIZE, SIZE) and d["frame"] == 2 and d["slice"] == 2


def test_cine_frames_option_values(tmp_path: Path) -> None:
    assert select_cine_frames(30, 4) == [1, 8, 16, 23] and select_cine_frames(30, 1) == [1]
    assert (
        select_cine_frames(10, "all") == select_cine_frames(10, 10) == select_cine_frames(10, 25) == list(range(1, 11))
    )
    for off in (None, "none", "None", "", False, 0, "0", "false"):
        assert parse_cine_frames(off) is None
    assert parse_cine_frames("all") == parse_cine_frames(True) == parse_cine_frames(" ALL ") == "all"
    assert parse_cine_frames("5") == parse_cine_frames(5) == 5
    for bad in ("-1", "some", 2.5, -3, "3.5"):
        with pytest.raises(ValueError, match="cine_frames"):
            parse_cine_frames(bad)
    root = write_acdc_cine(tmp_path / "raw", n=4)
    dl = _acdc(root, tmp_path / "out", cine_frames=3)
    assert [it["id"] for it in dl["pretraining"]] == [f"{p}_f{n:02d}" for p in _split4().training for n in (1, 4, 7)]
    assert dl["preparation"]["cine_frames"] == 3
    with pytest.raises(ValueError, match="cine_frames"):
        _acdc(root, tmp_path / "out2", cine_frames="every")


def test_cine_missing_4d_names_file(tmp_path: Path) -> None:
    root = write_acdc_cine(tmp_path / "raw", n=4)
    split = _split4()
    # the 4D files of validation / test patients are never read
    for p in split.validation + split.test:
        (root / "training" / p / f"{p}_4d.nii.gz").unlink()
    dl = _acdc(root, tmp_path / "ok", cine_frames="all")
    assert len(dl["pretraining"]) == 2 * NB_FRAMES
    missing = root / "training" / split.training[1] / f"{split.training[1]}_4d.nii.gz"
    missing.unlink()
    with pytest.raises(DataError, match="missing cine file") as e:
        _acdc(root, tmp_path / "out", cine_frames="all")
    assert str(missing) in str(e.value)
    dl = _acdc(root, tmp_path / "skip", cine_frames="all", skip_bad=True)
    assert dl["skipped"] == [
        {"patient": split.training[1], "id": f"{split.training[1]}_4d", "error": dl["skipped"][0]["error"]}
    ]
    assert str(missing) in dl["skipped"][0]["error"]
    assert {it["patient"] for it in dl["pretraining"]} == {split.training[0]}
    assert len(dl["training"]) == 2  # the patient's ED volume is still prepared
    assert "pretraining" not in _acdc(root, tmp_path / "default")  # without the option no 4D is needed


CINE_PROBLEMS = {
    "shape": ("spatial shape", dict(shape=(SHAPE[0], SHAPE[1] - 2, SHAPE[2]))),
    "affine": ("affine does not match", dict(affine=_affine(origin=(0.0, 0.0, 0.0)))),
    "frames": ("has 7 frames, expected 10", dict(nb=7)),
    "3D": ("expected a 4D", dict(nb=1)),
}


@pytest.mark.parametrize("problem", list(CINE_PROBLEMS))
def test_cine_inconsistent_4d_names_file(tmp_path: Path, problem: str) -> None:
    root = write_acdc(tmp_path / "raw", n=4)
    match, kw = CINE_PROBLEMS[problem]
    patient = _split4().training[0]
    bad = write_cine(root, int(patient[-3:]), **kw)
    if problem == "3D":  # a single-frame "cine" stored as a 3D file
        _save(np.asanyarray(nib.load(str(bad)).dataobj)[..., 0], _affine(), bad)
    write_cine(root, int(_split4().training[1][-3:]))
    with pytest.raises(DataError, match=match) as e:
        _acdc(root, tmp_path / "out", cine_frames="all")
    assert str(bad) in str(e.value)


def test_cine_rerun_skips_and_resumes(tmp_path: Path) -> None:
    root = write_acdc_cine(tmp_path / "raw", n=4)
    out = tmp_path / "out"
    first = _acdc(root, out, cine_frames=2)  # frames 1 and 6
    f01 = out / "imagesPt" / f"{first['pretraining'][0]['id']}.nii.gz"
    old = f01.stat().st_mtime_ns - 10**9
    os.utime(f01, ns=(old, old))
    dl = _acdc(root, out, cine_frames="all")
    assert f01.stat().st_mtime_ns == old  # already prepared: skipped
    assert len(dl["pretraining"]) == 2 * NB_FRAMES
    # a frame without its record (written last) is prepared again; with every frame done the 4D is not read
    record = out / "provenance" / f"{dl['pretraining'][1]['id']}.json"
    record.unlink()
    cine = root / "training" / dl["pretraining"][1]["patient"] / f"{dl['pretraining'][1]['patient']}_4d.nii.gz"
    assert _acdc(root, out, cine_frames="all") == dl and record.is_file()
    cine.unlink()
    assert _acdc(root, out, cine_frames="all") == dl
    assert _acdc(root, out, cine_frames="all", overwrite=False) == dl
    with pytest.raises(DataError, match="missing cine file"):
        _acdc(root, out, cine_frames="all", overwrite=True)
    with pytest.raises(DataError, match="different settings"):
        _acdc(root, tmp_path / "out", pixdim=2.0, cine_frames="all")
    assert not list(out.rglob("*.tmp*"))


def test_cine_frames_cli(tmp_path: Path) -> None:
    from ideal_components.cli import main

    root = write_acdc_cine(tmp_path / "raw", n=4)
    main(
        [
            "prepare_acdc",
            str(root),
            str(tmp_path / "out"),
            "--pixdim",
            "2.0",
            "--spatial_size",
            "32",
            "--cine_frames",
            "all",
        ]
    )
    dl = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert len(dl["pretraining"]) == 2 * NB_FRAMES and dl["preparation"]["cine_frames"] == "all"
    main(["prepare_acdc", str(root), str(tmp_path / "out2"), "--spatial_size", "32", "--cine_frames", "4"])
    dl = json.loads((tmp_path / "out2" / "datalist.json").read_text())
    assert sorted({it["frame"] for it in dl["pretraining"]}) == [1, 3, 6, 8]


@pytest.mark.slow
def test_cine_frames_phantoms(tmp_path: Path) -> None:
    phantoms = pytest.importorskip("ideal_components.synthetic")
    root = Path(phantoms.synth_acdc(str(tmp_path / "raw"), patients=3, seed=0, with_4d=True, progress=False))
    out = tmp_path / "out"
    dl = _acdc(root, out, frames="ED,ES", pixdim=4.0, spatial_size=64, cine_frames="all")
    split = seeded_split([f"patient{i:03d}" for i in range(1, 4)], "acdc", seed=0)
    (patient,) = split.training
    info = parse_info_cfg(root / "training" / patient / "Info.cfg")
    assert [it["id"] for it in dl["pretraining"]] == [f"{patient}_f{n:02d}" for n in range(1, info["NbFrame"] + 1)]
    assert {it["patient"] for it in dl["pretraining"]} == {patient}
    prepared = {it["id"]: it for it in dl["training"]}
    for phase in ("ED", "ES"):
        a = nib.load(str(out / "imagesPt" / f"{patient}_f{info[phase]:02d}.nii.gz"))
        b = nib.load(str(out / prepared[f"{patient}_{phase}"]["image"]))
        assert a.get_data_dtype() == np.float32 and a.shape == b.shape and a.shape[:2] == (64, 64)
        assert np.allclose(a.get_fdata(), b.get_fdata(), atol=1e-6) and np.allclose(a.affine, b.affine)


def test_cine_ed_frame_differing_from_ed_file_warns(tmp_path: Path, caplog) -> None:
    root = write_acdc(tmp_path / "raw", n=4)
    patient = _split4().training[0]
    path = write_cine(root, int(patient[-3:]))
    data = np.asanyarray(nib.load(str(path)).dataobj).copy()
    data[..., 0] = data[..., 1]  # frame 1 (ED in Info.cfg) is another frame's volume
    _save(data, _affine(), path)
    write_cine(root, int(_split4().training[1][-3:]))
    with caplog.at_level("WARNING", logger="ideal_components.data.prepare"):
        dl = _acdc(root, tmp_path / "out", cine_frames="all")
    assert len(dl["pretraining"]) == 2 * NB_FRAMES
    assert any(str(path) in r.getMessage() and "frame 1 differs" in r.getMessage() for r in caplog.records)
