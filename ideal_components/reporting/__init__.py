"""Reporting: evaluation runs turned into tables and pictures (``python -m ideal_components report``).

- :mod:`.tables`: a run's metrics read back, the paper-layout Markdown table, the summary CSV;
- :mod:`.figures`: overlay PNGs of predictions, training curves from TensorBoard logs;
- :mod:`.report`: ``report``, which writes all of it for one or several evaluation dirs.

Submodules are imported on first attribute access (the figures need matplotlib).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("figures", "report", "tables")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
