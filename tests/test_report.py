"""Tests of ideal_components.reporting: tables from real metric files, overlay PNGs, training curves, errors, the
CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ideal_components.evaluation.metrics import METRIC_NAMES
from ideal_components.evaluation.writer import VolumeMetricsWriter
from ideal_components.reporting.figures import choose_slices, find_predictions, read_scalars
from ideal_components.reporting.report import report
from ideal_components.reporting.tables import load_run

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACING = (1.5, 1.5, 5.0)
CLASSES = ["RV", "MYO", "LV"]


def _phantom(shift: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 32x32x4 image, its reference (3 classes, rings) and a shifted, slightly wrong prediction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    lab2d = np.zeros((32, 32), np.uint8)
    lab2d[r < 9] = 2
    lab2d[r < 6] = 3
    lab2d[(np.abs(yy - 16) < 5) & (xx > 23) & (xx < 30)] = 1
    label = np.repeat(lab2d[..., None], 4, axis=2)
    label[..., 0][label[..., 0] == 1] = 0  # slice 0 without RV
    pred = np.roll(label, shift, axis=0)
    pred[..., 3][pred[..., 3] == 3] = 2  # one slice with a missed LV
    image = (0.3 * (label > 0) + 0.5 * (label == 3) + 0.1 * rng.random(label.shape)).astype(np.float32)
    return image, label, pred


def _affine() -> np.ndarray:
    return np.diag([*SPACING, 1.0])


def make_bundle(root: Path, n_volumes: int = 2, onehot_pred: bool = True, logs: bool = True) -> dict[str, Path]:
    """bundle_root/{data/prepared/datalist.json + images + labels, eval/{metrics CSV/JSON, predictions}, logs/...}."""
    prepared, eval_dir = root / "data" / "prepared", root / "eval"
    (prepared / "imagesTr").mkdir(parents=True)
    (prepared / "labelsTr").mkdir(parents=True)
    (eval_dir / "predictions").mkdir(parents=True)
    writer = VolumeMetricsWriter(str(eval_dir), num_classes=4, class_names=CLASSES)
    items = []
    for i in range(n_volumes):
        vid = f"patient{i + 7:03d}_frame01"
        image, label, pred = _phantom(shift=i + 1, seed=i)
        nib.save(nib.Nifti1Image(image, _affine()), str(prepared / "imagesTr" / f"{vid}.nii.gz"))
        nib.save(nib.Nifti1Image(label, _affine()), str(prepared / "labelsTr" / f"{vid}.nii.gz"))
        items.append({"image": f"imagesTr/{vid}.nii.gz", "label": f"labelsTr/{vid}.nii.gz", "id": vid, "num_slices": 4})
        if onehot_pred and i == 0:  # a one-hot prediction (H, W, D, C), as SaveImaged writes after AsDiscreted
            saved = np.eye(4, dtype=np.uint8)[pred]
        else:
            saved = pred.astype(np.uint8)
        nib.save(nib.Nifti1Image(saved, _affine()), str(eval_dir / "predictions" / f"{vid}_seg.nii.gz"))
        meta = {"filename_or_obj": str(prepared / "labelsTr" / f"{vid}.nii.gz")}
        writer.add_item(
            MetaTensor(torch.as_tensor(pred[None]), affine=torch.as_tensor(_affine()), meta=dict(meta)),
            MetaTensor(torch.as_tensor(label[None]), affine=torch.as_tensor(_affine()), meta=dict(meta)),
        )
    writer.epoch_completed(SimpleNamespace(state=SimpleNamespace(metrics={})))
    datalist = {"training": [], "validation": [], "test": items}
    (prepared / "datalist.json").write_text(json.dumps(datalist))
    if logs:
        from torch.utils.tensorboard import SummaryWriter

        for phase, tags in (("pretrain", ["pretrain_loss"]), ("train", ["train_loss", "val_mean_dice"])):
            with SummaryWriter(log_dir=str(root / "logs" / phase)) as sw:
                for step in range(1, 6):
                    for tag in tags:
                        sw.add_scalar(tag, 1.0 / step if "loss" in tag else 0.5 + 0.05 * step, step)
    return {"root": root, "eval": eval_dir, "datalist": prepared / "datalist.json"}


def csv_means(eval_dir: Path) -> dict[str, float]:
    """Mean over volumes of the per-volume class means, straight from the CSV."""
    per_volume: dict[str, list[dict[str, str]]] = {}
    with open(eval_dir / "metrics_per_volume.csv", newline="") as f:
        for row in csv.DictReader(f):
            per_volume.setdefault(row["volume"], []).append(row)
    return {
        m: float(np.mean([np.mean([float(r[m]) for r in rows]) for rows in per_volume.values()])) for m in METRIC_NAMES
    }


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_report_tables_overlays_curves(bundle, tmp_path):
    out = tmp_path / "out"
    result = report(str(bundle["eval"]), out=str(out), datalist=str(bundle["datalist"]), slices=3)
    md = (out / "report.md").read_text(encoding="utf-8")
    means = csv_means(bundle["eval"])
    for m, label in (("dice", "DSC"), ("hd95", "HD95 (mm)"), ("hd", "HD (mm)"), ("asd", "ASD (mm)"), ("assd", "ASSD")):
        assert f"{means[m]:.3f} ± " in md, (m, md)
        row = next(line for line in md.splitlines() if line.startswith(f"| {label}"))
        assert f"{means[m]:.3f}" in row
        assert result["runs"][0]["metrics"][m]["mean"] == pytest.approx(means[m])
    # paper row order: DSC, HD95, HD, ASD, ASSD
    order = [md.index(f"| {lab}") for lab in ("DSC", "HD95", "HD (", "ASD", "ASSD")]
    assert order == sorted(order)
    for cname in CLASSES:
        assert f"| {cname} |" in md
    assert "medpy" in md
    # overlays: one valid PNG per prediction, named by volume id
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == ["patient007_frame01", "patient008_frame01"]
    assert all(is_png(p) for p in overlays)
    assert len(result["runs"][0]["overlays"]) == 2
    assert is_png(out / "training_curves.png")
    assert result["runs"][0]["training_curves"] == str(out / "training_curves.png")
    # summary.csv: one row per run with the same numbers
    rows = list(csv.DictReader(open(out / "summary.csv", newline="")))
    assert len(rows) == 1 and float(rows[0]["dice_mean"]) == pytest.approx(means["dice"], rel=1e-5)
    assert "RV_dice_mean" in rows[0]
    # the return value prints as the Markdown (what python-fire shows)
    assert str(result).startswith("# IDEAL evaluation report")
    # no temporary files left behind
    assert not [p for p in out.rglob(".*.tmp")]


def test_two_runs_two_columns(tmp_path):
    a = make_bundle(tmp_path / "acdc_a", n_volumes=1, logs=False)
    b = make_bundle(tmp_path / "acdc_b", n_volumes=2, onehot_pred=False, logs=False)
    out = tmp_path / "cmp"
    result = report(str(a["eval"]), str(b["eval"]), out=str(out), names="1.25%,10%", paper="acdc_10")
    md = (out / "report.md").read_text(encoding="utf-8")
    header = md.splitlines()[2]
    assert header.startswith("| Metric | 1.25% | 10% | IDEAL paper (ACDC 10%)")
    dsc_row = next(line for line in md.splitlines() if line.startswith("| DSC"))
    assert f"{csv_means(a['eval'])['dice']:.3f}" in dsc_row and f"{csv_means(b['eval'])['dice']:.3f}" in dsc_row
    assert "0.879" in dsc_row
    assert len(list(csv.DictReader(open(out / "summary.csv", newline="")))) == 2
    # several runs: per-run artefacts in out/<name>/; the datalist is found at <run>/../data/prepared
    assert len(list((out / "1.25%" / "overlays").glob("*.png"))) == 1
    assert len(list((out / "10%" / "overlays").glob("*.png"))) == 2
    assert [r["name"] for r in result["runs"]] == ["1.25%", "10%"]
    assert all(r["training_curves"] is None for r in result["runs"])


def test_default_out_and_default_names(tmp_path):
    a = make_bundle(tmp_path / "x", n_volumes=1, logs=False)
    result = report(str(a["eval"]), slices=2)
    assert (a["eval"] / "report.md").is_file() and (a["eval"] / "summary.csv").is_file()
    assert result["runs"][0]["name"] == "eval"
    png = a["eval"] / "overlays" / "patient007_frame01.png"
    assert is_png(png)
    assert "overlays/patient007_frame01.png" in (a["eval"] / "report.md").read_text(encoding="utf-8")


def test_no_datalist_skips_overlays(tmp_path, caplog):
    a = make_bundle(tmp_path / "b", n_volumes=1, logs=False)
    moved = a["datalist"].with_name("moved.json")  # same folder: its relative paths stay valid
    a["datalist"].rename(moved)
    with caplog.at_level("WARNING"):
        result = report(str(a["eval"]), out=str(tmp_path / "o"))
    assert result["runs"][0]["overlays"] == []
    assert "skipping the overlays" in caplog.text
    assert (tmp_path / "o" / "report.md").is_file()
    # a datalist recorded in metrics_summary.json (relative to the run dir) is used
    summary = json.loads((a["eval"] / "metrics_summary.json").read_text())
    summary["datalist"] = "../data/prepared/moved.json"
    (a["eval"] / "metrics_summary.json").write_text(json.dumps(summary))
    result = report(str(a["eval"]), out=str(tmp_path / "o2"))
    assert len(result["runs"][0]["overlays"]) == 1


def test_missing_and_corrupt_files(tmp_path):
    a = make_bundle(tmp_path / "c", n_volumes=1, logs=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        report(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="at least one"):
        report()
    (a["eval"] / "metrics_summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics_summary\.json.*not valid JSON"):
        report(str(a["eval"]))
    (a["eval"] / "metrics_summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics_summary\.json"):
        report(str(a["eval"]))
    (a["eval"] / "metrics_summary.json").write_text("{}")
    text = (a["eval"] / "metrics_per_volume.csv").read_text()
    (a["eval"] / "metrics_per_volume.csv").write_text(text.replace(",hd95,", ",hd_95,", 1))
    with pytest.raises(ValueError, match=r"metrics_per_volume\.csv.*missing column.*hd95"):
        report(str(a["eval"]))
    lines = text.splitlines()
    cells = lines[1].split(",")
    cells[4] = "abc"  # the dice column
    (a["eval"] / "metrics_per_volume.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics_per_volume\.csv, line 2: column 'dice'"):
        report(str(a["eval"]))
    (a["eval"] / "metrics_per_volume.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics_per_volume\.csv"):
        load_run(a["eval"])
    with pytest.raises(FileNotFoundError, match="logs folder"):
        (a["eval"] / "metrics_per_volume.csv").write_text(text)
        report(str(a["eval"]), logs=str(tmp_path / "nologs"))


def test_corrupt_prediction_named(tmp_path):
    a = make_bundle(tmp_path / "d", n_volumes=1, logs=False)
    (a["eval"] / "predictions" / "patient007_frame01_seg.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="patient007_frame01_seg.nii.gz"):
        report(str(a["eval"]), out=str(tmp_path / "o"))


def test_helpers(bundle):
    preds = find_predictions(bundle["eval"])
    assert sorted(preds) == ["patient007_frame01", "patient008_frame01"]
    lab = np.zeros((4, 4, 10), int)
    lab[1:3, 1:3, 2:8] = 1
    lab[:, :, 4] = 1
    assert choose_slices(lab, 3) == [2, 4, 6]
    assert choose_slices(lab, 20) == [2, 3, 4, 5, 6, 7]
    assert choose_slices(np.zeros((2, 2, 5)), 3) == [0, 2, 4]
    with pytest.raises(ValueError):
        choose_slices(lab, 0)
    scalars = read_scalars(bundle["root"] / "logs")
    assert set(scalars) == {"pretrain", "train"}
    assert set(scalars["train"]) == {"train_loss", "val_mean_dice"}
    steps, values = scalars["pretrain"]["pretrain_loss"]
    assert steps == [1, 2, 3, 4, 5] and values[0] == pytest.approx(1.0)


def test_cli_prints_table(bundle, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ideal_components", "report", str(bundle["eval"])]
    cmd += ["--datalist", str(bundle["datalist"]), "--out", str(out), "--class_names", "RV,MYO,LV"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    means = csv_means(bundle["eval"])
    assert "| Metric | eval |" in proc.stdout
    assert f"| DSC ↑ | {means['dice']:.3f} ± " in proc.stdout
    assert "{" not in proc.stdout.split("## ")[0]  # no dict dump
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_ascii_terminal(monkeypatch):
    import io

    run = {
        "name": "a",
        "num_volumes": 1,
        "units": "voxel",
        "hd95_convention": "medpy",
        "empty": {},
        "metrics": {m: {"mean": 1.0, "std": 0.0} for m in METRIC_NAMES},
        "per_class": {},
    }
    from ideal_components.reporting.tables import ReportResult, markdown_report

    result = ReportResult(markdown=markdown_report([run]), files=[])
    assert "| HD95 (voxels) ↓ | 1.000 ± 0.000 |" in str(result)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert "| HD95 (voxels) (down) | 1.000 +- 0.000 |" in str(result)
