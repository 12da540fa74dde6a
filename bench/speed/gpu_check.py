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

"""GPU check: per-token decode time of batched candidate sampling against the bandwidth floor.

One command for a machine with a CUDA GPU (needs only torch and transformers, no model download):

    PYTHONUNBUFFERED=1 python3 -m bench.speed.gpu_check      # or: bash bench/speed/gpu_check.sh
    python3 -m bench.speed.gpu_check --dry-run                # tiny model on CPU: checks the script runs

It builds a randomly initialised model with Qwen2.5-0.5B-Instruct's exact architecture in fp16
(weights do not change speed), then for N = 1, 3, 5, 8 candidates decodes ``--tokens`` tokens per
candidate in one call with per-row temperatures, through the package's one decode loop
(sage_irp_ros/decoding/decode.py: static KV cache, prompt prefilled once for all rows, per-row temperatures,
untempered log-probs), in two modes:

- ``loop``:             the loop as the package runs it, eager;
- ``loop-compile``:     the same loop with the package's compiled step (sage_irp_ros/decoding/compiled_step.py,
  ``llm_irp.compile``: CUDA graphs through mode "reduce-overhead" on CUDA, inductor's C++ backend on CPU;
  rows padded to a power of two, the cache length to a multiple of 256);
- ``question`` / ``question-compile``: the default question's shape (``llm_irp.sampled_prompts: "2"``): two
  prompts in one decode engine (sage_irp_ros/decoding/engine.py), the plain one with the greedy row and half
  the sampled rows, a second phrasing with the others; eager, and through the compiled step (CUDA graphs).
  The cell records how many engine steps ran compiled (``compiled_steps`` of ``steps``).

``--quant int8`` stores the Linear weights (head and tied embedding included) as int8 per output channel
(sage_irp_ros/weights/int8.py, ``model.weight_quantization: int8``) before measuring; ``--quant int4`` as 4-bit
groups with 8-bit embedding and head (sage_irp_ros/weights/int4.py, ``int4``: the CUDA tinygemm kernel, sm80+); the
floor then counts the quantised bytes. ``--modes loop,loop-compile --quant int4`` is the quantised +
compiled path.

Reported per cell: prefill ms, decode ms per step (one step = one new token for each of the N rows),
decode ms per generated token, tokens/s, peak GPU memory, and the ratio of the step time to the
bandwidth floor = weight bytes / memory bandwidth (KV-cache bytes are added; they are small here).
Floors are listed for H100 SXM (3.35 TB/s), H100 PCIe (2.0 TB/s), H200 (4.8 TB/s) and Jetson Orin
Nano 8GB (68 GB/s); the GPU in hand is detected by name, and a measured device-to-device copy
bandwidth is reported beside it as the practical ceiling.

The JSON result (with the machine, versions and git commit: ``bench.record``) is printed (last line,
prefixed ``GPU-CHECK-JSON``) and written to ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is
set, else ``bench/results/gpu_check.json``) after every cell, so a run cut short still leaves what it
measured. ``--budget-s`` skips the remaining cells (recorded as skipped) once that much time has passed,
so the run ends within a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:  # run as ``python -m bench.speed.gpu_check`` or as a plain script
    from bench.models import random_model, weight_bytes
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.models import random_model, weight_bytes
from bench.record import RESULTS, run_info  # noqa: E402

NAME = "gpu_check"
MODES = ("loop", "loop-compile", "question", "question-compile")

BANDWIDTH_GBS = {"H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H200": 4800.0, "Jetson Orin Nano 8GB": 68.0}


def detect_bandwidth(name: str | None) -> tuple[str | None, float | None]:
    if not name:
        return None, None
    upper = name.upper()
    if "H200" in upper:
        return "H200", BANDWIDTH_GBS["H200"]
    if "H100" in upper:
        return ("H100 PCIe", BANDWIDTH_GBS["H100 PCIe"]) if "PCIE" in upper else (
            "H100 SXM", BANDWIDTH_GBS["H100 SXM"])
    if "ORIN" in upper:
        return "Jetson Orin Nano 8GB", BANDWIDTH_GBS["Jetson Orin Nano 8GB"]
    return None, None


def measure_copy_bandwidth(torch, device) -> float | None:
    """Device-to-device copy of 1 GiB: (bytes read + written) / time, in GB/s."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    reps = 10
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / reps
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2**30 / seconds / 1e9


