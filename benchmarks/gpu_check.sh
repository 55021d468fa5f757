#!/usr/bin/env bash
# GPU check of the training steps, pre-training step, inference rate and peak memory (see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh          on a CUDA machine: writes benchmarks/results/gpu.md (under 8 minutes)
#   bash benchmarks/gpu_check.sh --cpu    tiny sizes on the CPU, to check the script itself (the test suite runs it)
# Other options (--repeats, --warmup, --output) are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
