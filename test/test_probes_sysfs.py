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

"""The sysfs/procfs reader against recorded trees: Orin Nano (JetPack 6), an x86 laptop, a bare host."""

from __future__ import annotations

import pytest

from diag_fakes import SYSFS, copy_tree, write
from sage_irp_ros.config.settings import DiagnosticsConfig
from sage_irp_ros.diagnostics.probes.hardware import hardware_id
from sage_irp_ros.diagnostics.probes.snapshot import SystemSnapshot
from sage_irp_ros.diagnostics.probes.sysfs import SysfsReader
from sage_irp_ros.diagnostics.probes.system_probe import SystemProbe


def read(root) -> SystemSnapshot:
    return SysfsReader(str(root)).read(SystemSnapshot())


def test_orin_thermal_zones_trip_points_and_offline_cv_sensors():
    snap = read(SYSFS / "orin_nano_jp6")
    names = [z.name for z in snap.zones]
    assert names == ["cpu-thermal", "gpu-thermal", "cv0-thermal", "cv1-thermal", "cv2-thermal",
                     "soc0-thermal", "soc1-thermal", "soc2-thermal", "tj-thermal"]
    assert snap.zone("cpu-thermal").temp_c == pytest.approx(46.062)
    # -256000 millidegrees: the CV sensors are powered off, not freezing
    assert [snap.zone(f"cv{i}-thermal").temp_c for i in range(3)] == [None, None, None]
    tj = snap.zone("tj-thermal")
    assert tj.passive_c == 99.0 and tj.critical_c == 104.5  # the active (fan) trip is not passive
    hottest = snap.hottest
    assert hottest.name in ("soc1-thermal", "tj-thermal") and hottest.temp_c == pytest.approx(47.906)
    assert hottest.margin_c == pytest.approx(99.0 - 47.906)


def test_orin_cooling_devices_counters_clocks_power_and_memory():
    snap = read(SYSFS / "orin_nano_jp6")
    cooling = {c.name: c for c in snap.cooling}
    assert cooling["gpu-throttle-alert"].cur_state == 0 and cooling["gpu-throttle-alert"].max_state == 1
    assert "hot-surface-alert" in cooling and "devfreq-17000000.gpu" in cooling
    assert snap.oc_events == {"oc1_event_cnt": 0, "oc2_event_cnt": 0, "oc3_event_cnt": 0}
    assert snap.gpu_freq.name == "17000000.gpu"
    assert snap.gpu_freq.cur_hz == 306e6 and snap.gpu_freq.max_hz == 1020e6
    assert snap.gpu_freq.load_pct == pytest.approx(4.8)
    assert [(c.policy, c.cur_khz, c.scaling_max_khz) for c in snap.cpu_freq] == [
        ("policy0", 1344000, 1728000), ("policy4", 729600, 1728000)]
    assert snap.power_rails_w == pytest.approx(
        {"VDD_IN": 5.13344, "VDD_CPU_GPU_CV": 1.064448, "VDD_SOC": 1.540032})
    assert snap.power_total_w == pytest.approx(5.13344)
    assert snap.power_mode == "25W"
    assert snap.fan_pct == pytest.approx(26.3) and snap.fan_rpm == 1145
    assert snap.ram_total_mb == pytest.approx(7620188 / 1024)
    assert snap.ram_available_mb == pytest.approx(5263832 / 1024)
    assert snap.ram_used_pct == pytest.approx(100 * (7620188 - 5263832) / 7620188)
    assert snap.swap_total_mb == pytest.approx(3810076 / 1024) and snap.swap_used_mb == 0
    # NvMapMemUsed: GPU memory on a Jetson is shared system RAM
    assert snap.gpu_mem_used_mb == pytest.approx(412340 / 1024)
    assert snap.gpu_mem_shared is True and snap.gpu_mem_total_mb == snap.ram_total_mb


def test_orin_hardware_id_is_the_device_tree_model():
    reader = SysfsReader(str(SYSFS / "orin_nano_jp6"))
    assert hardware_id(reader, "ignored GPU name") == \
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"


