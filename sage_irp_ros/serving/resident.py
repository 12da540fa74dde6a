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

"""The resident model, its engines and the memory store: loaded, rewired and released under two locks.

:class:`Resident` is the serving core's lifecycle: it loads the model once (or not at all when a remote
server generates with no fallback), wires the on-board engine and the remote backend, opens the store,
and frees them only after the running generation. ``lock`` is held for a whole generation, so the
model and the store are never freed under a running question; it is reentrant because with
``model.keep_alive: false`` a question loads the model under it. ``_state_lock`` guards the short swaps
of model, engines, store and settings (load, release, reconfigure); ``_store_lock`` the store's writes
and its closing, so results are written from the delivery thread while a generation holds ``lock``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from sage_irp_ros import errors
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import Generator
from sage_irp_ros.errors import ModelLoadError, SageError
from sage_irp_ros.irp.engine import IRPEngine
from sage_irp_ros.questions import Question
from sage_irp_ros.remote.backend import RemoteBackend
from sage_irp_ros.salience.memory_store import Exchange, MemoryStore, open_store
from sage_irp_ros.weights.loader import LoadedModel, apply_power_mode, load_model, release

log = logging.getLogger(__name__)


class Resident:
    """The model, engines, backend and store one core serves with."""

    def __init__(self, cfg: SageConfig, progress: Callable[[str], None],
                 wrap_generator: Callable[[Generator], Generator] | None = None):
        self.cfg = cfg
        self._progress = progress
        self._wrap_generator = wrap_generator
        self.lm: LoadedModel | None = None
        self.engine: IRPEngine | None = None
        self.backend: RemoteBackend | None = None  # remote.url set: the serving engine (and its fallback)
        self._local_engine: IRPEngine | None = None  # the on-board engine (choices, json_schema, fallback)
        self.store: MemoryStore | None = None
        self.lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._store_lock = threading.Lock()

    def load(self) -> LoadedModel | None:
        """Load the model (or reuse the resident one), warm it up and open the memory store.

        Any failure (also in warm-up: a RuntimeError, CUDA OOM) propagates after the model this call
        made resident is released again, so a retry does not hold a second copy. Settings changed by
        :meth:`reconfigure` while loading are applied to the engine that is installed.

        With ``remote.url`` set, candidates come from that server (:mod:`sage_irp_ros.remote.backend`); the
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
            self.install_engines(self.cfg)
            if self.store is None:
                self.store = open_store(self.cfg.memory)
        return lm

    def install_engines(self, cfg: SageConfig) -> None:
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

    def engine_for(self, q: Question) -> IRPEngine:
        """The engine for ``q``: choices and json_schema questions need the resident model's logits."""
        engine = self.engine_or_load()
        if self.backend is None or not (q.choices or q.json_schema is not None or q.tools):
            return engine
        if self._local_engine is None:
            raise SageError(errors.BACKEND_UNSUPPORTED, (
                "choices, json_schema and tools questions need the on-board model: this node generates on "
                f"{self.backend.remote.url} with remote.fallback: none"))
        return self._local_engine

    def release(self, timeout: float | None = None) -> bool:
        """Drop the model from memory (cleanup) and close the store, after the running generation.

        With ``timeout``, waits at most that long for a running generation; returns False (and
        releases nothing) when it is still running then.
        """
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
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
                with self._store_lock:
                    store.close()
        finally:
            self.lock.release()
        return True

    def engine_or_load(self) -> IRPEngine:
        """The engine; with ``model.keep_alive: false`` the model is loaded for this question."""
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

    def reconfigure(self, cfg: SageConfig) -> None:
        """New settings: the store's policy at once, the engines for the next question; model keys (and
        ``memory.db_path``) at the next :meth:`load`."""
        with self._state_lock:
            self.cfg = cfg
            if self.store is not None:
                self.store.set_policy(cfg.memory)
            if self.engine is not None:
                self.install_engines(cfg)

    def record(self, exchange: Exchange) -> None:
        """Keep a salient exchange; never into a store being closed (``_store_lock``). The serving run waits
        for its results' writes before it lets go of ``lock``, so release never drops one."""
        with self._store_lock:
            store = self.store
            if store is not None:
                store.record(exchange)
