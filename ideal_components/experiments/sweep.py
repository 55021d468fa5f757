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
- ``pcl`` / ``pcl_sup`` (rival): PCL's pre-training ``pretrain.json`` + ``pretrain_pcl.json`` (run once), then
  ``train.json`` (cross pseudo-labels) / ``train.json`` + ``train_supervised.json``.
- ``chaitanya`` / ``chaitanya_sup`` (rival): Chaitanya et al.'s two stages in one folder (run once): ``pretrain.json``
  + ``pretrain_chaitanya.json`` (encoder), then ``pretrain.json`` + ``pretrain_chaitanya_decoder.json`` (decoder
  blocks, encoder frozen); fine-tuning loads both (``--pretrained_decoder``: decoder A), with cross pseudo-labels /
  supervised. Each stage takes the pre-training overrides (the same steps as the local pre-training).

Pre-training does not depend on the label fraction: it runs once per (pre-training, seed) and every fraction's cell
of the methods that use it starts from its encoder.

Layout of ``out``::

    sweep.json                                settings, command lines and state of every step (atomic)
    results.md, results.csv                   one row per (method, fraction), mean ± std over the seeds
    <method>/seed<k>/pretrain/                pre-training bundle_root: models/pretrained_encoder.pt, pretrain.log
                                              (Chaitanya: also models/pretrained_decoder.pt, pretrain_decoder.log)
    <method>/f<fraction>/seed<k>/             fine-tuning bundle_root: models/model.pt, train.log, eval.log,
                                              eval/metrics_summary.json, eval/metrics_per_volume.csv, ...

