#!/usr/bin/env bash
# One prepared GPU check, a few minutes on one GPU:
#   1. the test suite's CUDA-marked tests (pytest -m cuda: training on CUDA, CUDA ranking == CPU),
#   2. a timing table: training step / extrapolated epoch and full ranking per 1,000 users on
#      CUDA, for MKGCN, KGCN and LightGCN on lastfm-kgcn (when its files are found) and on a
#      synthetic MMKG of $SIZE items (default 1,000,000; generated on the spot).
# Writes benchmarks/results/scaling/gpu_cuda.json and prints the table.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the GPU machine
#   SIZE=300000 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PYTHON=.venv/bin/python
fi
# Use this checkout even when mmkgrec is not installed in the interpreter.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
SIZE=${SIZE:-1000000}

echo "== device"
"$PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

echo "== pytest -m cuda"
"$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider \
    -W "ignore::pytest.PytestUnknownMarkWarning"
tests_rc=$?

echo "== timings (CUDA)"
timeout 480 "$PYTHON" benchmarks/scaling.py gpu --size "$SIZE" --threads "$OMP_NUM_THREADS"
bench_rc=$?

echo "== exit codes: tests $tests_rc, timings $bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
