"""The sweep's command-line values: methods, seeds, label fractions and overrides as python-fire passes them
(``"a,b"`` becomes a tuple, ``"0"`` an int), and values written back as ``monai.bundle run`` arguments.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from typing import Any

from .methods import METHODS

__all__ = ["parse_methods", "parse_seeds", "parse_sweep_fractions", "parse_overrides", "cli_literal", "cli_args"]


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.replace(";", ",").split(",") if s.strip()]
    if isinstance(value, (list, tuple, set)):
        out: list[Any] = []
        for v in value:
            out += _items(v) if isinstance(v, str) else [v]
        return out
    return [value]


def parse_methods(methods: Any) -> list[str]:
    """``"supervised,ideal"``, a tuple or a list -> method names (order kept, duplicates dropped).

    Example:
        >>> parse_methods(("Supervised", "global-cl", "ideal", "ideal"))
        ['supervised', 'global_cl', 'ideal']
    """
    names: list[str] = []
    for m in _items(methods):
        name = str(m).strip().lower().replace("-", "_")
        if name not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {list(METHODS)}.")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no method given; choose from {list(METHODS)}.")
    return names


def parse_seeds(seeds: Any) -> list[int]:
    """``0``, ``"0,1,2"``, ``(0, 1, 2)`` -> ``[0, 1, 2]`` (order kept, duplicates dropped).

    Example:
        >>> parse_seeds("0, 2,1"), parse_seeds(3), parse_seeds((0, "1"))
        ([0, 2, 1], [3], [0, 1])
    """
    out: list[int] = []
    for s in _items(seeds):
        try:
            f = float(s)
        except (TypeError, ValueError):
            raise ValueError(f"seed {s!r} is not an integer.") from None
        if isinstance(s, bool) or not math.isfinite(f) or f != int(f) or f < 0:
            raise ValueError(f"seed {s!r} must be a non-negative integer.")
        if int(f) not in out:
            out.append(int(f))
    if not out:
        raise ValueError("no seed given.")
    return out


def parse_sweep_fractions(fractions: Any, dataset: str | None = None) -> list[str]:
    """Label fractions as sorted datalist key strings: ``"1.25,10"``, ``(1.25, 10)``, ``10`` or ``None``.

    ``None`` means the dataset's published fractions (``dataset`` is then required).

    Example:
        >>> parse_sweep_fractions((10, "1.25", 100.0))
        ['1.25', '10', '100']
    """
    from ideal_components.data.splits import parse_fractions

    if fractions is None:
        if dataset is None:
            raise ValueError("give the label fractions (the dataset, hence its default fractions, is unknown).")
        return parse_fractions(None, dataset)
    items = _items(fractions)
    if not items:
        raise ValueError("no label fraction given.")
    return parse_fractions([str(f).rstrip("%") for f in items], dataset or "acdc")


def parse_overrides(overrides: Any, name: str = "overrides") -> dict[str, Any]:
    """``None``, a dict or a Python-literal string (``"{'backbone': 'resnet18'}"``) -> a JSON-able dict.

    Example:
        >>> parse_overrides("{'spatial_size': (64, 64), 'max_epochs': 2}")
        {'spatial_size': [64, 64], 'max_epochs': 2}
    """
    if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
        return {}
    if isinstance(overrides, str):
        try:
            overrides = ast.literal_eval(overrides.strip())
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{name} must be a dict or a Python dict literal, got {overrides!r} ({e}).") from None
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{name} must be a dict of bundle ids, got {type(overrides).__name__}: {overrides!r}.")
    try:
        return json.loads(json.dumps({str(k): v for k, v in overrides.items()}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold plain values (numbers, strings, lists, dicts): {e}.") from None


def cli_literal(value: Any, top: bool = True) -> str:
    """A value as ``monai.bundle run`` (python-fire) reads it back: strings bare, containers as Python literals."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return value if top else repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(cli_literal(v, False) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{cli_literal(str(k), False)}:{cli_literal(v, False)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot pass {value!r} on the command line.")


def cli_args(values: Mapping[str, Any]) -> list[str]:
    """``{"max_epochs": 8, "spatial_size": [128, 128]}`` -> ``["--max_epochs", "8", "--spatial_size", "[128,128]"]``."""
    args: list[str] = []
    for k, v in values.items():
        args += [f"--{k}", cli_literal(v)]
    return args
