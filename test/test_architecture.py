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

"""docs/architecture.md names every module of the package, and only modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sage_irp_ros"


def _modules() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def _named(text: str) -> set[str]:
    """Module names on the page (``core.py``, ``examples/ask_tree.py``); tests are not modules."""
    names = re.findall(r"\b(?:[a-z0-9_]+/)?[a-z0-9_]+\.py\b", text)
    return {n for n in names if not n.split("/")[-1].startswith("test_")}


def test_every_module_is_on_the_map_and_nothing_else():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules, named = _modules(), _named(text)
    basenames = {n.split("/")[-1] for n in named}
    missing = sorted(m for m in modules if m not in named and m.split("/")[-1] not in basenames)
    assert not missing, f"docs/architecture.md does not name: {missing}"
    module_basenames = {m.split("/")[-1] for m in modules}
    stale = sorted(n for n in named if n not in modules and n.split("/")[-1] not in module_basenames)
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
