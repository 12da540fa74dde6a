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

"""Packaging: the ament_python layout, colcon build/test against the pip ROS wheels, and that the
launch file and `sage_irp run` start the same nodes with the same parameters file. The launch file itself
runs in test_launch_edge.py, test_launch_lifecycle.py and test_docs_ros2_commands.py."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLCON = Path(sys.executable).parent / "colcon"


def _setup_keywords() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {kw.arg: kw.value for kw in call.keywords}


def test_no_ros_in_install_requires():
    requires = ast.literal_eval(_setup_keywords()["install_requires"])
    assert not [r for r in requires if re.match(r"(rclpy|ros-|ros_|std-msgs|launch)", r)]


def test_launch_file_and_run_command_start_the_same_nodes():
    """Same executables, node names, namespace and params file in both ways of starting the nodes."""
    launch_src = (ROOT / "launch" / "edge.launch.py").read_text()
    tree = ast.parse(launch_src)
    launched = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Node", "LifecycleNode"):
            kw = {k.arg: k.value for k in node.keywords}
            launched[ast.literal_eval(kw["executable"])] = ast.literal_eval(kw["name"])
    assert launched == {"irp_node": "sage_irp", "diagnostics_node": "sage_diagnostics"}
    assert 'DEFAULT_PARAMS = "edge.yaml"' in launch_src and '"namespace": ("sage",' in launch_src
    scripts = {s.split("=")[0].strip(): s.split("=")[1].strip()
               for s in ast.literal_eval(_setup_keywords()["entry_points"])["console_scripts"]}
    from sage_irp_ros.tools import cli
    from sage_irp_ros.ros import diagnostics_node
    from sage_irp_ros.ros import irp_node
    cli_src = Path(cli.__file__).read_text()
    assert 'config_file("edge.yaml")' in cli_src and 'default="sage"' in cli_src
    # The executables' entry points construct the same classes that `sage_irp run` does.
    assert scripts["irp_node"] == "sage_irp_ros.ros.irp_node:main" and "IrpNode(namespace=" in cli_src
    assert scripts["diagnostics_node"] == "sage_irp_ros.ros.diagnostics_node:main"
    assert "DiagnosticsNode(namespace=" in cli_src
    assert irp_node.IrpNode.__init__.__defaults__[0] == "sage_irp"
    assert "sage_diagnostics" in Path(diagnostics_node.__file__).read_text()


@pytest.mark.pip_setup  # a nested colcon build; on a robot, colcon itself built the package under test
def test_colcon_build_installs_launch_config_and_executables():
    from ros2_tooling import colcon_workspace

    ws = colcon_workspace()  # built once per session, shared with the launch tests
    env = {k: v for k, v in os.environ.items() if k != "SAGE_IRP_PIP_TESTS"}  # as on a robot
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    share = ws / "install" / "sage_irp_ros" / "share" / "sage_irp_ros"
    assert (share / "launch" / "edge.launch.py").is_file() and (share / "config" / "edge.yaml").is_file()
    assert (ws / "install" / "sage_irp_ros" / "share" / "ament_index" / "resource_index" / "packages"
            / "sage_irp_ros").is_file()
    for exe in ("irp_node", "diagnostics_node", "sage_irp"):
        assert (ws / "install" / "sage_irp_ros" / "lib" / "sage_irp_ros" / exe).is_file()
    test = subprocess.run([str(COLCON), "test", "--pytest-args", "-k", "test_config or test_questions"],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, test.stdout + test.stderr
    summary = subprocess.run([str(COLCON), "test-result", "--all"], cwd=ws, env=env, capture_output=True,
                             text=True)
    assert re.search(r"Summary: [1-9]\d* tests, 0 errors, 0 failures", summary.stdout), summary.stdout
