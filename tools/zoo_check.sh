#!/usr/bin/env bash
# The MONAI model zoo's own pre-merge checks on both packaged bundles, as a zoo maintainer runs them, offline:
#   tools/zoo_check.sh /path/to/model-zoo [workdir]
# For each bundle: package it with random weights of its network_def (package_bundle --include_weights), unpack it
# into <workdir>/models/, install in a fresh virtual environment torch (pinned first) and then exactly what the zoo's
# ci/get_bundle_requirements.py derives from the archive's metadata.json (plus jsonschema and pyyaml, which the zoo's
# CI installs from its requirements-dev.txt), check that ideal_components is NOT importable there, run the zoo's
# ci/verify_bundle.py in full mode (the metadata schema is supplied locally as eval/schema.json, so nothing is
# downloaded), and finally segment a phantom volume with the archive's inference.json in that environment.
# Fetching the zoo is your step (git clone https://github.com/Project-MONAI/model-zoo); it needs this repository's
# .venv (make install) to package the bundles, and a few minutes.
set -euo pipefail
ZOO=$(cd "$1" && pwd)
WORK=${2:-$(mktemp -d)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$REPO/.venv/bin/python
TORCH=$(sed -n 's/^torch==//p' "$REPO/constraints.txt")
mkdir -p "$WORK/models"
cp -r "$ZOO/ci" "$WORK/"
echo '{}' > "$WORK/models/model_info.json"
test -x "$WORK/venv/bin/python" || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==$TORCH"
"$PY" -m ideal_components synth_acdc "$WORK/phantom" --patients 1 --seed 0 --progress False >/dev/null
mkdir -p "$WORK/inputs"
cp "$WORK/phantom/training/patient001/patient001_frame01.nii.gz" "$WORK/inputs/"
cd "$WORK"
for b in ideal_acdc ideal_mmwhs; do
  "$PY" - "$REPO" "$WORK" "$b" <<'PY'
import json, sys, zipfile
import torch
from monai.networks.nets import FlexibleUNet
from ideal_components.package import package_bundle
repo, work, b = sys.argv[1:]
inf = json.load(open(f"{repo}/bundles/{b}/configs/inference.json"))
torch.manual_seed(0)
net = FlexibleUNet(1, inf["num_classes"], backbone=inf["backbone"], spatial_dims=2, upsample="deconv")
torch.save(net.state_dict(), f"{work}/{b}_model.pt")
archive = package_bundle(f"{repo}/bundles/{b}", out=f"{work}/dist", weights=f"{work}/{b}_model.pt", include_weights=True)
zipfile.ZipFile(archive).extractall(f"{work}/models")
print("packed", archive)
PY
  mkdir -p "models/$b/eval"
  cp "$REPO/tests/data/meta_schema_20240725.json" "models/$b/eval/schema.json"
  req=$("$PY" ci/get_bundle_requirements.py --b "$b")
  echo "== $b: $(tr '\n' ' ' < "$req")"
  "$WORK/venv/bin/pip" install -q -r "$req"
  "$WORK/venv/bin/pip" install -q jsonschema pyyaml
  (cd / && "$WORK/venv/bin/python" -c "import importlib.util as u; assert u.find_spec('ideal_components') is None")
  "$WORK/venv/bin/python" ci/verify_bundle.py -b "$b" -p models -m full
  (cd "models/$b" && "$WORK/venv/bin/python" -m monai.bundle run --config_file configs/inference.json \
      --meta_file configs/metadata.json --logging_file configs/logging.conf --bundle_root . \
      --dataset_dir "$WORK/inputs" --output_dir "$WORK/segs_$b" --progress False 2>&1 | grep "^inference:")
  test -f "$WORK/segs_$b/patient001_frame01_seg.nii.gz"
done
echo "zoo checks passed for ideal_acdc and ideal_mmwhs ($WORK)"
