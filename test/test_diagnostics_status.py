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

"""The seven statuses (ROS-free): levels, messages, keys; and the aggregator configuration."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from diag_fakes import SYSFS
from sage_irp_ros.diagnostics.status import (ERROR, OK, STALE, STATUS_NAMES, WARN, Limits, ProbeInfo,
                                             build_statuses, generation_status, irp_status, memory_status, metrics,
                                             power_status, probe_status, snake, thermal_status,
                                             throttling_status)
from sage_irp_ros.diagnostics.probes.snapshot import CoolingDevice, GpuFreq, SystemSnapshot, ThermalZone, ThrottleState
from sage_irp_ros.diagnostics.probes.sysfs import SysfsReader
from sage_irp_ros.diagnostics.probes.throttle import ThrottleDetector

AGGREGATOR = Path(__file__).resolve().parents[1] / "config" / "diagnostics_aggregator.yaml"

IRP = {
    "node": "sage_irp", "lifecycle": "active", "state": "ready", "model": "SmolLM2-135M-Instruct",
    "device": "cpu", "precision": "fp32", "packed_layers": 211, "queue_depth": 0, "queue_size": 8, "served": 12,
    "errors": 1, "consecutive_errors": 0, "throttled": False, "rss_mb": 812.5, "gpu_mem_mb": None,
    "model_mb": 540.0, "max_memory_mb": 0,
    "last": {"ok": True, "inference_s": 2.1, "total_s": 2.4, "tokens": 96, "tokens_per_s": 45.7},
    "latency": {"p50_s": 2.2, "p95_s": 3.9, "count": 12}, "error": None,
    "memory_store": {"ok": True, "error": None, "path": "/tmp/memory.db"}, "stamp": 1700000000.0,
}


def irp(**changes):
    data = copy.deepcopy(IRP)
    data.update(changes)
    return data


def orin() -> SystemSnapshot:
    snap = SysfsReader(str(SYSFS / "orin_nano_jp6")).read(SystemSnapshot())
    snap.throttle = ThrottleDetector(85.0).update(snap)
    return snap


def test_irp_ok_and_keys():
    status = irp_status(IRP, 0.4, Limits())
    assert status.level == OK and status.message == "ready, last 2.40 s, 45.7 tokens/s"
    values = dict(status.values)
    assert values["last_latency_s"] == "2.400" and values["p95_latency_s"] == "3.900"
    assert values["tokens_per_s"] == "45.7" and values["questions_served"] == "12"
    assert values["queue_depth"] == "0" and values["errors"] == "1"
    assert values["memory_store_ok"] == "true" and "last_error" not in values
    assert values["precision"] == "fp32" and values["packed_layers"] == "211"
    assert all(re.fullmatch(r"[a-z0-9_]+", key) for key in values)


@pytest.mark.parametrize("data, age, level, text", [
    (None, None, STALE, "no status from the IRP node"),
    (IRP, 6.0, STALE, "IRP status is 6.0 s old (timeout 5 s)"),
    (irp(last={"total_s": 12.5, "tokens_per_s": 3.0}), 0.1, WARN, "last latency 12.50 s above 10 s"),
    (irp(latency={"p50_s": 11.0, "p95_s": 30.0, "count": 9}), 0.1, WARN, "p50 latency 11.00 s"),
    (irp(consecutive_errors=1, error="timeout"), 0.1, WARN, "1 consecutive failure(s): timeout"),
    (irp(consecutive_errors=3, errors=3, error="CUDA out of memory"), 0.1, ERROR,
     "3 consecutive failures: CUDA out of memory"),
    (irp(state="error", error="model failed to load"), 0.1, ERROR, "IRP node in error: model failed"),
    (irp(lifecycle="inactive", state="idle"), 0.1, WARN, "IRP node inactive"),
    (irp(queue_depth=8), 0.1, WARN, "question queue full (8/8)"),
    (irp(memory_store={"ok": False, "error": "disk full", "path": None}), 0.1, WARN,
     "memory store failing: disk full"),
])
def test_irp_levels(data, age, level, text):
    status = irp_status(data, age, Limits(latency_warn_s=10.0, stale_timeout_s=5.0))
    assert status.level == level and text in status.message


def test_irp_latency_warning_disabled_by_zero():
    assert irp_status(irp(last={"total_s": 99.0}), 0.1, Limits(latency_warn_s=0.0)).level == OK


def test_memory_levels():
    snap = SystemSnapshot(ram_total_mb=8000.0, ram_available_mb=4000.0, gpu_mem_used_mb=400.0,
                          gpu_mem_total_mb=8000.0, gpu_mem_shared=True)
    status = memory_status(snap, IRP, Limits())
    assert status.level == OK and status.message == "RAM 50.0% used, 4000 MB available"
    assert status.value("gpu_mem_kind") == "shared" and status.value("model_mb") == "540"
    snap.ram_available_mb = 1000.0
    assert memory_status(snap, IRP, Limits()).level == WARN          # 87.5 %
    snap.ram_available_mb = 300.0
    status = memory_status(snap, IRP, Limits())
    assert status.level == ERROR and "96.2% used" in status.message  # >= 95 %
    snap.ram_available_mb = 4000.0
    status = memory_status(snap, IRP, Limits(max_memory_mb=500))
    assert status.level == WARN and status.message == "model 540 MB above max_memory_mb 500"
    # The node's parameter is 0 (off): the IRP node's own budget applies
    status = memory_status(snap, irp(max_memory_mb=512), Limits(max_memory_mb=0))
    assert status.level == WARN and status.value("max_memory_mb") == "512"
    assert memory_status(SystemSnapshot(), None, Limits()).message == "RAM not reported"


def test_thermal_levels_on_orin():
    status = thermal_status(orin(), Limits(throttle_threshold_c=85.0))
    assert status.level == OK
    assert status.value("hottest_temp_c") == "47.9" and status.value("hottest_margin_c") == "51.1"
    assert status.value("cv0_thermal_temp_c") == "offline"
    assert status.value("tj_thermal_temp_c") == "47.9"
    near = SystemSnapshot(zones=[ThermalZone("tj-thermal", 82.0, passive_c=99.0)])
    assert thermal_status(near, Limits(throttle_threshold_c=85.0)).level == WARN
    trip = SystemSnapshot(zones=[ThermalZone("gpu-thermal", 96.0, passive_c=99.0)])
    status = thermal_status(trip, Limits(throttle_threshold_c=110.0))
    assert status.level == WARN and "3.0 C below its passive trip" in status.message
    past = SystemSnapshot(zones=[ThermalZone("gpu-thermal", 100.0, passive_c=99.0)])
    assert thermal_status(past, Limits(throttle_threshold_c=110.0)).level == ERROR
    hot = SystemSnapshot(zones=[ThermalZone("acpitz", 88.0)])
    assert thermal_status(hot, Limits(throttle_threshold_c=85.0)).level == ERROR
    nothing = thermal_status(SystemSnapshot(), Limits())
    assert nothing.level == OK and nothing.message == "no temperature sensors"


def test_throttling_status():
    snap = orin()
    status = throttling_status(snap)
    assert status.level == OK and status.message == "not throttled"
    assert status.value("throttled") == "false" and status.value("reasons") == "none"
    assert status.value("gpu_throttle_alert_state") == "0" and status.value("oc1_event_cnt") == "0"
    assert status.value("gpu_freq_mhz") == "306" and status.value("cpu_policy0_max_freq_mhz") == "1728"
    snap.throttle = ThrottleState(throttled=True, reasons=["gpu-throttle-alert tripped"],
                                  counters={"gpu-throttle-alert_state": 1})
    status = throttling_status(snap)
    assert status.level == ERROR and status.message == "throttled: gpu-throttle-alert tripped"
    assert status.value("throttled") == "true"
    snap.throttle = ThrottleState(warn=True, reasons=["NVML SwPowerCap"])
    snap.nvml_clock_reasons = 0x4
    status = throttling_status(snap)
    assert status.level == WARN and status.message == "NVML SwPowerCap"
    assert status.value("nvml_clock_event_reasons") == "0x4" and status.value("nvml_reasons") == "SwPowerCap"


def test_power_and_probe_statuses():
    status = power_status(orin())
    assert status.level == OK and status.message == "5.1 W, power mode 25W"
    assert status.value("power_vdd_in_w") == "5.13" and status.value("fan_rpm") == "1145"
    assert power_status(SystemSnapshot()).message == "no power sensors"
    info = ProbeInfo("sysfs", "auto", "auto selected sysfs (jtop: not installed)")
    assert probe_status(info, "hw").level == OK
    info.degraded = True
    assert probe_status(info, "hw").level == WARN
    info.error = "PermissionError: denied"
    assert probe_status(info, "hw").level == ERROR


def test_build_statuses_names_and_metrics():
    snap = orin()
    statuses = build_statuses("sage_diagnostics", snap, IRP, 0.2, ProbeInfo("sysfs", "sysfs", "x"),
                              Limits(), "NVIDIA Jetson Orin Nano")
    assert [s.name for s in statuses] == [f"sage_diagnostics: {n}" for n in STATUS_NAMES]
    assert {s.hardware_id for s in statuses} == {"NVIDIA Jetson Orin Nano"}
    for status in statuses:
        assert all(re.fullmatch(r"[a-z0-9_]+", key) for key, _ in status.values), status.name
    values = metrics(snap, IRP)
    assert values["metrics/latency_s"] == 2.4 and values["metrics/tokens_per_s"] == 45.7
    assert values["metrics/temperature_c"] == pytest.approx(47.906)
    assert values["metrics/gpu_mem_mb"] == pytest.approx(412340 / 1024)
    assert metrics(None, None) == dict.fromkeys(values)
    empty = build_statuses("n", None, None, None, ProbeInfo("none", "auto", "", error="boom"),
                           Limits(), "h")
    assert [s.level for s in empty] == [STALE, OK, OK, WARN, OK, ERROR, STALE]
    throttling = next(s for s in empty if s.task == "Throttling")  # no probe reading: unknown
    assert throttling.value("throttled") == "unknown" and "unknown" in throttling.message


def _remote(**changes):
    generation = {"backend": "remote", "url": "https://gpu-host:8000", "model": "m", "reachable": True,
                  "requests": 30, "failures": 0, "overlong_replies": 0, "last_error": None,
                  "latency": {"p50_s": 0.4, "p95_s": 0.9, "count": 30}, "fallback": "local",
                  "fallback_active": False, "fallbacks": 0,
                  "breaker": {"state": "closed", "consecutive_failures": 0, "backoff_s": 2.0, "retry_in_s": None,
                              "opened": 0}}
    for key, value in changes.items():
        generation[key] = value
    return irp(generation=generation)


def test_generation_backend_status_and_metrics():
    on_board = generation_status(irp(generation={"backend": "local"}))
    assert on_board.level == OK and on_board.value("backend") == "local"
    assert generation_status(IRP).level == OK  # an older node without "generation": on board
    assert metrics(None, IRP)["metrics/backend_p95_s"] is None  # published by a remote node only
    healthy = generation_status(_remote())
    assert healthy.level == OK and "gpu-host" in healthy.message and healthy.value("p95_request_s") == "0.900"
    values = metrics(None, _remote())
    assert values["metrics/backend_p95_s"] == 0.9 and values["metrics/backend_breaker_open"] == 0.0
    fallback = generation_status(_remote(fallback_active=True, last_error="timeout: x"))
    assert fallback.level == WARN and "on board" in fallback.message
    open_breaker = {"state": "open", "consecutive_failures": 3, "backoff_s": 2.0, "retry_in_s": 1.5, "opened": 1}
    assert generation_status(_remote(breaker=open_breaker)).level == WARN
    dead = generation_status(_remote(breaker=open_breaker, fallback="none"))
    assert dead.level == ERROR and "breaker open" in dead.message
    assert metrics(None, _remote(breaker=open_breaker))["metrics/backend_breaker_open"] == 1.0
    assert generation_status(_remote(reachable=False, fallback="none")).level == ERROR


def test_snake_keys():
    assert snake("VDD_CPU_GPU_CV") == "vdd_cpu_gpu_cv"
    assert snake("gpu-throttle-alert_state") == "gpu_throttle_alert_state"
    assert snake("INT3400 Thermal") == "int3400_thermal"


def _matches(analyzer: dict, name: str) -> bool:
    """GenericAnalyzer.match: name, startswith, contains, expected, regex."""
    return (name in analyzer.get("name", []) or name in analyzer.get("expected", [])
            or any(name.startswith(p) for p in analyzer.get("startswith", []))
            or any(p in name for p in analyzer.get("contains", []))
            or any(re.fullmatch(r, name) for r in analyzer.get("regex", [])))


def test_aggregator_yaml_files_every_status_exactly_once():
    params = yaml.safe_load(AGGREGATOR.read_text())["analyzers"]["ros__parameters"]
    analyzers = {k: v for k, v in params.items() if isinstance(v, dict)}
    assert all(a["type"] == "diagnostic_aggregator/GenericAnalyzer" and a.get("path")
               for a in analyzers.values())
    for task in STATUS_NAMES:
        name = f"sage_diagnostics: {task}"
        hits = [key for key, a in analyzers.items() if _matches(a, name)]
        assert len(hits) == 1, (name, hits)
    assert not any(_matches(a, "other_node: Memory") for a in analyzers.values())


def test_cooling_state_keys_reach_the_throttling_status():
    snap = SystemSnapshot(cooling=[CoolingDevice("cpu-throttle-alert", 1, 1)],
                          gpu_freq=GpuFreq("17000000.gpu", cur_hz=1e9, max_hz=1e9, load_pct=50))
    snap.throttle = ThrottleDetector(85.0).update(snap)
    status = throttling_status(snap)
    assert status.level == ERROR and status.value("cpu_throttle_alert_state") == "1"
