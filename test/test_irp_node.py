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

"""The IRP node over real DDS: the node runs in its own process, this test process talks to it
with its own rclpy Context on a random ROS_DOMAIN_ID with localhost discovery.

Most tests share one node (module fixture) whose model is the tiny test model plus one extra token,
``<boom>``, that the tokenizer knows and the model's embedding table does not: a question containing
it makes the model's forward raise IndexError inside ``generate`` — a real failure through the real
code path — while every other question is answered normally.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ros_harness import START_TIMEOUT, RunningNode

from sage_irp_ros.errors import ALL_CODES
from sage_irp_ros.compat import torch_kernels
from sage_irp_ros.weights.loader import cpu_has_native_bf16

SNARC_LABEL = "surprise,novelty,arousal,reward,conflict,total"
MAX_CHARS = 200
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def shared(boom_model_dir, tmp_path_factory):
    """One node for the tests that do not need their own process."""
    tmp = tmp_path_factory.mktemp("irp_node")
    running = RunningNode(tmp, params={
        "model.path": str(boom_model_dir), "memory.db_path": str(tmp / "memory.db"),
        "node.queue_size": QUEUE_SIZE, "llm_irp.max_question_chars": MAX_CHARS,
        "history.depth": 5})
    yield running
    try:
        running.tester.assert_no_duplicates()
    finally:
        running.close()


@pytest.fixture
def t(shared):
    """The shared node's tester; fails the test if the node process died."""
    assert shared.proc.proc.poll() is None, shared.proc.log()[-3000:]
    return shared.tester


def _ok(result):
    assert result["ok"], result["error"]
    return result


# -- questions and results ------------------------------------------------------------------------
def test_plain_text_question_gets_a_result_with_a_generated_id(t):
    text = "What is 2+2? plain"
    result = t.exchange_raw(f"  {text}\n")
    _ok(result)
    assert result["question"] == text and result["conversation"] is None
    assert isinstance(result["id"], str) and len(result["id"]) == 12
    assert result["answer"] and result["model"] == "model"
    assert set(result["timing"]) >= {"queued_s", "inference_s", "total_s", "tokens", "tokens_per_s"}
    assert result["timing"]["tokens"] > 0 and len(result["irp"]["energies"]) >= 1


def test_json_question_echoes_id_and_fields(t):
    result = t.ask("How does compression affect meaning?", qid="json-1", conversation="conv-json",
                   context="Answer briefly.", candidates=2)
    _ok(result)
    assert (result["id"], result["conversation"]) == ("json-1", "conv-json")
    assert result["question"] == "How does compression affect meaning?"
    assert result["irp"]["candidates"] <= 2 and result["irp"]["halt_reason"]  # sampled; + the greedy row
    assert result["error"] is None and result["warnings"] == []


def test_text_alias_and_missing_id(t):
    result = t.exchange_raw('{"text": "Are you aware of this conversation?"}')
    _ok(result)
    assert result["question"] == "Are you aware of this conversation?" and len(result["id"]) == 12


def _settled_counts(t) -> tuple[int, int, int]:
    """Lengths of the answer, salience and snarc lists once every earlier question's messages are in.

    The side topics are separate subscriptions, so a previous test's snarc may still be on its way when its
    result has arrived. A marker question settles that: each topic is delivered in order, so once the
    marker's own answer, salience and snarc are the last received, nothing earlier is still coming.
    """
    marker = _ok(t.ask("Marker: what is 1+1?"))
    snarc = [marker["snarc"][k] for k in SNARC_LABEL.split(",")]
    t.wait_for(lambda: bool(t.answers and t.saliences and t.snarcs) and t.answers[-1] == marker["answer"]
               and t.saliences[-1] == pytest.approx(marker["snarc"]["total"], rel=1e-6)
               and list(t.snarcs[-1].data) == pytest.approx(snarc, rel=1e-6),
               10, "the marker's answer, salience and snarc")
    return len(t.answers), len(t.saliences), len(t.snarcs)


