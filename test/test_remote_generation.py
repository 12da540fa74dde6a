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

"""Remote generation against a real llama.cpp server: answers, the seam, and the fault matrix.

Every fault is real HTTP: the server itself (absent, killed, restarted) or :class:`FaultProxy` in front of
it (429/500/502, malformed or truncated JSON, no log-probs, a reply longer than asked, hanging, a
dropped connection). Each question gets exactly one result, the core keeps serving, and with
``remote.fallback: local`` a question during an outage is answered on board and says so.
"""

from __future__ import annotations

import json
import threading

import pytest

from llama_server import (API_KEY, DROP, FAULTS, HANG, HANG_SAMPLED, LONGER, MALFORMED, NO_LOGPROBS, PASS,
                          TRUNCATED, FaultProxy, LlamaServer, free_port, skip_reason)
from sage_irp_ros import errors
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.serving.core import SageCore
from sage_irp_ros.questions import Question
from sage_irp_ros.remote.generator import RemoteGenerator

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = LlamaServer(tmp_path_factory.mktemp("llama")).start()
    yield running
    running.kill()


@pytest.fixture
def proxy(server):
    running = FaultProxy(server.url)
    yield running
    running.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("SAGE_IRP_API_KEY", API_KEY)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_core(url: str, tmp_path, fallback: str = "none", local=None, **remote) -> SageCore:
    cfg = SageConfig.from_mapping({
        "remote": {"url": url, "fallback": fallback, "breaker_failures": 2, "breaker_backoff_s": 5.0,
                   "timeout_s": 60.0, **remote},
        "model": {"path": str(local) if local else "", "device": "cpu", "warmup": False},
        "memory": {"db_path": str(tmp_path / "memory.db")},
        "llm_irp": {"max_tokens": MAX_TOKENS, "candidates": 2, "min_available_memory_mb": 0, "stopping": "off"}})
    core = SageCore(cfg)
    core.load()
    return core


def _keys(value):
    return {k: _keys(v) for k, v in value.items()} if isinstance(value, dict) else None


def _ask(core: SageCore, text: str = "What is 2+2?", **fields):
    results = [core.answer(Question(text=text, **fields))]
    assert len(results) == 1
    return results[0]


# -- answers and the seam ------------------------------------------------------------------------
def test_remote_answer_has_the_on_board_shape(server, tiny_model_dir, tmp_path):
    remote = make_core(server.url, tmp_path / "r")
    local = make_core("", tmp_path / "l", local=tiny_model_dir)
    try:
        assert remote.lm is None  # fallback none: no model loaded at all
        got, want = _ask(remote), _ask(local)
        assert got.ok, got.error
        assert got.backend == "remote" and want.backend == "local"
        assert _keys(got.to_dict()) == _keys(want.to_dict())
        assert len(got.irp.energies) == len(want.irp.energies) == 3
        assert got.irp.temperatures == want.irp.temperatures == [0.7, 0.647, 0.0]
        assert len(got.irp.energies) == 3 and got.snarc is not None and got.model == "smollm2"
        assert 0 < got.timing.tokens <= 3 * MAX_TOKENS
        status = remote.status().to_dict()
        generation = status["generation"]
        assert generation["backend"] == "remote" and generation["reachable"] is True
        assert generation["breaker"]["state"] == "closed" and generation["fallback"] == "none"
        assert generation["latency"]["count"] >= 3 and generation["latency"]["p95_s"] > 0
        assert local.status().generation == {"backend": "local"}
        dumped = json.dumps(status) + json.dumps(remote.cfg.flat()) + got.to_json()
        assert API_KEY not in dumped  # the key is never in the status, the parameters or a result
    finally:
        remote.release()
        local.release()


def test_rows_are_requests_with_untempered_logprobs(server):
    from sage_irp_ros.config.schema import RemoteConfig

    generator = RemoteGenerator(RemoteConfig(url=server.url + "/v1/"), API_KEY)
    try:
        batch = generator.generate(GenerationRequest([], [0.7, 1.3, 0.0], MAX_TOKENS, messages=MESSAGES))
        again = generator.generate(GenerationRequest([], [0.0], MAX_TOKENS, messages=MESSAGES))
        plain = generator.generate(GenerationRequest([], [0.0], 4, prompt_text="The capital of France is"))
    finally:
        generator.close()
    assert [c.temperature for c in batch.candidates] == [0.7, 1.3, 0.0]
    for candidate in batch.candidates + plain.candidates:
        assert candidate.backend == "remote" and 0 < candidate.n_tokens <= MAX_TOKENS
        assert len(candidate.token_logprobs) == candidate.n_tokens
        assert all(lp <= 0.0 for lp in candidate.token_logprobs)
    # The greedy row is deterministic, and its log-probs are the model's (independent of the row's temperature).
    assert again.candidates[0].text == batch.candidates[2].text
    assert again.candidates[0].token_logprobs == pytest.approx(batch.candidates[2].token_logprobs, abs=1e-4)
    assert generator.snapshot()["requests"] >= 6 and generator.in_flight == 0


