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

"""The IRP node as a managed stack expects it — over real DDS, the node in its own process.

Parameters really apply (or are refused with a reason), ``throttled`` from any publisher QoS with a
staleness timeout, configure failures reported and cleaned up, deactivate waiting for the running
question, refusals kept apart from inference failures, the core's Python logging on /rosout, and
storage retention with the DB size in the status.
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rcl_interfaces.msg import Log
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool

from ros_harness import START_TIMEOUT, RunningNode

# /rosout's writer is reliable, transient local, depth 1000: a latched reader also gets what was logged
# before it matched.
ROSOUT = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _ok(result):
    assert result["ok"], result["error"]
    return result


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory) -> Path:
    """A tiny model with a long context, so generation can run for seconds (max_tokens in the 1000s)."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("slow") / "model", max_positions=8192)


class Rosout:
    """Collects /rosout on a tester's node."""

    def __init__(self, tester):
        self.tester = tester
        self.messages: list[Log] = []
        tester.node.create_subscription(Log, "/rosout", self._on_log, ROSOUT)

    def _on_log(self, msg: Log) -> None:
        with self.tester._cond:
            self.messages.append(msg)
            self.tester._cond.notify_all()

    def of(self, logger: str) -> list[Log]:
        with self.tester._cond:
            return [m for m in self.messages if m.name == logger]

    def wait(self, logger: str, level: int, fragment: str, timeout: float = 30.0) -> Log:
        def found() -> bool:
            return any(m.name == logger and m.level == level and fragment in m.msg for m in self.messages)
        self.tester.wait_for(found, timeout, f"{fragment!r} at level {level} from {logger} on /rosout")
        return next(m for m in self.of(logger) if m.level == level and fragment in m.msg)


def _logger_name(node: RunningNode) -> str:
    return f"{node.proc.namespace.strip('/')}.sage_irp"


def _stored(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT question_id FROM exchanges ORDER BY id")]


def _list_parameters(tester) -> list[str]:
    client = AsyncParameterClient(tester.node, tester.target)
    assert client.wait_for_services(timeout_sec=10)
    future = client.list_parameters()
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(10)
    return list(future.result().result.names)


# -- parameters -------------------------------------------------------------------------------------
def test_parameters_apply_live_or_are_refused_with_a_reason(slow_model_dir, tmp_path, ros_env):
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(slow_model_dir), "memory.db_path": "none", "llm_irp.max_tokens": 1500,
        "llm_irp.deadline_s": 3.0, "node.shutdown_timeout_s": 1.0,
        # one question at a time: with more, the waiting question may join the running one's decode
        # between two steps and leave the queue before the third arrives
        "node.batch_size": 1})
    t = node.tester
    try:
        names = set(_list_parameters(t))
        assert "node.queue_size" in names and "model.path" in names
        assert not [n for n in names if n.startswith("diagnostics.")]  # the diagnostics node's keys
        assert "diagnostics.throttle_threshold_c" not in names

        # read-only and configure-time keys are refused with a reason while active
        (res,) = t.set_parameters({"node.autostart": False})
        assert not res.successful and "read-only" in res.reason
        (res,) = t.set_parameters({"model.path": str(tmp_path / "other")})
        assert not res.successful and "model.path" in res.reason and "configure" in res.reason
        (res,) = t.set_parameters({"model.device": "cpu"})  # the value it has: nothing to refuse
        assert res.successful, res.reason

        # history.depth: the history bound changes at once
        (res,) = t.set_parameters({"history.depth": 1})
        assert res.successful, res.reason
        used = [_ok(t.ask(f"Turn {i}?", conversation="c", candidates=1, deadline_s=0.5))["irp"]["history_used"]
                for i in range(3)]
        assert used == [0, 1, 1]

        # node.status_period_s: the heartbeat really runs at the new period (ratio to the old one)
        def intervals(since: int, count: int) -> list[float]:
            t.wait_for(lambda: len(t.statuses) >= since + count + 1, 60, f"{count} statuses")
            stamps = [s["stamp"] for s in t.statuses[since:since + count + 1]]
            return [b - a for a, b in zip(stamps, stamps[1:])]
        before = statistics.median(intervals(t.status_mark(), 6))  # node.status_period_s 0.5 (harness)
        (res,) = t.set_parameters({"node.status_period_s": 0.05})
        assert res.successful, res.reason
        status = t.wait_status(lambda s: s["status_period_s"] == pytest.approx(0.05), 10)
        assert status["status_period_s"] == pytest.approx(0.05)
        after = statistics.median(intervals(t.status_mark(), 20))
        print(f"\nstatus interval: median {before:.3f} s at 0.5 s, {after:.3f} s at 0.05 s")
        assert after < before / 2

        # node.queue_size: the bound itself changes (queue_full says so, with the true number)
        results = t.set_parameters({"node.queue_size": 1, "node.status_period_s": 0.5})
        assert all(res.successful for res in results), [res.reason for res in results]
        t.wait_status(lambda s: s["queue_size"] == 1, 10)
        mark = t.status_mark()
        running = t.send("Tell me a very long story.", qid="q-running")
        t.wait_status(lambda s: s["state"] == "busy", 30, "the long question running", mark)
        waiting = t.send("What is 2+2?", qid="q-waiting")
        refused = t.send("What is 3+3?", qid="q-refused")
        results = t.wait_results([running, waiting, refused], 60)
        assert results[refused]["error"]["code"] == "queue_full", results[refused]
        assert "node.queue_size = 1" in results[refused]["error"]["message"]
        assert results[waiting]["ok"] or results[waiting]["error"]["code"] == "deadline"
    finally:
        rc = node.close()
    assert rc == 0, node.proc.log()[-3000:]


