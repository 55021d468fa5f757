"""One source for the versions: ``constraints.txt`` is what ``make install`` installs and what the bundles' metadata
pins, and the bundles' code needs nothing that the metadata does not list."""

from __future__ import annotations

import ast
import configparser
import json
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["ideal_acdc", "ideal_mmwhs"]
TEST_ONLY = {"pydicom", "medpy", "onnx", "onnxscript", "onnxruntime"}  # tests and the optional ONNX export


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[_norm(name)] = pinned
    return pins


def _metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_pins_are_the_constraints(bundle):
    pins, meta = constraints(), _metadata(bundle)
    assert meta["pytorch_version"] == pins["torch"]
    assert meta["monai_version"] == pins["monai"]
    assert meta["numpy_version"] == pins["numpy"]
    required = {_norm(k): v for k, v in meta["required_packages_version"].items()}
    runtime = {k: v for k, v in pins.items() if k not in {"torch", "monai", "numpy"} | TEST_ONLY}
    assert required == runtime
    assert "ideal-components" not in required  # on no package index: the archive carries the code instead
    assert "optional_packages_version" not in meta  # deprecated in monai 1.6


def test_installed_versions_are_the_constraints():
    for name, pinned in constraints().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is pinned in constraints.txt but not installed (run `make install`)")
        assert installed.split("+")[0] == pinned, f"{name}: installed {installed}, constraints.txt {pinned}"


def test_setup_cfg_requirements_are_pinned():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    names = [re.split(r"[<>=!~ ]", r.strip())[0] for r in cfg["options"]["install_requires"].splitlines()]
    names += [re.split(r"[<>=!~ ]", r.strip())[0] for r in cfg["options.extras_require"]["test"].splitlines()]
    names = [_norm(n) for n in names if n and not n.startswith("#")]
    missing = sorted(set(names) - set(constraints()) - {"pytest", "jsonschema"})
    assert not missing, f"setup.cfg requires {missing} without a pin in constraints.txt"


def _third_party_imports() -> dict[str, set[str]]:
    """``{top-level module: files}`` imported anywhere in the package (also inside functions)."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "ideal_components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names | {"ideal_components", "__future__", "onnxruntime"}:
                    found.setdefault(top, set()).add(path.name)
    return found


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_packed_code_needs_only_what_the_metadata_lists(bundle):
    meta = _metadata(bundle)
    listed = {"torch", "monai", "numpy"} | {_norm(k) for k in meta["required_packages_version"]}
    distributions = packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "monai", "nibabel", "scipy"} <= set(imports)  # the scan sees the package's imports
    for module, files in imports.items():
        dists = {_norm(d) for d in distributions.get(module, [])}
        assert dists & listed, f"{module} (imported by {sorted(files)}) comes from {dists or 'nothing installed'}"


def test_one_version_everywhere():
    """The bundles' metadata, the package, setup.cfg and the archive names the README shows carry one version."""
    import ideal_components

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    version = ideal_components.__version__
    assert cfg["metadata"]["version"] == version
    for bundle in BUNDLES:
        assert _metadata(bundle)["version"] == version, bundle
    for path in [REPO / "README.md", REPO / "docs" / "sharing.md", REPO / "ideal_components" / "package.py"]:
        names = set(re.findall(r"ideal_(?:acdc|mmwhs)_v(\d+\.\d+\.\d+)\.zip", path.read_text()))
        assert names <= {version}, f"{path.name} names archives of version {sorted(names)}, not {version}"


# the newest entry summarises a whole release; the others say what changed in about one line
MAX_CHANGELOG_ENTRY = 200


@pytest.mark.parametrize("bundle", BUNDLES)
def test_changelog_entries_are_one_line(bundle):
    """The zoo's changelog style: one line per version, newest first; the longer story lives in the docs."""
    changelog = _metadata(bundle)["changelog"]
    versions = [tuple(int(n) for n in v.split(".")) for v in changelog]
    assert versions == sorted(versions, reverse=True)
    for entry_version, entry in changelog.items():
        assert "\n" not in entry and len(entry) <= MAX_CHANGELOG_ENTRY, f"{bundle} {entry_version}: {len(entry)} chars"
