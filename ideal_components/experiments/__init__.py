"""Experiments: the label-fraction sweep (plan, run, results, paired comparisons) and the representation probe.

- :mod:`.methods`: the methods compared and the configs of each; :mod:`.arguments`: the command-line values;
- :mod:`.plan`: the steps of a sweep, with their ``monai.bundle run`` commands;
- :mod:`.sweep`: runs a plan, resumably (``python -m ideal_components sweep``);
- :mod:`.results`: the results table (Markdown, CSV) with per-cell intervals and the paper's numbers;
- :mod:`.compare`: paired differences between methods, by seed;
- :mod:`.probe`: a frozen encoder's per-pixel linear probe, two encoders compared
  (``python -m ideal_components probe``).

The probe is imported on first use (it needs torch); the sweep's modules need only the standard library and numpy.
"""

from __future__ import annotations

from .arguments import parse_methods, parse_overrides, parse_seeds, parse_sweep_fractions
from .compare import COMPARISONS, paired_differences, paired_markdown, t_interval
from .methods import METHODS, MethodSpec
from .plan import RESERVED_KEYS, SHARED_KEYS, SweepPlan, SweepStep, SweepStepError, format_plan, plan_sweep
from .results import collect_results, results_csv, results_markdown, write_results
from .sweep import sweep

__all__ = [
    "COMPARISONS",
    "METHODS",
    "RESERVED_KEYS",
    "SHARED_KEYS",
    "MethodSpec",
    "SweepPlan",
    "SweepStep",
    "SweepStepError",
    "collect_results",
    "format_plan",
    "paired_differences",
    "paired_markdown",
    "parse_methods",
    "parse_overrides",
    "parse_seeds",
    "parse_sweep_fractions",
    "plan_sweep",
    "results_csv",
    "results_markdown",
    "sweep",
    "t_interval",
    "write_results",
]
