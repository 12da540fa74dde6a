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

"""Parameters of the IRP node from params files, over real DDS: older names still set the new ones, a bad
file exits with code 2 naming each key. The node runs in its own process on a random ROS_DOMAIN_ID.
"""

from __future__ import annotations

import subprocess
import sys

from ros_harness import START_TIMEOUT, RunningNode


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
        assert _ok(node.tester.ask("What is 2+2?"))["irp"]["iterations"] == 2  # the effective value
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
