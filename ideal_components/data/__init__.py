"""Raw dataset readers, preparation, splits, 2D slice datalists and batch samplers.

The synthetic phantoms are in :mod:`ideal_components.synthetic`.

Submodules are imported on first attribute access (``ideal_components.data.slices``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = (
    "acdc",
    "checks",
    "io",
    "mmwhs",
    "partition_sampler",
    "prepare",
    "preprocessing",
    "sampler",
    "slices",
    "splits",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
