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

"""The throttle detector's decision for each signal, on recorded trees and hand-made snapshots."""

from __future__ import annotations

import pytest

from diag_fakes import SYSFS, FakeClock, copy_tree, write
from sage_irp_ros.diagnostics.probes.nvml_backend import (REASON_GPU_IDLE, REASON_HW_POWER_BRAKE_SLOWDOWN,
                                                          REASON_HW_SLOWDOWN, REASON_HW_THERMAL_SLOWDOWN,
                                                          REASON_SW_POWER_CAP, REASON_SW_THERMAL_SLOWDOWN)
from sage_irp_ros.diagnostics.probes.snapshot import CoolingDevice, GpuFreq, SystemSnapshot, ThermalZone
from sage_irp_ros.diagnostics.probes.sysfs import SysfsReader
from sage_irp_ros.diagnostics.probes.throttle import ThrottleDetector


def snap_of(root) -> SystemSnapshot:
    return SysfsReader(str(root)).read(SystemSnapshot())


def test_quiet_orin_and_laptop_are_not_throttled():
    for name in ("orin_nano_jp6", "x86_laptop", "bare"):
        state = ThrottleDetector(85.0).update(snap_of(SYSFS / name))
        assert (state.throttled, state.warn, state.reasons) == (False, False, []), name


@pytest.mark.parametrize("device", ["cpu-throttle-alert", "gpu-throttle-alert", "soc1-throttle-alert",
                                    "cv0-throttle-alert"])
def test_a_tripped_throttle_alert_means_throttled(tmp_path, device):
    root = copy_tree("orin_nano_jp6", tmp_path)
    snap = snap_of(root)
    index = next(i for i, c in enumerate(snap.cooling) if c.name == device)
    write(root, f"sys/class/thermal/cooling_device{index}/cur_state", 1)
    state = ThrottleDetector(85.0).update(snap_of(root))
    assert state.throttled and state.reasons == [f"{device} tripped"]
    assert state.counters[f"{device}_state"] == 1


def test_hot_surface_alert_is_a_warning_only():
    snap = SystemSnapshot(cooling=[CoolingDevice("hot-surface-alert", 1, 1),
                                   CoolingDevice("pwm-fan", 3, 3)])  # a busy fan is normal
    state = ThrottleDetector(85.0).update(snap)
    assert not state.throttled and state.warn and state.reasons == ["hot-surface-alert tripped"]


def test_soctherm_oc_counter_increase_is_throttled_for_the_hold_time(tmp_path):
    root = copy_tree("orin_nano_jp6", tmp_path)
    clock = FakeClock()
    detector = ThrottleDetector(85.0, oc_hold_s=10.0, clock=clock)
    write(root, "sys/class/hwmon/hwmon3/oc1_event_cnt", 5)   # events before we started: history
    assert not detector.update(snap_of(root)).throttled
    clock.advance(1)
    assert not detector.update(snap_of(root)).throttled      # no increase
    write(root, "sys/class/hwmon/hwmon3/oc1_event_cnt", 8)
    clock.advance(1)
    state = detector.update(snap_of(root))
    assert state.throttled and "oc1 events increased (+3 since start)" in state.reasons[0]
    assert state.counters["oc1_event_cnt"] == 8 and state.counters["oc1_events_since_start"] == 3
    clock.advance(9)
    assert detector.update(snap_of(root)).throttled          # still inside the hold window
    clock.advance(2)
    state = detector.update(snap_of(root))
    assert not state.throttled and state.counters["oc1_events_since_start"] == 3
    write(root, "sys/class/hwmon/hwmon3/oc1_event_cnt", 0)   # driver reloaded: new baseline
    clock.advance(1)
    state = detector.update(snap_of(root))
    assert not state.throttled and state.counters["oc1_events_since_start"] == 0


