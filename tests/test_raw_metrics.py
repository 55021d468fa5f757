"""Metrics at the raw resolution through the datalist provenance (ideal_components.evaluation.raw_resolution)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ideal_components.data.acdc import prepare_acdc
from ideal_components.data.io import DataError
from ideal_components.data.mmwhs import prepare_mmwhs
from ideal_components.evaluation.metrics import multiclass_metrics
from ideal_components.evaluation.raw_resolution import map_raw_label, prediction_to_raw, raw_resolution_metrics
from ideal_components.reporting.report import report
from ideal_components.synthetic import synth_acdc, synth_mmwhs


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw_acdc")
    synth_acdc(str(base / "raw"), patients=5, seed=4, progress=False)
    prepare_acdc(str(base / "raw"), str(base / "prepared"), pixdim=3.0, spatial_size=96)
    return base


def _predict_with_prepared_labels(base, split="test", out="eval"):
    """'Predictions' = the prepared reference labels, written where evaluate.json writes predictions."""
    datalist = json.loads((base / "prepared" / "datalist.json").read_text())
    pred_dir = base / out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for item in datalist[split]:
        name = item["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz")
        shutil.copy(base / "prepared" / item["label"], pred_dir / name)
    return datalist


def test_prepared_reference_brought_back_matches_the_raw_label(acdc):
    datalist = _predict_with_prepared_labels(acdc)
    summary = raw_resolution_metrics(acdc / "eval", acdc / "prepared" / "datalist.json")
    n = len(datalist["test"])
    assert summary["num_volumes"] == n and summary["resolution"] == "raw" and summary["skipped"] == []
    # only the 3 mm in-plane resampling separates the two: high Dice, about a voxel of distance
    assert summary["metrics"]["dice"]["mean"] > 0.9
    assert summary["metrics"]["hd95"]["mean"] < 4.0
    rows = (acdc / "eval" / "metrics_per_volume_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * n
    # the spacing used is the raw one (ACDC slices are about 10 mm apart), not the prepared 3 mm grid
    assert all(float(r.split(",")[-3].split("x")[-1]) > 5 for r in rows[1:])


def test_prediction_to_raw_geometry_and_a_wrong_prediction(acdc):
    datalist = json.loads((acdc / "prepared" / "datalist.json").read_text())
    item = datalist["test"][0]
    prepared = np.asarray(nib.load(str(acdc / "prepared" / item["label"])).dataobj)
    raw = nib.load(item["provenance"]["raw_image"])
    labels, affine = prediction_to_raw(prepared, item["provenance"]["raw_image"], datalist["preparation"], 4)
    assert labels.shape == raw.shape and np.allclose(affine, raw.affine)
    raw_label = np.asarray(nib.load(item["provenance"]["raw_label"]).dataobj)
    rows = multiclass_metrics(labels, raw_label, num_classes=4)
    assert min(r["dice"] for r in rows) > 0.8
    # an empty prediction gives Dice 0 everywhere (not a crash, not a silent perfect score)
    empty, _ = prediction_to_raw(np.zeros_like(prepared), item["provenance"]["raw_image"], datalist["preparation"], 4)
    assert not empty.any()
    with pytest.raises(DataError, match="prepared with other settings"):
        prediction_to_raw(prepared[:-2], item["provenance"]["raw_image"], datalist["preparation"], 4)


def test_missing_raw_files_are_skipped_with_a_message(acdc, tmp_path):
    datalist = _predict_with_prepared_labels(acdc, split="training", out="eval_training")
    assert len(datalist["training"]) >= 2
    moved = tmp_path / "prepared"
    shutil.copytree(acdc / "prepared", moved)
    datalist["training"][0]["provenance"]["raw_image"] = str(tmp_path / "gone.nii.gz")
    (moved / "datalist.json").write_text(json.dumps(datalist))
    eval_dir = tmp_path / "eval"
    shutil.copytree(acdc / "eval_training", eval_dir)
    summary = raw_resolution_metrics(eval_dir, moved / "datalist.json", split="training")
    assert summary["num_volumes"] == len(datalist["training"]) - 1
    assert len(summary["skipped"]) == 1 and str(tmp_path / "gone.nii.gz") in summary["skipped"][0]
    # nothing evaluable: nothing written, None returned
    for item in datalist["training"]:
        item["provenance"]["raw_image"] = str(tmp_path / "gone.nii.gz")
    (moved / "datalist.json").write_text(json.dumps(datalist))
    empty_eval = tmp_path / "empty_eval"
    shutil.copytree(acdc / "eval_training", empty_eval)
    assert raw_resolution_metrics(empty_eval, moved / "datalist.json", split="training") is None
    assert not (empty_eval / "metrics_per_volume_raw.csv").exists()


def test_mmwhs_codes_and_canonical_orientation(tmp_path):
    synth_mmwhs(str(tmp_path / "raw"), volumes=3, seed=5, progress=False)
    prepare_mmwhs(str(tmp_path / "raw"), str(tmp_path / "prepared"), pixdim=4.0, spatial_size=64)
    _predict_with_prepared_labels(tmp_path)
    summary = raw_resolution_metrics(tmp_path / "eval", tmp_path / "prepared" / "datalist.json")
    assert summary["metrics"]["dice"]["mean"] > 0.85
    assert summary["num_classes"] == 7
    assert map_raw_label(np.array([0, 205, 850, 421]), "mmwhs").tolist() == [0, 1, 7, 0]
    assert map_raw_label(np.array([0, 205, 850, 421]), {"205": 1, "850": 7}).tolist() == [0, 1, 7, 0]
    with pytest.raises(DataError, match="outside"):
        map_raw_label(np.array([0, 4]), "acdc")


def test_report_shows_the_raw_table(acdc, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(acdc / "eval", eval_dir)
    # the prepared-grid metrics file the bundle writes next to the raw one
    csv = (eval_dir / "metrics_per_volume_raw.csv").read_text()
    (eval_dir / "metrics_per_volume.csv").write_text(csv)
    (eval_dir / "metrics_summary.json").write_text((eval_dir / "metrics_summary_raw.json").read_text())
    result = report(str(eval_dir), datalist=str(acdc / "prepared" / "datalist.json"))
    assert "At the raw resolution" in str(result)
    assert "At the raw resolution" in (eval_dir / "report.md").read_text()