Resuming: a step is done when its output exists (``models/pretrained_encoder.pt`` for pre-training,
``train_done.json`` for fine-tuning, ``eval/metrics_summary.json`` for evaluation; all written atomically when the
step ends). A rerun skips the done steps; an unfinished pre-training or fine-tuning step continues from its last
epoch checkpoint (the bundles' ``--resume True``, which ends with the same weights as an uninterrupted run), an
unfinished evaluation is rerun from the start; ``overwrite=True`` removes every output and starts afresh.
Pre-training is skipped when every cell that needs it is done. ``sweep.json`` records the settings
(bundle, dataset, overrides); a rerun with other settings is refused unless ``overwrite=True``. A bundle folder
that moved (another checkout, another mount point) is no other setting when its ``configs/`` files are the same:
``sweep.json`` keeps their SHA-256 (``bundle_configs_sha256``), and a rerun from the new path resumes.

Two processes may share one ``out`` on disjoint cells (say seeds ``0,2,4`` and ``1,3``, one per core): each
writes ``sweep.json`` by re-reading it under a lock (``sweep.json.lock``, where the platform has ``fcntl``) and
replacing only the steps of its own plan, so neither erases the other's record.

Command line::

    python -m ideal_components sweep --bundle bundles/ideal_acdc --fractions 1.25,2.5,10,100 \\
        --methods supervised,global_cl,ideal --seeds 0,1,2 --dataset_dir PREPARED --out runs/sweep_acdc \\
        --overrides "{'backbone': 'resnet18', 'max_epochs': 20}" --pretrain_overrides "{'max_epochs': 10}"
    python -m ideal_components sweep --bundle bundles/ideal_acdc --dataset_dir PREPARED --dry_run True
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ideal_components.reporting.tables import ReportResult
from ideal_components.utils import atomic_write_text, parse_bool

from .methods import METHODS
from .plan import (
    _SWEEP_VERSION,
    MODEL_REL,
    PRETRAIN_KINDS,
    RESULTS_CSV,
    RESULTS_MD,
    SWEEP_FILE,
    SweepStep,
    SweepStepError,
    format_plan,
    plan_sweep,
)
from .results import write_results

__all__ = ["sweep", "bundle_configs_sha256"]


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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if absent) for the ``with`` block; none without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the re-read in _save_record still keeps the other process's steps
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _save_record(path: Path, record: dict[str, Any], own: Iterable[str]) -> None:
    """Write ``record`` to ``path`` atomically, keeping what another sweep process on the same folder wrote.

    Under a lock, the steps not in ``own`` (this process's plan) are taken from the file as it is now and
    ``record["steps"]`` becomes that merge (another process's progress also shows in this one's later writes);
    the settings were checked equal when both started.

    Args:
        path: the ``sweep.json`` to write.
        record: this process's record; its ``"steps"`` is replaced by the merge.
        own: the keys of the steps this process owns (``SweepStep.key``).
    """
    own = set(own)
    with _locked(path.with_name(path.name + ".lock")):
        try:
            current = _load_record(path)
        except ValueError:  # a corrupt file is replaced by this record, as before
            current = None
        if current is not None and isinstance(current.get("steps"), dict):
            theirs = current["steps"]  # the file's order is kept; this process's steps take its values
            record["steps"] = {**theirs, **{k: v for k, v in record["steps"].items() if k in own or k not in theirs}}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def bundle_configs_sha256(bundle: str | os.PathLike) -> str | None:
    """SHA-256 over the files of a bundle's ``configs/`` folder (each file's name and bytes, in name order); ``None``
    when the folder is absent.

    Example:
        >>> bundle_configs_sha256("bundles/ideal_acdc")  # doctest: +SKIP
        '3f1c...'
    """
    configs = Path(bundle) / "configs"
    if not configs.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted((p for p in configs.iterdir() if p.is_file()), key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _same_configs(record: Mapping[str, Any], configs_sha256: str | None) -> bool:
    """Whether the record's bundle had the configs ``configs_sha256``: by the digest the record keeps, or, for a
    record written before it kept one, by the configs still at the record's bundle path."""
    if configs_sha256 is None:
        return False
    recorded = record.get("bundle_configs_sha256") or bundle_configs_sha256(record["settings"].get("bundle") or "")
    return recorded == configs_sha256


def _only_the_bundle_moved(record: Mapping[str, Any], settings: Mapping[str, Any], configs_sha256: str | None) -> bool:
    """Whether the only setting that differs is the bundle's path, and its configs are the record's."""
    old = record["settings"]
    changed = {k for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
    return changed == {"bundle"} and _same_configs(record, configs_sha256)


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
    if step.kind in PRETRAIN_KINDS and not os.path.isfile(step.done_file):
        raise SweepStepError(f"sweep step {step.key} ended without writing {step.done_file}; log {step.log}.")
    if step.kind == "train":
        model = os.path.join(step.bundle_root, *MODEL_REL)
        if not os.path.isfile(model):
            raise SweepStepError(
                f"sweep step {step.key} wrote no {model} (it is saved at validation: is val_interval > max_epochs?); "
                f"log {step.log}, last lines:\n{_tail(step.log, 20)}"
            )
        log = _tail(step.log, 10**6)
        for weights, message in (("encoder", "loaded pretrained encoder weights"),
                                 ("decoder", "loaded pretrained decoder block(s)")):  # fmt: skip
            if f"--pretrained_{weights}" in step.command and message not in log:
                print(f"warning: {step.log} does not report '{message}'.", flush=True)
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
        methods: among ``supervised``, ``global_cl``, ``ideal``, the ablations ``local_cl``, ``cps``, ``global_cps``
            and the rivals ``pcl`` / ``pcl_sup``, ``chaitanya`` / ``chaitanya_sup``.
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

    dry_run, overwrite = parse_bool(dry_run, "dry_run"), parse_bool(overwrite, "overwrite")
    if max_cells is not None and (isinstance(max_cells, bool) or int(max_cells) < 0):
        raise ValueError(f"max_cells must be a non-negative integer, got {max_cells!r}.")
    plan = plan_sweep(
        bundle, fractions, methods, seeds, dataset_dir, out, overrides, pretrain_overrides, python, overwrite
    )
    out_dir = Path(plan.out)
    record = None if overwrite else _load_record(out_dir / SWEEP_FILE)
    configs_sha256 = bundle_configs_sha256(plan.settings["bundle"])
    if record is not None:
        diff = _settings_diff(record["settings"], plan.settings)
        if _only_the_bundle_moved(record, plan.settings, configs_sha256):
            print(f"{out_dir / SWEEP_FILE}: the bundle moved from {record['settings'].get('bundle')} to "
                  f"{plan.settings['bundle']}, its configs unchanged: resuming", flush=True)  # fmt: skip
            diff = []
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
        names = (SWEEP_FILE, SWEEP_FILE + ".lock", RESULTS_MD, RESULTS_CSV)
        _clear([str(out_dir / m) for m in METHODS] + [str(out_dir / n) for n in names])
    out_dir.mkdir(parents=True, exist_ok=True)
    record = record or {"sweep_version": _SWEEP_VERSION, "settings": plan.settings, "created": _now(), "steps": {}}
    record.update(settings=plan.settings, dataset=plan.dataset, python=str(python), updated=_now())
    record["bundle_configs_sha256"] = configs_sha256
    record["last_run"] = {"methods": plan.methods, "fractions": plan.fractions, "seeds": plan.seeds}
    for s in plan.steps:
        old = record["steps"].get(s.key, {})
        status = "done" if s.done else "pending"
        record["steps"][s.key] = _step_record(s, status, **{k: v for k, v in old.items() if k in ("seconds",)})

    own = [s.key for s in plan.steps]

    def save() -> None:
        record["updated"] = _now()
        _save_record(out_dir / SWEEP_FILE, record, own)

    save()
    pending = plan.pending()
    print(f"sweep {out_dir}: {len(pending)} of {len(plan.steps)} steps to run", flush=True)
    cells_run = 0
    for i, step in enumerate(pending, 1):
        if step.kind in PRETRAIN_KINDS and max_cells is not None and cells_run >= int(max_cells):
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