def test_configure_failure_in_warm_up_is_reported_released_and_retried(tiny_model_dir, tmp_path, ros_env):
    from tiny_models import build_tiny_model

    short = build_tiny_model(tmp_path / "short", max_positions=8)  # loads; warm-up's prompt does not fit
    node = RunningNode(tmp_path, env=ros_env, wait=False, params={
        "model.path": str(short), "memory.db_path": "none"})
    t = node.tester
    try:
        status = t.wait_status(lambda s: s["state"] == "error", START_TIMEOUT, "the configure error")
        assert status["lifecycle"] == "unconfigured" and status["model"] is None
        assert status["error"] and "context window" in status["error"], status
        assert t.get_state() == "unconfigured"
        node.proc.wait_log("configure failed: SageError")
        # configure-time keys may be set while unconfigured; the next configure uses them
        (res,) = t.set_parameters({"model.path": str(tiny_model_dir)})
        assert res.successful, res.reason
        mark = t.status_mark()
        future = t.change_state_async("configure")
        # the status topic keeps the last message only: a fast configure may replace "loading" by "inactive"
        t.wait_status(lambda s: s["state"] == "loading" or s["lifecycle"] == "inactive", 30, "configure running",
                      mark)
        # set while configuring: a live key is applied to the engine configure installs (the warm-up
        # window itself is hit deterministically in test_core.py); a configure-time key is refused
        (res,) = t.set_parameters({"llm_irp.candidates": 1})
        assert res.successful, res.reason
        (res,) = t.set_parameters({"model.path": str(short)})
        assert not res.successful and "configure" in res.reason  # configuring, then inactive
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(60) and future.result().success
        assert t.change_state("activate")
        status = t.wait_status(lambda s: s["lifecycle"] == "active", 10)
        assert status["error"] is None and status["model"] == "model"
        assert _ok(t.ask("What is 2+2?"))["irp"]["candidates"] == 1
    finally:
        rc = node.close()
    assert rc == 0


# -- lifecycle races ----------------------------------------------------------------------------------
def test_deactivate_waits_for_the_running_question_before_cleanup_closes_the_store(
        slow_model_dir, tmp_path, ros_env):
    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(slow_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0,
        "llm_irp.max_tokens": 1500, "node.shutdown_timeout_s": 60.0})
    t = node.tester
    try:
        _ok(t.ask("Stored first?", qid="dw-0", deadline_s=0.3))
        mark = t.status_mark()
        qid = t.send("Tell me a very long story.", qid="dw-1", deadline_s=2.0)
        t.wait_status(lambda s: s["state"] == "busy", 30, "the long question running", mark)
        assert t.change_state("deactivate")  # returns once the running question is done
        assert t.change_state("cleanup")     # releases the model and closes the store right away
        result = t.wait_results([qid], 30)[qid]
        assert result["ok"], result  # the partial best answer at its deadline: not inference_failed
        assert _stored(db) == ["dw-0", "dw-1"]  # stored before the store was closed
        wal = Path(f"{db}-wal")
        assert not wal.exists() or wal.stat().st_size == 0  # and the store is closed, not reopened
        status = t.wait_status(lambda s: s["lifecycle"] == "unconfigured" and s["model"] is None, 10)
        assert status["memory_store"]["path"] is None
    finally:
        rc = node.close()
    assert rc == 0, node.proc.log()[-3000:]


