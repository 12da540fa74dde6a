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

"""What every benchmark script stores: one JSON result with its provenance, and the explicit docs refresh.

``run_info()`` describes a run: when it started, the command line, the machine (``bench.machine``: CPU
model, cores, RAM, GPU, torch and transformers versions, threads; plus here the architecture and the CPU's
vector / matrix extensions, ``cpu_flags``, since kernels and so figures differ between an AVX2-only CPU and
one with AVX-512 or AMX) and the git commit of the checkout with whether its tracked files differed from that
commit (``dirty``). A result without a commit, or with ``dirty: true``, cannot be traced to the code it
measured: run from a clean checkout. ``write_result(name, result)`` stores
``bench/results/<name>.json`` (or ``<out>/<name>.json``). A default run writes only there;
``update_docs`` rewrites a marked section of docs/performance.md and is called only behind a script's
``--update-docs`` flag.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "performance.md"


# Extensions that decide which kernels run (x86: AVX2 / AVX-512 / AMX; Arm: NEON dot product, SVE, bf16, int8
# matrix multiply), and ``hypervisor`` (a virtual machine). The summary keeps /proc/cpuinfo's spelling.
NOTABLE_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
                     "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve",
                     "sve2", "bf16", "i8mm", "hypervisor")


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The notable extensions of the first CPU in ``cpuinfo`` (default: /proc/cpuinfo), in
    :data:`NOTABLE_CPU_FLAGS` order; None where the file or its ``flags`` / ``Features`` line is missing."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in NOTABLE_CPU_FLAGS if flag in present]
    return None


def machine_info() -> dict[str, Any]:
    """``bench.machine.machine()`` with the architecture and :func:`cpu_flags` added (new keys only, so
    readers of older results keep working)."""
    info = machine()
    info.setdefault("arch", platform.machine())
    info.setdefault("cpu_flags", cpu_flags())
    return info


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None where git is not available)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def run_info(argv: list[str] | None = None, module: str | None = None) -> dict[str, Any]:
    """Provenance of a run: start time, command, machine (with CPU flags) and git state (commit, dirty)."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python", "-m", module, *args]) if module else " ".join(sys.argv)
    git = git_state()
    if git["commit"] is None or git["dirty"] is not False:
        print(f"note: this result will record git {git}: it cannot be traced to a commit's code; commit "
              "(or stash) first and run from a clean checkout", file=sys.stderr)
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command, "machine": machine_info(),
            "git": git}


def result_path(name: str, out: str | Path | None = None) -> Path:
    return Path(out or RESULTS) / f"{name}.json"


def write_result(name: str, result: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write ``result`` (which should hold a ``run`` entry from ``run_info``) to ``<out>/<name>.json``."""
    path = result_path(name, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def add_update_docs_flag(parser, section: str) -> None:
    """The one way a script may touch docs/performance.md: ``--update-docs`` rewrites its marked section."""
    parser.add_argument("--update-docs", action="store_true",
                        help=f"also rewrite the '{section}' section of docs/performance.md (between its "
                             f"'bench:{section}' markers) with this run's tables; without it a run writes "
                             "only its result files")


def markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def update_docs(section: str, text: str, docs: Path = DOCS) -> bool:
    """Replace the text between the ``section`` markers of docs/performance.md with ``text``."""
    begin, end = markers(section)
    if not docs.is_file():
        return False
    doc = docs.read_text()
    if begin not in doc or end not in doc:
        return False
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True


def main_by_half(name: str, doc: str, run, argv: list[str] | None = None) -> None:
    """The command line of a question-set benchmark run on one half: ``--half``, ``--out``, ``--threads``;
    ``run(half, threads)`` gives the result (its ``rows`` are stored, not printed)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--half", choices=("tune", "heldout", "both"), default="tune")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.half, args.threads)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    write_result(f"{name}_{args.half}", {"run": run_info(argv, f"bench.quality.{name}"), **result}, args.out)
