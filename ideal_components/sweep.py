"""Label-fraction sweeps: IDEAL and its baselines over label fractions and seeds, run as MONAI bundle subprocesses.

A sweep runs, for every seed ``k``, method ``m`` and label fraction ``f``, the bundle's own configs with
``python -m monai.bundle run`` (no training code here) and tabulates the test metrics:

- ``supervised``: no pre-training; fine-tuning ``train.json`` + ``train_supervised.json`` from scratch;
- ``global_cl``: pre-training ``pretrain.json`` + ``pretrain_global.json`` (global contrastive, the Chaitanya-style
  baseline), then ``train.json`` + ``train_supervised.json`` from that encoder;
- ``local_cl`` (ablation): IDEAL's pre-training (``pretrain.json``, the dense local loss; the same encoder as
  ``ideal``'s, run once), then supervised fine-tuning: the clean isolation of the local pre-training;
- ``ideal``: pre-training ``pretrain.json``, then ``train.json`` (cross pseudo-labels);
- ``cps`` (ablation): no pre-training; ``train.json`` from scratch;
- ``global_cps`` (ablation): ``global_cl``'s pre-training (run once), then ``train.json`` (cross pseudo-labels).

Pre-training does not depend on the label fraction: it runs once per (pre-training, seed) and every fraction's cell
of the methods that use it starts from its encoder.

Layout of ``out``::

    sweep.json                                settings, command lines and state of every step (atomic)
    results.md, results.csv                   one row per (method, fraction), mean ± std over the seeds
    <method>/seed<k>/pretrain/                pre-training bundle_root: models/pretrained_encoder.pt, pretrain.log
    <method>/f<fraction>/seed<k>/             fine-tuning bundle_root: models/model.pt, train.log, eval.log,
                                              eval/metrics_summary.json, eval/metrics_per_volume.csv, ...

Resuming: a step is done when its output exists (``models/pretrained_encoder.pt`` for pre-training,
``train_done.json`` for fine-tuning, ``eval/metrics_summary.json`` for evaluation; all written atomically when the
step ends). A rerun skips the done steps; an unfinished pre-training or fine-tuning step continues from its last
epoch checkpoint (the bundles' ``--resume True``, which ends with the same weights as an uninterrupted run), an
unfinished evaluation is rerun from the start; ``overwrite=True`` removes every output and starts afresh.
Pre-training is skipped when every cell that needs it is done. ``sweep.json`` records the settings
(bundle, dataset, overrides); a rerun with other settings is refused unless ``overwrite=True``.

Command line::

    python -m ideal_components sweep --bundle bundles/ideal_acdc --fractions 1.25,2.5,10,100 \\
        --methods supervised,global_cl,ideal --seeds 0,1,2 --dataset_dir PREPARED --out runs/sweep_acdc \\
        --overrides "{'backbone': 'resnet18', 'max_epochs': 20}" --pretrain_overrides "{'max_epochs': 10}"
    python -m ideal_components sweep --bundle bundles/ideal_acdc --dataset_dir PREPARED --dry_run True
"""

from __future__ import annotations

import ast
import csv
import datetime
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ideal_components.facts import PAPER_BASELINES, PAPER_RESULTS
from ideal_components.metrics import METRIC_NAMES
from ideal_components.report import ReportResult, _fmt, _read_json
from ideal_components.sweep_compare import paired_differences, paired_markdown, t_interval
from ideal_components.utils import atomic_write_text

__all__ = [
    "METHODS",
    "SHARED_KEYS",
    "RESERVED_KEYS",
    "MethodSpec",
    "SweepStep",
    "SweepPlan",
    "SweepStepError",
    "parse_methods",
    "parse_seeds",
    "parse_sweep_fractions",
    "parse_overrides",
    "plan_sweep",
    "format_plan",
    "collect_results",
    "results_markdown",
    "results_csv",
    "write_results",
    "sweep",
]

SWEEP_FILE = "sweep.json"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
TRAIN_DONE = "train_done.json"
ENCODER_REL = ("models", "pretrained_encoder.pt")
SUMMARY_REL = ("eval", "metrics_summary.json")
MODEL_REL = ("models", "model.pt")
_SWEEP_VERSION = 1


