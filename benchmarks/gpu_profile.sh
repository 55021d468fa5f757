#!/usr/bin/env bash
# Issue #28's GPU run in one command, within TOTAL_S seconds (default 480: 8 minutes on an H100, 9 at the most):
#   1. the CUDA-only tests:   pytest tests/test_engines.py tests/test_batchnorm.py -k cuda            (timeout 90 s)
#   2. the bundles end to end with their CUDA defaults (pre-training, CPS training, evaluation, inference, export):
#                             pytest tests/test_bundles.py -k "end_to_end or mmwhs_train_and_infer"   (timeout 240 s)
#   3. benchmarks/gpu_profile.py: profile, matmul ceiling, variants, inference, the ACDC protocol, with the time
#      left: --budget = what remains of TOTAL_S less 45 s (at least 90); its compiled rows start only within it
#      (with the tests taking 2-3 minutes that leaves room for two or three compiled rows; TOTAL_S=540 for more).
# Writes into $RESULTS_DIR (default benchmarks/results): gpu_profile.md, gpu_profile.json and gpu_profile_tests.log
# (the pytest output; the report quotes each run's summary).
#   RESULTS_DIR=$OUT bash benchmarks/gpu_profile.sh     on a CUDA machine
#   bash benchmarks/gpu_profile.sh --cpu                the profile script alone, tiny, on the CPU (no tests)
# Other options are passed on to gpu_profile.py (a --budget given there wins). Python packages the machine lacks
# (monai, ignite, nibabel, fire): wheels in .whl/ (made here by benchmarks/gpu_wheels.sh, carried with
# carry=[".whl"]) are installed into /tmp/site first; the package is used from this tree (PYTHONPATH), not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
RESULTS_DIR="${RESULTS_DIR:-benchmarks/results}"
mkdir -p "$RESULTS_DIR"
if ! "$PYTHON" -c "import monai, ignite, nibabel, fire" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$RESULTS_DIR/gpu_profile_tests.log"
: > "$LOG"
status=0

run_tests() {  # title, timeout in seconds, pytest arguments...
    local title=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "### $title" | tee -a "$LOG"
    timeout "$limit" "$PYTHON" -m pytest -p no:cacheprovider -rfEs "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "### $title: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

if [[ " $* " != *" --cpu "* ]]; then
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
    run_tests "CUDA-only tests: pytest tests/test_engines.py tests/test_batchnorm.py -k cuda" 90 \
        tests/test_engines.py tests/test_batchnorm.py -k cuda
    run_tests "bundles end to end, CUDA defaults: pytest tests/test_bundles.py -k \"end_to_end or mmwhs_train_and_infer\"" \
        240 tests/test_bundles.py -k "end_to_end or mmwhs_train_and_infer"
fi
budget=$(( ${TOTAL_S:-480} - SECONDS - 45 ))
(( budget >= 90 )) || budget=90
timeout $(( budget + 75 )) "$PYTHON" benchmarks/gpu_profile.py --output "$RESULTS_DIR/gpu_profile.md" \
    --tests-log "$LOG" --budget "$budget" "$@" || status=1
exit $status
