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

"""launch_testing: who drives the IRP node's lifecycle under ``edge.launch.py``.

* ``autostart:=true`` (default) with a bad ``model_path``: launch's configure fails, the status says
  ``error`` naming the path, the node stays ``unconfigured`` (launch does not activate it).
* ``autostart:=false``: the node waits ``unconfigured`` for a lifecycle manager (it never activates
  itself under launch); this test then acts as the manager (configure, activate) and gets an answer.
"""

from __future__ import annotations

import os
import tempfile
import unittest
import uuid
from pathlib import Path

import pytest

from ros2_tooling import require_ros2_cli

require_ros2_cli()

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from ros2_tooling import fast_params_file, installed_env, isolated, tiny_model  # noqa: E402
from ros_harness import START_TIMEOUT, RosTester  # noqa: E402

CTX: dict = {}


@pytest.mark.launch_test
@launch_testing.parametrize("autostart", ["true", "false"])
def generate_test_description(autostart):
    env = installed_env()
    tmp = Path(tempfile.mkdtemp(prefix="sage_launch_lifecycle_"))
    env = isolated(env, tmp)
    CTX.setdefault("saved_environ", dict(os.environ))
    os.environ.clear()
    os.environ.update(env)
    from ament_index_python.packages import get_package_share_directory

    launch_file = Path(get_package_share_directory("sage_irp_ros")) / "launch" / "edge.launch.py"
    namespace = f"/lc_{uuid.uuid4().hex[:6]}"
    model = str(tmp / "no-such-model") if autostart == "true" else str(tiny_model())
    tester = RosTester(env, namespace)
    CTX["tester"] = tester
    description = launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(launch_file)), launch_arguments={
            "namespace": namespace.lstrip("/"), "params_file": str(fast_params_file(tmp)), "model_path": model,
            "autostart": autostart}.items()),
        launch_testing.actions.ReadyToTest(),
    ])
    return description, {"tester": tester, "model": model}


class TestLifecycle(unittest.TestCase):

    def test_who_drives_the_lifecycle(self, tester, autostart, model):
        if autostart == "true":
            status = tester.wait_status(lambda s: s["state"] == "error", START_TIMEOUT, "the configure error")
            self.assertIn(model, status["error"])
            self.assertEqual(status["lifecycle"], "unconfigured")
            self.assertEqual(tester.get_state(), "unconfigured")
            return
        # Without autostart nobody configures it: several heartbeats later it is still unconfigured.
        tester.wait_status(lambda s: s["lifecycle"] == "unconfigured", START_TIMEOUT, "the first status")
        mark = tester.status_mark()
        tester.wait_for(lambda: len(tester.statuses) >= mark + 4, 30, "four more heartbeats")
        self.assertEqual({(s["lifecycle"], s["state"]) for s in tester.statuses}, {("unconfigured", "idle")})
        self.assertEqual(tester.get_state(), "unconfigured")
        # A manager's transitions work from there.
        self.assertTrue(tester.change_state("configure", timeout=START_TIMEOUT))
        self.assertTrue(tester.change_state("activate"))
        tester.wait_ready(START_TIMEOUT)
        result = tester.ask("What is 2+2?", timeout=60)
        self.assertTrue(result["ok"], result["error"])


@launch_testing.post_shutdown_test()
class TestAfterShutdown(unittest.TestCase):

    @classmethod
    def tearDownClass(cls):
        CTX.pop("tester").close()
        os.environ.clear()
        os.environ.update(CTX.pop("saved_environ"))

    def test_both_processes_exit_0(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
