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

"""The diagnostics node over real rclpy: a child process on a recorded sysfs tree, observed from the
test's own context on a private ROS domain. Waits are on events (spin until a message arrives or a
deadline passes), never sleeps."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, String

from diag_fakes import SYSFS, copy_tree, write
from sage_irp_ros.ros.diagnostics_node import PARAMETERS, make_node

REPO = Path(__file__).resolve().parents[1]
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
ORIN_MODEL = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
IRP_STATUS = {
    "node": "sage_irp", "lifecycle": "active", "state": "ready", "model": "SmolLM2-135M-Instruct",
    "device": "cpu", "precision": "fp32", "queue_depth": 0, "queue_size": 8, "served": 3,
    "errors": 0, "consecutive_errors": 0, "throttled": False, "rss_mb": 700.0, "gpu_mem_mb": None,
    "model_mb": 540.0, "max_memory_mb": 0,
    "last": {"ok": True, "inference_s": 1.9, "total_s": 2.0, "tokens": 80, "tokens_per_s": 40.0},
    "latency": {"p50_s": 2.0, "p95_s": 2.5, "count": 3}, "error": None,
    "memory_store": {"ok": True, "error": None, "path": None}, "stamp": 0.0,
}


@pytest.fixture
def domain(ros_env) -> int:
    """conftest's ros_env: a random ROS_DOMAIN_ID (1..101), localhost-only discovery."""
    return int(ros_env["ROS_DOMAIN_ID"])


