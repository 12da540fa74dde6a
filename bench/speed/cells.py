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

"""The contenders of the benchmark and how they are timed.

A ``Cell`` wraps one way of answering a question (the research loop as baseline, or the package's engine:
single, sequential or batched); ``run_cells`` times a list of them side by side (interleaved repetitions
in rotating order, after an untimed warm-up) and ``summarize`` turns the repetitions into one table row.
Kept apart from the model sections so that every table is timed by the same code. Module import is cheap:
torch and the package are imported inside the functions.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
def settings(quick: bool) -> dict[str, Any]:
    """Token counts and repetitions; the default run is sized for ~10 minutes on a 2-core CPU."""
    if quick:
        return {"smollm2": {"tokens": 12, "reps": 2, "sweep_reps": 1, "lora_reps": 2, "bf16_reps": 1,
                            "threads_reps": 1, "context_reps": 1, "answers": 3, "cold_load": False,
                            "warm_loads": 1},
                "qwen05b-shape": {"tokens": 8, "reps": 2, "sweep_reps": 1, "fp32_tokens": 4, "fp32_reps": 1}}
    return {"smollm2": {"tokens": 32, "reps": 5, "sweep_reps": 2, "lora_reps": 6, "bf16_reps": 3,
                        "threads_reps": 2, "context_reps": 2, "answers": 6, "cold_load": True,
                        "warm_loads": 2},
            "qwen05b-shape": {"tokens": 16, "reps": 3, "sweep_reps": 2, "fp32_tokens": 8, "fp32_reps": 1}}


SWEEP_NS = (1, 3, 5, 6, 8)  # 6: the default batch (5 sampled + the greedy row)
MAIN_N = 5


def timing_irp(n: int, tokens: int, **extra):
    """An IRPConfig that samples exactly n candidates of ``tokens`` tokens: 0.7 -> 0.54 in n steps.

    The greedy row is off, so that N is the number of rows per call for every contender (the research
    loop has none); the package's default adds it: its cost is the N + 1 column of the sweep. Every row
    uses the plain prompt (``sampled_prompts: "0"``), the prompt the other contenders are given.
    """
    from sage_irp_ros.config.settings import SageConfig

    return SageConfig.from_mapping({"llm_irp": {
        "candidates": n, "initial_temperature": 0.7, "min_temperature": 0.54,
        "temp_reduction": round(0.16 / n, 9), "max_tokens": tokens, "energy": "seed",
        "energy_convergence_threshold": 0.0, "energy_plateau_delta": 0.0, "greedy_candidate": False,
        "sampled_prompts": "0", **extra}}).llm_irp


# ---------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------
class Cell:
    """One contender: ``run(question, tokens) -> info`` plus what it is."""

    def __init__(self, name: str, kind: str, n: int, run: Callable[[str, int], dict], precision: str):
        self.name, self.kind, self.n, self.run, self.precision = name, kind, n, run, precision


def baseline_cell(lm, n: int, precision: str, name: str | None = None, history=(),
                  kind: str = "baseline") -> Cell:
    from bench.speed.research_loop import ResearchIRP
    from sage_irp_ros.irp.prompts import seed_history_block

    context = seed_history_block(history) or None  # the research system rendered history as context

    def run(question: str, tokens: int) -> dict:
        loop = ResearchIRP(lm.model, lm.tokenizer, iterations=n, temp_reduction=0.16 / n,
                           convergence_threshold=0.0, plateau_delta=0.0, max_tokens=tokens,
                           min_new_tokens=tokens)
        _, info = loop.refine(question, context)
        return {"prefill_s": info["prefill_s"], "decode_s": info["decode_s"], "tokens": info["tokens"],
                "rounds": info["response_count"], "candidates": info["response_count"],
                "temperatures": info["temperatures"], "halt_reason": info["halt_reason"]}

    return Cell(name or f"baseline research loop N={n}", kind, n, run, precision)


def engine_cell(lm, n: int, per_round: int, precision: str, name: str | None = None, history=(),
                kind: str | None = None, irp_keys: dict | None = None) -> Cell:
    """``irp_keys``: further ``llm_irp`` keys (``greedy_candidate: true`` adds the greedy row; ``compile: on``
    compiles the step, waited for before the first timed call)."""
    from sage_irp_ros.irp.engine import IRPEngine
    from sage_irp_ros.irp.options import AnswerOptions

    engines: dict[int, Any] = {}

    def run(question: str, tokens: int) -> dict:
        engine = engines.get(tokens)
        if engine is None:
            engine = engines[tokens] = IRPEngine(lm, timing_irp(n, tokens, **(irp_keys or {})), use_chat_template=False)
            wait = getattr(engine.generator.step_fn, "wait", None)
            if wait is not None:
                wait(900)
        options = AnswerOptions.resolve(engine.cfg).replace(max_tokens=tokens, min_new_tokens=tokens,
                                                            candidates_per_round=per_round)
        info = engine.refine(question, history=list(history), options=options)
        irp = info.irp
        return {"prefill_s": irp.prefill_s, "decode_s": irp.decode_s, "tokens": info.tokens,
                "rounds": irp.rounds, "candidates": len(irp.energies),
                "temperatures": list(irp.temperatures), "halt_reason": irp.halt_reason}

    if name is None:
        if n == 1:
            name = "engine single candidate (N=1)"
        elif per_round == 1:
            name = f"engine sequential 1 x {n}"
        else:
            name = f"engine batched {n} x 1"
    kind = kind or ("single" if n == 1 else ("sequential" if per_round == 1 else "batched"))
    return Cell(name, kind, n, run, precision)


def run_cells(cells: list[Cell], reps: int, tokens: int, log: Callable[[str], None],
              warmup_tokens: int = 4, questions=None) -> dict[str, dict]:
    """Warm up each cell (not timed), then ``reps`` interleaved repetitions in rotating order."""
    import torch

    from bench.models import DEMO_QUESTIONS

    questions = questions or DEMO_QUESTIONS
    for cell in cells:
        cell.run(questions[0], warmup_tokens)
    records: dict[str, list[dict]] = {c.name: [] for c in cells}
    for rep in range(reps):
        question = questions[rep % len(questions)]
        shift = rep % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            torch.manual_seed(1000 + rep)
            start = time.perf_counter()
            info = cell.run(question, tokens)
            wall = time.perf_counter() - start
            records[cell.name].append({"question": question, "wall_s": wall, **info})
        log(f"    rep {rep + 1}/{reps}: " + ", ".join(
            f"{c.name} {records[c.name][-1]['wall_s']:.2f}s" for c in cells))
    return {c.name: summarize(c, records[c.name], tokens) for c in cells}


def summarize(cell: Cell, recs: list[dict], tokens: int) -> dict:
    walls = [r["wall_s"] for r in recs]
    steps = [r["decode_s"] / max(1, r["rounds"] * (tokens - 1)) for r in recs]
    prefill = [r["prefill_s"] / max(1, r["rounds"]) for r in recs]
    per_token = [r["wall_s"] / max(1, r["tokens"]) for r in recs]
    import torch

    return {"name": cell.name, "kind": cell.kind, "n": cell.n, "precision": cell.precision,
            "threads": torch.get_num_threads(),
            "tokens_per_candidate": tokens, "reps": len(recs),
            "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "decode_ms_per_step": 1e3 * statistics.median(steps),
            "decode_ms_per_token": 1e3 * statistics.median(steps) / (cell.n if cell.kind.startswith("batched") else 1),
            "prefill_ms_per_call": 1e3 * statistics.median(prefill),
            "wall_ms_per_generated_token": 1e3 * statistics.median(per_token),
            "candidates": sorted({r["candidates"] for r in recs}),
            "tokens": sorted({r["tokens"] for r in recs}),
            "rounds": sorted({r["rounds"] for r in recs}),
            "temperatures": recs[0]["temperatures"], "runs": recs}


def paired_ratio(row: dict, reference: dict) -> float:
    """Median over repetitions of row/reference wall times; a rep's runs were adjacent in time."""
    return statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(row["runs"], reference["runs"]))
