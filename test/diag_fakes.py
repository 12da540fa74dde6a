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

"""Fakes at the library boundary for the diagnostics tests: a ``pynvml`` module and a jtop client.

The fake ``pynvml`` is a plain module object with the real function names, constant values, error
classes and return shapes (the real ``c_nvmlMemory_t`` / ``c_nvmlUtilization_t`` structures from the
installed nvidia-ml-py); only the driver calls are replaced.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path
from typing import Any, Optional

import pynvml as real_pynvml

DATA = Path(__file__).parent / "data"
SYSFS = DATA / "sysfs"
JTOP = DATA / "jtop"

# nvml.h values, written out so the fake does not merely mirror the library it stands in for;
# test_probes_nvml checks them against the installed pynvml.
NVML_CONSTANTS = {
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN": 0,
    "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN": 1,
    "NVML_CLOCK_GRAPHICS": 0,
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "nvmlClocksEventReasonGpuIdle": 0x1,
    "nvmlClocksEventReasonApplicationsClocksSetting": 0x2,
    "nvmlClocksEventReasonSwPowerCap": 0x4,
    "nvmlClocksEventReasonHwSlowdown": 0x8,
    "nvmlClocksEventReasonSyncBoost": 0x10,
    "nvmlClocksEventReasonSwThermalSlowdown": 0x20,
    "nvmlClocksEventReasonHwThermalSlowdown": 0x40,
    "nvmlClocksEventReasonHwPowerBrakeSlowdown": 0x80,
    "nvmlClocksEventReasonDisplayClockSetting": 0x100,
}


class FakeGpu:
    """What the fake driver reports; edit attributes between reads."""

    def __init__(self, **kw: Any):
        self.name = kw.get("name", "NVIDIA RTX A2000 8GB Laptop GPU")
        self.mem_total = kw.get("mem_total", 8 * 2**30)
        self.mem_used = kw.get("mem_used", 1536 * 2**20)
        self.memory_supported = kw.get("memory_supported", True)
        self.temp = kw.get("temp", 54)
        self.slowdown = kw.get("slowdown", 93)
        self.shutdown = kw.get("shutdown", 98)
        self.clock = kw.get("clock", 1410)
        self.max_clock = kw.get("max_clock", 2100)
        self.util = kw.get("util", 35)
        self.power_mw = kw.get("power_mw", 41250)
        self.limit_mw = kw.get("limit_mw", 60000)
        self.fan = kw.get("fan", None)  # laptops: fan not supported
        self.reasons = kw.get("reasons", 0)
        self.event_reasons_api = kw.get("event_reasons_api", True)


def make_fake_pynvml(gpu: Optional[FakeGpu] = None, *, init_error: Optional[int] = None,
                     count: int = 1) -> types.ModuleType:
    """A ``pynvml`` stand-in driven by ``gpu``; ``init_error`` makes nvmlInit raise that NVML code."""
    gpu = gpu or FakeGpu()
    nv = types.ModuleType("pynvml")
    for key, value in NVML_CONSTANTS.items():
        setattr(nv, key, value)
    nv.NVMLError = real_pynvml.NVMLError
    nv.calls = []
    handle = object()

    def unsupported() -> Exception:
        return real_pynvml.NVMLError(NVML_CONSTANTS["NVML_ERROR_NOT_SUPPORTED"])

    def check(h: Any) -> None:
        assert h is handle, "called with a handle that nvmlDeviceGetHandleByIndex did not return"

    def nvmlInit() -> None:
        nv.calls.append("nvmlInit")
        if init_error is not None:
            raise real_pynvml.NVMLError(init_error)

    def nvmlShutdown() -> None:
        nv.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount() -> int:
        return count

    def nvmlDeviceGetHandleByIndex(index: int) -> Any:
        if index >= count:
            raise real_pynvml.NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return handle

    def nvmlDeviceGetName(h: Any) -> str:
        check(h)
        return gpu.name

    def nvmlDeviceGetMemoryInfo(h: Any, version: Any = None) -> Any:
        check(h)
        if not gpu.memory_supported:
            raise unsupported()
        return real_pynvml.c_nvmlMemory_t(total=gpu.mem_total, free=gpu.mem_total - gpu.mem_used,
                                          used=gpu.mem_used)

    def nvmlDeviceGetTemperature(h: Any, sensor: int) -> int:
        check(h)
        assert sensor == NVML_CONSTANTS["NVML_TEMPERATURE_GPU"]
        return gpu.temp

    def nvmlDeviceGetTemperatureThreshold(h: Any, kind: int) -> int:
        check(h)
        return {1: gpu.slowdown, 0: gpu.shutdown}[kind]

    def nvmlDeviceGetClockInfo(h: Any, kind: int) -> int:
        check(h)
        assert kind == NVML_CONSTANTS["NVML_CLOCK_GRAPHICS"]
        return gpu.clock

    def nvmlDeviceGetMaxClockInfo(h: Any, kind: int) -> int:
        check(h)
        return gpu.max_clock

    def nvmlDeviceGetUtilizationRates(h: Any) -> Any:
        check(h)
        return real_pynvml.c_nvmlUtilization_t(gpu=gpu.util, memory=10)

    def nvmlDeviceGetPowerUsage(h: Any) -> int:
        check(h)
        return gpu.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(h: Any) -> int:
        check(h)
        return gpu.limit_mw

    def nvmlDeviceGetFanSpeed(h: Any) -> int:
        check(h)
        if gpu.fan is None:
            raise unsupported()
        return gpu.fan

    def nvmlDeviceGetCurrentClocksEventReasons(h: Any) -> int:
        check(h)
        if not gpu.event_reasons_api:  # a driver older than r535
            raise real_pynvml.NVMLError(13)  # NVML_ERROR_FUNCTION_NOT_FOUND
        return gpu.reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(h: Any) -> int:
        check(h)
        return gpu.reasons

    for fn in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
               nvmlDeviceGetName, nvmlDeviceGetMemoryInfo, nvmlDeviceGetTemperature,
               nvmlDeviceGetTemperatureThreshold, nvmlDeviceGetClockInfo, nvmlDeviceGetMaxClockInfo,
               nvmlDeviceGetUtilizationRates, nvmlDeviceGetPowerUsage, nvmlDeviceGetEnforcedPowerLimit,
               nvmlDeviceGetFanSpeed, nvmlDeviceGetCurrentClocksEventReasons,
               nvmlDeviceGetCurrentClocksThrottleReasons):
        setattr(nv, fn.__name__, fn)
    return nv


class JtopException(Exception):
    """Stands in for ``jtop.core.exceptions.JtopException`` (same messages as jetson-stats 4.x)."""


SERVICE_INACTIVE = "The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service"
SERVICE_DENIED = "I can't access jtop.service.\nPlease logout or reboot this board."
VERSION_MISMATCH = ("Mismatch version jtop service: [4.2.7] and client: [4.3.1]. Please run:\n\n"
                    "sudo systemctl restart jtop.service")


class FakeJtop:
    """A jtop client exposing recorded property dicts; ``start_error`` makes ``start()`` raise."""

    def __init__(self, data: dict, start_error: Optional[str] = None):
        self._data = data
        self._start_error = start_error
        self.started = self.closed = False
        self.running = True

    def start(self) -> None:
        if self._start_error:
            raise JtopException(self._start_error)
        self.started = True

    def ok(self, spin: bool = False) -> bool:
        return self.running

    def close(self) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("_data", {})
        if name in data:
            return data[name]
        raise AttributeError(name)


def load_jtop(name: str) -> dict:
    data = json.loads((JTOP / name).read_text())
    data.pop("_comment", None)
    return data


def copy_tree(name: str, dest: Path) -> Path:
    """A writable copy of a recorded tree (tests then trip alerts, bump counters ...)."""
    target = dest / name
    shutil.copytree(SYSFS / name, target)
    return target


def write(root: Path, rel: str, value: Any) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
