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

"""ament_flake8 over the package's Python files, with setup.cfg's [flake8] (line length 120).

The standard ament_python linter test; it runs where ament_flake8 is installed (``colcon test`` on a
robot: a test_depend in package.xml) and is skipped elsewhere.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["sage_irp_ros", "launch", "test", "bench", "setup.py"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    main = pytest.importorskip("ament_flake8.main", reason="ament_flake8 is not installed (a ROS test_depend)")
    rc, errors = main.main_with_errors(argv=["--config", str(ROOT / "setup.cfg"),
                                             *(str(ROOT / p) for p in PATHS if (ROOT / p).exists())])
    assert rc == 0, f"Found {len(errors)} code style errors / warnings:\n" + "\n".join(errors)
