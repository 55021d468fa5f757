"""Evaluation reports: Markdown / CSV tables, overlay PNGs and training-curve PNGs from bundle outputs.

A bundle's evaluate config writes into its output dir (e.g. ``bundles/ideal_acdc/eval/``):

- ``metrics_per_volume.csv`` and ``metrics_summary.json`` (:class:`ideal_components.metrics.VolumeMetricsWriter`);
- ``predictions/<image basename>_seg.nii.gz`` (:class:`ideal_components.inference.SaveSegmentationd`);

and training writes TensorBoard event files under ``<bundle_root>/logs/pretrain`` and ``<bundle_root>/logs/train``.
:func:`report` turns one or several such *run dirs* into

- ``report.md``: the paper's table (rows DSC, HD95, HD, ASD, ASSD, columns the runs; mean +- std over the test
  volumes, each volume being the mean over its foreground classes) and one per-class table per run;
- ``summary.csv``: one row per run;
- ``overlays/<volume id>.png``: a few slices per test volume, the image in grey, the reference contours solid and
  the predicted contours dashed, one colour per class;
- ``training_curves.png``: one subplot per TensorBoard scalar tag (x = step).

Every file is written atomically (temporary file in the same folder, then ``os.replace``).

Command line (the returned dict prints as the Markdown report)::

    python -m ideal_components report bundles/ideal_acdc/eval --datalist bundles/ideal_acdc/data/prepared/datalist.json
    python -m ideal_components report runs/acdc_1.25/eval runs/acdc_10/eval --names "1.25%,10%" --out reports/acdc
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

import numpy as np

from ideal_components.facts import PAPER_RESULTS
from ideal_components.metrics import METRIC_NAMES, aggregate
from ideal_components.utils import atomic_write_bytes, atomic_write_text

__all__ = [
    "METRIC_LABELS",
    "ReportResult",
    "load_run",
    "markdown_report",
    "summary_csv",
    "find_predictions",
    "choose_slices",
    "plot_overlay",
    "read_scalars",
    "plot_training_curves",
    "report",
    "report_cli",
]

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
#: written by :func:`ideal_components.raw_metrics.raw_resolution_metrics` (the same metrics against the raw labels)
RAW_CSV_NAME = "metrics_per_volume_raw.csv"
RAW_SUMMARY_NAME = "metrics_summary_raw.json"
PREDICTIONS_DIR = "predictions"
_REQUIRED_COLUMNS = ("volume", "class_name", *METRIC_NAMES)
_NIFTI_EXTS = (".nii.gz", ".nii")
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


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def _save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _strip_ext(name: str) -> str:
    for ext in (*_NIFTI_EXTS, ".nrrd", ".mha", ".mhd", ".npy", ".npz", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


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

    The means are recomputed from the CSV with :func:`ideal_components.metrics.aggregate` (per volume the mean over
    classes, then mean and std over volumes), exactly like the summary; a disagreement with the summary is logged.

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


# ----------------------------------------------------------------------------------------------------------------
# overlays
# ----------------------------------------------------------------------------------------------------------------
def _datalist_items(datalist: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``{image basename without extension: item with absolute paths}`` for the test / validation items."""
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt datalist, not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt datalist, expected a JSON object with 'test' / 'validation' lists.")
    keys = [k for k in ("test", "validation") if isinstance(data.get(k), list)]
    keys += [k for k, v in data.items() if k not in keys and isinstance(v, list)]  # e.g. 'training' as a fallback
    items: dict[str, dict[str, Any]] = {}
    for key in keys:
        for item in data[key]:
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                continue
            resolved = dict(item)
            for k in ("image", "label"):
                if isinstance(item.get(k), str):
                    resolved[k] = str((path.parent / item[k]) if not os.path.isabs(item[k]) else Path(item[k]))
            items.setdefault(_strip_ext(os.path.basename(item["image"])), resolved)
    return items, data


def find_predictions(run_dir: str | os.PathLike, postfix: str = "seg") -> dict[str, Path]:
    """``{image basename: prediction file}`` for the NIfTI files under ``<run_dir>/predictions`` (any depth).

    Example:
        >>> find_predictions("bundles/ideal_acdc/eval")  # doctest: +SKIP
        {'patient007_frame01': PosixPath('bundles/ideal_acdc/eval/predictions/patient007_frame01_seg.nii.gz')}
    """
    folder = Path(run_dir) / PREDICTIONS_DIR
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or not p.name.lower().endswith(_NIFTI_EXTS):
            continue  # hidden: a temporary file of an atomic write that a kill left behind
        stem = _strip_ext(p.name)
        if postfix and stem.endswith("_" + postfix):
            stem = stem[: -len(postfix) - 1]
        found.setdefault(stem, p)
    return found


