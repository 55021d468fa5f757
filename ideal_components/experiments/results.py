"""The results of a sweep: the cells' test metrics collected, the Markdown and CSV tables (mean ± std, a Student-t
95 % interval per cell, the paper's numbers where published) and the paired differences of :mod:`.compare`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ideal_components.evaluation.metrics import METRIC_NAMES
from ideal_components.facts import PAPER_BASELINES, PAPER_RESULTS
from ideal_components.reporting.figures import _pyplot, _save_figure
from ideal_components.reporting.tables import _fmt, _read_json
from ideal_components.utils import atomic_write_text

from .compare import paired_differences, paired_markdown, t_interval
from .methods import METHODS
from .plan import SUMMARY_REL, SweepPlan

__all__ = ["collect_results", "results_markdown", "results_csv", "plot_results", "write_results"]

#: metrics shown in the Markdown table: key -> (label, has a unit)
_TABLE_METRICS: dict[str, tuple[str, bool]] = {"dice": ("DSC ↑", False), "hd95": ("HD95", True), "asd": ("ASD", True)}


# ----------------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------------
def _paper_values(method: str, dataset: str | None, fraction: str) -> dict[str, float]:
    if dataset is None:
        return {}
    if method == "ideal":
        return dict(PAPER_RESULTS.get(dataset, {}).get(fraction, {}))
    return dict(PAPER_BASELINES.get(method, {}).get(dataset, {}).get(fraction, {}))


def _cell_metrics(summary_file: Path) -> dict[str, Any]:
    summary = _read_json(summary_file)
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"{summary_file}: corrupt metrics summary, no 'metrics' object.")
    values: dict[str, Any] = {}
    for m in METRIC_NAMES:
        entry = metrics.get(m)
        if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
            values[m] = float(entry["mean"])
        elif m in _TABLE_METRICS:
            raise ValueError(f"{summary_file}: corrupt metrics summary, no mean {m!r}.")
    values["units"] = str(summary.get("units", "mm"))
    values["hd95_convention"] = str(summary.get("hd95_convention", "unknown"))
    values["num_volumes"] = summary.get("num_volumes")
    return values


def collect_results(
    out: str,
    methods: Sequence[str] | None = None,
    fractions: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, fraction) from the cells' ``eval/metrics_summary.json`` under ``out``.

    Each seed contributes its cell's mean over the test volumes; the row holds the mean and (population, ``ddof=0``)
    std over the seeds done. The rows are the planned (method, fraction) pairs (``methods`` x ``fractions``, shown
    even before any seed is done) plus every other cell found under ``out``.

    Args:
        out: the sweep's folder.
        methods, fractions, seeds: the planned ones (for the row order and the "seeds done / planned" count).
        dataset: ``"acdc"`` / ``"mmwhs"`` for the paper's reference numbers (``None``: none).

    Returns:
        dicts ``{"method", "label", "fraction", "seeds_done" (list), "seeds_planned" (int), "<metric>_mean",
        "<metric>_std", "units", "hd95_convention", "paper_dice", "paper_hd", "paper_asd", "cells"}``.

    Example:
        >>> rows = collect_results("runs/sweep_acdc", ["ideal"], ["10"], [0, 1], "acdc")  # doctest: +SKIP
        >>> rows[0]["dice_mean"], rows[0]["paper_dice"]  # doctest: +SKIP
        (0.81, 0.879)
    """
    root = Path(out)
    planned = [(m, f) for m in (methods or []) for f in (fractions or [])]
    found: dict[tuple[str, str], dict[int, Path]] = {}
    for m in METHODS:
        for fdir in sorted(root.joinpath(m).glob("f*")) if root.joinpath(m).is_dir() else []:
            for sdir in sorted(fdir.glob("seed*")):
                summary = sdir.joinpath(*SUMMARY_REL)
                if summary.is_file() and sdir.name[4:].isdigit():
                    found.setdefault((m, fdir.name[1:]), {})[int(sdir.name[4:])] = summary
    extra = sorted((k for k in found if k not in planned), key=lambda k: (list(METHODS).index(k[0]), float(_num(k[1]))))
    rows = []
    for m, f in planned + extra:
        cells = found.get((m, f), {})
        use = sorted(cells) if seeds is None or (m, f) not in planned else [s for s in sorted(cells) if s in seeds]
        per_seed = [_cell_metrics(cells[s]) for s in use]
        row: dict[str, Any] = {
            "method": m,
            "label": METHODS[m].label,
            "fraction": f,
            "seeds_done": use,
            "seeds_planned": len(seeds) if seeds is not None and (m, f) in planned else len(use),
            "cells": [str(cells[s].parent.parent) for s in use],
        }
        for metric in METRIC_NAMES:
            vals = [v[metric] for v in per_seed if metric in v]
            row[f"{metric}_mean"] = float(np.mean(vals)) if vals else float("nan")
            row[f"{metric}_std"] = float(np.std(vals)) if vals else float("nan")
            row[f"{metric}_values"] = vals
        units = sorted({v["units"] for v in per_seed})
        row["units"] = units[0] if len(units) == 1 else ("mixed: " + "/".join(units) if units else "")
        conv = sorted({v["hd95_convention"] for v in per_seed})
        row["hd95_convention"] = "/".join(conv)
        paper = _paper_values(m, dataset, f)
        for k in ("dice", "hd", "asd"):
            row[f"paper_{k}"] = paper.get(k)
        rows.append(row)
    return rows


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _unit_label(rows: Sequence[Mapping[str, Any]]) -> str:
    units = sorted({str(r["units"]) for r in rows if r.get("units")})
    if not units:
        return "mm"
    if len(units) == 1:
        return "voxels" if units[0].startswith("vox") else units[0]
    return "mixed units"


