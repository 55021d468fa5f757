"""Why a fine-tuned cell of a sweep segments almost nothing: each decoder's Dice on the cell's own data subsets.

A cell of ``python -m ideal_components sweep`` (or ``benchmarks/equal_footing_sweep.py``) that ends with test Dice near
0 can fail in different ways, and each asks for a different fix:

- **batch-norm statistics**: the network segments with batch statistics (BN in training mode) but not with the
  running statistics that validation, evaluation and inference use;
- **memorisation**: it segments the labelled volumes it was trained on and outputs background everywhere else, with
  either kind of BN statistics (with two decoders agreeing on background, the cross-pseudo-label loss is near 0);
- **the wrong decoder**: one decoder segments and the other, the one evaluated, does not.

For each cell the script rebuilds the network with the cell's own ``monai.bundle run`` command (read from the sweep's
``sweep.json``), loads the weights at the end of training (``models/train_checkpoint_epoch=<max_epochs>.pt``, every
decoder) and the weights the evaluation loads (``models/model.pt``, the ``inference_network``), and reports the mean
3D Dice over the foreground classes present in the label (MONAI's ``compute_dice``; per volume, then the mean over
volumes, as the evaluation averages; unlike the evaluation, which scores a class absent from both the label and the
prediction as 1, a class absent from the label is left out) and the fraction of pixels predicted as foreground, on:
the cell's labelled training volumes, the labelled volumes flipped along the last in-plane axis (outside the
training augmentation: a memorised volume is not recognised flipped, a learned heart is), its unlabelled training
volumes (their labels are on disk), the validation volumes and the test volumes; with BN in eval mode and in
training mode (the batch = one volume's slices; the running statistics are not touched, which the script checks).
The logged best validation Dice of the cell is printed next to the evaluated model's validation Dice, as a check
that the rebuild matches the run.

Run: ``OMP_NUM_THREADS=1 python benchmarks/diagnose_collapse.py --out runs/equal_footing --cells ideal/f10/seed4
cps/f10/seed0 [...]`` (about 1-2 minutes per cell on one CPU thread). Appends a section to
``benchmarks/results/collapse_diagnosis.md`` (``--reset`` starts the file afresh) and writes
``<out>/<cell>/collapse_diagnosis.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.experiments.results import _cell_metrics  # noqa: E402  (the sweep's own reader)
from ideal_components.utils import atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "collapse_diagnosis.md"
SUBSETS = ("labelled", "labelled, flipped", "unlabelled", "validation", "test")
_VAL_DICE = re.compile(r"Metrics -- val_mean_dice: ([0-9.]+)")


def cell_parser(out: Path, cell: str) -> Any:
    """The ConfigParser of the cell's training step, as the sweep ran it (config files and overrides)."""
    from monai.bundle import ConfigParser

    record = json.loads((out / "sweep.json").read_text())
    step = record["steps"].get(f"{cell}/train")
    if step is None:
        raise SystemExit(f"{out / 'sweep.json'}: no training step {cell}/train (cells look like ideal/f10/seed4)")
    command = step["command"]
    args = command[command.index("run") + 1 :]
    values = dict(zip(args[::2], args[1::2]))
    parser = ConfigParser()
    parser.read_config(ast.literal_eval(values.pop("--config_file")))
    parser.read_meta(values.pop("--meta_file"))
    values.pop("--logging_file", None)
    for key, value in values.items():
        try:
            parser[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser[key[2:]] = value
    parser["device"] = "$torch.device('cpu')"
    return parser


def load_volumes(dataset_dir: Path, items: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(slices ``(S, 1, H, W)``, labels ``(S, H, W)``) per prepared volume; the slice axis is the last."""
    volumes = []
    for item in items:
        image = np.asarray(nib.load(str(dataset_dir / item["image"])).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(dataset_dir / item["label"])).dataobj).astype(np.int64)
        volumes.append((torch.from_numpy(np.moveaxis(image, -1, 0)[:, None].copy()),
                        torch.from_numpy(np.moveaxis(label, -1, 0).copy())))  # fmt: skip
    return volumes


def volume_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in the label (a class absent from the label is left out, whether
    predicted or not; one present in the label but not predicted counts 0)."""
    p = one_hot(pred[None, None], num_classes)
    y = one_hot(label[None, None], num_classes)
    return float(torch.nanmean(compute_dice(p, y, include_background=False, ignore_empty=True)))


@torch.no_grad()
def score(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], network: torch.nn.Module, volumes: list,
          bn: str, num_classes: int) -> dict:  # fmt: skip
    """Per decoder (``forward(x)`` gives each decoder's logits by name, from one forward): mean volume Dice and the
    fraction of pixels predicted as foreground. ``bn="train"`` normalises with each volume's batch statistics; the
    running statistics are left untouched (momentum 0, checked)."""
    bns = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {id(m): (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns}  # fmt: skip
    network.eval()
    if bn == "train":
        for m in bns:
            m.train()
            m.momentum = 0.0
    dice: dict[str, list[float]] = {}
    foreground: dict[str, list[float]] = {}
    try:
        for x, y in volumes:
            for name, logits in forward(x).items():
                pred = logits.argmax(1)
                dice.setdefault(name, []).append(volume_dice(pred, y, num_classes))
                foreground.setdefault(name, []).append(float((pred > 0).float().mean()))
    finally:
        for m in bns:
            momentum, mean, var, count = saved[id(m)]
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
            if not (torch.equal(mean, m.running_mean) and torch.equal(var, m.running_var)):
                raise RuntimeError("the BN running statistics changed during scoring")
        network.eval()
    return {n: {"dice": statistics.mean(dice[n]), "predicted_foreground": statistics.mean(foreground[n])} for n in dice}


def diagnose(out: Path, cell: str) -> dict:
    """The figures of one cell (see the module docstring)."""
    parser = cell_parser(out, cell)
    cell_dir = out / cell
    dataset_dir = Path(parser.get_parsed_content("dataset_dir"))
    datalist = json.loads((dataset_dir / "datalist.json").read_text())
    key = parser.get_parsed_content("train#fraction_key")
    labelled = load_volumes(dataset_dir, datalist[f"labeled_{key}"])
    volumes = {
        "labelled": labelled,
        "labelled, flipped": [(x.flip(-1), y.flip(-1)) for x, y in labelled],
        "unlabelled": load_volumes(dataset_dir, datalist.get(f"unlabeled_{key}", [])),
        "validation": load_volumes(dataset_dir, datalist["validation"]),
        "test": load_volumes(dataset_dir, datalist["test"]),
    }
    num_classes = int(parser.get_parsed_content("num_classes"))
    epochs = int(parser.get_parsed_content("max_epochs"))
    final = cell_dir / "models" / f"train_checkpoint_epoch={epochs}.pt"
    evaluated = cell_dir / "models" / "model.pt"
    for path in (final, evaluated):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (has the cell finished training?)")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(final, map_location="cpu", weights_only=False)["network"], strict=True)
    figures: dict[str, Any] = {"cell": cell, "fraction_key": key, "rows": {}}

    def add_rows(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], net: torch.nn.Module) -> None:
        for bn in ("eval", "train"):
            for subset, vols in volumes.items():
                if vols:
                    for name, fig in score(forward, net, vols, bn, num_classes).items():
                        figures["rows"].setdefault(f"{name} | BN {bn}", {})[subset] = fig

    if hasattr(network, "forward_both"):  # two decoders, both from one forward
        add_rows(lambda x: dict(zip(("final, decoder A", "final, decoder B"), network.forward_both(x))), network)
    else:
        add_rows(lambda x: {"final": network(x)}, network)
    inference = network.branch_a if hasattr(network, "forward_both") else network  # the bundles' inference_network
    inference.load_state_dict(torch.load(evaluated, map_location="cpu", weights_only=False), strict=True)
    add_rows(lambda x: {"evaluated (model.pt)": inference(x)}, inference)
    logged = [float(v) for v in _VAL_DICE.findall((cell_dir / "train.log").read_text(errors="replace"))]
    figures["logged_validation_dice"] = logged
    figures["test_dice_of_the_evaluation"] = _evaluation_dice(cell_dir)
    atomic_write_text(str(cell_dir / "collapse_diagnosis.json"), json.dumps(figures, indent=1) + "\n")
    return figures


def _evaluation_dice(cell_dir: Path) -> float | None:
    summary = cell_dir / "eval" / "metrics_summary.json"
    return _cell_metrics(summary)["dice"] if summary.is_file() else None


def markdown(figures: dict) -> list[str]:
    logged = figures["logged_validation_dice"]
    test = figures["test_dice_of_the_evaluation"]
    head = f"### {figures['cell']}"
    if logged:
        head += (f"\n\nLogged validation Dice: {' '.join(f'{v:.4f}' for v in logged)} (best {max(logged):.4f}); "
                 f"test Dice of the evaluation: {'n/a' if test is None else format(test, '.3f')}.")  # fmt: skip
    lines = [head, "", "| weights, decoder | BN | " + " | ".join(SUBSETS) + " |", "|---|---|" + "---|" * len(SUBSETS)]
    for row, by_subset in figures["rows"].items():
        name, bn = row.split(" | ")
        cells = [f"{by_subset[s]['dice']:.3f} ({by_subset[s]['predicted_foreground']:.3f})" if s in by_subset else "–"
                 for s in SUBSETS]  # fmt: skip
        lines.append(f"| {name} | {bn[3:]} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the sweep's output folder (holds sweep.json)")
    parser.add_argument("--cells", nargs="+", required=True, help="cells like ideal/f10/seed4")
    parser.add_argument("--reset", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    lines = [
        f"## {', '.join(args.cells)}",
        "",
        f"Command: `python benchmarks/diagnose_collapse.py {shlex.join(sys.argv[1:])}`. Each entry: mean 3D Dice over "
        "the foreground classes (per volume, then over volumes) and, in brackets, the fraction of pixels predicted as "
        "foreground. Weights: 'final' = the end of training (every decoder); 'evaluated' = `models/model.pt`, what "
        "the evaluation and inference load. BN eval = running statistics (as evaluated); BN train = each volume's "
        "batch statistics.",
        "",
    ]
    for cell in args.cells:
        section = markdown(diagnose(out, cell))
        print("\n".join(section), flush=True)
        lines += section
    previous = "" if args.reset or not RESULTS.is_file() else RESULTS.read_text()
    if not previous:
        previous = "# Why a fine-tuned cell segments almost nothing: each decoder on the cell's own data\n\n"
    atomic_write_text(str(RESULTS), previous + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