_COMPILED: dict[str, Any] = {}
# A dry run on CPU traces the step with dynamo but skips inductor's C++ compile (measured: 427 s for the
# tiny model on a loaded 2-core machine), so it checks the wiring in seconds.
COMPILE_BACKEND = {"backend": None}


def loop_cell(torch, model, mode: str, prompt, temps, tokens: int, sync):
    """``once(max_new)`` for the package's decode engine (eager or with a compiled step): one prompt's rows
    (``loop*``) or the default question's two prompts (``question*``)."""
    from sage_irp_ros.decoding.compiled_step import CompiledStep
    from sage_irp_ros.decoding.engine import DecodeEngine
    from sage_irp_ros.decoding.generator import GenerationRequest

    compiled = mode.endswith("-compile")
    if compiled and "step" not in _COMPILED:  # the package's compiled step, compiled in place
        backend = COMPILE_BACKEND["backend"] or "inductor"
        _COMPILED["step"] = CompiledStep(model, context_window=int(model.config.max_position_embeddings),
                                         backend=backend, background=False)
    step_fn = _COMPILED.get("step") if compiled else None
    ids = prompt[0].tolist()
    if mode.startswith("question"):  # plain prompt: greedy + every other sampled row; a phrasing 7 tokens longer
        sampled = list(temps)
        prompts = [(ids, sampled[0::2] + [0.0]), (ids[:7] + ids, sampled[1::2])]
        prompts = [(p, t) for p, t in prompts if t]
    else:
        prompts = [(ids, list(temps))]
    rows = sum(len(t) for _, t in prompts)
    length = max(len(p) for p, _ in prompts) + tokens
    capacity, length = step_fn.shapes(rows, length) if step_fn is not None else (rows, length)
    if step_fn is not None:
        step_fn.request([(capacity, length)])
        if step_fn.failed:
            raise RuntimeError(step_fn.failed)
    pooled = step_fn.pooled_cache(capacity, length) if step_fn is not None else None
    engine = DecodeEngine(model, capacity=capacity, length=length, eos_ids=[], pad_id=0, step_fn=step_fn,
                          cache=pooled)

    def once(max_new: int) -> dict:
        sync()
        start = time.perf_counter()
        steps, compiled_steps = engine.steps, engine.compiled_steps
        for p, t in prompts:
            engine.submit(GenerationRequest(p, t, max_new, min_new_tokens=max_new))
        outs = [f.decoded for f in engine.run()]
        sync()
        return {"total_s": time.perf_counter() - start, "prefill_s": sum(o.prefill_s for o in outs),
                "decode_s": max(o.decode_s for o in outs), "new_tokens": max(o.tokens.shape[1] for o in outs),
                "steps": engine.steps - steps, "compiled_steps": engine.compiled_steps - compiled_steps}

    return once


