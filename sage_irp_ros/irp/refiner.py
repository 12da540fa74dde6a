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

"""Many questions refined over one decode session, one step at a time.

A :class:`Refiner` is what a scheduler drives: :meth:`Refiner.add` a question between two steps (its first
round's row groups join the session at once), :meth:`Refiner.step` one decode step of every running row;
it returns the questions that halted during that step. Each question goes round by round on its own: when
its round's requests have all finished, the IRP engine absorbs them (scores, keeps the best, checks halt)
and its next round joins the session at the next step, whatever the other questions are doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

from sage_irp_ros.decoding.generator import Batch, DecodeSession, open_session
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.state import IRPState, RefineJob, Refinement  # noqa: F401 - in Outcome

Outcome = tuple[Hashable, "Refinement | Exception"]


@dataclass
class _Question:
    """One question in the refiner: its job, its state, and its current round's batches so far."""

    job: RefineJob
    state: IRPState
    round_size: int = 0
    got: dict[int, Batch] = field(default_factory=dict)


class Refiner:
    """Questions of one :class:`~sage_irp_ros.irp.engine.IRPEngine`, refined together step by step."""

    def __init__(self, engine, max_rows: int, session: DecodeSession | None = None):
        """``max_rows``: the most rows decoding at once (the session's bound); ``session``: default, one
        opened on the engine's generator."""
        self.engine, self.max_rows = engine, max_rows
        self.session = session if session is not None else open_session(engine.generator, max_rows)
        self.questions: dict[Hashable, _Question] = {}

    @property
    def busy(self) -> bool:
        """True while a question is refining."""
        return bool(self.questions)

    def add(self, key: Hashable, job: RefineJob) -> list[Outcome]:
        """Start refining ``job`` under ``key``: its first round joins the session. Returns ``[(key,
        error)]`` when its prompt cannot be built or the session refuses its rows, ``[(key, refinement)]``
        when there is nothing to decode."""
        try:
            state = self.engine.init_state(job.question, job.context, job.history, job.options)
        except SageError as exc:
            return [(key, exc)]
        self.questions[key] = _Question(job, state)
        together = len(self.questions)
        for question in self.questions.values():
            question.state.batch = max(question.state.batch, together)
        return self._next_round(key)

    def step(self) -> list[Outcome]:
        """One decode step of every running row; the questions that halted during it. An exception of the
        session propagates (the caller takes the questions back with :meth:`abandon`)."""
        out: list[Outcome] = []
        for (key, position), batch in self.session.step():
            question = self.questions.get(key)
            if question is None:
                continue
            question.got[position] = batch
            if len(question.got) == question.round_size:
                batches = [question.got[p] for p in range(question.round_size)]
                question.got = {}
                self.engine.absorb(question.state, batches)
                out += self._next_round(key)
        return out

    def abandon(self) -> list[tuple[Hashable, RefineJob]]:
        """Drop every question (the session failed): their keys and jobs, to refine again elsewhere."""
        jobs = [(key, question.job) for key, question in self.questions.items()]
        self.questions.clear()
        self.session.close()
        self.session = open_session(self.engine.generator, self.max_rows)
        return jobs

    def _next_round(self, key: Hashable) -> list[Outcome]:
        """Submit the question's next round, or hand it over when it halts or has nothing left to sample."""
        question, engine = self.questions[key], self.engine
        requests = [] if engine.halt(question.state) else engine.round_requests(question.state)
        if not requests:
            engine.spent(question.state)
            del self.questions[key]
            return [(key, engine.get_result(question.state))]
        question.round_size = len(requests)
        try:
            for position, request in enumerate(requests):
                self.session.submit(request, (key, position))
        except Exception as exc:  # noqa: BLE001 - a request the session refuses fails its question alone
            del self.questions[key]  # rows already submitted finish unread
            return [(key, exc)]
        return []
