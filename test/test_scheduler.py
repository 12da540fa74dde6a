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

"""The serving run's scheduler on a real tiny Llama: questions join between decode steps, a short one
that joins a long one's decode is answered first, and results are delivered off the decode thread."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.irp.refiner import Refiner
from sage_irp_ros.irp.state import RefineJob
from sage_irp_ros.questions import Question
from sage_irp_ros.serving.core import Ask, SageCore

pytestmark = pytest.mark.model
TIMEOUT = 120.0


@pytest.fixture
def core(tiny_plain_model_dir, tmp_path):
    cfg = SageConfig.from_mapping({
        "model": {"path": str(tiny_plain_model_dir), "precision": "fp32", "weight_quantization": "none"},
        "llm_irp": {"max_tokens": 48, "candidates": 3, "min_available_memory_mb": 0, "seed": 7, "stopping": "off"},
        "snarc": {"salience_threshold": 0.0},
        "memory": {"db_path": str(tmp_path / "memory.db")}})
    core = SageCore(cfg)
    core.load()
    yield core
    core.release()


def _lengths(core, lengths: dict[str, tuple[int, int]]) -> None:
    """Questions with these ids decode (max_tokens, min_new_tokens): their lengths fixed, whatever the
    tiny model's end-of-sequence."""
    real = core._prepare

    def prepare(engine, ask, start):
        prepared = real(engine, ask, start)
        if ask.question.id in lengths:
            most, least = lengths[ask.question.id]
            options = prepared.options.replace(max_tokens=most, min_new_tokens=least)
            prepared = dataclasses.replace(prepared, options=options, job=prepared.job._replace(options=options))
        return prepared

    core._prepare = prepare


def test_a_short_question_joining_a_long_ones_decode_starts_at_once_and_is_answered_first(core):
    """The short question arrives after the long one's first step: it joins at the next step (the long
    one has decoded one token then, of its 40), and its result is delivered while the long one decodes."""
    _lengths(core, {"long": (40, 40), "short": (2, 0)})
    long = Question(text="Tell me a long story about a robot.", id="long")
    short = Question(text="Yes?", id="short")
    calls, order = [], []

    def more(refining: int, conversations: set) -> list[Ask]:
        calls.append(refining)
        return [Ask(short)] if len(calls) == 1 else []

    results = core.answer_many([Ask(long)], on_result=lambda index, result: order.append(result.id), more=more)
    assert [r.id for r in results] == ["long", "short"] and all(r.ok for r in results)
    assert order == ["short", "long"]
    assert calls[0] == 1  # the first pull came after one step, with the long question refining
    assert results[1].irp.batch == 2 and results[0].irp.batch == 2
    assert results[0].timing.tokens == 4 * 40 and results[1].timing.tokens <= 4 * 2


def test_rows_of_a_joining_question_get_the_tokens_they_get_alone(core):
    """Greedy rows are token-identical to their question decoded alone, joined mid-decode or not."""
    options = core.engine.default_options().replace(max_tokens=12)
    alone = core.engine.refine("What is 2+2?", options=options)
    refiner = Refiner(core.engine, max_rows=16)
    assert refiner.add("long", RefineJob("Tell me a story.", options=options.replace(
        max_tokens=30, min_new_tokens=30))) == []
    for _ in range(5):
        assert refiner.step() == []
    refiner.add("short", RefineJob("What is 2+2?", options=options))
    done = {}
    while refiner.busy:
        done.update(refiner.step())
    greedy = alone.irp.temperatures.index(0.0)
    joined = done["short"]
    assert joined.candidates[joined.irp.temperatures.index(0.0)].token_ids == alone.candidates[greedy].token_ids


def test_results_are_delivered_off_the_decode_thread(core):
    """The second question's conclusion (on the decode thread) waits for the first one's delivery — its
    SNARC, its write to the store and on_result — which can only happen on a thread of its own that no
    lock of the running generation holds up."""
    delivered, real = threading.Event(), core._conclude
    threads, waited = [], []

    def conclude(engine, prepared, refined):
        if prepared.question.id == "b":
            waited.append(delivered.wait(TIMEOUT))
        return real(engine, prepared, refined)

    def on_result(index, result):
        threads.append(threading.current_thread().name)
        if result.id == "a":
            assert len(core.store.query()) == 1  # written before it was handed on
            delivered.set()

    core._conclude = conclude
    _lengths(core, {"a": (2, 0), "b": (24, 24)})
    a, b = Question(text="Yes?", id="a"), Question(text="Tell me about robots.", id="b")
    results = core.answer_many([Ask(a), Ask(b)], on_result=on_result)
    assert all(r.ok for r in results) and waited == [True]
    assert threads and all(name.startswith("sage_irp_results") for name in threads)
    assert threading.current_thread().name not in threads
    assert len(core.store.query()) == 2  # both written (salience threshold 0) when answer_many returns
