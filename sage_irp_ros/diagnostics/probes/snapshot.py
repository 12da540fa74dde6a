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

"""One normalised reading of the platform: every field is optional, because hardware differs.

Units are in the field names (``_c`` degrees Celsius, ``_mb`` MiB, ``_w`` watts, ``_hz`` hertz,
``_khz`` kilohertz, ``_pct`` percent). ``None`` means "this machine does not report it".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

# jtop and the Tegra thermal driver report -256 (degrees, or -256000 millidegrees) for a sensor
# that is powered off (e.g. the cv0..cv2 zones on an Orin while the DLA/PVA sleep).
OFFLINE_READING = -256.0


@dataclass
class ThermalZone:
    """A temperature sensor and its trip points (sysfs thermal zone, jtop sensor or NVML GPU)."""

    name: str
    temp_c: Optional[float] = None
    passive_c: Optional[float] = None   # lowest passive trip point (software throttling starts)
    critical_c: Optional[float] = None  # lowest critical trip point (shutdown)
    source: str = "sysfs"

    @property
    def margin_c(self) -> Optional[float]:
        """Degrees left before the nearest passive trip point (negative once past it)."""
        if self.temp_c is None or self.passive_c is None:
            return None
        return self.passive_c - self.temp_c


@dataclass
class CoolingDevice:
    """``/sys/class/thermal/cooling_deviceN``: type, current and maximum state."""

    name: str
    cur_state: Optional[int] = None
    max_state: Optional[int] = None


@dataclass
class GpuFreq:
    """GPU clock from devfreq (Jetson), jtop or NVML."""

    name: str
    cur_hz: Optional[float] = None
    max_hz: Optional[float] = None
    min_hz: Optional[float] = None
    load_pct: Optional[float] = None


@dataclass
class CpuFreq:
    """One cpufreq policy: current frequency, the policy's cap and the hardware maximum (kHz)."""

    policy: str
    cur_khz: Optional[int] = None
    scaling_max_khz: Optional[int] = None
    hw_max_khz: Optional[int] = None


@dataclass
class ThrottleState:
    """The throttle detector's decision: ``throttled`` (ERROR), ``warn`` (WARN), and why."""

    throttled: bool = False
    warn: bool = False
    reasons: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class SystemSnapshot:
    """Everything the diagnostics node reports about the machine, read once."""

    stamp: float = 0.0
    source: str = "sysfs"
    zones: list[ThermalZone] = field(default_factory=list)
    # Memory (MiB)
    ram_total_mb: Optional[float] = None
    ram_available_mb: Optional[float] = None
    swap_total_mb: Optional[float] = None
    swap_used_mb: Optional[float] = None
    # GPU
    gpu_name: Optional[str] = None
    gpu_mem_used_mb: Optional[float] = None
    gpu_mem_total_mb: Optional[float] = None
    gpu_mem_shared: Optional[bool] = None  # True: carved from system RAM (Jetson NvMap)
    gpu_freq: Optional[GpuFreq] = None
    gpu_util_pct: Optional[float] = None
    gpu_power_limit_w: Optional[float] = None
    nvml_clock_reasons: Optional[int] = None
    # Power, modes and fan
    power_total_w: Optional[float] = None
    power_rails_w: dict[str, float] = field(default_factory=dict)
    power_mode: Optional[str] = None
    jetson_clocks: Optional[bool] = None
    fan_pct: Optional[float] = None
    fan_rpm: Optional[float] = None
    # Throttle inputs
    cooling: list[CoolingDevice] = field(default_factory=list)
    oc_events: dict[str, int] = field(default_factory=dict)
    cpu_freq: list[CpuFreq] = field(default_factory=list)
    throttle: ThrottleState = field(default_factory=ThrottleState)
    errors: list[str] = field(default_factory=list)

    # -- derived views ---------------------------------------------------------------------------
    @property
    def ram_used_pct(self) -> Optional[float]:
        if not self.ram_total_mb or self.ram_available_mb is None:
            return None
        used = self.ram_total_mb - self.ram_available_mb
        return max(0.0, min(100.0, 100.0 * used / self.ram_total_mb))

    @property
    def ram_used_mb(self) -> Optional[float]:
        if self.ram_total_mb is None or self.ram_available_mb is None:
            return None
        return self.ram_total_mb - self.ram_available_mb

    def live_zones(self) -> list[ThermalZone]:
        """Zones with a reading (offline sensors left out)."""
        return [z for z in self.zones if z.temp_c is not None]

    @property
    def hottest(self) -> Optional[ThermalZone]:
        zones = self.live_zones()
        return max(zones, key=lambda z: z.temp_c) if zones else None

    @property
    def tightest(self) -> Optional[ThermalZone]:
        """The zone closest to (or furthest past) its passive trip point."""
        zones = [z for z in self.live_zones() if z.margin_c is not None]
        return min(zones, key=lambda z: z.margin_c) if zones else None

    def zone(self, name: str) -> Optional[ThermalZone]:
        for z in self.zones:
            if z.name == name:
                return z
        return None


class BackendUnavailable(RuntimeError):
    """A backend cannot be used; ``str(exc)`` says why (shown in the Probe status)."""

    def __init__(self, reason: str, *, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent  # True: retrying will not help (e.g. package not installed)


def merge(snapshot: SystemSnapshot, fields: Mapping[str, Any]) -> None:
    """Overlay backend fields onto a sysfs snapshot; backend zones update same-named sysfs zones."""
    for key, value in fields.items():
        if key == "zones":
            for zone in value:
                match = snapshot.zone(zone.name) or snapshot.zone(f"{zone.name}-thermal")
                if match is None:
                    snapshot.zones.append(zone)
                elif zone.temp_c is not None:
                    match.temp_c = zone.temp_c
                    if zone.passive_c is not None:
                        match.passive_c = zone.passive_c
        elif key == "power_rails_w":
            snapshot.power_rails_w.update(value)
        elif value is not None:
            setattr(snapshot, key, value)
