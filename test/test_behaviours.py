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

"""py_trees behaviours against the real IRP node (tiny model) running in another process.

The node runs in its own process on a random ROS_DOMAIN_ID with localhost discovery and a unique
namespace (test/ros_harness.py); the behaviours live on the harness tester's node, in this test's own
rclpy Context, spun by the tester's executor. Trees are ticked at a fixed period until a status is
reached, with an overall timeout; nothing waits on a bare sleep.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

py_trees = pytest.importorskip("py_trees")

from py_trees.blackboard import Blackboard  # noqa: E402
from py_trees.common import Access, Status  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402

from ros_harness import LATCHED, RunningNode, ros_domain_env  # noqa: E402
from sage_irp_ros.ros.behaviours import AskSage, NotThrottled, SageReady, shared_client  # noqa: E402
from sage_irp_ros.ros.examples.ask_tree import FallbackLog, create_choice_tree, create_tree, tick_until  # noqa: E402

TIMEOUT = 90.0  # overall bound for one answer on a busy 2-core machine


@pytest.fixture(scope="module")
def running(tiny_model_dir, tmp_path_factory):
    """One IRP node process for the module (random domain, unique namespace)."""
    tmp = tmp_path_factory.mktemp("bt")
    node = RunningNode(tmp, env=ros_domain_env(), params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(tmp / "memory.db")})
    yield node
    node.close()


@pytest.fixture
def t(running):
    assert running.proc.proc.poll() is None, f"node died:\n{running.proc.log()[-3000:]}"
    Blackboard.clear()
    yield running.tester
    Blackboard.clear()


def tick(behaviour: py_trees.behaviour.Behaviour, until, timeout: float = TIMEOUT, hz: float = 10.0) -> Status:
    """Tick one behaviour at ``hz`` until ``until(status)`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        behaviour.tick_once()
        if until(behaviour.status) or time.monotonic() >= deadline:
            return behaviour.status
        time.sleep(1.0 / hz)  # tick period


def wait_until(condition, timeout: float, period: float = 0.05) -> None:
    """Re-check ``condition`` every ``period`` until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s"
        time.sleep(period)


def writer(*keys: str) -> py_trees.blackboard.Client:
    client = py_trees.blackboard.Client(name="test")
    for key in keys:
        client.register_key(key, access=Access.WRITE)
    return client


def test_example_tree_asks_and_logs_the_answer(t):
    said: list[str] = []
    tree = py_trees.trees.BehaviourTree(create_tree("What is 2+2?", namespace=t.namespace, timeout_s=TIMEOUT,
                                                    say=said.append, conversation="bt-example"))
    tree.setup(node=t.node)
    status = tick_until(tree, TIMEOUT)
    assert status == Status.SUCCESS, [(b.name, b.status, b.feedback_message) for b in tree.root.iterate()]
    answer = Blackboard.storage["/sage/answer"]
    result = Blackboard.storage["/sage/result"]
    assert isinstance(answer, str) and answer.strip()
    assert result.ok and result.answer == answer and result.conversation == "bt-example"
    assert Blackboard.storage["/sage/salience"] == result.salience and 0.0 <= result.salience <= 1.0
    assert any(line.startswith("answer (salience") and answer in line for line in said)
    assert len(t.results_for(result.id)) == 1  # one question published, one result


def test_ask_sage_alone_writes_its_keys(t):
    ask = AskSage(question="Hello there", namespace=t.namespace, timeout_s=TIMEOUT, answer_key="me/answer",
                  salience_key="me/salience", result_key="me/result")
    ask.setup(node=t.node)
    assert tick(ask, lambda s: s != Status.RUNNING) == Status.SUCCESS, ask.feedback_message
    assert Blackboard.storage["/me/answer"].strip()
    assert Blackboard.storage["/me/result"].id == ask.question_id
    assert isinstance(Blackboard.storage["/me/salience"], float)
    assert "/sage/answer" not in Blackboard.storage
    assert Blackboard.storage["/me/result"].conversation is None  # no conversation named
    # A second round asks again with a fresh id, and without a conversation it gets no history.
    first = ask.question_id
    assert tick(ask, lambda s: s != Status.RUNNING) == Status.SUCCESS
    assert ask.question_id != first
    assert ask.result.irp.history_used == 0


def test_choice_tree_branches_on_the_option_over_the_real_topics(t):
    said: list[str] = []
    tree = py_trees.trees.BehaviourTree(create_choice_tree("Is the path clear?", ["yes", "no"], min_confidence=0.0,
                                                           namespace=t.namespace, timeout_s=TIMEOUT,
                                                           say=said.append))
    tree.setup(node=t.node)
    assert tick_until(tree, TIMEOUT) == Status.SUCCESS, [(b.name, b.status, b.feedback_message)
                                                         for b in tree.root.iterate()]
    result = Blackboard.storage["/sage/result"]
    choice, confidence = Blackboard.storage["/sage/choice"], Blackboard.storage["/sage/confidence"]
    assert result.ok and choice in ("yes", "no") and result.answer == choice
    assert set(result.probabilities) == {"yes", "no"} and 0.0 <= confidence <= 1.0
    assert any(line.startswith("go: " if choice == "yes" else "stop: ") for line in said), said
    assert len(t.results_for(result.id)) == 1


def test_ask_sage_fails_under_its_min_confidence_but_writes_the_answer(t):
    ask = AskSage(question="Is the path clear?", choices=["yes", "no"], min_confidence=1.0,
                  namespace=t.namespace, timeout_s=TIMEOUT)
    ask.setup(node=t.node)
    assert tick(ask, lambda s: s != Status.RUNNING) == Status.FAILURE
    assert ask.result.ok and ask.result.confident is False and "under min_confidence" in ask.feedback_message
    assert Blackboard.storage["/sage/choice"] in ("yes", "no")


def test_bad_choices_get_one_invalid_input_result(t):
    ask = AskSage(question="Is the path clear?", choices=["yes", "yes"], namespace=t.namespace, timeout_s=TIMEOUT)
    ask.setup(node=t.node)
    assert tick(ask, lambda s: s != Status.RUNNING) == Status.FAILURE
    result = Blackboard.storage["/sage/result"]
    assert result.error_code == "invalid_input" and "'choices'" in result.error_message
    assert result.confidence is None and result.choice is None
    assert len(t.results_for(result.id)) == 1


def test_json_schema_questions_over_the_real_topics(t):
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"clear": {"type": "boolean"}}, "required": ["clear"]}
    ask = AskSage(question="Is the path clear?", json_schema=schema, namespace=t.namespace, timeout_s=TIMEOUT)
    ask.setup(node=t.node)
    tick(ask, lambda s: s != Status.RUNNING)
    if ask.result.ok:  # the test node decodes at most 8 tokens: JSON may not fit, and says so
        assert isinstance(ask.result.json, dict) and isinstance(ask.result.json["clear"], bool)
    else:
        assert ask.result.error_code == "inference_failed" and "max_tokens" in ask.result.error_message
    assert len(t.results_for(ask.result.id)) == 1
    bad = AskSage(question="Is the path clear?", json_schema={"type": "object", "patternProperties": {}},
                  namespace=t.namespace, timeout_s=TIMEOUT)
    bad.setup(node=t.node)
    assert tick(bad, lambda s: s != Status.RUNNING) == Status.FAILURE
    assert bad.result.error_code == "invalid_input" and "'json_schema'" in bad.result.error_message
    assert len(t.results_for(bad.result.id)) == 1


def test_ask_sage_in_a_named_conversation_keeps_its_history(t):
    ask = AskSage(question="Where is the charger?", namespace=t.namespace, timeout_s=TIMEOUT,
                  conversation="bt-dialogue")
    ask.setup(node=t.node)
    used = []
    for _ in range(2):
        assert tick(ask, lambda s: s != Status.RUNNING) == Status.SUCCESS, ask.feedback_message
        assert ask.result.conversation == "bt-dialogue"
        used.append(ask.result.irp.history_used)
    assert used == [0, 1]


def test_error_result_is_failure(t):
    writer("bt/question").set("bt/question", "")  # empty: the node answers invalid_input
    ask = AskSage(question_key="bt/question", namespace=t.namespace, timeout_s=TIMEOUT)
    ask.setup(node=t.node)
    assert tick(ask, lambda s: s != Status.RUNNING) == Status.FAILURE
    result = Blackboard.storage["/sage/result"]
    assert not result.ok and result.error_code == "invalid_input" and result.id == ask.question_id
    assert "invalid_input" in ask.feedback_message
    assert "/sage/answer" not in Blackboard.storage and "/sage/salience" not in Blackboard.storage


def test_missing_question_key_is_failure(t):
    ask = AskSage(question_key="bt/absent", namespace=t.namespace)
    ask.setup(node=t.node)
    ask.tick_once()
    assert ask.status == Status.FAILURE and ask.question_id is None
    assert "bt/absent" in ask.feedback_message


def test_timeout_without_a_node_is_failure(t):
    ask = AskSage(question="anyone?", namespace="/nobody_here", timeout_s=1.0)
    ask.setup(node=t.node)
    started = time.monotonic()
    assert tick(ask, lambda s: s != Status.RUNNING, timeout=20.0) == Status.FAILURE
    assert 1.0 <= time.monotonic() - started < 20.0
    assert "no IRP node" in ask.feedback_message


def test_preemption_ignores_the_late_result(t):
    ask = AskSage(question="Tell me a long story about the dock.", namespace=t.namespace, timeout_s=TIMEOUT)
    ask.setup(node=t.node)
    client = shared_client(t.node, t.namespace)
    assert ask.client is client
    # Tick until the question is out (the first ticks may wait for discovery); still RUNNING.
    tick(ask, lambda s: ask.question_id is not None or s != Status.RUNNING, timeout=30.0)
    assert ask.status == Status.RUNNING and ask.question_id is not None
    qid = ask.question_id
    future = ask._future
    ask.stop(Status.INVALID)
    assert ask.status == Status.INVALID and ask._future is None
    assert future.cancelled()
    with client._lock:
        assert client._pending == {}
    # The node still answers it: wait for that result on the tester's collector ...
    assert t.wait_results([qid], TIMEOUT)[qid]["id"] == qid
    # ... and for a later result on the same client's subscription, which is delivered in order,
    # so the late result has been through the client's callback by then.
    marker = client.ask("marker", timeout=TIMEOUT)
    assert marker.id != qid
    with client._lock:
        assert client._pending == {}
    assert not any(key.startswith("/sage/") for key in Blackboard.storage), dict(Blackboard.storage)
    assert ask.result is None and ask.status == Status.INVALID


def test_sage_ready(t):
    ready = SageReady(namespace=t.namespace)
    ready.setup(node=t.node)
    assert tick(ready, lambda s: s == Status.SUCCESS, timeout=30.0) == Status.SUCCESS, ready.feedback_message
    assert "lifecycle active" in ready.feedback_message
    nobody = SageReady(namespace="/nobody_here")
    nobody.setup(node=t.node)
    nobody.tick_once()
    assert nobody.status == Status.FAILURE and "no status" in nobody.feedback_message


def test_not_throttled_follows_the_latched_topic(t):
    guard = NotThrottled(namespace=t.namespace)
    guard.setup(node=t.node)
    guard.tick_once()
    assert guard.status == Status.SUCCESS  # never received: not throttled
    tree = py_trees.trees.BehaviourTree(create_tree("unused", namespace=t.namespace, say=lambda _: None))
    tree.setup(node=t.node)
    pub = t.node.create_publisher(Bool, f"{t.namespace}/throttled", LATCHED)
    try:
        pub.publish(Bool(data=True))
        assert tick(guard, lambda s: s == Status.FAILURE, timeout=20.0) == Status.FAILURE
        assert guard.feedback_message == "platform throttled"
        # The example tree (its own NotThrottled, once it has the report) waits in its fallback.
        in_tree = next(b for b in tree.root.iterate() if isinstance(b, NotThrottled))
        wait_until(lambda: in_tree.throttled is True, 20.0)
        assert tick_until(tree, 20.0, hz=10.0, until=[Status.RUNNING]) == Status.RUNNING
        assert isinstance(tree.tip(), FallbackLog)
        assert "/sage/result" not in Blackboard.storage
        pub.publish(Bool(data=False))
        assert tick(guard, lambda s: s == Status.SUCCESS, timeout=20.0) == Status.SUCCESS
    finally:
        pub.publish(Bool(data=False))
        t.node.destroy_publisher(pub)


def test_example_main_prints_the_answer(running):
    """``python -m sage_irp_ros.ros.examples.ask_tree`` (the ``sage_irp_bt_example`` command) end to end."""
    out = subprocess.run([sys.executable, "-m", "sage_irp_ros.ros.examples.ask_tree", "--namespace",
                          running.proc.namespace, "--question", "Where is the dock?", "--timeout", str(TIMEOUT)],
                         env=running.env, capture_output=True, text=True, timeout=TIMEOUT + 60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), out.stderr
    assert "answer (salience" in out.stderr  # LogAnswer through the node's logger
    # the example exits on its own copy of the result; this process's subscriber may take it a moment later
    running.tester.wait_for(lambda: any(r.get("question") == "Where is the dock?" for r in running.tester.results),
                            TIMEOUT, "the example's result on this subscriber")
    qids = [r["id"] for r in running.tester.results if r.get("question") == "Where is the dock?"]
    assert len(qids) == 1


def test_example_main_times_out_without_a_node(ros_env):
    out = subprocess.run([sys.executable, "-m", "sage_irp_ros.ros.examples.ask_tree", "--namespace", "/nobody_here",
                          "--timeout", "2"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no answer within 2 s: FallbackLog: throttled or not ready" in out.stderr, out.stderr
