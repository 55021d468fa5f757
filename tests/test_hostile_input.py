"""Hostile input to inference and evaluation: one clear error per bad file, the other files processed, a failing
exit status, and the input folders left untouched."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import TINY, run_bundle_process, tiny_acdc, tree_digest
from monai.networks.nets import FlexibleUNet

from ideal_components.data.checks import DatalistCheck, InputFilesError


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def _hostile_files(folder, good):
    """Write the bad files of the issue next to copies of ``good``; returns ``{name: expected words}``."""
    img = nib.load(str(good))
    data, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    raw = good.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (folder / "uncompressed_truncated.nii").write_bytes(gzip.decompress(raw)[:600])
    _save(folder / "slice2d.nii.gz", data[..., 0], affine)
    _save(folder / "cine4d.nii.gz", np.stack([data, data], axis=-1), affine)
    _save(folder / "nan.nii.gz", np.full(data.shape, np.nan, dtype=np.float32), affine)
    singular = affine.copy()
    singular[:3, 2] = 0.0  # a zero slice axis: only the sform can hold it (the qform cannot be decomposed)
    header = nib.Nifti1Header()
    header.set_sform(singular, code=2)
    nib.save(nib.Nifti1Image(data, None, header), str(folder / "singular.nii.gz"))
    (folder / "notes.nii.gz").write_text("this is not a NIfTI file\n")
    return {
        "truncated.nii.gz": "truncated or corrupt",
        "uncompressed_truncated.nii": "truncated or corrupt",
        "slice2d.nii.gz": "expected a 3D image",
        "cine4d.nii.gz": "expected a 3D image",
        "nan.nii.gz": "NaN/Inf",
        "singular.nii.gz": "singular",
        "notes.nii.gz": "not a readable NIfTI",
    }


# ---- DatalistCheck, in process -------------------------------------------------------------------------------------


def test_datalist_check_names_each_bad_file_and_keeps_the_good(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).random((64, 64, 8)).astype(np.float32))
    expected = _hostile_files(tmp_path, good)
    items = [{"image": str(good)}] + [{"image": str(tmp_path / n)} for n in expected] + [{"image": str(good)}]
    items.append({"image": str(tmp_path / "missing.nii.gz")})
    check = DatalistCheck(items, label_key=None)
    assert check.valid == [{"image": str(good)}, {"image": str(good)}]
    assert len(check.errors) == len(expected) + 1
    for error, (name, words) in zip(check.errors, list(expected.items()) + [("missing.nii.gz", "missing")]):
        assert error.startswith(str(tmp_path / name)), error
        assert words in error
    with pytest.raises(InputFilesError, match=r"8 of 10 input item\(s\) failed") as info:
        check.raise_if_failed()
    assert all(str(tmp_path / n) in str(info.value) for n in expected)


def test_datalist_check_labels(tmp_path):
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.float32))
    label = _save(tmp_path / "lab.nii.gz", np.zeros((8, 8, 4), np.uint8))
    wrong = _save(tmp_path / "wrong_shape.nii.gz", np.zeros((8, 8, 5), np.uint8))
    check = DatalistCheck([{"image": str(image), "label": str(label)}, {"image": str(image), "label": str(wrong)}])
    assert len(check.valid) == 1
    assert check.errors[0].startswith(str(wrong)) and "does not match image shape" in check.errors[0]
    check = DatalistCheck([{"image": str(image)}], require_label=True)
    assert check.valid == [] and "no 'label' file" in check.errors[0]
    DatalistCheck([{"image": str(image), "label": str(label)}]).raise_if_failed()  # nothing failed: no error


def test_datalist_check_empty():
    check = DatalistCheck([])  # building it does not fail (tools inspect configs without data)...
    with pytest.raises(InputFilesError, match="empty"):
        check.raise_if_failed()  # ... finishing a run with nothing to process does
    DatalistCheck([], empty_ok=True).raise_if_failed()


# ---- the bundles, as subprocesses ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    raw, prepared = tiny_acdc(base)
    root = base / "run"
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)
    net = FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2, upsample="deconv")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return raw, prepared, root


@pytest.mark.slow
def test_inference_processes_good_files_and_fails_on_bad_ones(data, tmp_path):
    raw, _, root = data
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    goods = sorted((raw / "training").glob("patient00[12]/patient00?_frame01.nii.gz"))
    for g in goods:
        shutil.copy(g, inputs / g.name)
    expected = _hostile_files(inputs, goods[0])
    before = tree_digest(inputs)
    out_dir = tmp_path / "segmentations"
    proc = run_bundle_process(
        "ideal_acdc",
        ["inference.json"],
        root,
        *TINY,
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(out_dir),
        "--pixdim",
        "[4,4,-1]",
        "--file_pattern",
        "*.nii*",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"{len(expected)} of {len(expected) + 2} input item(s) failed" in out
    for name, words in expected.items():
        assert f"skipping input: {inputs / name}" in out and words in out
    written = sorted(p.name for p in out_dir.glob("*_seg.nii.gz"))
    assert written == sorted(g.name.replace(".nii.gz", "_seg.nii.gz") for g in goods)
    for g in goods:
        assert nib.load(str(out_dir / g.name.replace(".nii.gz", "_seg.nii.gz"))).shape == nib.load(str(g)).shape
    assert tree_digest(inputs) == before


@pytest.mark.slow
def test_evaluation_processes_good_volumes_and_fails_on_bad_ones(data, tmp_path):
    _, prepared, root = data
    dataset = tmp_path / "dataset"
    shutil.copytree(prepared, dataset)
    datalist = json.loads((dataset / "datalist.json").read_text())
    good = datalist["test"][0]
    img = nib.load(str(dataset / good["image"]))
    _save(dataset / "imagesTr" / "nan_ED.nii.gz", np.full(img.shape, np.nan, np.float32), img.affine)
    _save(dataset / "labelsTr" / "short_ED.nii.gz", np.zeros(img.shape[:2] + (2,), np.uint8), img.affine)
    datalist["test"] += [
        {"image": "imagesTr/nan_ED.nii.gz", "label": good["label"]},
        {"image": good["image"], "label": "labelsTr/short_ED.nii.gz"},
        {"image": "imagesTr/absent_ED.nii.gz", "label": good["label"]},
    ]
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    before = tree_digest(dataset)
    proc = run_bundle_process("ideal_acdc", ["train.json", "evaluate.json"], root, *TINY, "--dataset_dir", str(dataset))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "3 of 4 input item(s) failed" in out
    assert f"{dataset / 'imagesTr' / 'nan_ED.nii.gz'}: image has" in out
    assert f"{dataset / 'labelsTr' / 'short_ED.nii.gz'}: label shape" in out
    assert f"{dataset / 'imagesTr' / 'absent_ED.nii.gz'}: missing image file" in out
    rows = (root / "eval" / "metrics_per_volume.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + the good volume's three structures
    assert tree_digest(dataset) == before
