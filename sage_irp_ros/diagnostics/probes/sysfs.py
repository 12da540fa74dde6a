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

"""Read the platform from sysfs, procfs and /etc under a configurable root.

Every path is joined to ``root`` ("/" on a robot, a recorded tree in tests). Each reader returns
``None`` or an empty collection when the file is missing or unreadable: the hardware simply has
no such sensor. Sources:

- ``/sys/class/thermal/thermal_zone*``: ``type``, ``temp`` (millidegrees), ``trip_point_N_temp/type``
- ``/sys/class/thermal/cooling_device*``: ``type``, ``cur_state``, ``max_state``
- ``/sys/class/hwmon/hwmon*``: ``soctherm_oc`` (``ocN_event_cnt``), ``ina3221`` power rails,
  ``pwmfan`` (``pwm1``), any ``fanN_input`` (RPM)
- ``/sys/class/devfreq/*gpu*`` (e.g. ``17000000.gpu``, ``17000000.ga10b``): GPU clock and load
- ``/sys/devices/system/cpu/cpufreq/policy*``: CPU clock and caps
- ``/proc/meminfo`` (with ``NvMapMemUsed`` on a Jetson), ``/proc/device-tree/model``
- ``/var/lib/nvpmodel/status`` + ``/etc/nvpmodel.conf``: the Jetson power mode
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Optional

from sage_irp_ros.diagnostics.probes.snapshot import (OFFLINE_READING, CoolingDevice, CpuFreq, GpuFreq, SystemSnapshot,
                                                      ThermalZone)

_NUM = re.compile(r"(\d+)$")
_TRIP = re.compile(r"^trip_point_(\d+)_temp$")
_OC = re.compile(r"^(oc\d+)_event_cnt$")
_GPU_DEVFREQ = re.compile(r"gpu|ga10b|gv11b|gp10b|gm20b|gb10b", re.IGNORECASE)
_NVP_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", re.IGNORECASE)
_NVP_STATUS = re.compile(r"pmode:\s*(\d+)")


def _index(path: Path) -> int:
    match = _NUM.search(path.name)
    return int(match.group(1)) if match else -1


class SysfsReader:
    """Reads one :class:`SystemSnapshot`'s worth of sysfs/procfs data under ``root``."""

    def __init__(self, root: str = "/"):
        self.root = Path(root or "/")

    # -- file helpers ----------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    @staticmethod
    def text(path: Path) -> Optional[str]:
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None

    @classmethod
    def integer(cls, path: Path) -> Optional[int]:
        raw = cls.text(path)
        if raw is None:
            return None
        try:
            return int(raw.split()[0])
        except (ValueError, IndexError):
            return None

    def _dirs(self, rel: str, prefix: str) -> list[Path]:
        base = self.path(rel)
        try:
            found = [p for p in base.iterdir() if p.name.startswith(prefix) and p.is_dir()]
        except OSError:
            return []
        return sorted(found, key=lambda p: (_index(p), p.name))

    # -- thermal ---------------------------------------------------------------------------------
    def thermal_zones(self) -> list[ThermalZone]:
        zones: list[ThermalZone] = []
        seen: dict[str, int] = {}
        for zdir in self._dirs("sys/class/thermal", "thermal_zone"):
            kind = self.text(zdir / "type") or zdir.name
            count = seen.get(kind, 0)
            seen[kind] = count + 1
            name = kind if count == 0 else f"{kind}_{count}"
            milli = self.integer(zdir / "temp")
            temp = None if milli is None or milli / 1000.0 <= OFFLINE_READING else milli / 1000.0
            passive: list[float] = []
            critical: list[float] = []
            try:
                entries = sorted(p.name for p in zdir.iterdir())
            except OSError:
                entries = []
            for entry in entries:
                match = _TRIP.match(entry)
                if not match:
                    continue
                trip_milli = self.integer(zdir / entry)
                trip_type = self.text(zdir / f"trip_point_{match.group(1)}_type")
                if trip_milli is None or trip_milli <= 0:  # x86_pkg_temp has unset (0) trips
                    continue
                if trip_type == "passive":
                    passive.append(trip_milli / 1000.0)
                elif trip_type == "critical":
                    critical.append(trip_milli / 1000.0)
            zones.append(ThermalZone(name=name, temp_c=temp, passive_c=min(passive, default=None),
                                     critical_c=min(critical, default=None), source="sysfs"))
        return zones

    def cooling_devices(self) -> list[CoolingDevice]:
        return [CoolingDevice(name=self.text(d / "type") or d.name,
                              cur_state=self.integer(d / "cur_state"),
                              max_state=self.integer(d / "max_state"))
                for d in self._dirs("sys/class/thermal", "cooling_device")]

    # -- hwmon -----------------------------------------------------------------------------------
    def hwmons(self) -> list[tuple[str, Path]]:
        return [(self.text(d / "name") or "", d) for d in self._dirs("sys/class/hwmon", "hwmon")]

    def oc_events(self, hwmons: list[tuple[str, Path]]) -> dict[str, int]:
        """``soctherm_oc`` over-current throttle event counters (Jetson)."""
        counters: dict[str, int] = {}
        for name, d in hwmons:
            if name != "soctherm_oc":
                continue
            try:
                entries = sorted(p.name for p in d.iterdir())
            except OSError:
                continue
            for entry in entries:
                match = _OC.match(entry)
                value = self.integer(d / entry) if match else None
                if match and value is not None:
                    counters[f"{match.group(1)}_event_cnt"] = value
        return counters

    def power_rails(self, hwmons: list[tuple[str, Path]]) -> dict[str, float]:
        """INA3221 rails in watts: ``inN_input`` (mV) x ``currN_input`` (mA)."""
        rails: dict[str, float] = {}
        for name, d in hwmons:
            if not name.startswith("ina3221"):
                continue
            for channel in range(1, 9):
                label = self.text(d / f"in{channel}_label")
                mv = self.integer(d / f"in{channel}_input")
                ma = self.integer(d / f"curr{channel}_input")
                if label and mv is not None and ma is not None:
                    rails[label] = mv * ma / 1e6
        return rails

    def fan(self, hwmons: list[tuple[str, Path]]) -> tuple[Optional[float], Optional[float]]:
        pct = rpm = None
        for name, d in hwmons:
            if pct is None and name in ("pwmfan", "pwm_fan", "pwm-fan"):
                pwm = self.integer(d / "pwm1")
                pct = None if pwm is None else round(100.0 * pwm / 255.0, 1)
            if rpm is None:
                value = self.integer(d / "fan1_input")
                rpm = None if value is None else float(value)
        return pct, rpm

    # -- clocks ----------------------------------------------------------------------------------
    def gpu_devfreq(self) -> Optional[GpuFreq]:
        base = self.path("sys/class/devfreq")
        try:
            candidates = sorted(p for p in base.iterdir() if _GPU_DEVFREQ.search(p.name))
        except OSError:
            return None
        for d in candidates:
            cur = self.integer(d / "cur_freq")
            if cur is None:
                continue
            load = self.integer(d / "device" / "load")  # nvgpu: 0..1000
            return GpuFreq(name=d.name, cur_hz=float(cur),
                           max_hz=_float(self.integer(d / "max_freq")),
                           min_hz=_float(self.integer(d / "min_freq")),
                           load_pct=None if load is None else load / 10.0)
        return None

    def cpu_freq(self) -> list[CpuFreq]:
        return [CpuFreq(policy=d.name, cur_khz=self.integer(d / "scaling_cur_freq"),
                        scaling_max_khz=self.integer(d / "scaling_max_freq"),
                        hw_max_khz=self.integer(d / "cpuinfo_max_freq"))
                for d in self._dirs("sys/devices/system/cpu/cpufreq", "policy")]

    # -- procfs and /etc -------------------------------------------------------------------------
    def meminfo(self) -> dict[str, int]:
        """``/proc/meminfo`` as ``{key: kB}``; empty when missing."""
        raw = self.text(self.path("proc/meminfo"))
        values: dict[str, int] = {}
        for line in (raw or "").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                try:
                    values[key.strip()] = int(parts[0])
                except ValueError:
                    continue
        return values

    def device_model(self) -> Optional[str]:
        raw = self.text(self.path("proc/device-tree/model"))
        if not raw:
            return None
        return raw.replace("\x00", "").strip() or None

    def power_mode(self) -> Optional[str]:
        status = self.text(self.path("var/lib/nvpmodel/status"))
        match = _NVP_STATUS.search(status or "")
        if not match:
            return None
        mode_id = int(match.group(1))
        conf = self.text(self.path("etc/nvpmodel.conf")) or ""
        for found_id, name in _NVP_MODEL.findall(conf):
            if int(found_id) == mode_id:
                return name
        return f"mode {mode_id}"

    def hostname(self) -> str:
        if self.root != Path("/"):
            recorded = self.text(self.path("etc/hostname"))
            if recorded:
                return recorded
        return socket.gethostname()

    # -- one full read ---------------------------------------------------------------------------
    def read(self, snapshot: SystemSnapshot) -> SystemSnapshot:
        """Fill ``snapshot`` with everything sysfs/procfs has; returns it."""
        snapshot.zones = self.thermal_zones()
        snapshot.cooling = self.cooling_devices()
        hwmons = self.hwmons()
        snapshot.oc_events = self.oc_events(hwmons)
        rails = self.power_rails(hwmons)
        snapshot.power_rails_w = rails
        if "VDD_IN" in rails:
            snapshot.power_total_w = rails["VDD_IN"]
        snapshot.fan_pct, snapshot.fan_rpm = self.fan(hwmons)
        snapshot.gpu_freq = self.gpu_devfreq()
        snapshot.cpu_freq = self.cpu_freq()
        snapshot.power_mode = self.power_mode()
        self._memory(snapshot)
        return snapshot

    def _memory(self, snapshot: SystemSnapshot) -> None:
        info = self.meminfo()
        if not info and self.root == Path("/"):
            info = _psutil_meminfo()
        if "MemTotal" in info:
            snapshot.ram_total_mb = info["MemTotal"] / 1024.0
        if "MemAvailable" in info:
            snapshot.ram_available_mb = info["MemAvailable"] / 1024.0
        elif "MemFree" in info:  # kernels before 3.14
            free = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0)
            snapshot.ram_available_mb = free / 1024.0
        if "SwapTotal" in info:
            snapshot.swap_total_mb = info["SwapTotal"] / 1024.0
            snapshot.swap_used_mb = (info["SwapTotal"] - info.get("SwapFree", 0)) / 1024.0
        if "NvMapMemUsed" in info:  # Jetson: GPU allocations carved from system RAM
            snapshot.gpu_mem_used_mb = info["NvMapMemUsed"] / 1024.0
            snapshot.gpu_mem_total_mb = snapshot.ram_total_mb
            snapshot.gpu_mem_shared = True


def _float(value: Optional[int]) -> Optional[float]:
    return None if value is None else float(value)


def _psutil_meminfo() -> dict[str, int]:
    """Fallback for hosts without a readable /proc/meminfo (only when reading the live root)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        return {}
    try:
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    except (OSError, RuntimeError):
        return {}
    return {"MemTotal": vm.total // 1024, "MemAvailable": vm.available // 1024,
            "SwapTotal": sw.total // 1024, "SwapFree": sw.free // 1024}
