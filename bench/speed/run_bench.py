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

"""Benchmark: the research loop (baseline) against the package's engine, measured side by side.

    python -m bench.speed.run_bench [--quick] [--model smollm2|qwen05b-shape|both] [--out bench/results]
    python -m bench.speed.run_bench --update-docs     # also rewrite docs/performance.md, "Latest results"

Writes ``run_bench.json`` (every repetition, with the machine, versions and git commit: ``bench.record``),
``run_bench.md`` (the tables and the targets) and ``latency_vs_candidates.png`` into ``--out`` and prints
the tables. docs/performance.md changes only with ``--update-docs`` (and only from a full run into
bench/results).

Method: every question decodes exactly ``tokens`` new tokens per candidate (``min_new_tokens`` =
``max_new_tokens``) and samples exactly N candidates (temperatures 0.7 down towards 0.54 in N steps;
the energy-based halting rules are switched off for timing, since they would stop the two loops
after different numbers of candidates). The contenders of one table run interleaved, repetition by
repetition and in rotating order, on the report's five demo questions in turn, after a warm-up that
is not timed; medians are reported and ratios are taken between medians measured in this one process.

This module holds the two model sections and the command line; the contenders and their timing are in
``bench.speed.cells``, the machine description and peak memory in ``bench.machine``, the fresh-process
load/serving measurements in ``bench.speed.serving`` and the targets, tables and plot in
``bench.speed.report``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.machine import peak_rss_mb
from bench.record import DOCS, RESULTS, add_update_docs_flag, run_info, update_docs, write_result
from bench.speed.cells import MAIN_N, SWEEP_NS, baseline_cell, engine_cell, run_cells, settings
from bench.speed.report import markdown, plot, targets
from bench.speed.serving import THREADS, child_ready, spawn_child

NAME = "run_bench"


# ---------------------------------------------------------------------------------------------
# the SmolLM2 section
# ---------------------------------------------------------------------------------------------
def bench_smollm2(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from bench.models import DEMO_QUESTIONS
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.weights.embedded_model import converted_gguf, embedded_gguf
    from sage_irp_ros.weights.loader import load_model, release
    from sage_irp_ros.irp.prompts import seed_prompt
    from sage_irp_ros.salience.snarc import SnarcScorer

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

    # -- in-process timing tables. The engine runs on the model as the package loads it (weights
    # packed for oneDNN on CPU); the research loop on plain weights, as the research code loaded them.
    def load(**model):  # fp32 unless asked: the tables name their precision (auto is bf16 on some CPUs)
        settings_ = SageConfig.from_mapping({"model": {"precision": "fp32", **model}})
        return load_model(settings_.model, lambda message: None)

    lm, plain = load(), load(pack_cpu_weights=False)
    out["model"] = {"id": lm.model_id, "footprint_mb": lm.footprint_mb, "dtype": str(lm.dtype),
                    "packed_layers": lm.packed_layers, "footprint_mb_not_packed": plain.footprint_mb}
    log(f"  main table: N={MAIN_N}, {tokens} tokens/candidate, {cfg['reps']} reps")
    out["tables"]["main"] = run_cells([
        baseline_cell(plain, MAIN_N, "fp32"), engine_cell(lm, MAIN_N, 1, "fp32"),
        engine_cell(lm, MAIN_N, MAIN_N, "fp32"), engine_cell(lm, 1, 1, "fp32"),
        engine_cell(plain, MAIN_N, MAIN_N, "fp32", f"engine batched {MAIN_N} x 1, weights not packed",
                    kind="batched, not packed"),
        engine_cell(plain, 1, 1, "fp32", "engine single candidate (N=1), weights not packed",
                    kind="single, not packed")], cfg["reps"], tokens, log)
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
        baseline_cell(plain, MAIN_N, "fp32", f"baseline research loop N={MAIN_N}, with history", DEMO_HISTORY),
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
                                                      "merge_adapter": merge, "precision": "fp32"}})
            loras[merge] = load_model(lcfg.model, lambda message: None)
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
    lm16, plain16 = load(precision="bf16"), load(precision="bf16", pack_cpu_weights=False)
    out["tables"]["bf16"] = run_cells([
        baseline_cell(plain16, MAIN_N, "bf16", f"baseline research loop N={MAIN_N} (bf16)"),
        engine_cell(lm16, MAIN_N, MAIN_N, "bf16", f"engine batched {MAIN_N} x 1 (bf16)"),
        engine_cell(lm16, 1, 1, "bf16", "engine single candidate (N=1) (bf16)")], cfg["bf16_reps"], tokens, log)
    out["bf16_answers"] = answer_agreement(lm, lm16, DEMO_QUESTIONS, tokens)
    out["packed_answers"] = answer_agreement(plain, lm, DEMO_QUESTIONS, tokens)
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if cores != threads:
        log(f"  {cores} threads (all cores) instead of {threads}: batched vs single, fp32 and bf16")
        torch.set_num_threads(cores)
        try:
            out["tables"][f"{cores} threads"] = run_cells([
                baseline_cell(plain, MAIN_N, "fp32", f"baseline research loop N={MAIN_N}, {cores} threads"),
                baseline_cell(plain16, MAIN_N, "bf16",
                              f"baseline research loop N={MAIN_N} (bf16), {cores} threads"),
                engine_cell(lm, MAIN_N, MAIN_N, "fp32", f"engine batched {MAIN_N} x 1, {cores} threads"),
                engine_cell(lm, 1, 1, "fp32", f"engine single candidate (N=1), {cores} threads"),
                engine_cell(lm16, MAIN_N, MAIN_N, "bf16", f"engine batched {MAIN_N} x 1 (bf16), {cores} threads"),
                engine_cell(lm16, 1, 1, "bf16", f"engine single candidate (N=1) (bf16), {cores} threads")],
                cfg["threads_reps"], tokens, log)
        finally:
            torch.set_num_threads(threads)
    for loaded in (lm16, plain16, plain):
        release(loaded)
    del lm16, plain16, plain

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

    from bench.speed.research_loop import research_prompt

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
    from sage_irp_ros.weights.cpu_packing import pack_linear_weights
    from sage_irp_ros.weights.embedded_model import converted_gguf, embedded_gguf
    from sage_irp_ros.weights.loader import LoadedModel

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

    def packed_copy(m):  # what load_model does on CPU (model.pack_cpu_weights, the default)
        m = copy.deepcopy(m)
        pack_linear_weights(m)
        return m

    # The research loop runs on the plain model, the engine on a packed copy (as the package loads it).
    tokens, fp32_tokens = cfg["tokens"], cfg["fp32_tokens"]
    plain32, lm32 = loaded(model, torch.float32), loaded(packed_copy(model), torch.float32)
    log(f"  fp32: N={MAIN_N}, {fp32_tokens} tokens/candidate, {cfg['fp32_reps']} reps (slow on CPU)")
    out["tables"]["fp32"] = run_cells([
        baseline_cell(plain32, MAIN_N, "fp32"), engine_cell(lm32, MAIN_N, MAIN_N, "fp32"),
        engine_cell(lm32, 1, 1, "fp32")], cfg["fp32_reps"], fp32_tokens, log, warmup_tokens=2)
    out["tokens_fp32"] = fp32_tokens
    del lm32, plain32
    gc.collect()
    model = model.to(torch.bfloat16)  # converts in place: fp32 is gone now
    plain16, lm16 = loaded(model, torch.bfloat16), loaded(packed_copy(model), torch.bfloat16)
    log(f"  bf16: N={MAIN_N}, {tokens} tokens/candidate, {cfg['reps']} reps")
    out["tables"]["main"] = run_cells([
        baseline_cell(plain16, MAIN_N, "bf16"), engine_cell(lm16, MAIN_N, 1, "bf16"),
        engine_cell(lm16, MAIN_N, MAIN_N, "bf16"), engine_cell(lm16, 1, 1, "bf16")], cfg["reps"], tokens, log)
    out["tokens_per_candidate"] = tokens
    log(f"  bf16 candidate sweep, {cfg['sweep_reps']} reps")
    out["tables"]["sweep"] = run_cells(  # sequential 1 x 8 left out: 8 x single, and slow here
        [engine_cell(lm16, n, n, "bf16") for n in SWEEP_NS if n not in (1, MAIN_N)]
        + [engine_cell(lm16, 3, 1, "bf16")], cfg["sweep_reps"], tokens, log)
    out["peak_rss_mb_in_process"] = peak_rss_mb()
    del lm16, plain16, model
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small token counts and repetitions (smoke run)")
    parser.add_argument("--model", choices=("smollm2", "qwen05b-shape", "both"), default="both")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default bench/results)")
    parser.add_argument("--power-mode", default="balanced", choices=("efficiency", "balanced", "performance"),
                        help="torch threads as the package sets them (model.power_mode; default balanced = "
                             "cores - 1, the package default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (overrides --power-mode)")
    add_update_docs_flag(parser, "results")
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
    from sage_irp_ros.weights.loader import apply_power_mode

    apply_power_mode(args.power_mode)
    if args.threads:
        torch.set_num_threads(args.threads)
    THREADS.update(power_mode=args.power_mode, threads=args.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {message}", flush=True)

    conf = settings(args.quick)
    run = run_info(argv, f"bench.speed.{NAME}")
    results: dict[str, Any] = {"run": run, "started": run["started"], "quick": args.quick, "settings": conf,
                               "machine": run["machine"], "models": {}}
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
    path = write_result(NAME, results, out)
    text = markdown(results)
    (out / f"{NAME}.md").write_text(text)
    plot(results, out / "latency_vs_candidates.png")
    if args.update_docs:
        if args.quick or out.resolve() != RESULTS.resolve():
            log("--update-docs ignored: only a full run into bench/results refreshes docs/performance.md")
        elif update_docs("results", text):
            log(f"refreshed the results section of {DOCS.relative_to(DOCS.parents[1])}")
    print()
    print(text)
    log(f"wrote {path}, {out / f'{NAME}.md'}, {out / 'latency_vs_candidates.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