def _load_volume(path: str | os.PathLike, what: str, reference: Any = None) -> tuple[np.ndarray, Any]:
    """Read a NIfTI as a 3D array (one-hot / multi-channel labels are arg-maxed), reoriented like ``reference``."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what} file.")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several kinds for truncated / corrupt files
        raise ValueError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}).") from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 5 and arr.shape[3] == 1:
        arr = arr[:, :, :, 0]
    if arr.ndim == 4:
        arr = arr[..., 0] if what == "image" else np.argmax(arr, axis=-1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: the {what} must be a 3D volume, got shape {arr.shape}.")
    if reference is not None:
        ref_ornt, own_ornt = io_orientation(reference.affine), io_orientation(img.affine)
        if not np.array_equal(ref_ornt, own_ornt):
            arr = apply_orientation(arr, ornt_transform(own_ornt, ref_ornt))
    return np.asarray(arr), img


def choose_slices(label: np.ndarray | None, num: int, fallback: np.ndarray | None = None) -> list[int]:
    """Pick ``num`` slices along the last axis, spread from the first to the last slice holding foreground.

    The slices with foreground in ``label`` (else in ``fallback``, else all) are cut into ``num`` consecutive groups
    and the slice with the most foreground of each group is taken (for short-axis stacks: apex to base).

    Example:
        >>> lab = np.zeros((4, 4, 10), int); lab[1:3, 1:3, 2:8] = 1; lab[:, :, 4] = 1
        >>> choose_slices(lab, 3)
        [2, 4, 6]
    """
    if num < 1:
        raise ValueError(f"slices must be >= 1, got {num}.")
    counts = None
    for arr in (label, fallback):
        if arr is not None and np.any(arr):
            counts = np.count_nonzero(arr.reshape(-1, arr.shape[-1]), axis=0)
            break
    depth = (label if label is not None else fallback).shape[-1] if (label is not None or fallback is not None) else 0
    if counts is None:
        return sorted({int(round(x)) for x in np.linspace(0, max(depth - 1, 0), num)})
    candidates = np.flatnonzero(counts)
    if len(candidates) <= num:
        return [int(c) for c in candidates]
    chosen = [int(g[np.argmax(counts[g])]) for g in np.array_split(candidates, num)]
    return sorted(set(chosen))


def _class_table(rows: Sequence[Mapping[str, Any]], labels: Sequence[int], class_names: Any) -> dict[int, str]:
    names: dict[int, str] = {}
    for r in rows:
        try:
            names.setdefault(int(float(r.get("class_index") or 0)), str(r["class_name"]))
        except (TypeError, ValueError):
            continue
    if isinstance(class_names, Mapping):
        names.update({int(k): str(v) for k, v in class_names.items()})
    elif class_names is not None:
        lst = _as_list(class_names) or []
        fg = sorted(set(names) | set(labels))
        if len(lst) == len(fg) + 1:
            lst = lst[1:]
        names.update(dict(zip(fg, lst)))
    for c in labels:
        names.setdefault(int(c), str(c))
    return names


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray,
    path: str | os.PathLike,
    slices: int = 3,
    class_names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> list[int]:
    """Write a PNG with ``slices`` slices of a volume: image grey, reference contours solid, prediction dashed.

    Args:
        image: ``(H, W, D)`` intensities.
        label: ``(H, W, D)`` reference label map, or None (only the prediction is drawn).
        pred: ``(H, W, D)`` predicted label map.
        path: the PNG file (written atomically).
        slices: how many slices to show, see :func:`choose_slices`.
        class_names: ``{label value: name}`` for the legend.
        title: the figure title.

    Returns:
        the slice indices shown.

    Example:
        >>> img = np.random.rand(32, 32, 4); lab = np.zeros((32, 32, 4), int); lab[8:20, 8:20] = 1
        >>> plot_overlay(img, lab, np.roll(lab, 2, 0), "/tmp/overlay.png", slices=2)  # doctest: +SKIP
        [0, 2]
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    if image.shape != pred.shape or (label is not None and label.shape != image.shape):
        shapes = f"image {image.shape}, prediction {pred.shape}" + (
            f", label {label.shape}" if label is not None else ""
        )
        raise ValueError(f"{path}: the volumes to overlay differ in shape ({shapes}).")
    ks = choose_slices(label, slices, fallback=pred)
    values = sorted(
        {int(v) for v in np.unique(pred) if v > 0}
        | ({int(v) for v in np.unique(label) if v > 0} if label is not None else set())
    )
    class_names = dict(class_names or {})
    values = sorted(set(values) | {c for c in class_names if c > 0})
    cmap = plt.get_cmap("tab10")
    colours = {c: cmap(i % 10) for i, c in enumerate(values)}
    finite = image[np.isfinite(image)]
    vmin, vmax = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    n = len(ks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        ax.imshow(image[..., k].T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
        for c in values:
            for arr, style in ((label, "solid"), (pred, "dashed")):
                if arr is None:
                    continue
                mask = (arr[..., k] == c).T
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colours[c]], linestyles=style, linewidths=1.4)
        ax.set_title(f"slice {k + 1}/{image.shape[-1]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colours[c], lw=3, label=class_names.get(c, str(c))) for c in values]
    handles += [
        Line2D([], [], color="black", lw=1.4, ls="solid", label="reference"),
        Line2D([], [], color="black", lw=1.4, ls="dashed", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    _save_figure(fig, path)
    return ks


def _resolve_datalist(run: Mapping[str, Any], datalist: Any) -> Path | None:
    if datalist:
        return Path(datalist)
    recorded = run["summary"].get("datalist")
    if isinstance(recorded, str) and recorded:
        p = Path(recorded)
        return p if p.is_absolute() else Path(run["run_dir"]) / p
    default = Path(run["run_dir"]).parent / "data" / "prepared" / "datalist.json"
    return default if default.is_file() else None


def _overlays_for_run(run: Mapping[str, Any], out_dir: Path, datalist: Any, slices: int, class_names: Any) -> list[str]:
    predictions = find_predictions(run["run_dir"])
    if not predictions:
        logger.warning("%s: no predictions found; skipping the overlays.", Path(run["run_dir"]) / PREDICTIONS_DIR)
        return []
    dl = _resolve_datalist(run, datalist)
    if dl is None:
        logger.warning(
            "%s: no datalist given (--datalist) nor recorded in %s; skipping the overlays.",
            run["run_dir"],
            SUMMARY_NAME,
        )
        return []
    items, _ = _datalist_items(dl)
    dice_by_volume = {str(v["volume"]): v["dice"] for v in run["per_volume"]}
    labels = sorted({int(float(r.get("class_index") or 0)) for r in run["rows"]} - {0})
    names = _class_table(run["rows"], labels, class_names)
    written = []
    for vid, pred_path in predictions.items():
        item = items.get(vid)
        if item is None:
            logger.warning("%s: no datalist item in %s has the image %s; skipped.", pred_path, dl, vid)
            continue
        image, image_img = _load_volume(item["image"], "image")
        label = _load_volume(item["label"], "label", image_img)[0] if item.get("label") else None
        pred = _load_volume(pred_path, "prediction", image_img)[0]
        if pred.shape != image.shape or (label is not None and label.shape != image.shape):
            raise ValueError(
                f"{pred_path}: prediction shape {pred.shape} does not match the image {item['image']} {image.shape}"
                + (f" / label {label.shape}" if label is not None else "")
                + "; were the predictions saved in the prepared image space?"
            )
        out_id = str(item.get("id") or vid)
        dice = None
        for key in (out_id, vid, _strip_ext(os.path.basename(str(item.get("label", ""))))):
            if key in dice_by_volume:
                dice = dice_by_volume[key]
                break
        title = out_id + (f" (mean DSC {dice:.3f})" if dice is not None else "")
        png = out_dir / "overlays" / f"{out_id}.png"
        plot_overlay(image, label, pred, png, slices=slices, class_names=names, title=title)
        written.append(str(png))
    return written


# ----------------------------------------------------------------------------------------------------------------
# training curves
# ----------------------------------------------------------------------------------------------------------------
def read_scalars(logs: str | os.PathLike) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Every TensorBoard scalar under ``logs``: ``{run folder (relative to logs): {tag: (steps, values)}}``.

    Each folder holding ``events.out.tfevents.*`` files is read with tensorboard's ``EventAccumulator`` (all
    points kept); e.g. ``{"pretrain": {"pretrain_loss": ...}, "train": {"train_loss": ..., "val_mean_dice": ...}}``.

    Example:
        >>> curves = read_scalars("bundles/ideal_acdc/logs")  # doctest: +SKIP
    """
    from tensorboard.backend.event_processing import event_accumulator as ea

    root = Path(logs)
    folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})
    result: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for folder in folders:
        acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0})
        try:
            acc.Reload()
        except Exception as e:  # a truncated event file must not stop the report
            logger.warning("%s: cannot read the TensorBoard events (%s); skipped.", folder, e)
            continue
        tags = acc.Tags().get("scalars", [])
        if not tags:
            continue
        rel = folder.relative_to(root).as_posix()
        result[rel if rel != "." else ""] = {}
        for tag in sorted(tags):
            events = sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))
            result[rel if rel != "." else ""][tag] = ([int(e.step) for e in events], [float(e.value) for e in events])
    return result


def plot_training_curves(logs: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> bool:
    """Write one subplot per TensorBoard scalar tag found under ``logs`` (x = step) to ``path``.

    Returns:
        False (and writes nothing) when no scalar was found.

    Example:
        >>> plot_training_curves("bundles/ideal_acdc/logs", "training_curves.png")  # doctest: +SKIP
        True
    """
    scalars = read_scalars(logs)
    panels = [(folder, tag, xy) for folder, tags in scalars.items() for tag, xy in tags.items()]
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (folder, tag, (steps, values)) in zip(axes.ravel(), panels):
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=3, lw=1.2)
        ax.set_title(f"{folder}: {tag}" if folder else tag, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------
def _run_names(run_dirs: Sequence[str], names: list[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(run_dirs):
            raise ValueError(f"names gives {len(names)} names for {len(run_dirs)} run dirs: {names}.")
        return names
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def _safe_dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.%" else "_" for c in name).strip("._") or "run"


def report(
    *run_dirs: str,
    out: str | None = None,
    datalist: str | None = None,
    class_names: Any = None,
    slices: int = 3,
    logs: str | None = None,
    title: str | None = None,
    names: Any = None,
    paper: str | None = None,
) -> ReportResult:
    """Report one or several evaluation dirs: ``report.md``, ``summary.csv``, overlay PNGs and training curves.

    Where the files go: with ``out`` the combined ``report.md`` / ``summary.csv`` are written there, and each run's
    ``overlays/`` and ``training_curves.png`` too (one run) or in ``out/<run name>/`` (several runs). Without
    ``out`` each run dir receives its own ``report.md``, ``summary.csv``, ``overlays/`` and ``training_curves.png``
    (the returned / printed Markdown still compares all runs).

    Args:
        run_dirs: evaluation output dirs, each with ``metrics_per_volume.csv`` and ``metrics_summary.json`` (and
            optionally ``predictions/*_seg.nii.gz``).
        out: output dir, see above.
        datalist: the prepared ``datalist.json`` giving each test volume's image and reference (paths relative to
            its folder). Default: ``"datalist"`` recorded in ``metrics_summary.json``, else
            ``<run dir>/../data/prepared/datalist.json``; if none exists the overlays are skipped with a warning.
        class_names: class names for the tables and legends (``{index: name}``, a sequence in class order, or
            ``"RV,MYO,LV"``); default: the names recorded in the CSV.
        slices: slices per overlay, spread over the reference's foreground (apex to base).
        logs: folder searched (recursively) for TensorBoard event files; default ``<run dir>/../logs`` if it exists.
        title: heading of the report.
        names: column titles, one per run (default: the shortest distinct trailing parts of the run paths).
        paper: add the published IDEAL numbers as a column, e.g. ``"acdc_10"``, ``"mmwhs_20"``.

    Returns:
        a :class:`ReportResult` dict ``{"runs": [{"name", "run_dir", "out_dir", "num_volumes", "units",
        "hd95_convention", "metrics": {m: {"mean", "std"}}, "per_class": {...}, "empty", "overlays": [png],
        "training_curves": png or None}], "markdown": str, "files": [written files]}``; ``str()`` of it is the
        Markdown (what the command line prints).

    Raises:
        FileNotFoundError / ValueError: a missing or corrupt input file (the message names it).

    Example:
        >>> result = report("bundles/ideal_acdc/eval", datalist="bundles/ideal_acdc/data/prepared/datalist.json")
        ...     # doctest: +SKIP
        >>> result["runs"][0]["metrics"]["dice"]["mean"]  # doctest: +SKIP
    """
    if not run_dirs:
        raise ValueError("report needs at least one evaluation dir (with metrics_per_volume.csv).")
    slices = int(slices)
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}.")
    run_dirs = tuple(str(d) for d in run_dirs)
    labels = _run_names(run_dirs, _as_list(names))
    runs: list[dict[str, Any]] = []
    for d, name in zip(run_dirs, labels):
        run = load_run(d, class_names=class_names)
        run["name"] = name
        runs.append(run)
    multi = len(runs) > 1
    files: list[str] = []
    for run in runs:
        if out is None:
            run_out = Path(run["run_dir"])
        else:
            run_out = Path(out) / _safe_dirname(run["name"]) if multi else Path(out)
        run["out_dir"] = str(run_out)
        run["overlays"] = _overlays_for_run(run, run_out, datalist, slices, class_names)
        files += run["overlays"]
        log_dir = Path(logs) if logs else Path(run["run_dir"]).parent / "logs"
        run["training_curves"] = None
        if log_dir.is_dir():
            png = run_out / "training_curves.png"
            if plot_training_curves(log_dir, png, title=f"{run['name']}: training curves ({log_dir})"):
                run["training_curves"] = str(png)
                files.append(str(png))
            else:
                logger.warning("%s: no TensorBoard scalars found; no training curves.", log_dir)
        elif logs:
            raise FileNotFoundError(f"{log_dir}: logs folder not found.")

    def rel(runs_: list[dict[str, Any]], base: Path) -> list[dict[str, Any]]:
        view = []
        for r in runs_:
            v = dict(r)
            v["overlays"] = [os.path.relpath(p, base).replace(os.sep, "/") for p in r["overlays"]]
            tc = r["training_curves"]
            v["training_curves"] = os.path.relpath(tc, base).replace(os.sep, "/") if tc else None
            view.append(v)
        return view

    # the same metrics against the raw labels, where evaluate.json wrote them (raw_resolution_metrics)
    raw_runs: dict[str, dict[str, Any]] = {}
    for run in runs:
        if (Path(run["run_dir"]) / RAW_CSV_NAME).is_file():
            raw = load_run(run["run_dir"], class_names, csv_name=RAW_CSV_NAME, summary_name=RAW_SUMMARY_NAME)
            raw.update(name=run["name"], overlays=[], training_curves=None)
            raw_runs[run["name"]] = raw

    def with_raw(group: list[dict[str, Any]], base: Path) -> str:
        text = markdown_report(rel(group, base), title=title, paper=paper)
        raw_group = [raw_runs[r["name"]] for r in group if r["name"] in raw_runs]
        if raw_group:
            text += "\n" + markdown_report(
                raw_group, title="At the raw resolution (raw labels, scanner spacing)", paper=paper
            )
        return text

    targets = [(Path(out), runs)] if out is not None else [(Path(r["out_dir"]), [r]) for r in runs]
    for folder, group in targets:
        atomic_write_text(folder / "report.md", with_raw(group, folder))
        atomic_write_text(folder / "summary.csv", summary_csv(group))
        files += [str(folder / "report.md"), str(folder / "summary.csv")]
    markdown = with_raw(runs, Path(out) if out is not None else Path.cwd())
    public = [{k: v for k, v in r.items() if k not in ("rows", "summary")} for r in runs]
    return ReportResult(runs=public, markdown=markdown, files=files)


def report_cli(*run_dirs: str, **kwargs: Any) -> None:
    """:func:`report` for scripts: prints the Markdown report to stdout and returns None.

    ``python -m ideal_components report`` may map to :func:`report` directly (python-fire prints the returned
    :class:`ReportResult` as its Markdown) or to this function.

    Example:
        >>> report_cli("bundles/ideal_acdc/eval", datalist="data/prepared/datalist.json")  # doctest: +SKIP
    """
    print(str(report(*run_dirs, **kwargs)))
