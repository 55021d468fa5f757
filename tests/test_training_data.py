"""Bad training data and non-finite training (issue #25): every bad file named before anything is cached, a stop
(or, asked for, a skip), and no NaN/Inf ever written to ``models/``; the last good checkpoint stays for
``--resume True``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import TINY, run_bundle_ok, run_bundle_process, tiny_acdc, tree_digest
from ignite.engine import Engine, Events

from ideal_components.data.checks import InputFilesError, TrainingDataCheck, check_label_values
from ideal_components.data.io import DataError
from ideal_components.encoders import save_encoder
from ideal_components.finite import NonFiniteError, check_finite, non_finite_entries
from ideal_components.handlers import AtomicDiskSaver, NonFiniteGuard
from ideal_components.networks import DenseContrastiveNet


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return tiny_acdc(tmp_path_factory.mktemp("training_data"))[1]


def _copy(prepared: Path, tmp_path: Path) -> tuple[Path, dict]:
    dataset = tmp_path / "dataset"
    shutil.copytree(prepared, dataset)
    return dataset, json.loads((dataset / "datalist.json").read_text())


def _rewrite(path: Path, change) -> None:
    """Rewrite a NIfTI file with ``change(data, affine) -> (data, affine)`` applied."""
    img = nib.load(str(path))
    data, affine = change(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine, img.header), str(path))


def _nan_voxel(data, affine):
    data[data.shape[0] // 2, data.shape[1] // 2, 0] = np.nan
    return data, affine


def _label_out_of_range(data, affine):
    data[0, 0, 0] = 9
    return data, affine


def _label_shape(data, affine):
    return data[..., :-1], affine


def _label_affine(data, affine):
    affine[:3, 3] += 10.0
    return data, affine


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


# one defect, planted in a real prepared file: (list, key, how, expected words)
DEFECTS = {
    "nan_voxel": ("labeled", "image", _nan_voxel, "image has 1 NaN/Inf voxel(s)"),
    "label_out_of_range": ("labeled", "label", _label_out_of_range, "value(s) [9] outside the bundle's classes 0..3"),
    "truncated_image": ("unlabeled", "image", "truncate", "truncated or corrupt image"),
    "missing_image": ("validation", "image", "missing", "missing image file"),
    "label_shape": ("labeled", "label", _label_shape, "does not match image shape"),
    "label_affine": ("validation", "label", _label_affine, "label affine does not match"),
}
LISTS = {"labeled": "labeled_10", "unlabeled": "unlabeled_10", "validation": "validation"}


def _plant(dataset: Path, datalist: dict, defect: str, item: dict | None = None) -> Path:
    """Plant ``defect`` in ``item`` (default: the first of the defect's list); returns the file it names."""
    name, key, how, _ = DEFECTS[defect]
    item = datalist[LISTS[name]][0] if item is None else item
    path = dataset / item[key]
    if how == "truncate":
        _truncate(path)
    elif how == "missing":
        path.unlink()
    else:
        _rewrite(path, how)
    return path


def _check(dataset: Path, skip_bad: bool = False) -> TrainingDataCheck:
    from monai.data import load_decathlon_datalist

    lists = {n: load_decathlon_datalist(str(dataset / "datalist.json"), True, k, dataset) for n, k in LISTS.items()}
    return TrainingDataCheck(
        lists, required=["labeled", "validation"], labeled=["labeled", "validation"], num_classes=4, skip_bad=skip_bad
    )


# ---- the check, in process, on real files -------------------------------------------------------------------------


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_alone_is_named_and_stops(prepared, tmp_path, defect):
    dataset, datalist = _copy(prepared, tmp_path)
    assert _check(dataset).errors == []
    bad = _plant(dataset, datalist, defect)
    check = _check(dataset)
    assert len(check.errors) == 1, check.errors
    name, _, _, words = DEFECTS[defect]
    assert check.errors[0].startswith(f"{name}: {bad}:") and words in check.errors[0], check.errors[0]
    with pytest.raises(InputFilesError, match="skip_bad_data") as info:
        check["unlabeled"]  # any list: the stop lists every bad item
    assert str(bad) in str(info.value)


def test_slice_count_must_match_the_datalist(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    datalist["unlabeled_10"][0]["num_slices"] += 1
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    (error,) = _check(dataset).errors
    assert "slice(s) along its last axis, the datalist says num_slices=" in error


def test_empty_required_list_stops(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    datalist["validation"] = []
    (dataset / "datalist.json").write_text(json.dumps(datalist))
    for skip_bad in (False, True):
        with pytest.raises(InputFilesError, match="validation: the list is empty \\(it holds no item\\)"):
            _check(dataset, skip_bad)["labeled"]


def test_skip_bad_keeps_the_good_items_and_stops_when_a_list_ends_empty(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    truncated = _plant(dataset, datalist, "truncated_image")
    check = _check(dataset, skip_bad=True)
    assert [d["id"] for d in check["unlabeled"]] == [d["id"] for d in datalist["unlabeled_10"][1:]]
    assert len(check["labeled"]) == 1 and check.errors == [
        f"unlabeled: {truncated}: " + check.errors[0].split(": ", 2)[2]
    ]
    _plant(dataset, datalist, "missing_image")  # the only validation volume
    with pytest.raises(InputFilesError, match=r"validation: the list is empty \(all 1 item\(s\) are bad\)") as info:
        _check(dataset, skip_bad=True)["labeled"]
    assert "truncated" not in str(info.value)  # skipped items are not a reason to stop


def test_label_values():
    check_label_values(np.array([0.0, 3.0]), 4, "lab.nii.gz")
    with pytest.raises(DataError, match="lab.nii.gz: label has 1 voxel\\(s\\) with non-integer values"):
        check_label_values(np.array([0.0, 1.5]), 4, "lab.nii.gz")
    with pytest.raises(DataError, match=r"value\(s\) \[-1, 4\] outside"):
        check_label_values(np.array([-1, 0, 4], dtype=np.int16), 4, "lab.nii.gz")


# ---- non-finite values, in process ---------------------------------------------------------------------------------


def test_non_finite_entries_names_the_tensors():
    state = {"net": {"w": torch.tensor([1.0, float("inf")]), "n": torch.tensor(3)}, "opt": [torch.zeros(2)]}
    assert non_finite_entries(state) == ["net.w"]
    with pytest.raises(NonFiniteError, match=r"not writing x: 1 tensor\(s\) hold NaN/Inf values \(net.w\)"):
        check_finite(state, "x")


def test_writers_refuse_non_finite_and_keep_the_previous_file(tmp_path):
    saver = AtomicDiskSaver(str(tmp_path))
    saver({"network": {"w": torch.ones(2)}}, "train_checkpoint_epoch=1.pt")
    before = tree_digest(tmp_path)
    with pytest.raises(NonFiniteError, match="train_checkpoint_epoch=1.pt"):
        saver({"network": {"w": torch.tensor([1.0, float("nan")])}}, "train_checkpoint_epoch=1.pt")
    net = DenseContrastiveNet(backbone="resnet10", momentum=0.0)
    with torch.no_grad():
        next(net.encoder.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="encoder file"):
        save_encoder(net, str(tmp_path / "pretrained_encoder.pt"))
    assert tree_digest(tmp_path) == before


def _guarded_engine(losses, weight_nan_at=None, interval=0):
    net = torch.nn.Linear(2, 2)
    batches = [{"id": [f"p{i}_ED", f"p{i}_ED"], "slice": torch.tensor([i, i + 1])} for i in range(len(losses))]

    def step(engine, batch):
        if engine.state.iteration == weight_nan_at:
            with torch.no_grad():
                net.weight[0, 0] = float("nan")
        return {"loss": torch.tensor(losses[engine.state.iteration - 1])}

    engine = Engine(step)
    guard = NonFiniteGuard(net, interval=interval, datalist=[{"id": "p1_ED", "image": "imagesTr/p1_ED.nii.gz"}])
    guard.attach(engine)
    saved = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append(e.state.epoch))  # a checkpointer after it
    return engine, batches, saved


def test_guard_stops_at_a_non_finite_loss_naming_the_batch():
    engine, batches, saved = _guarded_engine([0.5, float("nan"), 0.4])
    with pytest.raises(NonFiniteError) as info:
        engine.run(batches, max_epochs=2)
    message = str(info.value)
    assert "non-finite loss (nan) at iteration 2 (epoch 1, iteration 2 of 3 in the epoch)" in message
    assert "batch: p1_ED slices 1, 2 (imagesTr/p1_ED.nii.gz)" in message and "--resume True" in message
    assert saved == []


@pytest.mark.parametrize("interval, stops_at", [(0, 3), (2, 2)])
def test_guard_checks_weights_every_interval_and_at_epoch_end(interval, stops_at):
    engine, batches, saved = _guarded_engine([0.5, 0.5, 0.5], weight_nan_at=2, interval=interval)
    with pytest.raises(NonFiniteError, match=r"weight / optimiser tensor\(s\) hold NaN/Inf .*\(network.weight\)"):
        engine.run(batches, max_epochs=1)
    assert engine.state.iteration == stops_at and saved == []


# ---- the bundles, as subprocesses ----------------------------------------------------------------------------------


def _models_finite(models: Path) -> None:
    for path in models.rglob("*.pt"):
        assert non_finite_entries(torch.load(path, map_location="cpu", weights_only=True)) == [], path


@pytest.mark.slow
def test_train_names_every_bad_file_in_one_run(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    # fraction 100: four labelled volumes, each with one defect, and a truncated validation image
    items = datalist["labeled_100"]
    planted = {
        _plant(dataset, datalist, "nan_voxel", items[0]): "NaN/Inf voxel",
        _plant(dataset, datalist, "label_out_of_range", items[1]): "outside the bundle's classes",
        _plant(dataset, datalist, "label_shape", items[2]): "does not match image shape",
        _plant(dataset, datalist, "missing_image", items[3]): "missing image file",
    }
    _truncate(dataset / datalist["validation"][0]["image"])
    planted[dataset / datalist["validation"][0]["image"]] = "truncated or corrupt image"
    root = tmp_path / "run"
    args = [*TINY, "--dataset_dir", str(dataset), "--label_fraction", "100", "--use_pretrained", "False"]
    proc = run_bundle_process("ideal_acdc", ["train.json"], root, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "training data check: 5 bad item(s) of 5; stopping before training" in out
    for path, words in planted.items():
        assert f"{path}: " in out and words in out, (path, out[-4000:])
    assert "Loading dataset" not in out  # stopped before the cache
    assert not list(root.rglob("*.pt"))


@pytest.mark.slow
def test_pretrain_stops_on_a_nan_voxel(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    bad = dataset / datalist["training"][1]["image"]
    _rewrite(bad, _nan_voxel)
    root = tmp_path / "run"
    proc = run_bundle_process("ideal_acdc", ["pretrain.json"], root, *TINY, "--dataset_dir", str(dataset))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"bad training data (training): {bad}: image has 1 NaN/Inf voxel(s)" in out
    assert not list(root.rglob("*.pt"))


@pytest.mark.slow
def test_train_skips_bad_items_when_asked(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    bad = _plant(dataset, datalist, "truncated_image")
    root = tmp_path / "run"
    args = [*TINY, "--dataset_dir", str(dataset), "--use_pretrained", "False", "--max_epochs", "1"]
    out = run_bundle_ok("ideal_acdc", ["train.json"], root, *args, "--skip_bad_data", "True")
    assert f"skipping bad unlabeled item: {bad}: truncated or corrupt image" in out
    assert "skipping 1 bad item(s) of 5 (skip_bad); training on labeled 1/1, unlabeled 2/3, validation 1/1" in out
    assert (root / "models" / "train_checkpoint_epoch=1.pt").is_file() and (root / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    dataset, datalist = _copy(prepared, tmp_path)
    root = tmp_path / "run"
    args = [*TINY, "--dataset_dir", str(dataset), "--use_pretrained", "False", "--val_interval", "1"]
    run_bundle_ok("ideal_acdc", ["train.json"], root, *args, "--max_epochs", "1")
    good = tree_digest(root / "models")
    # finite voxels (the data check passes) large enough to overflow float32 in the first convolutions: NaN loss
    image = dataset / datalist["labeled_10"][0]["image"]
    original = image.read_bytes()
    _rewrite(image, lambda d, a: (np.full(d.shape, 3e38, np.float32), a))
    proc = run_bundle_process("ideal_acdc", ["train.json"], root, *args, "--max_epochs", "2", "--resume", "True")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "NonFiniteError: training stopped: non-finite loss (nan) at iteration" in out and "(epoch 2," in out
    assert str(image) in out.split("NonFiniteError: training stopped")[1]
    assert tree_digest(root / "models") == good  # the epoch-1 checkpoint and model.pt untouched
    _models_finite(root / "models")
    image.write_bytes(original)  # the data fixed: the run continues from the last good epoch
    out = run_bundle_ok("ideal_acdc", ["train.json"], root, *args, "--max_epochs", "2", "--resume", "True")
    assert "train_checkpoint_epoch=1.pt (epoch 1)" in out
    assert [p.name for p in (root / "models").glob("train_checkpoint_*.pt")] == ["train_checkpoint_epoch=2.pt"]


@pytest.mark.slow
def test_pretrain_non_finite_writes_no_encoder(prepared, tmp_path):
    root = tmp_path / "run"
    args = [*TINY, "--dataset_dir", str(prepared), "--max_epochs", "1", "--learning_rate", "1e30"]
    proc = run_bundle_process("ideal_acdc", ["pretrain.json"], root, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "NonFiniteError: training stopped: non-finite" in out
    assert not (root / "models" / "pretrained_encoder.pt").exists()
    _models_finite(root / "models")