def test_n_is_topped_up_where_the_server_ignores_it(server):
    from sage_irp_ros.config.schema import RemoteConfig

    generator = RemoteGenerator(RemoteConfig(url=server.url, use_n=True), API_KEY)
    try:
        batch = generator.generate(GenerationRequest([], [0.9, 0.9, 0.9], 4, messages=MESSAGES))
    finally:
        generator.close()
    assert len(batch.candidates) == 3 and all(c.n_tokens > 0 for c in batch.candidates)


def test_a_wrong_key_is_refused_and_never_shown(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_IRP_API_KEY", "wrong-key-456")
    core = make_core(server.url, tmp_path)
    try:
        result = _ask(core)
        assert result.error_code == errors.BACKEND_UNAVAILABLE and "401" in result.error_message
        assert "wrong-key-456" not in result.to_json() + json.dumps(core.status().to_dict())
    finally:
        core.release()


def test_the_key_can_come_from_a_file(server, tmp_path, monkeypatch):
    monkeypatch.delenv("SAGE_IRP_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    core = make_core(server.url, tmp_path, api_key_file=str(key_file))
    try:
        assert _ask(core).ok
    finally:
        core.release()


def test_fallback_none_refuses_choices_and_json_with_a_clear_code(server, tmp_path):
    core = make_core(server.url, tmp_path)
    try:
        for fields in ({"choices": ["yes", "no"]}, {"json_schema": {"type": "object"}}):
            result = _ask(core, "Is the sky blue?", **fields)
            assert result.error_code == errors.BACKEND_UNSUPPORTED, result.error
        assert _ask(core).ok  # and keeps serving
    finally:
        core.release()


def test_fallback_local_answers_choices_on_board(server, tiny_model_dir, tmp_path):
    core = make_core(server.url, tmp_path, fallback="local", local=tiny_model_dir)
    try:
        result = _ask(core, "Is the sky blue?", choices=["yes", "no"])
        assert result.ok and result.backend == "local" and result.choice in ("yes", "no")
        assert _ask(core).backend == "remote"
    finally:
        core.release()


# -- the fault matrix ----------------------------------------------------------------------------
@pytest.mark.parametrize("fallback", ["none", "local"])
@pytest.mark.parametrize("fault", [*FAULTS, MALFORMED, TRUNCATED, NO_LOGPROBS, DROP])
def test_a_fault_gives_one_result_and_serving_goes_on(fault, fallback, proxy, tiny_model_dir, tmp_path):
    core = make_core(proxy.url, tmp_path, fallback=fallback, local=tiny_model_dir if fallback == "local" else None)
    try:
        proxy.mode = fault
        result = _ask(core)
        if fallback == "none":
            assert not result.ok and result.error_code == errors.BACKEND_UNAVAILABLE, result
        else:  # answered on board, and marked so
            assert result.ok and result.backend == "local_fallback", result.error
            assert core.status().generation["fallback_active"] is True
        assert core.status().generation["last_error"]
        proxy.mode = PASS
        after = _ask(core)
        assert after.ok and after.backend == "remote", after.error
        assert core.status().generation["fallback_active"] is False
    finally:
        core.release()


def test_a_reply_longer_than_asked_is_cut_to_max_tokens(proxy, tmp_path):
    core = make_core(proxy.url, tmp_path)
    try:
        proxy.mode = LONGER
        result = _ask(core)
        assert result.ok and result.timing.tokens <= 3 * MAX_TOKENS
        assert core.status().generation["overlong_replies"] >= 3
    finally:
        core.release()


def test_a_hanging_server_meets_the_deadline_with_the_best_so_far(proxy, tmp_path):
    core = make_core(proxy.url, tmp_path)
    try:
        proxy.mode = HANG_SAMPLED  # the greedy row answers, the sampled rows never do
        result = _ask(core, deadline_s=5.0)
        assert result.ok and result.irp.halt_reason == "deadline", result.error
        assert result.irp.temperatures == [0.7, 0.647, 0.0] and result.answer
        proxy.mode = HANG
        result = _ask(core, deadline_s=1.0)
        assert result.error_code == errors.DEADLINE, result.error
        assert core.backend.remote.in_flight == 0  # the cut requests were closed
    finally:
        core.release()


@pytest.mark.parametrize("fallback", ["none", "local"])
def test_a_hanging_server_times_out(fallback, proxy, tiny_model_dir, tmp_path):
    core = make_core(proxy.url, tmp_path, fallback=fallback, local=tiny_model_dir if fallback == "local" else None,
                     timeout_s=1.0)
    try:
        proxy.mode = HANG
        result = _ask(core)
        if fallback == "none":
            assert result.error_code == errors.BACKEND_UNAVAILABLE and "timeout" in result.error_message
        else:
            assert result.ok and result.backend == "local_fallback"
    finally:
        core.release()


@pytest.mark.parametrize("fallback", ["none", "local"])
def test_server_absent_at_start(fallback, tiny_model_dir, tmp_path):
    core = make_core(f"http://127.0.0.1:{free_port()}", tmp_path, fallback=fallback,
                     local=tiny_model_dir if fallback == "local" else None)
    try:
        generation = core.status().generation
        assert core.loaded and generation["reachable"] is False and "unreachable" in generation["last_error"]
        result = _ask(core)
        if fallback == "none":
            assert result.error_code == errors.BACKEND_UNAVAILABLE
        else:
            assert result.ok and result.backend == "local_fallback"
    finally:
        core.release()


def test_an_unknown_model_name_is_an_error_naming_it(server, tmp_path):
    core = make_core(server.url, tmp_path, model="no-such-model")
    try:
        assert "no-such-model" in core.status().generation["last_error"]
        result = _ask(core)
        assert result.error_code == errors.BACKEND_UNAVAILABLE and "no-such-model" in result.error_message
        assert "smollm2" in result.error_message  # what it serves instead
    finally:
        core.release()


def test_cancel_closes_the_requests(proxy, tmp_path):
    core = make_core(proxy.url, tmp_path)
    try:
        proxy.hold.set()
        cancel = threading.Event()
        results = []
        asker = threading.Thread(target=lambda: results.append(core.answer(Question(text="Hi"), cancel=cancel)))
        asker.start()
        assert proxy.seen.wait(60)
        cancel.set()
        asker.join(60)
        assert len(results) == 1 and results[0].error_code == errors.SHUTTING_DOWN, results
        assert core.backend.remote.in_flight == 0
        assert core.backend.breaker.state == "closed"  # a cancel is not the server's failure
    finally:
        proxy.release.set()
        core.release()


def test_killed_mid_question_then_the_breaker_opens_and_closes_on_restart(tmp_path):
    server = LlamaServer(tmp_path).start()
    proxy = FaultProxy(server.url)
    core = make_core(proxy.url, tmp_path)
    clock = FakeClock()
    core.backend.breaker._clock = clock
    results = []
    try:
        proxy.hold.set()
        asker = threading.Thread(target=lambda: results.append(_ask(core)))
        asker.start()
        assert proxy.seen.wait(60)
        server.kill()  # mid-question: the held requests reach a dead server
        proxy.release.set()
        asker.join(120)
        proxy.hold.clear()
        assert results[0].error_code == errors.BACKEND_UNAVAILABLE
        results.append(_ask(core))  # the second failure in a row opens the breaker
        assert core.backend.breaker.state == "open"
        hits = proxy.hits
        results.append(_ask(core))  # refused at once: the dead server is not asked
        assert results[-1].error_code == errors.BACKEND_UNAVAILABLE and "breaker open" in results[-1].error_message
        assert proxy.hits == hits and core.status().generation["breaker"]["state"] == "open"
        server.start()  # the same port
        clock.now += core.cfg.remote.breaker_backoff_s  # one breaker period later
        results.append(_ask(core))
        assert results[-1].ok and results[-1].backend == "remote", results[-1].error
        assert core.backend.breaker.state == "closed"
        assert len({r.id for r in results}) == len(results) == 4  # one result each, none duplicated
    finally:
        core.release()
        proxy.close()
        server.kill()


def test_a_bad_url_or_ca_file_fails_the_load_naming_the_key(tmp_path):
    from sage_irp_ros.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="remote.url"):
        make_core("gpu-host:8000", tmp_path)
    with pytest.raises(ModelLoadError, match="remote.ca_file"):
        make_core("https://127.0.0.1:1", tmp_path, ca_file=str(tmp_path / "missing.pem"))


# -- what counts against the breaker, Retry-After, the context window, cancel ------------------------
def _refused(status: int, headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    return status, {"error": {"message": f"injected {status}"}}, headers or {}


def test_a_bad_request_does_not_open_the_breaker_but_408_and_429_do(proxy, tmp_path):
    core = make_core(proxy.url, tmp_path)  # breaker_failures 2
    try:
        for status in (400, 404, 422, 400):  # the server is up and refuses this request: not the server's failure
            proxy.answer = _refused(status)
            result = _ask(core)
            assert result.error_code == errors.BACKEND_UNAVAILABLE and f"HTTP {status}" in result.error_message
        breaker = core.status().generation["breaker"]
        assert breaker["state"] == "closed" and breaker["consecutive_failures"] == 0 and breaker["opened"] == 0
        for status in (408, 429):  # "busy, try later": two in a row open it
            proxy.answer = _refused(status)
            assert f"HTTP {status}" in _ask(core).error_message
        assert core.backend.breaker.state == "open"
        hits = proxy.hits
        assert "breaker open" in _ask(core).error_message and proxy.hits == hits
    finally:
        core.release()


def test_retry_after_keeps_the_breaker_open_at_least_that_long(proxy, tmp_path):
    import email.utils
    import time

    core = make_core(proxy.url, tmp_path)  # backoff 5 s
    clock = FakeClock()
    core.backend.breaker._clock = clock
    try:
        proxy.answer = _refused(429, {"Retry-After": "120"})
        assert "HTTP 429" in _ask(core).error_message
        breaker = core.status().generation["breaker"]
        assert breaker["state"] == "open" and breaker["retry_in_s"] == 120.0  # one such answer opens it
        proxy.answer = None
        clock.now += 119.0  # long past the backoff, not past Retry-After
        hits = proxy.hits
        assert "breaker open" in _ask(core).error_message and proxy.hits == hits
        clock.now += 1.0
        assert _ask(core).backend == "remote" and core.backend.breaker.state == "closed"
        proxy.answer = _refused(503, {"Retry-After": email.utils.formatdate(time.time() + 600, usegmt=True)})
        assert "HTTP 503" in _ask(core).error_message
        assert core.status().generation["breaker"]["retry_in_s"] > 500  # an HTTP date, 600 s from now
    finally:
        core.release()


def test_a_prompt_over_the_servers_context_is_too_long_not_a_server_failure(server, proxy, tmp_path):
    core = make_core(server.url, tmp_path / "unknown")  # llama-cpp-python does not say its n_ctx: it refuses
    try:
        assert core.backend.remote.context_window is None
        result = _ask(core, "7" * 3000)  # a token per digit: over the server's 2048
        assert result.error_code == errors.TOO_LONG and "context" in result.error_message, result.error
        assert core.status().generation["breaker"]["consecutive_failures"] == 0
        assert _ask(core).ok
    finally:
        core.release()
    proxy.props = {"default_generation_settings": {"n_ctx": 8}}  # as llama.cpp's own server says it
    core = make_core(proxy.url, tmp_path / "known")
    try:
        assert core.backend.remote.context_window == 8
        hits = proxy.hits
        result = _ask(core)  # max_tokens 8 leaves no room for a prompt: refused before any request
        assert result.error_code == errors.TOO_LONG and "context window of 8 tokens" in result.error_message
        assert proxy.hits == hits
        core.backend.remote.context_window = 30  # room for max_tokens, not for this prompt: the reply says so
        result = _ask(core)
        assert result.error_code == errors.TOO_LONG and "context window of 30 tokens" in result.error_message
        assert proxy.hits > hits and core.backend.breaker.state == "closed"
    finally:
        core.release()


def test_cancel_closes_a_request_the_server_is_computing(server):
    """Closed on our side at once; llama-cpp-python finishes the abandoned request (docs/reliability.md)."""
    from sage_irp_ros.config.schema import RemoteConfig

    generator = RemoteGenerator(RemoteConfig(url=server.url), API_KEY)
    cancel = threading.Event()

    async def cancel_once_sent(request) -> None:
        if request.url.path.endswith("/completions"):
            cancel.set()

    generator._client.event_hooks["request"].append(cancel_once_sent)
    try:
        batch = generator.generate(GenerationRequest([], [0.0], 256, messages=MESSAGES, cancel=cancel))
        assert batch.stopped_early and batch.candidates[0].n_tokens == 0
        assert generator.in_flight == 0 and generator.failures == 0
        generator._client.event_hooks["request"].clear()
        after = generator.generate(GenerationRequest([], [0.0], MAX_TOKENS, messages=MESSAGES))
        assert after.candidates[0].n_tokens > 0  # the server serves on (once it has finished the abandoned one)
    finally:
        generator.close()