def run_cell(torch, model, mode: str, n: int, prompt_len: int, tokens: int, reps: int, device, sync) -> dict:
    vocab = model.config.vocab_size
    prompt = torch.randint(100, min(vocab, 30000), (1, prompt_len), device=device)
    temps = [round(0.7 - i * 0.16 / n, 6) for i in range(n)]
    once = loop_cell(torch, model, mode, prompt, temps, tokens, sync)
    warm = [once(tokens) for _ in range(2 if "compile" in mode else 1)]  # compile happens here
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runs = [once(tokens) for _ in range(reps)]
    steps = [r["decode_s"] / max(1, r["new_tokens"] - 1) for r in runs]
    step = statistics.median(steps)
    compiled = mode.endswith("-compile")
    return {"mode": mode, "steps": runs[0]["steps"], "compiled_steps": runs[0]["compiled_steps"], "n": n,
            "tokens": tokens, "prompt_tokens": prompt_len, "reps": reps,
            "warmup_s": [round(w["total_s"], 3) for w in warm], "compiled": compiled,
            "prefill_ms": 1e3 * statistics.median(r["prefill_s"] for r in runs),
            "decode_ms_per_step": 1e3 * step, "decode_ms_per_token": 1e3 * step / n,
            "tokens_per_s": n / step, "total_s_median": statistics.median(r["total_s"] for r in runs),
            "new_tokens": runs[0]["new_tokens"],
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Batched decoding vs the memory-bandwidth floor on a GPU")
    parser.add_argument("--shape", default="qwen05b-shape", choices=("qwen05b-shape", "smollm2-shape", "tiny"))
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--ns", default="1,3,5,8")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--quant", default="none", choices=("none", "int8", "int4"),
                        help="Linear weights int8 per channel or int4 in groups with an 8-bit head, by the "
                             "functions model.weight_quantization runs at load")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip remaining cells after this long")
    parser.add_argument("--bandwidth-gbs", type=float, default=0.0, help="override the detected bandwidth")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, few tokens, CPU allowed")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    if args.dry_run:
        args.shape, args.tokens, args.prompt_tokens, args.reps, args.ns = "tiny", 6, 8, 1, "1,3"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run and device.type == "cpu":
        COMPILE_BACKEND["backend"] = "eager"
    if device.type != "cuda" and not args.dry_run:
        print("no CUDA device: use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 on CPU is slow and not what a dry run checks
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    unknown = [m for m in args.modes.split(",") if m and m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    out_path = Path(args.out or (Path(os.environ["OUT"]) / f"{NAME}.json" if os.environ.get("OUT") else
                                 RESULTS / f"{NAME}.json"))
    out_path.parent.mkdir(parents=True, exist_ok=True)

    gpu_name = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    bw_name, bw = detect_bandwidth(gpu_name)
    if args.bandwidth_gbs:
        bw_name, bw = "given", args.bandwidth_gbs
    model, build_s = random_model(args.shape, dtype=dtype, device=str(device))
    if args.quant == "int4":
        from sage_irp_ros.weights.int4 import quantize_model_int4

        quantize_model_int4(model, device)
    elif args.quant != "none":
        from sage_irp_ros.weights.int8 import quantize_model

        quantize_model(model, args.quant, device)
    wbytes = weight_bytes(model)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes_per_token_row = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * \
        torch.tensor([], dtype=dtype).element_size()
    result: dict[str, Any] = {
        "run": run_info(argv, f"bench.speed.{NAME}"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
        "gpu": gpu_name, "torch": torch.__version__, "device": str(device), "dtype": str(dtype),
        "shape": args.shape, "quant": args.quant, "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes": wbytes, "build_s": build_s, "bandwidth_assumed": {"name": bw_name, "gbs": bw},
        "copy_bandwidth_gbs": measure_copy_bandwidth(torch, device),
        "floor_ms_per_step_weights_only": {name: 1e3 * wbytes / (gbs * 1e9) for name, gbs in BANDWIDTH_GBS.items()},
        "kv_bytes_per_token_per_row": kv_bytes_per_token_row, "cells": [], "skipped": []}
    try:
        from transformers import __version__ as tf_version
        result["transformers"] = tf_version
    except ImportError:  # pragma: no cover
        pass

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=1))

    save()
    modes = [m for m in args.modes.split(",") if m]
    ns = [int(x) for x in args.ns.split(",") if x]
    for mode in modes:
        for n in ns:
            if time.perf_counter() - started > args.budget_s:
                result["skipped"].append({"mode": mode, "n": n, "why": "time budget"})
                continue
            try:
                cell = run_cell(torch, model, mode, n, args.prompt_tokens, args.tokens, args.reps, device, sync)
            except Exception as exc:  # record and go on: one failing mode must not lose the others
                result["skipped"].append({"mode": mode, "n": n, "why": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"{mode} N={n}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                save()
                continue
            # bandwidth floor of one step: all weights once + this step's KV cache reads (mid-sequence)
            mid = args.prompt_tokens + args.tokens // 2
            step_bytes = wbytes + n * mid * kv_bytes_per_token_row
            cell["floor_ms_per_step"] = 1e3 * step_bytes / (bw * 1e9) if bw else None
            cell["x_floor"] = cell["decode_ms_per_step"] / cell["floor_ms_per_step"] if bw else None
            cell["effective_gbs"] = step_bytes / (cell["decode_ms_per_step"] / 1e3) / 1e9
            result["cells"].append(cell)
            save()
            floor = f", floor {cell['floor_ms_per_step']:.3f} ms ({cell['x_floor']:.1f}x)" if bw else ""
            print(f"{mode:16s} N={n}: prefill {cell['prefill_ms']:.1f} ms, decode {cell['decode_ms_per_step']:.3f} "
                  f"ms/step = {cell['decode_ms_per_token']:.3f} ms/token, {cell['tokens_per_s']:.0f} tok/s, "
                  f"effective {cell['effective_gbs']:.0f} GB/s{floor}, compiled={cell['compiled']}, "
                  f"warm-up {cell['warmup_s']} s", flush=True)
    result["duration_s"] = time.perf_counter() - started
    save()
    print("GPU-CHECK-JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
