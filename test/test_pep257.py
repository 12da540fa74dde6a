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

"""ament_pep257 over the package's Python files.

The standard ament_python linter test, with the package's docstring convention added to ament's: the
summary starts on the first line (PEP 257's own example; ament asks for the second, D213) and may be a
descriptive phrase that wraps over several lines (D205, D209, D400, D401, D415), docstrings may quote
backslashes and start with a lower-case identifier (D301, D402, D403). Runs where ament_pep257 is
installed (``colcon test`` on a robot) and is skipped elsewhere.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["sage_irp_ros", "launch", "test", "setup.py"]
PACKAGE_CONVENTION = ["D205", "D209", "D213", "D301", "D400", "D401", "D402", "D403", "D415"]


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip("ament_pep257.main", reason="ament_pep257 is not installed (a ROS test_depend)")
    rc = main.main(argv=["--add-ignore", *PACKAGE_CONVENTION, "--",
                         *(str(ROOT / p) for p in PATHS if (ROOT / p).exists())])
    assert rc == 0, "Found code style errors / warnings"
