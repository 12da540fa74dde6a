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

"""The scheduler of one serving run: questions join between decode steps, results leave as they halt.

:class:`Scheduler` is driven by the decode thread: :meth:`Scheduler.add` prepares questions and puts their
rows into the running decode session (one :class:`~sage_irp_ros.irp.refiner.Refiner` per engine: on
board, remote), :meth:`Scheduler.step` decodes one step and concludes each question that halted during it
(its answer form's last look, which may score with the model, and its history). What follows — SNARC,
the result, the memory store's write and the front end's ``on_result`` (the node publishes there) — runs
on one delivery thread, in the order questions concluded, while decoding goes on.

When a step fails, its questions are taken back and refined again: after running out of memory with fewer
rows at once (half, down to one question at a time), and a question alone with fewer candidates
(:meth:`AnswerOptions.reduced`), then it fails with ``out_of_memory``; after any other failure of a step
shared by several questions, each on its own, so one question's fault stays its own.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

from sage_irp_ros.irp.engine import IRPEngine
from sage_irp_ros.irp.refiner import Refiner
from sage_irp_ros.irp.state import RefineJob, Refinement
from sage_irp_ros.results import Result
from sage_irp_ros.serving.refining import free_memory, is_out_of_memory, refine_alone, retry_fewer

if TYPE_CHECKING:
    from sage_irp_ros.serving.core import Ask, SageCore

log = logging.getLogger(__name__)


class Scheduler:
    """One run of :meth:`SageCore.answer_many`: every question added gets exactly one result."""

    def __init__(self, core: "SageCore", delivery: Executor, on_result: Callable[[int, Result], None] | None,
                 max_rows: int):
        self.core, self.delivery, self.on_result, self.max_rows = core, delivery, on_result, max_rows
        self.asks: list[Ask] = []
        self.refiners: dict[IRPEngine, Refiner] = {}
        self.prepared: dict[int, Any] = {}  # index -> (engine, prepared), while it refines
        self.handed: dict[int, Future] = {}  # index -> its result, delivered or being delivered
        self.started: dict[int, float] = {}  # index -> when it was added (its result's start of work)

    # -- the run --------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a question refines."""
        return any(refiner.busy for refiner in self.refiners.values())

    @property
    def refining(self) -> list["Ask"]:
        """The questions added and not concluded yet."""
        return [self.asks[i] for i in self.prepared]

    def add(self, asks: Sequence["Ask"]) -> None:
        """Prepare each question and put its first round into its engine's session (a question that cannot
        run gets its error result at once)."""
        start = time.monotonic()
        for ask in asks:
            index = len(self.asks)
            self.asks.append(ask)
            self.started[index] = start
            try:
                engine = self.core.resident.engine_for(ask.question)
                prepared = self.core._prepare(engine, ask, start)
            except Exception as exc:  # noqa: BLE001 - this question's result says why
                self.fail(index, exc)
                continue
            self.prepared[index] = (engine, prepared)
            self._concluded(self._refiner(engine).add(index, prepared.job))

    def step(self) -> None:
        """One decode step of every engine with questions; conclude those that halted."""
        for engine, refiner in list(self.refiners.items()):
            if not refiner.busy:
                continue
            try:
                done = refiner.step()
            except Exception as exc:  # noqa: BLE001 - its questions are refined again (module docstring)
                done = self._recover(engine, refiner, exc)
            self._concluded(done)

    def fail(self, index: int, exc: BaseException) -> None:
        """Question ``index`` fails with ``exc`` (its error result is delivered)."""
        self.prepared.pop(index, None)
        self._hand(index, lambda: self.core._failed(self.asks[index], exc, self.started[index]))

    def fail_all(self, exc: BaseException) -> None:
        """Every question without a result fails with ``exc`` (the run itself failed)."""
        for index in range(len(self.asks)):
            if index not in self.handed:
                self.fail(index, exc)

    def results(self) -> list[Result]:
        """Every question's result, in the order added (waits for their delivery)."""
        return [self.handed[index].result() for index in range(len(self.asks))]

    # -- inside ---------------------------------------------------------------------------------------
    def _refiner(self, engine: IRPEngine) -> Refiner:
        if engine not in self.refiners:
            self.refiners[engine] = Refiner(engine, self.max_rows)
        return self.refiners[engine]

    def _concluded(self, done: Sequence[tuple[Hashable, Refinement | Exception]]) -> None:
        """Conclude each halted question on this thread; deliver it on the delivery thread."""
        for index, outcome in done:
            engine, prepared = self.prepared.pop(index)
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                concluded = self.core._conclude(engine, prepared, outcome)
            except Exception as exc:  # noqa: BLE001 - this question's result says why
                self.fail(index, exc)
                continue
            self._hand(index, lambda c=concluded: self.core._deliver(c))

    def _hand(self, index: int, make: Callable[[], Result]) -> None:
        def run() -> Result:
            result = make()
            if self.on_result is not None:
                try:
                    self.on_result(index, result)
                except Exception:  # noqa: BLE001 - a front end's failure must not fail the others
                    log.exception("delivering the result of question %s failed", result.id)
            return result

        self.handed[index] = self.delivery.submit(run)

    def _recover(self, engine: IRPEngine, refiner: Refiner, exc: Exception) -> list[tuple[int, Any]]:
        """A step failed: take its questions back and refine them again (module docstring)."""
        jobs: list[tuple[int, RefineJob]] = refiner.abandon()  # type: ignore[assignment]
        largest = max(engine.rows_of(job.options) for _, job in jobs)
        if is_out_of_memory(exc):
            free_memory()
            fewer = max(largest, min(refiner.max_rows, sum(engine.rows_of(j.options) for _, j in jobs)) // 2)
            if len(jobs) > 1 and fewer < refiner.max_rows:
                log.warning("out of memory with %d questions decoding; again with at most %d rows at once",
                            len(jobs), fewer)
                self.refiners[engine] = smaller = Refiner(engine, fewer)
                return [outcome for index, job in jobs for outcome in smaller.add(index, job)]
            return [(index, _outcome(lambda job=job: retry_fewer(engine, job, exc))) for index, job in jobs]
        if len(jobs) == 1:
            return [(jobs[0][0], exc)]
        log.warning("a decode step shared by %d questions failed (%s: %s); answering them one by one",
                    len(jobs), type(exc).__name__, exc)
        return [(index, _outcome(lambda job=job: refine_alone(engine, job))) for index, job in jobs]


def _outcome(refine: Callable[[], Refinement]) -> Refinement | Exception:
    try:
        return refine()
    except Exception as exc:  # noqa: BLE001 - the question's result says why
        return exc
