"""Write the MM-WHS bundle's configs from the ACDC bundle's, and both bundles' ``docs/README.md`` from one template.

The two bundles run the same method on different data. ``bundles/ideal_acdc/configs`` is the source;
``bundles/ideal_mmwhs/dataset_values.json`` holds, per config file, the values that are MM-WHS's own (label fraction,
classes, image size and spacing, the inference orientation, the metadata's texts), each under its MONAI id
(``#``-separated, list positions as numbers). This script copies every file of ACDC's ``configs/`` to MM-WHS's
``configs/`` with those values put in, so that each bundle stays self-contained (its zoo archive holds only its own
files) while a change to the method is made once.

The READMEs are written from ``bundles/README.template.md`` (next to the bundles, outside both, so that no archive
carries it): each ``{{key}}`` is filled from the bundle's own configs (default label fraction, image size, spacing,
classes, the metadata's references: the README cannot disagree with the configs) or from the ``"docs/README.md"``
section of the bundle's ``dataset_values.json`` (the dataset's prose: its name, preparation commands, paper figures;
ACDC's file holds only that section, since its configs are the source)::

    python tools/sync_bundles.py           # after changing ACDC's configs or the template: rewrite what is stale
    python tools/sync_bundles.py --check   # exit 1, naming the files, when a generated file is not what it writes

An id of ``dataset_values.json`` must already exist in ACDC's config (a renamed id is an error, not a silently added
one); a ``{{key}}`` without a value, or a value the template does not use, is an error too. ``tests/test_bundles.py``
fails when the committed MM-WHS configs or either README differ from what this script writes.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "bundles" / "ideal_acdc"
TARGET = REPO / "bundles" / "ideal_mmwhs"
VALUES_FILE = "dataset_values.json"
TEMPLATE = REPO / "bundles" / "README.template.md"
README = "docs/README.md"  # the README's section in dataset_values.json, and its path in a bundle
_KEY = re.compile(r"\{\{(\w+)\}\}")


def config_text(config: Any) -> str:
    """The committed layout of a bundle's JSON config: 4-space indent, ASCII, one trailing newline."""
    return json.dumps(config, indent=4) + "\n"


def set_id(config: Any, config_id: str, value: Any) -> None:
    """Replace the value of the existing ``#``-separated id ``config_id`` in place (MONAI's own id lookup).

    Raises:
        KeyError: the id does not exist in ``config`` (a new id is refused: it would mean a renamed id in ACDC).
    """
    parser = ConfigParser(config)
    try:
        parser[config_id]
    except (KeyError, IndexError, ValueError):
        raise KeyError(f"{config_id!r}: not in the source config (was the id renamed in the ACDC bundle?)") from None
    parser[config_id] = copy.deepcopy(value)


def render(source: Path = SOURCE, target: Path = TARGET) -> dict[str, bytes]:
    """``file name -> content`` of every file of ``target/configs`` as written from ``source/configs``."""
    values = json.loads((target / VALUES_FILE).read_text(encoding="utf-8"))
    unknown = sorted(set(values) - {p.name for p in (source / "configs").iterdir()} - {"_desc_", README})
    if unknown:
        raise KeyError(f"{target / VALUES_FILE}: no config file {unknown} in {source / 'configs'}")
    out: dict[str, bytes] = {}
    for path in sorted((source / "configs").iterdir()):
        if not path.is_file():
            continue
        if path.suffix != ".json":
            out[path.name] = path.read_bytes()
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        for config_id, value in values.get(path.name, {}).items():
            set_id(config, config_id, value)
        out[path.name] = config_text(config).encode("utf-8")
    return out


