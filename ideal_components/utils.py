"""Small shared helpers: atomic file writing, content checksums, image file stems, command-line values.

Every output of the package (prepared volumes, datalists, metrics, reports, phantoms, encoders) is written to a
temporary file in the destination folder and moved into place with ``os.replace``, so a file is either absent or
complete, never truncated by a crash or a kill.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "md5sum", "image_stem", "parse_bool", "parse_pair"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path next to ``path`` that replaces ``path`` when the ``with`` block succeeds.

    The temporary name ends with the destination's suffixes (``.nii.gz``, ``.json``, ...) so that writers that
    choose a format from the file name (nibabel, torch, matplotlib) behave as for ``path``. The destination folder is
    created. On an exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: the destination file.

    Example::

        with atomic_path("out/datalist.json") as tmp:
            with open(tmp, "w") as f:
                json.dump(datalist, f)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=str(path.parent))
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The hex md5 of a file, read in chunks (the hash the model zoo's ``large_files.yml`` uses), or of a folder's
    files (relative names and bytes, in sorted order: a DICOM series).

    Args:
        path: the file or folder.
        chunk_size: bytes read at a time.
    """
    root = Path(path)
    digest = hashlib.md5(usedforsecurity=False)
    files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else [root]
    for f in files:
        if root.is_dir():
            digest.update(f.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(chunk_size), b""):
                digest.update(chunk)
    return digest.hexdigest()


def parse_bool(value: Any, name: str) -> bool:
    """``True``/``False`` from a bool or the strings python-fire passes (``"false"``, ``"0"``, ``"yes"`` ...)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "y", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "n", "off", ""):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def parse_pair(value: Any, name: str, kind: type = float) -> tuple:
    """A number, ``"a,b"`` or a pair -> a pair of positive ``kind``."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(value) == 1:
        value = [value[0], value[0]]
    try:
        pair = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a pair of numbers, got {value!r}.") from None
    if len(pair) != 2 or any(v <= 0 for v in pair):
        raise ValueError(f"{name} must be one or two positive numbers, got {value!r}.")
    if kind is int and any(float(v) != float(o) for v, o in zip(pair, value)):
        raise ValueError(f"{name} must be integers, got {value!r}.")
    return pair


#: image file extensions that :func:`image_stem` removes (longest first where one ends another)
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz", ".gz")


def image_stem(path: str | os.PathLike) -> str:
    """The volume id of an image file: its name without folder and image extension (case-insensitive).

    Example:
        >>> image_stem("data/patient001_frame01.nii.gz"), image_stem("a/b.MHA"), image_stem("c.tif")
        ('patient001_frame01', 'b', 'c.tif')
    """
    name = os.path.basename(str(path))
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
