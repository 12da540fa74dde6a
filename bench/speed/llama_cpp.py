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

"""Contender: llama.cpp (llama-cpp-python) on the same GGUF, threads, prompts and token counts.

    python -m bench.speed.llama_cpp [--threads 1] [--reps 8] [--tokens 32] [--variant NAME:KEY=VALUE,... ...]

llama.cpp is what a ROS user would otherwise run (llama_ros and most Jetson LLM nodes use it), so it is the
peer the engine is measured against. It is never a dependency of the package: install the prebuilt wheel
(``pip install ../shared/wheels/llama_cpp_python-*.whl``) for benchmarking; without it this section is
skipped with a message saying so.

Fairness: the embedded SmolLM2-135M-Instruct Q4_1 GGUF that the engine converts, the engine's thread count
(``n_threads`` = ``n_threads_batch`` = ``torch.get_num_threads()``), the engine's prompt token ids (the seed
prompt the bench's engine cells use, tokenised once by the model's tokenizer and fed to llama.cpp as ids),
exactly ``tokens`` new tokens per candidate (end-of-sequence banned through ``logit_bias``), plain sampling
at the candidate's temperature (``top_k=0, top_p=1, min_p=0``, no repeat penalty). One candidate is one
completion; five candidates are five sequential completions (llama.cpp reuses the prompt's KV cache
between them, as a llama.cpp node would). The engine runs single (N = 1), batched (N = 5) and best-of-5
with the default's greedy row (6 rows); llama.cpp's own batched decode of 6 sequences per step (the prompt's
KV cells shared, one ``llama_decode`` per step, numpy sampling) is the peer of the 6-row call.

Prints a markdown table and writes ``llama_cpp.json`` (every repetition, the ratios, the machine, versions,
git commit and load average before and after) into ``--out``; without llama_cpp installed the result
records that it was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any, Callable

from bench.record import run_info, write_result
from bench.speed.cells import MAIN_N, Cell, engine_cell, run_cells

NAME = "llama_cpp"

SKIP_MESSAGE = ("llama.cpp contender skipped: llama_cpp is not installed (benchmark only: "
                "pip install ../shared/wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl)")


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load_llama(threads: int):
    """The embedded GGUF in llama.cpp with ``threads`` threads (logits of the last position only)."""
    from llama_cpp import Llama

    from sage_irp_ros.weights.embedded_model import embedded_gguf

    return Llama(model_path=str(embedded_gguf()), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                 n_batch=512, verbose=False, seed=0)


def llama_cell(llm, tokenizer, n: int, name: str | None = None) -> Cell:
    """n sequential llama.cpp completions at the engine's annealed temperatures (0.7 -> 0.54 in n steps)."""
    from sage_irp_ros.irp.prompts import seed_prompt

    eos = llm.token_eos()
    prompts: dict[str, list[int]] = {}

    def run(question: str, tokens: int) -> dict:
        ids = prompts.get(question)
        if ids is None:  # the engine's prompt, token for token
            ids = prompts[question] = tokenizer(seed_prompt(question))["input_ids"]
        temperatures = [round(0.7 - i * 0.16 / n, 6) for i in range(n)]
        produced = 0
        for temperature in temperatures:
            out = llm.create_completion(prompt=ids, max_tokens=tokens, temperature=temperature, top_k=0,
                                        top_p=1.0, min_p=0.0, repeat_penalty=1.0, logit_bias={eos: -1e9})
            produced += out["usage"]["completion_tokens"]
        # llama.cpp reports no phase split here: the whole call counts as decoding
        return {"prefill_s": 0.0, "decode_s": 0.0, "tokens": produced, "rounds": n, "candidates": n,
                "temperatures": temperatures, "halt_reason": "iterations"}

    label = name or ("llama.cpp one candidate" if n == 1 else f"llama.cpp {n} sequential candidates")
    return Cell(label, "llama.cpp single" if n == 1 else "llama.cpp sequential", n, run, "Q4_1")


