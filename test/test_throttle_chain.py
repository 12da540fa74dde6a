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

"""The throttle chain end to end: a tripped throttle alert in the platform's sysfs makes the diagnostics node
publish ``throttled``, and the IRP node's next answer uses the throttled limits (fewer candidates);
clearing the alert restores the normal count. Two node processes plus the test, real DDS."""

import shutil
import subprocess
import sys
from pathlib import Path

from ros_harness import RunningNode

ORIN = Path(__file__).resolve().parent / "data" / "sysfs" / "orin_nano_jp6"
ALERT = "sys/class/thermal/cooling_device2/cur_state"  # gpu-throttle-alert in the recorded tree


def test_tripped_alert_reduces_candidates_until_it_clears(tiny_plain_model_dir, tmp_path):
    root = tmp_path / "sysfs"
    shutil.copytree(ORIN, root)
    assert (root / ALERT).parent.joinpath("type").read_text().strip() == "gpu-throttle-alert"
    (root / ALERT).write_text("1\n")
    # the plain tiny model: its greedy row (all a throttled answer is) has text; the chat one's is blank
    irp = RunningNode(tmp_path, params={"model.path": str(tiny_plain_model_dir), "llm_irp.candidates": 3})
    log = open(tmp_path / "diagnostics.log", "w")
    diagnostics = subprocess.Popen(
        [sys.executable, "-m", "sage_irp_ros.ros.diagnostics_node", "--ros-args", "-r",
         f"__ns:={irp.proc.namespace}", "-p", f"diagnostics.sysfs_root:={root}", "-p", "diagnostics.backend:=sysfs",
         "-p", "diagnostics.rate_hz:=5.0"], env=irp.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        irp.tester.wait_status(lambda s: s["throttled"], timeout=60)
        throttled = irp.tester.ask("What is 2+2?")
        assert throttled["ok"] and throttled["irp"]["throttled"] and len(throttled["irp"]["energies"]) == 1
        assert throttled["irp"]["candidates"] == 0 and throttled["irp"]["temperatures"] == [0.0]  # greedy only

        mark = irp.tester.status_mark()
        (root / ALERT).write_text("0\n")
        irp.tester.wait_status(lambda s: not s["throttled"], timeout=60, since=mark)
        normal = irp.tester.ask("What is 2+2?")
        assert normal["ok"] and not normal["irp"]["throttled"] and normal["irp"]["candidates"] == 3
    finally:
        diagnostics.terminate()
        diagnostics.wait(timeout=30)
        log.close()
        irp.close()
