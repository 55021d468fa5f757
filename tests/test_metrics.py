"""Tests of ideal_components.evaluation (metrics, writer): equality with medpy / MONAI, the empty-mask policy,
aggregation, the handler."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from medpy.metric import binary as mb
from scipy.ndimage import gaussian_filter

from ideal_components.evaluation.metrics import (
    METRIC_NAMES,
    aggregate,
    binary_metrics,
    multiclass_metrics,
    worst_case_distance,
)
from ideal_components.evaluation.writer import VolumeMetricsWriter

TOL = 1e-4


def medpy_metrics(pred, ref, spacing=None, connectivity=1) -> dict:
    return {
        "dice": mb.dc(pred, ref),
        "hd": mb.hd(pred, ref, spacing, connectivity),
        "hd95": mb.hd95(pred, ref, spacing, connectivity),
        "asd": mb.asd(pred, ref, spacing, connectivity),
        "assd": mb.assd(pred, ref, spacing, connectivity),
    }


def assert_matches_medpy(pred, ref, spacing=None, connectivity=1):
    ours = binary_metrics(pred, ref, spacing=spacing, connectivity=connectivity)
    theirs = medpy_metrics(pred, ref, spacing, connectivity)
    for k in METRIC_NAMES:
        assert ours[k] == pytest.approx(theirs[k], abs=TOL), (k, ours[k], theirs[k])
    assert ours["empty"] is None
    return ours


def blobs(shape, seed, sigma=2.0, threshold=0.1):
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.standard_normal(shape), sigma) > threshold


def ellipsoid(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def shell(shape, centre, outer, thickness):
    inner = [max(r - thickness, 0.5) for r in outer]
    return ellipsoid(shape, centre, outer) & ~ellipsoid(shape, centre, inner)


# ------------------------------------------------------------------------------------------------------------------
# equality with medpy
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,spacing",
    [
        ((48, 40, 10), (1.4, 1.4, 8.0)),
        ((32, 32, 32), None),
        ((24, 30, 20), (0.7, 1.1, 2.5)),
        ((64, 48), (1.25, 0.8)),
        ((50, 50), None),
        ((30, 30, 12), 1.5),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_masks_match_medpy(shape, spacing, seed):
    pred, ref = blobs(shape, seed), blobs(shape, seed + 100)
    assert pred.any() and ref.any()
    for connectivity in range(1, len(shape) + 1):
        assert_matches_medpy(pred, ref, spacing, connectivity)


def test_sparse_noisy_masks_match_medpy():
    rng = np.random.default_rng(7)
    pred = rng.random((20, 22, 9)) > 0.97  # scattered single voxels: surface = the mask itself
    ref = blobs((20, 22, 9), 3)
    assert_matches_medpy(pred, ref, (1.0, 1.0, 3.0))
    assert_matches_medpy(ref, pred, (1.0, 1.0, 3.0), connectivity=3)


@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 8.0), (1.0, 2.0, 0.5)])
def test_ellipsoid_shells_match_medpy(spacing):
    shape = (64, 64, 16)
    ref = shell(shape, (32, 30, 8), (18, 15, 6), 4)  # myocardium-like ring
    pred = shell(shape, (34, 31, 8.5), (17, 16, 5.5), 3)
    cavity_ref = ellipsoid(shape, (32, 30, 8), (14, 11, 3))
    cavity_pred = ellipsoid(shape, (33, 30, 8), (13, 12, 3.5))
    m = assert_matches_medpy(pred, ref, spacing)
    assert 0.3 < m["dice"] < 1.0
    assert_matches_medpy(cavity_pred, cavity_ref, spacing)
    # a far-away false-positive island makes HD large while HD95 and ASSD move less
    pred_fp = pred.copy()
    pred_fp[2:4, 60:62, 1:3] = True
    m_fp = assert_matches_medpy(pred_fp, ref, spacing)
    assert m_fp["hd"] > m["hd"]


def test_single_voxel_masks():
    a = np.zeros((9, 9, 5), bool)
    b = np.zeros((9, 9, 5), bool)
    a[4, 4, 2] = True
    b[1, 7, 3] = True
    m = assert_matches_medpy(a, b, (1.0, 2.0, 3.0))
    expected = math.sqrt((3 * 1.0) ** 2 + (3 * 2.0) ** 2 + (1 * 3.0) ** 2)
    for k in ("hd", "hd95", "asd", "assd"):
        assert m[k] == pytest.approx(expected)
    assert m["dice"] == 0.0
    same = binary_metrics(a, a, (1.0, 2.0, 3.0))
    assert same["dice"] == 1.0 and same["hd"] == 0.0 and same["assd"] == 0.0
    assert_matches_medpy(a, blobs((9, 9, 5), 5, sigma=1.0, threshold=0.0), None)


def test_masks_touching_the_border_match_medpy():
    shape = (30, 26, 8)
    ref = np.zeros(shape, bool)
    ref[0:12, :, 0:4] = True  # touches several faces of the array
    pred = np.zeros(shape, bool)
    pred[0:10, 3:26, 0:8] = True
    assert_matches_medpy(pred, ref, (1.4, 1.4, 8.0))
    assert_matches_medpy(pred, ref, None, connectivity=3)
    full = np.ones(shape, bool)  # a full volume: its surface is the array's outer layer
    assert_matches_medpy(full, ref, (1.0, 1.0, 2.0))
    corner = np.zeros(shape, bool)
    corner[-1, -1, -1] = True
    assert_matches_medpy(corner, ref, (1.4, 1.4, 8.0))


def test_crop_is_exact_for_masks_in_a_large_volume():
    small = blobs((20, 20, 8), 11)
    big_p = np.zeros((120, 100, 40), bool)
    big_r = np.zeros_like(big_p)
    big_p[50:70, 30:50, 10:18] = small
    big_r[52:72, 28:48, 11:19] = blobs((20, 20, 8), 12)
    assert_matches_medpy(big_p, big_r, (1.5, 1.5, 2.0))


def test_accepts_tensors_and_label_values():
    ref = blobs((20, 20, 6), 1)
    pred = blobs((20, 20, 6), 2)
    a = binary_metrics(torch.as_tensor(pred.astype(np.float32) * 3), torch.as_tensor(ref), spacing=[1.0, 1.0, 2.0])
    b = binary_metrics(pred, ref, spacing=(1.0, 1.0, 2.0))
    assert all(a[k] == b[k] for k in METRIC_NAMES)


# ------------------------------------------------------------------------------------------------------------------
# MONAI's HD95 convention
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [(1.4, 1.4, 8.0), (1.0, 1.0, 1.0), (0.8, 1.3, 2.2)])
@pytest.mark.parametrize("seed", [0, 3])
def test_monai_hd95_convention_matches_monai(spacing, seed):
    from monai.metrics import compute_hausdorff_distance

    shape = (36, 32, 10)
    pred, ref = blobs(shape, seed), blobs(shape, seed + 50)
    y_pred = torch.as_tensor(pred)[None, None].float()
    y = torch.as_tensor(ref)[None, None].float()
    monai_hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
    monai_hd = compute_hausdorff_distance(y_pred, y, include_background=True, spacing=list(spacing))
    ours = binary_metrics(pred, ref, spacing=spacing, hd95_convention="monai")
    assert ours["hd95"] == pytest.approx(float(monai_hd95), rel=1e-5, abs=TOL)
    assert ours["hd"] == pytest.approx(float(monai_hd), rel=1e-5, abs=TOL)
    assert ours["hd95_convention"] == "monai"
    medpy_style = binary_metrics(pred, ref, spacing=spacing)
    for k in ("dice", "hd", "asd", "assd"):  # only HD95 depends on the convention
        assert ours[k] == medpy_style[k]
    assert ours["hd95"] >= medpy_style["hd95"] - TOL  # max of directed percentiles >= pooled percentile


def test_unknown_convention_is_rejected():
    with pytest.raises(ValueError, match="hd95_convention"):
        binary_metrics(np.ones((3, 3)), np.ones((3, 3)), hd95_convention="other")


# ------------------------------------------------------------------------------------------------------------------
# empty-mask policy
# ------------------------------------------------------------------------------------------------------------------
def test_both_empty():
    z = np.zeros((10, 12, 4), bool)
    m = binary_metrics(z, z, spacing=(1.5, 1.5, 8.0))
    assert m["empty"] == "both" and m["dice"] == 1.0
    assert all(m[k] == 0.0 for k in ("hd", "hd95", "asd", "assd"))


@pytest.mark.parametrize("which", ["pred", "ref"])
@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 8.0)])
def test_one_empty_gets_the_volume_diagonal(which, spacing):
    shape = (10, 12, 4)
    z = np.zeros(shape, bool)
    full = blobs(shape, 0, sigma=1.0, threshold=0.0)
    pred, ref = (z, full) if which == "pred" else (full, z)
    m = binary_metrics(pred, ref, spacing=spacing)
    sp = np.ones(3) if spacing is None else np.asarray(spacing)
    diagonal = float(np.sqrt(np.sum((np.asarray(shape) * sp) ** 2)))
    assert worst_case_distance(shape, spacing) == pytest.approx(diagonal)
    assert m["empty"] == which and m["dice"] == 0.0
    for k in ("hd", "hd95", "asd", "assd"):
        assert m[k] == pytest.approx(diagonal) and not math.isnan(m[k])
    # the worst case is never beaten by a real prediction in the same volume
    corner_a, corner_b = z.copy(), z.copy()
    corner_a[0, 0, 0], corner_b[-1, -1, -1] = True, True
    assert binary_metrics(corner_a, corner_b, spacing=spacing)["hd"] < m["hd"]


def test_empty_cases_are_counted_in_aggregation():
    shape = (8, 8, 3)
    ref = np.zeros(shape, np.int64)
    ref[2:6, 2:6, :] = 1
    pred = np.zeros(shape, np.int64)  # class 1 missed; class 2 absent in both
    rows = multiclass_metrics(pred, ref, num_classes=3, spacing=(1.0, 1.0, 2.0), class_names=["A", "B"])
    assert [r["empty"] for r in rows] == ["pred", "both"]
    for r in rows:
        r["volume"] = "v1"
    s = aggregate(rows)
    diag = worst_case_distance(shape, (1.0, 1.0, 2.0))
    assert s["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    assert s["metrics"]["hd"]["mean"] == pytest.approx(diag / 2)
    assert s["empty"] == {"pred": 1, "ref": 0, "both": 1}
    assert s["per_class"]["A"]["empty"]["pred"] == 1 and s["per_class"]["B"]["empty"]["both"] == 1
    assert not any(math.isnan(v["mean"]) for v in s["metrics"].values())


# ------------------------------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------------------------------
def _row(volume, c, name, dice, hd, empty=None):
    return {"volume": volume, "class_index": c, "class_name": name, "dice": dice, "hd": hd, "empty": empty}


def test_aggregate_hand_built_example():
    rows = [
        _row("p1", 1, "RV", 0.8, 2.0),
        _row("p1", 2, "LV", 0.6, 4.0),
        _row("p2", 1, "RV", 0.4, 10.0, empty=None),
        _row("p2", 2, "LV", 0.0, 30.0, empty="pred"),
        _row("p3", 1, "RV", 1.0, 0.0, empty="both"),
        _row("p3", 2, "LV", 0.9, 1.0),
    ]
    s = aggregate(rows, metrics=["dice", "hd"])
    # per-volume means: dice 0.7, 0.2, 0.95; hd 3, 20, 0.5
    assert s["num_volumes"] == 3 and s["num_classes"] == 2
    assert [v["volume"] for v in s["per_volume"]] == ["p1", "p2", "p3"]
    assert [v["dice"] for v in s["per_volume"]] == pytest.approx([0.7, 0.2, 0.95])
    assert s["metrics"]["dice"]["mean"] == pytest.approx(np.mean([0.7, 0.2, 0.95]))
    assert s["metrics"]["dice"]["std"] == pytest.approx(np.std([0.7, 0.2, 0.95]))
    assert s["metrics"]["hd"]["mean"] == pytest.approx(23.5 / 3)
    assert s["metrics"]["hd"]["std"] == pytest.approx(np.std([3.0, 20.0, 0.5]))
    assert s["per_class"]["RV"]["dice"]["mean"] == pytest.approx(np.mean([0.8, 0.4, 1.0]))
    assert s["per_class"]["LV"]["hd"]["std"] == pytest.approx(np.std([4.0, 30.0, 1.0]))
    assert s["per_class"]["LV"]["n"] == 3 and s["per_class"]["LV"]["class_index"] == 2
    assert s["per_class"]["LV"]["empty"] == {"pred": 1, "ref": 0, "both": 0}
    assert s["per_class"]["RV"]["empty"] == {"pred": 0, "ref": 0, "both": 1}
    assert s["empty"] == {"pred": 1, "ref": 0, "both": 1}
    s1 = aggregate(rows, metrics=["dice"], ddof=1)
    assert s1["metrics"]["dice"]["std"] == pytest.approx(np.std([0.7, 0.2, 0.95], ddof=1))
    json.dumps(s, allow_nan=False)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="at least one row"):
        aggregate([])
    with pytest.raises(ValueError, match="'volume'"):
        aggregate([{"dice": 1.0}], metrics=["dice"])
    with pytest.raises(ValueError, match="lacks metric"):
        aggregate([{"volume": "a", "dice": 1.0}], metrics=["dice", "hd"])


# ------------------------------------------------------------------------------------------------------------------
# multi-class label maps
# ------------------------------------------------------------------------------------------------------------------
def _label_maps(shape=(40, 36, 8)):
    ref = np.zeros(shape, np.int64)
    ref[ellipsoid(shape, (20, 18, 4), (12, 10, 3))] = 2
    ref[ellipsoid(shape, (20, 18, 4), (8, 6, 3))] = 3
    ref[ellipsoid(shape, (8, 8, 4), (5, 4, 2))] = 1
    pred = np.zeros(shape, np.int64)
    pred[ellipsoid(shape, (21, 18, 4), (11, 10, 3))] = 2
    pred[ellipsoid(shape, (21, 19, 4), (8, 7, 3))] = 3
    pred[ellipsoid(shape, (9, 8, 4), (4, 4, 2))] = 1
    return pred, ref


def test_multiclass_matches_binary_and_medpy():
    pred, ref = _label_maps()
    spacing = (1.4, 1.4, 8.0)
    rows = multiclass_metrics(pred, ref, num_classes=4, spacing=spacing, class_names=["bg", "RV", "MYO", "LV"])
    assert [(r["class_index"], r["class_name"]) for r in rows] == [(1, "RV"), (2, "MYO"), (3, "LV")]
    for r in rows:
        c = r["class_index"]
        theirs = medpy_metrics(pred == c, ref == c, spacing)
        for k in METRIC_NAMES:
            assert r[k] == pytest.approx(theirs[k], abs=TOL)
        assert r["pred_voxels"] == int((pred == c).sum()) and r["ref_voxels"] == int((ref == c).sum())
    # float label maps (e.g. AsDiscrete output) and explicit label values give the same rows
    rows_f = multiclass_metrics(pred.astype(np.float32), ref.astype(np.float64), labels=[1, 2, 3], spacing=spacing)
    assert [r["dice"] for r in rows_f] == [r["dice"] for r in rows]
    assert [r["class_name"] for r in rows_f] == ["1", "2", "3"]


def test_multiclass_with_sparse_label_codes():
    pred, ref = _label_maps((20, 20, 4))
    codes = np.array([0, 205, 420, 500])
    rows = multiclass_metrics(
        codes[pred], codes[ref], labels=[205, 420, 500], class_names={205: "myo", 420: "la", 500: "lv"}
    )
    assert [r["class_name"] for r in rows] == ["myo", "la", "lv"]
    base = multiclass_metrics(pred, ref, num_classes=4)
    assert [r["hd95"] for r in rows] == [r["hd95"] for r in base]


def test_multiclass_errors():
    pred, ref = _label_maps()
    assert set(np.unique(ref)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="same shape"):
        multiclass_metrics(pred, ref[:, :, :2], num_classes=4)
    with pytest.raises(ValueError, match="non-integer"):
        multiclass_metrics(pred + 0.5, ref, num_classes=4)
    nan_pred = pred.astype(float)
    nan_pred[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        multiclass_metrics(nan_pred, ref, num_classes=4)
    with pytest.raises(ValueError, match="value 3 outside the labels"):
        multiclass_metrics(pred, ref, num_classes=3)
    with pytest.raises(ValueError, match="outside the labels"):
        multiclass_metrics(pred, ref, labels=[1, 3])  # 2 is present but not listed
    with pytest.raises(ValueError, match="value -1 outside"):
        multiclass_metrics(pred - 1, ref, num_classes=4)
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        multiclass_metrics(pred, ref)
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        multiclass_metrics(pred, ref, num_classes=4, labels=[1, 2, 3])
    with pytest.raises(ValueError, match="class_names"):
        multiclass_metrics(pred, ref, num_classes=4, class_names=["a", "b"])
    with pytest.raises(ValueError, match="spacing"):
        multiclass_metrics(pred, ref, num_classes=4, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(pred > 0, ref > 0, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(nan_pred, ref)
    with pytest.raises(ValueError, match="connectivity"):
        binary_metrics(pred > 0, ref > 0, connectivity=4)


# ------------------------------------------------------------------------------------------------------------------
# the ignite handler in a MONAI SupervisedEvaluator
# ------------------------------------------------------------------------------------------------------------------
class FixedLogits(torch.nn.Module):
    """Returns pre-computed logits for the batch, in data-loader order (the input only gives the batch size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.pos : self.pos + x.shape[0]]
        self.pos += x.shape[0]
        return out.clone()


