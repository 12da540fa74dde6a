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

"""The diagnostics node's seven statuses as plain data (no ROS): built from a probe snapshot and the
IRP node's latest ``status`` JSON.

Levels follow ``diagnostic_msgs/DiagnosticStatus`` (OK 0, WARN 1, ERROR 2, STALE 3). Names follow
diagnostic_updater: ``"<node name>: <status>"``. Keys are snake_case with the unit in the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from sage_irp_ros.diagnostics.probes.nvml_backend import decode_reasons
from sage_irp_ros.diagnostics.probes.snapshot import SystemSnapshot

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}

IRP_INFERENCE, MEMORY, THERMAL, THROTTLING, POWER, PROBE, GENERATION = (
    "IRP inference", "Memory", "Thermal", "Throttling", "Power", "Probe", "Generation backend")
STATUS_NAMES = (IRP_INFERENCE, MEMORY, THERMAL, THROTTLING, POWER, PROBE, GENERATION)

REPEATED_FAILURES = 3          # consecutive IRP failures that make the status ERROR
RAM_WARN_PCT, RAM_ERROR_PCT = 85.0, 95.0
THERMAL_WARN_MARGIN_C = 5.0    # WARN this close to a passive trip point or the throttle threshold


@dataclass
class Status:
    """One DiagnosticStatus, ROS-free. ``task`` is the short name, ``name`` the published one."""

    task: str
    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""
    hardware_id: str = ""

    def value(self, key: str) -> Optional[str]:
        return dict(self.values).get(key)


@dataclass
class ProbeInfo:
    backend: str
    requested: str
    reason: str
    degraded: bool = False
    retry_in_s: Optional[float] = None
    sysfs_root: str = "/"
    error: Optional[str] = None


@dataclass
class Limits:
    latency_warn_s: float = 10.0
    stale_timeout_s: float = 5.0
    max_memory_mb: int = 0
    throttle_threshold_c: float = 85.0


def snake(text: str) -> str:
    """``"VDD_CPU_GPU_CV"`` -> ``"vdd_cpu_gpu_cv"``, ``"gpu-throttle-alert"`` -> ``"gpu_throttle_alert"``."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "unnamed"


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class _Builder:
    def __init__(self, task: str):
        self.task = task
        self.values: list[tuple[str, str]] = []
        self.problems: list[tuple[int, str]] = []

    def kv(self, key: str, value: Any, digits: int = 2) -> None:
        if value is not None:
            self.values.append((key, _fmt(value, digits)))

    def problem(self, level: int, message: str) -> None:
        self.problems.append((level, message))

    def done(self, ok_message: str) -> Status:
        if not self.problems:
            return Status(self.task, OK, ok_message, self.values)
        level = max(level for level, _ in self.problems)
        ordered = sorted(self.problems, key=lambda p: -p[0])
        return Status(self.task, level, "; ".join(m for _, m in ordered), self.values)


