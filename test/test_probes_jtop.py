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

"""jtop backend: recorded jtop dicts, -256 readings, missing keys, service failures and back-off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diag_fakes import (SERVICE_DENIED, SERVICE_INACTIVE, SYSFS, VERSION_MISMATCH, FakeClock,
                        FakeJtop, load_jtop, make_fake_pynvml)
from sage_irp_ros.config.settings import DiagnosticsConfig
from sage_irp_ros.diagnostics.probes.jtop_backend import JtopBackend, parse_jtop
from sage_irp_ros.diagnostics.probes.snapshot import BackendUnavailable, SystemSnapshot
from sage_irp_ros.diagnostics.probes.system_probe import SystemProbe

ORIN = str(SYSFS / "orin_nano_jp6")


def test_parse_recorded_orin_nano():
    out = parse_jtop(load_jtop("orin_nano_jp6.json"))
    zones = {z.name: z.temp_c for z in out["zones"]}
    assert zones["cpu"] == pytest.approx(46.062) and zones["tj"] == pytest.approx(47.906)
    assert zones["cv0"] is None and zones["cv1"] is None  # -256 / online False: no value
    assert out["ram_total_mb"] == pytest.approx(7620188 / 1024)
    assert out["ram_available_mb"] == pytest.approx((7620188 - 2356392) / 1024)
    assert out["gpu_mem_used_mb"] == pytest.approx(412340 / 1024) and out["gpu_mem_shared"] is True
    assert out["swap_total_mb"] == pytest.approx(3810076 / 1024) and out["swap_used_mb"] == 0
    assert out["gpu_freq"].cur_hz == 306e6 and out["gpu_freq"].max_hz == 1020e6
    assert out["gpu_freq"].load_pct == pytest.approx(4.8)
    assert out["power_total_w"] == pytest.approx(5.133)
    assert out["power_rails_w"] == pytest.approx(
        {"VDD_CPU_GPU_CV": 1.064, "VDD_SOC": 1.540, "VDD_IN": 5.133})
    assert out["power_mode"] == "25W" and out["jetson_clocks"] is False
    assert out["fan_pct"] == pytest.approx(26.27, abs=0.01) and out["fan_rpm"] == 1145


def test_parse_partial_jtop_with_minus_256_and_missing_keys():
    out = parse_jtop(load_jtop("orin_partial.json"))
    zones = {z.name: z.temp_c for z in out["zones"]}
    assert zones == {"cpu": 71.5, "gpu": None, "tj": 72.25, "ambient": 35.0}
    assert out["ram_total_mb"] == pytest.approx(3688892 / 1024)
    assert "ram_available_mb" not in out                 # no "used" key
    assert "swap_used_mb" not in out                     # -256 = no value
    assert out["gpu_util_pct"] == 97.0 and out["gpu_freq"].cur_hz is None
    for key in ("power_total_w", "power_rails_w", "power_mode", "jetson_clocks", "fan_pct", "fan_rpm"):
        assert key not in out
    assert parse_jtop({}) == {}


def test_parse_thor_vram_and_offline_rail():
    out = parse_jtop(load_jtop("thor.json"))
    assert out["gpu_mem_shared"] is False                # shared_label VRAM (nvidia-smi), not NvMap
    assert out["gpu_mem_used_mb"] == pytest.approx(8192.0)
    assert "VIN_SYS_5V0" not in out["power_rails_w"]     # online False, power -256
    assert out["power_total_w"] == pytest.approx(61.5) and out["jetson_clocks"] is True


def test_probe_with_recorded_jtop_overlays_sysfs():
    client = FakeJtop(load_jtop("orin_nano_jp6.json"))
    probe = SystemProbe(DiagnosticsConfig(backend="jtop", sysfs_root=ORIN), 85.0,
                        jtop_factory=lambda: client)
    snap = probe.read()
    assert client.started and probe.backend == "jtop" and not probe.degraded
    assert probe.backend_reason == "jtop requested"
    assert snap.source == "jtop"
    # jtop's "cpu" updated sysfs's "cpu-thermal", whose trip points stay
    cpu = snap.zone("cpu-thermal")
    assert cpu.temp_c == pytest.approx(46.062) and cpu.passive_c == 99.0
    assert snap.zone("cpu") is None
    assert snap.power_mode == "25W" and snap.jetson_clocks is False
    assert snap.ram_available_mb == pytest.approx((7620188 - 2356392) / 1024)
    probe.close()
    assert client.closed


@pytest.mark.parametrize("message, shown", [
    (SERVICE_INACTIVE, "The jtop.service is not active"),
    (SERVICE_DENIED, "I can't access jtop.service"),
    (VERSION_MISMATCH, "Mismatch version jtop service: [4.2.7] and client: [4.3.1]"),
])
def test_service_failure_falls_back_with_a_reason_and_warns(message, shown):
    clients = []

    def factory():
        clients.append(FakeJtop({}, start_error=message))
        return clients[-1]

    probe = SystemProbe(DiagnosticsConfig(backend="auto", sysfs_root=ORIN), 85.0,
                        jtop_factory=factory, nvml_module=make_fake_pynvml(init_error=12))
    assert probe.backend == "sysfs" and probe.degraded
    assert shown in probe.backend_reason
    assert "nvml: NVML unavailable: NVML Shared Library Not Found" in probe.backend_reason
    assert clients[0].closed
    assert probe.read().source == "sysfs"


def test_jtop_retries_with_back_off_then_connects():
    clock = FakeClock()
    outcomes = [SERVICE_INACTIVE, SERVICE_INACTIVE, SERVICE_INACTIVE, None]
    made = []

    def factory():
        made.append(FakeJtop(load_jtop("orin_nano_jp6.json"), start_error=outcomes[len(made)]))
        return made[-1]

    probe = SystemProbe(DiagnosticsConfig(backend="jtop", sysfs_root=ORIN), 85.0,
                        jtop_factory=factory, clock=clock, retry_initial_s=5, retry_max_s=60)
    assert probe.backend == "sysfs" and probe.retry_in_s == 5 and len(made) == 1
    assert probe.backend_reason.startswith("jtop requested, fell back to sysfs (jtop: jtop service")
    clock.advance(4.9)
    probe.read()
    assert len(made) == 1                                # not yet
    clock.advance(0.1)
    probe.read()
    assert len(made) == 2 and probe.retry_in_s == 10     # doubled
    clock.advance(10)
    probe.read()
    assert len(made) == 3 and probe.retry_in_s == 20
    clock.advance(20)
    snap = probe.read()
    assert len(made) == 4 and probe.backend == "jtop" and not probe.degraded
    assert probe.retry_in_s is None and snap.source == "jtop" and probe.retries == 3


def test_lost_connection_falls_back_and_retries():
    clock = FakeClock()
    made = []

    def factory():
        made.append(FakeJtop(load_jtop("orin_nano_jp6.json")))
        if len(made) == 2:
            made[-1]._start_error = SERVICE_INACTIVE
        return made[-1]

    probe = SystemProbe(DiagnosticsConfig(backend="auto", sysfs_root=ORIN), 85.0,
                        jtop_factory=factory, nvml_module=make_fake_pynvml(init_error=9), clock=clock)
    assert probe.backend == "jtop"
    made[0].running = False                               # the service went away
    snap = probe.read()
    assert snap.source == "sysfs" and probe.backend == "sysfs" and probe.degraded
    assert made[0].closed and "jtop connection lost" in probe.backend_reason
    assert len(made) == 1 and probe.retry_in_s == 5       # no reconnect storm
    clock.advance(5)
    assert probe.read().source == "sysfs" and len(made) == 2 and probe.retry_in_s == 10
    assert "The jtop.service is not active" in probe.backend_reason
    clock.advance(10)
    assert probe.read().source == "jtop" and not probe.degraded and len(made) == 3


def test_not_installed_is_quiet_in_auto_but_warns_when_requested(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)        # import jtop -> ImportError
    nv = make_fake_pynvml(init_error=12)
    auto = SystemProbe(DiagnosticsConfig(backend="auto", sysfs_root=ORIN), 85.0, nvml_module=nv)
    assert auto.backend == "sysfs" and not auto.degraded and auto.retry_in_s is None
    assert "jetson-stats (jtop) is not installed" in auto.backend_reason
    asked = SystemProbe(DiagnosticsConfig(backend="jtop", sysfs_root=ORIN), 85.0)
    assert asked.backend == "sysfs" and asked.degraded and asked.retry_in_s is None


def test_backend_read_error_is_reported_not_raised():
    client = FakeJtop(load_jtop("orin_nano_jp6.json"))
    backend = JtopBackend(lambda: client)
    with pytest.raises(BackendUnavailable, match="not connected"):
        backend.read(SystemSnapshot())
    backend.open()
    client.ok = lambda spin=False: (_ for _ in ()).throw(RuntimeError("reader thread died"))
    with pytest.raises(BackendUnavailable, match="connection lost: reader thread died"):
        backend.read(SystemSnapshot())


def test_jetson_stats_is_imported_lazily():
    """Importing the probes (and building a sysfs probe) must not import the AGPL jtop package."""
    code = ("import sys\n"
            "from sage_irp_ros.config.settings import DiagnosticsConfig\n"
            "from sage_irp_ros.diagnostics.probes.system_probe import SystemProbe\n"
            "import sage_irp_ros.diagnostics.status\n"
            f"SystemProbe(DiagnosticsConfig(backend='sysfs', sysfs_root={ORIN!r}), 85.0).read()\n"
            "assert 'jtop' not in sys.modules and 'pynvml' not in sys.modules, sorted(sys.modules)\n"
            "assert 'rclpy' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])


def test_collect_reads_jtop_objects_not_only_dicts():
    """jtop returns dict-like GenericInterface objects, an NVPModel with .name and a JetsonClocks
    object that is truthy while jetson_clocks runs."""
    from sage_irp_ros.diagnostics.probes.jtop_backend import collect

    class GenericInterface:  # items()/keys()/__getitem__ like jtop.core.common.GenericInterface
        def __init__(self, data):
            self._data = data

        def items(self):
            return self._data.items()

    class NVPModel:
        name = "MAXN_SUPER"

    class JetsonClocks:
        def __bool__(self):
            return True

    recorded = load_jtop("orin_nano_jp6.json")
    client = type("Client", (), {
        "memory": GenericInterface(recorded["memory"]), "fan": GenericInterface(recorded["fan"]),
        "temperature": recorded["temperature"], "gpu": recorded["gpu"], "power": recorded["power"],
        "nvpmodel": NVPModel(), "jetson_clocks": JetsonClocks()})()
    out = parse_jtop(collect(client))
    assert out["power_mode"] == "MAXN_SUPER" and out["jetson_clocks"] is True
    assert out["fan_rpm"] == 1145 and out["gpu_mem_used_mb"] == pytest.approx(412340 / 1024)
