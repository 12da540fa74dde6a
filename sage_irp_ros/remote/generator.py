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

"""The generation seam over an OpenAI-compatible serving engine (vLLM, llama.cpp server), over HTTP.

Every row of a request is its own HTTP request at its own temperature (the greedy row at 0), all in
flight at once, so the server batches them (vLLM's continuous batching; llama.cpp's server queues
them). With ``remote.use_n`` rows sharing a temperature go in one request with ``n`` (vLLM honours it;
a server that returns fewer choices gets the rest one by one). Requests use ``/v1/chat/completions``
with the request's chat messages (the server applies its own model's chat template), else
``/v1/completions`` with the rendered prompt text.

Concurrency: one ``httpx.AsyncClient`` (a pooled keep-alive connection per concurrent request, at most
``remote.max_concurrency``) on ONE event-loop thread per generator; no thread per request or token.
The caller's thread waits for its rows; a question's deadline bounds every request, and cancel or the
deadline cancels the requests still in flight, which closes their connections. Rows finished by then
are kept (best so far); rows cut off become empty, unfinished candidates, as on board.

Log-probabilities: ``Candidate.token_logprobs`` must be untempered (the model's own distribution).
llama.cpp's server reports the log-softmax of the model's raw logits (``Llama.logits_to_logprobs`` of
its scores, before the sampler applies temperature, top-k or top-p): untempered, comparable with the
on-board ones. vLLM reports what ``--logprobs-mode`` says; its default ``raw_logprobs`` is also before
temperature and every processor: keep that default (``processed_logprobs`` would be tempered).
Differences that remain: the server's tokenizer may split text differently, and the end-of-sequence
token's log-prob is not reported (on board it is), so a finished remote candidate has one log-prob
fewer. Token ids are not reported either: token strings are interned to stable ids per generator, so
repetition penalties (which compare ids) work; a vLLM server started with ``return_tokens_as_token_ids``
gives real ids (``token_id:N``), which are used as they are.

Sampling matches the on-board loop: plain temperature sampling (``top_p`` 1, and for llama.cpp
``top_k`` 0, ``min_p`` 0, ``repeat_penalty`` 1, whose defaults would otherwise truncate the
distribution). ``min_new_tokens`` is sent as vLLM's ``min_tokens`` (llama.cpp ignores it). A reply longer
than ``max_tokens`` is cut to ``max_tokens`` tokens (counted in the status). Every failure raises
:class:`RemoteError` (code ``backend_unavailable``, a ``kind`` saying which); constraints (grammar rows)
cannot be applied remotely and raise ``backend_unsupported``.

Context window: the probe reads the server's (vLLM: ``max_model_len`` in ``/v1/models``; llama.cpp: ``n_ctx``
in ``GET /props``). Known, a request whose prompt (its token ids, else ``usage.prompt_tokens`` of the reply)
plus ``max_tokens`` cannot fit fails as ``too_long``, as on board; so does the server's own refusal of a
prompt over its context (HTTP 400), known or not. Neither counts against the circuit breaker.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import httpx

from sage_irp_ros import errors
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest
from sage_irp_ros.config.schema import RemoteConfig
from sage_irp_ros.errors import ModelLoadError, SageError
from sage_irp_ros.remote.circuit_breaker import counts_as_failure, retry_after_s
from sage_irp_ros.serving.stats import latency_summary

POLL_S = 0.02  # how often the waiting caller looks at its cancel events (the on-board loop: every token)
UNREACHABLE, TIMEOUT, HTTP, MALFORMED, NO_LOGPROBS, UNKNOWN_MODEL, CONTEXT = (
    "unreachable", "timeout", "http", "malformed", "no_logprobs", "unknown_model", "context")
_CONTEXT_REFUSALS = ("context_length_exceeded", "maximum context length",  # llama-cpp-python, vLLM
                     "exceed_context_size", "exceeds the available context size")  # llama.cpp's server
_SAMPLING = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


class RemoteError(SageError):
    """A request to the generation server failed; ``kind``: one of the module's failure kinds; ``counts``: it
    counts towards the circuit breaker (never ``context``); ``retry_after_s``: the server's ``Retry-After``."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(errors.TOO_LONG if kind == CONTEXT else errors.BACKEND_UNAVAILABLE, message)
        self.kind, self.status, self.retry_after_s = kind, status, retry_after
        self.counts = kind != CONTEXT and counts_as_failure(status)