# -- IRP inference ---------------------------------------------------------------------------------
def irp_status(irp: Optional[Mapping[str, Any]], age_s: Optional[float], limits: Limits) -> Status:
    b = _Builder(IRP_INFERENCE)
    if irp is None:
        b.kv("status_age_s", "never")
        b.problem(STALE, "no status from the IRP node")
        return b.done("")
    last = irp.get("last") if isinstance(irp.get("last"), Mapping) else {}
    latency = irp.get("latency") if isinstance(irp.get("latency"), Mapping) else {}
    store = irp.get("memory_store") if isinstance(irp.get("memory_store"), Mapping) else {}
    b.kv("lifecycle", irp.get("lifecycle"))
    b.kv("state", irp.get("state"))
    b.kv("model", irp.get("model"))
    b.kv("device", irp.get("device"))
    b.kv("precision", irp.get("precision"))
    b.kv("packed_layers", irp.get("packed_layers"))
    b.kv("weights", irp.get("weights"))
    b.kv("last_latency_s", _number(last.get("total_s")), 3)
    b.kv("last_inference_s", _number(last.get("inference_s")), 3)
    b.kv("last_tokens", last.get("tokens"))
    b.kv("tokens_per_s", _number(last.get("tokens_per_s")), 1)
    b.kv("p50_latency_s", _number(latency.get("p50_s")), 3)
    b.kv("p95_latency_s", _number(latency.get("p95_s")), 3)
    b.kv("latency_samples", latency.get("count"))
    b.kv("questions_served", irp.get("served"))
    b.kv("errors", irp.get("errors"))
    b.kv("refused", irp.get("refused"))
    b.kv("consecutive_errors", irp.get("consecutive_errors"))
    b.kv("queue_depth", irp.get("queue_depth"))
    b.kv("queue_size", irp.get("queue_size"))
    b.kv("batch", irp.get("batch"))
    b.kv("batch_size", irp.get("batch_size"))
    b.kv("memory_store_ok", store.get("ok") if store else None)
    b.kv("memory_store_mb", _number(store.get("size_mb")) if store else None, 3)
    b.kv("last_error", irp.get("error"))
    b.kv("status_age_s", age_s, 1)

    if age_s is not None and age_s > limits.stale_timeout_s:
        b.problem(STALE, f"IRP status is {age_s:.1f} s old (timeout {limits.stale_timeout_s:g} s)")
        return b.done("")
    consecutive = _number(irp.get("consecutive_errors")) or 0
    error_text = f": {irp['error']}" if irp.get("error") else ""
    if consecutive >= REPEATED_FAILURES:
        b.problem(ERROR, f"{int(consecutive)} consecutive failures{error_text}")
    elif consecutive > 0:
        b.problem(WARN, f"{int(consecutive)} consecutive failure(s){error_text}")
    if irp.get("state") == "error" and consecutive < REPEATED_FAILURES:
        b.problem(ERROR, f"IRP node in error{error_text}")
    if irp.get("lifecycle") == "finalized":
        b.problem(ERROR, "IRP node finalized")
    elif irp.get("lifecycle") in ("inactive", "unconfigured"):
        b.problem(WARN, f"IRP node {irp['lifecycle']}")
    if limits.latency_warn_s > 0:
        for key, value in (("last", _number(last.get("total_s"))),
                           ("p50", _number(latency.get("p50_s")))):
            if value is not None and value > limits.latency_warn_s:
                b.problem(WARN, f"{key} latency {value:.2f} s above {limits.latency_warn_s:g} s")
    depth, size = _number(irp.get("queue_depth")), _number(irp.get("queue_size"))
    if depth is not None and size and depth >= size:
        b.problem(WARN, f"question queue full ({int(depth)}/{int(size)})")
    if store and store.get("ok") is False:
        b.problem(WARN, f"memory store failing: {store.get('error') or 'unknown error'}")
    summary = str(irp.get("state") or "ok")
    if _number(last.get("total_s")) is not None:
        summary += f", last {last['total_s']:.2f} s"
    if _number(last.get("tokens_per_s")) is not None:
        summary += f", {last['tokens_per_s']:.1f} tokens/s"
    return b.done(summary)