class Observer:
    """The test's rclpy context: collects /diagnostics, throttled and metrics."""

    def __init__(self, domain_id: int, namespace: str = ""):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("diag_observer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.arrays: list[DiagnosticArray] = []
        self.latest: dict[str, DiagnosticStatus] = {}
        self.throttled: list[bool] = []
        self.temperature: list[float] = []
        prefix = f"/{namespace}" if namespace else ""
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.node.create_subscription(Bool, f"{prefix}/throttled",
                                      lambda m: self.throttled.append(m.data), LATCHED)
        self.node.create_subscription(Float32, f"{prefix}/metrics/temperature_c",
                                      lambda m: self.temperature.append(m.data), 10)
        self.status_pub = self.node.create_publisher(String, f"{prefix}/status", LATCHED)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        self.arrays.append(msg)
        for status in msg.status:
            self.latest[status.name] = status

    def status(self, task: str, node: str = "sage_diagnostics") -> DiagnosticStatus | None:
        return self.latest.get(f"{node}: {task}")

    def level(self, task: str) -> bytes | None:
        status = self.status(task)
        return None if status is None else status.level

    def spin_until(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.1)
        return predicate()

    def publish_status(self, **changes) -> None:
        data = copy.deepcopy(IRP_STATUS)
        data.update(changes)
        self.status_pub.publish(String(data=json.dumps(data)))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def observer(domain):
    obs = Observer(domain)
    yield obs
    obs.close()


@pytest.fixture
def launch(domain, tmp_path):
    """Start ``python -m sage_irp_ros.ros.diagnostics_node`` with parameters; stopped at teardown."""
    children = []

    def start(**params) -> subprocess.Popen:
        args = [sys.executable, "-m", "sage_irp_ros.ros.diagnostics_node", "--ros-args"]
        for name, value in params.items():
            args += ["-p", f"{name.replace('__', '.')}:={value}"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        log = open(tmp_path / f"node{len(children)}.log", "w")
        child = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        children.append((child, log))
        return child

    yield start
    for child, log in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        log.close()


def _log(tmp_path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("node*.log")))


def test_tripped_alert_device_reports_error_and_throttled(observer, launch, tmp_path):
    root = copy_tree("orin_nano_jp6", tmp_path)
    alert = "sys/class/thermal/cooling_device2/cur_state"
    assert (root / "sys/class/thermal/cooling_device2/type").read_text().strip() == "gpu-throttle-alert"
    write(root, alert, 1)
    child = launch(diagnostics__backend="sysfs", diagnostics__sysfs_root=str(root),
                   diagnostics__rate_hz=5.0)
    observer.publish_status()

    assert observer.spin_until(lambda: observer.throttled[-1:] == [True]
                               and observer.level("Throttling") == DiagnosticStatus.ERROR
                               and observer.level("IRP inference") == DiagnosticStatus.OK), \
        _log(tmp_path)
    throttling = observer.status("Throttling")
    assert throttling.message == "throttled: gpu-throttle-alert tripped"
    assert {kv.key: kv.value for kv in throttling.values}["gpu_throttle_alert_state"] == "1"
    assert throttling.hardware_id == ORIN_MODEL
    names = [s.name for s in observer.arrays[-1].status]
    assert names == [f"sage_diagnostics: {t}" for t in
                     ("IRP inference", "Memory", "Thermal", "Throttling", "Power", "Probe", "Generation backend")]
    probe = observer.status("Probe")
    assert probe.level == DiagnosticStatus.OK and probe.message == "sysfs requested"
    assert observer.status("Power").message == "5.1 W, power mode 25W"
    assert observer.spin_until(lambda: observer.temperature)
    assert observer.temperature[-1] == pytest.approx(47.906, abs=1e-3)

    # Published on every tick (readers detect a dead publisher by its silence), not only on change.
    heard = len(observer.throttled)
    assert observer.spin_until(lambda: len(observer.throttled) >= heard + 3)
    assert set(observer.throttled) == {True}
    write(root, alert, 0)
    assert observer.spin_until(lambda: observer.throttled[-1] is False
                               and observer.level("Throttling") == DiagnosticStatus.OK)
    assert child.poll() is None


def test_irp_status_stale_when_it_stops_arriving(observer, launch, tmp_path):
    launch(diagnostics__backend="sysfs", diagnostics__sysfs_root=str(SYSFS / "x86_laptop"),
           diagnostics__rate_hz=5.0, diagnostics__stale_timeout_s=1.0)
    assert observer.spin_until(lambda: observer.level("IRP inference") is not None), _log(tmp_path)
    irp = observer.status("IRP inference")
    assert irp.level == DiagnosticStatus.STALE and irp.message == "no status from the IRP node"
    assert observer.status("Throttling").hardware_id == "thinkpad-x1"

    observer.publish_status()
    assert observer.spin_until(lambda: observer.level("IRP inference") == DiagnosticStatus.OK)
    assert observer.status("IRP inference").message == "ready, last 2.00 s, 40.0 tokens/s"
    # No further status: after stale_timeout_s the node reports STALE.
    assert observer.spin_until(lambda: observer.level("IRP inference") == DiagnosticStatus.STALE,
                               timeout=10.0)
    assert "s old (timeout 1 s)" in observer.status("IRP inference").message
    # A fresh status brings it back.
    observer.publish_status(consecutive_errors=3, errors=3, error="generation failed")
    assert observer.spin_until(lambda: observer.level("IRP inference") == DiagnosticStatus.ERROR)
    assert observer.status("IRP inference").message == "3 consecutive failures: generation failed"


def test_invalid_parameter_exits_with_a_message(launch, tmp_path):
    child = launch(diagnostics__backend="bogus", diagnostics__rate_hz=1000.0)
    assert child.wait(timeout=60) == 2
    log = _log(tmp_path)
    assert "diagnostics.rate_hz:" in log and "allowed [0.01, 100.0]" in log
    child = launch(diagnostics__backend="bogus")
    assert child.wait(timeout=60) == 2
    assert "diagnostics.backend: 'bogus' is not allowed" in _log(tmp_path)


def test_in_process_node_with_namespace_and_parameters(domain):
    """What the lead does: the node inside another process's executor, namespaced."""
    obs = Observer(domain, namespace="robot")
    node = make_node(context=obs.context, namespace="robot", parameter_overrides=[
        Parameter("diagnostics.backend", value="sysfs"),
        Parameter("diagnostics.sysfs_root", value=str(SYSFS / "orin_nano_jp6")),
        Parameter("diagnostics.rate_hz", value=10.0),
        Parameter("diagnostics.throttle_threshold_c", value=45.0)])
    obs.executor.add_node(node)
    try:
        assert node.get_name() == "sage_diagnostics" and node.get_namespace() == "/robot"
        topics = dict(node.get_topic_names_and_types())
        for topic in ("/diagnostics", "/robot/throttled", "/robot/metrics/latency_s",
                      "/robot/metrics/temperature_c", "/robot/metrics/ram_used_pct",
                      "/robot/metrics/gpu_mem_mb", "/robot/metrics/tokens_per_s"):
            assert topic in topics, topic
        assert [t for t, _ in node.get_subscriber_names_and_types_by_node(
            "sage_diagnostics", "/robot")] == ["/robot/status"]
        described = {d.name: d for d in node.describe_parameters(list(PARAMETERS))}
        assert "Publishing rate" in described["diagnostics.rate_hz"].description
        assert described["diagnostics.rate_hz"].floating_point_range[0].to_value == 100.0
        assert "one of auto, jtop, nvml, sysfs" in described["diagnostics.backend"].additional_constraints
        # The recorded Orin is at 47.9 C: above a 45 C threshold, so throttled.
        assert obs.spin_until(lambda: obs.throttled[-1:] == [True], timeout=10)
        assert "threshold 45.0 C" in obs.status("Throttling").message
        # Invalid values are refused with the configuration's message; valid ones apply.
        result = node.set_parameters([Parameter("diagnostics.backend", value="bogus")])[0]
        assert not result.successful and "not allowed" in result.reason
        result = node.set_parameters([Parameter("diagnostics.rate_hz", value=500.0)])[0]
        assert not result.successful
        threshold = Parameter("diagnostics.throttle_threshold_c", value=85.0)
        assert node.set_parameters([threshold])[0].successful
        assert obs.spin_until(lambda: obs.throttled[-1:] == [False], timeout=10)
        assert node.set_parameters([Parameter("diagnostics.rate_hz", value=2.0)])[0].successful
    finally:
        obs.executor.remove_node(node)
        node.destroy_node()
        obs.close()


def test_throttled_is_published_at_start_and_every_tick_even_when_the_probe_fails(domain):
    """No probe reading: 'throttled' is still published (false) at once and on every tick, and the
    Throttling status says the state is unknown."""
    obs = Observer(domain, namespace="robot")

    def broken_probe(cfg, threshold):
        raise RuntimeError("no sysfs here")

    node = make_node(context=obs.context, namespace="robot", probe_factory=broken_probe,
                     parameter_overrides=[Parameter("diagnostics.rate_hz", value=0.01)])  # a tick per 100 s
    try:
        # published in the constructor: the latched value is there before any executor ran a timer
        obs.executor.add_node(node)
        assert obs.spin_until(lambda: obs.throttled, timeout=30)
        assert obs.throttled == [False]
        node.set_parameters([Parameter("diagnostics.rate_hz", value=20.0)])
        assert obs.spin_until(lambda: len(obs.throttled) >= 5 and obs.status("Throttling"), timeout=20)
        assert set(obs.throttled) == {False}
        assert obs.status("Throttling").level == DiagnosticStatus.WARN
        assert "unknown" in obs.status("Throttling").message
        assert obs.status("Probe").level == DiagnosticStatus.ERROR
    finally:
        obs.executor.remove_node(node)
        node.destroy_node()
        obs.close()
