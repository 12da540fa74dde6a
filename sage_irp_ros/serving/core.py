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

"""SageCore: one question in, exactly one result out — the whole product without ROS.

It owns the resident model, the IRP engine, conversation histories, the SNARC scorer and the salient
memory store. ``answer`` never raises: every failure becomes a result with an error code, so the ROS
node (and any other front end) only has to move messages.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence

import psutil
import torch

from sage_irp_ros import errors
from sage_irp_ros.answers.forms import AnswerForm, form_of
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import Generator
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.adaptive import choose_schedule
from sage_irp_ros.irp.confidence import is_confident
from sage_irp_ros.irp.engine import CANCELLED as HALT_CANCELLED
from sage_irp_ros.irp.engine import DEADLINE as HALT_DEADLINE
from sage_irp_ros.irp.engine import IRPEngine, RefineJob, Refinement
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import Question
from sage_irp_ros.remote.backend import RemoteBackend, backend_of, local_status
from sage_irp_ros.results import IRPSummary, Result, ResultError, Timing
from sage_irp_ros.salience.memory_store import Exchange, MemoryStore
from sage_irp_ros.salience.snarc import SURPRISE_WINDOW, SnarcScorer, SnarcScores
from sage_irp_ros.serving.conversation import ConversationHistory
from sage_irp_ros.serving.scheduler import Scheduler
from sage_irp_ros.serving.resident import Resident
from sage_irp_ros.serving.stats import ServingStats
from sage_irp_ros.serving.status import CoreStatus, StoreStatus
from sage_irp_ros.weights.loader import LoadedModel

log = logging.getLogger(__name__)


class SageCore:
    """The IRP + SNARC answering pipeline over one resident model."""

    def __init__(self, cfg: SageConfig, progress: Callable[[str], None] | None = None,
                 wrap_generator: Callable[[Generator], Generator] | None = None):
        """``wrap_generator`` takes the on-board generator and returns the one the engine uses: a seam for
        a front end that decorates generation (fault injection in tests, tracing), never needed to serve."""
        self.resident = Resident(cfg, progress or log.info, wrap_generator)
        self.history = ConversationHistory(cfg.history.depth, cfg.history.max_conversations,
                                           heard_window=SURPRISE_WINDOW)
        self.snarc = SnarcScorer(cfg.snarc)
        self.stats = ServingStats()
        # results are made and handed on here, in order, while the decode thread goes on
        self._delivery = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sage_irp_results")

    # -- lifecycle: the resident model, engines and store -------------------------------------------
    @property
    def cfg(self) -> SageConfig:
        return self.resident.cfg

    @property
    def lm(self) -> LoadedModel | None:
        return self.resident.lm

    @property
    def engine(self) -> IRPEngine | None:
        return self.resident.engine

    @property
    def backend(self) -> RemoteBackend | None:
        return self.resident.backend

    @property
    def store(self) -> MemoryStore | None:
        return self.resident.store

    def load(self) -> LoadedModel | None:
        """Load the model (or reuse the resident one), warm it up and open the memory store
        (:meth:`Resident.load`: a failure leaves nothing new resident)."""
        return self.resident.load()

    def release(self, timeout: float | None = None) -> bool:
        """Free the model and close the store after the running generation (False: still running then)."""
        return self.resident.release(timeout)

    def release_model_only(self) -> None:
        """keep_alive false: free the model after each answer, keep the store open."""
        self.resident.release_model_only()

    def reconfigure(self, cfg: SageConfig) -> None:
        """Apply new settings: IRP and SNARC keys at the next question, history bounds and storage
        policy at once; model keys (and ``memory.db_path``) at the next :meth:`load`."""
        self.snarc = SnarcScorer(cfg.snarc)
        self.history.resize(cfg.history.depth, cfg.history.max_conversations)
        self.resident.reconfigure(cfg)

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def reset_history(self, conversation: str | None = None) -> int:
        """Forget one named conversation's history; with None, every history and the node-wide window
        that SNARC surprise of questions without a conversation reads. Returns how many were cleared."""
        return self.history.clear() if conversation is None else self.history.reset(conversation)

    # -- answering --------------------------------------------------------------------------------
    def answer(self, question: Question, *, received: float | None = None, throttled: bool = False,
               cancel: threading.Event | None = None) -> Result:
        """Answer one question; returns its :class:`Result` (see docs/interface.md). Never raises.

        ``cancel`` stops generation at its next token. When it carries a ``reason`` (a
        :class:`SageError`, as :class:`sage_irp_ros.serving.worker.Cancel` does), a question cancelled before
        any answer fails with that code and message; otherwise with ``shutting_down``.
        """
        return self.answer_many([Ask(question, received, throttled, cancel)])[0]

    def answer_many(self, asks: Sequence["Ask"], on_result: Callable[[int, Result], None] | None = None,
                    more: Callable[[int, set], Sequence["Ask"]] | None = None) -> list[Result]:
        """Answer several questions together: exactly one :class:`Result` each, in order. Never raises.

        Their rows are decoded in the same steps (:class:`~sage_irp_ros.serving.scheduler.Scheduler`);
        each question keeps its own prompt, history, options, deadline and cancel, and leaves as soon as it
        halts. A question that fails (a bad schema, a prompt too long, a deadline passed in the queue) fails
        alone; when a shared step fails, its questions are refined again (out of memory: fewer at once).

        ``on_result(index, result)`` is called once per question as soon as its result is ready, on the
        delivery thread (SNARC, the result and the memory store's write run there too), while the others
        may still decode. ``more(refining, conversations)``, called between two decode steps with the number
        of questions still refining and their conversations, returns questions that join the run now (the
        node's worker hands over what arrived); they are numbered after ``asks``, and the returned list
        holds their results too.
        """
        rows = IRPEngine.usual_rows(self.cfg.llm_irp) * max(self.cfg.node.batch_size, len(asks))
        run = Scheduler(self, self._delivery, on_result, max_rows=rows)
        with self.resident.lock:
            try:
                if self.cfg.llm_irp.seed >= 0:  # a run's sampling is reproducible
                    torch.manual_seed(self.cfg.llm_irp.seed)
                run.add(asks)
                while run.busy:
                    run.step()
                    if more is not None:
                        refining = run.refining
                        joining = more(len(refining), {ask.question.conversation for ask in refining})
                        if joining:
                            run.add(joining)
            except Exception as exc:  # noqa: BLE001 - the run failed (a front end's `more`): each unanswered fails
                run.fail_all(exc)
            finally:
                if not self.cfg.model.keep_alive:
                    self.release_model_only()
            return run.results()  # delivered (and written) before the model or the store can be released

    def _failed(self, ask: "Ask", exc: BaseException, start: float) -> Result:
        """The error result of one question (counted); an unexpected exception is logged as a bug."""
        if not isinstance(exc, SageError):
            log.error("generation failed", exc_info=exc)
            exc = SageError(errors.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")
        self.stats.record(ok=False, code=exc.code)
        return self.error_result(ask.question, exc, received=ask.received if ask.received is not None else start,
                                 start=start)

    def _prepare(self, engine: IRPEngine, ask: "Ask", start: float) -> "_Prepared":
        """Everything a question needs before generation; raises SageError for a question that cannot run."""
        q = ask.question
        received = start if ask.received is None else ask.received
        self._check_memory_floor()
        if q.reset and q.conversation is not None:  # without one there is no history to clear
            self.history.reset(q.conversation)
        options = AnswerOptions.resolve(self.cfg.llm_irp, q, throttled=ask.throttled, throttle=self.cfg.throttle,
                                        received=received, cancel=ask.cancel)
        form = form_of(q)
        text, options = form.prepare(engine, q, options)
        if options.deadline is not None and time.monotonic() >= options.deadline:
            raise SageError(errors.DEADLINE,
                            f"deadline of {options.deadline_s:g} s passed while the question was queued")
        # Prompt history: only the question's own named conversation (none without one). Surprise's
        # window: the same history in a conversation, else what the node heard last (docs/interface.md).
        history = self.history.get(q.conversation)
        heard = history if q.conversation is not None else self.history.heard()
        return _Prepared(q, received, history, heard, options, form, RefineJob(text, q.context, history, options))

    def _conclude(self, engine: IRPEngine, p: "_Prepared", refined: Refinement) -> "_Concluded":
        """On the decode thread: the form's pick and confidence (it may score with the model) and the
        history the conversation's next question reads."""
        q, options, halt = p.question, p.options, refined.irp.halt_reason
        if halt == HALT_CANCELLED and not refined.answer:
            raise _cancelled(options.cancel)
        if p.form.needs_text and not refined.answer:
            if halt == HALT_DEADLINE:
                raise SageError(errors.DEADLINE, f"deadline of {options.deadline_s:g} s passed before any answer")
            raise SageError(errors.INFERENCE_FAILED, "the model produced no answer text")
        answered = p.form.finish(engine, q, p.history, refined)
        self.history.add(q.conversation, q.text, answered.answer)
        return _Concluded(p, answered, time.monotonic() - p.started)

    def _deliver(self, c: "_Concluded") -> Result:
        """On the delivery thread: SNARC, the result, the memory store's write and the counts."""
        p, answered = c.prepared, c.answered
        q, refined = p.question, answered.refinement
        scores = self.snarc.score(q.text, answered.answer, p.heard, final_energy=refined.irp.best_energy)
        result = self._result(q, answer=answered.answer, snarc=scores, irp=refined.irp, received=p.received,
                              start=p.started, inference_s=c.inference_s, tokens=refined.tokens,
                              choice=answered.choice, probabilities=answered.probabilities, json=answered.json,
                              tool_call=answered.tool_call,
                              confidence=answered.confidence,
                              confident=is_confident(answered.confidence, p.options.min_confidence),
                              backend=backend_of(refined.candidates))
        self._store(result)
        self.stats.record(ok=True, total_s=result.timing.total_s, inference_s=result.timing.inference_s,
                          tokens=result.timing.tokens)
        return result

    def _check_memory_floor(self) -> None:
        floor = self.cfg.llm_irp.min_available_memory_mb
        if not floor:
            return
        available = psutil.virtual_memory().available / 2**20
        if available < floor:
            raise SageError(errors.OUT_OF_MEMORY, (
                f"available RAM is {available:.0f} MB, under llm_irp.min_available_memory_mb = {floor} MB; "
                "refusing new questions until memory is freed"))

    def _store(self, result: Result) -> None:
        if result.snarc is None or not result.snarc.salient:
            return
        self.resident.record(Exchange.from_result(result))

    # -- results ----------------------------------------------------------------------------------
    def error_result(self, q: Question | None, error: SageError, *, question_id: str | None = None,
                     received: float | None = None, start: float | None = None) -> Result:
        """The result for a failed question (also used by the node for queue/lifecycle refusals)."""
        now = time.monotonic()
        received = now if received is None else received
        if q is None:
            q = Question(text="", id=question_id) if question_id else Question(text="")
        return self._result(q, error=ResultError(error.code, error.message), received=received,
                            start=start or now, inference_s=0.0, tokens=0)

    def _result(self, q: Question, *, answer: str = "", error: ResultError | None = None,
                snarc: SnarcScores | None = None, irp: IRPSummary | None = None, received: float,
                start: float, inference_s: float, tokens: int, **answered: Any) -> Result:
        """The one place a result is built: ok exactly when there is no error. ``answered``: choice,
        probabilities, json, confidence, confident of an ok result."""
        return Result(id=q.id, conversation=q.conversation, question=q.text, ok=error is None, answer=answer,
                      **answered, error=error, snarc=snarc, irp=irp,
                      timing=Timing.measure(received=received, start=start, now=time.monotonic(),
                                            inference_s=inference_s, tokens=tokens),
                      model=self._model_name(answered.get("backend")), warnings=list(q.warnings),
                      stamp=time.time())

    def _model_name(self, backend: str | None) -> str | None:
        """The model a result names: the server's for a remote answer, else the resident one."""
        if self.backend is not None and (backend == "remote" or self.lm is None):
            return self.backend.remote.model
        return self.lm.model_id if self.lm is not None else None

    def refuse(self, q: Question | None, error: SageError, *, question_id: str | None = None,
               received: float | None = None) -> Result:
        """The result for a question that never reached inference (queue full, not active ...), counted."""
        self.stats.record(ok=False, code=error.code)
        return self.error_result(q, error, question_id=question_id, received=received)

    def status(self) -> CoreStatus:
        """What a front end's status needs from the core (docs/interface.md, "Status JSON")."""
        lm, cfg, backend = self.lm, self.cfg, self.backend
        gpu_mb = None
        if lm is not None and lm.device.type == "cuda":
            gpu_mb = round(torch.cuda.memory_allocated(lm.device) / 2**20, 1)
        return CoreStatus(
            model=lm.model_id if lm else backend.remote.model if backend else None,
            device=str(lm.device) if lm else cfg.model.device,
            precision=lm.precision if lm else cfg.model.precision,
            packed_layers=lm.packed_layers if lm else None,
            weights=lm.weight_quantization if lm else cfg.model.weight_quantization,
            forward=lm.forward if lm else cfg.model.forward,
            stopping=choose_schedule(cfg.llm_irp.stopping, lm.row_cost if lm else None, backend is None),
            row_cost=lm.row_cost if lm else None,
            quantized_layers=lm.quantized_layers if lm else None,
            model_mb=round(lm.footprint_mb, 1) if lm else None, gpu_mem_mb=gpu_mb,
            max_memory_mb=cfg.model.max_memory_mb, serving=self.stats.snapshot(),
            memory_store=self.store_status(),
            generation=backend.status() if backend is not None else local_status())

    def store_status(self) -> StoreStatus:
        store = self.store
        if store is None:  # not configured yet, or storage disabled with db_path 'none'
            return StoreStatus()
        return StoreStatus(ok=store.healthy, error=store.last_error, path=str(store.path),
                           size_mb=round(store.size_bytes() / 2**20, 3), pruned=store.pruned_count)


class Ask(NamedTuple):
    """One question for :meth:`SageCore.answer_many`: when it arrived (``time.monotonic()``), whether the
    platform is throttled, and the event that cancels it."""

    question: Question
    received: float | None = None
    throttled: bool = False
    cancel: threading.Event | None = None


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A question ready for generation: its resolved options and the job the engine refines."""

    question: Question
    received: float
    history: Any
    heard: Any
    options: AnswerOptions
    form: AnswerForm
    job: RefineJob
    started: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass(frozen=True)
class _Concluded:
    """A question whose refinement is over: what the delivery thread turns into its result."""

    prepared: _Prepared
    answered: Any
    inference_s: float


def _cancelled(cancel: threading.Event | None) -> SageError:
    """Why a cancelled question failed: the canceller's reason, else the process is stopping."""
    reason = getattr(cancel, "reason", None)
    if isinstance(reason, SageError):
        return SageError(reason.code, reason.message)
    return SageError(errors.SHUTTING_DOWN, "generation cancelled: the node is stopping")