# -- Memory ------------------------------------------------------------------------------------------
def memory_status(snap: SystemSnapshot, irp: Optional[Mapping[str, Any]], limits: Limits) -> Status:
    b = _Builder(MEMORY)
    irp = irp or {}
    pct = snap.ram_used_pct
    b.kv("ram_total_mb", snap.ram_total_mb, 0)
    b.kv("ram_available_mb", snap.ram_available_mb, 0)
    b.kv("ram_used_pct", pct, 1)
    b.kv("swap_total_mb", snap.swap_total_mb, 0)
    b.kv("swap_used_mb", snap.swap_used_mb, 0)
    b.kv("gpu_mem_used_mb", snap.gpu_mem_used_mb, 0)
    b.kv("gpu_mem_total_mb", snap.gpu_mem_total_mb, 0)
    if snap.gpu_mem_shared is not None:
        b.kv("gpu_mem_kind", "shared" if snap.gpu_mem_shared else "dedicated")
    model_mb = _number(irp.get("model_mb"))
    budget = limits.max_memory_mb or int(_number(irp.get("max_memory_mb")) or 0)
    b.kv("irp_rss_mb", _number(irp.get("rss_mb")), 0)
    b.kv("irp_gpu_mem_mb", _number(irp.get("gpu_mem_mb")), 0)
    b.kv("model_mb", model_mb, 0)
    b.kv("max_memory_mb", budget or None)
    if pct is not None and pct >= RAM_ERROR_PCT:
        b.problem(ERROR, f"RAM {pct:.1f}% used (>= {RAM_ERROR_PCT:g}%)")
    elif pct is not None and pct >= RAM_WARN_PCT:
        b.problem(WARN, f"RAM {pct:.1f}% used (>= {RAM_WARN_PCT:g}%)")
    if budget and model_mb is not None and model_mb > budget:
        b.problem(WARN, f"model {model_mb:.0f} MB above max_memory_mb {budget}")
    if pct is None:
        return b.done("RAM not reported")
    return b.done(f"RAM {pct:.1f}% used, {snap.ram_available_mb:.0f} MB available")


# -- Thermal -----------------------------------------------------------------------------------------
def thermal_status(snap: SystemSnapshot, limits: Limits) -> Status:
    b = _Builder(THERMAL)
    hottest, tightest = snap.hottest, snap.tightest
    if hottest is None:
        for zone in snap.zones:
            b.kv(f"{snake(zone.name)}_temp_c", "offline")
        return b.done("no temperature sensors")
    b.kv("hottest_zone", hottest.name)
    b.kv("hottest_temp_c", hottest.temp_c, 1)
    b.kv("hottest_passive_trip_c", hottest.passive_c, 1)
    b.kv("hottest_margin_c", hottest.margin_c, 1)
    if tightest is not None:
        b.kv("min_margin_zone", tightest.name)
        b.kv("min_margin_c", tightest.margin_c, 1)
    b.kv("throttle_threshold_c", limits.throttle_threshold_c, 1)
    for zone in snap.zones:
        b.kv(f"{snake(zone.name)}_temp_c", "offline" if zone.temp_c is None else zone.temp_c, 1)
    threshold = limits.throttle_threshold_c
    if tightest is not None and tightest.margin_c <= 0:
        b.problem(ERROR, f"{tightest.name} {tightest.temp_c:.1f} C past its passive trip "
                         f"{tightest.passive_c:.1f} C")
    elif tightest is not None and tightest.margin_c < THERMAL_WARN_MARGIN_C:
        b.problem(WARN, f"{tightest.name} {tightest.margin_c:.1f} C below its passive trip")
    if hottest.temp_c >= threshold:
        b.problem(ERROR, f"{hottest.name} {hottest.temp_c:.1f} C >= threshold {threshold:g} C")
    elif hottest.temp_c >= threshold - THERMAL_WARN_MARGIN_C:
        b.problem(WARN, f"{hottest.name} {hottest.temp_c:.1f} C near threshold {threshold:g} C")
    message = f"hottest {hottest.name} {hottest.temp_c:.1f} C"
    if hottest.margin_c is not None:
        message += f", {hottest.margin_c:.1f} C below passive trip"
    return b.done(message)


