"""Write the MM-WHS bundle's configs from the ACDC bundle's: the method is written once, in ``bundles/ideal_acdc``.

The two bundles run the same method on different data. ``bundles/ideal_acdc/configs`` is the source;
``bundles/ideal_mmwhs/dataset_values.json`` holds, per config file, the values that are MM-WHS's own (label fraction,
classes, image size and spacing, the inference orientation, the metadata's texts), each under its MONAI id
(``#``-separated, list positions as numbers). This script copies every file of ACDC's ``configs/`` to MM-WHS's
``configs/`` with those values put in, so that each bundle stays self-contained (its zoo archive holds only its own
files) while a change to the method is made once::

    python tools/sync_bundles.py           # after changing bundles/ideal_acdc/configs: rewrite the MM-WHS configs
    python tools/sync_bundles.py --check   # exit 1, naming the files, when the MM-WHS configs are not what it writes

An id of ``dataset_values.json`` must already exist in ACDC's config (a renamed id is an error, not a silently added
one). ``tests/test_bundles.py`` fails when the committed MM-WHS configs differ from what this script writes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "bundles" / "ideal_acdc"
TARGET = REPO / "bundles" / "ideal_mmwhs"
VALUES_FILE = "dataset_values.json"


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
    unknown = sorted(set(values) - {p.name for p in (source / "configs").iterdir()} - {"_desc_"})
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
        return 1 if stale else 0
    for name in stale:
        if name in wanted:
            (TARGET / "configs" / name).write_bytes(wanted[name])
    print(
        f"{where}: {len(stale) - len(extra)} file(s) rewritten ({', '.join(n for n in stale if n in wanted) or 'none'})"
    )
    for name in extra:
        print(f"{where / name}: not in {SOURCE.relative_to(REPO) / 'configs'}; add it there or remove it")
    return 1 if extra else 0


if __name__ == "__main__":
    sys.exit(main())