def test_ok_result_is_also_published_on_answer_salience_and_snarc(t):
    before = _settled_counts(t)
    result = _ok(t.ask("What is the difference between knowledge and understanding?"))
    t.wait_for(lambda: len(t.answers) > before[0] and len(t.saliences) > before[1] and len(t.snarcs) > before[2],
               10, "answer, salience and snarc messages")
    assert t.answers[before[0]:] == [result["answer"]]
    assert t.saliences[before[1]:] == [pytest.approx(result["snarc"]["total"], rel=1e-6)]
    (snarc,) = t.snarcs[before[2]:]
    assert [d.label for d in snarc.layout.dim] == [SNARC_LABEL] and snarc.layout.dim[0].size == 6
    expected = [result["snarc"][k] for k in SNARC_LABEL.split(",")]
    assert list(snarc.data) == pytest.approx(expected, rel=1e-6)
    assert isinstance(result["snarc"]["salient"], bool)


def test_error_results_publish_nothing_on_answer_topics(t):
    before = _settled_counts(t)
    result = t.exchange_raw('{"id": "no-answer", "question": ""}')
    assert result["error"]["code"] == "invalid_input"
    # An ok question afterwards is the marker: its answer is the first thing after ours on each topic.
    ok = _ok(t.ask("What is 2+2?"))
    t.wait_for(lambda: len(t.snarcs) > before[2] and len(t.answers) > before[0] and len(t.saliences) > before[1],
               10, "the marker's answer")
    assert t.answers[before[0]:] == [ok["answer"]]
    assert len(t.saliences) == before[1] + 1 and len(t.snarcs) == before[2] + 1


def test_burst_larger_than_the_queue_gets_exactly_one_result_each(t):
    ids = [f"burst-{i}" for i in range(12)]
    for qid in ids:
        t.send("What is 2+2?", qid=qid)
    results = t.wait_results(ids, timeout=60)
    # A sentinel asked after the burst is answered after every burst result has been published.
    _ok(t.ask("Sentinel?", qid="burst-sentinel"))
    for qid in ids:
        assert len(t.results_for(qid)) == 1, t.results_for(qid)
    codes = Counter("ok" if r["ok"] else r["error"]["code"] for r in results.values())
    assert set(codes) <= {"ok", "queue_full"}, codes
    assert codes["ok"] >= 1 and codes["queue_full"] >= 1, codes
    full = next(r for r in results.values() if not r["ok"])
    assert f"node.queue_size = {QUEUE_SIZE}" in full["error"]["message"]
    assert full["question"] == "What is 2+2?"


# -- each error code from a real cause --------------------------------------------------------------
@pytest.mark.parametrize("raw,fragment,echoed", [
    ("", "question is empty", None),
    ("   \n\t  ", "question is empty", None),
    ("{not json", "not valid JSON", None),
    ('{"id": "bad-1", "question": 5}', "field 'question' must be a string", "bad-1"),
    ('{"id": "bad-2", "question": "hi", "max_iterations": "3"}', "must be an integer", "bad-2"),
    ('{"id": "bad-3", "question": "hi", "reset": "yes"}', "must be true or false", "bad-3"),
    ('{"id": "bad-4", "question": "hi", "deadline_s": -1}', "deadline_s must be in", "bad-4"),
    ('{"id": "bad-5", "conversation": "c"}', "no 'question' field", "bad-5"),
    ('["What is 2+2?"]', "must be an object", None),
])
def test_invalid_input(t, raw, fragment, echoed):
    result = t.exchange_raw(raw)
    assert not result["ok"] and result["error"]["code"] == "invalid_input"
    assert fragment in result["error"]["message"]
    if echoed:
        assert result["id"] == echoed
    assert result["answer"] == "" and result["snarc"] is None
    _ok(t.ask("What is 2+2?"))  # the next good question works


def test_too_long(t):
    result = t.ask("x" * (MAX_CHARS + 1), qid="long-1")
    assert result["error"]["code"] == "too_long" and f"limit is {MAX_CHARS}" in result["error"]["message"]
    _ok(t.ask("y" * MAX_CHARS, qid="long-ok"))  # exactly at the limit is fine


