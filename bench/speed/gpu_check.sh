#!/usr/bin/env bash
# Copyright 2026 The sage_irp_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# One command for a machine with a CUDA GPU (see docs/performance.md, "GPU"):
#   bash bench/speed/gpu_check.sh            # the matrix: SmolLM2- and Qwen2.5-0.5B-shaped random models,
#                                            # fp16 and int4 weights, eager and compiled step, N = 1 and 6
#   bash bench/speed/gpu_check.sh --dry-run  # tiny model on CPU: checks that the script runs
#   bash bench/speed/gpu_check.sh --quant int4 --shape smollm2-shape   # one cell of the matrix, every N
# With arguments they go to bench/speed/gpu_check.py (one run). Results: $OUT/gpu_check*.json where $OUT is
# set, else bench/results/. Each matrix run has its own time budget (GPU_CHECK_BUDGET_S, default 90 s), so
# the whole matrix ends within about 7 minutes. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { env PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m bench.speed.gpu_check "$@"; }
if [ $# -gt 0 ]; then
  run "$@"
  exit
fi
out=${OUT:-bench/results}
status=0
for shape in smollm2-shape qwen05b-shape; do
  for quant in none int4; do
    echo "== $shape, weights $quant"
    run --shape "$shape" --quant "$quant" --dtype fp16 --ns 1,6 --budget-s "${GPU_CHECK_BUDGET_S:-90}" \
        --out "$out/gpu_check_${shape}_${quant}.json" || status=1
  done
done
exit $status