@dataclass(frozen=True)
class MethodSpec:
    """How one method runs: the bundle configs of its pre-training (``None``: none) and of its fine-tuning.

    ``pretrain_owner``: the method whose pre-training this one reuses (the same configs and overrides give the same
    encoder, so it runs once per seed, under ``<owner>/seed<k>/pretrain``); ``None``: its own.
    """

    label: str
    pretrain: tuple[str, ...] | None
    finetune: tuple[str, ...]
    description: str = ""
    pretrain_owner: str | None = None


#: the methods a sweep knows, in table order
METHODS: dict[str, MethodSpec] = {
    "supervised": MethodSpec(
        "Supervised", None, ("train.json", "train_supervised.json"), "labelled slices only, random init"
    ),
    "global_cl": MethodSpec(
        "Global CL",
        ("pretrain.json", "pretrain_global.json"),
        ("train.json", "train_supervised.json"),
        "global contrastive pre-training, supervised fine-tuning",
    ),
    "global_cps": MethodSpec(
        "Global CL + CPS",
        ("pretrain.json", "pretrain_global.json"),
        ("train.json",),
        "global contrastive pre-training, cross-pseudo-label fine-tuning (ablation)",
        pretrain_owner="global_cl",
    ),
    "local_cl": MethodSpec(
        "Local CL",
        ("pretrain.json",),
        ("train.json", "train_supervised.json"),
        "IDEAL's dense local pre-training, supervised fine-tuning (ablation)",
        pretrain_owner="ideal",
    ),
    "ideal": MethodSpec(
        "IDEAL", ("pretrain.json",), ("train.json",), "dense local pre-training, cross-pseudo-label fine-tuning"
    ),
    "cps": MethodSpec("CPS", None, ("train.json",), "cross-pseudo-label fine-tuning, random init (ablation)"),
}

#: ids that must be the same for pre-training and fine-tuning: taken from ``overrides`` for both phases
SHARED_KEYS: tuple[str, ...] = ("backbone", "spatial_size", "num_workers")
#: ids the sweep sets itself
RESERVED_KEYS: tuple[str, ...] = (
    "bundle_root",
    "dataset_dir",
    "seed",
    "label_fraction",
    "use_pretrained",
    "pretrained_encoder",
)
#: metrics shown in the Markdown table: key -> (label, has a unit)
_TABLE_METRICS: dict[str, tuple[str, bool]] = {"dice": ("DSC ↑", False), "hd95": ("HD95", True), "asd": ("ASD", True)}


class SweepStepError(RuntimeError):
    """A bundle subprocess of the sweep failed; the message names the step, its bundle_root and its log."""


@dataclass
class SweepStep:
    """One ``python -m monai.bundle run`` of a sweep.

    Attributes:
        kind: ``"pretrain"``, ``"train"`` or ``"evaluate"``.
        method, seed: the method and seed; fraction: the label fraction key (``None`` for pre-training).
        bundle_root: the run's bundle_root; log: its log file; done_file: the file marking it as done.
        command: the full argument list.
        clear: paths removed before the step is (re)run.
        done: whether ``done_file`` existed when the plan was made.
    """

    kind: str
    method: str
    seed: int
    fraction: str | None
    bundle_root: str
    log: str
    done_file: str
    command: list[str]
    clear: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def key(self) -> str:
        """``"<method>/seed<k>/pretrain"`` or ``"<method>/f<fraction>/seed<k>/<train|evaluate>"``."""
        if self.fraction is None:
            return f"{self.method}/seed{self.seed}/pretrain"
        return f"{self.method}/f{self.fraction}/seed{self.seed}/{self.kind}"

    @property
    def cell(self) -> str:
        """The fine-tuning cell's key (``"<method>/f<fraction>/seed<k>"``), or the pre-training key."""
        return self.key.rsplit("/", 1)[0] if self.fraction is not None else self.key

    def command_line(self) -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.command)


