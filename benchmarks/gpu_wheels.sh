#!/usr/bin/env bash
# The Python packages that the device machines' image lacks, as wheels in .whl/ (ignored by git through
# .git/info/exclude), for benchmarks/gpu_profile.sh to install there: monai, pytorch-ignite, nibabel and fire at the
# versions of constraints.txt, and fire's termcolor at the version this .venv has. All pure Python (py3-none-any),
# so the machine's Python version does not matter; torch, numpy, scipy, scikit-image, tensorboard, matplotlib, tqdm
# and onnxruntime are in its image already. Run here (pip reaches the index here, not there), then carry .whl:
#   bash benchmarks/gpu_wheels.sh
#   run(command="RESULTS_DIR=$OUT bash benchmarks/gpu_profile.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
pin() { sed -n "s/^$1==//p" constraints.txt; }
termcolor=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('termcolor'))")
mkdir -p .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "monai==$(pin monai)" "pytorch-ignite==$(pin pytorch-ignite)" "nibabel==$(pin nibabel)" "fire==$(pin fire)" \
    "termcolor==$termcolor"
ls -l .whl
