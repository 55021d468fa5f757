"""Share a bundle the way the MONAI model zoo archives it: ``<name>_v<version>.zip`` with one top folder ``<name>/``.

The archive holds an explicit allow-list of the bundle's files (``LICENSE``, ``configs/*``, ``docs/*``) plus a
generated ``large_files.yml`` naming the weights (``models/model.pt``) with their URL and md5, as the zoo does for
files too large to commit, and the bundle's code: byte-for-byte copies of the modules of this package that the
bundle's configs reach (:func:`reached_modules`: what the configs name, and what those modules import, transitively;
not the phantom generator, the sweep or the probe) in ``scripts/ideal_components/``, with a ``scripts/__init__.py``
that puts the copy first on the import path. The configs
import ``scripts`` before ``ideal_components``, so an unpacked archive runs where only the packages of its
``metadata.json`` are installed (from the bundle folder, or wherever the bundle folder is on the import path, as the
zoo's own tools arrange), and its code is the code its configs were packed with. In the repository there is no
``scripts/`` folder: ``import scripts`` finds nothing and the installed package is used. Training outputs
(``models/``, ``eval/``, ``logs/``, ``predictions/``), data and caches are never packed; the weights go into the
archive only when asked for (``include_weights``, for an offline share).

The archive is what ``python -m monai.bundle download`` expects: it unpacks into ``<bundle_dir>/<name>/``, also from
a local ``file://`` URL::

    python -m ideal_components package_bundle bundles/ideal_acdc --out dist --weights runs/acdc/models/model.pt \\
        --url https://github.com/<owner>/<repo>/releases/download/v0.9.0/ideal_acdc_model.pt
    python -m monai.bundle download --name ideal_acdc --url file://$PWD/dist/ideal_acdc_v0.9.0.zip --bundle_dir b
    # then fetch the weights listed in large_files.yml (monai's reader of .yml files needs PyYAML):
    python -m monai.bundle download_large_files --bundle_path b/ideal_acdc
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from ideal_components.utils import md5sum

__all__ = [
    "ALLOWED_DIRS",
    "ALLOWED_FILES",
    "WEIGHTS_PATH",
    "SCRIPTS_DIR",
    "package_bundle",
    "large_files_yml",
    "md5sum",
    "package_modules",
    "config_references",
    "reached_modules",
    "vendored_files",
    "scripts_init",
]

#: top-level files of a bundle that go into the archive (everything else is left out)
ALLOWED_FILES: tuple[str, ...] = ("LICENSE",)
#: top-level folders of a bundle whose files go into the archive
ALLOWED_DIRS: tuple[str, ...] = ("configs", "docs")
#: where the weights live in a bundle (the zoo's "preferred" model file, loaded by ``inference.json``)
WEIGHTS_PATH = "models/model.pt"

#: where the package's copy goes in an archive (the model zoo's folder for a bundle's own code)
SCRIPTS_DIR = "scripts"
_PACKAGE_ROOT = Path(__file__).resolve().parent

_PLACEHOLDER_URL = "<publish models/model.pt (e.g. as a GitHub release asset) and put its download URL here>"
# fixed member metadata so that the same inputs give a byte-identical archive
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints", ".DS_Store"}


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML double-quoted scalars)."""
    return json.dumps(value, ensure_ascii=False)


def large_files_yml(path: str = WEIGHTS_PATH, url: str | None = None, hash_val: str | None = None) -> str:
    """The text of a model-zoo ``large_files.yml`` with one entry (hand-written YAML: no PyYAML needed).

    Args:
        path: the file's path inside the bundle.
        url: where the file is published; ``None`` writes a placeholder saying where to publish it.
        hash_val: the file's md5; ``None`` writes an empty value (``download_large_files`` then skips the check).

    Example::

        >>> print(large_files_yml(url="https://example.org/model.pt", hash_val="0123"))
        large_files:
          - path: "models/model.pt"
            url: "https://example.org/model.pt"
            hash_val: "0123"
            hash_type: "md5"
        <BLANKLINE>
    """
    lines = [
        "large_files:",
        f"  - path: {_yaml_str(path)}",
        f"    url: {_yaml_str(url or _PLACEHOLDER_URL)}",
        f"    hash_val: {_yaml_str(hash_val or '')}",
        f"    hash_type: {_yaml_str('md5')}",
    ]
    return "\n".join(lines) + "\n"


def _read_metadata(root: Path) -> dict:
    """``configs/metadata.json`` of a bundle, checked the way the zoo's CI checks it (version in the changelog)."""
    if not (root / "LICENSE").is_file():
        raise FileNotFoundError(f"bundle {root}: LICENSE is missing (the model zoo requires one).")
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"bundle {root}: configs/metadata.json is missing.")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{meta_file}: 'version' is missing or not a string.")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise ValueError(
            f"{meta_file}: version {version!r} is not in its changelog ({sorted(changelog or {})}); "
            "add a changelog entry for it."
        )
    return meta