def results_markdown(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """The Markdown table of :func:`collect_results` rows (mean ± std over seeds, paper reference columns).

    Example:
        >>> row = {"label": "IDEAL", "fraction": "10", "seeds_done": [0, 1], "seeds_planned": 2, "units": "mm",
        ...        "hd95_convention": "medpy", "paper_dice": 0.879, "paper_hd": 2.094, "paper_asd": 0.556,
        ...        **{f"{m}_{s}": 0.5 for m in METRIC_NAMES for s in ("mean", "std")}}
        >>> "| IDEAL | 10% | 2/2 | 0.500 ± 0.500 |" in results_markdown([row])
        True
    """
    unit = _unit_label(rows)
    head = ["Method", "Labels", "Seeds"]
    head += [lab if not has_unit else f"{lab} ({unit}) ↓" for lab, has_unit in _TABLE_METRICS.values()]
    head.insert(4, "DSC 95 % CI")
    head += ["Paper DSC", "Paper HD [a]", "Paper ASD [a]"]
    lines = [f"# {title or 'Label-fraction sweep'}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = len(r["seeds_done"])
        cells = [str(r["label"]), f"{r['fraction']}%", f"{n}/{r['seeds_planned']}"]
        for m in _TABLE_METRICS:
            cells.append(_fmt(r[f"{m}_mean"], r[f"{m}_std"]) if n else "n/a")
            if n and not str(r.get("units", "mm")).startswith(("mm", "vox")) and r.get("units"):
                cells[-1] += f" ({r['units']})"
        lo, hi = t_interval(r.get("dice_values", []))
        cells.insert(4, f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else "n/a")
        for k in ("dice", "hd", "asd"):
            v = r.get(f"paper_{k}")
            cells.append(_fmt(v) if isinstance(v, (int, float)) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    conventions = sorted({str(r["hd95_convention"]) for r in rows if r.get("hd95_convention")})
    lines += [
        "",
        "Mean ± std (population, ddof=0) over the seeds done; each seed's value is that cell's mean over the test "
        "volumes (each volume: mean over its foreground classes). DSC 95 % CI: Student's t interval of the mean over "
        "the seeds (n/a below 2 seeds). "
        f"HD95 and ASD in {unit} (HD95 convention: {', '.join(conventions) or 'n/a'}). "
        "A structure missing from the prediction or the reference counts with Dice 0 and the volume diagonal as "
        "distance.",
        "",
        "Paper columns: IDEAL (ICASSP 2023, Table 1) on the IDEAL rows; the DSC its comparison table quotes for "
        "Global CL, Chaitanya et al. and PCL on the rows that fine-tune them as published (Global CL, Chaitanya et "
        "al., PCL: supervised), where published; – where none. Those numbers come from each method's own code and "
        "protocol (real data, their schedules and augmentations; PCL's 1.25 % is 2 labelled patients under 5-fold "
        "cross-validation), not from this sweep's protocol: compare the rows of this table with each other. "
        '[a] The paper\'s "HD" (about 2 on ACDC) is probably HD95 in voxels '
        "(medpy without voxel spacing), and its ASD likewise: compare with an evaluation in voxel units "
        "(`--overrides \"{'voxel_units': True}\"`), not with the mm columns.",
    ]
    return "\n".join(lines) + "\n"


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of :func:`collect_results` rows (one per (method, fraction)).

    Example:
        >>> results_csv([]).splitlines()[0].split(",")[:5]
        ['method', 'label', 'fraction', 'seeds_done', 'seeds_planned']
    """
    columns = ["method", "label", "fraction", "seeds_done", "seeds_planned"]
    columns += [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")]
    columns += ["units", "hd95_convention", "paper_dice", "paper_hd", "paper_asd", "seeds", "cells"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        row = dict(r)
        row["seeds"] = " ".join(str(s) for s in r["seeds_done"])
        row["seeds_done"] = len(r["seeds_done"])
        row["cells"] = " ".join(r["cells"])
        for m in METRIC_NAMES:
            for s in ("mean", "std"):
                v = r[f"{m}_{s}"]
                row[f"{m}_{s}"] = f"{v:.6g}" if math.isfinite(v) else ""
        for k in ("dice", "hd", "asd"):
            row[f"paper_{k}"] = "" if r.get(f"paper_{k}") is None else r[f"paper_{k}"]
        w.writerow(row)
    return buf.getvalue()


def plot_results(
    rows: Sequence[Mapping[str, Any]],
    path: str,
    title: str | None = None,
    fraction_labels: Mapping[str, str] | None = None,
    metric: str = "dice",
) -> bool:
    """Test ``metric`` against the label fraction, one line per method: the mean over the seeds done with its
    Student-t 95 % interval as error bars (a single seed: the point alone). Written atomically as a PNG.

    Args:
        rows: :func:`collect_results` rows (``label``, ``fraction``, ``<metric>_values``).
        path: the PNG.
        title: the figure's title.
        fraction_labels: tick label per fraction key (e.g. ``{"2.5": "1 volume"}``); default ``"<fraction> %"``.
        metric: the metric key.

    Returns:
        False when no row has a value (nothing written), True otherwise.

    Example:
        >>> rows = [{"label": "CPS", "fraction": "10", "dice_values": [0.6, 0.62, 0.58]}]
        >>> plot_results(rows, "results.png")  # doctest: +SKIP
        True
    """
    fractions = sorted({str(r["fraction"]) for r in rows if r.get(f"{metric}_values")}, key=_num)
    if not fractions:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = list(dict.fromkeys(str(r["label"]) for r in rows if r.get(f"{metric}_values")))
    width = 0.5 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs, means, errs = [], [], [[], []]
        for r in rows:
            values = r.get(f"{metric}_values") or []
            if str(r["label"]) != label or not values:
                continue
            mean, (lo, hi) = float(np.mean(values)), t_interval(values)
            xs.append(fractions.index(str(r["fraction"])) + (i - (len(labels) - 1) / 2) * width)
            means.append(mean)
            errs[0].append(mean - lo if math.isfinite(lo) else 0.0)
            errs[1].append(hi - mean if math.isfinite(hi) else 0.0)
        n = max(len(r.get(f"{metric}_values") or []) for r in rows if str(r["label"]) == label)
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=f"{label} ({n} seeds)")
    ax.set_xticks(range(len(fractions)))
    ax.set_xticklabels([(fraction_labels or {}).get(f, f"{f} %") for f in fractions])
    ax.set_xlabel("labelled data")
    name = {"dice": "Dice", "hd95": "HD95", "asd": "ASD"}.get(metric, metric)
    ax.set_ylabel(f"test {name} (mean, 95 % t-interval over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    _save_figure(fig, path)
    return True


def write_results(plan: SweepPlan, title: str | None = None) -> tuple[str, str]:
    """Collect the results of ``plan.out`` and write ``results.md``, ``results.csv`` and the plot ``results.png``
    (:func:`plot_results`; once a cell is done), atomically.

    Returns:
        ``(markdown text, path of results.md)``.
    """
    rows = collect_results(plan.out, plan.methods, plan.fractions, plan.seeds, plan.dataset)
    dataset = (plan.dataset or Path(plan.settings["bundle"]).name).upper()
    md = results_markdown(rows, title=title or f"{dataset} label-fraction sweep")
    paired = paired_differences(plan.out, plan.fractions, plan.seeds)
    if paired:
        md += "\n## Paired differences (test DSC)\n\n" + paired_markdown(paired)
    atomic_write_text(plan.results_md, md)
    atomic_write_text(plan.results_csv, results_csv(rows))
    plot_results(rows, str(Path(plan.out) / "results.png"), title=title or f"{dataset} label-fraction sweep")
    return md, plan.results_md