def test_answer_topics_are_lifecycle_publishers_status_and_result_are_not(tmp_path, ros_env):
    import logging

    import rclpy
    from rclpy.lifecycle import LifecyclePublisher

    from sage_irp_ros.ros.irp_node import IrpNode

    package = logging.getLogger("sage_irp_ros")  # the node routes it to rclpy: restore it afterwards
    saved = (list(package.handlers), package.propagate, package.level)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        node = IrpNode(context=ctx, namespace="/t_lifecycle_pubs", parameter_overrides=[
            rclpy.parameter.Parameter("node.autostart", value=False)])
        try:
            assert all(isinstance(p, LifecyclePublisher)
                       for p in (node.pub_answer, node.pub_salience, node.pub_snarc))
            assert not isinstance(node.pub_result, LifecyclePublisher)
            assert not isinstance(node.pub_status, LifecyclePublisher)
        finally:
            node.stop(timeout=1.0)
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
        package.handlers[:], package.propagate = saved[0], saved[1]
        package.setLevel(saved[2])


# -- throttling -----------------------------------------------------------------------------------------
def test_throttled_from_volatile_and_latched_publishers_goes_stale(tiny_plain_model_dir, tmp_path, ros_env):
    # the plain tiny model: its greedy row (all a throttled answer is) has text; the chat one's is blank
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_plain_model_dir), "memory.db_path": "none", "llm_irp.candidates": 3,
        "llm_irp.stopping": "off", "throttle.stale_timeout_s": 2.0})
    t = node.tester
    ns = node.proc.namespace
    try:
        assert t.statuses[-1]["throttled_signal"] == "none" and not t.statuses[-1]["throttled"]
        # a volatile publisher (rclpy's default QoS, as a third-party thermal monitor uses)
        volatile = t.node.create_publisher(Bool, f"{ns}/throttled", 10)
        timer = t.node.create_timer(0.2, lambda: volatile.publish(Bool(data=True)))
        t.wait_status(lambda s: s["throttled"] and s["throttled_signal"] == "fresh", 30, "throttled")
        assert len(_ok(t.ask("What is 2+2?"))["irp"]["energies"]) == 1  # the greedy row alone
        # the publisher goes quiet: after throttle.stale_timeout_s the value is stale -> not throttled
        t.node.destroy_timer(timer)
        mark = t.status_mark()
        status = t.wait_status(lambda s: s["throttled_signal"] == "stale", 30, "a stale throttled", mark)
        assert not status["throttled"] and status["throttled_age_s"] > 2.0
        assert _ok(t.ask("What is 2+2?"))["irp"]["candidates"] == 3
        node.proc.wait_log("treating the platform as not throttled")

        # a latched (transient local) publisher, as the diagnostics node's: heard too, and goes stale
        latched = t.node.create_publisher(Bool, f"{ns}/throttled", LATCHED)
        mark = t.status_mark()
        latched_timer = t.node.create_timer(0.2, lambda: latched.publish(Bool(data=True)))
        t.wait_status(lambda s: s["throttled"] and s["throttled_signal"] == "fresh", 30, "throttled", mark)
        t.node.destroy_timer(latched_timer)
        mark = t.status_mark()
        t.wait_status(lambda s: not s["throttled"] and s["throttled_signal"] == "stale", 30, "stale", mark)
    finally:
        rc = node.close()
    assert rc == 0


