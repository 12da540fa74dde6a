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

"""Several questions answered together (SageCore.answer_many) and prompt-diverse candidates, on a real
tiny Llama: exactly one result each, isolation of histories and failures, the greedy row unchanged."""

from __future__ import annotations

import threading

import pytest
import torch

from faulty_generator import FaultyGenerator, faulty_core_of
from sage_irp_ros import errors
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.serving.core import Ask, SageCore
from sage_irp_ros.irp.engine import RefineJob
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import Question

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def _core(model_dir, tmp_path, faults: FaultyGenerator | None = None, **irp):
    """A loaded core over ``model_dir``; with ``faults``, its generation goes through that generator."""
    cfg = SageConfig.from_mapping({
        "model": {"path": str(model_dir), "precision": "fp32", "weight_quantization": "none"},
        "llm_irp": {"max_tokens": 8, "candidates": 3, "min_available_memory_mb": 0, "seed": 7, "stopping": "off",
                    **irp},
        "snarc": {"salience_threshold": 0.0},
        "memory": {"db_path": str(tmp_path / "memory.db")}})
    core = SageCore(cfg, wrap_generator=faults.wrap if faults is not None else None)
    core.load()
    return core


@pytest.fixture
def core(tiny_plain_model_dir, tmp_path):
    core = _core(tiny_plain_model_dir, tmp_path)
    yield core
    core.release()


def test_every_question_of_a_batch_gets_exactly_one_result_in_order(core):
    asks = [Ask(Question(text=f"What is {i}+{i}?", id=f"q{i}")) for i in range(4)]
    results = core.answer_many(asks)
    assert [r.id for r in results] == ["q0", "q1", "q2", "q3"]
    assert all(r.ok and len(r.irp.energies) == 4 for r in results)
    assert core.stats.snapshot()["served"] == 4


def test_greedy_rows_in_a_batch_match_each_question_alone(core):
    questions = [Question(text=t) for t in ("What is 2+2?", "How does compression affect meaning?", "Yes.")]
    alone = [core.engine.refine(q.text) for q in questions]
    together = core.engine.refine_many([RefineJob(q.text) for q in questions])
    for one, many in zip(alone, together):
        g = one.irp.temperatures.index(0.0)
        assert many.candidates[many.irp.temperatures.index(0.0)].token_ids == one.candidates[g].token_ids


def test_a_question_that_ends_early_is_answered_while_the_others_decode(core):
    long = AnswerOptions.resolve(core.engine.cfg).replace(max_tokens=40, min_new_tokens=40)
    short = AnswerOptions.resolve(core.engine.cfg).replace(max_tokens=2)
    order = []
    outs = core.engine.refine_many([RefineJob("Tell me a story.", options=long), RefineJob("Yes?", options=short)],
                                   on_done=lambda index, refined: order.append((index, refined.tokens)))
    assert [i for i, _ in order] == [1, 0]  # the short one first, handed over before the long one ended
    assert [t for _, t in order] == [outs[1].tokens, outs[0].tokens] and outs[0].tokens == 4 * 40
    delivered = []
    results = core.answer_many([Ask(Question(text="one?", id="a")), Ask(Question(text="two?", id="b"))],
                               on_result=lambda index, result: delivered.append((index, result.id)))
    assert sorted(delivered) == [(0, "a"), (1, "b")] and [r.id for r in results] == ["a", "b"]


def test_two_conversations_in_one_batch_share_no_history(core):
    core.answer(Question(text="The robot moves to the kitchen.", conversation="a"))
    core.answer(Question(text="What is 2+2?", conversation="b"))
    seen = []
    real = core.engine.init_state

    def spy(question, context="", history=(), options=None):
        seen.append(list(history))
        return real(question, context, history, options)

    core.engine.init_state = spy
    results = core.answer_many([Ask(Question(text="And then?", conversation="a")),
                                Ask(Question(text="And then?", conversation="b"))])
    assert all(r.ok for r in results)
    assert [[q for q, _ in h] for h in seen] == [["The robot moves to the kitchen."], ["What is 2+2?"]]
    assert [q for q, _ in core.history.get("a")] == ["The robot moves to the kitchen.", "And then?"]
    assert [q for q, _ in core.history.get("b")] == ["What is 2+2?", "And then?"]


def test_a_bad_question_fails_alone(core):
    schema_bad = {"type": "object", "properties": {"x": {"type": "no-such-type"}}}
    results = core.answer_many([Ask(Question(text="fine?", id="a")),
                                Ask(Question(text="bad", id="b", json_schema=schema_bad)),
                                Ask(Question(text="fine too?", id="c")),
                                Ask(Question(text="late", id="d", deadline_s=0.001), received=0.0)])
    assert [r.id for r in results] == ["a", "b", "c", "d"]
    assert results[0].ok and results[2].ok
    assert results[1].error.code == errors.INVALID_INPUT
    assert results[3].error.code == errors.DEADLINE


