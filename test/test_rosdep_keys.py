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

"""Every package.xml dependency resolves with rosdep on Humble, Jazzy and Kilted, checked offline.

`rosdep install --from-paths src --ignore-src -y` fails for the whole workspace when one key resolves to
nothing, so each ``*depend`` must be a ROS package released in every supported distro, or a rosdep key
whose Ubuntu rule gives packages on that distro's Ubuntu release. The data is rosdistro's own, extracted
to ``shared/rosdep/rosdistro-keys.json`` (commit and date inside); without that file the test is skipped.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UBUNTU = {"humble": "jammy", "jazzy": "noble", "kilted": "noble"}  # REP 2000 platform of each distro
OPTIONAL = {"python3-peft-pip", "python3-safetensors-pip", "python3-gguf-pip", "python3-jetson-stats-pip",
            "python-jetson-stats-pip", "python3-pynvml", "py_trees", "python3-rich", "python3-matplotlib",
            "diagnostic_aggregator"}


def _keys_file() -> Path | None:
    candidates = [os.environ.get("SAGE_ROSDISTRO_KEYS", ""), ROOT.parent / "shared" / "rosdep" / "rosdistro-keys.json",
                  ROOT / "shared" / "rosdep" / "rosdistro-keys.json"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def rosdistro() -> dict:
    path = _keys_file()
    if path is None:
        pytest.skip("no rosdistro-keys.json (shared/rosdep/, or SAGE_ROSDISTRO_KEYS): rosdep keys not checked")
    return json.loads(path.read_text())


def _dependencies() -> list[tuple[str, str]]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return [(e.tag, e.text.strip()) for e in root if e.tag.endswith("depend")]


def _ubuntu_packages(rule, codename: str):
    """What the ubuntu rule of a rosdep key installs on ``codename`` (None: nothing, the key fails)."""
    if isinstance(rule, list):
        return rule or None
    if not isinstance(rule, dict):
        return None
    if "pip" in rule or "apt" in rule:
        return rule
    if codename in rule:
        return _ubuntu_packages(rule[codename], codename)
    return _ubuntu_packages(rule.get("*"), codename)


def resolves(key: str, distro: str, data: dict) -> bool:
    if key in data["ros_packages"][distro]:
        return True
    entry = data["rosdep_keys"].get(key)
    return entry is not None and _ubuntu_packages(entry.get("ubuntu"), UBUNTU[distro]) is not None


def test_the_resolver_reads_rosdistro_as_rosdep_does(rosdistro):
    assert resolves("python3-torch", "humble", rosdistro) and resolves("rclpy", "kilted", rosdistro)
    assert resolves("python-jetson-stats-pip", "jazzy", rosdistro)
    for missing in ("python3-peft-pip", "python3-jetson-stats-pip", "no_such_package"):
        assert not resolves(missing, "humble", rosdistro)


@pytest.mark.parametrize("distro", sorted(UBUNTU))
def test_every_package_xml_dependency_resolves(rosdistro, distro):
    unresolved = [(tag, key) for tag, key in _dependencies() if not resolves(key, distro, rosdistro)]
    assert not unresolved, f"{distro}: rosdep cannot resolve {unresolved}"


def test_direct_ros_imports_and_no_optional_hard_dependencies():
    deps = {key for _, key in _dependencies()}
    assert {"rclpy", "rcl_interfaces", "ament_index_python", "std_msgs", "std_srvs", "diagnostic_msgs",
            "lifecycle_msgs", "launch", "launch_ros", "python3-torch", "python3-transformers-pip"} <= deps
    assert not deps & OPTIONAL, "optional features must not be hard dependencies (README lists them)"
    assert ET.parse(ROOT / "package.xml").getroot().attrib["format"] == "3"
