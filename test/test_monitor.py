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

"""``sage_irp monitor`` against the real IRP and diagnostics nodes, its rendering, and ``sage_irp plot``.

The nodes run in their own processes on a random ROS_DOMAIN_ID (ros_env) with localhost discovery; the
monitor runs as ``python -m sage_irp_ros.tools.cli monitor --once`` in a third process, which returns once
it has the status (and a /diagnostics message) or its timeout passes.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rich")

from rich.console import Console  # noqa: E402

from ros_harness import RunningNode  # noqa: E402
from sage_irp_ros.salience.memory_store import Exchange, MemoryStore  # noqa: E402
from sage_irp_ros.tools.monitor import MonitorState, render  # noqa: E402
from sage_irp_ros.results import Result, ResultError, Timing  # noqa: E402
from sage_irp_ros.salience.snarc import SnarcScores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYSFS_ORIN = REPO / "test" / "data" / "sysfs" / "orin_nano_jp6"
MODEL_NAME = "tiny-monitor-llm"


def test_monitor_once_shows_the_running_node(tiny_model_dir, ros_env, tmp_path):
    model = tmp_path / MODEL_NAME  # the status names the model after its folder
    model.symlink_to(tiny_model_dir, target_is_directory=True)
    running = RunningNode(tmp_path, env=ros_env, params={"model.path": str(model),
                                                         "memory.db_path": str(tmp_path / "memory.db")})
    diag_log = open(tmp_path / "diag.log", "w", encoding="utf-8")
    diag = subprocess.Popen(
        [sys.executable, "-m", "sage_irp_ros.ros.diagnostics_node", "--ros-args", "-r",
         f"__ns:={running.proc.namespace}", "-p", "diagnostics.backend:=sysfs",
         "-p", f"diagnostics.sysfs_root:={SYSFS_ORIN}"],
        env=ros_env, stdout=diag_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        result = running.tester.ask("What is 2+2?", timeout=90.0)
        assert result["ok"], result
        running.tester.wait_status(lambda s: s.get("served", 0) >= 1, 30.0, "served >= 1")
        out = subprocess.run(
            [sys.executable, "-m", "sage_irp_ros.tools.cli", "monitor", "--once", "--timeout", "60",
             "--namespace", running.proc.namespace],
            env=ros_env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert MODEL_NAME in text and "active" in text, text
        assert "lifecycle" in text and "latency p50 / p95" in text and "throttled" in text
        assert "served / errors" in text and "1 / 0" in text, text
        # The diagnostics node's statuses, by name with their level words.
        assert "sage_diagnostics: Thermal" in text, (text, (tmp_path / "diag.log").read_text())
        assert "sage_diagnostics: IRP inference" in text
        assert any(word in text for word in ("OK", "WARN", "ERROR", "STALE"))
    finally:
        diag.terminate()
        try:
            diag.wait(20)
        except subprocess.TimeoutExpired:
            diag.kill()
        diag_log.close()
        running.close()


def test_monitor_once_without_a_node_exits_0_after_the_timeout(ros_env):
    out = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "monitor", "--once", "--timeout", "1",
                          "--namespace", "/nobody_here"], env=ros_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    assert "waiting for /nobody_here/status" in out.stdout
    assert "no status on /nobody_here/status within 1 s" in out.stderr


def _frame(state: MonitorState) -> Console:
    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor",
                      file=io.StringIO())
    console.print(render(state))
    return console


def test_render_colours_diagnostics_by_level_and_lists_answers():
    state = MonitorState("sage")
    state.on_status({"node": "sage_irp", "namespace": "/sage", "lifecycle": "active", "state": "ready",
                     "model": "SmolLM2-135M-Instruct", "device": "cpu", "precision": "fp32", "queue_depth": 0,
                     "queue_size": 8, "served": 2, "errors": 1, "consecutive_errors": 0, "rss_mb": 700.0,
                     "throttled": False, "latency": {"p50_s": 1.5, "p95_s": 2.5, "count": 2},
                     "last": {"total_s": 2.5, "tokens_per_s": 40.0}})
    state.on_result(Result(id="q1", ok=True, answer="Four.\nReally.", timing=Timing(total_s=1.5),
                           snarc=SnarcScores(0.1, 0.2, 0.3, 0.4, 0.5, total=0.42, salient=True)))
    state.on_result(Result(id="q2", ok=False, error=ResultError("queue_full", "x"), timing=Timing(total_s=0.0)))
    state.on_diagnostics([("sage_diagnostics: Memory", 0, "fine"), ("sage_diagnostics: Thermal", 1, "hot"),
                          ("sage_diagnostics: IRP inference", 2, "failing"), ("sage_diagnostics: Power", 3, "old")])
    state.on_throttled(True)
    console = _frame(state)
    text = console.export_text(clear=False)
    for expected in ("SmolLM2-135M-Instruct", "active", "1.50 s / 2.50 s", "0 / 8",
                     "2 / 1", "700 MB", "q1", "0.420", "Four. Really.", "error queue_full", "yes"):
        assert expected in text, (expected, text)
    html = console.export_html(inline_styles=True)
    colours = {"OK": "#008000", "WARN": "#808000", "ERROR": "#800000", "STALE": "#808080"}
    for word, colour in colours.items():  # the level word carries its level's colour
        assert re.search(f'<span style="color: {colour}[^>]*>{word}', html), (word, html)


def test_render_before_any_message():
    text = _frame(MonitorState("robot1/sage")).export_text()
    assert "waiting for robot1/sage/status" in text
    assert "no /diagnostics received" in text and "no results seen yet" in text


def _exchange(i: int, stamp: float, salient: bool) -> Exchange:
    total = 0.6 if salient else 0.1
    return Exchange(stamp=stamp, conversation="c", question_id=f"q{i}", question=f"question {i}",
                    answer=f"answer {i}", scores=SnarcScores(0.1, 0.2, 0.3, 0.4, 0.5, total, salient),
                    irp={"candidates": 3}, timing={"total_s": 0.5 + 0.1 * i}, model="tiny")


def test_plot_writes_a_png_from_a_real_store(tmp_path):
    pytest.importorskip("matplotlib")
    db = tmp_path / "memory.db"
    with MemoryStore(db) as store:
        for i in range(12):
            assert store.record(_exchange(i, 1_700_000_000.0 + 3 * i, salient=i % 3 == 0))
    out = tmp_path / "session.png"
    run = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "plot", "--db", str(db), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "plotted 12 exchanges" in run.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_of_an_empty_store_fails_clearly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "plot", "--db", str(tmp_path / "none.db"),
                          "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no exchanges" in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_reliability_of_labelled_answers(tmp_path):
    pytest.importorskip("matplotlib")
    from sage_irp_ros.irp.confidence import expected_calibration_error, reliability_bins

    lines = [json.dumps({"confidence": c / 10, "right": i % 10 < c}) for c in range(1, 10) for i in range(10)]
    (tmp_path / "labelled.jsonl").write_text("\n".join([*lines, "not json", '{"confidence": 0.5}']) + "\n")
    out = tmp_path / "reliability.png"
    run = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "plot", "--reliability",
                          str(tmp_path / "labelled.jsonl"), "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "reliability of 90 answers" in run.stderr and out.read_bytes().startswith(b"\x89PNG")
    bins = reliability_bins([0.05, 0.15, 0.15], [True, False, True])
    assert [(b["n"], b["accuracy"]) for b in bins] == [(1, 1.0), (2, 0.5)]
    assert expected_calibration_error([0.15, 0.15], [True, False]) == pytest.approx(0.35)