# -- Throttling --------------------------------------------------------------------------------------
def throttling_status(snap: SystemSnapshot, known: bool = True) -> Status:
    """``known`` False: no snapshot this cycle (the probe failed), so the state is unknown."""
    b = _Builder(THROTTLING)
    state = snap.throttle
    if not known:
        b.kv("throttled", "unknown")
        b.problem(WARN, "throttle state unknown: no probe reading ('throttled' published as false)")
        return b.done("")
    b.kv("throttled", state.throttled)
    b.kv("reasons", "; ".join(state.reasons) or "none")
    for key, value in sorted(state.counters.items()):
        b.kv(snake(key), value)
    gpu = snap.gpu_freq
    if gpu is not None:
        b.kv("gpu_freq_mhz", None if gpu.cur_hz is None else gpu.cur_hz / 1e6, 0)
        b.kv("gpu_max_freq_mhz", None if gpu.max_hz is None else gpu.max_hz / 1e6, 0)
        b.kv("gpu_load_pct", gpu.load_pct, 1)
    for cpu in snap.cpu_freq:
        b.kv(f"cpu_{snake(cpu.policy)}_freq_mhz", None if cpu.cur_khz is None else cpu.cur_khz / 1000, 0)
        b.kv(f"cpu_{snake(cpu.policy)}_max_freq_mhz",
             None if cpu.scaling_max_khz is None else cpu.scaling_max_khz / 1000, 0)
    if snap.nvml_clock_reasons is not None:
        hard, soft = decode_reasons(snap.nvml_clock_reasons)
        b.kv("nvml_clock_event_reasons", f"0x{snap.nvml_clock_reasons:x}")
        b.kv("nvml_reasons", ", ".join(hard + soft) or "none")
    for reason in state.reasons:
        b.problem(ERROR if state.throttled else WARN, reason)
    if state.throttled:  # keep the throttled reasons first in the message
        b.problems = [(ERROR, "throttled: " + "; ".join(state.reasons))]
    return b.done("not throttled")


# -- Power -------------------------------------------------------------------------------------------
def power_status(snap: SystemSnapshot) -> Status:
    b = _Builder(POWER)
    b.kv("power_total_w", snap.power_total_w, 2)
    for rail, watts in sorted(snap.power_rails_w.items()):
        b.kv(f"power_{snake(rail)}_w", watts, 2)
    b.kv("gpu_power_limit_w", snap.gpu_power_limit_w, 1)
    b.kv("power_mode", snap.power_mode)
    b.kv("jetson_clocks", snap.jetson_clocks)
    b.kv("fan_pct", snap.fan_pct, 1)
    b.kv("fan_rpm", snap.fan_rpm, 0)
    b.kv("gpu_util_pct", snap.gpu_util_pct, 1)
    parts = []
    if snap.power_total_w is not None:
        parts.append(f"{snap.power_total_w:.1f} W")
    if snap.power_mode:
        parts.append(f"power mode {snap.power_mode}")
    if snap.jetson_clocks:
        parts.append("jetson_clocks on")
    return b.done(", ".join(parts) or "no power sensors")


# -- Probe -------------------------------------------------------------------------------------------
def probe_status(info: ProbeInfo, hardware_id: str) -> Status:
    b = _Builder(PROBE)
    b.kv("backend", info.backend)
    b.kv("requested_backend", info.requested)
    b.kv("reason", info.reason)
    b.kv("hardware_id", hardware_id)
    b.kv("sysfs_root", info.sysfs_root)
    b.kv("retry_in_s", info.retry_in_s, 0)
    if info.error:
        b.problem(ERROR, f"probe failed: {info.error}")
    elif info.degraded:
        b.problem(WARN, info.reason)
    return b.done(info.reason)


