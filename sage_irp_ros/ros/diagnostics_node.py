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

"""``diagnostics_node``: publishes the platform's and the IRP node's health on ``/diagnostics``.

A thin rclpy adapter over the ROS-free core (:mod:`sage_irp_ros.diagnostics.probes`,
:mod:`sage_irp_ros.diagnostics.status`). Topics (relative ones follow the node's namespace):

- ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``) at ``diagnostics.rate_hz``
- ``throttled`` (``std_msgs/Bool``, reliable, TRANSIENT_LOCAL depth 1): at start and on every tick;
  false while the probe fails (the Throttling status then says the state is unknown)
- ``metrics/latency_s``, ``metrics/tokens_per_s``, ``metrics/temperature_c``,
  ``metrics/ram_used_pct``, ``metrics/gpu_mem_mb``, ``metrics/power_w``, and for a remote generation
  backend ``metrics/backend_p95_s``, ``metrics/backend_failures``, ``metrics/backend_fallback_active``,
  ``metrics/backend_breaker_open`` (``std_msgs/Float32``)
- subscribes ``status`` (``std_msgs/String`` JSON from the IRP node, TRANSIENT_LOCAL depth 1)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, String

from sage_irp_ros.config.settings import ConfigError, SageConfig
from sage_irp_ros.config.schema import LIVE
from sage_irp_ros.diagnostics.status import Limits, ProbeInfo, Status, build_statuses, metrics
from sage_irp_ros.diagnostics.probes.system_probe import SystemProbe
from sage_irp_ros.ros.params import DIAGNOSTICS_NODE_KEYS, declare_config
from sage_irp_ros.ros.spin import run_main

NODE_NAME = "sage_diagnostics"
PARAMETERS = DIAGNOSTICS_NODE_KEYS
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
_LEVEL_BYTES = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR,
                3: DiagnosticStatus.STALE}

ProbeFactory = Callable[..., Any]


class DiagnosticsNode(Node):
    """The diagnostics node. ``node_kwargs`` go to :class:`rclpy.node.Node` (``namespace``,
    ``context``, ``parameter_overrides``, ``cli_args`` ...). ``probe_factory(cfg, threshold_c)``
    replaces :class:`SystemProbe` (tests)."""

    def __init__(self, node_name: str = NODE_NAME, *, probe_factory: Optional[ProbeFactory] = None,
                 **node_kwargs: Any):
        # What destroy_node reads is set before anything can raise: the context destroys every node
        # registered with it at shutdown, also one whose constructor failed on a bad parameter.
        # Parameter changes may arrive on another thread (MultiThreadedExecutor): they swap the
        # probe and the timer, so they and the publishing tick take turns.
        self._lock = threading.RLock()
        self._probe: Any = None
        super().__init__(node_name, **node_kwargs)
        self._config = self._declare_parameters()  # raises ConfigError naming every bad value
        self._probe_factory = probe_factory or (
            lambda cfg, threshold: SystemProbe(cfg, threshold))
        self._probe_error: Optional[str] = None
        self._irp: Optional[dict] = None
        self._irp_received: Optional[float] = None
        self._last_throttled: Optional[bool] = None

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._throttled_pub = self.create_publisher(Bool, "throttled", LATCHED)
        self._metric_pubs = {topic: self.create_publisher(Float32, topic, 10)
                             for topic in metrics(None, None)}
        self.create_subscription(String, "status", self._on_status, LATCHED)
        self._open_probe()
        self._timer = self.create_timer(1.0 / self._config.diagnostics.rate_hz, self._tick)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"publishing /diagnostics at {self._config.diagnostics.rate_hz:g} Hz; probe: "
            f"{getattr(self._probe, 'backend_reason', self._probe_error)}")
        self._tick()  # at start: throttled and /diagnostics without waiting a whole period

    def _declare_parameters(self) -> SageConfig:
        # Every parameter of this node applies live; older names in a params file still work.
        return declare_config(self, PARAMETERS, applies=dict.fromkeys(PARAMETERS, LIVE))

    # -- probe -----------------------------------------------------------------------------------
    def _open_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
        try:
            self._probe = self._probe_factory(self._config.diagnostics,
                                              self._config.diagnostics.throttle_threshold_c)
            self._probe_error = None
        except Exception as exc:  # noqa: BLE001 - report it as an ERROR status instead of dying
            self._probe = None
            self._probe_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"cannot start the system probe: {self._probe_error}")

    # -- parameters --------------------------------------------------------------------------------
    def _on_set_parameters(self, params: list) -> SetParametersResult:
        updates = {p.name: p.value for p in params if p.name in PARAMETERS}
        if not updates:
            return SetParametersResult(successful=True)
        try:
            config = self._config.with_updates(updates)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self._apply(self._config, config)
        return SetParametersResult(successful=True)

    def _apply(self, old: SageConfig, config: SageConfig) -> None:
        self._config = config
        if config.diagnostics.rate_hz != old.diagnostics.rate_hz:
            self._timer.cancel()
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / config.diagnostics.rate_hz, self._tick)
        if (config.diagnostics.backend, config.diagnostics.sysfs_root,
                config.diagnostics.throttle_threshold_c) != (
                old.diagnostics.backend, old.diagnostics.sysfs_root,
                old.diagnostics.throttle_threshold_c):
            self._open_probe()

    # -- IRP status --------------------------------------------------------------------------------
    def _on_status(self, msg: String) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError as exc:
            self.get_logger().warning(f"ignoring a status that is not JSON: {exc}",
                                      throttle_duration_sec=10.0)
            return
        if not isinstance(data, dict):
            self.get_logger().warning("ignoring a status that is not a JSON object",
                                      throttle_duration_sec=10.0)
            return
        self._irp = data
        self._irp_received = time.monotonic()

    # -- publishing --------------------------------------------------------------------------------
    def _tick(self) -> None:
        with self._lock:
            self._publish()

    def _publish(self) -> None:
        snap = None
        error = self._probe_error
        if self._probe is not None:
            try:
                snap = self._probe.read()
            except Exception as exc:  # noqa: BLE001 - keep publishing; the Probe status says why
                error = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"probe read failed: {error}", throttle_duration_sec=30.0)
        cfg = self._config
        probe = self._probe
        info = ProbeInfo(backend=getattr(probe, "backend", "none"), requested=cfg.diagnostics.backend,
                         reason=getattr(probe, "backend_reason", "") or (error or ""),
                         degraded=bool(getattr(probe, "degraded", False)),
                         retry_in_s=getattr(probe, "retry_in_s", None),
                         sysfs_root=cfg.diagnostics.sysfs_root, error=error)
        limits = Limits(latency_warn_s=cfg.diagnostics.latency_warn_s,
                        stale_timeout_s=cfg.diagnostics.stale_timeout_s,
                        max_memory_mb=cfg.model.max_memory_mb,
                        throttle_threshold_c=cfg.diagnostics.throttle_threshold_c)
        age = None if self._irp_received is None else time.monotonic() - self._irp_received
        hardware_id = getattr(probe, "hardware_id", "") or "unknown"
        statuses = build_statuses(self.get_name(), snap, self._irp, age, info, limits, hardware_id)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [_to_msg(s) for s in statuses]
        self._diag_pub.publish(array)

        # Every tick, so readers can tell a live signal from a dead publisher (the IRP node's
        # throttle.stale_timeout_s); unknown (probe failing) is published as false.
        throttled = bool(snap is not None and snap.throttle.throttled)
        self._throttled_pub.publish(Bool(data=throttled))
        if throttled != self._last_throttled:
            was = self._last_throttled
            self._last_throttled = throttled
            if throttled:
                self.get_logger().warning("throttled: " + "; ".join(snap.throttle.reasons))
            elif was:
                self.get_logger().info("no longer throttled")
        for topic, value in metrics(snap, self._irp).items():
            if value is not None:
                self._metric_pubs[topic].publish(Float32(data=float(value)))

    def destroy_node(self) -> None:
        with self._lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        super().destroy_node()


def _to_msg(status: Status) -> DiagnosticStatus:
    return DiagnosticStatus(level=_LEVEL_BYTES[status.level], name=status.name,
                            message=status.message, hardware_id=status.hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in status.values])


def make_node(**kwargs: Any) -> DiagnosticsNode:
    """Build the node for an executor shared with other nodes (``namespace=``, ``context=`` ...)."""
    return DiagnosticsNode(**kwargs)


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``diagnostics_node``: run the node until Ctrl-C or SIGTERM."""
    return run_main(DiagnosticsNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
