"""Report tables: a run's per-volume metrics read back, the paper-layout Markdown table and the summary CSV.

A *run dir* is what a bundle's ``evaluate.json`` writes: ``metrics_per_volume.csv``, ``metrics_summary.json`` and
optionally the same at the raw resolution (``*_raw``). :func:`load_run` reads one (checked: a corrupt file is named);
:func:`markdown_report` and :func:`summary_csv` tabulate several side by side.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ideal_components.evaluation.metrics import METRIC_NAMES, aggregate
from ideal_components.facts import PAPER_RESULTS

__all__ = ["METRIC_LABELS", "ReportResult", "load_run", "markdown_report", "summary_csv"]

logger = logging.getLogger(__name__)

#: the table rows in the paper's layout: metric key -> (label, higher is better)
METRIC_LABELS: dict[str, tuple[str, bool]] = {
    "dice": ("DSC", True),
    "hd95": ("HD95", False),
    "hd": ("HD", False),
    "asd": ("ASD", False),
    "assd": ("ASSD", False),
}

CSV_NAME = "metrics_per_volume.csv"
SUMMARY_NAME = "metrics_summary.json"
#: written by :func:`~ideal_components.evaluation.raw_resolution.raw_resolution_metrics` (the same metrics against
#: the raw labels)
RAW_CSV_NAME = "metrics_per_volume_raw.csv"
RAW_SUMMARY_NAME = "metrics_summary_raw.json"
PREDICTIONS_DIR = "predictions"
_REQUIRED_COLUMNS = ("volume", "class_name", *METRIC_NAMES)
_ASCII = {"±": "+-", "↑": "(up)", "↓": "(down)", "–": "-", "—": "-", "→": "->"}


class ReportResult(dict):
    """The dict returned by :func:`report`; ``str()`` gives the Markdown report (what the command line prints)."""

    def __str__(self) -> str:
        text = str(self.get("markdown", ""))
        files = self.get("files", [])
        if files:
            text += "\nWritten:\n" + "\n".join(f"  {f}" for f in files)
        try:  # a terminal that cannot show "±" / arrows gets ASCII
            text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
        except (UnicodeEncodeError, LookupError):
            text = _to_ascii(text)
        return text


def _to_ascii(text: str) -> str:
    for k, v in _ASCII.items():
        text = text.replace(k, v)
    return text.encode("ascii", "replace").decode("ascii")


def _as_list(x: Any) -> list[str] | None:
    """None, a comma-separated string or a sequence (python-fire turns ``a,b`` into a tuple) -> list of str."""
    if x is None:
        return None
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return [str(s) for s in x]


def _fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    if mean is None or not math.isfinite(float(mean)):
        return "n/a"
    text = f"{float(mean):.{digits}f}"
    if std is not None:
        text += f" ± {float(std):.{digits}f}"
    return text


# ----------------------------------------------------------------------------------------------------------------
# reading a run
# ----------------------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing metrics file (written by VolumeMetricsWriter at the end of evaluation)."
        )
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read the metrics CSV ({e}).") from e
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}: corrupt metrics CSV, missing column(s) {missing} (found {columns}).")
    if not raw_rows:
        raise ValueError(f"{path}: the metrics CSV has a header but no rows (no volume was evaluated).")
    rows = []
    for line, raw in enumerate(raw_rows, start=2):
        row: dict[str, Any] = dict(raw)
        for m in METRIC_NAMES:
            try:
                row[m] = float(raw[m])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: column {m!r} is not a number: {raw[m]!r}.") from None
            if not math.isfinite(row[m]):
                raise ValueError(f"{path}, line {line}: column {m!r} is not finite: {raw[m]!r}.")
        row["empty"] = raw.get("empty") or None
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing metrics summary (written by VolumeMetricsWriter with the CSV).")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metrics summary, not valid JSON ({e}).") from e
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: corrupt metrics summary, expected a JSON object, got {type(summary).__name__}.")
    return summary


def _rename_classes(rows: list[dict[str, Any]], class_names: Any, path: Path) -> None:
    """Apply user class names: a ``{index: name}`` mapping or a sequence aligned with the sorted class indices."""
    if class_names is None:
        return
    indices = sorted({int(float(r.get("class_index") or 0)) for r in rows})
    if isinstance(class_names, Mapping):
        mapping = {int(k): str(v) for k, v in class_names.items()}
    else:
        names = _as_list(class_names) or []
        if len(names) == len(indices) + 1:  # background name first
            names = names[1:]
        if len(names) != len(indices):
            raise ValueError(
                f"class_names gives {len(names)} names but {path} has {len(indices)} classes {indices}: {names}."
            )
        mapping = dict(zip(indices, names))
    for r in rows:
        idx = int(float(r.get("class_index") or 0))
        if idx in mapping:
            r["class_name"] = mapping[idx]


def load_run(
    run_dir: str | os.PathLike, class_names: Any = None, csv_name: str = CSV_NAME, summary_name: str = SUMMARY_NAME
) -> dict[str, Any]:
    """Read one evaluation dir: ``metrics_per_volume.csv`` (the source of every number) and ``metrics_summary.json``.

    The means are recomputed from the CSV with :func:`~ideal_components.evaluation.metrics.aggregate` (per volume
    the mean over classes, then mean and std over volumes), exactly like the summary; a disagreement with the
    summary is logged.

    Args:
        run_dir: the evaluation output dir.
        class_names: optional new class names, a ``{class_index: name}`` mapping or a sequence in class-index order
            (optionally preceded by the background's name) or a comma-separated string.
        csv_name, summary_name: the two files (``RAW_CSV_NAME`` / ``RAW_SUMMARY_NAME`` for the raw-resolution
            metrics).

    Returns:
        ``{"run_dir", "rows", "summary" (the JSON), "num_volumes", "units", "hd95_convention", "metrics",
        "per_class", "per_volume", "empty"}``.

    Raises:
        FileNotFoundError: the dir or one of the two files is missing (the message names the file).
        ValueError: a file is corrupt (the message names the file and, for the CSV, the line).

    Example:
        >>> run = load_run("bundles/ideal_acdc/eval")  # doctest: +SKIP
        >>> run["metrics"]["dice"]["mean"]  # doctest: +SKIP
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: evaluation dir not found.")
    rows = _read_csv(path / csv_name)
    summary = _read_json(path / summary_name)
    _rename_classes(rows, class_names, path / csv_name)
    units_seen = {r.get("units") for r in rows if r.get("units")}
    if len(units_seen) > 1:
        raise ValueError(f"{path / csv_name}: rows mix distance units {sorted(units_seen)}.")
    units = units_seen.pop() if units_seen else str(summary.get("units", "mm"))
    conv_seen = {r.get("hd95_convention") for r in rows if r.get("hd95_convention")}
    convention = ", ".join(sorted(conv_seen)) if conv_seen else str(summary.get("hd95_convention", "unknown"))
    agg = aggregate(rows)
    recorded = (
        summary.get("metrics", {}).get("dice", {}).get("mean") if isinstance(summary.get("metrics"), dict) else None
    )
    if isinstance(recorded, (int, float)) and abs(float(recorded) - agg["metrics"]["dice"]["mean"]) > 1e-6:
        logger.warning(
            "%s: mean Dice %.6f differs from %s (%.6f); reporting the CSV.",
            path / summary_name,
            float(recorded),
            csv_name,
            agg["metrics"]["dice"]["mean"],
        )
    return {
        "run_dir": str(path),
        "rows": rows,
        "summary": summary,
        "num_volumes": agg["num_volumes"],
        "units": units,
        "hd95_convention": convention,
        "metrics": agg["metrics"],
        "per_class": agg["per_class"],
        "per_volume": agg["per_volume"],
        "empty": agg["empty"],
    }


# ----------------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------------
def _unit_suffix(units: str) -> str:
    return "mm" if units == "mm" else "voxels" if units.startswith("vox") else units


def _paper_column(paper: str | None) -> tuple[str, dict[str, str]] | None:
    if not paper:
        return None
    key = str(paper).lower().replace("%", "").replace(":", "_").replace(" ", "_")
    dataset, _, fraction = key.partition("_")
    fraction = fraction.rstrip("0").rstrip(".") if "." in fraction else fraction
    if dataset not in PAPER_RESULTS or fraction not in PAPER_RESULTS[dataset]:
        choices = [f"{d}_{f}" for d, fs in PAPER_RESULTS.items() for f in fs]
        raise ValueError(f"paper must be one of {choices}, got {paper!r}.")
    vals = PAPER_RESULTS[dataset][fraction]
    cells = {"dice": _fmt(vals["dice"]), "hd95": _fmt(vals["hd"]) + " [a]", "asd": _fmt(vals["asd"]) + " [a]"}
    return f"IDEAL paper ({dataset.upper()} {fraction}%)", cells


def markdown_report(runs: Sequence[Mapping[str, Any]], title: str | None = None, paper: str | None = None) -> str:
    """The Markdown report of :func:`report`: the paper-layout table (columns = runs) and per-class tables.

    Args:
        runs: dicts from :func:`load_run` with an added ``"name"`` (the column title) and optionally
            ``"overlays"`` (paths relative to the report) and ``"training_curves"`` (idem).
        title: the report's heading.
        paper: optionally add the published IDEAL numbers as a column, e.g. ``"acdc_10"`` or ``"mmwhs_20"``.

    Example:
        >>> run = {"name": "a", "num_volumes": 1, "units": "mm", "hd95_convention": "medpy", "empty": {},
        ...        "metrics": {m: {"mean": 1.0, "std": 0.0} for m in METRIC_NAMES}, "per_class": {}}
        >>> "| DSC ↑ | 1.000 ± 0.000 |" in markdown_report([run])
        True
    """
    lines = [f"# {title or 'IDEAL evaluation report'}", ""]
    units = {_unit_suffix(str(r["units"])) for r in runs}
    same_units = len(units) == 1
    unit = units.pop() if same_units else ""
    paper_col = _paper_column(paper)
    header = ["Metric", *[str(r["name"]) for r in runs]] + ([paper_col[0]] if paper_col else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, (label, up) in METRIC_LABELS.items():
        row_label = label if m == "dice" or not same_units else f"{label} ({unit})"
        row_label += " ↑" if up else " ↓"
        cells = []
        for r in runs:
            stats = r["metrics"].get(m, {})
            cell = _fmt(stats.get("mean"), stats.get("std"))
            if m != "dice" and not same_units:
                cell += " " + _unit_suffix(str(r["units"]))
            cells.append(cell)
        if paper_col:
            cells.append(paper_col[1].get(m, "–"))
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    lines.append("| Volumes | " + " | ".join(str(r["num_volumes"]) for r in runs) + (" | |" if paper_col else " |"))
    lines += [
        "",
        "Mean ± std over the test volumes; each volume counts with the mean over its foreground classes. "
        "HD95 convention: " + ", ".join(sorted({str(r["hd95_convention"]) for r in runs})) + ". "
        "A structure missing from the prediction or the reference counts with Dice 0 and the volume diagonal as "
        "distance.",
    ]
    if paper_col:
        lines += [
            "",
            '[a] As published (the paper\'s "HD", shown in the HD95 row): the values are only plausible as HD95 '
            "and ASD in voxel units (medpy without voxel spacing); compare with an evaluation in voxel units.",
        ]
    for r in runs:
        lines += ["", f"## {r['name']}", ""]
        if r.get("run_dir"):
            lines += [f"Evaluation dir: `{r['run_dir']}`", ""]
        if r["per_class"]:
            u = _unit_suffix(str(r["units"]))
            head = ["Class", "n"] + [
                f"{lab}{'' if m == 'dice' else f' ({u})'} {'↑' if up else '↓'}"
                for m, (lab, up) in METRIC_LABELS.items()
            ]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for cname, c in r["per_class"].items():
                cells = [_fmt(c[m]["mean"], c[m]["std"]) for m in METRIC_LABELS]
                lines.append(f"| {cname} | {c.get('n', '')} | " + " | ".join(cells) + " |")
        empty = r.get("empty") or {}
        if any(empty.get(k) for k in ("pred", "ref")):
            lines += [
                "",
                f"Empty-mask cases: {empty.get('pred', 0)} structure(s) not predicted, "
                f"{empty.get('ref', 0)} predicted but absent from the reference.",
            ]
        if r.get("training_curves"):
            lines += ["", f"![training curves]({r['training_curves']})"]
        if r.get("overlays"):
            lines += [
                "",
                "Overlays (reference solid, prediction dashed): "
                + ", ".join(f"[{Path(p).stem}]({p})" for p in r["overlays"]),
            ]
    return "\n".join(lines) + "\n"


def summary_csv(runs: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with one row per run: overall mean/std of every metric and the per-class means.

    Example:
        >>> run = {"name": "a", "run_dir": "eval", "num_volumes": 2, "units": "mm", "hd95_convention": "medpy",
        ...        "metrics": {m: {"mean": 1.0, "std": 0.0} for m in METRIC_NAMES}, "per_class": {}}
        >>> summary_csv([run]).splitlines()[0].split(",")[:6]
        ['run', 'run_dir', 'num_volumes', 'units', 'hd95_convention', 'dice_mean']
    """
    columns = ["run", "run_dir", "num_volumes", "units", "hd95_convention"]
    columns += [f"{m}_{s}" for m in METRIC_LABELS for s in ("mean", "std")]
    for r in runs:
        for cname in r["per_class"]:
            for m in METRIC_LABELS:
                col = f"{cname}_{m}_mean"
                if col not in columns:
                    columns.append(col)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    w.writeheader()
    for r in runs:
        row: dict[str, Any] = {
            "run": r["name"],
            "run_dir": r.get("run_dir", ""),
            "num_volumes": r["num_volumes"],
            "units": r["units"],
            "hd95_convention": r["hd95_convention"],
        }
        for m in METRIC_LABELS:
            row[f"{m}_mean"] = f"{r['metrics'][m]['mean']:.6g}"
            row[f"{m}_std"] = f"{r['metrics'][m]['std']:.6g}"
        for cname, c in r["per_class"].items():
            for m in METRIC_LABELS:
                row[f"{cname}_{m}_mean"] = f"{c[m]['mean']:.6g}"
        w.writerow(row)
    return buf.getvalue()