@pytest.fixture
def faulty_core(tiny_plain_model_dir, tmp_path, request):
    """A core whose first generation call raises ``request.param`` (later calls reach the model)."""
    yield from faulty_core_of(_core, tiny_plain_model_dir, tmp_path, request.param)


@pytest.mark.parametrize("faulty_core", [RuntimeError("batched kernel exploded")], indirect=True)
def test_a_failing_shared_call_is_retried_question_by_question(faulty_core):
    core, faults = faulty_core
    results = core.answer_many([Ask(Question(text="one?")), Ask(Question(text="two?"))])
    assert all(r.ok and len(r.irp.energies) == 4 for r in results)
    # the shared call failed; then each question alone, with all of its rows
    assert [(c.asks("one?", "two?"), c.rows, c.failed) for c in faults.calls] == [
        (["one?", "two?"], 8, True), (["one?"], 4, False), (["two?"], 4, False)]


@pytest.mark.parametrize("faulty_core", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")],
                         indirect=True)
def test_out_of_memory_in_a_batch_decodes_the_questions_again_with_fewer_rows_at_once(faulty_core):
    core, faults = faulty_core
    results = core.answer_many([Ask(Question(text="one?")), Ask(Question(text="two?")), Ask(Question(text="3?"))])
    assert all(r.ok and len(r.irp.energies) == 4 for r in results)
    # the scheduler admits at most half the rows that ran out of memory; every question keeps all its rows
    first, *again = faults.calls
    assert (first.asks("one?", "two?", "3?"), first.rows, first.failed) == (["one?", "two?", "3?"], 12, True)
    assert len(again) > 1 and all(c.rows <= 6 and not c.failed for c in again)
    assert sum(c.rows for c in again) == 12
    assert sorted(t for c in again for t in c.temperatures) == sorted(first.temperatures)


def test_a_cancelled_question_of_a_batch_does_not_stop_the_others(core):
    from sage_irp_ros.serving.worker import Cancel

    stopping = threading.Event()
    stopping.set()
    deactivated = Cancel()
    deactivated.request(errors.SageError(errors.NOT_ACTIVE, "deactivated"))
    results = core.answer_many([Ask(Question(text="one?", id="x"), cancel=stopping), Ask(Question(text="two?")),
                                Ask(Question(text="three?", id="z"), cancel=deactivated)])
    # cancelled before any answer: the canceller's reason, and without one the node is stopping
    assert [(r.id, r.ok, r.error and (r.error.code, r.error.message)) for r in (results[0], results[2])] == [
        ("x", False, (errors.SHUTTING_DOWN, "generation cancelled: the node is stopping")),
        ("z", False, (errors.NOT_ACTIVE, "deactivated"))]
    assert results[1].ok and len(results[1].irp.energies) == 4


def test_sampled_prompts_spread_sampled_rows_and_keep_the_greedy_row(tiny_model_dir, tmp_path):
    plain = _core(tiny_model_dir, tmp_path / "plain", sampled_prompts="0")
    varied = _core(tiny_model_dir, tmp_path / "varied", sampled_prompts="0,1,2")
    try:
        state = varied.engine.init_state("What is 2+2?")
        assert sorted(state.variants) == [1, 2]
        requests = varied.engine.round_requests(state)
        assert [r.temperatures for r in requests] == [[0.7, 0.0], [0.647], [0.594]]
        assert len({tuple(r.prompt_ids) for r in requests}) == 3
        assert requests[1].messages[0]["role"] == "system"
        a, b = plain.engine.refine("What is 2+2?"), varied.engine.refine("What is 2+2?")
        assert len(b.irp.energies) == 4 and sorted(b.irp.temperatures) == sorted(a.irp.temperatures)
        greedy_a = a.candidates[a.irp.temperatures.index(0.0)]
        greedy_b = b.candidates[b.irp.temperatures.index(0.0)]
        assert greedy_a.token_ids == greedy_b.token_ids
        one = varied.engine.init_state("What is 2+2?", options=AnswerOptions.resolve(
            varied.engine.cfg).replace(sampled_prompts=(2,)))
        assert [r.temperatures for r in varied.engine.round_requests(one)] == [[0.0], [0.7, 0.647, 0.594]]
    finally:
        plain.release()
        varied.release()


def test_sampled_prompts_must_name_phrasings_of_the_bank():
    from sage_irp_ros.config.settings import ConfigError

    for bad in ("x", "9", "", "1,-1"):
        with pytest.raises(ConfigError, match="sampled_prompts"):
            SageConfig.from_mapping({"llm_irp": {"sampled_prompts": bad}})
