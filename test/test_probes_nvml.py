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

"""NVML backend against a fake ``pynvml`` module injected at the library boundary."""

from __future__ import annotations

import pynvml
import pytest

from diag_fakes import NVML_CONSTANTS, SYSFS, FakeGpu, make_fake_pynvml
from sage_irp_ros.config.settings import DiagnosticsConfig
from sage_irp_ros.diagnostics.probes import nvml_backend
from sage_irp_ros.diagnostics.probes.nvml_backend import NvmlBackend
from sage_irp_ros.diagnostics.probes.snapshot import BackendUnavailable, SystemSnapshot
from sage_irp_ros.diagnostics.probes.system_probe import SystemProbe

LAPTOP = str(SYSFS / "x86_laptop")


def test_fake_and_backend_constants_are_the_real_nvml_values():
    for name, value in NVML_CONSTANTS.items():
        assert getattr(pynvml, name) == value, name
    assert nvml_backend.REASON_SW_POWER_CAP == pynvml.nvmlClocksEventReasonSwPowerCap
    assert nvml_backend.REASON_HW_SLOWDOWN == pynvml.nvmlClocksEventReasonHwSlowdown
    assert nvml_backend.REASON_HW_THERMAL_SLOWDOWN == pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert nvml_backend.REASON_SW_THERMAL_SLOWDOWN == pynvml.nvmlClocksEventReasonSwThermalSlowdown
    assert nvml_backend.REASON_HW_POWER_BRAKE_SLOWDOWN == \
        pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    assert nvml_backend.REASON_GPU_IDLE == pynvml.nvmlClocksEventReasonGpuIdle


def test_discrete_gpu_reading():
    nv = make_fake_pynvml(FakeGpu(reasons=pynvml.nvmlClocksEventReasonSwPowerCap, fan=40))
    backend = NvmlBackend(nv)
    backend.open()
    snap = SystemSnapshot()
    backend.read(snap)
    assert snap.gpu_name == "NVIDIA RTX A2000 8GB Laptop GPU"
    assert snap.gpu_mem_used_mb == 1536 and snap.gpu_mem_total_mb == 8192
    assert snap.gpu_mem_shared is False
    gpu = snap.zone("gpu-nvml")
    assert (gpu.temp_c, gpu.passive_c, gpu.critical_c, gpu.margin_c) == (54, 93, 98, 39)
    assert snap.gpu_freq.cur_hz == 1410e6 and snap.gpu_freq.max_hz == 2100e6
    assert snap.gpu_freq.load_pct == 35 and snap.gpu_util_pct == 35
    assert snap.power_rails_w == {"gpu": 41.25} and snap.power_total_w == 41.25
    assert snap.gpu_power_limit_w == 60 and snap.fan_pct == 40
    assert snap.nvml_clock_reasons == 0x4
    backend.close()
    assert nv.calls == ["nvmlInit", "nvmlShutdown"]


def test_thor_like_gpu_without_memory_info_or_fan_and_old_driver_reason_api():
    nv = make_fake_pynvml(FakeGpu(name="NVIDIA Thor", memory_supported=False,
                                  reasons=pynvml.nvmlClocksEventReasonHwSlowdown,
                                  event_reasons_api=False))
    backend = NvmlBackend(nv)
    backend.open()
    snap = SystemSnapshot()
    backend.read(snap)
    assert snap.gpu_mem_used_mb is None and snap.gpu_mem_shared is None  # unified memory
    assert snap.fan_pct is None
    assert snap.nvml_clock_reasons == 0x8   # via nvmlDeviceGetCurrentClocksThrottleReasons


@pytest.mark.parametrize("code, text", [(12, "NVML Shared Library Not Found"),
                                        (9, "Driver Not Loaded")])
def test_init_failure_is_permanent_unavailability(code, text):
    with pytest.raises(BackendUnavailable, match=text) as info:
        NvmlBackend(make_fake_pynvml(init_error=code)).open()
    assert info.value.permanent


def test_no_gpu():
    nv = make_fake_pynvml(count=0)
    with pytest.raises(BackendUnavailable, match="found 0 GPU"):
        NvmlBackend(nv).open()
    assert nv.calls == ["nvmlInit", "nvmlShutdown"]


def test_auto_probe_picks_nvml_on_x86_and_detects_throttling():
    gpu = FakeGpu()
    probe = SystemProbe(DiagnosticsConfig(backend="auto", sysfs_root=LAPTOP), 85.0,
                        jtop_factory=_jtop_not_installed, nvml_module=make_fake_pynvml(gpu))
    assert probe.backend == "nvml" and not probe.degraded
    assert probe.backend_reason == "auto selected nvml (jtop: jetson-stats (jtop) is not installed)"
    assert probe.hardware_id == "NVIDIA RTX A2000 8GB Laptop GPU"
    snap = probe.read()
    assert snap.source == "nvml" and snap.zone("acpitz") and snap.zone("gpu-nvml").temp_c == 54
    assert not snap.throttle.throttled
    gpu.reasons = (pynvml.nvmlClocksEventReasonHwThermalSlowdown
                   | pynvml.nvmlClocksEventReasonSwThermalSlowdown)
    snap = probe.read()
    assert snap.throttle.throttled
    assert snap.throttle.reasons == ["NVML HwThermalSlowdown", "NVML SwThermalSlowdown"]
    gpu.reasons, gpu.temp = 0, 90
    snap = probe.read()
    assert snap.throttle.throttled and snap.throttle.reasons == ["gpu-nvml 90.0 C >= threshold 85.0 C"]
    probe.close()


def test_requested_nvml_without_driver_falls_back_to_sysfs_and_warns():
    probe = SystemProbe(DiagnosticsConfig(backend="nvml", sysfs_root=LAPTOP), 85.0,
                        nvml_module=make_fake_pynvml(init_error=12))
    assert probe.backend == "sysfs" and probe.degraded and probe.retry_in_s is None
    assert probe.backend_reason == ("nvml requested, fell back to sysfs "
                                    "(nvml: NVML unavailable: NVML Shared Library Not Found)")


def test_backend_exception_mid_read_falls_back():
    nv = make_fake_pynvml()
    probe = SystemProbe(DiagnosticsConfig(backend="nvml", sysfs_root=LAPTOP), 85.0, nvml_module=nv)
    assert probe.backend == "nvml"

    def broken(handle):
        raise ZeroDivisionError("driver bug")
    nv.nvmlDeviceGetMemoryInfo = broken
    snap = probe.read()
    assert snap.source == "sysfs" and probe.degraded
    assert "ZeroDivisionError: driver bug" in probe.backend_reason
    assert probe.retry_in_s == pytest.approx(5, abs=1)  # not reopened at once: back-off


def _jtop_not_installed():
    raise BackendUnavailable("jetson-stats (jtop) is not installed", permanent=True)
