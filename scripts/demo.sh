#!/usr/bin/env bash
# Quick start, main job: set up, then run the IRP and diagnostics nodes with the embedded SmolLM2 model
# and ask the research report's five demo questions over the real topics. Keeps serving until Ctrl-C;
# extra arguments go to `sage_irp run` (e.g. --once, or --ros-args -p llm_irp.max_tokens:=64).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
exec .venv/bin/sage_irp run --demo "$@"
