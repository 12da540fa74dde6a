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

"""bench/README.md names every benchmark file, every script's command and every stored result (no model).

A script, data file or stored result the index does not name is one nobody can trace to a command or to
the page that cites it. Names are written relative to bench/ (``quality/choices.py``) or to bench/results/
(``threads2/llama_cpp.json``), shell-style braces allowed (``choices_{tune,heldout}.json``); globs are not,
so a new file always needs its own entry. Also checks what ``bench.record`` stores for a new run.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root holds bench/

from bench import record  # noqa: E402

pytestmark = pytest.mark.unit

BENCH = REPO / "bench"
RESULTS = BENCH / "results"
INDEX = BENCH / "README.md"
BRACES = re.compile(r"([^\s`|(),]*)\{([^{}\s]*,[^{}\s]*)\}([^\s`|(),]*)")


def expand_braces(text: str) -> str:
    """``a_{x,y}.json`` -> ``a_x.json a_y.json`` (innermost first, repeated until none is left)."""
    while True:
        new = BRACES.sub(lambda m: " ".join(f"{m[1]}{part}{m[3]}" for part in m[2].split(",")), text)
        if new == text:
            return text
        text = new


def index_text() -> str:
    return expand_braces(INDEX.read_text().replace("bench/results/", "").replace("bench/", ""))


def named(name: str, text: str) -> bool:
    """``name`` occurs as a whole path: not as the tail of a longer one (``quality_int4/x`` names
    ``quality_int4/x``, not ``x``)."""
    return re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w/-]|\.\w)", text) is not None


def bench_files() -> list[str]:
    return sorted(str(p.relative_to(BENCH)) for p in BENCH.rglob("*")
                  if p.is_file() and RESULTS not in p.parents and p.name not in ("__init__.py", "README.md")
                  and "__pycache__" not in p.parts)


def result_files() -> list[str]:
    return sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*")
                  if p.is_file() and not p.name.endswith(".tmp"))


def scripts() -> list[str]:
    """``bench.<family>.<name>`` of every module with a command line, ``bench/...sh`` of every shell script."""
    found = []
    for path in sorted(BENCH.rglob("*.py")):
        if RESULTS not in path.parents and 'if __name__ == "__main__"' in path.read_text():
            found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found + [f"bench/{p.relative_to(BENCH)}" for p in sorted(BENCH.rglob("*.sh"))]


def test_helpers_tell_named_from_unnamed():
    text = expand_braces("`quality_int4/run_quality.{json,md}`, `choices_{tune,heldout}.json` and `a.json.gz`")
    assert named("quality_int4/run_quality.json", text) and named("quality_int4/run_quality.md", text)
    assert named("choices_heldout.json", text) and named("a.json.gz", text)
    assert not named("run_quality.json", text)  # only as the tail of another path
    assert not named("a.json", text)  # only as the head of a longer name
    assert not named("choices_.json", text)


def test_every_bench_file_is_named():
    text = index_text()
    missing = [name for name in bench_files() if not named(name, text)]
    assert not missing, f"bench/README.md does not name: {missing}"


def test_every_script_command_is_in_the_index():
    text = INDEX.read_text()
    found = scripts()
    assert "bench.speed.run_bench" in found and "bench/speed/gpu_check.sh" in found
    missing = [command for command in found if not named(command, text)]
    assert not missing, f"bench/README.md gives no command for: {missing}"


def test_every_stored_result_is_named():
    text = index_text()
    stored = result_files()
    assert "run_bench.json" in stored
    missing = [name for name in stored if not named(name, text)]
    assert not missing, f"stored under bench/results/ but not named in bench/README.md: {missing}"


def test_cpu_flags_summary():
    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile hypervisor xyz\n"
    assert record.cpu_flags(x86) == ["sse4_2", "avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16",
                                     "hypervisor"]
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm\n"
    assert record.cpu_flags(arm) == ["asimd", "asimddp", "sve", "i8mm"]
    assert record.cpu_flags("processor\t: 0\n") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_names_the_commit_and_whether_the_checkout_differs():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    state = record.git_state()
    assert state["commit"] == head.stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    assert state["dirty"] is bool(status)