def test_not_active_after_deactivate_from_another_process(t):
    assert t.get_state() == "active"
    assert t.change_state("deactivate")
    try:
        assert t.get_state() == "inactive"
        t.wait_status(lambda s: s["lifecycle"] == "inactive", 10)
        result = t.ask("What is 2+2?", qid="inactive-1")
        assert result["error"]["code"] == "not_active" and "inactive" in result["error"]["message"]
    finally:
        assert t.change_state("activate")
    assert t.get_state() == "active"
    _ok(t.ask("What is 2+2?", qid="active-again"))


def test_deadline_passed_while_queued(t):
    result = t.ask("What is 2+2?", qid="deadline-1", deadline_s=1e-6)
    assert result["error"]["code"] == "deadline" and "queued" in result["error"]["message"]
    _ok(t.ask("What is 2+2?"))


def test_inference_failed_and_the_node_keeps_serving(t):
    errors_before = t.statuses[-1]["errors"]
    result = t.ask("What is <boom>?", qid="boom-1")
    assert result["error"]["code"] == "inference_failed"
    assert "IndexError" in result["error"]["message"]
    for i in range(3):
        _ok(t.ask(f"What is {i}+{i}?", qid=f"after-boom-{i}"))
    status = t.wait_status(lambda s: s["errors"] > errors_before and s["state"] == "ready", 10)
    assert status["lifecycle"] == "active" and status["error"] is None


def test_status_reports_the_cpu_weights_in_4_bits(t):
    status = t.wait_status(lambda s: s["model"] is not None, 10)
    native_bf16 = cpu_has_native_bf16()  # precision auto: bf16 where the CPU multiplies bf16 natively
    assert status["device"] == "cpu" and status["precision"] == ("bf16" if native_bf16 else "fp32")
    if torch_kernels.int4_unavailable(torch.device("cpu")):  # auto: full width, packed for oneDNN
        assert status["weights"] == "none" and status["packed_layers"] > 0
    else:  # weight_quantization auto: int4 on a CPU, nothing to pack
        assert status["weights"] == "int4" and status["quantized_layers"] > 0 and status["packed_layers"] == 0


def test_out_of_memory_below_the_available_ram_floor(t):
    (res,) = t.set_parameters({"llm_irp.min_available_memory_mb": 1_000_000})
    assert res.successful, res.reason
    try:
        result = t.ask("What is 2+2?", qid="oom-1")
        assert result["error"]["code"] == "out_of_memory"
        assert "min_available_memory_mb" in result["error"]["message"]
    finally:
        (res,) = t.set_parameters({"llm_irp.min_available_memory_mb": 0})
        assert res.successful, res.reason
    _ok(t.ask("What is 2+2?", qid="oom-cleared"))


def test_every_error_code_is_known(t):
    codes = {r["error"]["code"] for r in t.results if not r["ok"]}
    assert codes <= set(ALL_CODES)


# -- parameters -------------------------------------------------------------------------------------
def test_invalid_parameter_is_rejected_at_set_time_with_the_reason(t):
    (res,) = t.set_parameters({"llm_irp.initial_temperature": -1.0})
    assert not res.successful
    assert "llm_irp.initial_temperature" in res.reason and "out of range" in res.reason
    (res,) = t.set_parameters({"llm_irp.min_temperature": 0.9})  # above initial_temperature 0.7
    assert not res.successful and "llm_irp.min_temperature" in res.reason
    (res,) = t.set_parameters({"model.device": "tpu"})
    assert not res.successful and "model.device" in res.reason
    result = _ok(t.ask("What is 2+2?"))
    assert result["irp"]["temperatures"][0] == pytest.approx(0.7)  # nothing was applied


def test_valid_parameter_takes_effect_at_the_next_question(t):
    (res,) = t.set_parameters({"llm_irp.candidates": 1})
    assert res.successful, res.reason
    try:
        assert _ok(t.ask("What is 2+2?"))["irp"]["candidates"] == 1  # sampled candidates
    finally:
        (res,) = t.set_parameters({"llm_irp.candidates": 3})
        assert res.successful
    assert len(_ok(t.ask("What is 2+2?"))["irp"]["energies"]) >= 2