def llama_batched_cell(threads: int, tokenizer, rows: int) -> Cell:
    """llama.cpp's own batched decode: ``rows`` sequences sharing the prompt's KV cells, one
    ``llama_decode`` per step for all of them, the next tokens drawn with numpy (argmax for row 0, the
    greedy row; the engine's annealed temperatures for the others)."""
    import numpy as np

    from sage_irp_ros.decoding.llama_cpp_forward import LlamaCppForward
    from sage_irp_ros.irp.prompts import seed_prompt
    from sage_irp_ros.weights.embedded_model import embedded_gguf

    forward = LlamaCppForward(embedded_gguf(), n_ctx=4096, threads=threads)
    rng = np.random.default_rng(0)
    temperatures = [0.0] + [round(0.7 - i * 0.16 / (rows - 1), 6) for i in range(rows - 1)]

    def pick(logits: np.ndarray, temperature: float) -> int:
        if temperature <= 0.0:
            return int(logits.argmax())
        scaled = (logits - logits.max()) / temperature
        cdf = np.cumsum(np.exp(scaled))
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))

    def run(question: str, tokens: int) -> dict:
        ids = tokenizer(seed_prompt(question))["input_ids"]
        start = time.perf_counter()
        logits = np.repeat(forward.prefill(0, ids)[None], rows, axis=0)
        for seq in range(1, rows):
            forward.share(0, seq)
        prefill_s = time.perf_counter() - start
        for step in range(tokens):
            chosen = [pick(logits[r], temperatures[r]) for r in range(rows)]
            if step + 1 < tokens:
                logits = forward.step(chosen, [len(ids) + step] * rows, list(range(rows)))
        for seq in range(rows):
            forward.free(seq)
        return {"prefill_s": prefill_s, "decode_s": time.perf_counter() - start - prefill_s,
                "tokens": rows * tokens, "rounds": 1, "candidates": rows, "temperatures": temperatures,
                "halt_reason": "iterations"}

    return Cell(f"llama.cpp batched decode, {rows} sequences per step", "llama.cpp batched", rows, run, "Q4_1")


def with_cpu_time(cell: Cell) -> Cell:
    """Record the process CPU seconds of each run too: on a loaded machine wall time also counts waiting
    for a core, CPU time (all threads of this process, one thread per contender here) does not."""
    run = cell.run

    def timed(question: str, tokens: int) -> dict:
        start = time.process_time()
        info = run(question, tokens)
        return {**info, "cpu_s": time.process_time() - start}

    cell.run = timed
    return cell


