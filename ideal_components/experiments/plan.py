"""Planning a label-fraction sweep: the steps and their commands.

:func:`plan_sweep` turns the settings (bundle, fractions, methods, seeds, data, overrides) into a :class:`SweepPlan`:
one :class:`SweepStep` per pre-training, fine-tuning and evaluation, each a ``python -m monai.bundle run`` command
with its bundle_root and whether it is already done. Nothing runs here (:mod:`.sweep` runs the plan).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ideal_components.facts import PAPER_RESULTS

from .arguments import cli_args, parse_methods, parse_overrides, parse_seeds, parse_sweep_fractions
from .methods import METHODS

__all__ = ["SHARED_KEYS", "RESERVED_KEYS", "SweepStep", "SweepPlan", "SweepStepError", "plan_sweep", "format_plan"]

SWEEP_FILE = "sweep.json"
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
TRAIN_DONE = "train_done.json"
ENCODER_REL = ("models", "pretrained_encoder.pt")
DECODER_REL = ("models", "pretrained_decoder.pt")
#: the kinds of pre-training step (stage 1, and Chaitanya et al.'s decoder stage)
PRETRAIN_KINDS: tuple[str, ...] = ("pretrain", "pretrain_decoder")
SUMMARY_REL = ("eval", "metrics_summary.json")
MODEL_REL = ("models", "model.pt")
_SWEEP_VERSION = 1

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
    "pretrained_decoder",
)


class SweepStepError(RuntimeError):
    """A bundle subprocess of the sweep failed; the message names the step, its bundle_root and its log."""


@dataclass
class SweepStep:
    """One ``python -m monai.bundle run`` of a sweep.

    Attributes:
        kind: ``"pretrain"``, ``"pretrain_decoder"`` (a second pre-training stage), ``"train"`` or ``"evaluate"``.
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
        """``"<method>/seed<k>/<pretrain|pretrain_decoder>"`` or ``"<method>/f<fraction>/seed<k>/<train|evaluate>"``."""
        if self.fraction is None:
            return f"{self.method}/seed{self.seed}/{self.kind}"
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
    return cmd + cli_args(args)


def _check_configs(configs_dir: Path, method_names: Sequence[str]) -> None:
    """Every bundle config the methods need exists."""
    needed = {"metadata.json", "logging.conf", "evaluate.json"}
    for m in method_names:
        needed |= set(METHODS[m].finetune) | set(METHODS[m].pretrain or ()) | set(METHODS[m].pretrain_decoder or ())
    missing = sorted(n for n in needed if not (configs_dir / n).is_file())
    if missing:
        raise FileNotFoundError(f"{configs_dir}: missing bundle config(s) {missing}.")


def _check_fractions_in_datalist(datalist: Path, fraction_keys: Sequence[str]) -> None:
    """Every label fraction has its split in the datalist (when the datalist exists and lists its fractions)."""
    if not datalist.is_file():
        return
    try:
        available = json.loads(datalist.read_text(encoding="utf-8")).get("fractions")
    except (OSError, ValueError) as e:
        raise ValueError(f"{datalist}: cannot read the datalist ({e}).") from None
    if isinstance(available, list):
        absent = [f for f in fraction_keys if f not in [str(a) for a in available]]
        if absent:
            raise ValueError(f"{datalist}: no label fraction(s) {absent}; it has {available}.")


def _phase_overrides(overrides: Any, pretrain_overrides: Any) -> tuple[dict, dict, dict]:
    """``(fine-tuning overrides, pre-training overrides as given, pre-training overrides used)``: the ids of
    :data:`SHARED_KEYS` come from ``overrides`` for both phases; none may set an id of :data:`RESERVED_KEYS`."""
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
    return ft, pt_own, {**{k: ft[k] for k in SHARED_KEYS if k in ft}, **pt_own}


