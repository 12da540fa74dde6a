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

"""Find the package's installed data files (config/, launch/) on every install path.

colcon and ``pip install .`` put them under ``<prefix>/share/sage_irp_ros``; an editable install or
a source checkout keeps them beside the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "sage_irp_ros"


def share_dir() -> Path:
    """The package's share directory (ament index first, then the Python prefix, then the checkout)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed through ament, or ament_index_python missing
        pass
    for candidate in (Path(sys.prefix) / "share" / PACKAGE, Path(__file__).resolve().parents[2]):
        if (candidate / "config").is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {PACKAGE} share directory (config/, launch/)")


def config_file(name: str = "edge.yaml") -> Path:
    return share_dir() / "config" / name