def compare(variants: dict[str, Any], reps: int, tokens: int, log: Callable[[str], None]) -> dict[str, Any]:
    """llama.cpp and each engine variant (name -> loaded model) interleaved in one process; ratios between
    medians: the engine's single candidate against llama.cpp's, batched N=5 against five sequential."""
    import torch

    threads = torch.get_num_threads()
    llm = load_llama(threads)
    tokenizer = next(iter(variants.values()))[0].tokenizer
    cells = [llama_cell(llm, tokenizer, 1), llama_cell(llm, tokenizer, MAIN_N),
             llama_batched_cell(threads, tokenizer, MAIN_N + 1)]
    for name, (lm, irp) in variants.items():
        greedy = {**irp, "greedy_candidate": True}
        cells += [engine_cell(lm, 1, 1, name, f"engine {name}, one candidate", kind=f"{name} single", irp_keys=irp),
                  engine_cell(lm, MAIN_N, MAIN_N, name, f"engine {name}, batched N={MAIN_N}",
                              kind=f"{name} batched", irp_keys=irp),
                  engine_cell(lm, MAIN_N, MAIN_N, name, f"engine {name}, best-of-{MAIN_N} + greedy row "
                              f"({MAIN_N + 1} rows)", kind=f"{name} batched+greedy", irp_keys=greedy)]
    table = run_cells([with_cpu_time(c) for c in cells], reps, tokens, log)
    for row in table.values():
        row["median_cpu_s"] = statistics.median(r["cpu_s"] for r in row["runs"])
    median = {row["kind"]: row["median_s"] for row in table.values()}
    cpu = {row["kind"]: row["median_cpu_s"] for row in table.values()}
    ratios = {}
    for name in variants:
        ratios[f"{name}: single / llama.cpp single (time)"] = median[f"{name} single"] / median["llama.cpp single"]
        ratios[f"{name}: batched N=5 / llama.cpp 5 sequential (time)"] = \
            median[f"{name} batched"] / median["llama.cpp sequential"]
        ratios[f"{name}: 5 + greedy (6 rows) / llama.cpp 5 sequential (time)"] = \
            median[f"{name} batched+greedy"] / median["llama.cpp sequential"]
        ratios[f"{name}: 5 + greedy (6 rows) / llama.cpp batched 6 sequences (time)"] = \
            median[f"{name} batched+greedy"] / median["llama.cpp batched"]
        ratios[f"{name}: batched N=5 / single (time)"] = median[f"{name} batched"] / median[f"{name} single"]
        ratios[f"{name}: single / llama.cpp single (CPU time)"] = cpu[f"{name} single"] / cpu["llama.cpp single"]
        ratios[f"{name}: batched N=5 / llama.cpp 5 sequential (CPU time)"] = \
            cpu[f"{name} batched"] / cpu["llama.cpp sequential"]
    del llm
    return {"threads": threads, "tokens_per_candidate": tokens, "reps": reps, "table": table, "ratios": ratios}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"threads {result['threads']}, {result['tokens_per_candidate']} tokens per candidate, "
             f"medians of {result['reps']} interleaved repetitions", "",
             "| contender | median s (wall) | tok/s (wall) | median CPU s | tok/s (CPU) |", "|---|---|---|---|---|"]
    for row in result["table"].values():
        tps = row["n"] * row["tokens_per_candidate"] / row["median_s"]
        cps = row["n"] * row["tokens_per_candidate"] / row["median_cpu_s"]
        lines.append(f"| {row['name']} | {row['median_s']:.2f} | {tps:.0f} | {row['median_cpu_s']:.2f} | {cps:.0f} |")
    lines += [""] + [f"- {k}: {v:.2f}x" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for both (edge.yaml's "
                        "power_mode efficiency is 1 on a 2-core machine)")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="an engine configuration, e.g. int8:weight_quantization=int8 or "
                             "compiled:llm_irp.compile=on (model keys, or llm_irp.KEY; repeatable; default: one "
                             "variant with the defaults)")
    parser.add_argument("--out", default="", help="output folder (default bench/results)")
    args = parser.parse_args(argv)
    run = run_info(argv, f"bench.speed.{NAME}")
    if not available():
        print(SKIP_MESSAGE)
        write_result(NAME, {"run": run, "skipped": SKIP_MESSAGE}, args.out or None)
        return 0
    import torch
    import yaml

    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.weights.loader import load_model

    torch.set_num_threads(args.threads)
    variants = {}
    for spec in args.variant or ["defaults:"]:
        name, _, pairs = spec.partition(":")
        keys = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs.split(",") if p)}
        irp = {k.removeprefix("llm_irp."): v for k, v in keys.items() if k.startswith("llm_irp.")}
        model = {k.removeprefix("model."): v for k, v in keys.items() if not k.startswith("llm_irp.")}
        cfg = SageConfig.from_mapping({"model": model})
        variants[name] = (load_model(cfg.model, lambda message: None), irp)
    before = list(os.getloadavg())
    print(f"load average before {before}", file=sys.stderr)
    result = compare(variants, args.reps, args.tokens, lambda m: print(m, file=sys.stderr))
    after = list(os.getloadavg())
    print(f"load average after {after}")
    print(markdown(result))
    import llama_cpp

    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()  # the kernels llama.cpp uses
    path = write_result(NAME, {"run": run, "variants": args.variant or ["defaults:"], "llama_cpp_system": system,
                               "loadavg_before": before, "loadavg_after": after, **result}, args.out or None)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
