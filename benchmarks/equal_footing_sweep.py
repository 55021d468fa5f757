"""The sweep on equal footing (issue #24, section 3; the plan: ``docs/plan_equal_footing.md``).

Run (resumable: a rerun skips every finished step; kill it at any time)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/equal_footing_sweep.py --out runs/equal_footing \\
        --lengths_from runs/pretrain_length

or, to use two cores, two such processes side by side on disjoint seeds (``--only_seeds 0,2,4`` and
``--only_seeds 1,3``), then ``--report_only`` for the report of both.

What it does:

1. **the length**: the pre-training length chosen from section 2 by the plan's rule
   (:func:`pretrain_length.choose_length` on ``--lengths_from``'s local probes), or ``--steps`` given by hand
   (the report then says so); it refuses to start while the rule cannot decide.
2. **reuse** (nothing is re-run that section 2 already ran with the same settings): the section-2 snapshots of that
   length become the sweep's encoders for their seeds (``ideal`` / ``local_cl`` from the local one, ``global_cl`` /
   ``global_cps`` from the global one), and its fine-tuned cells at that length (same data, overrides, seeds)
   are copied in. Every other seed pre-trains in the sweep with the same settings (bit-identical to a snapshot).
3. **the sweep**: ``python -m ideal_components sweep``'s code into ``--out``, with the section-2 settings
   (``pretrain_length.FULL``): the methods at 1 and 2 labelled volumes (2.5 and 10 %) with seeds 0-4, then at 100 %
   with seeds 0-2; the rivals (``pcl``, ``pcl_sup``, ``chaitanya``, ``chaitanya_sup``) with their own pre-training
   at the same length.
4. **the report**: ``<out>/report.md``, both parts together (the table at 2.5 / 10 % over seeds 0-4 and at 100 %
   over seeds 0-2, every paired difference of the plan with its t-interval over the seeds), rewritten after each
   part and when a run stops; ``--report_only`` writes it from what is done, running nothing. (Each sweep call's own
   ``results.md`` holds only its last call's fractions.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pretrain_length  # noqa: E402  (benchmarks/pretrain_length.py: section 2's driver, its settings and helpers)

from ideal_components.experiments.compare import COMPARISONS, paired_differences, paired_markdown  # noqa: E402
from ideal_components.experiments.results import collect_results, results_markdown  # noqa: E402
from ideal_components.experiments.sweep import sweep  # noqa: E402
from ideal_components.utils import atomic_write_text  # noqa: E402

METHODS = "supervised,cps,local_cl,ideal,global_cl,global_cps,pcl,pcl_sup,chaitanya,chaitanya_sup"
#: sweep method owning the encoder folder <- section-2 pre-training, and the fine-tuned methods copied from there
REUSED = {"ideal": "local", "global_cl": "global"}
FINETUNED = ("ideal", "local_cl", "global_cps", "global_cl", "cps", "supervised")


def section2_length(lengths_from: Path, setup: dict, lengths: str, seeds: list[int]) -> tuple[int | None, str, int]:
    """``(steps or None, reason, steps per epoch)`` from section 2's local probes (the plan's rule)."""
    per_epoch = pretrain_length.steps_per_epoch(lengths_from / "prepared", setup["pretrain"]["batch_size"])
    steps, reason = pretrain_length.choose_length(
        lengths_from, pretrain_length.epoch_lengths(lengths, per_epoch), seeds
    )
    return steps, reason, per_epoch


def reuse_section2(lengths_from: Path, out: Path, epochs: int, steps: int, seeds: list[int]) -> list[str]:
    """Copy section 2's encoders (snapshots of ``epochs``) and fine-tuned cells (``finetune/steps<steps>``) into the
    sweep folder where it looks for them; nothing present is overwritten. Returns what was copied."""
    copied = []
    for owner, method in REUSED.items():
        for seed in seeds:
            snapshot = lengths_from / "snapshots" / method / f"seed{seed}" / f"epochs{epochs}.pt"
            if snapshot.is_file():
                copied.append(pretrain_length.place_encoder(snapshot, out, owner, seed))
    cells = lengths_from / "finetune" / f"steps{steps}"
    copied += pretrain_length.copy_done_cells(cells, out, list(FINETUNED), seeds)
    return [str(p.relative_to(out)) for p in copied if p is not None]


def report(out: Path, methods: list[str], parts: list[tuple[list[str], list[int]]], length: str, command: str) -> str:
    """The section-3 report of what is done in ``out``: one table over the ``parts`` (``(fractions, seeds)``, each
    fraction with its own seeds) and the paired differences, each part over its own seeds. Partial while cells are
    missing: the table counts the seeds done of those planned, and a difference uses the seeds where both are done."""
    rows, paired = [], []
    comparisons = [c for c in COMPARISONS if c[0] in methods and c[1] in methods]
    for fractions, seeds in parts:  # collect_results adds cells found outside the plan: the report shows the plan's
        rows += [r for r in collect_results(str(out), methods, fractions, seeds, "acdc")
                 if r["method"] in methods and r["fraction"] in fractions]  # fmt: skip
        paired += paired_differences(str(out), fractions, seeds, comparisons=comparisons)
    planned = sum(len(methods) * len(f) * len(s) for f, s in parts)
    done = sum(len(r["seeds_done"]) for r in rows)
    lines = [
        results_markdown(rows, title="The sweep on equal footing (issue #24, section 3)").rstrip("\n"),
        "",
        f"Report written by `{command}`. Plan: `docs/plan_equal_footing.md`. Pre-training length: {length}. "
        f"**{done} of {planned} cells done**" + (" (partial: the figures change as cells finish)." if done < planned
                                                 else "."),
        "",
        "## Paired differences (test DSC; A - B per seed, Student-t 95 % interval over the seeds)",
        "",
        paired_markdown(paired) if paired else "(no pair of cells done yet)",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/equal_footing")
    parser.add_argument("--lengths_from", default="runs/pretrain_length", help="section 2's --out")
    parser.add_argument("--lengths", default="90,900,2700", help="section 2's lengths (steps)")
    parser.add_argument("--length_seeds", default="0,1,2", help="section 2's pre-training seeds")
    parser.add_argument("--steps", type=int, default=None, help="pre-training steps by hand (not the plan's rule)")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--fractions", default="2.5,10")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--full_fraction_seeds", default="0,1,2", help="seeds at 100 %% ('' for none)")
    parser.add_argument("--only_seeds", default=None,
                        help="run only these of the plan's seeds (processes side by side on disjoint seeds; the report "
                             "still counts the whole plan)")  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="print the plans, run nothing")
    parser.add_argument("--report_only", action="store_true", help="write <out>/report.md from what is done")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the bundle runs")
    args = parser.parse_args(argv)
    setup = pretrain_length.FULL
    lengths_from, out = Path(args.lengths_from).resolve(), Path(args.out).resolve()
    methods = [m for m in args.methods.split(",") if m]
    parts = [([f for f in args.fractions.split(",") if f], [int(s) for s in args.seeds.split(",") if s])]
    full_seeds = [int(s) for s in args.full_fraction_seeds.split(",") if s]
    parts += [(["100"], full_seeds)] if full_seeds else []
    if full_seeds and "100" in parts[0][0]:
        raise SystemExit("100 % is in --fractions and in --full_fraction_seeds; give it in one of them.")
    command = " ".join(["python benchmarks/equal_footing_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    report_md = out / "report.md"
    if args.report_only:
        chosen = out / "length.json"
        length = json.loads(chosen.read_text())["length"] if chosen.is_file() else "not chosen yet (no length.json)"
        atomic_write_text(str(report_md), report(out, methods, parts, length, command))
        print(report_md.read_text(), flush=True)
        return
    length_seeds = [int(s) for s in args.length_seeds.split(",") if s]
    steps, reason, per_epoch = section2_length(lengths_from, setup, args.lengths, length_seeds)
    if args.steps is not None:
        steps, reason = args.steps, f"{args.steps} steps given by hand (--steps), not the plan's rule ({reason})"
    if steps is None:
        raise SystemExit(f"section 3 cannot start: {reason} (in {lengths_from}); or give --steps.")
    epochs = max(1, round(steps / per_epoch))
    print(f"pre-training length: {reason}; {epochs} epochs of {per_epoch} steps", flush=True)
    only = None if args.only_seeds is None else {int(s) for s in args.only_seeds.split(",") if s}
    if only is not None and (not only or not only <= {s for _, part_seeds in parts for s in part_seeds}):
        raise SystemExit(f"--only_seeds {args.only_seeds!r}: give some of the plan's seeds ({parts}).")
    runs = [(f, [s for s in part_seeds if only is None or s in only]) for f, part_seeds in parts]
    seeds = runs[0][1]
    chosen = out / "length.json"
    if chosen.is_file() and json.loads(chosen.read_text()).get("steps") != epochs * per_epoch:
        raise SystemExit(f"{chosen} records another length ({chosen.read_text().strip()}); use another --out.")
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        for path in reuse_section2(lengths_from, out, epochs, epochs * per_epoch, seeds):
            print(f"reused from section 2: {path}", flush=True)
        note = {"length": reason, "epochs": epochs, "steps": epochs * per_epoch, "lengths_from": str(lengths_from)}
        atomic_write_text(str(chosen), json.dumps(note, indent=2) + "\n")
    overrides = {**setup["schedule"], **setup["finetune"]}
    pretrain_overrides = {**setup["pretrain"], "max_epochs": epochs}
    common = dict(dataset_dir=str(lengths_from / "prepared"), out=str(out), overrides=overrides,
                  pretrain_overrides=pretrain_overrides, dry_run=args.dry_run, python=args.python)  # fmt: skip

    def write_report() -> None:  # never in the way of the runs, nor of the error that stopped them
        try:
            atomic_write_text(str(report_md), report(out, methods, parts, reason, command))
        except Exception as e:  # a cell being written by the other process, say
            print(f"warning: {report_md} not written: {type(e).__name__}: {e}", flush=True)

    try:
        for fractions, part_seeds in (run for run in runs if run[1]):
            sweep(str(pretrain_length.BUNDLE), ",".join(fractions), args.methods, ",".join(map(str, part_seeds)),
                  **common)  # fmt: skip
            if not args.dry_run:
                write_report()
    except BaseException:  # a stopped run still leaves the report of what it finished
        if not args.dry_run and out.is_dir():
            write_report()
        raise
    if not args.dry_run and report_md.is_file():
        print(report_md.read_text(), flush=True)


if __name__ == "__main__":
    main()
