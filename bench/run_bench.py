"""Benchmark: the research loop (baseline) against the package's engine, measured side by side.

    .venv/bin/python -m bench.run_bench [--quick] [--model smollm2|qwen05b-shape|both] [--out bench/results]

Writes ``latest.json`` (every repetition), ``latest.md`` (the tables and the targets) and
``latency_vs_candidates.png`` into ``--out`` and prints the tables. See docs/performance.md.

Method: every question decodes exactly ``tokens`` new tokens per candidate (``min_new_tokens`` =
``max_new_tokens``) and samples exactly N candidates (temperatures 0.7 down towards 0.54 in N steps;
the energy-based halting rules are switched off for timing, since they would stop the two loops
after different numbers of candidates). The contenders of one table run interleaved, repetition by
repetition and in rotating order, on the report's five demo questions in turn, after a warm-up that
is not timed; medians are reported and ratios are taken between medians measured in this one process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


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


SWEEP_NS = (1, 3, 5, 8)
MAIN_N = 5


def timing_irp(n: int, tokens: int, **extra):
    """An IRPConfig that samples exactly n candidates of ``tokens`` tokens: 0.7 -> 0.54 in n steps."""
    from sage_irp_ros.config import SageConfig

    return SageConfig.from_mapping({"llm_irp": {
        "irp_iterations": n, "initial_temperature": 0.7, "min_temperature": 0.54,
        "temp_reduction": round(0.16 / n, 9), "max_tokens": tokens, "energy": "seed",
        "energy_convergence_threshold": 0.0, "energy_plateau_delta": 0.0, **extra}}).llm_irp


# ---------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------
class Cell:
    """One contender: ``run(question, tokens) -> info`` plus what it is."""

    def __init__(self, name: str, kind: str, n: int, run: Callable[[str, int], dict], precision: str):
        self.name, self.kind, self.n, self.run, self.precision = name, kind, n, run, precision


def baseline_cell(lm, n: int, precision: str, name: str | None = None, history=()) -> Cell:
    from bench.research_loop import ResearchIRP
    from sage_irp_ros.prompts import seed_history_block

    context = seed_history_block(history) or None  # the research system rendered history as context

    def run(question: str, tokens: int) -> dict:
        loop = ResearchIRP(lm.model, lm.tokenizer, iterations=n, temp_reduction=0.16 / n,
                           convergence_threshold=0.0, plateau_delta=0.0, max_tokens=tokens,
                           min_new_tokens=tokens)
        _, info = loop.refine(question, context)
        return {"prefill_s": info["prefill_s"], "decode_s": info["decode_s"], "tokens": info["tokens"],
                "rounds": info["response_count"], "candidates": info["response_count"],
                "temperatures": info["temperatures"], "halt_reason": info["halt_reason"]}

    return Cell(name or f"baseline research loop N={n}", "baseline", n, run, precision)


def engine_cell(lm, n: int, per_round: int, precision: str, name: str | None = None, history=()) -> Cell:
    from sage_irp_ros.irp import IRPEngine

    engines: dict[int, Any] = {}

    def run(question: str, tokens: int) -> dict:
        engine = engines.get(tokens)
        if engine is None:
            engine = engines[tokens] = IRPEngine(lm, timing_irp(n, tokens), use_chat_template=False)
        _, info = engine.refine(question, history=list(history), max_tokens=tokens, min_new_tokens=tokens,
                                candidates_per_round=per_round)
        return {"prefill_s": info["prefill_s"], "decode_s": info["decode_s"], "tokens": info["tokens"],
                "rounds": info["rounds"], "candidates": info["candidates"],
                "temperatures": info["temperatures"], "halt_reason": info["halt_reason"]}

    if name is None:
        if n == 1:
            name = "engine single candidate (N=1)"
        elif per_round == 1:
            name = f"engine sequential 1 x {n}"
        else:
            name = f"engine batched {n} x 1"
    kind = "single" if n == 1 else ("sequential" if per_round == 1 else "batched")
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
            "decode_ms_per_token": 1e3 * statistics.median(steps) / (cell.n if cell.kind == "batched" else 1),
            "prefill_ms_per_call": 1e3 * statistics.median(prefill),
            "wall_ms_per_generated_token": 1e3 * statistics.median(per_token),
            "candidates": sorted({r["candidates"] for r in recs}),
            "tokens": sorted({r["tokens"] for r in recs}),
            "rounds": sorted({r["rounds"] for r in recs}),
            "temperatures": recs[0]["temperatures"], "runs": recs}


# ---------------------------------------------------------------------------------------------
# machine and memory
# ---------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import psutil
    import torch
    import transformers

    model_name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        pass
    return {"cpu": model_name, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": list(os.getloadavg())}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# ---------------------------------------------------------------------------------------------
# child process: load (cold or warm), ready, first answer vs steady state, overhead
# ---------------------------------------------------------------------------------------------
def child_ready(args) -> None:
    """Runs in a fresh process: SageCore.load(), then ``--answers`` answers; prints one JSON line."""
    import psutil

    process_start = psutil.Process().create_time()
    t0 = time.time()
    import torch  # noqa: F401

    from bench.models import DEMO_QUESTIONS
    from sage_irp_ros.config import SageConfig
    from sage_irp_ros.core import SageCore
    from sage_irp_ros.questions import parse_question

    imported = time.time()
    n, tokens = args.n, args.tokens
    db_dir = Path(tempfile.mkdtemp(prefix="bench-db-"))
    cfg = SageConfig.from_mapping({
        "llm_irp": {"irp_iterations": n, "temp_reduction": round(0.16 / n, 9), "max_tokens": tokens,
                    "power_mode": args.power_mode, "precision": args.precision},
        "model": {"cache_dir": args.cache_dir},
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

    def timed_refine(*a, **kw):  # force the token count and time the engine alone
        begin = time.perf_counter()
        try:
            return refine(*a, **{**kw, "min_new_tokens": tokens})
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
    cmd = [sys.executable, "-m", "bench.run_bench", "--child", "ready", "--answers", str(answers),
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


# ---------------------------------------------------------------------------------------------
# the SmolLM2 section
# ---------------------------------------------------------------------------------------------
def bench_smollm2(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from bench.models import DEMO_QUESTIONS
    from sage_irp_ros.config import SageConfig
    from sage_irp_ros.embedded_model import converted_gguf, embedded_gguf
    from sage_irp_ros.model_loader import load_model, release
    from sage_irp_ros.prompts import seed_prompt
    from sage_irp_ros.snarc import SnarcScorer

    tokens = cfg["tokens"]
    out: dict[str, Any] = {"tokens_per_candidate": tokens, "tables": {}}

    # -- loading: cold (GGUF conversion) and warm (conversion cache present), in fresh processes
    if cfg["cold_load"]:
        log("  cold load (GGUF conversion into an empty cache) in a fresh process")
        cold_dir = tempfile.mkdtemp(prefix="bench-cold-cache-")
        try:
            out["cold_load"] = spawn_child(0, tokens, MAIN_N, cache_dir=cold_dir)
        finally:
            shutil.rmtree(cold_dir, ignore_errors=True)
    log("  warm loads (conversion cache present) in fresh processes")
    converted_gguf(embedded_gguf())  # make sure the default cache exists
    out["warm_loads"] = [spawn_child(0, tokens, MAIN_N) for _ in range(cfg["warm_loads"])]
    log(f"  first answer after ready vs steady state: {cfg['answers']} answers in a fresh process")
    out["serving"] = spawn_child(cfg["answers"], tokens, MAIN_N)

    # -- in-process timing tables
    base = SageConfig.from_mapping({})
    lm = load_model(base.model, base.llm_irp, lambda message: None)
    out["model"] = {"id": lm.model_id, "footprint_mb": lm.footprint_mb, "dtype": str(lm.dtype)}
    log(f"  main table: N={MAIN_N}, {tokens} tokens/candidate, {cfg['reps']} reps")
    out["tables"]["main"] = run_cells([
        baseline_cell(lm, MAIN_N, "fp32"), engine_cell(lm, MAIN_N, 1, "fp32"),
        engine_cell(lm, MAIN_N, MAIN_N, "fp32"), engine_cell(lm, 1, 1, "fp32")], cfg["reps"], tokens, log)
    log(f"  candidate sweep: N={[n for n in SWEEP_NS if n not in (1, MAIN_N)]}, {cfg['sweep_reps']} reps")
    out["tables"]["sweep"] = run_cells(
        [engine_cell(lm, n, n, "fp32") for n in SWEEP_NS if n not in (1, MAIN_N)]
        + [engine_cell(lm, n, 1, "fp32") for n in SWEEP_NS if n not in (1, MAIN_N)],
        cfg["sweep_reps"], tokens, log)

    # -- a question in a conversation: the 5th demo question after the first four exchanges
    from bench.models import DEMO_HISTORY

    prompt_len = len(lm.tokenizer(seed_prompt(DEMO_QUESTIONS[4], history=DEMO_HISTORY))["input_ids"])
    log(f"  conversation context ({prompt_len}-token prompt): N={MAIN_N}, {cfg['context_reps']} reps")
    out["context_prompt_tokens"] = prompt_len
    out["tables"]["conversation context"] = run_cells([
        baseline_cell(lm, MAIN_N, "fp32", f"baseline research loop N={MAIN_N}, with history", DEMO_HISTORY),
        engine_cell(lm, MAIN_N, MAIN_N, "fp32", f"engine batched {MAIN_N} x 1, with history", DEMO_HISTORY),
        engine_cell(lm, 1, 1, "fp32", "engine single candidate (N=1), with history", DEMO_HISTORY)],
        cfg["context_reps"], tokens, log, questions=[DEMO_QUESTIONS[4]])

    # -- LoRA: plain vs merged vs unmerged adapter (rank 8 on q_proj/v_proj, non-zero weights)
    log("  LoRA: building a rank-8 adapter and loading it merged and unmerged")
    folder = converted_gguf(embedded_gguf())
    adapter_dir = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    try:
        build_adapter(folder, adapter_dir)
        loras = {}
        for merge in (True, False):
            lcfg = SageConfig.from_mapping({"model": {"path": str(folder), "adapter_path": str(adapter_dir),
                                                      "merge_adapter": merge}})
            loras[merge] = load_model(lcfg.model, lcfg.llm_irp, lambda message: None)
        out["tables"]["lora"] = run_cells([
            engine_cell(lm, MAIN_N, MAIN_N, "fp32", "plain base model, batched 5 x 1"),
            engine_cell(loras[True], MAIN_N, MAIN_N, "fp32", "LoRA merged, batched 5 x 1"),
            engine_cell(loras[False], MAIN_N, MAIN_N, "fp32", "LoRA unmerged (peft), batched 5 x 1")],
            cfg["lora_reps"], tokens, log)
        for loaded in loras.values():
            release(loaded)
        del loras
    finally:
        shutil.rmtree(adapter_dir, ignore_errors=True)
    gc.collect()

    # -- precision: bf16 (CPUs with native bf16) vs fp32, speed AND effect on answers
    log("  bf16: speed and greedy-answer agreement with fp32")
    bcfg = SageConfig.from_mapping({"llm_irp": {"precision": "bf16"}})
    lm16 = load_model(bcfg.model, bcfg.llm_irp, lambda message: None)
    out["tables"]["bf16"] = run_cells([
        baseline_cell(lm16, MAIN_N, "bf16", f"baseline research loop N={MAIN_N} (bf16)"),
        engine_cell(lm16, MAIN_N, MAIN_N, "bf16", f"engine batched {MAIN_N} x 1 (bf16)"),
        engine_cell(lm16, 1, 1, "bf16", "engine single candidate (N=1) (bf16)")], cfg["bf16_reps"], tokens, log)
    out["bf16_answers"] = answer_agreement(lm, lm16, DEMO_QUESTIONS, tokens)
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if cores != threads:
        log(f"  {cores} threads (all cores) instead of {threads}: batched vs single, fp32 and bf16")
        torch.set_num_threads(cores)
        try:
            out["tables"][f"{cores} threads"] = run_cells([
                baseline_cell(lm, MAIN_N, "fp32", f"baseline research loop N={MAIN_N}, {cores} threads"),
                baseline_cell(lm16, MAIN_N, "bf16", f"baseline research loop N={MAIN_N} (bf16), {cores} threads"),
                engine_cell(lm, MAIN_N, MAIN_N, "fp32", f"engine batched {MAIN_N} x 1, {cores} threads"),
                engine_cell(lm, 1, 1, "fp32", f"engine single candidate (N=1), {cores} threads"),
                engine_cell(lm16, MAIN_N, MAIN_N, "bf16", f"engine batched {MAIN_N} x 1 (bf16), {cores} threads"),
                engine_cell(lm16, 1, 1, "bf16", f"engine single candidate (N=1) (bf16), {cores} threads")],
                cfg["threads_reps"], tokens, log)
        finally:
            torch.set_num_threads(threads)
    release(lm16)
    del lm16

    # -- SNARC alone, per exchange
    scorer = SnarcScorer()
    history = [(DEMO_QUESTIONS[0], "Knowledge is knowing facts; understanding is knowing why they hold.")]
    answer = ("Two plus two is four. I think that is certain, though you might ask how we know it. " * 3).strip()
    reps = 2000
    start = time.perf_counter()
    for _ in range(reps):
        scorer.score(DEMO_QUESTIONS[2], answer, history, final_energy=0.3)
    out["snarc_score_us"] = 1e6 * (time.perf_counter() - start) / reps
    out["peak_rss_mb_in_process"] = peak_rss_mb()
    release(lm)
    del lm
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def build_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    del peft_model, model
    gc.collect()


def answer_agreement(reference, other, questions, tokens: int) -> dict[str, Any]:
    """Greedy answers (seed prompt) of two loaded models: identical answers and shared token prefix."""
    import torch

    from bench.research_loop import research_prompt

    rows = []
    for question in questions:
        seqs = []
        for lm in (reference, other):
            ids = lm.tokenizer(research_prompt(question), return_tensors="pt").to(lm.device)
            with torch.inference_mode():
                gen = lm.model.generate(**ids, do_sample=False, max_new_tokens=tokens,
                                        pad_token_id=lm.tokenizer.eos_token_id)
            seqs.append(gen[0, ids["input_ids"].shape[1]:].tolist())
        a, b = seqs
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        rows.append({"question": question, "identical": a == b, "shared_prefix_tokens": prefix,
                     "length": max(len(a), len(b)),
                     "reference": reference.tokenizer.decode(a, skip_special_tokens=True),
                     "other": other.tokenizer.decode(b, skip_special_tokens=True)})
    return {"identical": sum(r["identical"] for r in rows), "questions": len(rows),
            "mean_shared_prefix_fraction": statistics.mean(r["shared_prefix_tokens"] / max(1, r["length"])
                                                           for r in rows), "rows": rows}


# ---------------------------------------------------------------------------------------------
# the Qwen2.5-0.5B-shaped section
# ---------------------------------------------------------------------------------------------
def bench_qwen(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from bench.models import random_model, weight_bytes
    from sage_irp_ros.embedded_model import converted_gguf, embedded_gguf
    from sage_irp_ros.model_loader import LoadedModel

    out: dict[str, Any] = {"tables": {}}
    # Any tokenizer whose ids fit the 151936-row vocabulary will do for timing: ids beyond its own
    # vocabulary (sampled by the random model) decode to nothing, which changes no timing.
    tokenizer = AutoTokenizer.from_pretrained(str(converted_gguf(embedded_gguf())))
    log("  building a random model with Qwen2.5-0.5B-Instruct's architecture")
    model, build_s = random_model("qwen05b-shape", dtype=torch.float32)
    out["model"] = {"id": "Qwen2.5-0.5B-Instruct architecture, random weights", "build_s": build_s,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "weights_mb_fp32": weight_bytes(model) / 2**20}

    def loaded(m, dtype):
        return LoadedModel(model=m, tokenizer=tokenizer, model_id="qwen05b-shape", device=torch.device("cpu"),
                           dtype=dtype, footprint_mb=weight_bytes(m) / 2**20, load_s=build_s,
                           context_window=32768)

    tokens, fp32_tokens = cfg["tokens"], cfg["fp32_tokens"]
    lm32 = loaded(model, torch.float32)
    log(f"  fp32: N={MAIN_N}, {fp32_tokens} tokens/candidate, {cfg['fp32_reps']} reps (slow on CPU)")
    out["tables"]["fp32"] = run_cells([
        baseline_cell(lm32, MAIN_N, "fp32"), engine_cell(lm32, MAIN_N, MAIN_N, "fp32"),
        engine_cell(lm32, 1, 1, "fp32")], cfg["fp32_reps"], fp32_tokens, log, warmup_tokens=2)
    out["tokens_fp32"] = fp32_tokens
    lm16 = loaded(model.to(torch.bfloat16), torch.bfloat16)  # converts in place: fp32 is gone now
    del lm32
    gc.collect()
    log(f"  bf16: N={MAIN_N}, {tokens} tokens/candidate, {cfg['reps']} reps")
    out["tables"]["main"] = run_cells([
        baseline_cell(lm16, MAIN_N, "bf16"), engine_cell(lm16, MAIN_N, 1, "bf16"),
        engine_cell(lm16, MAIN_N, MAIN_N, "bf16"), engine_cell(lm16, 1, 1, "bf16")], cfg["reps"], tokens, log)
    out["tokens_per_candidate"] = tokens
    log(f"  bf16 candidate sweep, {cfg['sweep_reps']} reps")
    out["tables"]["sweep"] = run_cells(  # sequential 1 x 8 left out: 8 x single, and slow here
        [engine_cell(lm16, n, n, "bf16") for n in SWEEP_NS if n not in (1, MAIN_N)]
        + [engine_cell(lm16, 3, 1, "bf16")], cfg["sweep_reps"], tokens, log)
    out["peak_rss_mb_in_process"] = peak_rss_mb()
    del lm16, model
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def find(table: dict[str, dict], kind: str, n: int | None = None) -> dict | None:
    for row in table.values():
        if row["kind"] == kind and (n is None or row["n"] == n):
            return row
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    smol = results["models"].get("smollm2")
    if not smol:
        return []
    main, lora, bf16 = smol["tables"]["main"], smol["tables"]["lora"], smol["tables"]["bf16"]
    base, batched, single = find(main, "baseline"), find(main, "batched", MAIN_N), find(main, "single")
    rows = []

    def add(name, value, goal, ok, note=""):
        rows.append({"target": name, "measured": value, "goal": goal, "met": None if ok is None else bool(ok),
                     "note": note})

    speedup = base["median_s"] / batched["median_s"]
    add(f"Batched N={MAIN_N} vs baseline loop N={MAIN_N}, equal tokens (fp32 both)", f"{speedup:.2f}x",
        ">= 4x", speedup >= 4.0, f"paired per-rep median {1 / paired_ratio(batched, base):.2f}x")
    b16_base, b16_batched = find(bf16, "baseline"), find(bf16, "batched", MAIN_N)
    s16 = b16_base["median_s"] / b16_batched["median_s"]
    add(f"  same, bf16 both (CPU with native bf16: {results['machine']['cpu_bf16']})", f"{s16:.2f}x", ">= 4x",
        s16 >= 4.0, "precision option")
    s_mixed = base["median_s"] / b16_batched["median_s"]
    add("  engine batched bf16 vs baseline loop fp32", f"{s_mixed:.2f}x", "(info)", None,
        "best CPU option vs the loop as it runs by default here")
    cost = batched["median_s"] / single["median_s"]
    add(f"Batched N={MAIN_N} / one single-candidate generation", f"{cost:.2f}x", "<= 1.5x", cost <= 1.5)
    c16 = b16_batched["median_s"] / find(bf16, "single")["median_s"]
    add("  same, bf16", f"{c16:.2f}x", "<= 1.5x", c16 <= 1.5, "precision option")
    for name, table in smol["tables"].items():
        if name.endswith(" threads"):
            rows_ = list(table.values())
            for prec in ("fp32", "bf16"):
                pair = [r for r in rows_ if r["precision"] == prec]
                bat = next(r for r in pair if r["kind"] == "batched")
                one = next(r for r in pair if r["kind"] == "single")
                loop = next((r for r in pair if r["kind"] == "baseline"), None)
                speed = f"; vs baseline loop ({prec}, same threads): {loop['median_s'] / bat['median_s']:.2f}x" \
                    if loop else ""
                add(f"  batched / single, {prec}, {name}", f"{bat['median_s'] / one['median_s']:.2f}x", "(info)",
                    None, f"all cores instead of the package default (cores - 1){speed}")
    ctx = smol["tables"].get("conversation context")
    if ctx:
        c_base, c_bat, c_one = find(ctx, "baseline"), find(ctx, "batched", MAIN_N), find(ctx, "single")
        add(f"  with a {smol['context_prompt_tokens']}-token conversation prompt: batched vs baseline",
            f"{c_base['median_s'] / c_bat['median_s']:.2f}x", "(info)", None,
            f"batched / single: {c_bat['median_s'] / c_one['median_s']:.2f}x (N prompt rows are prefilled)")
    plain = lora["plain base model, batched 5 x 1"]["median_s"]
    merged = lora["LoRA merged, batched 5 x 1"]["median_s"]
    unmerged = lora["LoRA unmerged (peft), batched 5 x 1"]["median_s"]
    paired = paired_ratio(lora["LoRA merged, batched 5 x 1"], lora["plain base model, batched 5 x 1"])
    paired_un = paired_ratio(lora["LoRA unmerged (peft), batched 5 x 1"], lora["plain base model, batched 5 x 1"])
    add("LoRA merged vs plain base model (median of per-rep paired ratios)", f"{100 * (paired - 1):+.1f} %",
        "within 5 %", paired <= 1.05, f"ratio of medians {100 * (merged / plain - 1):+.1f} %; unmerged: "
        f"{100 * (paired_un - 1):+.1f} % paired, {100 * (unmerged / plain - 1):+.1f} % of medians")
    serving = smol["serving"]
    answers = [a["answer_s"] for a in serving["answers"]]
    first, steady = answers[0], statistics.median(answers[1:])
    add("First answer after ready / steady-state median", f"{first / steady:.2f}x", "<= 1.2x",
        first <= 1.2 * steady, f"first {first:.2f} s, steady {steady:.2f} s")
    warm = statistics.median([w["ready_s"] for w in smol["warm_loads"] + [serving]])
    add("Warm start: SageCore.load() (load + warm-up) with the conversion cache", f"{warm:.2f} s", "< 5 s",
        warm < 5.0, "process start to ready incl. imports: "
        f"{statistics.median([w['process_to_ready_s'] for w in smol['warm_loads'] + [serving]]):.2f} s")
    over = [(a["answer_s"] - a["refine_s"] + a["parse_s"] + a["serialize_s"]) / a["answer_s"]
            for a in serving["answers"]]
    share = 100 * statistics.median(over)
    add("SNARC + bookkeeping + message parse/serialise, share of a question", f"{share:.3f} %", "< 1 %",
        share < 1.0, f"SNARC alone {smol['snarc_score_us']:.0f} us per exchange")
    agree = smol["bf16_answers"]
    add("bf16 effect on answers (greedy, 5 demo questions)",
        f"{agree['identical']}/{agree['questions']} identical, "
        f"{100 * agree['mean_shared_prefix_fraction']:.0f} % shared prefix", "(report)", None)
    return rows


def paired_ratio(row: dict, reference: dict) -> float:
    """Median over repetitions of row/reference wall times; a rep's runs were adjacent in time."""
    return statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(row["runs"], reference["runs"]))