# -- conversation history ---------------------------------------------------------------------------
def test_history_changes_the_prompt_and_reset_clears_it(t):
    conv = "history-1"
    used = [_ok(t.ask(f"Question {i}?", conversation=conv))["irp"]["history_used"] for i in range(3)]
    assert used == [0, 1, 2]
    other = _ok(t.ask("Another conversation?", conversation="history-2"))
    assert other["irp"]["history_used"] == 0  # histories are per conversation
    assert _ok(t.ask("Start over?", conversation=conv, reset=True))["irp"]["history_used"] == 0
    assert _ok(t.ask("And now?", conversation=conv))["irp"]["history_used"] == 1
    response = t.reset_history()
    assert response.success and "cleared" in response.message
    assert _ok(t.ask("After reset?", conversation=conv))["irp"]["history_used"] == 0
    assert _ok(t.ask("Again?", conversation="history-2"))["irp"]["history_used"] == 0


def test_two_conversations_asked_together_are_one_batch_and_share_no_history(t):
    """node.batch_size 2: both questions wait for each other (up to batch_wait_s), decode together, and
    each gets exactly one result with its own conversation's history only."""
    _ok(t.ask("The robot is in the kitchen.", conversation="batch-a"))
    results = t.set_parameters({"node.batch_size": 2, "node.batch_wait_s": 10.0})
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        ids = [t.send("Where is the robot?", conversation="batch-a"),
               t.send("Where is the robot?", conversation="batch-b")]
        got = t.wait_results(ids)
        assert [_ok(got[i])["irp"]["history_used"] for i in ids] == [1, 0]
        assert [len(t.results_for(i)) for i in ids] == [1, 1]
        assert [got[i]["irp"]["batch"] for i in ids] == [2, 2]
    finally:
        results = t.set_parameters({"node.batch_size": 8, "node.batch_wait_s": 0.05})
        assert all(r.successful for r in results)


def test_questions_without_conversation_share_nothing_and_a_named_one_keeps_its_history(t, shared):
    """Independent askers do not see each other's exchanges; a named conversation is a dialogue."""
    first = _ok(t.exchange_raw("What is the capital of France?"))  # plain text
    second = _ok(t.ask("Say hello."))  # JSON without 'conversation'
    third = _ok(t.exchange_raw('{"question": "Name a primary color.", "conversation": null}'))
    assert [r["conversation"] for r in (first, second, third)] == [None, None, None]
    assert [r["irp"]["history_used"] for r in (first, second, third)] == [0, 0, 0]
    named = [_ok(t.ask(q, conversation="dialogue-1"))["irp"]["history_used"]
             for q in ("My name is Ada.", "What is my name?")]
    assert named == [0, 1]
    assert _ok(t.ask("What is my name?", conversation="dialogue-2"))["irp"]["history_used"] == 0
    assert _ok(t.ask("What is 2+2?"))["irp"]["history_used"] == 0  # the named dialogue does not leak either
    warned = _ok(t.ask("Start over.", reset=True))
    assert warned["irp"]["history_used"] == 0 and "'reset' has no effect" in warned["warnings"][0]
    assert _ok(t.ask("And now?", conversation="dialogue-1"))["irp"]["history_used"] == 2
    # The same through SageClient.ask(conversation=) and `sage_irp ask --conversation`.
    assert t.client.ask("Who am I?", timeout=60, conversation="dialogue-2").irp.history_used == 1
    assert t.client.ask("Who am I?", timeout=60).irp.history_used == 0
    cli = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "ask", "One more?", "--conversation",
                          "dialogue-2", "--json", "--timeout", "60", "--namespace", shared.proc.namespace],
                         env=shared.env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert result["conversation"] == "dialogue-2" and result["irp"]["history_used"] == 2


