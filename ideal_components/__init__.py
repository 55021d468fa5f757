"""IDEAL: dense local contrastive pre-training and cross-pseudo-label fine-tuning, as MONAI bundle components.

Submodules are imported on first attribute access (``ideal_components.data.slices.expand_to_slices``), so that bundle
expressions can use ``"$import ideal_components"`` alone and the command line stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.9.0"

_SUBMODULES = (
    "batchnorm",
    "cli",
    "cpu",
    "distributed",
    "data",
    "encoders",
    "engines",
    "evaluation",
    "experiments",
    "export",
    "facts",
    "handlers",
    "inference",
    "losses",
    "networks",
    "reporting",
    "rival_engines",
    "rival_losses",
    "rival_networks",
    "synthetic",
    "transforms",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
