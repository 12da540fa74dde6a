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

"""Serving under load, measured from outside over the real topics: one question at a time vs batched.

    python -m bench.speed.arrivals [--batch-sizes 1,4] [--rates 0.1,0.25,0.5,1] [--questions 16] [--update-docs]

For each ``node.batch_size`` (same run, one after the other) an IRP node is started in its own process
with config/edge.yaml (its own ROS domain, localhost discovery, no memory store), and a driver in this
process publishes questions on ``question`` and times each ``result`` from the moment it was published:

- ``lone``: questions one at a time, each after the previous result (a question alone);
- ``burst``: 4 questions published together, after the previous burst's results, ``--repeats`` times:
  throughput with 4 waiting questions (answers over the bursts' summed spans);
- ``joining``: "What is 2+2?" alone, then a long story question and, 1.5 s after it, "What is 2+2?" again:
  how long the short question takes while the long one decodes, and which result is published first;
- ``rate R``: questions arriving every 1/R s: answered, refused, cut by the deadline (halt reason
  ``deadline``), p50/p95 latency and answers per second.

Questions come from the quality question set (bench/quality/questions.json), in order, so every
configuration is asked the same ones. Writes ``arrivals.json``; ``--update-docs`` rewrites the
"Serving under load" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from bench.record import REPO, add_update_docs_flag, run_info, update_docs, write_result

NAME = "arrivals"
SECTION = "arrivals"
RESULT_TIMEOUT_S = 300.0
LONG = "Tell me a long story about a robot that learns to cook, with many details."
SHORT = "What is 2+2?"
JOIN_AFTER_S = 1.5


def _questions() -> list[str]:
    items = json.loads((REPO / "bench" / "quality" / "questions.json").read_text())
    return [item["q"] for item in items]


class Driver:
    """This process's side: publishes questions, keeps every result with its receipt time."""

    def __init__(self, domain: int, namespace: str):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.String = String
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node(f"arrivals_{uuid.uuid4().hex[:6]}", context=self.ctx)
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.cond = threading.Condition()
        self.results: dict[str, tuple[float, dict]] = {}
        self.status: dict[str, Any] = {}
        self.pub = self.node.create_publisher(String, f"{namespace}/question", reliable)
        self.node.create_subscription(String, f"{namespace}/result", self._on_result, reliable)
        self.node.create_subscription(String, f"{namespace}/status", self._on_status, latched)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context shut down at the end
            pass

    def _on_result(self, msg) -> None:
        result = json.loads(msg.data)
        with self.cond:
            self.results[result.get("id")] = (time.monotonic(), result)
            self.cond.notify_all()

    def _on_status(self, msg) -> None:
        with self.cond:
            self.status = json.loads(msg.data)
            self.cond.notify_all()

    def wait_ready(self, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.status.get("state") == "ready"
                                      and self.pub.get_subscription_count() > 0, timeout):
                raise RuntimeError(f"the node did not become ready in {timeout:g} s: {self.status}")

    def ask(self, text: str) -> tuple[str, float]:
        qid = uuid.uuid4().hex[:10]
        sent = time.monotonic()
        self.pub.publish(self.String(data=json.dumps({"id": qid, "question": text})))
        return qid, sent

    def wait(self, ids: list[str], timeout: float = RESULT_TIMEOUT_S) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: all(i in self.results for i in ids), timeout):
                missing = [i for i in ids if i not in self.results]
                raise RuntimeError(f"{len(missing)} results missing after {timeout:g} s")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()


def _stats(driver: Driver, sent: dict[str, float]) -> dict[str, Any]:
    """Latency, outcomes and throughput of the questions ``sent`` (id -> publish time)."""
    rows = [(driver.results[i][0] - t, driver.results[i][1], t, driver.results[i][0]) for i, t in sent.items()]
    ok = [r for r in rows if r[1]["ok"]]
    latencies = sorted(r[0] for r in ok)
    refused = [r for r in rows if not r[1]["ok"]]
    span = max(r[3] for r in rows) - min(r[2] for r in rows)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else None

    return {"questions": len(rows), "answered": len(ok),
            "refused": {code: sum(1 for r in refused if r[1]["error"]["code"] == code)
                        for code in sorted({r[1]["error"]["code"] for r in refused})},
            "deadline_cut": sum(1 for r in ok if (r[1].get("irp") or {}).get("halt_reason") == "deadline"),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None, "p95_s": pct(0.95),
            "max_s": round(latencies[-1], 3) if latencies else None,
            "answers_per_s": round(len(ok) / span, 4) if span > 0 else None,
            "mean_inference_s": round(statistics.mean(r[1]["timing"]["inference_s"] for r in ok), 3) if ok else None}