# -- lifecycle from another process -----------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory) -> Path:
    """A tiny model with a long context, so generation can run for seconds (max_tokens in the 1000s)."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("slow") / "model", max_positions=8192)


def test_lifecycle_transitions_from_another_process(slow_model_dir, tmp_path, ros_env):
    node = RunningNode(tmp_path, env=ros_env, wait=False, params={
        "model.path": str(slow_model_dir), "memory.db_path": str(tmp_path / "memory.db"),
        "node.autostart": False, "llm_irp.max_tokens": 1500, "llm_irp.deadline_s": 5.0,
        "node.shutdown_timeout_s": 1.0, "node.batch_size": 1})  # one running question, the others queued
    t = node.tester
    try:
        t.wait_status(lambda s: s["lifecycle"] == "unconfigured", START_TIMEOUT, "the unconfigured status")
        assert t.get_state() == "unconfigured"
        t.client.wait_for_node(10)
        assert t.ask("What is 2+2?", qid="lc-0")["error"]["code"] == "not_active"

        # configure loads the model; get_state answers meanwhile (a reentrant callback group)
        future = t.change_state_async("configure")
        seen_during = []
        while not future.done():
            state = t.get_state()
            if not future.done():
                seen_during.append(state)
        assert future.result().success
        assert seen_during, "get_state never answered while configure was running"
        # the end state can be seen before the service's response reaches this process: only at the end
        assert "configuring" in seen_during
        last = len(seen_during) - seen_during[::-1].index("configuring")
        assert set(seen_during[:last]) <= {"unconfigured", "configuring"}
        assert set(seen_during[last:]) <= {"inactive"}
        assert any(s["state"] == "loading" for s in t.statuses)
        assert t.get_state() == "inactive"
        assert t.ask("What is 2+2?", qid="lc-1")["error"]["code"] == "not_active"

        assert t.change_state("activate") and t.get_state() == "active"
        _ok(t.ask("What is 2+2?", qid="lc-2", deadline_s=2.0))  # bounds the 1500-token budget, not a speed test

        # a tiny deadline with long generation: cut short, never waits for all 1500 tokens
        cut = t.ask("Tell me everything.", qid="lc-deadline", deadline_s=0.3)
        assert (cut["ok"] and cut["irp"]["halt_reason"] == "deadline") or cut["error"]["code"] == "deadline"
        assert not cut["ok"] or cut["timing"]["tokens"] < len(cut["irp"]["energies"]) * 1500  # cut, not timed

        # deactivate with questions pending: the running one finishes, the queued ones get not_active
        ids = [f"lc-pending-{i}" for i in range(4)]
        mark = t.status_mark()
        for qid in ids:
            t.send("Tell me a long story.", qid=qid)
        t.wait_status(lambda s: s["state"] == "busy" and s["queue_depth"] == 3, 30, "three queued questions", mark)
        assert t.change_state("deactivate")
        results = t.wait_results(ids, timeout=30)
        assert all(results[i]["error"]["code"] == "not_active" for i in ids[1:]), results
        assert "deactivated" in results[ids[1]]["error"]["message"]
        assert results[ids[0]]["ok"] or results[ids[0]]["error"]["code"] == "deadline"
        assert t.get_state() == "inactive"

        # cleanup releases the model; configure + activate bring it back in the same process
        mark = t.status_mark()
        assert t.change_state("cleanup") and t.get_state() == "unconfigured"
        t.wait_status(lambda s: s["lifecycle"] == "unconfigured" and s["model"] is None, 10, since=mark)
        assert t.change_state("configure") and t.change_state("activate")
        _ok(t.ask("What is 2+2?", qid="lc-3", deadline_s=2.0))
        assert not t.change_state("configure")  # not a valid transition from active
        assert t.get_state() == "active"

        # shutdown from active with questions pending: every one still gets a result
        late = [f"lc-shutdown-{i}" for i in range(3)]
        mark = t.status_mark()
        for qid in late:
            t.send("Tell me a long story.", qid=qid)
        t.wait_status(lambda s: s["state"] == "busy" and s["queue_depth"] == 2, 30, "two queued questions", mark)
        assert t.change_state("shutdown_active")
        assert t.get_state() == "finalized"
        results = t.wait_results(late, timeout=10)
        refused = t.ask("Anyone left?", qid="lc-finalized")
        assert refused["error"]["code"] == "shutting_down"
        errors = [r["error"] for r in results.values()]
        assert all(results[i]["error"]["code"] == "shutting_down" for i in late[1:]), errors
        assert results[late[0]]["ok"] or results[late[0]]["error"]["code"] == "shutting_down"
        for qid in ids + late:
            assert len(t.results_for(qid)) == 1
    finally:
        rc = node.close()
    assert rc == 0, node.proc.log()[-3000:]