def _cell_steps(
    python: str,
    configs_dir: Path,
    method: str,
    seed: int,
    fraction: str,
    cell: Path,
    args: dict[str, Any],
    ignore_done: bool,
) -> list[SweepStep]:
    """The ``train`` and ``evaluate`` steps of one (method, fraction, seed) cell, fine-tuning with ``args``."""
    finetune = METHODS[method].finetune
    summary = cell.joinpath(*SUMMARY_REL)
    eval_done = summary.is_file() and not ignore_done
    train = SweepStep(
        "train",
        method,
        seed,
        fraction,
        str(cell),
        str(cell / "train.log"),
        str(cell / TRAIN_DONE),
        _bundle_command(python, configs_dir, finetune, cell, {**args, "resume": not ignore_done}),
        clear=[str(cell / TRAIN_DONE), str(cell / "eval")]
        + ([str(cell / "models"), str(cell / "logs")] if ignore_done else []),
        done=eval_done or ((cell / TRAIN_DONE).is_file() and not ignore_done),
    )
    evaluate = SweepStep(
        "evaluate",
        method,
        seed,
        fraction,
        str(cell),
        str(cell / "eval.log"),
        str(summary),
        _bundle_command(python, configs_dir, (*finetune, "evaluate.json"), cell, args),
        clear=[str(cell / "eval")],
        done=eval_done,
    )
    return [train, evaluate]


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
    _check_configs(configs_dir, method_names)
    data_dir = Path(dataset_dir).expanduser().resolve() if dataset_dir else bundle_dir / "data" / "prepared"
    datalist = data_dir / "datalist.json"
    dataset = _dataset_name(bundle_dir, datalist)
    fraction_keys = parse_sweep_fractions(fractions, dataset)
    _check_fractions_in_datalist(datalist, fraction_keys)
    seed_list = parse_seeds(seeds)
    ft, pt_own, pt = _phase_overrides(overrides, pretrain_overrides)
    _check_validation_runs(configs_dir, ft, method_names)

    out_dir = Path(out if out else os.path.join("runs", f"sweep_{dataset or bundle_dir.name}")).expanduser().resolve()
    settings = {"bundle": str(bundle_dir), "dataset_dir": str(data_dir), "overrides": ft, "pretrain_overrides": pt_own}
    steps: list[SweepStep] = []
    for seed in seed_list:
        pretrain_steps: dict[tuple[Path, str], SweepStep] = {}  # one per (pre-training folder, stage), shared
        for m in method_names:
            spec = METHODS[m]
            cell_steps: list[SweepStep] = []
            encoder: Path | None = None
            decoder: Path | None = None
            if spec.pretrain is not None:
                root = out_dir / (spec.pretrain_owner or m) / f"seed{seed}" / "pretrain"
                encoder = root.joinpath(*ENCODER_REL)
                decoder = root.joinpath(*DECODER_REL) if spec.pretrain_decoder else None
            for f in fraction_keys:
                cell = out_dir / m / f"f{f}" / f"seed{seed}"
                args: dict[str, Any] = {"dataset_dir": str(data_dir), "seed": seed, "label_fraction": f}
                args["use_pretrained"] = encoder is not None
                if encoder is not None:
                    args["pretrained_encoder"] = str(encoder)
                if decoder is not None:
                    args["pretrained_decoder"] = str(decoder)
                args.update(ft)
                cell_steps += _cell_steps(python, configs_dir, m, seed, f, cell, args, ignore_done)
            if encoder is not None:
                root = encoder.parent.parent
                args = {"dataset_dir": str(data_dir), "seed": seed, **pt}
                cells_done = all(s.done for s in cell_steps)
                stages = [("pretrain", spec.pretrain or (), encoder)]
                if decoder is not None:  # the second stage reads the first's encoder, in the same folder
                    stages.append(("pretrain_decoder", spec.pretrain_decoder or (), decoder))
                for kind, configs, done_file in stages:
                    shared = pretrain_steps.get((root, kind))
                    if shared is None:
                        pretrain_steps[(root, kind)] = SweepStep(
                            kind,
                            spec.pretrain_owner or m,
                            seed,
                            None,
                            str(root),
                            str(root / f"{kind}.log"),
                            str(done_file),
                            _bundle_command(python, configs_dir, configs, root, {**args, "resume": not ignore_done}),
                            clear=(
                                [str(root / "models"), str(root / "logs")] if ignore_done and kind == "pretrain" else []
                            ),
                            done=cells_done or (done_file.is_file() and not ignore_done),
                        )
                        steps.append(pretrain_steps[(root, kind)])
                    elif not cells_done:  # another method still needs the shared pre-training
                        shared.done = done_file.is_file() and not ignore_done
            steps += cell_steps
        for (root, kind), stage in pretrain_steps.items():
            first = pretrain_steps[(root, "pretrain")]
            if kind != "pretrain" and not first.done:
                # stage 1 will (re)run: the next stage starts afresh from the new encoder, never from files (or
                # checkpoints, which hold the old frozen encoder) of an earlier stage 2; stage 1 removes them
                stage.done = False
                stale = [stage.done_file] + sorted(str(p) for p in (root / "models").glob(f"{kind}_checkpoint*"))
                first.clear = first.clear + [p for p in stale if p not in first.clear]
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