def _bundle_files(root: Path) -> list[str]:
    """The allow-listed files of a bundle as sorted POSIX paths relative to ``root``."""
    files = [name for name in ALLOWED_FILES if (root / name).is_file()]
    for folder in ALLOWED_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = [d for d in dirnames if d not in _SKIPPED_NAMES and not d.startswith(".")]
            for fname in filenames:
                if fname in _SKIPPED_NAMES or fname.startswith(".") or fname.endswith((".pyc", ".pyo")):
                    continue
                full = Path(dirpath, fname)
                if full.is_file():
                    files.append(full.relative_to(root).as_posix())
    return sorted(files)


def package_modules() -> dict[str, Path]:
    """``dotted module name -> source file`` for every module of this package (caches and hidden files skipped).

    Example::

        >>> package_modules()["ideal_components.data.sampler"] == _PACKAGE_ROOT / "data" / "sampler.py"
        True
    """
    modules = {}
    for src in sorted(_PACKAGE_ROOT.rglob("*.py")):
        rel = src.relative_to(_PACKAGE_ROOT)
        if any(part in _SKIPPED_NAMES or part.startswith(".") for part in rel.parts):
            continue
        parts = [_PACKAGE_ROOT.name, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = src
    return modules


_DOTTED = re.compile(rf"\b{_PACKAGE_ROOT.name}(?:\.[A-Za-z_]\w*)*")


def _resolve(dotted: str, modules: dict[str, Path]) -> set[str]:
    """The module that ``dotted`` (a module, or an attribute of one) lives in, with its parent packages."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()  # an attribute (``sampler.batches_per_pass``): the longest prefix that is a module
    return {".".join(parts[:n]) for n in range(1, len(parts) + 1)}


def _dotted_attribute(node: ast.AST) -> str | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(names)]) if isinstance(node, ast.Name) else None


def _code_references(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names of this package that ``tree`` imports (anywhere, also inside functions) or reaches by attribute
    access (``ideal_components.handlers.summary_writer(...)``, as bundle expressions do)."""
    root = _PACKAGE_ROOT.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == root)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == root:
                yield base
                yield from (f"{base}.{a.name}" for a in node.names)  # ``from pkg import module`` names a module
        elif isinstance(node, ast.Attribute):
            dotted = _dotted_attribute(node)
            if dotted and dotted.split(".")[0] == root:
                yield dotted


def _json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)


def config_references(configs_dir: str | os.PathLike) -> set[str]:
    """The modules of this package (with their parent packages) that the JSON configs of ``configs_dir`` name: in
    ``$`` expressions (imports and ``ideal_components.x.y`` attribute chains), ``_target_`` values and any other
    string that spells a dotted name of the package."""
    modules, found = package_modules(), set()
    for path in sorted(Path(configs_dir).glob("*.json")):
        for text in _json_strings(json.loads(path.read_text(encoding="utf-8"))):
            names = set(_DOTTED.findall(text))
            if text.startswith("$"):
                try:
                    names.update(_code_references(ast.parse(text[1:].strip()), "", False))
                except SyntaxError:
                    pass  # not Python on its own (the regular expression above still saw its names)
            for name in names:
                found |= _resolve(name, modules)
    return found


def reached_modules(configs_dir: str | os.PathLike) -> list[str]:
    """The sorted modules of this package that the configs of ``configs_dir`` need: :func:`config_references`, and
    every module those import, transitively (imports inside functions included, so a code path that runs only in
    some configurations still finds its module). The package's lazy ``__getattr__`` imports are not followed: a
    module reached only that way is named by the configs themselves.

    Example (from the repository root)::

        >>> mods = reached_modules("bundles/ideal_acdc/configs")
        >>> "ideal_components.losses" in mods, "ideal_components.synthetic" in mods
        (True, False)
    """
    modules = package_modules()
    todo, seen = sorted(config_references(configs_dir)), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        src = modules[name]
        tree = ast.parse(src.read_text(encoding="utf-8"), filename=str(src))
        for ref in _code_references(tree, name, src.name == "__init__.py"):
            todo.extend(sorted(_resolve(ref, modules) - seen))
    return sorted(seen)


