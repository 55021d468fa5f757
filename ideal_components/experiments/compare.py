"""Paired comparisons of sweep methods: does the dense local pre-training help, and with which fine-tuning?

The methods of a sweep (:data:`~ideal_components.experiments.methods.METHODS`) share everything but one factor in
pairs: the pre-training (none, global, local) or the fine-tuning (supervised, cross pseudo-labels). Cells of the
same label fraction and seed use the same data, labelled subset and seed, so their test Dice can be compared pair by
pair, which removes the seed-to-seed spread that both share. :data:`COMPARISONS` lists the pairs that answer the
questions of issue #10; :func:`paired_differences` computes, for each comparison and label fraction, the mean paired
difference ``A - B`` over the seeds done by both, a Student-t 95 % interval (the honest interval for 3-5 seeds: a
bootstrap of 3 values is degenerate) and the sign count; :func:`paired_markdown` writes the table.

Example::

    rows = paired_differences("runs/sweep_hard", fractions=["2.5", "10", "100"])
    print(paired_markdown(rows))
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["COMPARISONS", "t_interval", "paired_differences", "paired_markdown"]

#: (method A, method B, the question A - B answers), in table order
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("local_cl", "supervised", "local pre-training vs random init (supervised fine-tuning)"),
    ("ideal", "cps", "local pre-training vs random init (cross-pseudo-label fine-tuning): IDEAL vs CPS"),
    ("local_cl", "global_cl", "local vs global pre-training (supervised fine-tuning)"),
    ("ideal", "global_cps", "local vs global pre-training (cross-pseudo-label fine-tuning)"),
    ("global_cl", "supervised", "global pre-training vs random init (supervised fine-tuning)"),
    ("global_cps", "cps", "global pre-training vs random init (cross-pseudo-label fine-tuning)"),
    ("cps", "supervised", "cross pseudo-labels vs supervised fine-tuning (random init)"),
    ("ideal", "supervised", "IDEAL vs supervised from random init"),
    ("ideal", "pcl", "IDEAL vs PCL pre-training (both cross-pseudo-label fine-tuning)"),
    ("ideal", "chaitanya", "IDEAL vs Chaitanya et al. pre-training (both cross-pseudo-label fine-tuning)"),
    ("local_cl", "pcl_sup", "local vs PCL pre-training (supervised fine-tuning, PCL as published)"),
    ("local_cl", "chaitanya_sup", "local vs Chaitanya et al. pre-training (supervised fine-tuning, as published)"),
)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (``nan`` bounds for fewer than 2 values).

    Example:
        >>> lo, hi = t_interval([1.0, 2.0, 3.0])
        >>> round(lo, 3), round(hi, 3)
        (-0.484, 4.484)
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _cell_value(out: Path, method: str, fraction: str, seed: int, metric: str) -> float | None:
    summary = out / method / f"f{fraction}" / f"seed{seed}" / "eval" / "metrics_summary.json"
    if not summary.is_file():
        return None
    try:
        value = json.loads(summary.read_text())["metrics"][metric]["mean"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{summary}: corrupt metrics summary, no mean {metric!r} ({e}).") from None
    return float(value)


def paired_differences(
    out: str,
    fractions: Sequence[str],
    seeds: Sequence[int] | None = None,
    metric: str = "dice",
    comparisons: Sequence[tuple[str, str, str]] = COMPARISONS,
) -> list[dict[str, Any]]:
    """One row per (comparison, fraction) with both methods done for at least one common seed.

    Args:
        out: the sweep's folder (``<method>/f<fraction>/seed<k>/eval/metrics_summary.json``).
        fractions: label-fraction keys, e.g. ``["2.5", "10", "100"]``.
        seeds: the seeds to use (default: every ``seed<k>`` folder found).
        metric: the metric of ``metrics_summary.json`` (``"dice"``, ``"hd95"``, ...).
        comparisons: ``(A, B, question)`` triples.

    Returns:
        dicts ``{"a", "b", "question", "fraction", "seeds", "differences", "mean", "ci95", "a_better",
        "b_better"}`` (differences ``A - B`` per common seed).
    """
    root = Path(out)
    rows = []
    for a, b, question in comparisons:
        for f in fractions:
            found = sorted(
                int(p.name[4:])
                for p in root.joinpath(a, f"f{f}").glob("seed*")
                if p.name[4:].isdigit() and (seeds is None or int(p.name[4:]) in seeds)
            )
            pairs = []
            for s in found:
                va, vb = _cell_value(root, a, f, s, metric), _cell_value(root, b, f, s, metric)
                if va is not None and vb is not None:
                    pairs.append((s, va - vb))
            if not pairs:
                continue
            diffs = [d for _, d in pairs]
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "question": question,
                    "fraction": str(f),
                    "seeds": [s for s, _ in pairs],
                    "differences": diffs,
                    "mean": float(np.mean(diffs)),
                    "ci95": t_interval(diffs),
                    "a_better": sum(d > 0 for d in diffs),
                    "b_better": sum(d < 0 for d in diffs),
                }
            )
    return rows


def paired_markdown(rows: Sequence[dict[str, Any]], metric: str = "dice") -> str:
    """The Markdown table of :func:`paired_differences` rows.

    Example:
        >>> row = {"a": "ideal", "b": "cps", "question": "q", "fraction": "10", "seeds": [0, 1],
        ...        "differences": [0.01, 0.03], "mean": 0.02, "ci95": (-0.1, 0.14), "a_better": 2, "b_better": 0}
        >>> "| q | 10% | ideal - cps | 2 | +0.020 [-0.100, +0.140] | 2 / 0 | +0.010 +0.030 |" in paired_markdown([row])
        True
    """

    def fmt(v: float) -> str:
        return f"{v:+.3f}" if math.isfinite(v) else "n/a"

    lines = [
        f"| question | labels | A - B | seeds | mean {metric} difference [95 % t-interval] | A better / B better "
        "| per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['question']} | {r['fraction']}% | {r['a']} - {r['b']} | {len(r['seeds'])} "
            f"| {fmt(r['mean'])} [{fmt(lo)}, {fmt(hi)}] | {r['a_better']} / {r['b_better']} "
            f"| {' '.join(fmt(d) for d in r['differences'])} |"
        )
    lines += [
        "",
        "Paired by seed: the two cells of a pair share the label fraction, the labelled volumes and the seed. The "
        "interval is Student's t over the per-seed differences (n - 1 degrees of freedom); an interval that "
        "contains 0 means no difference was resolved.",
    ]
    return "\n".join(lines) + "\n"
