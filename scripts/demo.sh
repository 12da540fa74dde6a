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

# Quick start, main job: set up, then run the IRP and diagnostics nodes with the embedded SmolLM2 model
# and ask the research report's five demo questions over the real topics. Keeps serving until Ctrl-C;
# extra arguments go to `sage_irp run` (e.g. --once, or --ros-args -p llm_irp.max_tokens:=64).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
exec .venv/bin/sage_irp run --demo "$@"
