"""SageCore: one question in, exactly one result out — the whole product without ROS.

It owns the resident model, the IRP engine, conversation histories, the SNARC scorer and the salient
memory store. ``answer`` never raises: every failure becomes a result with an error code, so the ROS
node (and any other front end) only has to move messages.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import psutil
import torch

from . import errors
from .config import SageConfig
from .conversation import ConversationHistory
from .errors import ModelLoadError, SageError
from .irp import DEADLINE as HALT_DEADLINE
from .irp import IRPEngine
from .memory_store import Exchange, MemoryStore, open_store
from .model_loader import LoadedModel, apply_power_mode, load_model, release
from .questions import Question
from .snarc import SURPRISE_WINDOW, SnarcScorer
from .stats import ServingStats

log = logging.getLogger(__name__)


class SageCore:
    """The IRP + SNARC answering pipeline over one resident model."""

    def __init__(self, cfg: SageConfig, progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self._progress = progress or log.info
        self.lm: LoadedModel | None = None
        self.engine: IRPEngine | None = None
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
    def load(self) -> LoadedModel:
        """Load the model (or reuse the resident one), warm it up and open the memory store.

        Any failure (also in warm-up: a RuntimeError, CUDA OOM) propagates after the model this call
        made resident is released again, so a retry does not hold a second copy. Settings changed by
        :meth:`reconfigure` while loading are applied to the engine that is installed.
        """
        cfg = self.cfg
        apply_power_mode(cfg.model.power_mode)
        previous = self.lm
        lm = load_model(cfg.model, self._progress)
        try:
            if cfg.model.warmup:
                self._progress(f"warm-up generation took {IRPEngine(lm, cfg.llm_irp).warm_up():.2f} s")
        except BaseException:
            if lm is not previous:
                release(lm)
            raise
        with self._state_lock:
            self.lm, self.engine = lm, IRPEngine(lm, self.cfg.llm_irp)
            if self.store is None:
                self.store = open_store(self.cfg.memory)
        return lm

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
                lm, store = self.lm, self.store
                self.lm = self.engine = self.store = None
            if lm is not None:
                release(lm)
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
            if self.lm is not None:
                self.engine = IRPEngine(self.lm, cfg.llm_irp)

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def reset_history(self, conversation: str | None = None) -> int:
        """Forget one named conversation's history; with None, every history and the node-wide window
        that SNARC surprise of questions without a conversation reads. Returns how many were cleared."""
        return self.history.clear() if conversation is None else self.history.reset(conversation)

    # -- answering --------------------------------------------------------------------------------
    def answer(self, question: Question, *, received: float | None = None, throttled: bool = False,
               cancel: threading.Event | None = None) -> dict[str, Any]:
        """Answer one question; returns the result dict (see docs/interface.md). Never raises."""
        received = time.monotonic() if received is None else received
        start = time.monotonic()
        try:
            result = self._answer(question, received, start, throttled, cancel)
            self.stats.record(ok=True, total_s=result["timing"]["total_s"],
                              inference_s=result["timing"]["inference_s"],
                              tokens=result["timing"]["tokens"])
            return result
        except SageError as exc:
            failure = exc
        except Exception as exc:  # a bug or a library failure must still produce a result
            log.exception("generation failed")
            failure = SageError(errors.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")
        self.stats.record(ok=False, code=failure.code)
        return self.error_result(question, failure, received=received, start=start)

    def _answer(self, q: Question, received: float, start: float, throttled: bool,
                cancel: threading.Event | None) -> dict[str, Any]:
        irp_cfg = self.cfg.llm_irp
        self._check_memory_floor()
        if q.reset and q.conversation is not None:  # without one there is no history to clear
            self.history.reset(q.conversation)
        deadline_s = q.deadline_s or irp_cfg.deadline_s or None
        deadline = received + deadline_s if deadline_s else None
        if deadline is not None and time.monotonic() >= deadline:
            raise SageError(errors.DEADLINE, f"deadline of {deadline_s:g} s passed while the question was queued")
        adapt = throttled and self.cfg.throttle.enabled
        options = {"max_iterations": 1 if adapt else q.max_iterations,
                   "max_tokens": min(self.cfg.throttle.max_tokens, irp_cfg.max_tokens) if adapt else None,
                   "deadline": deadline, "cancel": cancel,
                   "greedy_candidate": False if adapt else None}  # throttled: only the sampled candidates
        # Prompt history: only the question's own named conversation (none without one). Surprise's
        # window: the same history in a conversation, else what the node heard last (docs/interface.md).
        history = self.history.get(q.conversation)
        heard = history if q.conversation is not None else self.history.heard()
        with self._lock:
            engine = self._engine()
            try:
                response, info = self._refine_with_oom_retry(engine, q, history, options)
            finally:
                if not self.cfg.model.keep_alive:
                    self.release_model_only()
        if not response:
            if info["halt_reason"] == HALT_DEADLINE:
                raise SageError(errors.DEADLINE, f"deadline of {deadline_s:g} s passed before any answer")
            if info["halt_reason"] == "cancelled":
                raise SageError(errors.SHUTTING_DOWN, "generation cancelled: the node is stopping")
            raise SageError(errors.INFERENCE_FAILED, "the model produced no answer text")
        inference_s = time.monotonic() - start
        scores = self.snarc.score(q.text, response, heard, final_energy=info["final_energy"])
        self.history.add(q.conversation, q.text, response)
        info["throttled"] = adapt
        result = self._result(q, ok=True, answer=response, error=None, snarc=scores.as_dict(),
                              irp=_irp_summary(info), received=received, start=start,
                              inference_s=inference_s, tokens=info["tokens"])
        self._store(q, response, scores, result)
        return result

    def _refine_with_oom_retry(self, engine: IRPEngine, q: Question, history, options):
        try:
            return engine.refine(q.text, q.context, history, **options)
        except SageError:
            raise
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_memory()
            fewer = max(1, (options["max_iterations"] or self.cfg.llm_irp.candidates) // 2)
            log.warning("out of memory during generation; retrying once with %d candidate(s), one per round",
                        fewer)
            try:
                return engine.refine(q.text, q.context, history, **{
                    **options, "max_iterations": fewer, "candidates_per_round": 1, "greedy_candidate": False})
            except Exception as again:
                if _is_oom(again):
                    _free_memory()
                    raise SageError(errors.OUT_OF_MEMORY, f"out of memory during generation, also with "
                                                          f"{fewer} candidate(s): {again}") from again
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
            lm, self.lm, self.engine = self.lm, None, None
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

    def _store(self, q: Question, response: str, scores, result: dict[str, Any]) -> None:
        if not scores.salient:
            return
        with self._lock:  # release() holds it while closing: never record into a store being closed
            store = self.store
            if store is None:
                return
            store.record(Exchange(stamp=result["stamp"], conversation=q.conversation, question_id=q.id,
                                  question=q.text, answer=response, scores=scores, irp=result["irp"],
                                  timing=result["timing"], model=result["model"] or ""))

    # -- results ----------------------------------------------------------------------------------
    def error_result(self, q: Question | None, error: SageError, *, question_id: str | None = None,
                     received: float | None = None, start: float | None = None) -> dict[str, Any]:
        """The result for a failed question (also used by the node for queue/lifecycle refusals)."""
        now = time.monotonic()
        received = now if received is None else received
        if q is None:
            q = Question(text="", id=question_id) if question_id else Question(text="")
        return self._result(q, ok=False, answer="", error=error.as_dict(), snarc=None, irp=None,
                            received=received, start=start or now, inference_s=0.0, tokens=0)

    def _result(self, q: Question, *, ok: bool, answer: str, error: dict | None, snarc: dict | None,
                irp: dict | None, received: float, start: float, inference_s: float,
                tokens: int) -> dict[str, Any]:
        total_s = time.monotonic() - received
        return {
            "id": q.id, "conversation": q.conversation, "question": q.text, "ok": ok, "answer": answer,
            "error": error, "snarc": snarc, "irp": irp,
            "timing": {"queued_s": round(start - received, 6), "inference_s": round(inference_s, 6),
                       "total_s": round(total_s, 6), "tokens": tokens,
                       "tokens_per_s": round(tokens / inference_s, 3) if inference_s > 0 else 0.0},
            "model": self.lm.model_id if self.lm is not None else None,
            "warnings": list(q.warnings), "stamp": time.time(),
        }

    def store_status(self) -> dict[str, Any]:
        store = self.store
        if store is None:  # not configured yet, or storage disabled with db_path 'none'
            return {"ok": True, "error": None, "path": None, "size_mb": None}
        return {"ok": store.healthy, "error": store.last_error, "path": str(store.path),
                "size_mb": round(store.size_bytes() / 2**20, 3), "pruned": store.pruned_count}


def _irp_summary(info: dict[str, Any]) -> dict[str, Any]:
    return {"iterations": info["iterations"], "candidates": info["candidates"], "rounds": info["rounds"],
            "best_energy": info["final_energy"], "energies": [round(e, 6) for e in info["all_energies"]],
            "temperatures": info["temperatures"], "halt_reason": info["halt_reason"],
            "converged": info["converged"], "finished": info["finished"], "throttled": info["throttled"],
            "history_used": info["history_used"], "prefill_s": info["prefill_s"],
            "decode_s": info["decode_s"], "scoring_s": info["scoring_s"]}


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                           or "can't allocate memory" in str(exc).lower()))


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
