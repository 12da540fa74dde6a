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

"""The throttle detector: decides from a snapshot whether the platform is throttling, and why.

No probe backend reports Jetson throttling by itself, so this runs beside every backend, over what
sysfs (and NVML, when active) put into the snapshot. Signals and their weight:

============================================  =========  ==========================================
signal                                         level      source
============================================  =========  ==========================================
``*-throttle-alert`` cooling device tripped    throttled  ``cur_state >= 1`` (Jetson soctherm)
``soctherm_oc`` ``ocN_event_cnt`` increased    throttled  held for ``oc_hold_s`` after the increase
NVML HwSlowdown / HwThermal / SwThermal /      throttled  clock-event reasons bitmask
HwPowerBrake
zone temperature >= ``threshold_c``            throttled  ``diagnostics.throttle_threshold_c``
``intel_powerclamp`` injecting idle            throttled  ``cur_state > 0`` (x86)
``hot-surface-alert`` tripped                  warn       skin temperature alert (Jetson)
NVML SwPowerCap                                warn       power limit holds clocks down
GPU devfreq ``cur_freq`` below ``max_freq``    warn       only while GPU load >= ``gpu_busy_pct``
cpufreq ``scaling_max_freq`` lowered           warn       below the highest cap seen since start
``Processor`` cooling device active            warn       ACPI passive cooling (x86)
============================================  =========  ==========================================
"""

from __future__ import annotations

import time
from typing import Callable

from sage_irp_ros.diagnostics.probes.nvml_backend import decode_reasons
from sage_irp_ros.diagnostics.probes.snapshot import SystemSnapshot, ThrottleState


class ThrottleDetector:
    """Stateful (counter increases, cpufreq caps); call :meth:`update` once per snapshot."""

    def __init__(self, threshold_c: float, *, oc_hold_s: float = 10.0, gpu_busy_pct: float = 50.0,
                 gpu_freq_ratio: float = 0.9, clock: Callable[[], float] = time.monotonic):
        self.threshold_c = float(threshold_c)
        self.oc_hold_s = oc_hold_s
        self.gpu_busy_pct = gpu_busy_pct
        self.gpu_freq_ratio = gpu_freq_ratio
        self._clock = clock
        self._oc_baseline: dict[str, int] = {}
        self._oc_last: dict[str, int] = {}
        self._oc_until: dict[str, float] = {}
        self._cpu_cap_seen: dict[str, int] = {}

    def update(self, snap: SystemSnapshot) -> ThrottleState:
        state = ThrottleState()
        self._cooling(snap, state)
        self._oc(snap, state)
        self._nvml(snap, state)
        self._temperature(snap, state)
        self._gpu_clock(snap, state)
        self._cpu_caps(snap, state)
        return state

    # -- throttled ---------------------------------------------------------------------------------
    @staticmethod
    def _cooling(snap: SystemSnapshot, state: ThrottleState) -> None:
        for dev in snap.cooling:
            cur = dev.cur_state
            if cur is None:
                continue
            if dev.name.endswith("-throttle-alert"):
                state.counters[f"{dev.name}_state"] = cur
                if cur >= 1:
                    _throttled(state, f"{dev.name} tripped")
            elif dev.name == "hot-surface-alert":
                state.counters[f"{dev.name}_state"] = cur
                if cur >= 1:
                    _warn(state, "hot-surface-alert tripped")
            elif dev.name == "intel_powerclamp" and cur > 0:
                _throttled(state, f"intel_powerclamp injecting {cur}% idle")
            elif dev.name == "Processor" and cur > 0:
                _warn(state, f"ACPI processor cooling at state {cur}/{dev.max_state}")

    def _oc(self, snap: SystemSnapshot, state: ThrottleState) -> None:
        now = self._clock()
        for key, value in snap.oc_events.items():
            base = self._oc_baseline.setdefault(key, value)
            last = self._oc_last.get(key, value)
            if value < last or value < base:  # counter reset (driver reload): new baseline
                self._oc_baseline[key] = base = value
            elif value > last:
                self._oc_until[key] = now + self.oc_hold_s
            self._oc_last[key] = value
            state.counters[key] = value
            state.counters[key.replace("_event_cnt", "_events_since_start")] = value - base
            if now < self._oc_until.get(key, float("-inf")):
                name = key.replace("_event_cnt", "")
                _throttled(state, f"soctherm over-current {name} events increased "
                                  f"(+{value - base} since start)")

    @staticmethod
    def _nvml(snap: SystemSnapshot, state: ThrottleState) -> None:
        if snap.nvml_clock_reasons is None:
            return
        hard, soft = decode_reasons(snap.nvml_clock_reasons)
        for name in hard:
            _throttled(state, f"NVML {name}")
        for name in soft:
            _warn(state, f"NVML {name}")

    def _temperature(self, snap: SystemSnapshot, state: ThrottleState) -> None:
        for zone in snap.live_zones():
            if zone.temp_c >= self.threshold_c:
                _throttled(state, f"{zone.name} {zone.temp_c:.1f} C >= threshold "
                                  f"{self.threshold_c:.1f} C")

    # -- warnings ----------------------------------------------------------------------------------
    def _gpu_clock(self, snap: SystemSnapshot, state: ThrottleState) -> None:
        gpu = snap.gpu_freq
        if gpu is None or gpu.cur_hz is None or not gpu.max_hz or gpu.load_pct is None:
            return
        if gpu.load_pct >= self.gpu_busy_pct and gpu.cur_hz < self.gpu_freq_ratio * gpu.max_hz:
            _warn(state, f"GPU clock {gpu.cur_hz / 1e6:.0f} MHz below max {gpu.max_hz / 1e6:.0f} MHz "
                         f"at {gpu.load_pct:.0f}% load")

    def _cpu_caps(self, snap: SystemSnapshot, state: ThrottleState) -> None:
        for cpu in snap.cpu_freq:
            cap = cpu.scaling_max_khz
            if cap is None:
                continue
            seen = max(self._cpu_cap_seen.get(cpu.policy, cap), cap)
            self._cpu_cap_seen[cpu.policy] = seen
            if cap < seen:
                _warn(state, f"cpufreq {cpu.policy} capped to {cap / 1000:.0f} MHz "
                             f"(was {seen / 1000:.0f} MHz)")


def _throttled(state: ThrottleState, reason: str) -> None:
    state.throttled = True
    state.reasons.append(reason)


def _warn(state: ThrottleState, reason: str) -> None:
    state.warn = True
    state.reasons.append(reason)
