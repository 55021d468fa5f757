"""Sharing a bundle as the model zoo archives it: ``package_bundle`` -> ``monai.bundle download`` -> ``run``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_components.package import WEIGHTS_PATH, md5sum, package_bundle

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ideal_acdc"
FORBIDDEN = ("models/", "eval/", "logs/", "predictions/", "data/")  # training outputs and data, at the bundle's top


def _forbidden(names: list[str]) -> list[str]:
    return [n for n in names if n.split("/", 1)[1].startswith(FORBIDDEN) or "__pycache__" in n or n.endswith(".pyc")]


def _version(bundle: Path = BUNDLE) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def _names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def _read(path: str, member: str) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read(member).decode("utf-8")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A real (randomly initialised) state dict of the ACDC bundle's ``network_def`` with the resnet10 encoder."""
    from monai.networks.nets import FlexibleUNet

    torch.manual_seed(0)
    net = FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2, upsample="deconv")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_package_without_weights(tmp_path):
    zip_path = package_bundle(BUNDLE, out=tmp_path / "dist")
    assert Path(zip_path) == tmp_path / "dist" / f"ideal_acdc_v{_version()}.zip"
    names = _names(zip_path)
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == {"ideal_acdc"}
    for rel in ["LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "large_files.yml"]:
        assert f"ideal_acdc/{rel}" in names
    assert not _forbidden(names)
    assert "ideal_acdc/scripts/__init__.py" in names and "ideal_acdc/scripts/ideal_components/losses.py" in names
    yml = _read(zip_path, "ideal_acdc/large_files.yml")
    assert 'path: "models/model.pt"' in yml and 'hash_val: ""' in yml and 'hash_type: "md5"' in yml
    # deterministic: the same inputs give the same bytes, and no temporary file is left behind
    first = Path(zip_path).read_bytes()
    assert Path(package_bundle(BUNDLE, out=tmp_path / "dist")).read_bytes() == first
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [Path(zip_path).name]


def test_package_weights_listed_not_included(tmp_path, weights):
    url = "https://example.org/releases/ideal_acdc_model.pt"
    zip_path = package_bundle(BUNDLE, out=tmp_path, weights=weights, url=url)
    assert not [n for n in _names(zip_path) if n.startswith("ideal_acdc/models/")]
    yml = _read(zip_path, "ideal_acdc/large_files.yml")
    assert f'url: "{url}"' in yml and f'hash_val: "{md5sum(weights)}"' in yml


def test_package_errors(tmp_path, weights):
    copy = tmp_path / "ideal_acdc"
    shutil.copytree(BUNDLE, copy)
    (copy / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match="LICENSE"):
        package_bundle(copy, out=tmp_path / "dist")
    (copy / "LICENSE").write_text("Apache-2.0\n")
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "9.9.9"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not in its changelog"):
        package_bundle(copy, out=tmp_path / "dist")
    meta_file.unlink()
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        package_bundle(copy, out=tmp_path / "dist")
    with pytest.raises(ValueError, match="include_weights"):
        package_bundle(BUNDLE, out=tmp_path / "dist", include_weights=True)
    with pytest.raises(FileNotFoundError, match="weights"):
        package_bundle(BUNDLE, out=tmp_path / "dist", weights=tmp_path / "missing.pt")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=str(cwd), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{out[-6000:]}"
    return out


@pytest.mark.slow
def test_package_download_and_infer(tmp_path, weights):
    """The archive unpacks with ``monai.bundle download --url file://...`` and its inference config runs from there."""
    zip_path = Path(package_bundle(BUNDLE, out=tmp_path / "dist", weights=weights, include_weights=True))
    names = _names(str(zip_path))
    assert f"ideal_acdc/{WEIGHTS_PATH}" in names and "ideal_acdc/large_files.yml" in names
    assert [n for n in _forbidden(names)] == [f"ideal_acdc/{WEIGHTS_PATH}"]
    assert f'hash_val: "{md5sum(weights)}"' in _read(str(zip_path), "ideal_acdc/large_files.yml")

    bundle_dir = tmp_path / "downloaded"
    bundle_dir.mkdir()
    cmd = ["-m", "monai.bundle", "download", "--name", "ideal_acdc", "--version", _version()]
    cmd += ["--url", zip_path.resolve().as_uri(), "--bundle_dir", str(bundle_dir), "--progress", "False"]
    _run(cmd, tmp_path)
    root = bundle_dir / "ideal_acdc"
    assert (root / "configs" / "inference.json").is_file() and (root / "LICENSE").is_file()
    assert md5sum(root / WEIGHTS_PATH) == md5sum(weights)

    from ideal_components.synthetic import synth_acdc

    synth_acdc(str(tmp_path / "raw"), patients=1, seed=0, progress=False)
    src = tmp_path / "raw" / "training" / "patient001" / "patient001_frame01.nii.gz"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(src, inputs / src.name)
    configs = root / "configs"
    cmd = ["-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json")]
    cmd += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    cmd += ["--bundle_root", str(root), "--dataset_dir", str(inputs)]
    cmd += ["--backbone", "resnet10", "--spatial_size", "[64,64]", "--pixdim", "[4.0,4.0,-1]"]
    _run(cmd, root)
    seg = nib.load(str(root / "predictions" / "patient001_frame01_seg.nii.gz"))
    img = nib.load(str(src))
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
