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

"""Adaptive IRP: the stopping rules reach the decode loops through the request's watch, on both forwards,
in both schedules; ``auto`` follows the measured row cost."""

from __future__ import annotations

import pytest

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import GenerationRequest, RowView
from sage_irp_ros.decoding.llama_cpp_forward import unavailable
from sage_irp_ros.irp.adaptive import SEQUENTIAL_ABOVE, choose_schedule, rules_from
from sage_irp_ros.irp.stopping import CONFIDENT_GREEDY, FINISHED_AGREE, QuestionWatch
from sage_irp_ros.questions import Question
from sage_irp_ros.serving.core import SageCore


def _request(temperatures) -> GenerationRequest:
    return GenerationRequest([1, 2, 3], temperatures, max_new_tokens=20)


@pytest.mark.unit
def test_auto_is_sequential_only_on_board_where_an_extra_row_costs_most_of_a_row():
    assert choose_schedule("auto", SEQUENTIAL_ABOVE + 0.5, on_board=True) == "sequential"
    assert choose_schedule("auto", SEQUENTIAL_ABOVE - 0.5, on_board=True) == "parallel"
    assert choose_schedule("auto", None, on_board=True) == "parallel"  # not measured (no warm-up)
    assert choose_schedule("auto", 9.0, on_board=False) == "parallel"  # a server batches its rows
    assert choose_schedule("off", 9.0, on_board=True) == "off"


@pytest.mark.unit
def test_a_confident_greedy_row_ends_the_question_across_its_row_groups():
    """Two requests of one question share the watch: the greedy row finishing confident in one sends the
    other request's sampled rows away, which are then no candidates."""
    watch = QuestionWatch(rules_from(SageConfig().llm_irp), detokenize=lambda ids: "four" if ids else "")
    plain, other = _request([0.7, 0.0]), _request([0.65, 0.6])
    running = RowView([5, 6], [-0.5, -0.4], ended=False, finished=False)
    assert watch.rows_to_leave(other, [running, running]) == []
    greedy_done = RowView([5, 2], [-0.1, -0.05], ended=True, finished=True)  # token 2 = end of sequence
    assert watch.rows_to_leave(plain, [running, greedy_done]) == [0]
    assert watch.ended == CONFIDENT_GREEDY
    assert watch.rows_to_leave(other, [running, running]) == [0, 1]
    assert watch.dropped(plain, 1) is None and watch.dropped(plain, 0) == CONFIDENT_GREEDY
    assert watch.counts == {CONFIDENT_GREEDY: 3}


@pytest.mark.unit
def test_finished_rows_that_agree_end_the_question():
    cfg = SageConfig().with_updates({"llm_irp.stop_greedy_nll": 0.0, "llm_irp.stop_greedy_confidence": 0.0})
    texts = {5: "the dock is north", 6: "north of the dock"}
    watch = QuestionWatch(rules_from(cfg.llm_irp), detokenize=lambda ids: texts[ids[0]])
    request = _request([0.7, 0.65, 0.0])
    views = [RowView([5, 2], [-1.0, -1.0], True, True), RowView([6, 2], [-1.0, -1.0], True, True),
             RowView([7, 8], [-1.0, -1.0], False, False)]
    assert watch.rows_to_leave(request, views) == [2] and watch.ended == FINISHED_AGREE
    assert watch.dropped(request, 2) is None  # the greedy row is cut, never dropped


needs_llama = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")


@pytest.fixture(scope="module", params=["llama_cpp", "torch"])
def embedded_core(request, tmp_path_factory):
    if request.param == "llama_cpp" and unavailable():
        pytest.skip(unavailable())
    cfg = SageConfig.from_mapping({"model": {"forward": request.param, "warmup": False},
                                   "memory": {"db_path": "none"}, "llm_irp": {"seed": 3}})
    core = SageCore(cfg)
    core.load()
    yield core
    core.release()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("stopping", ["parallel", "sequential"])
def test_a_confident_question_costs_about_its_greedy_row(embedded_core, stopping):
    """'What is 2+2?' on the embedded model: its greedy row finishes confident, so the sampled rows leave
    (parallel) or never start (sequential); with stopping off every row runs to its end."""
    core = embedded_core
    core.reconfigure(core.cfg.with_updates({"llm_irp.stopping": stopping}))
    adaptive = core.answer(Question(text="What is 2+2?"))
    core.reconfigure(core.cfg.with_updates({"llm_irp.stopping": "off"}))
    full = core.answer(Question(text="What is 2+2?"))
    assert adaptive.ok and "4" in adaptive.answer and adaptive.irp.stopping == stopping
    assert adaptive.irp.halt_reason == CONFIDENT_GREEDY
    assert len(full.irp.energies) == 4 and full.irp.stopping == "off" and not full.irp.dropped
    assert adaptive.timing.tokens < full.timing.tokens
    if stopping == "sequential":
        assert len(adaptive.irp.energies) == 1 and not adaptive.irp.dropped
    else:
        assert adaptive.irp.dropped.get(CONFIDENT_GREEDY, 0) >= 1 and len(adaptive.irp.energies) < 4