@pytest.mark.parametrize("postprocess", [True, False])
def test_handler_in_supervised_evaluator(tmp_path, postprocess):
    from monai.data import DataLoader, MetaTensor
    from monai.engines import SupervisedEvaluator
    from monai.transforms import AsDiscreted

    num_classes, shape = 4, (24, 20, 6)
    affine = np.diag([-1.5, -1.5, 8.0, 1.0])  # flipped axes: spacing is still (1.5, 1.5, 8)
    affine[:3, 3] = [10.0, -4.0, 2.0]
    p1, r1 = _label_maps(shape)
    r2 = np.zeros(shape, np.int64)
    r2[4:14, 4:12, 1:5] = 3
    r2[15:20, 12:18, 2:4] = 1
    p2 = np.zeros(shape, np.int64)
    p2[5:14, 4:13, 1:5] = 3  # class 1 missed (empty pred), class 2 absent in both
    preds, refs = [p1, p2], [r1, r2]
    logits = (
        torch.stack(
            [torch.nn.functional.one_hot(torch.as_tensor(p), num_classes).permute(3, 0, 1, 2) for p in preds]
        ).float()
        * 5.0
    )
    data = [
        {
            "image": MetaTensor(
                torch.zeros((1, *shape)),
                affine=torch.as_tensor(affine),
                meta={"filename_or_obj": f"/data/imagesTr/case{i}.nii.gz"},
            ),
            "label": MetaTensor(
                torch.as_tensor(refs[i])[None].float(),
                affine=torch.as_tensor(affine),
                meta={"filename_or_obj": f"/data/labelsTr/case{i}.nii.gz"},
            ),
        }
        for i in range(2)
    ]
    writer = VolumeMetricsWriter(
        str(tmp_path / "eval"), num_classes=num_classes, class_names=["RV", "MYO", "LV"], metric_name="mean_dice"
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2, num_workers=0),
        network=FixedLogits(logits),
        postprocessing=AsDiscreted(keys="pred", argmax=True) if postprocess else None,
        val_handlers=[writer],
    )
    evaluator.run()

    spacing = (1.5, 1.5, 8.0)
    expected = []
    for i in range(2):
        for r in multiclass_metrics(preds[i], refs[i], num_classes=4, spacing=spacing, class_names=["RV", "MYO", "LV"]):
            expected.append({**r, "volume": f"case{i}"})
    with open(tmp_path / "eval" / "metrics_per_volume.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 6
    for g, e in zip(got, expected):
        assert g["volume"] == e["volume"] and g["class_name"] == e["class_name"]
        assert int(g["class_index"]) == e["class_index"]
        for k in METRIC_NAMES:
            assert float(g[k]) == pytest.approx(e[k], abs=1e-9)
        assert g["empty"] == (e["empty"] or "")
        assert g["units"] == "mm" and g["spacing"] == "1.5x1.5x8"
    assert [g["empty"] for g in got] == ["", "", "", "pred", "both", ""]

    with open(tmp_path / "eval" / "metrics_summary.json") as f:
        summary = json.load(f)
    ref_summary = aggregate(expected)
    assert summary["num_volumes"] == 2
    for k in METRIC_NAMES:
        assert summary["metrics"][k]["mean"] == pytest.approx(ref_summary["metrics"][k]["mean"])
        assert summary["metrics"][k]["std"] == pytest.approx(ref_summary["metrics"][k]["std"])
    assert summary["per_class"]["RV"]["empty"] == {"pred": 1, "ref": 0, "both": 0}
    assert summary["units"] == "mm" and summary["hd95_convention"] == "medpy"
    assert evaluator.state.metrics["mean_dice"] == pytest.approx(ref_summary["metrics"]["dice"]["mean"])
    assert sorted(os.listdir(tmp_path / "eval")) == ["metrics_per_volume.csv", "metrics_summary.json"]  # no temp


def test_handler_voxel_units_and_monai_convention(tmp_path):
    from ignite.engine import Engine

    pred, ref = _label_maps((16, 16, 4))
    items = [{"pred": torch.as_tensor(pred)[None], "label": torch.as_tensor(ref)[None]}]  # plain tensors, no meta
    engine = Engine(lambda e, b: items)
    writer = VolumeMetricsWriter(tmp_path, labels=[1, 2, 3], hd95_convention="monai", voxel_units=True)
    writer.attach(engine)
    engine.run([0, 1], max_epochs=1)  # two iterations without file names
    with open(tmp_path / "metrics_per_volume.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["volume"] for r in rows] == ["volume_0"] * 3 + ["volume_1"] * 3
    expected = multiclass_metrics(pred, ref, num_classes=4, hd95_convention="monai")
    assert float(rows[0]["hd95"]) == pytest.approx(expected[0]["hd95"])
    assert rows[0]["units"] == "voxel" and rows[0]["hd95_convention"] == "monai"
    # the same file evaluated twice keeps two distinct volume ids
    from monai.data import MetaTensor

    writer.reset()
    for _ in range(2):
        writer.add_item(MetaTensor(items[0]["pred"], meta={"filename_or_obj": "a/p1.nii"}), items[0]["label"])
    assert [r["volume"] for r in writer.rows] == ["p1"] * 3 + ["p1#2"] * 3
    # without voxel_units, a sample without affine / pixdim is a clear error
    engine2 = Engine(lambda e, b: items)
    VolumeMetricsWriter(tmp_path, num_classes=4).attach(engine2)
    with pytest.raises(ValueError, match="spacing"):
        engine2.run([0], max_epochs=1)
