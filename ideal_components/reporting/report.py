"""Evaluation reports: Markdown / CSV tables, overlay PNGs and training-curve PNGs from bundle outputs.

A bundle's evaluate config writes into its output dir (e.g. ``bundles/ideal_acdc/eval/``):

- ``metrics_per_volume.csv`` and ``metrics_summary.json``
  (:class:`~ideal_components.evaluation.writer.VolumeMetricsWriter`);
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

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ideal_components.reporting.figures import _overlays_for_run, plot_training_curves
from ideal_components.reporting.tables import (
    RAW_CSV_NAME,
    RAW_SUMMARY_NAME,
    ReportResult,
    _as_list,
    load_run,
    markdown_report,
    summary_csv,
)
from ideal_components.utils import atomic_write_text

__all__ = ["report"]

logger = logging.getLogger(__name__)


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