def test_gpu_devfreq_below_max_only_counts_under_load():
    detector = ThrottleDetector(85.0)
    idle = SystemSnapshot(gpu_freq=GpuFreq("17000000.gpu", cur_hz=306e6, max_hz=1020e6, load_pct=4.8))
    assert not detector.update(idle).warn                    # podgov clocks down when idle
    busy = SystemSnapshot(gpu_freq=GpuFreq("17000000.gpu", cur_hz=612e6, max_hz=1020e6, load_pct=96))
    state = detector.update(busy)
    assert state.warn and not state.throttled
    assert state.reasons == ["GPU clock 612 MHz below max 1020 MHz at 96% load"]
    flat_out = SystemSnapshot(gpu_freq=GpuFreq("17000000.gpu", cur_hz=1020e6, max_hz=1020e6, load_pct=99))
    assert not detector.update(flat_out).warn


def test_cpufreq_cap_lowered_since_start_warns(tmp_path):
    root = copy_tree("x86_laptop", tmp_path)
    detector = ThrottleDetector(85.0)
    assert not detector.update(snap_of(root)).warn
    write(root, "sys/devices/system/cpu/cpufreq/policy2/scaling_max_freq", 2000000)
    state = detector.update(snap_of(root))
    assert state.warn and not state.throttled
    assert state.reasons == ["cpufreq policy2 capped to 2000 MHz (was 4600 MHz)"]
    write(root, "sys/devices/system/cpu/cpufreq/policy2/scaling_max_freq", 4600000)
    assert not detector.update(snap_of(root)).warn


def test_x86_cooling_devices(tmp_path):
    root = copy_tree("x86_laptop", tmp_path)
    write(root, "sys/class/thermal/cooling_device8/cur_state", 25)   # intel_powerclamp
    write(root, "sys/class/thermal/cooling_device0/cur_state", 2)    # Processor (ACPI passive)
    state = ThrottleDetector(85.0).update(snap_of(root))
    assert state.throttled and state.warn
    assert "intel_powerclamp injecting 25% idle" in state.reasons
    assert "ACPI processor cooling at state 2/3" in state.reasons


@pytest.mark.parametrize("mask, throttled, warn, names", [
    (0, False, False, []),
    (REASON_GPU_IDLE, False, False, []),
    (REASON_SW_POWER_CAP, False, True, ["NVML SwPowerCap"]),
    (REASON_HW_SLOWDOWN, True, False, ["NVML HwSlowdown"]),
    (REASON_HW_THERMAL_SLOWDOWN | REASON_HW_SLOWDOWN, True, False,
     ["NVML HwSlowdown", "NVML HwThermalSlowdown"]),
    (REASON_SW_THERMAL_SLOWDOWN, True, False, ["NVML SwThermalSlowdown"]),
    (REASON_HW_POWER_BRAKE_SLOWDOWN | REASON_SW_POWER_CAP, True, True,
     ["NVML HwPowerBrakeSlowdown", "NVML SwPowerCap"]),
])
def test_nvml_reason_bits(mask, throttled, warn, names):
    state = ThrottleDetector(85.0).update(SystemSnapshot(nvml_clock_reasons=mask))
    assert (state.throttled, state.warn, state.reasons) == (throttled, warn, names)


def test_configured_temperature_threshold():
    snap = SystemSnapshot(zones=[ThermalZone("tj-thermal", 86.5, passive_c=99.0),
                                 ThermalZone("cv0-thermal", None)])
    assert not ThrottleDetector(90.0).update(snap).throttled
    state = ThrottleDetector(85.0).update(snap)
    assert state.throttled and state.reasons == ["tj-thermal 86.5 C >= threshold 85.0 C"]


def test_hot_recorded_orin_crosses_a_low_threshold():
    state = ThrottleDetector(45.0).update(snap_of(SYSFS / "orin_nano_jp6"))
    assert state.throttled
    assert sum("threshold 45.0 C" in r for r in state.reasons) == 6  # cpu, gpu, soc0-2, tj
