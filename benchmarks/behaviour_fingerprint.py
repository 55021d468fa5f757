"""The behaviour fingerprint: sha256 of what every stage writes, for proving that a restructuring changed nothing.

Runs the whole flow at a tiny size on CPU (phantoms -> prepare -> pretrain (local and global) -> train (CPS and
supervised) -> evaluate -> inference, for ACDC; phantoms -> prepare -> train -> inference for MMWHS), with a fixed
seed, and prints one JSON object ``stage -> sha256``. Run it before and after a restructuring and compare::

    python benchmarks/behaviour_fingerprint.py --out runs/fingerprint > before.json
    ... restructure ...
    python benchmarks/behaviour_fingerprint.py --out runs/fingerprint > after.json && diff before.json after.json

Only what is meant to be reproducible is hashed: the prepared volumes and datalists, the network weights (tensors,
not the pickled file, whose bytes depend on the torch version's zip writer), the per-volume metrics CSVs and the
inference outputs' voxels and affines. Logs, timestamps and provenance sidecars are not. Paths inside the hashed
text files (the datalist's provenance, the metrics CSVs' ``filename`` column) are written relative to ``--out``, so
runs in different folders compare. Floating-point results depend on the CPU's kernels and the installed versions:
compare fingerprints made on the same machine and environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "resnet10", "--num_workers", "0", "--spatial_size", "[64,64]", "--batch_size", "4", "--seed", "3"]


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(cwd))
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{(proc.stdout + proc.stderr)[-4000:]}")


def _bundle(bundle: str, configs: list[str], root: Path, *args: str) -> None:
    cdir = REPO / "bundles" / bundle / "configs"
    files = "[" + ",".join(f"'{cdir / c}'" for c in configs) + "]"
    meta = ["--meta_file", str(cdir / "metadata.json"), "--logging_file", str(cdir / "logging.conf")]
    _run("-m", "monai.bundle", "run", "--config_file", files, *meta, "--bundle_root", str(root), *args, cwd=root.parent)


_OUT: list[str] = []  # the scratch folder, replaced by "<out>" in hashed text


def _relative_text(text: str) -> bytes:
    for root in _OUT:
        text = text.replace(root, "<out>")
    return text.encode()


def _digest_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        if p.name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(p))
            h.update(np.ascontiguousarray(np.asarray(img.dataobj)).tobytes())
            h.update(np.asarray(img.affine, dtype=np.float64).round(6).tobytes())
        elif p.suffix in (".csv", ".json", ".cfg", ".txt"):
            h.update(_relative_text(p.read_text(encoding="utf-8")))
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def _digest_tree(folder: Path, pattern: str = "*") -> str:
    return _digest_files(sorted(p for p in folder.rglob(pattern) if p.is_file()))


def _digest_weights(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("network", state)  # a training checkpoint or a bare state dict
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(out: Path) -> dict[str, str]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _OUT[:] = [str(out)]
    result: dict[str, str] = {}
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    raw, prepared, run = out / "acdc_raw", out / "acdc_prepared", out / "acdc_run"
    _run("-m", "ideal_components", "synth_acdc", str(raw), "--patients", "6", "--seed", "1", cwd=out)
    result["acdc_phantoms"] = _digest_tree(raw)
    hard = out / "acdc_hard_raw"
    _run("-m", "ideal_components", "synth_acdc", str(hard), "--patients", "2", "--seed", "1", "--difficulty", "hard",
         cwd=out)  # fmt: skip
    result["acdc_hard_phantoms"] = _digest_tree(hard)
    _run("-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "4.0", "--spatial_size", "64",
         cwd=out)  # fmt: skip
    result["acdc_prepared"] = _digest_tree(prepared, "*.nii.gz")
    datalist = json.loads((prepared / "datalist.json").read_text())
    datalist.pop("preparation", None)  # provenance: paths and versions
    result["acdc_datalist"] = hashlib.sha256(_relative_text(json.dumps(datalist, sort_keys=True))).hexdigest()

    data = ["--dataset_dir", str(prepared)]
    run.mkdir()
    _bundle("ideal_acdc", ["pretrain.json"], run, *TINY, *data, "--max_epochs", "1")
    result["acdc_pretrained_encoder"] = _digest_weights(run / "models" / "pretrained_encoder.pt")
    _bundle("ideal_acdc", ["train.json"], run, *TINY, *data, "--max_epochs", "2", "--val_interval", "1")
    result["acdc_cps_model"] = _digest_weights(run / "models" / "model.pt")
    _bundle("ideal_acdc", ["train.json", "evaluate.json"], run, *TINY, *data)
    result["acdc_eval_metrics"] = _digest_files([run / "eval" / "metrics_per_volume.csv"])
    result["acdc_eval_raw_metrics"] = _digest_files([run / "eval" / "metrics_per_volume_raw.csv"])
    result["acdc_eval_predictions"] = _digest_tree(run / "eval" / "predictions", "*.nii.gz")
    inputs = out / "acdc_inputs"
    inputs.mkdir()
    src = raw / "training" / "patient003" / "patient003_frame01.nii.gz"
    shutil.copy(src, inputs / src.name)
    _bundle("ideal_acdc", ["inference.json"], run, *TINY, "--dataset_dir", str(inputs), "--pixdim", "[4.0,4.0,-1]")
    result["acdc_inference"] = _digest_tree(run / "predictions", "*.nii.gz")

    sup = out / "acdc_supervised"
    sup.mkdir()
    _bundle("ideal_acdc", ["train.json", "train_supervised.json"], sup, *TINY, *data, "--max_epochs", "1",
            "--use_pretrained", "False")  # fmt: skip
    result["acdc_supervised_model"] = _digest_weights(sup / "models" / "model.pt")
    glob = out / "acdc_global"
    glob.mkdir()
    _bundle("ideal_acdc", ["pretrain.json", "pretrain_global.json"], glob, *TINY, *data, "--max_epochs", "1")
    result["acdc_global_encoder"] = _digest_weights(glob / "models" / "pretrained_encoder.pt")

    mraw, mprep, mrun = out / "mmwhs_raw", out / "mmwhs_prepared", out / "mmwhs_run"
    _run("-m", "ideal_components", "synth_mmwhs", str(mraw), "--volumes", "5", "--seed", "2", cwd=out)
    result["mmwhs_phantoms"] = _digest_tree(mraw)
    _run("-m", "ideal_components", "prepare_mmwhs", str(mraw), str(mprep), "--pixdim", "6.0", "--spatial_size", "32",
         cwd=out)  # fmt: skip
    result["mmwhs_prepared"] = _digest_tree(mprep, "*.nii.gz")
    mrun.mkdir()
    tiny = [*TINY[:4], "--spatial_size", "[32,32]", "--batch_size", "4", "--seed", "3", "--dataset_dir", str(mprep)]
    _bundle("ideal_mmwhs", ["train.json"], mrun, *tiny, "--max_epochs", "1", "--use_pretrained", "False")
    result["mmwhs_model"] = _digest_weights(mrun / "models" / "model.pt")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/fingerprint", help="scratch folder (emptied first)")
    args = parser.parse_args()
    print(json.dumps(fingerprint(Path(args.out).resolve()), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