def measure(batch_size: int, rates: list[float], questions: int, lone: int, burst: int, repeats: int,
            bank: list[str], extra: list[str]) -> dict[str, Any]:
    """One node with ``node.batch_size = batch_size``: lone, burst and every arrival rate."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    namespace = f"/bench_{uuid.uuid4().hex[:6]}"
    log = tempfile.NamedTemporaryFile("w", prefix="arrivals-node-", suffix=".log", delete=False)
    args = [sys.executable, "-m", "sage_irp_ros.ros.irp_node", "--ros-args", "-r", f"__ns:={namespace}",
            "--params-file", str(REPO / "config" / "edge.yaml"), "-p", f"node.batch_size:={batch_size}",
            "-p", "memory.db_path:=none", "-p", "node.queue_size:=8"]
    for item in extra:
        args += ["-p", item]
    node = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    driver = Driver(int(env["ROS_DOMAIN_ID"]), namespace)
    texts = iter(bank * 10)
    out: dict[str, Any] = {"batch_size": batch_size, "node_log": log.name}
    try:
        driver.wait_ready(300.0)
        sent: dict[str, float] = {}
        for _ in range(lone):
            qid, t = driver.ask(next(texts))
            driver.wait([qid])
            sent[qid] = t
        out["lone"] = _stats(driver, sent)
        print(f"batch_size {batch_size}: lone {out['lone']}", flush=True)
        bursts, spans = {}, []
        for _ in range(repeats):  # each burst after the previous one's results: 4 waiting, `repeats` times
            sent = dict(driver.ask(next(texts)) for _ in range(burst))
            driver.wait(list(sent))
            spans.append(max(driver.results[i][0] for i in sent) - min(sent.values()))
            bursts.update(sent)
        out["burst"] = {**_stats(driver, bursts), "repeats": repeats,
                        "answers_per_s": round(len(bursts) / sum(spans), 4)}
        print(f"batch_size {batch_size}: {repeats} bursts of {burst} {out['burst']}", flush=True)
        out["joining"] = joining(driver)
        print(f"batch_size {batch_size}: joining {out['joining']}", flush=True)
        out["rates"] = []
        for rate in rates:
            count = max(4, min(questions, round(questions * rate * 2)))  # 16 at 0.5/s: one every 2 s
            sent = {}
            start = time.monotonic()
            for i in range(count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the arrival schedule itself, not synchronisation
                qid, t = driver.ask(next(texts))
                sent[qid] = t
            driver.wait(list(sent))
            row = {"rate_per_s": rate, **_stats(driver, sent)}
            out["rates"].append(row)
            print(f"batch_size {batch_size}: {rate:g}/s {row}", flush=True)
    finally:
        driver.close()
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
    return out


def joining(driver: Driver) -> dict[str, Any]:
    """A short question alone, then the same question arriving while a long one decodes."""
    qid, sent = driver.ask(SHORT)
    driver.wait([qid])
    alone = driver.results[qid][0] - sent
    long_id, long_sent = driver.ask(LONG)
    time.sleep(JOIN_AFTER_S)  # the arrival schedule itself, not synchronisation
    short_id, short_sent = driver.ask(SHORT)
    driver.wait([long_id, short_id])
    (long_at, long_result), (short_at, short_result) = driver.results[long_id], driver.results[short_id]
    return {"short_alone_s": round(alone, 3), "long_s": round(long_at - long_sent, 3),
            "short_while_long_s": round(short_at - short_sent, 3), "short_first": short_at < long_at,
            "long_tokens": long_result["timing"]["tokens"], "short_tokens": short_result["timing"]["tokens"],
            "short_batch": (short_result.get("irp") or {}).get("batch")}


def table(result: dict[str, Any]) -> str:
    """Markdown: lone and burst per batch size, then the arrival rates side by side."""
    runs = result["runs"]
    lines = ["| node.batch_size | lone question p50 | 4 waiting: answers/s | vs batch size " +
             f"{runs[0]['batch_size']} | burst p50 / p95 |", "|---|---|---|---|---|"]
    for run in runs:
        ratio = run["burst"]["answers_per_s"] / runs[0]["burst"]["answers_per_s"]
        lines.append(f"| {run['batch_size']} | {run['lone']['p50_s']:.2f} s | {run['burst']['answers_per_s']:.3f} | "
                     f"{ratio:.2f}x | {run['burst']['p50_s']:.2f} / {run['burst']['p95_s']:.2f} s |")
    if all("joining" in run for run in runs):
        lines += ["", f"| node.batch_size | '{SHORT}' alone | the same, {JOIN_AFTER_S:g} s after a long question | "
                  "the long question | published first |", "|---|---|---|---|---|"]
        for run in runs:
            j = run["joining"]
            lines.append(f"| {run['batch_size']} | {j['short_alone_s']:.2f} s | {j['short_while_long_s']:.2f} s | "
                         f"{j['long_s']:.2f} s ({j['long_tokens']} tokens) | "
                         f"{'the short one' if j['short_first'] else 'the long one'} |")
    if not runs[0]["rates"]:
        return "\n".join(lines)
    heads = [f"batch {r['batch_size']}: answered, refused, cut, p50 / p95 (p95 / lone p50), answers/s" for r in runs]
    lines += ["", "| arrivals/s | " + " | ".join(heads) + " |", "|---|" + "---|" * len(runs)]
    for index, rate in enumerate(runs[0]["rates"]):
        cells = []
        for run in runs:
            row = run["rates"][index]
            refused = sum(row["refused"].values())
            cells.append(f"{row['answered']}/{row['questions']}, {refused}, {row['deadline_cut']}, "
                         f"{row['p50_s']:.1f} / {row['p95_s']:.1f} s ({row['p95_s'] / run['lone']['p50_s']:.1f}x), "
                         f"{row['answers_per_s']:.3f}")
        lines.append(f"| {rate['rate_per_s']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,4", help="node.batch_size values, comma-separated")
    parser.add_argument("--rates", default="0.1,0.25,0.5,1", help="arrival rates (questions per second)")
    parser.add_argument("--questions", type=int, default=16, help="questions at the highest rate")
    parser.add_argument("--lone", type=int, default=4, help="questions asked one at a time")
    parser.add_argument("--burst", type=int, default=4, help="questions published together")
    parser.add_argument("--repeats", type=int, default=4, help="bursts, one after the other's results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY:=VALUE",
                        help="another node parameter for every run (e.g. llm_irp.sampled_prompts:=0)")
    parser.add_argument("--out", default="", help="folder for arrivals.json (default bench/results)")
    add_update_docs_flag(parser, SECTION)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    bank = _questions()
    result = {"run": run_info(argv, f"bench.speed.{NAME}"), "config": "config/edge.yaml", "extra": args.set,
              "runs": [measure(int(k), rates, args.questions, args.lone, args.burst, args.repeats, bank, args.set)
                       for k in args.batch_sizes.split(",")]}
    base = result["runs"][0]
    for run in result["runs"][1:]:
        run["burst_throughput_vs_first"] = round(run["burst"]["answers_per_s"] / base["burst"]["answers_per_s"], 3)
        run["lone_vs_first"] = round(run["lone"]["p50_s"] / base["lone"]["p50_s"], 3)
        if run["rates"]:
            run["p95_at_highest_rate_vs_lone"] = round(run["rates"][-1]["p95_s"] / run["lone"]["p50_s"], 3)
    text = table(result)
    print(text)
    print(f"wrote {write_result(NAME, result, args.out or None)}")
    if args.update_docs and not update_docs(SECTION, text):
        print("docs/performance.md has no 'arrivals' markers: not updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
