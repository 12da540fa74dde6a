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

"""NVML backend (PyPI ``nvidia-ml-py``, module ``pynvml``): discrete GPUs on x86, and Jetson Thor.

Reads GPU name, memory, temperature with its slowdown threshold, clocks, power and limit, fan and
the clock-event (throttle) reasons bitmask. ``pynvml`` is imported lazily; tests inject a fake module
object with the same function names, constants and return shapes. Every call that the device does
not support (``NVMLError``) leaves its field ``None``; on Thor, for example, memory info is
unsupported because GPU memory is system RAM.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

from sage_irp_ros.diagnostics.probes.snapshot import BackendUnavailable, GpuFreq, SystemSnapshot, ThermalZone

# nvmlClocksEventReason* bit values (nvml.h; identical to the older nvmlClocksThrottleReason*).
REASON_GPU_IDLE = 0x1
REASON_APPLICATIONS_CLOCKS_SETTING = 0x2
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SYNC_BOOST = 0x10
REASON_SW_THERMAL_SLOWDOWN = 0x20
REASON_HW_THERMAL_SLOWDOWN = 0x40
REASON_HW_POWER_BRAKE_SLOWDOWN = 0x80
REASON_DISPLAY_CLOCK_SETTING = 0x100

#: Bits that mean the GPU is being slowed down against its will (-> throttled).
THROTTLING_REASONS = {
    REASON_HW_SLOWDOWN: "HwSlowdown",
    REASON_HW_THERMAL_SLOWDOWN: "HwThermalSlowdown",
    REASON_SW_THERMAL_SLOWDOWN: "SwThermalSlowdown",
    REASON_HW_POWER_BRAKE_SLOWDOWN: "HwPowerBrakeSlowdown",
}
#: Bits worth a warning: the driver holds clocks down to stay inside the power limit.
WARNING_REASONS = {REASON_SW_POWER_CAP: "SwPowerCap"}


def decode_reasons(mask: int) -> tuple[list[str], list[str]]:
    """Split a clock-event bitmask into (throttling names, warning names)."""
    hard = [name for bit, name in THROTTLING_REASONS.items() if mask & bit]
    soft = [name for bit, name in WARNING_REASONS.items() if mask & bit]
    return hard, soft


def _import_pynvml() -> ModuleType:
    try:
        import pynvml  # lazy: only needed on NVIDIA discrete GPUs / Thor
    except ImportError as exc:
        raise BackendUnavailable("nvidia-ml-py (pynvml) is not installed", permanent=True) from exc
    return pynvml


class NvmlBackend:
    """Reads GPU ``index`` through ``module`` (the real ``pynvml`` unless a fake is injected)."""

    name = "nvml"

    def __init__(self, module: Optional[Any] = None, index: int = 0):
        self._module = module
        self._index = index
        self._nv: Any = None
        self._handle: Any = None
        self.gpu_name: Optional[str] = None

    def open(self) -> None:
        nv = self._module if self._module is not None else _import_pynvml()
        error = getattr(nv, "NVMLError", Exception)
        try:
            nv.nvmlInit()
        except error as exc:
            raise BackendUnavailable(f"NVML unavailable: {exc}", permanent=True) from exc
        try:
            count = nv.nvmlDeviceGetCount()
            if count <= self._index:
                raise BackendUnavailable(f"NVML found {count} GPU(s), none at index {self._index}",
                                         permanent=True)
            handle = nv.nvmlDeviceGetHandleByIndex(self._index)
            name = nv.nvmlDeviceGetName(handle)
        except BackendUnavailable:
            _shutdown(nv)
            raise
        except error as exc:
            _shutdown(nv)
            raise BackendUnavailable(f"NVML cannot open GPU {self._index}: {exc}") from exc
        self._nv, self._handle = nv, handle
        self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)

    def _call(self, fn_name: str, *args: Any) -> Any:
        """Call ``pynvml.<fn_name>(handle, *args)``; None when missing or unsupported."""
        fn: Optional[Callable[..., Any]] = getattr(self._nv, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(self._handle, *args)
        except getattr(self._nv, "NVMLError", Exception):
            return None

    def read(self, snapshot: SystemSnapshot) -> None:
        if self._nv is None:
            raise BackendUnavailable("NVML is not initialised")
        nv = self._nv
        snapshot.gpu_name = self.gpu_name
        memory = self._call("nvmlDeviceGetMemoryInfo")
        if memory is not None:  # bytes
            snapshot.gpu_mem_used_mb = memory.used / 2**20
            snapshot.gpu_mem_total_mb = memory.total / 2**20
            snapshot.gpu_mem_shared = False
        temp = self._call("nvmlDeviceGetTemperature", getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        if temp is not None:
            slowdown = self._call("nvmlDeviceGetTemperatureThreshold",
                                  getattr(nv, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1))
            shutdown = self._call("nvmlDeviceGetTemperatureThreshold",
                                  getattr(nv, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN", 0))
            snapshot.zones.append(ThermalZone(
                name="gpu-nvml", temp_c=float(temp),
                passive_c=float(slowdown) if slowdown else None,
                critical_c=float(shutdown) if shutdown else None, source="nvml"))
        graphics = getattr(nv, "NVML_CLOCK_GRAPHICS", 0)
        cur = self._call("nvmlDeviceGetClockInfo", graphics)  # MHz
        top = self._call("nvmlDeviceGetMaxClockInfo", graphics)
        util = self._call("nvmlDeviceGetUtilizationRates")
        load = float(util.gpu) if util is not None else None
        if cur is not None:
            snapshot.gpu_freq = GpuFreq(name=f"nvml:{self._index}", cur_hz=cur * 1e6,
                                        max_hz=None if top is None else top * 1e6, load_pct=load)
        snapshot.gpu_util_pct = load
        power = self._call("nvmlDeviceGetPowerUsage")  # mW
        if power is not None:
            snapshot.power_rails_w["gpu"] = power / 1000.0
            if snapshot.power_total_w is None:
                snapshot.power_total_w = power / 1000.0
        limit = self._call("nvmlDeviceGetEnforcedPowerLimit")
        snapshot.gpu_power_limit_w = None if limit is None else limit / 1000.0
        fan = self._call("nvmlDeviceGetFanSpeed")
        if fan is not None:
            snapshot.fan_pct = float(fan)
        reasons = self._call("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:  # drivers before r535 only have the "Throttle" spelling
            reasons = self._call("nvmlDeviceGetCurrentClocksThrottleReasons")
        snapshot.nvml_clock_reasons = None if reasons is None else int(reasons)

    def close(self) -> None:
        if self._nv is not None:
            _shutdown(self._nv)
            self._nv = self._handle = None


def _shutdown(nv: Any) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:  # noqa: BLE001 - already shut down or never initialised
        pass
