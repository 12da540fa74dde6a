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

"""docs/architecture.md's map is the code's, path by path; the core imports no ROS; no module is too long."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sage_irp_ros"
ROS_FOLDERS = ("ros", "tools")  # the only places allowed to import rclpy
MAX_LINES = 400


def _modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def _mapped() -> set[str]:
    """The module paths the map draws: a ``name/`` line opens a folder at its indent, ``name.py`` is a module."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```")[1]
    folders: list[str] = []
    paths = set()
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match or match.group(2) == "sage_irp_ros/":
            continue
        depth = len(match.group(1)) // 2 - 1
        token = match.group(2)
        if token.endswith("/"):
            folders[depth:] = [token.rstrip("/")]
        elif token.endswith(".py"):
            paths.add("/".join([*folders[:depth], token]))
    return paths


def test_every_module_is_on_the_map_in_its_folder_and_nothing_else():
    modules, mapped = _modules(), _mapped()
    assert not sorted(modules - mapped), f"docs/architecture.md does not draw: {sorted(modules - mapped)}"
    stale = sorted(mapped - modules)
    assert not stale, f"docs/architecture.md draws modules that do not exist: {stale}"


def test_no_module_is_over_the_length_limit():
    long = {m: n for m in _modules() if (n := len((PACKAGE / m).read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_core_imports_without_ros():
    """Every module outside ros/ and tools/ imports with rclpy and the ROS message packages unavailable."""
    pytest.importorskip("torch", reason="the core needs torch; the torch-free install checks its probes apart")
    core = sorted("sage_irp_ros." + m[:-3].replace("/", ".") for m in _modules() if m.split("/")[0] not in ROS_FOLDERS)
    code = ("import sys\n"
            "for name in ('rclpy', 'std_msgs', 'std_srvs', 'diagnostic_msgs', 'lifecycle_msgs', 'launch', "
            "'launch_ros', 'py_trees', 'py_trees_ros'):\n"
            "    sys.modules[name] = None\n"  # `import rclpy` now raises ImportError
            "import importlib\n"
            f"for module in {core!r}:\n"
            "    importlib.import_module(module)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(core) > 40  # the check covers the core, not an empty list