# -- Generation backend ------------------------------------------------------------------------------
def generation_status(irp: Optional[Mapping[str, Any]]) -> Status:
    """Where candidates come from: on board, or a generation server with its latency, errors and breaker."""
    b = _Builder(GENERATION)
    if irp is None:
        b.problem(STALE, "no status from the IRP node")
        return b.done("")
    gen = irp.get("generation") if isinstance(irp.get("generation"), Mapping) else {"backend": "local"}
    b.kv("backend", gen.get("backend"))
    if gen.get("backend") != "remote":
        return b.done("on-board model")
    latency = gen.get("latency") if isinstance(gen.get("latency"), Mapping) else {}
    breaker = gen.get("breaker") if isinstance(gen.get("breaker"), Mapping) else {}
    for key in ("url", "model", "reachable", "requests", "failures", "overlong_replies", "fallback",
                "fallback_active", "fallbacks"):
        b.kv(key, gen.get(key))
    b.kv("p50_request_s", _number(latency.get("p50_s")), 3)
    b.kv("p95_request_s", _number(latency.get("p95_s")), 3)
    b.kv("breaker", breaker.get("state"))
    b.kv("breaker_retry_in_s", _number(breaker.get("retry_in_s")), 1)
    b.kv("last_error", gen.get("last_error"))
    on_board = gen.get("fallback") == "local"
    level, outcome = (WARN, "answering on board") if on_board else (ERROR, "questions fail")
    if breaker.get("state") == "open":
        b.problem(level, f"circuit breaker open: {outcome} ({gen.get('last_error')})")
    elif gen.get("reachable") is False:
        b.problem(level, f"server unreachable: {outcome} ({gen.get('last_error')})")
    elif gen.get("fallback_active"):
        b.problem(WARN, f"answering on board: {gen.get('last_error')}")
    summary = f"remote {gen.get('url')}"
    if _number(latency.get("p50_s")) is not None:
        summary += f", p50 {latency['p50_s']:.2f} s, p95 {latency['p95_s']:.2f} s per request"
    return b.done(summary)


# -- all seven ---------------------------------------------------------------------------------------
def build_statuses(node_name: str, snap: Optional[SystemSnapshot], irp: Optional[Mapping[str, Any]],
                   irp_age_s: Optional[float], probe: ProbeInfo, limits: Limits,
                   hardware_id: str) -> list[Status]:
    """The seven statuses in publishing order, named ``"<node_name>: <task>"``."""
    known = snap is not None
    snap = snap if snap is not None else SystemSnapshot()
    statuses = [irp_status(irp, irp_age_s, limits), memory_status(snap, irp, limits),
                thermal_status(snap, limits), throttling_status(snap, known), power_status(snap),
                probe_status(probe, hardware_id), generation_status(irp)]
    for status in statuses:
        status.name = f"{node_name}: {status.task}"
        status.hardware_id = hardware_id
    return statuses


def metrics(snap: Optional[SystemSnapshot], irp: Optional[Mapping[str, Any]]) -> dict[str, Optional[float]]:
    """Values of the ``metrics/*`` Float32 topics (None: not published this cycle)."""
    last = (irp or {}).get("last") if isinstance((irp or {}).get("last"), Mapping) else {}
    hottest = snap.hottest if snap else None
    gen = (irp or {}).get("generation") if isinstance((irp or {}).get("generation"), Mapping) else {}
    remote = gen.get("backend") == "remote"
    latency = gen.get("latency") if isinstance(gen.get("latency"), Mapping) else {}
    breaker = gen.get("breaker") if isinstance(gen.get("breaker"), Mapping) else {}
    return {
        "metrics/latency_s": _number(last.get("total_s")),
        "metrics/tokens_per_s": _number(last.get("tokens_per_s")),
        "metrics/temperature_c": hottest.temp_c if hottest else None,
        "metrics/ram_used_pct": snap.ram_used_pct if snap else None,
        "metrics/gpu_mem_mb": snap.gpu_mem_used_mb if snap else None,
        "metrics/power_w": snap.power_total_w if snap else None,
        # a remote generation backend only (not published on an on-board node)
        "metrics/backend_p95_s": _number(latency.get("p95_s")) if remote else None,
        "metrics/backend_failures": _number(gen.get("failures")) if remote else None,
        "metrics/backend_fallback_active": float(bool(gen.get("fallback_active"))) if remote else None,
        "metrics/backend_breaker_open": float(breaker.get("state") == "open") if remote else None,
    }


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
