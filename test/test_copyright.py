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

"""ament_copyright over the package's source files: a copyright notice and the Apache-2.0 header in each.

The standard ament_python linter test; it runs where ament_copyright is installed (``colcon test`` on a
robot: a test_depend in package.xml; scripts/setup.sh installs it from the ROS 2 tooling wheels) and is
skipped elsewhere. ament_copyright reads only C/C++, CMake and Python files, so the shell scripts are
checked with its parser by a second test. In a git checkout the LICENSE file is checked to be Apache-2.0's.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# setup.py is named on its own: ament_copyright skips a setup.py beside package.xml when it walks a folder.
PATHS = ["sage_irp_ros", "launch", "test", "bench", "setup.py", "LICENSE"]
SHELL_SCRIPTS = [".ci/run", *sorted(str(p.relative_to(ROOT))
                                    for folder in ("scripts", "bench") for p in (ROOT / folder).rglob("*.sh"))]
REASON = "ament_copyright is not installed (a ROS test_depend)"


@pytest.mark.copyright
@pytest.mark.linter
def test_copyright():
    main = pytest.importorskip("ament_copyright.main", reason=REASON)
    rc = main.main(argv=[str(ROOT / p) for p in PATHS if (ROOT / p).exists()])
    assert rc == 0, "Found errors"


@pytest.mark.copyright
@pytest.mark.linter
def test_copyright_shell_scripts():
    parser = pytest.importorskip("ament_copyright.parser", reason=REASON)
    missing = []
    for name in SHELL_SCRIPTS:
        if not (ROOT / name).exists():
            continue
        descriptor = parser.parse_file(str(ROOT / name))
        if not descriptor.copyrights or descriptor.license_identifier != "apache2":
            missing.append(f"{name}: copyright={[str(c) for c in descriptor.copyrights]}, "
                           f"license={descriptor.license_identifier}")
    assert not missing, "Shell scripts without a copyright notice and Apache-2.0 header:\n" + "\n".join(missing)
