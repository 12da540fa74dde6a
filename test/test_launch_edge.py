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

"""launch_testing: ``edge.launch.py`` from a colcon install, with every argument a user would set.

One launch: namespace, params_file, model_path (a tiny model), log_level debug. While it runs: both nodes
are up in the namespace, the arguments reached them, a question is answered, and the last test leaves a
long generation running. launch then shuts down with SIGINT, as on Ctrl-C; after it: that question got
its result (the answer, or ``shutting_down``) before the node exited, and both processes exited 0
without launch having to escalate to SIGTERM/SIGKILL (the launch file's ``sigterm_timeout``).
"""

from __future__ import annotations

import os
import re
import tempfile
import unittest
import uuid
from pathlib import Path

import pytest

from ros2_tooling import require_ros2_cli

require_ros2_cli()  # a module-level skip, with the reason, on machines without the ROS 2 CLI wheels

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from ros2_tooling import fast_params_file, installed_env, isolated, tiny_model  # noqa: E402
from ros_harness import START_TIMEOUT, RosTester  # noqa: E402

NAMESPACE = f"/edge_{uuid.uuid4().hex[:6]}"
LONG_QUESTION = "during-shutdown"
CTX: dict = {}  # what generate_test_description set up, for the post-shutdown tests


@pytest.mark.launch_test
def generate_test_description():
    env = installed_env()
    tmp = Path(tempfile.mkdtemp(prefix="sage_launch_edge_"))
    env = isolated(env, tmp)
    CTX["saved_environ"] = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # launch starts processes with os.environ and finds the package through it
    from ament_index_python.packages import get_package_share_directory

    launch_file = Path(get_package_share_directory("sage_irp_ros")) / "launch" / "edge.launch.py"
    model = tiny_model(max_positions=8192)  # long generations possible (max_tokens in the 1000s)
    params = fast_params_file(tmp)
    tester = RosTester(env, NAMESPACE)
    CTX.update(tester=tester, model=model, params=params)
    description = launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(launch_file)), launch_arguments={
            "namespace": NAMESPACE.lstrip("/"), "params_file": str(params), "model_path": str(model),
            "log_level": "debug"}.items()),
        launch_testing.actions.ReadyToTest(),
    ])
    return description, {"tester": tester, "model": model}


def _restore_environment() -> None:
    if "saved_environ" in CTX:
        os.environ.clear()
        os.environ.update(CTX.pop("saved_environ"))


def _get_parameters(tester: RosTester, node: str, names: list[str]) -> dict:
    import threading

    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(tester.node, node)
    assert client.wait_for_services(timeout_sec=30), f"parameter services of {node}"
    future = client.get_parameters(names)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(30), f"get_parameters on {node}"
    return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}


class TestWhileRunning(unittest.TestCase):
    """In name order: the last one leaves a generation running for the shutdown."""

    def test_1_both_nodes_come_up_in_the_namespace(self, tester):
        status = tester.wait_ready(START_TIMEOUT)
        self.assertEqual(status["namespace"], NAMESPACE)
        ns = NAMESPACE

        def both_visible() -> bool:
            names = set(tester.node.get_node_names_and_namespaces())
            return {("sage_irp", ns), ("sage_diagnostics", ns)} <= names
        tester.wait_for(both_visible, 30, f"both nodes in {ns}")

    def test_2_arguments_reach_the_nodes(self, tester, model, proc_output):
        tester.wait_ready(START_TIMEOUT)
        irp = _get_parameters(tester, f"{NAMESPACE}/sage_irp", [
            "model.path", "llm_irp.max_tokens", "node.status_period_s", "node.autostart", "use_sim_time"])
        # model_path wins over the params file; the file's values replace edge.yaml's (max_tokens 150)
        self.assertEqual(irp, {"model.path": str(model), "llm_irp.max_tokens": 8, "node.status_period_s": 0.5,
                               "node.autostart": False, "use_sim_time": False})
        diag = _get_parameters(tester, f"{NAMESPACE}/sage_diagnostics", ["diagnostics.backend", "use_sim_time"])
        self.assertEqual(diag, {"diagnostics.backend": "sysfs", "use_sim_time": False})
        # log_level:=debug reached both processes: rcl's DEBUG lines appear in each one's output
        for process in ("irp_node", "diagnostics_node"):
            found = any(proc_output.waitFor(re.compile(r"\[DEBUG\]"), process=process, stream=stream, timeout=10)
                        for stream in ("stderr", "stdout"))
            self.assertTrue(found, f"no DEBUG line from {process}")

    def test_3_a_question_is_answered(self, tester):
        tester.wait_ready(START_TIMEOUT)
        result = tester.ask("What is 2+2?", timeout=60)
        self.assertTrue(result["ok"], result["error"])
        self.assertTrue(result["answer"])

    def test_4_leave_a_generation_running(self, tester):
        tester.wait_ready(START_TIMEOUT)
        (res,) = tester.set_parameters({"llm_irp.max_tokens": 1500})
        self.assertTrue(res.successful, res.reason)
        mark = tester.status_mark()
        tester.send("Tell me a long story.", qid=LONG_QUESTION)
        tester.wait_status(lambda s: s["state"] == "busy", 30, "the long question running", mark)
        # returning ends the launch: SIGINT to both processes while this question is generating


@launch_testing.post_shutdown_test()
class TestAfterShutdown(unittest.TestCase):

    @classmethod
    def tearDownClass(cls):
        try:
            CTX["tester"].close()
        finally:
            _restore_environment()

    def test_both_processes_exit_0_on_sigint(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)  # 0 for every process; SIGKILL would be -9

    def test_the_running_question_got_exactly_one_result(self, tester):
        (result,) = tester.wait_results([LONG_QUESTION], timeout=30).values()
        self.assertTrue(result["ok"] or result["error"]["code"] == "shutting_down", result["error"])
        self.assertEqual(len(tester.results_for(LONG_QUESTION)), 1)
        tester.assert_no_duplicates()
