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

"""The stopping rules of irp/stopping.py on synthetic question states (no model)."""

import math

import pytest

from sage_irp_ros.irp.stopping import (CONFIDENT_GREEDY, FINISHED_AGREE, LOW_CONFIDENCE, PAST_GREEDY_LENGTH,
                                       AgreementStop, ConfidencePrune, ConfidentGreedy, LengthCap, QuestionState,
                                       RowState, Sequential, StoppingRule, StoppingRules, greedy_confidence)

pytestmark = pytest.mark.unit


def row(temperature: float, logprobs: list[float], finished: bool = False, text: str | None = None) -> RowState:
    r = RowState(temperature)
    for n, lp in enumerate(logprobs):
        r.push(lp, 100 + n)
    r.finished = finished
    r.text = text if text is not None else ("an answer" if finished else None)
    return r


def test_row_state_keeps_running_sums():
    r = row(0.7, [-1.0, -2.0, -3.0, -6.0])
    assert r.steps == 4 and r.token_ids == [100, 101, 102, 103]
    assert r.mean_nll() == pytest.approx(3.0)
    assert r.window_nll(2) == pytest.approx(4.5)
    assert r.window_nll(10) == pytest.approx(3.0)  # fewer tokens than the window: all of them
    assert math.isinf(RowState(0.7).mean_nll()) and math.isinf(RowState(0.7).window_nll(4))
    r.push(-0.5)  # the end-of-sequence step carries a log-prob but no token id
    assert r.steps == 5 and len(r.token_ids) == 4
    assert r.running and not row(0.0, [-1.0], finished=True).running
    cut = row(0.7, [-1.0])
    cut.cut = True
    assert not cut.running and cut.live


def test_base_rule_never_stops():
    q = QuestionState([row(0.0, [-0.1], finished=True)], step=1)
    assert StoppingRule().rows_to_drop(q) == ([], None) and StoppingRule().ends_question(q) is None


def test_confident_greedy_ends_on_a_finished_low_nll_greedy_row():
    rule = ConfidentGreedy(max_nll=0.7)
    sampled = row(0.7, [-2.0] * 5)
    assert rule.ends_question(QuestionState([sampled, row(0.0, [-0.2] * 4, finished=True)])) == CONFIDENT_GREEDY
    assert rule.ends_question(QuestionState([sampled, row(0.0, [-0.2] * 4)])) is None  # still running
    assert rule.ends_question(QuestionState([sampled, row(0.0, [-1.5] * 4, finished=True)])) is None
    assert rule.ends_question(QuestionState([sampled, row(0.0, [-0.2], finished=True, text=" ")])) is None
    assert rule.ends_question(QuestionState([row(0.7, [-0.1] * 4, finished=True)])) is None  # no greedy row


def test_confident_greedy_calibrated_floor():
    greedy = row(0.0, [-0.2] * 4, finished=True)
    assert ConfidentGreedy(max_nll=math.inf, min_confidence=0.8, confidence=lambda r: 0.9).confident(greedy)
    assert not ConfidentGreedy(max_nll=math.inf, min_confidence=0.8, confidence=lambda r: 0.7).confident(greedy)
    # the shipped calibration: a confident row scores above a doubtful one, both probabilities
    sure = greedy_confidence(row(0.0, [-0.1] * 8, finished=True, text="The capital of France is Paris."))
    doubtful = greedy_confidence(row(0.0, [-2.5] * 8, finished=True, text="The capital of France is Lyon."))
    assert 0.0 <= doubtful < sure <= 1.0


def test_length_cap_drops_sampled_rows_far_past_the_greedy_row():
    rule = LengthCap(factor=1.5, slack=2)
    greedy = row(0.0, [-0.5] * 10, finished=True)
    long, short = row(0.7, [-0.5] * 18), row(0.6, [-0.5] * 17)
    assert rule.rows_to_drop(QuestionState([long, short, greedy])) == ([0], PAST_GREEDY_LENGTH)  # cap 17
    assert rule.rows_to_drop(QuestionState([long, short, row(0.0, [-0.5] * 10)])) == ([], None)  # greedy running
    assert rule.rows_to_drop(QuestionState([row(0.7, [-0.5] * 18, finished=True), greedy])) == ([], None)