def fmt_table(table: dict[str, dict], baseline: dict | None) -> list[str]:
    lines = ["| contender | prec. | thr. | N | tok/cand | reps | s/question (median) | min-max | vs baseline | "
             "decode ms/step | decode ms/token | prefill ms/call | candidates x tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.values():
        ratio = f"{baseline['median_s'] / row['median_s']:.2f}x" if baseline else "-"
        lines.append(
            f"| {row['name']} | {row['precision']} | {row['threads']} | {row['n']} | "
            f"{row['tokens_per_candidate']} | {row['reps']} | "
            f"{row['median_s']:.3f} | {row['min_s']:.2f}-{row['max_s']:.2f} | {ratio} | "
            f"{row['decode_ms_per_step']:.1f} | {row['decode_ms_per_token']:.1f} | "
            f"{row['prefill_ms_per_call']:.0f} | {row['candidates'][0]} x "
            f"{row['tokens'][0] // max(1, row['candidates'][0])} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, torch {m['torch']}, "
             f"transformers {m['transformers']}, {m['threads']} torch thread(s) (power_mode {m['power_mode']}"
             f"{', overridden' if results['settings'].get('threads') else ''}); load average "
             f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end. "
             f"Run {results['started']} ({'quick' if results['quick'] else 'default'} settings), "
             f"{results['duration_s']:.0f} s in all.", ""]
    if results.get("targets"):
        lines += ["### Targets (SmolLM2-135M, measured side by side in this run)", "",
                  "| target | measured | goal | met | note |", "|---|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | "
                         f"{'-' if t['met'] is None else 'yes' if t['met'] else '**no**'} | {t['note']} |")
        lines.append("")
    for key, model in results["models"].items():
        title = {"smollm2": "SmolLM2-135M-Instruct (embedded, fp32 = the CPU default)",
                 "qwen05b-shape": "Qwen2.5-0.5B-Instruct architecture, random weights"}[key]
        lines += [f"### {title}", ""]
        tables = model["tables"]
        main_base = find(tables["main"], "baseline")
        for name, table in tables.items():
            base = find(table, "baseline") or (main_base if name in ("sweep", "lora") else None)
            if name == "lora":
                base = None
                lines.append("LoRA (rank 8, q_proj/v_proj), batched N=5; ratio column = plain / row:")
                plain = table["plain base model, batched 5 x 1"]
                lines += fmt_table(table, plain)
            else:
                if name == "conversation context":
                    lines.append(f"conversation context (the 5th demo question after the first four exchanges, "
                                 f"{model['context_prompt_tokens']}-token seed prompt):")
                else:
                    lines.append(f"{name}:" if name != "main" else "main (equal tokens, equal candidates):")
                lines += fmt_table(table, base)
            lines.append("")
        if key == "smollm2":
            serving = model["serving"]
            answers = [a["answer_s"] for a in serving["answers"]]
            lines += [
                "Loading and serving (fresh processes; SageCore with the default energy, batched N=5):", "",
                "| measure | value |", "|---|---|"]
            if "cold_load" in model:
                c = model["cold_load"]
                lines.append(f"| cold load (GGUF -> safetensors conversion + load) | {c['load_model_s']:.2f} s; "
                             f"ready (with warm-up) {c['ready_s']:.2f} s |")
            warm = model["warm_loads"] + [serving]
            lines += [
                f"| warm load_model (conversion cache present), median of {len(warm)} | "
                f"{statistics.median(w['load_model_s'] for w in warm):.2f} s |",
                f"| warm ready = load + warm-up generation | {statistics.median(w['ready_s'] for w in warm):.2f} s |",
                f"| python imports (torch, transformers, package) | "
                f"{statistics.median(w['import_s'] for w in warm):.2f} s |",
                f"| process start to ready | {statistics.median(w['process_to_ready_s'] for w in warm):.2f} s |",
                f"| first answer after ready | {answers[0]:.2f} s |",
                f"| steady-state answer (median of {len(answers) - 1}) | {statistics.median(answers[1:]):.2f} s |",
                f"| SNARC + history + result + store per answer (median) | "
                f"{1e3 * statistics.median(a['answer_s'] - a['refine_s'] for a in serving['answers']):.2f} ms |",
                f"| message parse + result JSON per answer (median) | "
                f"{1e3 * statistics.median(a['parse_s'] + a['serialize_s'] for a in serving['answers']):.2f} ms |",
                f"| SNARC score alone | {model['snarc_score_us']:.1f} us |",
                f"| peak RSS of the serving process | {serving['peak_rss_mb']:.0f} MB |",
                f"| peak GPU memory | "
                f"{serving['peak_gpu_mb'] if serving['peak_gpu_mb'] is not None else 'n/a (CPU)'} |",
                f"| model weights (fp32) | {model['model']['footprint_mb']:.0f} MB |", ""]
            agree = model["bf16_answers"]
            lines += [f"bf16 vs fp32 greedy answers ({model['tokens_per_candidate']} tokens, seed prompt): "
                      f"{agree['identical']}/{agree['questions']} identical; mean shared prefix "
                      f"{100 * agree['mean_shared_prefix_fraction']:.0f} %.", ""]
        lines.append(f"Peak RSS of the benchmark process so far: {model['peak_rss_mb_in_process']:.0f} MB.")
        lines.append("")
    lines += ["Static cache + torch.compile: CUDA only; see `bench/gpu_check.py` (GPU section of "
              "docs/performance.md).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, (key, model) in zip(axes[0], models):
        tables = model["tables"]
        rows = list(tables["main"].values()) + list(tables["sweep"].values())
        prec = find(tables["main"], "batched", MAIN_N)["precision"]
        single = find(tables["main"], "single")
        for kind, style in (("sequential", "o-"), ("batched", "s-")):
            pts = {1: single["median_s"]}
            pts.update({r["n"]: r["median_s"] for r in rows if r["kind"] == kind})
            ns = sorted(pts)
            label = "sequential 1 x N (one generate per candidate)" if kind == "sequential" else \
                "batched N x 1 (one generate call)"
            ax.plot(ns, [pts[n] for n in ns], style, label=label)
        base = find(tables["main"], "baseline")
        ax.plot([base["n"]], [base["median_s"]], "k*", markersize=12, label="research loop (baseline)")
        ax.set_xlabel("candidates per question (N)")
        ax.set_ylabel("seconds per question (median)")
        ax.set_title(f"{key} ({prec}, {model['tokens_per_candidate']} tokens/candidate, "
                     f"{find(tables['main'], 'batched', MAIN_N)['threads']} thread(s))")
        ax.set_xticks(list(SWEEP_NS))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Time per question vs candidate count — {results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



DOCS = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def update_docs(text: str) -> bool:
    """Replace the text between the result markers of docs/performance.md with ``text``."""
    if not DOCS.is_file():
        return False
    doc = DOCS.read_text()
    if BEGIN not in doc or END not in doc:
        return False
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{text.rstrip()}\n{END}{tail}")
    return True


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small token counts and repetitions (smoke run)")
    parser.add_argument("--model", choices=("smollm2", "qwen05b-shape", "both"), default="both")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default bench/results)")
    parser.add_argument("--power-mode", default="balanced", choices=("efficiency", "balanced", "performance"),
                        help="torch threads as the package sets them (llm_irp.power_mode; default balanced = "
                             "cores - 1, the package default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (overrides --power-mode)")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not refresh the results section of docs/performance.md (a default, "
                             "non-quick run into bench/results refreshes it)")
    # internal: the fresh-process measurements
    parser.add_argument("--child", choices=("ready",), help=argparse.SUPPRESS)
    parser.add_argument("--answers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=MAIN_N, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_ready(args)
        return 0

    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from sage_irp_ros.model_loader import apply_power_mode

    apply_power_mode(args.power_mode)
    if args.threads:
        torch.set_num_threads(args.threads)
    THREADS.update(power_mode=args.power_mode, threads=args.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {message}", flush=True)

    conf = settings(args.quick)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
                               "settings": conf, "machine": machine(), "models": {}}
    results["machine"]["power_mode"] = args.power_mode
    results["settings"]["threads"] = args.threads
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['threads']} threads")
    if args.model in ("smollm2", "both"):
        log("SmolLM2-135M-Instruct (embedded)")
        results["models"]["smollm2"] = bench_smollm2(conf["smollm2"], log)
    if args.model in ("qwen05b-shape", "both"):
        log("Qwen2.5-0.5B-shaped random model")
        results["models"]["qwen05b-shape"] = bench_qwen(conf["qwen05b-shape"], log)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.time() - started
    results["targets"] = targets(results)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results)
    (out / "latest.md").write_text(text)
    plot(results, out / "latency_vs_candidates.png")
    if not args.quick and not args.no_docs and out.resolve() == RESULTS.resolve():
        if update_docs(text):
            log(f"refreshed the results section of {DOCS}")
    print()
    print(text)
    log(f"wrote {out / 'latest.json'}, {out / 'latest.md'}, {out / 'latency_vs_candidates.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
