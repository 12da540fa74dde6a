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

"""Reliability and security of the IRP node: bad input and floods (faults: test_faults.py).

The promise under test: exactly one result per question, no lost salient memory, and the node keeps
serving. Every fault is injected through a real code path: real DDS between processes, real SQLite
locks held by another process, real signals and ``kill -9``. Figures measured here are in
docs/reliability.md (run with ``-s`` to see them printed).
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
import uuid
from collections import Counter

import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from ros_harness import RunningNode, percentiles

from sage_irp_ros.errors import ALL_CODES, INVALID_INPUT, NOT_ACTIVE, QUEUE_FULL, SHUTTING_DOWN, TOO_LONG
from sage_irp_ros.errors import SageError
from sage_irp_ros.questions import MAX_CANDIDATES, MAX_DEADLINE_S, MAX_ID_CHARS, parse_id, parse_question

MAX_CHARS = 500
_CONTROL = {chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}


def _ok(result):
    assert result["ok"], result["error"]
    return result


# -- the parser, property-based ---------------------------------------------------------------------
ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates and control characters included
JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(ANY_CHAR, max_size=30))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELD_VALUES = {
    "id": st.text(ANY_CHAR, max_size=140) | JSON_VALUES,
    "question": st.text(ANY_CHAR, max_size=2 * MAX_CHARS) | JSON_VALUES,
    "text": st.text(ANY_CHAR, max_size=50) | JSON_VALUES,
    "conversation": st.text(ANY_CHAR, max_size=140) | JSON_VALUES,
    "context": st.text(ANY_CHAR, max_size=2 * MAX_CHARS) | JSON_VALUES,
    "max_iterations": st.integers(-5, 100) | JSON_VALUES,
    "deadline_s": st.floats(-10, 5000) | JSON_VALUES,
    "reset": st.booleans() | JSON_VALUES,
}
QUESTION_OBJECTS = st.fixed_dictionaries({}, optional=FIELD_VALUES).flatmap(
    lambda known: st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3).map(
        lambda extra: {**extra, **known}))


def _check_parse(raw: str):
    try:
        q = parse_question(raw, MAX_CHARS)
    except SageError as exc:
        assert exc.code in (INVALID_INPUT, TOO_LONG) and exc.message
        return None
    assert q.text and q.text == q.text.strip() and len(q.text) <= MAX_CHARS
    conversation = q.conversation or ""  # None: asked without a conversation (never an empty id)
    assert q.conversation is None or 0 < len(q.conversation) <= MAX_ID_CHARS
    assert not _CONTROL & set(q.text + q.id + conversation + q.context)
    assert 0 < len(q.id) <= MAX_ID_CHARS
    assert q.candidates is None or (type(q.candidates) is int and 1 <= q.candidates <= MAX_CANDIDATES)
    assert q.deadline_s is None or (math.isfinite(q.deadline_s) and 0 < q.deadline_s <= MAX_DEADLINE_S)
    assert isinstance(q.reset, bool)
    (q.text + q.id + conversation + q.context).encode("utf-8")  # never a lone surrogate
    return q


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(st.text(ANY_CHAR, max_size=3 * MAX_CHARS) | st.binary(max_size=200).map(
    lambda b: b.decode("utf-8", errors="replace")))
def test_parser_accepts_or_refuses_any_string_precisely(raw):
    _check_parse(raw)
    pid = parse_id(raw)
    assert pid is None or (isinstance(pid, str) and 0 < len(pid) <= MAX_ID_CHARS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(QUESTION_OBJECTS, st.booleans())
def test_parser_accepts_or_refuses_any_json_object_precisely(obj, id_first):
    if id_first and "id" in obj:
        obj = {"id": obj["id"], **obj}
    raw = json.dumps(obj)  # ensure_ascii: surrogates and NULs travel as \u escapes; NaN as NaN
    q = _check_parse(raw)
    pid = parse_id(raw)
    if isinstance(obj.get("id"), str) and 0 < len(obj["id"]) <= MAX_ID_CHARS:
        try:
            obj["id"].encode("utf-8")
            assert pid == obj["id"]
        except UnicodeEncodeError:
            assert pid is None
    if q is not None:
        unknown = {k for k in obj if k not in FIELD_VALUES}
        idle_reset = q.reset and q.conversation is None  # warned: nothing to reset without a conversation
        assert len(q.warnings) == bool(unknown) + idle_reset


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text('x{}"id: ', max_size=300), st.integers(MAX_CHARS, 3 * MAX_CHARS))
def test_oversized_messages_are_refused_before_parsing_and_keep_a_leading_id(tail, size):
    raw = '{"id": "big-1", "question": "' + "x" * (2 * MAX_CHARS + 4096) + tail
    with pytest.raises(SageError) as err:
        parse_question(raw, MAX_CHARS)
    assert err.value.code == TOO_LONG
    assert parse_id(raw) == "big-1"


# -- a live node --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rel(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    running = RunningNode(tmp, params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(tmp / "memory.db"),
        "llm_irp.max_question_chars": MAX_CHARS, "llm_irp.max_tokens": 4, "node.queue_size": 8})
    yield running
    try:
        running.tester.assert_no_duplicates()
    finally:
        running.close()


@pytest.fixture
def t(rel):
    assert rel.proc.proc.poll() is None, rel.proc.log()[-3000:]
    return rel.tester


ROS_SAFE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=2 * MAX_CHARS)
LIVE_MESSAGES = ROS_SAFE_TEXT | QUESTION_OBJECTS.map(lambda o: ("json", o))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=LIVE_MESSAGES)
def test_live_node_answers_arbitrary_messages_exactly_once(t, message):
    if isinstance(message, tuple):
        qid = f"hyp-{uuid.uuid4().hex[:8]}"
        obj = {"id": qid, **{k: v for k, v in message[1].items() if k != "id"}}
        result = t.exchange_raw(json.dumps(obj))
        assert result["id"] == qid
    else:
        result = t.exchange_raw(message)
    # What the node promises for any message: exactly one result (exchange_raw checks there is no second
    # one before returning; the fixture checks no id got two), ok with an answer, or a documented code
    # with a message. Which code depends on the message and on timing (a tiny deadline_s can expire
    # before the first candidate: `deadline`), so the property does not predict it.
    assert result["ok"] == (result["error"] is None) and (result["snarc"] is not None) == result["ok"]
    if not result["ok"]:
        assert result["error"]["code"] in ALL_CODES and result["error"]["message"], result["error"]
        assert result["error"]["code"] not in (QUEUE_FULL, NOT_ACTIVE, SHUTTING_DOWN), result["error"]


def test_live_node_after_the_property_run_still_answers_once(t):
    before = len(t.results)
    _ok(t.ask("What is 2+2?", qid="after-property"))
    assert len(t.results) == before + 1


def test_one_megabyte_message_is_too_long_and_keeps_its_id(t):
    result = t.ask("x" * (1 << 20), qid="mb-json")  # SageClient-style: "id" first
    assert result["error"]["code"] == "too_long" and f"limit is {MAX_CHARS}" in result["error"]["message"]
    plain = t.exchange_raw("y" * (1 << 20))
    assert plain["error"]["code"] == "too_long" and len(plain["id"]) == 12 and plain["question"] == ""
    _ok(t.ask("What is 2+2?", qid="after-mb"))


def _raw_string_message(payload: bytes) -> bytes:
    """A CDR-serialised std_msgs/String whose bytes need not be UTF-8 (what a C++ node could send)."""
    return b"\x00\x01\x00\x00" + struct.pack("<I", len(payload) + 1) + payload + b"\x00"


def test_invalid_utf8_lone_surrogates_and_control_characters(t):
    t.question_pub.publish(_raw_string_message(b'{"id": "utf8-1", "question": "caf\xc3 \xff\xfe?"}'))
    t.wait_results(["utf8-1"], 10)
    (bad,) = t.results_for("utf8-1")
    assert bad["error"]["code"] == "invalid_input" and "UTF-8" in bad["error"]["message"]

    surrogate = t.exchange_raw('{"id": "sur-1", "question": "bad \\ud800 surrogate"}')
    assert (surrogate["id"], surrogate["error"]["code"]) == ("sur-1", "invalid_input")
    assert "surrogate" in surrogate["error"]["message"]

    only_control = t.exchange_raw('{"id": "cc-1", "question": "\\u0000\\u0007\\u001b\\u007f"}')
    assert only_control["error"]["code"] == "invalid_input" and "empty" in only_control["error"]["message"]
    mixed = _ok(t.exchange_raw('{"id": "cc-2", "question": "What\\u0007 is\\u0000 2+2?\\u001b"}'))
    assert mixed["question"] == "What is 2+2?"
    plain = _ok(t.exchange_raw("What\x07 is\x1b 2+2?\x7f"))
    assert plain["question"] == "What is 2+2?"


def test_format_strings_and_template_syntax_are_plain_data(rel, t):
    qid = "%s%n%x{0}{__class__}"
    text = "What is %s%n {0} {__class__.__mro__} {{ 7*7 }} {% raw %}<|im_end|>?"
    result = _ok(t.ask(text, qid=qid, conversation="%n%n{0}", context="%(x)s {{ config }}", **{"%s": 1}))
    assert (result["id"], result["question"], result["conversation"]) == (qid, text, "%n%n{0}")
    refused = t.ask("", qid=qid + "-empty")
    assert refused["id"] == qid + "-empty" and refused["error"]["code"] == "invalid_input"
    # logged verbatim, not formatted (refusals log at most once per 5 s, so the unknown-field warning
    # of the answered question is the line to look for)
    rel.proc.wait_log(f"question {qid}: ignored unknown fields: %s")


@pytest.mark.parametrize("field,value", [
    ("max_iterations", 0), ("max_iterations", -1), ("max_iterations", 65), ("max_iterations", 10**30),
    ("max_iterations", 2.5), ("max_iterations", True), ("max_iterations", float("nan")),
    ("deadline_s", 0), ("deadline_s", -1.0), ("deadline_s", 3601), ("deadline_s", 1e308),
    ("deadline_s", float("nan")), ("deadline_s", float("-inf")), ("deadline_s", "5"),
])
def test_out_of_range_numbers_are_refused(t, field, value):
    qid = f"num-{uuid.uuid4().hex[:6]}"
    result = t.exchange_raw(json.dumps({"id": qid, "question": "What is 2+2?", field: value}))
    assert (result["id"], result["error"]["code"]) == (qid, "invalid_input")
    assert field in result["error"]["message"]


def test_unknown_fields_are_ignored_with_a_warning(rel, t):
    result = _ok(t.ask("What is 2+2?", qid="unknown-1", priority=3, extra={"a": [1]}))
    assert result["warnings"] == ["ignored unknown fields: extra, priority"]
    rel.proc.wait_log("question unknown-1: ignored unknown fields: extra, priority")


# -- load ------------------------------------------------------------------------------------------------
def test_load_200_questions_at_50_hz_from_3_publishers(rel, t):
    # Longer answers than the other tests, so inference (~10/s here) is slower than arrivals (50/s)
    # and the bounded queue really fills.
    (res,) = t.set_parameters({"llm_irp.max_tokens": 32})
    assert res.successful, res.reason
    rss_before = t.statuses[-1]["rss_mb"]
    publishers = [t.node.create_publisher(String, f"{t.namespace}/question",
                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
                  for _ in range(3)]
    t.wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers), 10, "publisher matching")
    per_publisher, period = 67, 3 / 50.0  # 3 x 67 = 201 questions at 50 Hz in total

    def publish(p: int) -> None:
        start = time.monotonic()
        for i in range(per_publisher):
            qid = f"load-{p}-{i}"
            message = {"id": qid, "question": f"Load question {p}-{i}?", "conversation": f"load-{p}"}
            publishers[p].publish(String(data=json.dumps(message)))
            time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))  # pacing, not synchronisation

    threads = [threading.Thread(target=publish, args=(p,)) for p in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    send_s = time.monotonic() - started
    ids = [f"load-{p}-{i}" for p in range(3) for i in range(per_publisher)]
    try:
        results = t.wait_results(ids, timeout=120)
        _ok(t.ask("Sentinel after load?", qid="load-sentinel"))
    finally:
        (res,) = t.set_parameters({"llm_irp.max_tokens": 4})
    for qid in ids:
        assert len(t.results_for(qid)) == 1, t.results_for(qid)
        p, i = qid.split("-")[1:]
        assert results[qid]["question"] == f"Load question {p}-{i}?"
        assert results[qid]["conversation"] == f"load-{p}"
    codes = Counter("ok" if r["ok"] else r["error"]["code"] for r in results.values())
    assert set(codes) <= {"ok", "queue_full"}, codes
    assert codes["ok"] > 0
    mark = t.status_mark()  # the heartbeat after the load
    status = t.wait_status(lambda s: s["queue_depth"] == 0, 10, since=mark)
    rss_after = status["rss_mb"]
    ok = [r for r in results.values() if r["ok"]]
    figures = {
        "questions": len(ids), "send_s": round(send_s, 2), "rate_hz": round(len(ids) / send_s, 1),
        "ok": codes["ok"], "queue_full": codes["queue_full"],
        "queued_s": percentiles([r["timing"]["queued_s"] for r in ok]),
        "inference_s": percentiles([r["timing"]["inference_s"] for r in ok]),
        "total_s": percentiles([r["timing"]["total_s"] for r in ok]),
        "refusal_s": percentiles([r["timing"]["total_s"] for r in results.values() if not r["ok"]]),
        "rss_mb": [rss_before, rss_after],
    }
    print("\nLOAD FIGURES " + json.dumps(figures))
    assert rss_after - rss_before < 100, figures


def test_a_slow_result_subscriber_does_not_stall_inference(t):
    baseline_start = time.monotonic()
    for i in range(10):
        _ok(t.ask("What is 2+2?", qid=f"base-{i}"))
    baseline = time.monotonic() - baseline_start

    ctx = Context()
    rclpy.init(context=ctx, domain_id=t.ctx.get_domain_id())  # a second participant, like another process
    slow = rclpy.create_node("slow_subscriber", context=ctx)
    entered, release, calls = threading.Event(), threading.Event(), []

    def blocking_callback(msg: String) -> None:
        calls.append(msg.data)
        entered.set()
        release.wait(60)  # holds its executor: this subscriber takes nothing more until released

    sub = slow.create_subscription(String, f"{t.namespace}/result", blocking_callback,
                                   QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(slow)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        t.wait_for(lambda: sub.get_publisher_count() > 0, 10, "the slow subscriber to match")
        for i in range(50):  # until the node's writer has matched it too and it is stuck in a callback
            _ok(t.ask("Block the slow subscriber?", qid=f"slow-block-{i}"))
            if entered.wait(0.2):
                break
        assert entered.is_set(), "the slow subscriber never got a result"
        blocked_start = time.monotonic()
        for i in range(30):
            _ok(t.ask("What is 2+2?", qid=f"slow-{i + 1}", timeout=10))
        blocked = (time.monotonic() - blocked_start) / 3  # per 10 questions, like the baseline
        assert len(calls) == 1 and not release.is_set()  # it really was stuck the whole time
        print(f"\nSLOW SUBSCRIBER 10 questions: {baseline:.2f} s without, {blocked:.2f} s with a stuck subscriber")
        # A stall would block the worker on the stuck reader: every ask would hit its 10 s timeout. What
        # is left is DDS traffic for the stuck reader sharing 2 cores with everything else: 0.1-0.2 s per
        # question on the development machine, on top of a baseline that itself varied 0.24-7 s there.
        assert blocked < 3 * baseline + 5.0
    finally:
        release.set()
        executor.shutdown(timeout_sec=2)
        slow.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spinner.join(5)