def test_confidence_prune_drops_rows_far_below_the_leader():
    rule = ConfidencePrune(margin=1.0, window=4, min_steps=4)
    leader, drifting, fine = row(0.0, [-0.2] * 8), row(0.7, [-0.2] * 4 + [-2.0] * 4), row(0.6, [-0.9] * 8)
    assert rule.rows_to_drop(QuestionState([drifting, fine, leader])) == ([0], LOW_CONFIDENCE)
    bad_greedy = row(0.0, [-3.0] * 8)  # the greedy row is never dropped
    assert rule.rows_to_drop(QuestionState([row(0.7, [-0.1] * 8), bad_greedy])) == ([], None)
    young = row(0.7, [-3.0] * 3)  # judged only from min_steps on
    assert rule.rows_to_drop(QuestionState([young, leader])) == ([], None)
    assert rule.rows_to_drop(QuestionState([drifting])) == ([], None)  # nobody to compare with


def test_agreement_stop_needs_agreeing_finished_rows():
    rule = AgreementStop(min_finished=2, min_agreement=0.6)
    paris = [row(0.7, [-0.3] * 5, finished=True, text="The capital is Paris."),
             row(0.0, [-0.3] * 5, finished=True, text="Paris is the capital.")]
    running = row(0.6, [-0.3] * 9)
    assert rule.ends_question(QuestionState([*paris, running])) == FINISHED_AGREE
    assert rule.ends_question(QuestionState(paris)) is None  # nothing left running: nothing to save
    lyon = row(0.7, [-0.3] * 5, finished=True, text="Lyon, in the south east.")
    assert rule.ends_question(QuestionState([lyon, paris[1], running])) is None
    majority = AgreementStop(min_finished=2, min_agreement=0.6, majority=True)
    assert majority.ends_question(QuestionState([*paris, running, row(0.5, [-0.3] * 9)])) is None  # 2 of 4
    assert majority.ends_question(QuestionState([*paris, running])) == FINISHED_AGREE  # 2 of 3


def test_rule_set_drops_then_ends_and_the_running_sampled_rows_leave():
    greedy = row(0.0, [-0.2] * 6, finished=True, text="Four.")
    far, running = row(0.7, [-0.4] * 30), row(0.6, [-0.4] * 8)
    q = QuestionState([far, running, greedy], step=30)
    decision = StoppingRules([LengthCap(factor=2.0, slack=4), ConfidentGreedy(max_nll=0.7)]).check(q)
    assert decision.ends == CONFIDENT_GREEDY
    assert decision.dropped == {0: PAST_GREEDY_LENGTH, 1: CONFIDENT_GREEDY}
    assert far.dropped == PAST_GREEDY_LENGTH and running.dropped == CONFIDENT_GREEDY and greedy.live


def test_rule_set_keeps_cut_rows_when_asked_and_never_drops_a_running_greedy_row():
    running, greedy = row(0.7, [-0.4] * 8), row(0.0, [-0.3] * 8)
    done = [row(0.6, [-0.3] * 4, finished=True, text="Paris."), row(0.5, [-0.3] * 4, finished=True, text="Paris.")]
    q = QuestionState([running, *done, greedy])
    decision = StoppingRules([AgreementStop()], cut_rows_are_candidates=True).check(q)
    assert decision.ends == FINISHED_AGREE and decision.dropped == {} and running.live
    q = QuestionState([row(0.7, [-0.4] * 8), *done, greedy])
    decision = StoppingRules([AgreementStop()]).check(q)
    assert decision.dropped == {0: FINISHED_AGREE} and greedy.live  # the greedy row is cut, not dropped
    assert StoppingRules([LengthCap(), AgreementStop()]).names == [PAST_GREEDY_LENGTH, FINISHED_AGREE]


def test_no_rule_no_decision():
    q = QuestionState([row(0.7, [-3.0] * 50), row(0.0, [-0.1] * 4, finished=True)])
    decision = StoppingRules().check(q)
    assert decision.ends is None and decision.dropped == {} and all(r.live for r in q.rows)


def test_sequential_runs_sampled_rows_only_after_a_doubtful_greedy_row():
    schedule = Sequential(ConfidentGreedy(max_nll=0.7))
    assert not schedule.sampled_rows_needed(row(0.0, [-0.2] * 5, finished=True))
    assert schedule.sampled_rows_needed(row(0.0, [-1.2] * 5, finished=True))
    assert schedule.sampled_rows_needed(row(0.0, [-0.2] * 150))  # cut at max_tokens: not an answer to trust
