#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) under an 8-minute wall-clock limit; figures under $OUT or ./gpu_check_out.
# Usage: [PYTHON=/path/to/python] [OUT=folder] bash benchmarks/gpu_check.sh [--cpu-smoke] [--shapes gpt2-124m] [--no-vllm]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} timeout 480 "$PY" benchmarks/gpu_check.py "$@"
