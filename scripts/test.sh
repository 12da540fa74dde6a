#!/usr/bin/env bash
# Quick start, tests: set up, then run the whole suite (tiny models, the real SmolLM2, real rclpy/DDS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec .venv/bin/python -m pytest test "$@"
