#!/usr/bin/env bash
# One command for a lent GPU session (see docs/performance.md, "GPU"):
#   bash bench/gpu_check.sh                 # Qwen2.5-0.5B-shaped random model, fp16, N=1,3,5,8, eager/static/compile
#   bash bench/gpu_check.sh --dry-run       # tiny model on CPU: checks that the script runs
#   bash bench/gpu_check.sh --quant int8 --dtype bf16 --shape smollm2-shape   # quantised + compiled path
# Extra arguments go to bench/gpu_check.py. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec env PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m bench.gpu_check "$@"
