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

"""Fresh-process measurements: load (cold or warm), ready, first answer vs steady state, overhead.

These need a new interpreter each time (imports, model load and the first answer are what is measured),
so ``spawn_child`` starts ``python -m bench.speed.run_bench --child ready ...`` and ``child_ready`` is what
that child runs; it prints one ``CHILD-JSON`` line. ``THREADS`` is set by ``bench.speed.run_bench.main`` so that the
children use the same torch thread settings as the parent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import peak_gpu_mb, peak_rss_mb

REPO = Path(__file__).resolve().parents[2]


def child_ready(args) -> None:
    """Runs in a fresh process: SageCore.load(), then ``--answers`` answers; prints one JSON line."""
    import psutil

    process_start = psutil.Process().create_time()
    t0 = time.time()
    import torch  # noqa: F401

    from bench.models import DEMO_QUESTIONS
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.serving.core import SageCore
    from sage_irp_ros.irp.options import AnswerOptions
    from sage_irp_ros.questions import parse_question

    imported = time.time()
    n, tokens = args.n, args.tokens
    db_dir = Path(tempfile.mkdtemp(prefix="bench-db-"))
    cfg = SageConfig.from_mapping({
        "llm_irp": {"candidates": n, "temp_reduction": round(0.16 / n, 9), "max_tokens": tokens},
        "model": {"cache_dir": args.cache_dir, "power_mode": args.power_mode, "precision": args.precision},
        "memory": {"db_path": str(db_dir / "memory.db")}})
    core = SageCore(cfg, progress=lambda message: None)
    start = time.perf_counter()
    lm = core.load()
    ready_s = time.perf_counter() - start
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"import_s": imported - t0, "interpreter_start_s": t0 - process_start,
                           "load_model_s": lm.load_s, "ready_s": ready_s,
                           "warmup_s": ready_s - lm.load_s, "process_to_ready_s": time.time() - process_start,
                           "threads": torch.get_num_threads(), "answers": []}
    engine = core.engine
    refine = engine.refine
    clock: dict[str, float] = {}

    def timed_refine(question, context="", history=(), options=None):  # force the token count, time the engine
        begin = time.perf_counter()
        options = options or AnswerOptions.resolve(engine.cfg)
        try:
            return refine(question, context, history, options.replace(min_new_tokens=tokens))
        finally:
            clock["refine_s"] = time.perf_counter() - begin

    engine.refine = timed_refine
    for i in range(args.answers):
        question = DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)]
        begin = time.perf_counter()
        parsed = parse_question(json.dumps({"id": f"q{i}", "question": question, "conversation": f"c{i}"}),
                                cfg.llm_irp.max_question_chars)
        parse_s = time.perf_counter() - begin
        start = time.perf_counter()
        result = core.answer(parsed)
        answer_s = time.perf_counter() - start
        begin = time.perf_counter()
        json.dumps(result, ensure_ascii=False)
        serialize_s = time.perf_counter() - begin
        out["answers"].append({"question": question, "ok": result["ok"], "answer_s": answer_s,
                               "refine_s": clock.get("refine_s", 0.0), "parse_s": parse_s,
                               "serialize_s": serialize_s, "tokens": result["timing"]["tokens"],
                               "candidates": (result["irp"] or {}).get("candidates"),
                               "error": result["error"]})
    core.release()
    shutil.rmtree(db_dir, ignore_errors=True)
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_gpu_mb"] = peak_gpu_mb()
    print("CHILD-JSON " + json.dumps(out), flush=True)


THREADS = {"power_mode": "balanced", "threads": 0}  # set by main(); children use the same


def spawn_child(answers: int, tokens: int, n: int, cache_dir: str = "", precision: str = "auto",
                timeout: float = 600) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.speed.run_bench", "--child", "ready", "--answers", str(answers),
           "--tokens", str(tokens), "--n", str(n), "--cache-dir", cache_dir, "--precision", precision,
           "--power-mode", THREADS["power_mode"], "--threads", str(THREADS["threads"])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD-JSON "):
            data = json.loads(line[len("CHILD-JSON "):])
            data["process_wall_s"] = wall
            return data
    raise RuntimeError(f"benchmark child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
