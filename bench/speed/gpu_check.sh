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
#   bash bench/speed/gpu_check.sh            # Qwen2.5-0.5B-shaped random model, fp16, N=1,3,5,8, every mode
#   bash bench/speed/gpu_check.sh --dry-run  # tiny model on CPU: checks that the script runs
#   bash bench/speed/gpu_check.sh --quant int8 --dtype bf16 --shape smollm2-shape   # quantised + compiled path
# Extra arguments go to bench/speed/gpu_check.py; the result is $OUT/gpu_check.json where $OUT is set, else
# bench/results/gpu_check.json. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec env PYTHONUNBUFFERED=1 "${PYTHON:-python3}" -m bench.speed.gpu_check "$@"
