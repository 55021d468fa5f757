"""Evaluation: per-volume segmentation metrics in physical units, the evaluator handler that writes them, and the
same metrics at the raw resolution.

- :mod:`.metrics`: Dice, HD, HD95, ASD, ASSD (medpy conventions), the empty-mask policy, aggregation;
- :mod:`.writer`: ``VolumeMetricsWriter``, the ignite handler of the bundles' ``evaluate.json``;
- :mod:`.raw_resolution`: ``raw_resolution_metrics``, predictions brought back to each raw volume's grid.

Submodules are imported on first attribute access (the metrics need only numpy and scipy).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("metrics", "raw_resolution", "writer")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
