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

"""Adaptive IRP online: held-out questions answered through the package, alternating configurations.

    python -m bench.quality.adaptive_online [--questions 60] [--out bench/results/adaptive]

Each held-out question (the first N of the fixed split, every kind) is answered by one SageCore per
configuration, in rotating order, at the config/edge.yaml defaults with the embedded model:

- ``greedy row alone``: the greedy row only (the throttled path with ``throttle.max_tokens`` = ``max_tokens``);
- ``all rows to the end``: ``llm_irp.stopping: off``, what every question paid before adaptive IRP;
- ``default``: the shipped ``llm_irp.stopping: auto`` (and ``parallel`` / ``sequential`` forced, with
  ``--schedules``).

Reported: accuracy with paired bootstrap intervals against greedy and against all rows to the end;
mean and p95 answer latency (``timing.inference_s``, the core's time from start of work to the answer)
as ratios to the greedy row alone; tokens decoded (compute) as a ratio; what ended the questions. Run it
alone on the machine: latency is wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter

from bench.quality.evaluate import bootstrap_diff
from bench.quality.question_set import is_correct, load_questions
from bench.record import add_update_docs_flag, run_info, update_docs, write_result

NAME = "adaptive_online"


def _configs(schedules: list[str]) -> dict[str, dict]:
    base = {"memory.db_path": "none"}
    out = {"greedy row alone": {**base, "llm_irp.stopping": "off"},
           "all rows to the end": {**base, "llm_irp.stopping": "off"}}
    for schedule in schedules:
        out[f"default ({schedule})" if schedule == "auto" else schedule] = {**base, "llm_irp.stopping": schedule}
    return out


def run(questions: list[dict], schedules: list[str], log=print) -> dict:
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.questions import Question
    from sage_irp_ros.serving.core import SageCore

    edge = SageConfig.from_yaml("config/edge.yaml")
    cores = {}
    for name, updates in _configs(schedules).items():
        cfg = edge.with_updates({**updates, "throttle.max_tokens": edge.llm_irp.max_tokens})
        cores[name] = SageCore(cfg)
        cores[name].load()
    names = list(cores)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    start = time.monotonic()
    for k, item in enumerate(questions):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotate who goes first
            result = cores[name].answer(Question(text=item["q"]), throttled=name == "greedy row alone")
            rows[name].append({"q": item["q"], "kind": item["kind"], "ok": result.ok,
                               "right": bool(result.ok and is_correct(result.answer, item["a"])),
                               "inference_s": result.timing.inference_s, "tokens": result.timing.tokens,
                               "rows": len(result.irp.energies) if result.irp else 0,
                               "stopping": result.irp.stopping if result.irp else None,
                               "halt": result.irp.halt_reason if result.irp else None,
                               "dropped": result.irp.dropped if result.irp else {}})
        if (k + 1) % 10 == 0:
            log(f"{k + 1}/{len(questions)} questions, {time.monotonic() - start:.0f} s")
    schedule = {name: cores[name].status().stopping for name in names}
    row_cost = cores[names[-1]].status().row_cost
    for core in cores.values():
        core.release()
    return {"configs": _configs(schedules), "schedule": schedule, "row_cost": row_cost, "rows": rows,
            "summary": summarise(rows)}


def summarise(rows: dict[str, list[dict]]) -> dict:
    greedy, full = rows["greedy row alone"], rows["all rows to the end"]

    def acc(items):
        return {r["q"]: float(r["right"]) for r in items}

    def p95(values):
        return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]

    base_mean = statistics.mean(r["inference_s"] for r in greedy)
    base_p95 = p95([r["inference_s"] for r in greedy])
    base_tokens = statistics.mean(r["tokens"] for r in greedy)
    out = {}
    for name, items in rows.items():
        latency = [r["inference_s"] for r in items]
        ended = Counter(r["halt"] for r in items)
        dropped = Counter()
        for r in items:
            dropped.update(r["dropped"])
        out[name] = {
            "accuracy": 100 * statistics.mean(float(r["right"]) for r in items),
            "vs_greedy": [100 * x for x in bootstrap_diff(acc(items), acc(greedy))],
            "vs_all_rows": [100 * x for x in bootstrap_diff(acc(items), acc(full))],
            "mean_s": statistics.mean(latency), "p95_s": p95(latency),
            "mean_x": statistics.mean(latency) / base_mean, "p95_x": p95(latency) / base_p95,
            "tokens": statistics.mean(r["tokens"] for r in items),
            "tokens_x": statistics.mean(r["tokens"] for r in items) / base_tokens,
            "ended": dict(ended), "dropped": dict(dropped)}
    return out


def markdown(result: dict) -> str:
    lines = [f"{len(result['rows']['greedy row alone'])} held-out questions, config/edge.yaml defaults, the "
             f"embedded model; schedule each configuration ran: {result['schedule']}; measured row cost "
             f"(4-row step / 1-row step): {result['row_cost']}", "",
             "| configuration | accuracy | vs greedy | vs all rows to the end | mean s (x greedy) | p95 s (x greedy) "
             "| tokens decoded (x greedy) | what ended the questions |", "|---|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        ci = (lambda d: f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]")
        ended = ", ".join(f"{k} {v}" for k, v in sorted(s["ended"].items(), key=lambda kv: -kv[1]))
        if s["dropped"]:
            ended += "; rows dropped: " + ", ".join(f"{k} {v}" for k, v in s["dropped"].items())
        lines.append(f"| {name} | {s['accuracy']:.1f} | {ci(s['vs_greedy'])} | {ci(s['vs_all_rows'])} | "
                     f"{s['mean_s']:.2f} ({s['mean_x']:.2f}x) | {s['p95_s']:.2f} ({s['p95_x']:.2f}x) | "
                     f"{s['tokens']:.0f} ({s['tokens_x']:.2f}x) | {ended} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=60, help="first N held-out questions (0 = all)")
    parser.add_argument("--schedules", default="auto", help="comma-separated llm_irp.stopping values to run")
    parser.add_argument("--out", default="bench/results/adaptive", help="output folder")
    add_update_docs_flag(parser, "adaptive-online")
    args = parser.parse_args(argv)
    info = run_info(argv, f"bench.quality.{NAME}")
    questions = load_questions("heldout")
    questions = questions[:args.questions] if args.questions else questions
    result = run(questions, [s for s in args.schedules.split(",") if s], log=lambda m: print(m, file=sys.stderr))
    text = markdown(result)
    print(text)
    path = write_result(NAME, {"run": info, **result}, args.out)
    print(f"wrote {path}")
    if args.update_docs:
        update_docs("adaptive-online", text + f"\n\n`{info['command']}` ({info['started']}).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
