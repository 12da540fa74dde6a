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
import json
import logging
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import psutil
import torch

from sage_irp_ros import errors

from sage_irp_ros.answers import choices

from sage_irp_ros.answers import json_answers
from sage_irp_ros.irp.confidence import is_confident, shipped
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import Generator
from sage_irp_ros.serving.conversation import ConversationHistory
from sage_irp_ros.errors import ModelLoadError, SageError
from sage_irp_ros.remote.backend import RemoteBackend, backend_of, local_status
from sage_irp_ros.irp.engine import CANCELLED as HALT_CANCELLED
from sage_irp_ros.irp.engine import DEADLINE as HALT_DEADLINE
from sage_irp_ros.irp.engine import IRPEngine, RefineJob, Refinement
from sage_irp_ros.salience.memory_store import Exchange, MemoryStore, open_store
from sage_irp_ros.weights.loader import LoadedModel, apply_power_mode, load_model, release
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import Question
from sage_irp_ros.results import IRPSummary, Result, ResultError, Timing
from sage_irp_ros.salience.snarc import SURPRISE_WINDOW, SnarcScorer, SnarcScores
from sage_irp_ros.serving.stats import ServingStats

log = logging.getLogger(__name__)


class SageCore:
    """The IRP + SNARC answering pipeline over one resident model."""

    def __init__(self, cfg: SageConfig, progress: Callable[[str], None] | None = None,
                 wrap_generator: Callable[[Generator], Generator] | None = None):
        """``wrap_generator`` takes the on-board generator and returns the one the engine uses: a seam for
        a front end that decorates generation (fault injection in tests, tracing), never needed to serve."""
        self.cfg = cfg
        self._progress = progress or log.info
        self._wrap_generator = wrap_generator
        self.lm: LoadedModel | None = None
        self.engine: IRPEngine | None = None
        self.backend: RemoteBackend | None = None  # remote.url set: the serving engine (and its fallback)
        self._local_engine: IRPEngine | None = None  # the on-board engine (choices, json_schema, fallback)
        self.history = ConversationHistory(cfg.history.depth, cfg.history.max_conversations,
                                           heard_window=SURPRISE_WINDOW)
        self.snarc = SnarcScorer(cfg.snarc)
        self.store: MemoryStore | None = None
        self.stats = ServingStats()
        # _lock: one generation at a time on the model; release() takes it too, so the model and the
        # store are never freed under a running question. Reentrant: keep_alive false loads under it.
        self._lock = threading.RLock()
        # _state_lock: short critical sections swapping lm/engine/store/cfg (load, release, reconfigure).
        self._state_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self) -> LoadedModel | None:
        """Load the model (or reuse the resident one), warm it up and open the memory store.

        Any failure (also in warm-up: a RuntimeError, CUDA OOM) propagates after the model this call
        made resident is released again, so a retry does not hold a second copy. Settings changed by
        :meth:`reconfigure` while loading are applied to the engine that is installed.

        With ``remote.url`` set, candidates come from that server (:mod:`generation_backend`); the
        on-board model is loaded only with ``remote.fallback: local`` (returns None otherwise). A server
        that does not answer now does not fail the load: the status says it is unreachable.
        """
        cfg = self.cfg
        apply_power_mode(cfg.model.power_mode)
        previous = self.lm
        lm = None if cfg.remote.url and cfg.remote.fallback == "none" else load_model(cfg.model, self._progress)
        try:
            if lm is not None and cfg.model.warmup:
                self._progress(f"warm-up generation took {IRPEngine(lm, cfg.llm_irp).warm_up():.2f} s")
            backend = self.backend
            if cfg.remote.url and backend is None:
                backend = RemoteBackend.from_config(cfg.remote, None)  # its fallback: _install_engines
                self._progress(f"generation server {backend.remote.url}: model {backend.remote.model}, "
                               f"reachable {backend.remote.reachable}, fallback {cfg.remote.fallback}")
        except BaseException:
            if lm is not None and lm is not previous:
                release(lm)
            raise
        with self._state_lock:
            self.lm, self.backend = lm, backend
            self._install_engines(self.cfg)
            if self.store is None:
                self.store = open_store(self.cfg.memory)
        return lm

    def _install_engines(self, cfg: SageConfig) -> None:
        """The engines over the resident model and the backend (under ``_state_lock``)."""
        local = IRPEngine(self.lm, cfg.llm_irp) if self.lm is not None else None
        if local is not None and self._wrap_generator is not None:
            local = IRPEngine(self.lm, cfg.llm_irp, generator=self._wrap_generator(local.generator))
        if self.backend is not None:
            self.backend.local = local.generator if local is not None else None
            self.engine = IRPEngine(self.lm, cfg.llm_irp, generator=self.backend)
        else:
            self.engine = local
        self._local_engine = local

    def _engine_for(self, q: Question) -> IRPEngine:
        """The engine for ``q``: choices and json_schema questions need the resident model's logits."""
        engine = self._engine()
        if self.backend is None or not (q.choices or q.json_schema is not None):
            return engine
        if self._local_engine is None:
            raise SageError(errors.BACKEND_UNSUPPORTED, (
                "choices and json_schema questions need the on-board model: this node generates on "
                f"{self.backend.remote.url} with remote.fallback: none"))
        return self._local_engine

    def release(self, timeout: float | None = None) -> bool:
        """Drop the model from memory (cleanup) and close the store, after the running generation.

        With ``timeout``, waits at most that long for a running generation; returns False (and
        releases nothing) when it is still running then.
        """
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("a generation is still running after %.1f s: model and memory store left open",
                        timeout)
            return False
        try:
            with self._state_lock:
                lm, store, backend = self.lm, self.store, self.backend
                self.lm = self.engine = self.store = self.backend = self._local_engine = None
            if lm is not None:
                release(lm)
            if backend is not None:
                backend.close()
            if store is not None:
                store.close()
        finally:
            self._lock.release()
        return True

    def reconfigure(self, cfg: SageConfig) -> None:
        """Apply new settings: IRP and SNARC keys at the next question, history bounds and storage
        policy at once; model keys (and ``memory.db_path``) at the next :meth:`load`."""
        with self._state_lock:
            self.cfg = cfg
            self.snarc = SnarcScorer(cfg.snarc)
            self.history.resize(cfg.history.depth, cfg.history.max_conversations)
            if self.store is not None:
                self.store.set_policy(cfg.memory)
            if self.engine is not None:
                self._install_engines(cfg)

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

    def answer_many(self, asks: Sequence["Ask"],
                    on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
        """Answer several questions together: exactly one :class:`Result` each, in order. Never raises.

        Their candidates are decoded in shared batched calls (:meth:`IRPEngine.refine_many`); each
        question keeps its own prompt, history, options, deadline and cancel. A question that fails
        (a bad schema, a prompt too long, a deadline passed in the queue) fails alone; when the shared
        call itself fails (out of memory, a constraint's error), every question not answered yet is
        retried on its own. ``on_result(index, result)`` is called once per question as soon as its
        result is ready, while the others may still decode (the node publishes there).
        """
        start = time.monotonic()
        results: list[Result | None] = [None] * len(asks)

        def deliver(i: int, result: Result) -> None:
            if results[i] is None:
                results[i] = result
                if on_result is not None:
                    try:
                        on_result(i, result)
                    except Exception:  # noqa: BLE001 - a front end's failure must not fail the others
                        log.exception("delivering the result of question %s failed", result.id)

        prepared: dict[int, tuple[IRPEngine, _Prepared]] = {}
        with self._lock:
            try:
                self._engine()  # no engine at all: every question fails with the reason
                for i, ask in enumerate(asks):
                    try:
                        engine = self._engine_for(ask.question)
                        prepared[i] = (engine, self._prepare(engine, ask, start))
                    except Exception as exc:  # noqa: BLE001 - this question's result says why
                        deliver(i, self._failed(ask, exc, start))
                engines = {id(engine): engine for engine, _ in prepared.values()}
                for key, engine in engines.items():  # on-board and remote questions refine apart
                    mine = [i for i, (e, _) in prepared.items() if id(e) == key]

                    def refined(k: int, outcome: Refinement | Exception, engine=engine, mine=mine) -> None:
                        i = mine[k]
                        try:
                            if isinstance(outcome, Exception):
                                raise outcome
                            deliver(i, self._finish(engine, prepared[i][1], outcome))
                        except Exception as exc:  # noqa: BLE001
                            deliver(i, self._failed(asks[i], exc, start))

                    self._refine_batch(engine, [prepared[i][1] for i in mine], refined,
                                       pending=lambda k, mine=mine: results[mine[k]] is None)
            except Exception as exc:  # noqa: BLE001 - no engine: every question not yet answered fails
                for i, ask in enumerate(asks):
                    deliver(i, self._failed(ask, exc, start))
            finally:
                if not self.cfg.model.keep_alive:
                    self.release_model_only()
        return results  # type: ignore[return-value]

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
        if q.choices:
            options = options.replace(max_tokens=min(options.max_tokens, choices.MAX_TOKENS))
        if options.deadline is not None and time.monotonic() >= options.deadline:
            raise SageError(errors.DEADLINE,
                            f"deadline of {options.deadline_s:g} s passed while the question was queued")
        # Prompt history: only the question's own named conversation (none without one). Surprise's
        # window: the same history in a conversation, else what the node heard last (docs/interface.md).
        history = self.history.get(q.conversation)
        heard = history if q.conversation is not None else self.history.heard()
        text = q.text
        if q.choices:
            text = choices.choice_prompt(q.text, q.choices)
        if q.json_schema is not None:
            text = json_answers.json_prompt(q.text, q.json_schema)
            options = options.replace(constraint=_grammar(engine, q.json_schema).constraint)
        return _Prepared(q, received, history, heard, options, RefineJob(text, q.context, history, options))

    def _refine_batch(self, engine: IRPEngine, batch: list["_Prepared"],
                      refined: Callable[[int, Refinement | Exception], None], pending: Callable[[int], bool]) -> None:
        """Refine the prepared questions together, handing each to ``refined(k, outcome)`` as it halts;
        when the shared call fails, the questions still ``pending`` are refined alone (with the
        out-of-memory retry). One question is refined alone from the start."""
        if len(batch) > 1:
            try:
                engine.refine_many([p.job for p in batch], on_done=refined)
                return
            except Exception as exc:  # noqa: BLE001 - retried alone below, so one question's fault stays its own
                if _is_oom(exc):
                    _free_memory()
                log.warning("batched generation of %d questions failed (%s: %s); answering them one by one",
                            len(batch), type(exc).__name__, exc)
        for k, p in enumerate(batch):
            if not pending(k):
                continue
            try:
                outcome: Refinement | Exception = self._refine_with_oom_retry(engine, p.job)
            except Exception as exc:  # noqa: BLE001
                outcome = exc
            refined(k, outcome)

    def _finish(self, engine: IRPEngine, p: "_Prepared", refined: Refinement) -> Result:
        """The question's result from its refinement: the pick (option, JSON), confidence, SNARC, history, store."""
        q, options = p.question, p.options
        picked, refined = self._choose(engine, q, p.history, refined) if q.choices else (None, refined)
        if refined.irp.halt_reason == HALT_CANCELLED and not refined.answer:
            raise _cancelled(options.cancel)
        if not refined.answer and picked is None:
            if refined.irp.halt_reason == HALT_DEADLINE:
                raise SageError(errors.DEADLINE, f"deadline of {options.deadline_s:g} s passed before any answer")
            if refined.irp.halt_reason == HALT_CANCELLED:
                raise _cancelled(options.cancel)
            raise SageError(errors.INFERENCE_FAILED, "the model produced no answer text")
        inference_s = time.monotonic() - p.started
        calibration, value, best = shipped(), None, refined.best
        if picked is not None:
            answer, confidence = picked.choice, calibration.choice_confidence(list(picked.probabilities.values()))
        else:
            if q.json_schema is not None:
                value, best = _json_answer(q.json_schema, refined)
            answer = refined.answer if value is None else json.dumps(value, ensure_ascii=False)
            confidence = calibration.free_text_confidence(refined.candidates, refined.irp.energies, best)
        scores = self.snarc.score(q.text, answer, p.heard, final_energy=refined.irp.best_energy)
        self.history.add(q.conversation, q.text, answer)
        result = self._result(q, answer=answer, snarc=scores, irp=refined.irp, received=p.received,
                              start=p.started, inference_s=inference_s, tokens=refined.tokens,
                              choice=picked.choice if picked is not None else None,
                              probabilities=picked.probabilities if picked is not None else None, json=value,
                              confidence=confidence, confident=is_confident(confidence, options.min_confidence),
                              backend=backend_of(refined.candidates))
        self._store(result)
        self.stats.record(ok=True, total_s=result.timing.total_s, inference_s=result.timing.inference_s,
                          tokens=result.timing.tokens)
        return result

    def _choose(self, engine: IRPEngine, q: Question, history,
                refined: Refinement) -> tuple[choices.Choice, Refinement]:
        """A choices question's option: the options scored in one batched forward, with the candidates' votes."""
        begin = time.monotonic()
        used = list(history)[len(history) - refined.irp.history_used:] if refined.irp.history_used else []
        prompt_ids, neutral_ids = choices.score_prompts(engine.lm.tokenizer, q.text, q.choices, q.context, used,
                                                        engine.use_chat_template)
        scores = engine.generator.score_options(prompt_ids, neutral_ids, q.choices)
        picked = choices.choose(scores, [c.text for c in refined.candidates], q.choices, shipped().choice_weights)
        irp = dataclasses.replace(refined.irp, scoring_s=round(refined.irp.scoring_s + time.monotonic() - begin, 6))
        return picked, dataclasses.replace(refined, irp=irp)

    def _refine_with_oom_retry(self, engine: IRPEngine, job: RefineJob) -> Refinement:
        try:
            return engine.refine(*job)
        except SageError:
            raise
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_memory()
            fewer = job.options.reduced()
            log.warning("out of memory during generation; retrying once with %d candidate(s), one per round",
                        fewer.rows)
            try:
                return engine.refine(*job._replace(options=fewer))
            except Exception as again:
                if _is_oom(again):
                    _free_memory()
                    raise SageError(errors.OUT_OF_MEMORY, f"out of memory during generation, also with "
                                                          f"{fewer.rows} candidate(s): {again}") from again
                raise

    def _engine(self) -> IRPEngine:
        if self.engine is None:
            if self.lm is not None or self.cfg.model.keep_alive:
                raise SageError(errors.MODEL_NOT_LOADED, "no model is loaded (configure the node first)")
            try:  # keep_alive false: load for this question, release after it
                self.load()
            except ModelLoadError as exc:
                raise SageError(errors.MODEL_NOT_LOADED, str(exc)) from exc
        return self.engine

    def release_model_only(self) -> None:
        """keep_alive false: free the model after each answer, keep the store open."""
        with self._state_lock:
            lm, self.lm, self.engine, self._local_engine = self.lm, None, None, None
        if lm is not None:
            release(lm)

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
        with self._lock:  # release() holds it while closing: never record into a store being closed
            store = self.store
            if store is None:
                return
            store.record(Exchange.from_result(result))

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

    def status(self) -> dict[str, Any]:
        """What a front end's status needs from the core: the model, its memory, serving stats, the store.

        Keys as in docs/interface.md "Status JSON": model, device, precision, packed_layers, weights,
        quantized_layers, model_mb,
        gpu_mem_mb, max_memory_mb, served, errors, refused, consecutive_errors, last, latency,
        memory_store, generation (where candidates come from). Without a model, device and precision are
        the configured ones.
        """
        lm, cfg = self.lm, self.cfg
        gpu_mb = None
        if lm is not None and lm.device.type == "cuda":
            gpu_mb = round(torch.cuda.memory_allocated(lm.device) / 2**20, 1)
        backend = self.backend
        return {
            "model": lm.model_id if lm else backend.remote.model if backend else None,
            "device": str(lm.device) if lm else cfg.model.device,
            "precision": lm.precision if lm else cfg.model.precision,
            "packed_layers": lm.packed_layers if lm else None,
            "weights": lm.weight_quantization if lm else cfg.model.weight_quantization,
            "quantized_layers": lm.quantized_layers if lm else None,
            "model_mb": round(lm.footprint_mb, 1) if lm else None, "gpu_mem_mb": gpu_mb,
            "max_memory_mb": cfg.model.max_memory_mb,
            **self.stats.snapshot(), "memory_store": self.store_status(),
            "generation": backend.status() if backend is not None else local_status(),
        }

    def store_status(self) -> dict[str, Any]:
        store = self.store
        if store is None:  # not configured yet, or storage disabled with db_path 'none'
            return {"ok": True, "error": None, "path": None, "size_mb": None}
        return {"ok": store.healthy, "error": store.last_error, "path": str(store.path),
                "size_mb": round(store.size_bytes() / 2**20, 3), "pruned": store.pruned_count}


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
    job: RefineJob
    started: float = dataclasses.field(default_factory=time.monotonic)


def _grammar(engine: IRPEngine, schema: dict):
    """The schema compiled for the resident tokenizer (SageError invalid_input when it cannot be)."""
    from sage_irp_ros.answers.grammar import compiled

    vocab = int(getattr(engine.lm.model.config, "vocab_size", 0) or len(engine.lm.tokenizer))
    return compiled(schema, engine.lm.tokenizer, vocab)


def _json_answer(schema: dict, refined: Refinement) -> tuple[Any, int]:
    """The chosen valid JSON (agreeing with the other valid candidates most) and its candidate's index."""
    parsed = [json_answers.parse_valid(c.text, schema) for c in refined.candidates]
    best = json_answers.pick([v for v, _ in parsed], [ok for _, ok in parsed], refined.irp.energies)
    if best is None:
        raise SageError(errors.INFERENCE_FAILED, f"none of {len(parsed)} candidates completed JSON valid under "
                                                 "the schema within max_tokens (raise llm_irp.max_tokens)")
    return parsed[best][0], best


def _cancelled(cancel: threading.Event | None) -> SageError:
    """Why a cancelled question failed: the canceller's reason, else the process is stopping."""
    reason = getattr(cancel, "reason", None)
    if isinstance(reason, SageError):
        return SageError(reason.code, reason.message)
    return SageError(errors.SHUTTING_DOWN, "generation cancelled: the node is stopping")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                           or "can't allocate memory" in str(exc).lower()))


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