@dataclass
class SweepPlan:
    """Everything :func:`sweep` will run, made by :func:`plan_sweep` without side effects."""

    out: str
    settings: dict[str, Any]
    dataset: str | None
    methods: list[str]
    fractions: list[str]
    seeds: list[int]
    steps: list[SweepStep]

    @property
    def results_md(self) -> str:
        return os.path.join(self.out, RESULTS_MD)

    @property
    def results_csv(self) -> str:
        return os.path.join(self.out, RESULTS_CSV)

    @property
    def sweep_file(self) -> str:
        return os.path.join(self.out, SWEEP_FILE)

    def pending(self) -> list[SweepStep]:
        """The steps that will run (not done, and pre-training only where a cell still needs it)."""
        return [s for s in self.steps if not s.done]


# ----------------------------------------------------------------------------------------------------------------
# argument parsing (python-fire turns "a,b" into a tuple and "0" into an int)
# ----------------------------------------------------------------------------------------------------------------
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


def _cli_literal(value: Any, top: bool = True) -> str:
    """A value as ``monai.bundle run`` (python-fire) reads it back: strings bare, containers as Python literals."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return value if top else repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cli_literal(v, False) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_cli_literal(str(k), False)}:{_cli_literal(v, False)}" for k, v in value.items()) + "}"
    raise ValueError(f"cannot pass {value!r} on the command line.")


def _cli_args(values: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for k, v in values.items():
        args += [f"--{k}", _cli_literal(v)]
    return args


# ----------------------------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------------------------
def _dataset_name(bundle: Path, datalist: Path) -> str | None:
    if datalist.is_file():
        try:
            name = json.loads(datalist.read_text(encoding="utf-8")).get("preparation", {}).get("dataset")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name.lower() in PAPER_RESULTS:
            return name.lower()
    for name in PAPER_RESULTS:
        if name in bundle.name.lower():
            return name
    return None


def _literal_config_value(configs: Sequence[Path], key: str, overrides: Mapping[str, Any]) -> Any:
    """The literal value of a top-level id after merging ``configs`` and ``overrides`` (None for an expression)."""
    value: Any = None
    for c in configs:
        try:
            data = json.loads(c.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if key in data:
            value = data[key]
    value = overrides.get(key, value)
    return None if isinstance(value, str) else value


def _check_validation_runs(configs_dir: Path, overrides: Mapping[str, Any], methods: Sequence[str]) -> None:
    """Fine-tuning writes ``models/model.pt`` at validation only: refuse a ``max_epochs < val_interval`` plan."""
    for m in methods:
        configs = [configs_dir / c for c in METHODS[m].finetune]
        max_epochs = _literal_config_value(configs, "max_epochs", overrides)
        val_interval = _literal_config_value(configs, "val_interval", overrides)
        if isinstance(max_epochs, int) and isinstance(val_interval, int) and val_interval > max_epochs:
            raise ValueError(
                f"method {m}: max_epochs={max_epochs} < val_interval={val_interval}, so fine-tuning would never "
                "validate and write models/model.pt for evaluation; set val_interval <= max_epochs in overrides."
            )


def _bundle_command(
    python: str, configs_dir: Path, configs: Sequence[str], bundle_root: Path, args: Mapping[str, Any]
) -> list[str]:
    files = json.dumps([str(configs_dir / c) for c in configs], separators=(",", ":"))
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", files]
    cmd += ["--meta_file", str(configs_dir / "metadata.json"), "--logging_file", str(configs_dir / "logging.conf")]
    cmd += ["--bundle_root", str(bundle_root)]
    return cmd + _cli_args(args)


def plan_sweep(
    bundle: str,
    fractions: Any = None,
    methods: Any = "supervised,global_cl,ideal",
    seeds: Any = "0",
    dataset_dir: str | None = None,
    out: str | None = None,
    overrides: Any = None,
    pretrain_overrides: Any = None,
    python: str = sys.executable,
    ignore_done: bool = False,
) -> SweepPlan:
    """Make the plan of :func:`sweep` (arguments as there) without running or writing anything.

    Args:
        ignore_done: plan every step as not done (what ``overwrite=True`` runs).

    Returns:
        a :class:`SweepPlan`; its steps are in run order (seed, then method, then pre-training and the fraction
        cells, each cell being a ``train`` step then an ``evaluate`` step).

    Raises:
        FileNotFoundError: the bundle's configs are missing.
        ValueError: invalid methods / seeds / fractions / overrides, a fraction missing from the datalist, an
            override of an id the sweep sets, or different shared ids for the two phases.

    Example:
        >>> plan = plan_sweep("bundles/ideal_acdc", "10,100", "supervised,ideal", "0,1", "data/prepared")
        ...     # doctest: +SKIP
        >>> [s.key for s in plan.steps][:3]  # doctest: +SKIP
        ['supervised/f10/seed0/train', 'supervised/f10/seed0/evaluate', 'supervised/f100/seed0/train']
    """
    bundle_dir = Path(bundle).expanduser().resolve()
    configs_dir = bundle_dir / "configs"
    method_names = parse_methods(methods)
    needed = {"metadata.json", "logging.conf", "evaluate.json"}
    for m in method_names:
        needed |= set(METHODS[m].finetune) | set(METHODS[m].pretrain or ())
    missing = sorted(n for n in needed if not (configs_dir / n).is_file())
    if missing:
        raise FileNotFoundError(f"{configs_dir}: missing bundle config(s) {missing}.")
    data_dir = Path(dataset_dir).expanduser().resolve() if dataset_dir else bundle_dir / "data" / "prepared"
    datalist = data_dir / "datalist.json"
    dataset = _dataset_name(bundle_dir, datalist)
    fraction_keys = parse_sweep_fractions(fractions, dataset)
    if datalist.is_file():
        try:
            available = json.loads(datalist.read_text(encoding="utf-8")).get("fractions")
        except (OSError, ValueError) as e:
            raise ValueError(f"{datalist}: cannot read the datalist ({e}).") from None
        if isinstance(available, list):
            absent = [f for f in fraction_keys if f not in [str(a) for a in available]]
            if absent:
                raise ValueError(f"{datalist}: no label fraction(s) {absent}; it has {available}.")
    seed_list = parse_seeds(seeds)
    ft = parse_overrides(overrides, "overrides")
    pt_own = parse_overrides(pretrain_overrides, "pretrain_overrides")
    for name, d in (("overrides", ft), ("pretrain_overrides", pt_own)):
        bad = [k for k in d if k in RESERVED_KEYS]
        if bad:
            raise ValueError(f"{name} may not set {bad}: the sweep sets them (use the sweep's own arguments).")
    for k in SHARED_KEYS:
        if k in pt_own and (k not in ft or ft[k] != pt_own[k]):
            raise ValueError(
                f"pretrain_overrides sets {k}={pt_own[k]!r} but overrides has {ft.get(k, '<bundle default>')!r}: "
                f"{list(SHARED_KEYS)} must be the same for both phases; set them in overrides only."
            )
    pt = {**{k: ft[k] for k in SHARED_KEYS if k in ft}, **pt_own}
    _check_validation_runs(configs_dir, ft, method_names)

    out_dir = Path(out if out else os.path.join("runs", f"sweep_{dataset or bundle_dir.name}")).expanduser().resolve()
    settings = {"bundle": str(bundle_dir), "dataset_dir": str(data_dir), "overrides": ft, "pretrain_overrides": pt_own}
    steps: list[SweepStep] = []
    for seed in seed_list:
        pretrain_steps: dict[Path, SweepStep] = {}  # one per pre-training folder, shared by the methods reusing it
        for m in method_names:
            spec = METHODS[m]
            cell_steps: list[SweepStep] = []
            encoder: Path | None = None
            if spec.pretrain is not None:
                root = out_dir / (spec.pretrain_owner or m) / f"seed{seed}" / "pretrain"
                encoder = root.joinpath(*ENCODER_REL)
            for f in fraction_keys:
                cell = out_dir / m / f"f{f}" / f"seed{seed}"
                args: dict[str, Any] = {"dataset_dir": str(data_dir), "seed": seed, "label_fraction": f}
                args["use_pretrained"] = encoder is not None
                if encoder is not None:
                    args["pretrained_encoder"] = str(encoder)
                args.update(ft)
                summary = cell.joinpath(*SUMMARY_REL)
                eval_done = summary.is_file() and not ignore_done
                train = SweepStep(
                    "train",
                    m,
                    seed,
                    f,
                    str(cell),
                    str(cell / "train.log"),
                    str(cell / TRAIN_DONE),
                    _bundle_command(python, configs_dir, spec.finetune, cell, {**args, "resume": not ignore_done}),
                    clear=[str(cell / TRAIN_DONE), str(cell / "eval")]
                    + ([str(cell / "models"), str(cell / "logs")] if ignore_done else []),
                    done=eval_done or ((cell / TRAIN_DONE).is_file() and not ignore_done),
                )
                evaluate = SweepStep(
                    "evaluate",
                    m,
                    seed,
                    f,
                    str(cell),
                    str(cell / "eval.log"),
                    str(summary),
                    _bundle_command(python, configs_dir, (*spec.finetune, "evaluate.json"), cell, args),
                    clear=[str(cell / "eval")],
                    done=eval_done,
                )
                cell_steps += [train, evaluate]
            if encoder is not None:
                root = encoder.parent.parent
                args = {"dataset_dir": str(data_dir), "seed": seed, **pt}
                cells_done = all(s.done for s in cell_steps)
                shared = pretrain_steps.get(root)
                if shared is None:
                    pretrain_steps[root] = SweepStep(
                        "pretrain",
                        spec.pretrain_owner or m,
                        seed,
                        None,
                        str(root),
                        str(root / "pretrain.log"),
                        str(encoder),
                        _bundle_command(
                            python, configs_dir, spec.pretrain or (), root, {**args, "resume": not ignore_done}
                        ),
                        clear=[str(root / "models"), str(root / "logs")] if ignore_done else [],
                        done=cells_done or (encoder.is_file() and not ignore_done),
                    )
                    steps.append(pretrain_steps[root])
                elif not cells_done:  # another method still needs the shared encoder
                    shared.done = encoder.is_file() and not ignore_done
            steps += cell_steps
    return SweepPlan(str(out_dir), settings, dataset, method_names, fraction_keys, seed_list, steps)


def format_plan(plan: SweepPlan) -> str:
    """The plan as text: settings, then one block per step with its state, log and command line."""
    lines = [f"sweep into {plan.out}", f"  bundle:      {plan.settings['bundle']}"]
    lines += [f"  dataset_dir: {plan.settings['dataset_dir']} ({plan.dataset or 'unknown dataset'})"]
    lines += [f"  methods: {', '.join(plan.methods)}; fractions: {', '.join(plan.fractions)}; seeds: {plan.seeds}"]
    lines += [
        f"  overrides: {plan.settings['overrides']}",
        f"  pretrain_overrides: {plan.settings['pretrain_overrides']}",
    ]
    pending = plan.pending()
    lines += [f"  {len(pending)} of {len(plan.steps)} steps to run", ""]
    for i, s in enumerate(plan.steps, 1):
        state = "done, skip" if s.done else "run"
        lines += [f"[{i}/{len(plan.steps)}] {s.key} ({state}); log {s.log}", "    " + s.command_line()]
    return "\n".join(lines)


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
        "Paper columns: IDEAL (ICASSP 2023, Table 1) on the IDEAL rows; the Global CL DSC of its comparison table "
        'where published; – where none. [a] The paper\'s "HD" (about 2 on ACDC) is probably HD95 in voxels '
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


def write_results(plan: SweepPlan, title: str | None = None) -> tuple[str, str]:
    """Collect the results of ``plan.out`` and write ``results.md`` and ``results.csv`` (atomically).

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
    return md, plan.results_md