def read_api_key(cfg: RemoteConfig) -> str | None:
    """The API key: ``api_key_file``'s content (stripped) if set, else ``$api_key_env``; None when neither."""
    if cfg.api_key_file:
        try:
            key = Path(cfg.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ModelLoadError(f"cannot read remote.api_key_file {cfg.api_key_file}: {exc.strerror}") from exc
        return key or None
    return os.environ.get(cfg.api_key_env) or None if cfg.api_key_env else None


def display_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for status and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


class RemoteGenerator:
    """Candidates from a serving engine; one event-loop thread and one pooled HTTP client per instance."""

    def __init__(self, cfg: RemoteConfig, api_key: str | None = None):
        """``api_key``: sent as ``Authorization: Bearer``; held here only, never in status or logs."""
        self.cfg = cfg
        base = cfg.url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self.url = display_url(self.base_url)
        self.model: str | None = cfg.model or None
        self.context_window: int | None = None  # the server's, in tokens (None: it does not say)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=200)
        self._ids: dict[str, int] = {}
        self.requests = self.failures = self.overlong = self.in_flight = 0
        self._verified = False  # the server listed the configured model (probe succeeded)
        self.last_error: str | None = None
        self.reachable: bool | None = None
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            raise ModelLoadError(f"remote.url {self.url!r} is not an http:// or https:// URL with a host")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            verify: Any = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else cfg.verify_tls
        except (OSError, ssl.SSLError) as exc:
            raise ModelLoadError(f"cannot read remote.ca_file {cfg.ca_file}: {exc}") from exc
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sage_remote_http", daemon=True)
        self._thread.start()

        async def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url, headers=headers, verify=verify,
                timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
                limits=httpx.Limits(max_connections=cfg.max_concurrency,
                                    max_keepalive_connections=cfg.max_concurrency))

        self._client = asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connections and stop the event-loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def probe(self) -> list[str]:
        """``GET /v1/models``: the served model names; sets ``model`` when unset. Raises RemoteError
        (``unknown_model`` when ``remote.model`` is not among them)."""
        served = self._run(self._models(), [])
        if self.model is None and served:
            self.model = served[0]
        if self.context_window is None:
            self.context_window = self._run(self._props_n_ctx(), [])
        return served

    # -- the seam --------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Batch:
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        """Every row of every request in flight at once; one Batch per request, in order."""
        for request in requests:
            if request.constraints is not None and any(c is not None for c in request.constraints):
                raise SageError(errors.BACKEND_UNSUPPORTED,
                                "a generation server cannot apply on-board token constraints (json_schema)")
        if not self._verified:  # llama.cpp accepts any model name: check it is the one served
            self.probe()
        for request in requests:
            self._check_context(request.max_new_tokens, len(request.prompt_ids) or 1)
        stops = [asyncio.Event() for _ in requests]
        return self._run(self._many(list(requests), stops), [r.cancel for r in requests], stops)

    def _run(self, coro, cancels: Sequence[threading.Event | None], stops: Sequence[asyncio.Event] = ()):
        """Run ``coro`` on the loop thread; while it runs, pass each set cancel event on to its stop event."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        signalled: set[int] = set()
        while not done.wait(POLL_S if any(c is not None for c in cancels) else None):
            for i, cancel in enumerate(cancels):
                if i not in signalled and cancel is not None and cancel.is_set():
                    self._loop.call_soon_threadsafe(stops[i].set)
                    signalled.add(i)
        return future.result()

    # -- on the loop thread ----------------------------------------------------------------------
    async def _many(self, requests: list[GenerationRequest], stops: list[asyncio.Event]) -> list[Batch]:
        tasks = [asyncio.ensure_future(self._group(r, s)) for r, s in zip(requests, stops)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one group failed: the others stop too (their connections close)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _group(self, request: GenerationRequest, stop: asyncio.Event) -> Batch:
        """One request's rows until all are done, the deadline passes or ``stop`` is set."""
        start = time.monotonic()
        rows: dict[int, Candidate] = {}
        tasks = {asyncio.ensure_future(self._rows(request, idx)): idx for idx in self._jobs(request)}
        stopper = asyncio.ensure_future(stop.wait())
        pending, stopped = set(tasks), stop.is_set()
        try:
            while pending and not stopped:
                remaining = None if request.deadline is None else request.deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    stopped = True
                    break
                done, _ = await asyncio.wait(pending | {stopper}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                stopped = stopper in done
                for task in done - {stopper}:
                    pending.discard(task)
                    rows.update(zip(tasks[task], task.result()))  # a failed row raises here
        finally:
            stopper.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(stopper, *tasks, return_exceptions=True)
        candidates = [rows.get(i) or Candidate(text="", temperature=float(t), backend="remote")
                      for i, t in enumerate(request.temperatures)]
        return Batch(candidates, prefill_s=0.0, decode_s=time.monotonic() - start, stopped_early=stopped)

    def _jobs(self, request: GenerationRequest) -> list[tuple[int, ...]]:
        """Row indices per HTTP request: one each, or (``use_n``) those sharing a sampled temperature."""
        if not self.cfg.use_n:
            return [(i,) for i in range(request.rows)]
        groups: dict[float, list[int]] = {}
        for i, t in enumerate(request.temperatures):
            groups.setdefault(float(t) if t > 0 else -1.0 - i, []).append(i)
        return [tuple(g) for g in groups.values()]

    async def _rows(self, request: GenerationRequest, idx: tuple[int, ...]) -> list[Candidate]:
        """The candidates of rows ``idx`` (one temperature): one request with ``n``, topped up one by one."""
        temperature = float(request.temperatures[idx[0]])
        out = await self._post(request, temperature, len(idx))
        while len(out) < len(idx):  # the server ignored n
            out += await self._post(request, temperature, 1)
        return out[:len(idx)]

    async def _post(self, request: GenerationRequest, temperature: float, n: int) -> list[Candidate]:
        chat = request.messages is not None
        if not chat and request.prompt_text is None:
            raise SageError(errors.INFERENCE_FAILED, "a remote request needs chat messages or prompt text")
        body: dict[str, Any] = {"model": self.model, "max_tokens": int(request.max_new_tokens),
                                "temperature": temperature, "stream": False, **_SAMPLING}
        if n > 1:
            body["n"] = n
        if request.min_new_tokens:
            body["min_tokens"] = int(request.min_new_tokens)
        if chat:
            body.update(messages=list(request.messages), logprobs=True, top_logprobs=0)
        else:
            body.update(prompt=request.prompt_text, logprobs=1)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        data = await self._request("POST", path, body)
        try:
            usage = data.get("usage") or {}
            if isinstance(usage.get("prompt_tokens"), int):
                self._check_context(request.max_new_tokens, usage["prompt_tokens"])
            choices = data["choices"]
            return [self._candidate(c, chat, temperature, request.max_new_tokens) for c in choices[:max(n, 1)]]
        except RemoteError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise self._failed(RemoteError(MALFORMED, f"malformed reply from {self.url}{path}: "
                                                      f"{type(exc).__name__}: {exc}"))

    async def _models(self) -> list[str]:
        data = await self._request("GET", "/v1/models", None)
        try:
            served = [str(m["id"]) for m in data["data"]]
            lengths = [m["max_model_len"] for m in data["data"] if isinstance(m.get("max_model_len"), int)]
            if lengths and (not self.cfg.model or self.cfg.model in served):
                self.context_window = min(lengths)  # vLLM
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._failed(RemoteError(MALFORMED, f"malformed model list from {self.url}: {exc}"))
        if self.cfg.model and self.cfg.model not in served:
            raise self._failed(RemoteError(UNKNOWN_MODEL, f"model {self.cfg.model!r} is not served by {self.url} "
                                                          f"(it serves: {', '.join(served) or 'none'})"))
        self._verified = True
        return served

    async def _props_n_ctx(self) -> int | None:
        """llama.cpp server's context size from ``GET /props``; None from a server without it (no failure)."""
        try:
            props = (await asyncio.wait_for(self._client.get("/props"), self.cfg.timeout_s)).raise_for_status().json()
            n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx") or props.get("n_ctx")
        except (asyncio.TimeoutError, httpx.HTTPError, ValueError, AttributeError):
            return None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    def _check_context(self, max_tokens: int, prompt_tokens: int) -> None:
        """Raise ``too_long`` when ``prompt_tokens`` plus ``max_tokens`` exceed the server's known context."""
        window = self.context_window
        if window is not None and prompt_tokens + max_tokens > window:
            raise RemoteError(CONTEXT, f"prompt is {prompt_tokens} tokens; with max_tokens {max_tokens} it exceeds "
                                       f"the generation server's context window of {window} tokens ({self.url})")

    async def _request(self, method: str, path: str, body: dict | None) -> Any:
        """One HTTP exchange, bounded by ``remote.timeout_s``; its JSON, or RemoteError."""
        begin = time.monotonic()
        with self._lock:
            self.in_flight += 1
        try:
            response = await asyncio.wait_for(self._client.request(method, path, json=body), self.cfg.timeout_s)
            payload = response.content
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            raise self._failed(RemoteError(TIMEOUT, (
                f"{self.url}{path} did not answer within remote.timeout_s = {self.cfg.timeout_s:g} s "
                f"(timeout: {type(exc).__name__})")))
        except httpx.HTTPError as exc:
            raise self._failed(RemoteError(UNREACHABLE, f"{self.url} unreachable: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self.in_flight -= 1
        status = response.status_code
        if status >= 400:
            detail = payload[:300].decode("utf-8", errors="replace")
            kind = UNKNOWN_MODEL if status == 404 and "model" in detail.lower() else HTTP
            if status == 400 and any(text in detail for text in _CONTEXT_REFUSALS):
                kind = CONTEXT
            wait = retry_after_s(response.headers.get("retry-after")) if status in (429, 503) else None
            raise self._failed(RemoteError(kind, f"{self.url}{path} answered HTTP {status}: {detail}",
                                           status=status, retry_after=wait))
        try:
            data = response.json()
        except ValueError as exc:
            raise self._failed(RemoteError(MALFORMED, f"{self.url}{path} sent a reply that is not JSON: {exc}"))
        with self._lock:
            self.requests += 1
            self.reachable = True
            self._latencies.append(time.monotonic() - begin)
        return data

    def _failed(self, error: RemoteError) -> RemoteError:
        with self._lock:
            self.failures += 1
            self.last_error = f"{error.kind}: {error.message}"
            if error.kind in (UNREACHABLE, TIMEOUT):
                self.reachable = False
        return error

    def _candidate(self, choice: dict, chat: bool, temperature: float, max_tokens: int) -> Candidate:
        """One reply choice as a candidate: text, interned token ids, untempered log-probs, finished."""
        logprobs = choice.get("logprobs")
        if chat:
            text = choice["message"]["content"] or ""
            content = logprobs.get("content") if isinstance(logprobs, dict) else None
            if content is None:
                raise self._failed(RemoteError(NO_LOGPROBS, f"{self.url} sent no log-probabilities (llama.cpp: "
                                                            "start the server with --logits_all true)"))
            tokens = [str(c["token"]) for c in content]
            values = [c["logprob"] for c in content]
        else:
            text = choice["text"] or ""
            if not isinstance(logprobs, dict) or logprobs.get("token_logprobs") is None:
                raise self._failed(RemoteError(NO_LOGPROBS, f"{self.url} sent no log-probabilities"))
            tokens, values = [str(t) for t in logprobs["tokens"]], logprobs["token_logprobs"]
        if len(tokens) != len(values) or not all(isinstance(v, (int, float)) and not math.isnan(v) for v in values):
            raise ValueError("tokens and log-probs do not match")
        finished = choice.get("finish_reason") == "stop"
        if len(tokens) > max_tokens:  # a reply longer than asked: keep what was asked for
            tokens, values, finished = tokens[:max_tokens], values[:max_tokens], False
            text = "".join(tokens)
            with self._lock:
                self.overlong += 1
        return Candidate(text=text, temperature=temperature, token_ids=[self._id(t) for t in tokens],
                         token_logprobs=[float(v) for v in values], finished=finished, backend="remote")

    def _id(self, token: str) -> int:
        if token.startswith("token_id:") and token[9:].isdigit():
            return int(token[9:])
        with self._lock:
            return self._ids.setdefault(token, len(self._ids))

    # -- status ----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Counts and request latency percentiles for the status (no key, no credentials)."""
        with self._lock:
            return {"url": self.url, "model": self.model, "reachable": self.reachable, "requests": self.requests,
                    "failures": self.failures, "overlong_replies": self.overlong, "last_error": self.last_error,
                    "latency": latency_summary(self._latencies, digits=4)}