def differences(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """The files of ``target/configs`` that are missing, differ from :func:`render`'s, or are not written by it."""
    wanted = render(source, target)
    present = {p.name for p in (target / "configs").iterdir() if p.is_file()}
    stale = [n for n, data in wanted.items() if n not in present or (target / "configs" / n).read_bytes() != data]
    return sorted(stale + sorted(present - set(wanted)))


def _config_values(configs: dict[str, bytes]) -> dict[str, str]:
    """The README's values that come from a bundle's configs (``file name -> content``)."""
    train, inference = json.loads(configs["train.json"]), json.loads(configs["inference.json"])
    meta = json.loads(configs["metadata.json"])
    size, pixdim = train["spatial_size"], inference["pixdim"]
    return {
        "label_fraction": f"{train['label_fraction']:g}",
        "num_classes": str(train["num_classes"]),
        "class_names": json.dumps(train["class_names"]),
        "spatial_size": json.dumps(size),
        "spatial_size_x": "x".join(str(n) for n in size),
        "pixdim": json.dumps(pixdim),
        "pixdim_mm": f"{pixdim[0]:g}",
        "references": "\n".join(f"- {ref}" for ref in meta["references"]),
    }


def render_readme(bundle: Path, configs: dict[str, bytes], template: Path = TEMPLATE) -> bytes:
    """``bundle``'s ``docs/README.md``: ``template`` with each ``{{key}}`` filled from ``configs`` (the bundle's
    config files, ``file name -> content``) and from the ``"docs/README.md"`` section of its ``dataset_values.json``.

    Raises:
        KeyError: a key of the template has no value, a value is not used by the template, or a value of
            ``dataset_values.json`` shadows one that comes from the configs.
    """
    own = json.loads((bundle / VALUES_FILE).read_text(encoding="utf-8")).get(README, {})
    derived = _config_values(configs)
    clash = sorted(set(own) & set(derived))
    if clash:
        raise KeyError(f"{bundle / VALUES_FILE}: {clash} come from the configs; remove them from {README!r}")
    values = {**derived, **own}
    text = template.read_text(encoding="utf-8")
    keys = set(_KEY.findall(text))
    missing, unused = sorted(keys - set(values)), sorted(set(own) - keys)
    if missing or unused:
        raise KeyError(
            f"{template.name} / {bundle / VALUES_FILE}: no value for {missing}; not in the template: {unused}"
        )
    return _KEY.sub(lambda m: values[m.group(1)], text).encode("utf-8")


def _configs(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((bundle / "configs").iterdir()) if p.is_file()}


def readmes(source: Path = SOURCE, target: Path = TARGET, template: Path = TEMPLATE) -> dict[Path, bytes]:
    """``README path -> content`` of both bundles as written from ``template`` (MM-WHS's from the configs that
    :func:`render` writes, so that a README never describes configs that are about to change)."""
    return {
        source / README: render_readme(source, _configs(source), template),
        target / README: render_readme(target, render(source, target), template),
    }


def readme_differences(source: Path = SOURCE, target: Path = TARGET, template: Path = TEMPLATE) -> list[Path]:
    """The READMEs that are missing or differ from :func:`readmes`'."""
    return [p for p, data in readmes(source, target, template).items() if not p.is_file() or p.read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report the files that differ (exit status 1)")
    args = parser.parse_args(argv)
    stale, wanted, where = differences(), render(), TARGET.relative_to(REPO) / "configs"
    extra = [name for name in stale if name not in wanted]
    if args.check:
        for name in stale:
            why = f"no such file in {SOURCE.relative_to(REPO) / 'configs'}" if name in extra else "run it"
            print(f"{where / name} is not what tools/sync_bundles.py writes ({why})")
        stale_readmes = readme_differences()
        for path in stale_readmes:
            print(
                f"{path.relative_to(REPO)} is not what tools/sync_bundles.py writes from {TEMPLATE.relative_to(REPO)}"
            )
        return 1 if stale or stale_readmes else 0
    for name in stale:
        if name in wanted:
            (TARGET / "configs" / name).write_bytes(wanted[name])
    print(
        f"{where}: {len(stale) - len(extra)} file(s) rewritten ({', '.join(n for n in stale if n in wanted) or 'none'})"
    )
    for path, data in readmes().items():
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"{path.relative_to(REPO)}: rewritten from {TEMPLATE.relative_to(REPO)}")
    for name in extra:
        print(f"{where / name}: not in {SOURCE.relative_to(REPO) / 'configs'}; add it there or remove it")
    return 1 if extra else 0


if __name__ == "__main__":
    sys.exit(main())
