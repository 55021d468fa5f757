"""The model zoo's unit-test pattern for these bundles (as ``ci/unit_tests/test_<bundle>.py`` and
``test_<bundle>_dist.py`` in Project-MONAI/model-zoo): random NIfTI data written to a temporary folder, then
train -> evaluate -> inference through ``ConfigWorkflow`` with overrides (``initialize``, ``check_properties() == []``,
``run``, ``finalize``), and the multi-GPU training config under ``torchrun`` (two CPU processes, gloo). Written
without the zoo's helpers so that it runs here and can be dropped into the zoo with its ``bundle_root`` changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
OVERRIDE = {
    "backbone": "resnet10",
    "spatial_size": [64, 64],
    "num_workers": 0,
    "batch_size": 4,
    "labeled_batch_size": 2,
    "max_epochs": 1,
    "val_interval": 1,
    "use_pretrained": False,
    "label_fraction": 10,
    "raw_resolution_metrics": False,
}


def fake_dataset(folder: Path, classes: int, volumes: int = 6, shape=(64, 64, 4)) -> Path:
    """Random images and labels in the prepared layout, and the datalist the bundles read (``datalist.json``)."""
    rng = np.random.default_rng(0)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    affine = np.diag([4.0, 4.0, 10.0, 1.0])
    items = []
    for i in range(volumes):
        name = f"case{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(folder / "imagesTr" / name))
        label = rng.integers(0, classes, shape).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, affine), str(folder / "labelsTr" / name))
        items.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}", "id": f"case{i:03d}"})
        items[-1]["num_slices"] = shape[-1]
    datalist = {"training": items[:4], "validation": items[4:5], "test": items[5:]}
    datalist["labeled_10"], datalist["unlabeled_10"] = items[:1], items[1:4]
    (folder / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return folder


def workflow(bundle: str, configs: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    root = REPO / "bundles" / bundle / "configs"
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(root / c) for c in configs],
        logging_file=str(root / "logging.conf"),
        meta_file=str(root / "metadata.json"),
        **override,
    )


def check_workflow(wf: ConfigWorkflow) -> None:
    """The zoo's ``utils.check_workflow`` with ``check_properties=True``."""
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["ideal_acdc", "ideal_mmwhs"])
def test_train_eval_infer_configs(bundle, tmp_path):
    classes = json.loads((REPO / "bundles" / bundle / "configs" / "inference.json").read_text())["num_classes"]
    data = fake_dataset(tmp_path / "data", classes)
    override = dict(OVERRIDE, dataset_dir=str(data), bundle_root=str(tmp_path / "run"))
    check_workflow(workflow(bundle, ["train.json"], "train", **override))
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    check_workflow(workflow(bundle, ["train.json", "evaluate.json"], "train", **override))
    assert (tmp_path / "run" / "eval" / "metrics_per_volume.csv").is_file()
    infer = {k: override[k] for k in ("backbone", "spatial_size", "bundle_root")}
    infer.update(dataset_dir=str(data / "imagesTr"), output_dir=str(tmp_path / "segs"), progress=False)
    check_workflow(workflow(bundle, ["inference.json"], "infer", **infer))
    assert len(list((tmp_path / "segs").glob("*_seg.nii.gz"))) == 6


@pytest.mark.slow
def test_multi_gpu_train_config(tmp_path):
    """``torchrun --nproc_per_node 2`` with ``multi_gpu_train.json`` merged over ``train.json`` (gloo on CPU)."""
    bundle = "ideal_acdc"
    data = fake_dataset(tmp_path / "data", 4)
    root = REPO / "bundles" / bundle / "configs"
    override = dict(OVERRIDE, dataset_dir=str(data), bundle_root=str(tmp_path / "run"))
    args = []
    for key, value in override.items():
        # python-fire reads `false` as a string: booleans are passed as Python literals
        args += [
            f"--{key}",
            value if isinstance(value, str) else repr(value) if isinstance(value, bool) else json.dumps(value),
        ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    cmd += [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['{root / 'train.json'}','{root / 'multi_gpu_train.json'}']",
    ]
    cmd += ["--meta_file", str(root / "metadata.json"), "--logging_file", str(root / "logging.conf"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