def test_ga10b_devfreq_name_and_unknown_power_mode(tmp_path):
    root = copy_tree("orin_nano_jp6", tmp_path)
    (root / "sys/class/devfreq/17000000.gpu").rename(root / "sys/class/devfreq/17000000.ga10b")
    write(root, "var/lib/nvpmodel/status", "pmode:0009 fmode:quiet")
    snap = read(root)
    assert snap.gpu_freq.name == "17000000.ga10b" and snap.gpu_freq.cur_hz == 306e6
    assert snap.power_mode == "mode 9"


def test_x86_laptop():
    snap = read(SYSFS / "x86_laptop")
    names = [z.name for z in snap.zones]
    assert names[:2] == ["acpitz", "INT3400 Thermal"] and "x86_pkg_temp" in names
    assert snap.zone("iwlwifi_1").temp_c is None            # radio down: no reading
    assert snap.zone("x86_pkg_temp").passive_c is None      # unset (0) trips are ignored
    assert snap.zone("acpitz").passive_c == 95.0 and snap.zone("acpitz").critical_c == 128.0
    assert snap.hottest.name == "x86_pkg_temp" and snap.hottest.temp_c == 52.0
    assert snap.tightest.name == "B0D4" and snap.tightest.margin_c == pytest.approx(98.0 - 51.05)
    assert {c.name for c in snap.cooling} == {"Processor", "intel_powerclamp", "TCC Offset", "iwlwifi"}
    assert snap.oc_events == {} and snap.gpu_freq is None and snap.power_rails_w == {}
    assert snap.fan_rpm == 2450 and snap.fan_pct is None
    assert len(snap.cpu_freq) == 4 and snap.cpu_freq[0].hw_max_khz == 4600000
    assert snap.ram_total_mb == pytest.approx(16203456 / 1024)
    assert snap.swap_used_mb == pytest.approx((2097148 - 1835004) / 1024)
    assert snap.gpu_mem_used_mb is None and snap.gpu_mem_shared is None
    assert snap.power_mode is None
    assert hardware_id(SysfsReader(str(SYSFS / "x86_laptop"))) == "thinkpad-x1"
    assert hardware_id(SysfsReader(str(SYSFS / "x86_laptop")), "NVIDIA RTX A2000") == "NVIDIA RTX A2000"


def test_bare_host_has_every_field_empty():
    snap = read(SYSFS / "bare")
    assert snap.zones == [] and snap.cooling == [] and snap.cpu_freq == []
    assert snap.hottest is None and snap.tightest is None
    assert snap.ram_total_mb is None and snap.ram_used_pct is None and snap.swap_total_mb is None
    assert snap.gpu_freq is None and snap.power_total_w is None and snap.fan_pct is None
    assert snap.power_mode is None and snap.oc_events == {}


def test_sysfs_probe_on_the_bare_host_reports_nothing_and_is_not_degraded():
    probe = SystemProbe(DiagnosticsConfig(backend="sysfs", sysfs_root=str(SYSFS / "bare")), 85.0)
    snap = probe.read()
    assert probe.backend == "sysfs" and not probe.degraded
    assert snap.throttle.throttled is False and snap.throttle.reasons == []
    assert probe.hardware_id  # the host name when nothing else is known


def test_unreadable_values_are_skipped(tmp_path):
    root = copy_tree("orin_nano_jp6", tmp_path)
    write(root, "sys/class/thermal/thermal_zone0/temp", "garbage")
    write(root, "sys/class/hwmon/hwmon3/oc2_event_cnt", "")
    (root / "proc/meminfo").write_text("MemTotal: lots kB\nSwapTotal: 0 kB\n")
    snap = read(root)
    assert snap.zone("cpu-thermal").temp_c is None
    assert "oc2_event_cnt" not in snap.oc_events
    assert snap.ram_total_mb is None and snap.swap_total_mb == 0
