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

"""Parameters of the IRP node from params files and ``-p``, over real DDS: older names still set the new ones, a
bad file exits with code 2 naming each key, on/off words typed on the command line (YAML booleans) are taken
as the words. The node runs in its own process on a random ROS_DOMAIN_ID.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ros2_tooling import ros2_executable
from ros_harness import START_TIMEOUT, RunningNode, ros_domain_env


def _ok(result):
    assert result["ok"], result["error"]
    return result


def _get_parameters(tester, names):
    """The named parameters' values on the node under test (rclpy's parameter client)."""
    import threading

    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(tester.node, tester.target)
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.get_parameters(list(names))
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(10.0), "get_parameters did not answer"
    return dict(zip(names, (parameter_value_to_python(v) for v in future.result().values)))


def test_params_file_with_research_names_sets_the_new_parameters(tiny_model_dir, tmp_path):
    """A params file with the research system's names works: ``ros2 param get`` of the current names
    shows the values it set, silently, and the research names are not listed."""
    params = tmp_path / "old_names.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n"
        "    llm_irp: {irp_iterations: 2, device: cpu, precision: fp32, model_keep_alive: true}\n"
        "    memory: {circular_buffer_size: 2, db_path: none}\n")
    node = RunningNode(tmp_path, name="old_names", params_file=params, params={"model.path": str(tiny_model_dir)})
    try:
        want = {"llm_irp.candidates": 2, "model.device": "cpu", "model.precision": "fp32",
                "model.keep_alive": True, "history.depth": 2}
        assert _get_parameters(node.tester, list(want)) == want
        assert _ok(node.tester.ask("What is 2+2?"))["irp"]["candidates"] == 2  # the effective value
        log = node.proc.log()
        assert "llm_irp.irp_iterations" not in log and "circular_buffer_size" not in log  # permanent, no warning
        names = set(_list_names(node.tester))
        assert "llm_irp.candidates" in names and not names & {"llm_irp.irp_iterations", "memory.circular_buffer_size"}
    finally:
        node.close()


def _list_names(tester):
    """Every parameter name the node declares."""
    import threading

    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(tester.node, tester.target)
    assert client.wait_for_services(timeout_sec=10.0)
    future = client.list_parameters()
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(10.0), "list_parameters did not answer"
    return list(future.result().result.names)


def test_bad_params_file_exits_with_code_2_naming_the_key(tmp_path, ros_env):
    params = tmp_path / "bad.yaml"
    params.write_text("/**:\n  ros__parameters:\n    llm_irp:\n      max_tokens: 0\n"
                      "    node:\n      queue_size: 20000\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "sage_irp_ros.ros.irp_node", "--ros-args", "--params-file",
                           str(params)], env=ros_env, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "llm_irp.max_tokens" in proc.stderr and "node.queue_size" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_on_off_typed_on_the_command_line_is_the_word_not_a_boolean(tiny_model_dir, tmp_path):
    """``-p llm_irp.compile:=on`` and ``ros2 param set ... llm_irp.compile off`` reach the node as YAML booleans:
    the node comes up with "on", a set of a boolean gives the word, and another type is refused."""
    env = ros_domain_env({**os.environ, "SAGE_IRP_ROS_COMPILE": "off"})  # the value is taken; nothing compiles
    node = RunningNode(tmp_path, name="compile_on", env=env,
                       params={"model.path": str(tiny_model_dir), "llm_irp.compile": "on"})
    try:
        assert _get_parameters(node.tester, ["llm_irp.compile"]) == {"llm_irp.compile": "on"}
        set_false = node.tester.set_parameters({"llm_irp.compile": False})
        assert set_false[0].successful, set_false[0].reason
        assert _get_parameters(node.tester, ["llm_irp.compile"]) == {"llm_irp.compile": "off"}
        refused = node.tester.set_parameters({"llm_irp.compile": 5})
        assert not refused[0].successful and "one of auto, on, off" in refused[0].reason
        assert _get_parameters(node.tester, ["llm_irp.compile"]) == {"llm_irp.compile": "off"}
        ros2 = ros2_executable()
        if ros2 is not None:  # the CLI the docs show, where it is installed
            cli = subprocess.run([ros2, "param", "set", "--no-daemon", "--spin-time", "10", node.tester.target,
                                  "llm_irp.compile", "on"], env=env, capture_output=True, text=True,
                                 timeout=START_TIMEOUT)
            assert "Set parameter successful" in cli.stdout, cli.stdout + cli.stderr
            assert _get_parameters(node.tester, ["llm_irp.compile"]) == {"llm_irp.compile": "on"}
        assert _ok(node.tester.ask("What is 2+2?"))["answer"]
    finally:
        node.close()


def test_compile_off_on_the_command_line_is_accepted_and_a_number_refused(tmp_path, ros_env):
    """``:=off`` (a YAML false) passes the declaration: only the other bad key is named; ``:=5`` is named."""
    def start(*params: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "sage_irp_ros.ros.irp_node", "--ros-args"]
        for param in params:
            args += ["-p", param]
        return subprocess.run(args, env=ros_env, capture_output=True, text=True, timeout=START_TIMEOUT)

    off = start("llm_irp.compile:=off", "llm_irp.max_tokens:=0")
    assert off.returncode == 2 and "llm_irp.max_tokens" in off.stderr, off.stdout + off.stderr
    assert "llm_irp.compile" not in off.stderr
    number = start("llm_irp.compile:=5")
    assert number.returncode == 2 and "llm_irp.compile" in number.stderr, number.stdout + number.stderr
    assert "one of auto, on, off" in number.stderr and "Traceback" not in number.stderr
