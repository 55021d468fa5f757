"""A bundle archive carries its own code: it runs where ``ideal_components`` is not installed, and its code cannot
drift from the package's (the archive holds byte-for-byte copies, checked here). It carries the modules its configs
reach, not the whole package, and its docs link only to what is in the archive."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import TINY, tiny_acdc
from monai.networks.nets import FlexibleUNet

from ideal_components.package import SCRIPTS_DIR, package_bundle, package_modules, reached_modules, vendored_files

REPO = Path(__file__).resolve().parents[1]
WITHOUT_PACKAGE = REPO / "tests" / "without_package.py"
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"


@pytest.fixture(scope="module", params=["ideal_acdc", "ideal_mmwhs"])
def unpacked(request, tmp_path_factory) -> Path:
    """The bundle packed with (random, resnet10) weights and unpacked as ``monai.bundle download`` would."""
    bundle = request.param
    base = tmp_path_factory.mktemp(f"zoo_{bundle}")
    torch.manual_seed(0)
    classes = 8 if bundle == "ideal_mmwhs" else 4
    net = FlexibleUNet(1, classes, backbone="resnet10", spatial_dims=2, upsample="deconv")
    torch.save(net.state_dict(), base / "model.pt")
    archive = package_bundle(
        REPO / "bundles" / bundle, out=base / "dist", weights=base / "model.pt", include_weights=True
    )
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(base / "unpacked")
    return base / "unpacked" / bundle


_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")  # [text](target), ![alt](target)
_REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.M)  # [label]: target
_HTML_LINK = re.compile(r"(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_CODE = re.compile(r"`([^`\s]+)`")
# top-level folders of an archive that a doc may name as paths (`configs/train.json`); files at its top
ARCHIVE_DIRS, ARCHIVE_FILES = ("configs/", "docs/", "scripts/"), ("LICENSE", "large_files.yml")
# a path into a folder of the project repository that an archive never holds, in prose, code or commands
_REPOSITORY_PATH = re.compile(r"(?<![\w/.-])(?:bundles|benchmarks|tests|tools|ideal_components)/[\w./-]*")


def broken_links(root: Path) -> list[str]:
    """Every relative link of the docs under ``root / "docs"`` (Markdown, reference-style and HTML links, resolved
    from the doc's folder) that does not resolve to a file inside ``root``, every code-quoted path into the archive's
    own folders (`configs/...`, `docs/...`, `scripts/...`, resolved from ``root``) that is missing, and every path or
    phrase that points into the project repository instead of the archive."""
    broken = []
    for doc in sorted(p for p in (root / "docs").rglob("*") if p.is_file() and p.suffix in {".md", ".txt", ".html"}):
        text, name = doc.read_text(encoding="utf-8"), doc.relative_to(root).as_posix()
        for target in _MD_LINK.findall(text) + _REF_LINK.findall(text) + _HTML_LINK.findall(text):
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (http:, mailto:, ...) or an anchor of the same page
            path = (doc.parent / target.split("#")[0].split("?")[0]).resolve()
            if not path.is_relative_to(root.resolve()) or not path.exists():
                broken.append(f"{name}: link {target}")
        for quoted in _CODE.findall(text):
            quoted = quoted.rstrip(".,;:)")
            if any(c in quoted for c in "*<>{}$") or "..." in quoted:
                continue  # a pattern or a placeholder, not a path
            if (quoted.startswith(ARCHIVE_DIRS) or quoted in ARCHIVE_FILES) and not (root / quoted).exists():
                broken.append(f"{name}: {quoted} is not in the archive")
        broken += [f"{name}: {path} is a path of the project repository" for path in _REPOSITORY_PATH.findall(text)]
        if re.search(r"repository's\s+README", text):
            broken.append(f"{name}: points to the repository's README")
    return broken


def test_broken_links_finds_what_is_not_in_the_archive(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text("{}")
    (tmp_path / "docs" / "data_license.txt").write_text("terms")
    (tmp_path / "docs" / "README.md").write_text(
        "[ok](data_license.txt) [ok](../configs/train.json#x) [web](https://example.org) [here](#performance) "
        "`configs/train.json` `models/model.pt` `configs/*.json`\n"
        "[gone](results_pretraining.md) [out](../../README.md) `docs/results_pretraining.md` "
        "`benchmarks/results/gpu.md` `bundles/ideal_acdc/configs/train.json`\n[ref]: missing.png\n"
        "```\npython -m monai.bundle run --config_file bundles/ideal_acdc/configs/pretrain.json\n```\n"
        "Figures are in the repository's\nREADME.\n"
    )
    assert broken_links(tmp_path) == [
        "docs/README.md: link results_pretraining.md",
        "docs/README.md: link ../../README.md",
        "docs/README.md: link missing.png",
        "docs/README.md: docs/results_pretraining.md is not in the archive",
        "docs/README.md: benchmarks/results/gpu.md is a path of the project repository",
        "docs/README.md: bundles/ideal_acdc/configs/train.json is a path of the project repository",
        "docs/README.md: bundles/ideal_acdc/configs/pretrain.json is a path of the project repository",
        "docs/README.md: points to the repository's README",
    ]


def test_every_relative_link_of_the_docs_resolves_inside_the_archive(unpacked):
    assert (unpacked / "docs" / "README.md").is_file()
    assert not broken_links(unpacked)


def _run_without_package(root: Path, *args: str, timeout: int = 900) -> str:
    cmd = [sys.executable, str(WITHOUT_PACKAGE), *args]
    proc = subprocess.run(cmd, cwd=str(root), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _bundle_run(root: Path, config: str, *args: str, bundle_root: str = ".") -> str:
    meta = [
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
        "--bundle_root",
        bundle_root,
    ]
    out = _run_without_package(root, "monai.bundle", "run", "--config_file", config, *meta, *args)
    assert f"ideal_components imported from {root / SCRIPTS_DIR / 'ideal_components' / '__init__.py'}" in out
    return out


def test_archive_code_is_what_the_configs_reach(unpacked):
    """``scripts/`` holds byte-for-byte copies of the modules the configs reach, and nothing else of the package."""
    packed = sorted(str(p.relative_to(unpacked)) for p in (unpacked / SCRIPTS_DIR).rglob("*.py"))
    expected = vendored_files(unpacked / "configs")
    assert packed == sorted([arc for arc, _ in expected] + [f"{SCRIPTS_DIR}/__init__.py"])
    for arc, src in expected:
        assert (unpacked / arc).read_bytes() == src.read_bytes(), arc
    reached = set(reached_modules(unpacked / "configs"))
    # what the configs name, what those import (also inside functions: the raw-resolution metrics read the datasets'
    # layouts), and evaluate.json's report with its figures
    for needed in ["losses", "engines", "inference", "data.sampler", "evaluation.raw_resolution", "data.acdc"]:
        assert f"ideal_components.{needed}" in reached, needed
    assert "ideal_components.reporting.figures" in reached
    # not the phantoms, the sweep, the probe, the command line or the packer itself
    left_out = set(package_modules()) - reached
    for name in ["synthetic", "synthetic.acdc", "experiments.sweep", "experiments.probe", "cli", "package"]:
        assert f"ideal_components.{name}" in left_out, name


def test_packed_code_imports_without_the_package(unpacked, tmp_path):
    """Every packed module imports from the trimmed copy (so none imports a module that was left out at import
    time; imports inside functions are followed by :func:`reached_modules`), and every dotted name of the package in
    the configs resolves there."""
    names = sorted(
        {
            m
            for text in (unpacked / "configs").glob("*.json")
            for m in re.findall(r"ideal_components(?:\.\w+)+", text.read_text())
        }
    )
    check = (
        "import importlib, sys\n"
        "import scripts\n"
        f"for module in {reached_modules(unpacked / 'configs')!r}:\n"
        "    importlib.import_module(module)\n"
        f"for dotted in {names!r}:\n"
        "    parts = dotted.split('.')\n"
        "    obj = importlib.import_module(parts[0])\n"
        "    for part in parts[1:]:\n"
        "        obj = getattr(obj, part)\n"
        "print('resolved', len(sys.modules))\n"
    )
    (unpacked / "check_imports.py").write_text(check)
    out = _run_without_package(unpacked, "check_imports")
    assert "resolved" in out
    assert f"ideal_components imported from {unpacked / SCRIPTS_DIR / 'ideal_components' / '__init__.py'}" in out


def test_every_config_imports_the_packed_code_first(unpacked):
    for config in sorted((unpacked / "configs").glob("*.json")):
        imports = json.loads(config.read_text()).get("imports")
        if imports is not None and any("ideal_components" in i for i in imports):
            assert imports[0] == "$import scripts", config.name


@pytest.mark.slow
def test_zoo_checks_without_the_package(unpacked):
    """What the zoo's ``verify_bundle.py`` runs in full mode, with the package hidden: metadata against the schema,
    the properties of ``inference.json`` without data, the network's input/output shapes, TorchScript export."""
    meta = ["--meta_file", "configs/metadata.json"]
    out = _run_without_package(unpacked, "monai.bundle", "verify_metadata", *meta, "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in out
    check = (
        "from monai.bundle import ConfigWorkflow; import os; os.makedirs('empty', exist_ok=True); "
        "wf = ConfigWorkflow(config_file='configs/inference.json', meta_file='configs/metadata.json', "
        "logging_file='configs/logging.conf', workflow_type='infer', bundle_root='.', dataset_dir='empty'); "
        "wf.initialize(); print('properties', wf.check_properties())"
    )
    (unpacked / "check_properties.py").write_text(check)
    out = _run_without_package(unpacked, "check_properties")  # run as a module from the bundle folder
    assert "properties []" in out
    net = ["network_def", *meta, "--config_file", "configs/inference.json", "--bundle_root", "."]
    out = _run_without_package(
        unpacked, "monai.bundle", "verify_net_in_out", *net, "--backbone", "resnet10", "--n", "2"
    )
    assert "data shape of network is verified with no error" in out
    ts = ["--filepath", "models/verify_model.ts", "--ckpt_file", "models/model.pt", "--backbone", "resnet10"]
    _run_without_package(unpacked, "monai.bundle", "ckpt_export", *net, *ts)
    assert (unpacked / "models" / "verify_model.ts").is_file()


@pytest.mark.slow
def test_inference_and_training_run_from_the_archive_without_the_package(unpacked, tmp_path):
    classes = json.loads((unpacked / "configs" / "inference.json").read_text())["num_classes"]
    raw, prepared = tiny_acdc(tmp_path, patients=4)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = sorted((raw / "training").glob("patient*/patient*_frame01.nii.gz"))[0]
    (inputs / source.name).write_bytes(source.read_bytes())
    out = _bundle_run(
        unpacked,
        "configs/inference.json",
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(tmp_path / "segs"),
        "--backbone",
        "resnet10",
        "--spatial_size",
        "[64,64]",
        "--progress",
        "False",
    )
    assert "inference: 1 input(s): 1 segmented" in out
    seg = nib.load(str(tmp_path / "segs" / source.name.replace(".nii.gz", "_seg.nii.gz")))
    assert seg.shape == nib.load(str(source)).shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(classes))
    if classes == 4:  # the ACDC bundle trains on the ACDC phantoms; one epoch proves the training config runs
        run = tmp_path / "train_run"
        args = [*TINY, "--dataset_dir", str(prepared), "--use_pretrained", "False", "--max_epochs", "1"]
        _bundle_run(unpacked, "configs/train.json", *args, "--val_interval", "1", bundle_root=str(run))
        assert (run / "models" / "model.pt").is_file()
        # evaluate.json reaches the most code (metrics, raw-resolution metrics, the report and its figures)
        configs = "['configs/train.json','configs/evaluate.json']"
        _bundle_run(unpacked, configs, *TINY, "--dataset_dir", str(prepared), bundle_root=str(run))
        assert (run / "eval" / "metrics_summary.json").is_file() and (run / "eval" / "report.md").is_file()
