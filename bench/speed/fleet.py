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

"""A fleet of robots on one generation server: K IRP nodes (processes, namespaces) against one llama.cpp server.

    python -m bench.speed.fleet [--fleet 1,2,4,8] [--questions 4] [--max-tokens 16] [--update-docs]

Starts ``python -m llama_cpp.server`` with the embedded SmolLM2 GGUF on a free 127.0.0.1 port and the
largest K of ``sage_irp run --remote-url URL --remote-fallback none`` processes, each in its own
namespace (as robots would be); for each K the first K nodes ask ``--questions`` questions each, one
after the other (a robot waits for its answer), all K at once, over the real topics. Reported per K:
answers per second and the p50/p95 latency from question sent to result received. Then, in the same
run, one on-board node (the embedded model, the same settings) answers the same questions: the
comparison. Also measured: the remote path's overhead, a request through ``RemoteGenerator`` against
the same request posted raw (the server's own time). Writes ``bench/results/fleet.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.record import add_update_docs_flag, run_info, update_docs, write_result

QUESTIONS = ("What is 2+2?", "Name a primary colour.", "What does a robot's battery store?",
             "Is the sky blue on a clear day?", "What is the capital of France?", "Name a planet.",
             "What do plants need to grow?", "How many legs does a spider have?")
ALIAS = "smollm2"
_WARM: set[str] = set()  # namespaces whose node has answered its first question


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """The llama.cpp server on a free port, ready (``/v1/models`` answers)."""
    from sage_irp_ros.weights.embedded_model import embedded_gguf

    port = _port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias", ALIAS,
            "--logits_all", "true", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "false"]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"llama.cpp server did not start: {log.read_text()[-2000:]}")


def start_node(namespace: str, params: dict[str, object], log: Path, remote_url: str = "") -> subprocess.Popen:
    """``sage_irp run`` (IRP node only) in ``namespace``."""
    args = [sys.executable, "-m", "sage_irp_ros.tools.cli", "run", "--no-diagnostics", "--namespace", namespace]
    if remote_url:
        args += ["--remote-url", remote_url, "--remote-fallback", "none"]
    args += ["--ros-args", *[a for k, v in params.items() for a in ("-p", f"{k}:={v}")]]
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=os.environ.copy())


def drive(namespaces: list[str], questions: int, timeout: float) -> dict[str, object]:
    """Each namespace's node asks ``questions`` questions in turn, all namespaces at once, over the topics."""
    import threading

    import rclpy

    from sage_irp_ros.ros.client import SageClient, spinning

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"fleet_driver_{os.getpid()}", context=context)
    clients = [SageClient(node, namespace=ns) for ns in namespaces]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    try:
        with spinning(node):
            for client in clients:
                if not client.wait_until_ready(timeout) or not client.wait_for_node(timeout):
                    raise RuntimeError(f"a node did not become ready: {client.status}")
            for ns, client in zip(namespaces, clients):  # a node's first question is not the fleet's
                if ns not in _WARM:
                    client.ask("Warm-up.", timeout=timeout)
                    _WARM.add(ns)

            def robot(index: int, client: SageClient) -> None:
                for q in range(questions):
                    start = time.monotonic()
                    result = client.ask(QUESTIONS[(index + q) % len(QUESTIONS)], timeout=timeout)
                    with lock:
                        latencies.append(time.monotonic() - start)
                        if not result.ok:
                            failures.append(result.error_code or "?")
            begin = time.monotonic()
            threads = [threading.Thread(target=robot, args=(i, c)) for i, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.monotonic() - begin
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    values = sorted(latencies)
    return {"nodes": len(namespaces), "answers": len(values) - len(failures), "failures": failures,
            "wall_s": round(wall, 3), "answers_per_s": round((len(values) - len(failures)) / wall, 3),
            "p50_s": round(statistics.median(values), 3),
            "p95_s": round(statistics.quantiles(values, n=100, method="inclusive")[94], 3)}


def overhead(url: str, max_tokens: int, repeats: int) -> dict[str, object]:
    """One greedy row through RemoteGenerator vs the same request posted raw (alternated, medians)."""
    from sage_irp_ros.decoding.generator import GenerationRequest
    from sage_irp_ros.config.schema import RemoteConfig
    from sage_irp_ros.remote.generator import _SAMPLING, RemoteGenerator

    messages = [{"role": "user", "content": "Describe a robot's day."}]
    body = {"model": ALIAS, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": False,
            "logprobs": True, "top_logprobs": 0, **_SAMPLING}
    generator = RemoteGenerator(RemoteConfig(url=url, model=ALIAS))
    plain = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
    raw, ours, bare = [], [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        generator.probe()
        client.post("/v1/chat/completions", json=body).raise_for_status()  # the prompt is in the server's cache
        for _ in range(repeats):
            start = time.monotonic()
            client.post("/v1/chat/completions", json=body).raise_for_status()
            raw.append(time.monotonic() - start)
            start = time.monotonic()
            generator.generate(GenerationRequest([], [0.0], max_tokens, messages=messages))
            ours.append(time.monotonic() - start)
            start = time.monotonic()
            client.post("/v1/chat/completions", json=plain).raise_for_status()
            bare.append(time.monotonic() - start)
    generator.close()
    server, through = statistics.median(raw), statistics.median(ours)
    return {"server_s": round(server, 4), "remote_generator_s": round(through, 4),
            "overhead_pct": round(100 * (through - server) / server, 2), "repeats": repeats,
            "server_without_logprobs_s": round(statistics.median(bare), 4), "max_tokens": max_tokens}


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def table(result: dict[str, object]) -> str:
    lines = ["| engine | robots (IRP nodes) | questions | answers/s | p50 latency s | p95 latency s | failures |",
             "|---|---|---|---|---|---|---|"]
    for row in result["fleet"]:
        lines.append(f"| llama.cpp server (remote) | {row['nodes']} | {row['answers'] + len(row['failures'])} | "
                     f"{row['answers_per_s']:.2f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | {len(row['failures'])} |")
    row = result["on_board"]
    lines.append(f"| on-board engine (each robot its own model) | 1 | {row['answers'] + len(row['failures'])} | "
                 f"{row['answers_per_s']:.2f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | {len(row['failures'])} |")
    o = result["overhead"]
    lines += ["", f"Remote path overhead: one greedy {o['max_tokens']}-token row through `RemoteGenerator` "
              f"{o['remote_generator_s']:.3f} s vs the same request posted raw {o['server_s']:.3f} s "
              f"(median of {o['repeats']}, alternated): {o['overhead_pct']:+.1f} %. The same request without "
              f"log-probs takes {o['server_without_logprobs_s']:.3f} s: llama-cpp-python's server computes them "
              "in Python, sorting the whole vocabulary at every token."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", default="1,2,4,8", help="comma-separated K values")
    parser.add_argument("--questions", type=int, default=4, help="questions per robot and K")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=2, help="sampled candidates (+ the greedy row)")
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    add_update_docs_flag(parser, "fleet")
    args = parser.parse_args(argv)
    fleet = [int(k) for k in args.fleet.split(",")]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"sage_fleet_{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.update(ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    params = {"llm_irp.max_tokens": args.max_tokens, "llm_irp.candidates": args.candidates,
              "memory.db_path": "none", "llm_irp.min_available_memory_mb": 0, "node.status_period_s": 1.0}
    result: dict[str, object] = {"run": run_info(argv, "bench.speed.fleet"), "settings": vars(args)}
    server, url = start_server(logs / "server.log", args.server_threads)
    nodes: list[subprocess.Popen] = []
    try:
        names = [f"/fleet/robot{i}" for i in range(max(fleet))]
        nodes = [start_node(ns, params, logs / f"robot{i}.log", url) for i, ns in enumerate(names)]
        result["fleet"] = []
        for k in fleet:
            row = drive(names[:k], args.questions, timeout=300)
            print(f"[fleet] K={k}: {row}", flush=True)
            result["fleet"].append(row)
        _stop(nodes)  # the overhead is measured on an otherwise idle machine
        result["overhead"] = overhead(url, 32, 9)
        print(f"[fleet] overhead: {result['overhead']}", flush=True)
    finally:
        _stop(nodes)
        server.kill()
    local = start_node("/fleet/onboard", params, logs / "onboard.log")
    try:
        result["on_board"] = drive(["/fleet/onboard"], args.questions, timeout=600)
        print(f"[fleet] on board: {result['on_board']}", flush=True)
    finally:
        local.terminate()
        local.wait(timeout=60)
    path = write_result("fleet", result, args.out)
    text = table(result)
    print(text)
    print(f"[fleet] wrote {path}")
    if args.update_docs and not update_docs("fleet", text):
        print("[fleet] docs/performance.md has no bench:fleet markers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
