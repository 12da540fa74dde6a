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

"""Stopping rules: which rows of a question may stop early, and when the whole question may end.

At the defaults every row of a question decodes to its end, whether or not it can still change the
pick. The rules here are checked between decode steps on what the engine already has of each row (its
tokens and their untempered log-probs so far, whether it finished and its text) and answer two
questions: which running rows to drop (a dropped row is no longer a candidate) and whether the question
ends now (the sampled rows still running leave, the greedy row is cut at this step if it is still
running, and the pick is made among what remains).

- :class:`ConfidentGreedy` (``confident_greedy``): the greedy row finished with a low mean NLL (and,
  optionally, a calibrated confidence, docs/confidence.md, at or above a floor): the question ends.
- :class:`LengthCap` (``past_greedy_length``): once the greedy row finished, sampled rows that run far
  past its length are dropped (their answers are rambling, and they set the question's latency).
- :class:`ConfidencePrune` (``low_confidence``): a sampled row whose recent tokens' mean NLL is far
  above the leader's (the live row with the lowest mean NLL) is dropped (DeepConf-like).
- :class:`AgreementStop` (``finished_agree``): enough finished rows say the same thing that the rows
  still running are unlikely to change the pick (Early-Stopping Self-Consistency, Adaptive-Consistency).
- :class:`Sequential`: the schedule where the greedy row decodes alone first and the sampled rows start
  only when its gate (a :class:`ConfidentGreedy`) does not end the question.

The greedy row is never dropped: it is the answer of last resort. Pure Python, no torch: the
offline replay (bench/quality/adaptive.py) runs the very objects the engine calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sage_irp_ros.decoding.generator import Candidate
from sage_irp_ros.irp.selection import overlap_f1, words

CONFIDENT_GREEDY, PAST_GREEDY_LENGTH = "confident_greedy", "past_greedy_length"
LOW_CONFIDENCE, FINISHED_AGREE = "low_confidence", "finished_agree"


@dataclass
class RowState:
    """One row of a question between decode steps: what it produced so far.

    ``push`` adds one decoded token; running sums keep every check O(1) per row and step.
    ``token_logprobs`` are untempered, as on :class:`Candidate` (a finished row's last one is its
    end-of-sequence token's). ``text`` is set by the engine when the row finishes.
    """

    temperature: float
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finished: bool = False
    text: str | None = None
    cut: bool = False  # ended without finishing: max_tokens reached (still a candidate)
    dropped: str | None = None  # the rule's name, once a rule dropped this row
    _cumulative: list[float] = field(default_factory=lambda: [0.0], repr=False)

    def push(self, logprob: float, token_id: int | None = None) -> None:
        """One more decoded token (``token_id`` None for the end-of-sequence step)."""
        if token_id is not None:
            self.token_ids.append(token_id)
        self.token_logprobs.append(logprob)
        self._cumulative.append(self._cumulative[-1] - logprob)

    @property
    def steps(self) -> int:
        """Decode steps this row has run (tokens produced, the end-of-sequence token included)."""
        return len(self.token_logprobs)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def live(self) -> bool:
        """Not dropped: still a candidate (running or finished)."""
        return self.dropped is None

    @property
    def running(self) -> bool:
        return self.dropped is None and not self.finished and not self.cut

    def mean_nll(self) -> float:
        """Mean negative log-likelihood (nats/token) so far; inf before the first token."""
        return self._cumulative[-1] / self.steps if self.steps else math.inf

    def window_nll(self, window: int) -> float:
        """Mean NLL of the last ``window`` tokens (all of them while fewer): a row's recent confidence."""
        n = min(window, self.steps)
        return (self._cumulative[-1] - self._cumulative[-1 - n]) / n if n else math.inf

    def candidate(self) -> Candidate:
        """The row as a finished (or cut) candidate, for the confidence model."""
        return Candidate(self.text or "", self.temperature, list(self.token_ids), list(self.token_logprobs),
                         self.finished)


@dataclass
class QuestionState:
    """All rows of one question at decode step ``step`` (rows in the engine's order)."""

    rows: list[RowState]
    step: int = 0
    max_tokens: int = 0

    @property
    def greedy(self) -> RowState | None:
        return next((r for r in self.rows if r.is_greedy), None)

    def running(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r.running]

    def finished(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r.finished and r.live]


class StoppingRule:
    """A rule checked between decode steps; the base class never drops a row nor ends a question."""

    name = "none"

    def rows_to_drop(self, question: QuestionState) -> tuple[list[int], str | None]:
        """(indices of running rows to drop now, this rule's name), or ([], None)."""
        return [], None

    def ends_question(self, question: QuestionState) -> str | None:
        """This rule's name when the question should end now, else None."""
        return None


def greedy_confidence(row: RowState) -> float:
    """The shipped calibrated confidence (docs/confidence.md) of ``row`` as a lone candidate, as the
    engine would report it for the greedy row alone (the consensus energy of one candidate)."""
    from sage_irp_ros.irp.confidence import shipped
    from sage_irp_ros.irp.selection import Consensus

    candidate = row.candidate()
    return shipped().free_text_confidence([candidate], Consensus().energies([candidate], [], 0.7), 0)


@dataclass
class ConfidentGreedy(StoppingRule):
    """The question ends when the greedy row has finished with mean NLL <= ``max_nll`` and a calibrated
    confidence >= ``min_confidence`` (each test off at 0 and inf respectively)."""

    max_nll: float = 0.7
    min_confidence: float = 0.0
    confidence: Callable[[RowState], float] = greedy_confidence
    name = CONFIDENT_GREEDY

    def confident(self, row: RowState) -> bool:
        """Whether a finished greedy row is confident enough to be the answer alone."""
        if not row.finished or not row.text or not row.text.split():
            return False
        if row.mean_nll() > self.max_nll:
            return False
        return self.min_confidence <= 0.0 or self.confidence(row) >= self.min_confidence

    def ends_question(self, question: QuestionState) -> str | None:
        greedy = question.greedy
        return self.name if greedy is not None and self.confident(greedy) else None


@dataclass
class LengthCap(StoppingRule):
    """Once the greedy row finished after L steps, sampled rows running past ``factor * L + slack`` steps
    are dropped."""

    factor: float = 2.0
    slack: int = 16
    name = PAST_GREEDY_LENGTH

    def rows_to_drop(self, question: QuestionState) -> tuple[list[int], str | None]:
        greedy = question.greedy
        if greedy is None or not greedy.finished:
            return [], None
        cap = self.factor * greedy.steps + self.slack
        rows = [i for i in question.running() if not question.rows[i].is_greedy and question.rows[i].steps > cap]
        return rows, (self.name if rows else None)


@dataclass
class ConfidencePrune(StoppingRule):
    """A running sampled row is dropped when the mean NLL of its last ``window`` tokens exceeds the
    leader's mean NLL by more than ``margin`` nats (the leader: the live row with the lowest mean NLL that
    has ``min_steps`` tokens); rows are judged only from ``min_steps`` on."""

    margin: float = 1.0
    window: int = 16
    min_steps: int = 8
    name = LOW_CONFIDENCE

    def rows_to_drop(self, question: QuestionState) -> tuple[list[int], str | None]:
        judged = [r for r in question.rows if r.live and r.steps >= self.min_steps]
        if len(judged) < 2:
            return [], None
        leader = min(r.mean_nll() for r in judged)
        rows = [i for i in question.running()
                if not question.rows[i].is_greedy and question.rows[i].steps >= self.min_steps
                and question.rows[i].window_nll(self.window) - leader > self.margin]
        return rows, (self.name if rows else None)


@dataclass
class AgreementStop(StoppingRule):
    """The question ends when at least ``min_finished`` live rows have finished and every pair of their
    answers shares words with unigram F1 >= ``min_agreement``; with ``majority`` they must also be more
    than half of the live rows, so that the rows still running cannot outvote them."""

    min_finished: int = 2
    min_agreement: float = 0.6
    majority: bool = False
    name = FINISHED_AGREE

    def ends_question(self, question: QuestionState) -> str | None:
        done = question.finished()
        if len(done) < self.min_finished or not question.running():
            return None
        if self.majority and 2 * len(done) <= sum(r.live for r in question.rows):
            return None
        bags = [words(question.rows[i].text or "") for i in done]
        agree = all(overlap_f1(bags[a], bags[b]) >= self.min_agreement
                    for a in range(len(bags)) for b in range(a + 1, len(bags)))
        return self.name if agree else None


@dataclass
class Decision:
    """What one check decided: rows dropped now (index -> rule name) and why the question ends, if it does."""

    dropped: dict[int, str] = field(default_factory=dict)
    ends: str | None = None


@dataclass
class StoppingRules:
    """Rules checked in order between decode steps; drops are applied to the state (``RowState.dropped``)
    before the end tests, so an end test sees the rows that remain.

    When a rule ends the question, the sampled rows still running leave too (dropped, with the ending
    rule's name): half an answer is a poor candidate (keeping them, cut, lost accuracy on the tuning half,
    docs/performance.md "Adaptive IRP"; ``cut_rows_are_candidates`` keeps them). A greedy row still running
    is cut and stays: the answer of last resort.
    """

    rules: Sequence[StoppingRule] = ()
    cut_rows_are_candidates: bool = False

    def check(self, question: QuestionState) -> Decision:
        decision = Decision()
        for rule in self.rules:
            rows, reason = rule.rows_to_drop(question)
            for i in rows:
                if question.rows[i].running and not question.rows[i].is_greedy:
                    question.rows[i].dropped = reason or rule.name
                    decision.dropped[i] = question.rows[i].dropped
        for rule in self.rules:
            reason = rule.ends_question(question)
            if reason is not None:
                decision.ends = reason
                break
        if decision.ends is not None and not self.cut_rows_are_candidates:
            for i in question.running():
                if not question.rows[i].is_greedy:
                    question.rows[i].dropped = decision.dropped[i] = decision.ends
        return decision

    @property
    def names(self) -> list[str]:
        return [rule.name for rule in self.rules]


@dataclass
class Sequential:
    """The greedy row first, alone; the sampled rows only when ``gate`` does not end the question.

    Where each row costs about a row (a CPU) this saves the sampled rows' compute on every confident
    question; where extra rows are nearly free (a GPU) it costs latency, so the parallel form (all rows
    at once, ``gate`` among the rules) is the other schedule.
    """

    gate: ConfidentGreedy = field(default_factory=ConfidentGreedy)

    def sampled_rows_needed(self, greedy: RowState) -> bool:
        """After the greedy row finished: whether the sampled rows must run."""
        return not self.gate.confident(greedy)


class QuestionWatch:
    """One question's rules, fed by the decode loops between steps (a :class:`~sage_irp_ros.decoding.
    generator.RowWatch`): every request (row group) of the question shares it, so the rules see the
    greedy row and the sampled rows of every prompt together.

    ``ended`` is the rule that ended the question (None while none has); :meth:`dropped` says which rows a
    rule dropped (they are no candidates); :attr:`counts` how many rows each rule dropped.
    """

    def __init__(self, rules: StoppingRules, detokenize: Callable[[list[int]], str]):
        self.rules, self.detokenize = rules, detokenize
        self.state = QuestionState(rows=[])
        self.ended: str | None = None
        self._first: dict[int, int] = {}  # id(request) -> index of its first row in state.rows

    def rows_to_leave(self, request, rows) -> list[int]:
        """Update the question from ``request``'s rows (``RowView``s), check the rules; the indices of the
        request's running rows that leave now (dropped, or the question ended)."""
        first = self._first.get(id(request))
        if first is None:
            first = self._first[id(request)] = len(self.state.rows)
            self.state.rows += [RowState(float(t)) for t in request.temperatures]
        for k, view in enumerate(rows):
            self._update(self.state.rows[first + k], view)
        self.state.step = max((r.steps for r in self.state.rows), default=0)
        if self.ended is None:
            self.ended = self.rules.check(self.state).ends
        return [k for k, view in enumerate(rows) if not view.ended
                and (self.ended is not None or self.state.rows[first + k].dropped is not None)]

    def _update(self, row: RowState, view) -> None:
        last = len(view.tokens) - 1
        for i in range(row.steps, len(view.tokens)):
            end_of_sequence = view.finished and i == last
            row.push(float(view.logprobs[i]), None if end_of_sequence else int(view.tokens[i]))
        if view.ended and not (row.finished or row.cut):
            if view.finished:
                row.finished, row.text = True, self.detokenize(row.token_ids)
            else:
                row.cut = True

    def dropped(self, request, index: int) -> str | None:
        """The rule that dropped row ``index`` of ``request`` (None: it is a candidate)."""
        first = self._first.get(id(request))
        return None if first is None else self.state.rows[first + index].dropped

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.state.rows:
            if row.dropped is not None:
                out[row.dropped] = out.get(row.dropped, 0) + 1
        return out


def greedy_row(candidate: Candidate) -> RowState:
    """A decoded greedy candidate as a finished (or cut) row, for the sequential schedule's gate."""
    row = RowState(0.0)
    for i, logprob in enumerate(candidate.token_logprobs):
        row.push(float(logprob), candidate.token_ids[i] if i < len(candidate.token_ids) else None)
    row.finished, row.cut, row.text = candidate.finished, not candidate.finished, candidate.text
    return row