# ----------------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _load_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt sweep record ({e}); use another out or overwrite=True.") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{path}: not a sweep record (no 'settings'); use another out or overwrite=True.")
    return record


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _step_record(step: SweepStep, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": step.kind,
        "method": step.method,
        "seed": step.seed,
        "fraction": step.fraction,
        "bundle_root": step.bundle_root,
        "log": step.log,
        "command": step.command,
        "command_line": step.command_line(),
        "status": status,
        **extra,
    }


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "<no log>"


def _clear(paths: Sequence[str]) -> None:
    for p in paths:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def _run_step(step: SweepStep) -> float:
    """Run one step's subprocess with its output in ``step.log``; returns the seconds it took."""
    _clear(step.clear)
    os.makedirs(step.bundle_root, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(step.log, "w", encoding="utf-8") as log:
        log.write(f"# {_now()} sweep step {step.key}\n# {step.command_line()}\n")
        log.flush()
        proc = subprocess.run(
            step.command, stdout=log, stderr=subprocess.STDOUT, cwd=step.bundle_root, env=env, check=False
        )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SweepStepError(
            f"sweep step {step.key} failed (exit code {proc.returncode}) in cell {step.bundle_root}; "
            f"log {step.log}, last lines:\n{_tail(step.log)}"
        )
    if step.kind == "pretrain" and not os.path.isfile(step.done_file):
        raise SweepStepError(f"sweep step {step.key} ended without writing {step.done_file}; log {step.log}.")
    if step.kind == "train":
        model = os.path.join(step.bundle_root, *MODEL_REL)
        if not os.path.isfile(model):
            raise SweepStepError(
                f"sweep step {step.key} wrote no {model} (it is saved at validation: is val_interval > max_epochs?); "
                f"log {step.log}, last lines:\n{_tail(step.log, 20)}"
            )
        if "pretrained_encoder" in " ".join(step.command):
            if "loaded pretrained encoder weights" not in _tail(step.log, 10**6):
                print(f"warning: {step.log} does not report 'loaded pretrained encoder weights'.", flush=True)
        atomic_write_text(step.done_file, json.dumps({"finished": _now(), "seconds": round(seconds, 1)}) + "\n")
    if step.kind == "evaluate" and not os.path.isfile(step.done_file):
        raise SweepStepError(f"sweep step {step.key} ended without writing {step.done_file}; log {step.log}.")
    return seconds


def sweep(
    bundle: str,
    fractions: Any = None,
    methods: Any = "supervised,global_cl,ideal",
    seeds: Any = "0",
    dataset_dir: str | None = None,
    out: str | None = None,
    overrides: Any = None,
    pretrain_overrides: Any = None,
    dry_run: Any = False,
    python: str = sys.executable,
    overwrite: Any = False,
    max_cells: int | None = None,
) -> str:
    """Run a label-fraction sweep of a bundle (methods x fractions x seeds) and write the results table.

    See the module docstring for the methods, the folder layout and resuming. Pre-training runs once per
    (method, seed) and every fine-tuning cell of that method and seed starts from its encoder
    (``--pretrained_encoder <out>/<method>/seed<k>/pretrain/models/pretrained_encoder.pt --use_pretrained True``).
    Every fine-tuning cell runs ``train`` then ``evaluate`` (``[method configs] + evaluate.json``) with
    ``--label_fraction <f> --seed <k> --dataset_dir <dataset_dir>``. Each step's output goes to its log file; a
    failed step raises :class:`SweepStepError` naming the cell and the log (with its last lines).

    Args:
        bundle: the bundle folder (``bundles/ideal_acdc``).
        fractions: label fractions, ``"1.25,2.5,10,100"``, a tuple or a number; default the dataset's published ones.
        methods: among ``supervised``, ``global_cl``, ``ideal`` and the ablations ``local_cl``, ``cps``, ``global_cps``.
        seeds: ``"0,1,2"``, a tuple or an int.
        dataset_dir: the prepared dataset (with ``datalist.json``); default ``<bundle>/data/prepared``.
        out: the sweep folder; default ``runs/sweep_<dataset>``.
        overrides: bundle ids applied to every fine-tuning and evaluation step, a dict or a Python literal string
            (``"{'backbone': 'resnet18', 'max_epochs': 20}"``); ``backbone``, ``spatial_size`` and ``num_workers``
            apply to pre-training too.
        pretrain_overrides: bundle ids applied to pre-training only (e.g. ``"{'max_epochs': 10}"``).
        dry_run: print the plan (commands, done / to run) and return without running or writing anything.
        python: the interpreter running ``monai.bundle``.
        overwrite: start afresh: delete the method folders, ``sweep.json`` and the results in ``out`` (also when
            they were made with other settings) and rerun every step.
        max_cells: stop after this many fine-tuning cells were run (staged runs); the table shows what is done.

    Returns:
        the path of ``results.md`` (also printed, with the table).

    Raises:
        ValueError: invalid arguments, or ``out`` holds a sweep made with other settings (without ``overwrite``).
        SweepStepError: a bundle subprocess failed.

    Example:
        >>> sweep("bundles/ideal_acdc", "10,100", "supervised,ideal", "0,1", dataset_dir="data/prepared",
        ...       out="runs/sweep", overrides={"backbone": "resnet18", "max_epochs": 20})  # doctest: +SKIP
        'runs/sweep/results.md'
    """
    from ideal_components.data.prepare import parse_bool

    dry_run, overwrite = parse_bool(dry_run, "dry_run"), parse_bool(overwrite, "overwrite")
    if max_cells is not None and (isinstance(max_cells, bool) or int(max_cells) < 0):
        raise ValueError(f"max_cells must be a non-negative integer, got {max_cells!r}.")
    plan = plan_sweep(
        bundle, fractions, methods, seeds, dataset_dir, out, overrides, pretrain_overrides, python, overwrite
    )
    out_dir = Path(plan.out)
    record = None if overwrite else _load_record(out_dir / SWEEP_FILE)
    if record is not None:
        diff = _settings_diff(record["settings"], plan.settings)
        if diff:
            raise ValueError(
                f"{out_dir / SWEEP_FILE} was made with other settings ({'; '.join(diff)}); resume with the same "
                "bundle, dataset_dir and overrides, use another out, or pass overwrite=True to start afresh."
            )
    if dry_run:
        text = format_plan(plan)
        if overwrite:
            text += f"\n(overwrite: the method folders, {SWEEP_FILE} and results in {out_dir} would be deleted)"
        print(text, flush=True)
        return plan.results_md
    if not Path(plan.settings["dataset_dir"], "datalist.json").is_file():
        raise FileNotFoundError(f"{plan.settings['dataset_dir']}: no datalist.json (prepare the dataset first).")

    if overwrite:
        _clear([str(out_dir / m) for m in METHODS] + [str(out_dir / n) for n in (SWEEP_FILE, RESULTS_MD, RESULTS_CSV)])
    out_dir.mkdir(parents=True, exist_ok=True)
    record = record or {"sweep_version": _SWEEP_VERSION, "settings": plan.settings, "created": _now(), "steps": {}}
    record.update(settings=plan.settings, dataset=plan.dataset, python=str(python), updated=_now())
    record["last_run"] = {"methods": plan.methods, "fractions": plan.fractions, "seeds": plan.seeds}
    for s in plan.steps:
        old = record["steps"].get(s.key, {})
        status = "done" if s.done else "pending"
        record["steps"][s.key] = _step_record(s, status, **{k: v for k, v in old.items() if k in ("seconds",)})

    def save() -> None:
        record["updated"] = _now()
        atomic_write_text(out_dir / SWEEP_FILE, json.dumps(record, indent=2) + "\n")

    save()
    pending = plan.pending()
    print(f"sweep {out_dir}: {len(pending)} of {len(plan.steps)} steps to run", flush=True)
    cells_run = 0
    for i, step in enumerate(pending, 1):
        if step.kind == "pretrain" and max_cells is not None and cells_run >= int(max_cells):
            break
        if step.kind == "train" and max_cells is not None and cells_run >= int(max_cells):
            print(f"max_cells={max_cells} reached; stopping (rerun to resume).", flush=True)
            break
        print(f"[{i}/{len(pending)}] {step.key} (log {step.log})", flush=True)
        record["steps"][step.key].update(status="running", started=_now())
        save()
        try:
            seconds = _run_step(step)
        except BaseException as e:
            record["steps"][step.key].update(status="failed" if isinstance(e, SweepStepError) else "interrupted")
            save()
            raise
        record["steps"][step.key].update(status="done", finished=_now(), seconds=round(seconds, 1))
        save()
        print(f"    done in {seconds:.0f} s", flush=True)
        if step.kind == "evaluate":
            cells_run += 1
            write_results(plan)
    md, path = write_results(plan)
    print(str(ReportResult(markdown=md, files=[path, plan.results_csv])), flush=True)
    return path
