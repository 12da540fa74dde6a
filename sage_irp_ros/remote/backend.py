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

"""The generation backend of a node with a serving engine: remote first, on board when it fails.

:class:`RemoteBackend` is a :class:`~sage_irp_ros.decoding.generator.Generator`. Each call goes to the
:class:`~sage_irp_ros.remote.generator.RemoteGenerator` while the circuit breaker lets it; when the
request fails (unreachable, timeout, an HTTP error, a malformed reply or one without log-probs, an
unknown model) or the breaker is open, the same request runs on the on-board generator
(``remote.fallback: local``; its candidates say ``local_fallback``), or the call raises
``backend_unavailable`` (``fallback: none``; ``too_long`` for a prompt over the server's context window).
A request cut short by its deadline or a cancel before any row finished is neither a success nor a
failure for the breaker: the question's budget ended, not the server. Neither is an HTTP 4xx other than
408 and 429: the server is up and refused that one request. A ``Retry-After`` (429, 503) keeps the
breaker open at least that long. Scoring (``score``/``score_options``: choices questions,
``IRPEngine.energy``) and constrained rows (json_schema) need the resident model's logits: they run on
board, or raise ``backend_unsupported`` without one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

from sage_irp_ros import errors
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest, Generator, generate_all
from sage_irp_ros.remote.circuit_breaker import OPEN, CircuitBreaker
from sage_irp_ros.config.schema import RemoteConfig
from sage_irp_ros.errors import SageError
from sage_irp_ros.remote.generator import RemoteError, RemoteGenerator, read_api_key

log = logging.getLogger(__name__)
LOCAL, REMOTE, LOCAL_FALLBACK = "local", "remote", "local_fallback"
NEEDS_LOCAL = "needs the on-board model (remote.fallback: local)"


def backend_of(candidates: Sequence[Candidate]) -> str:
    """A result's ``backend``: local_fallback if any candidate came from the fallback, else remote or local."""
    kinds = {c.backend for c in candidates}
    return LOCAL_FALLBACK if LOCAL_FALLBACK in kinds else REMOTE if REMOTE in kinds else LOCAL


class RemoteBackend:
    """Remote generation with a circuit breaker and an optional on-board fallback."""

    def __init__(self, remote: RemoteGenerator, local: Generator | None, breaker: CircuitBreaker):
        self.remote, self.local, self.breaker = remote, local, breaker
        self._lock = threading.Lock()
        self.fallbacks = 0
        self.fallback_active = False

    @classmethod
    def from_config(cls, cfg: RemoteConfig, local: Generator | None) -> "RemoteBackend":
        """Built from ``remote:``; probes the server once (its failure only shows in the status)."""
        backend = cls(RemoteGenerator(cfg, read_api_key(cfg)), local,
                      CircuitBreaker(cfg.breaker_failures, cfg.breaker_backoff_s, cfg.breaker_max_backoff_s))
        backend.probe()
        return backend

    def probe(self) -> bool:
        """Ask the server for its models (through the breaker); True when it answered as configured."""
        if not self.breaker.allow():
            return False
        try:
            self.remote.probe()
        except RemoteError as exc:
            self._count(exc)
            log.warning("generation server: %s", exc.message)
            return False
        self.breaker.success()
        return True

    def close(self) -> None:
        self.remote.close()

    # -- the seam --------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Batch:
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        if any(r.constraints is not None and any(c is not None for c in r.constraints) for r in requests):
            return self._local(requests, LOCAL, "constrained rows (json_schema) " + NEEDS_LOCAL)
        if not self.breaker.allow():
            retry = self.breaker.retry_in_s()
            when = f"next try in {retry:.1f} s" if retry is not None else "a trial request is in flight"
            return self._local(requests, LOCAL_FALLBACK, f"generation server circuit breaker open ({when}); "
                                                         f"last error: {self.remote.last_error}")
        try:
            batches = self.remote.generate_many(requests)
        except RemoteError as exc:
            self._count(exc)
            log.warning("generation server failed: %s", exc.message)
            return self._local(requests, LOCAL_FALLBACK, exc.message, exc.code)
        except BaseException:
            self.breaker.release_trial()
            raise
        if all(b.stopped_early and not any(c.token_ids or c.finished for c in b.candidates) for b in batches):
            self.breaker.release_trial()  # cut by the deadline or a cancel before any row came back
        else:
            self.breaker.success()
        with self._lock:
            self.fallback_active = False
        return batches

    def _count(self, exc: RemoteError) -> None:
        """A failed request for the breaker: a failure (with the server's Retry-After), or neither."""
        if exc.counts:
            self.breaker.failure(exc.retry_after_s)
        else:
            self.breaker.release_trial()

    def score(self, prompt_ids: Sequence[int], text: str) -> Candidate:
        return self._need_local("scoring an answer").score(prompt_ids, text)

    def score_options(self, prompt_ids: Sequence[int], neutral_ids: Sequence[int],
                      options: Sequence[str]) -> list[Any]:
        return self._need_local("scoring choices").score_options(prompt_ids, neutral_ids, options)

    def _need_local(self, what: str) -> Generator:
        if self.local is None:
            raise SageError(errors.BACKEND_UNSUPPORTED, f"{what} {NEEDS_LOCAL}")
        return self.local

    def _local(self, requests: Sequence[GenerationRequest], label: str, reason: str,
               code: str = errors.BACKEND_UNAVAILABLE) -> list[Batch]:
        """``requests`` on board, candidates marked ``label``; without an on-board model the reason is raised
        (``code``; ``backend_unsupported`` for ``label`` local)."""
        if self.local is None:
            code = errors.BACKEND_UNSUPPORTED if label == LOCAL else code
            raise SageError(code, reason + ("" if label == LOCAL else " (remote.fallback: none)"))
        if label == LOCAL_FALLBACK:
            with self._lock:
                self.fallbacks += 1
                self.fallback_active = True
        batches = generate_all(self.local, requests)
        for batch in batches:
            for candidate in batch.candidates:
                candidate.backend = label
        return batches

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status' ``generation`` object (docs/interface.md): where candidates come from and how it goes."""
        breaker = self.breaker.snapshot()
        with self._lock:
            active = self.fallback_active or (self.local is not None and breaker["state"] == OPEN)
            fallbacks = self.fallbacks
        return {"backend": REMOTE, **self.remote.snapshot(), "fallback": LOCAL if self.local is not None else "none",
                "fallback_active": active, "fallbacks": fallbacks, "breaker": breaker}


def local_status() -> dict[str, Any]:
    """The ``generation`` object of a node that generates on board."""
    return {"backend": LOCAL}