def vendored_files(configs_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(path in the archive, source file)`` of every module that the configs of ``configs_dir`` reach
    (:func:`reached_modules`), as packed under ``scripts/``.

    Example (from the repository root)::

        >>> files = vendored_files("bundles/ideal_acdc/configs")
        >>> ("scripts/ideal_components/losses.py", _PACKAGE_ROOT / "losses.py") in files
        True
    """
    modules = package_modules()
    files = []
    for name in reached_modules(configs_dir):
        src = modules[name]
        files.append((f"{SCRIPTS_DIR}/{_PACKAGE_ROOT.name}/{src.relative_to(_PACKAGE_ROOT).as_posix()}", src))
    return sorted(files)


def scripts_init(version: str) -> str:
    """The ``scripts/__init__.py`` of an archive: puts the packed copy of the package first on the import path.

    Args:
        version: the package version that is packed (written into the docstring).
    """
    return f'''"""The code of this bundle: a copy of ``{_PACKAGE_ROOT.name}`` {version}, packed by
``python -m {_PACKAGE_ROOT.name} package_bundle`` so that the bundle runs where only the packages of its metadata are
installed. The configs import ``scripts`` first; this puts the copy ahead of any installed version of the package,
so that the code is the code the configs were packed with.
"""

import os
import sys
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_loaded = sys.modules.get("{_PACKAGE_ROOT.name}")
if _loaded is not None and not os.path.abspath(getattr(_loaded, "__file__", "") or "").startswith(_HERE):
    warnings.warn(f"{_PACKAGE_ROOT.name} was imported from {{_loaded.__file__}}, not from this bundle's copy.")
'''


def _zip_info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so that the permission bits below are honoured
    info.external_attr = (0o100644 & 0xFFFF) << 16
    return info


def package_bundle(
    bundle: str | os.PathLike,
    out: str | os.PathLike = "dist",
    weights: str | os.PathLike | None = None,
    url: str | None = None,
    include_weights: bool = False,
) -> str:
    """Archive a bundle as the MONAI model zoo does: ``<out>/<name>_v<version>.zip`` with one top folder ``<name>/``.

    The bundle name is the folder name, the version is ``configs/metadata.json``'s ``version`` (which must be in its
    ``changelog``). Only ``LICENSE``, ``configs/*`` and ``docs/*`` are packed (hidden files and caches skipped), plus
    a generated ``large_files.yml`` listing ``models/model.pt`` with ``url`` and the md5 of ``weights``, and the
    code its configs reach (:func:`vendored_files` and :func:`scripts_init` under ``scripts/``). Members are
    sorted and carry fixed timestamps, so the same inputs give the same bytes; the archive is written to a
    temporary file next to the target and moved into place with ``os.replace``.

    Args:
        bundle: the bundle folder (``bundles/ideal_acdc``).
        out: the folder the archive is written into (created when missing).
        weights: the trained weights (a state dict of ``network_def``, e.g. ``<run>/models/model.pt``). Its md5 goes
            into ``large_files.yml``; without it ``hash_val`` is empty.
        url: where the weights are (or will be) published; without it ``large_files.yml`` holds a placeholder.
        include_weights: also pack ``weights`` as ``<name>/models/model.pt`` (an offline share; the zoo itself keeps
            files over 25 MB out of the repository). ``large_files.yml`` still lists them with their md5, so
            ``monai.bundle download_large_files`` finds the file present and skips it.

    Returns:
        the path of the archive.

    Raises:
        FileNotFoundError: when the bundle, its LICENSE, its metadata.json or ``weights`` is missing.
        ValueError: when metadata's version is not in its changelog, or ``include_weights`` is set without weights.

    Example::

        python -m ideal_components package_bundle bundles/ideal_acdc --out dist --weights runs/acdc/models/model.pt
        python -m monai.bundle download --name ideal_acdc --url file://$PWD/dist/ideal_acdc_v0.9.0.zip --bundle_dir b
    """
    root = Path(bundle).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder {bundle} does not exist.")
    name = root.name
    meta = _read_metadata(root)
    version = meta["version"]
    weights_path = None if weights is None else Path(weights)
    if weights_path is not None and not weights_path.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist.")
    if include_weights and weights_path is None:
        raise ValueError("include_weights=True needs `weights` (the model.pt to pack).")
    hash_val = None if weights_path is None else md5sum(weights_path)

    from ideal_components import __version__

    members: list[tuple[str, Path | bytes]] = [(rel, root / rel) for rel in _bundle_files(root)]
    members.append(("large_files.yml", large_files_yml(WEIGHTS_PATH, url=url, hash_val=hash_val).encode("utf-8")))
    members.append((f"{SCRIPTS_DIR}/__init__.py", scripts_init(__version__).encode("utf-8")))
    members += vendored_files(root / "configs")
    if include_weights and weights_path is not None:
        members.append((WEIGHTS_PATH, weights_path))
    members.sort(key=lambda m: m[0])

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(out_dir))
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w") as zf:
                for rel, src in members:
                    info = _zip_info(f"{name}/{rel}")
                    if isinstance(src, bytes):
                        zf.writestr(info, src)
                    else:
                        info.file_size = src.stat().st_size  # lets zipfile switch to zip64 for huge weights
                        with open(src, "rb") as fin, zf.open(info, "w") as fout:
                            for chunk in iter(lambda: fin.read(1 << 20), b""):
                                fout.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the archive the usual permissions
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(target)
