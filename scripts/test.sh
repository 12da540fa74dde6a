#!/usr/bin/env bash
# Quick start, tests: set up, then run the whole suite (tiny models, the real SmolLM2, real rclpy/DDS),
# including the tests marked pip_setup (network installs, a nested colcon build) that `colcon test` skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST SAGE_IRP_PIP_TESTS=1
exec .venv/bin/python -m pytest test "$@"