# -- refusals, logs -------------------------------------------------------------------------------------
def test_refusals_are_not_inference_failures_and_log_one_throttled_warning(tiny_model_dir, tmp_path, ros_env):
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_model_dir), "memory.db_path": "none"})
    t = node.tester
    rosout = Rosout(t)
    logger = _logger_name(node)
    try:
        answered = _ok(t.ask("What is 2+2?", qid="ref-ok"))
        before = t.wait_status(lambda s: s["served"] >= 1, 10)
        for i in range(3):
            assert t.exchange_raw(f'{{"id": "ref-bad-{i}", "question": ""}}')["error"]["code"] == "invalid_input"
        assert t.ask("x", qid="ref-late", deadline_s=1e-6)["error"]["code"] == "deadline"
        status = t.wait_status(lambda s: s["refused"] >= before["refused"] + 4, 10)
        assert (status["served"], status["errors"], status["consecutive_errors"]) == (
            before["served"], before["errors"], 0)
        assert status["last"]["total_s"] == answered["timing"]["total_s"]  # latency: answers only
        assert status["latency"]["count"] == before["latency"]["count"]
        # a marker after the refusals (another call site): /rosout from one writer arrives in order
        _ok(t.ask("What is 2+2?", qid="ref-marker", marker=1))
        rosout.wait(logger, Log.WARN, "question ref-marker: ignored unknown fields")
        refusal_lines = [m for m in rosout.of(logger) if "refused" in m.msg]
        assert refusal_lines and all(m.level == Log.WARN for m in refusal_lines)
        assert len(refusal_lines) < 4, [m.msg for m in refusal_lines]  # throttle_duration_sec
        assert not [m for m in rosout.of(logger) if m.level >= Log.ERROR]
    finally:
        node.close()


def test_core_logging_reaches_rosout_once_and_respects_the_log_level(boom_model_dir, tmp_path, ros_env):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    params = {"model.path": str(boom_model_dir), "memory.db_path": str(blocker / "memory.db"),
              "snarc.salience_threshold": 0.0}
    loud = RunningNode(tmp_path, env=ros_env, params=params, name="loud")
    quiet = RunningNode(tmp_path, env=ros_env, params=params, name="quiet", ros_args=["--log-level", "error"])
    rosout = Rosout(loud.tester)
    try:
        for node in (loud, quiet):
            _ok(node.tester.ask("What is 2+2?"))  # stored -> the store fails -> a Python WARNING
            assert node.tester.ask("What is <boom>?")["error"]["code"] == "inference_failed"
        store = rosout.wait(_logger_name(loud), Log.WARN, "cannot record exchange")
        assert str(blocker) in store.msg
        failed = rosout.wait(_logger_name(loud), Log.ERROR, "generation failed")
        assert "Traceback" in failed.msg and "IndexError" in failed.msg  # log.exception's traceback
        # --log-level error: the same ERROR arrives, the WARNING before it does not
        rosout.wait(_logger_name(quiet), Log.ERROR, "generation failed")
        assert not [m for m in rosout.of(_logger_name(quiet)) if "cannot record exchange" in m.msg]
        # one handler: the console (the node's stdout log) has the line once, in the ROS format
        lines = [line for line in loud.proc.log().splitlines() if "cannot record exchange" in line]
        assert len(lines) == 1 and lines[0].startswith("[WARN]"), lines
    finally:
        quiet.close()
        loud.close()


def test_config_errors_at_start_go_to_the_ros_logger(tmp_path, ros_env):
    proc = subprocess.run([sys.executable, "-m", "sage_irp_ros.ros.irp_node", "--ros-args", "-p",
                           "llm_irp.max_tokens:=0"], env=ros_env, capture_output=True, text=True,
                          timeout=START_TIMEOUT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "invalid parameters" in line)
    assert line.startswith("[ERROR]") and "[sage_irp]:" in line, proc.stderr
    assert "llm_irp.max_tokens" in proc.stderr and "Traceback" not in proc.stderr


# -- storage ------------------------------------------------------------------------------------------------
def test_retention_bounds_the_store_and_status_reports_its_size(tiny_model_dir, tmp_path, ros_env):
    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0,
        "memory.consolidation_interval": 2, "memory.max_rows": 3})
    t = node.tester
    try:
        ids = [_ok(t.ask(f"Question {i}?", qid=f"ret-{i}"))["id"] for i in range(6)]
        assert _stored(db) == ids[-3:]  # pruned at the consolidations (every 2nd exchange)
        status = t.wait_status(lambda s: (s["memory_store"].get("pruned") or 0) >= 3, 10)
        assert status["memory_store"]["size_mb"] > 0
        (res,) = t.set_parameters({"memory.max_rows": 1})  # live: the next consolidation applies it
        assert res.successful, res.reason
        more = [_ok(t.ask(f"More {i}?", qid=f"ret-more-{i}"))["id"] for i in range(2)]
        assert _stored(db) == more[-1:]
    finally:
        rc = node.close()
    assert rc == 0
