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

"""Probe: torch's int4 forward with and without the bf16 copy for many-row products, by rows per step.

    python -m bench.probes.dense_copy_rows [--threads 1] [--reps 3] [--rows 1,4,6,8,16] [--tokens 24]

``model.int4_dense_above_rows`` keeps a bf16 copy of the int4 weights for products of more than 4 rows
(prompts, batched questions) on CPUs with AMX only. This probe measures that rule on the CPU it runs on:
the embedded model on ``model.forward: torch`` loaded twice in one process, int4 only and int4 with the
copy (made here whatever the CPU), and one generation of ``tokens`` tokens per row count, the greedy row
plus sampled rows, the two models interleaved per repetition. Prints a markdown table of median prefill
and decode seconds and the copy's ratio, and writes ``dense_copy_rows.json`` (every repetition, the
machine with its CPU flags, versions and git commit) into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.record import run_info, write_result

NAME = "dense_copy_rows"
QUESTION = "What is the difference between knowledge and understanding?"


def _load(dense_above_rows: int):
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.irp.engine import local_generator
    from sage_irp_ros.weights.loader import load_model

    cfg = SageConfig.from_mapping({"model": {"forward": "torch", "int4_dense_above_rows": dense_above_rows}})
    lm = load_model(cfg.model, lambda message: None)
    return lm, local_generator(lm, cfg.llm_irp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", default="1,4,6,8,16", help="rows per decoding step, comma-separated")
    parser.add_argument("--tokens", type=int, default=24, help="tokens decoded per row")
    parser.add_argument("--out", default="", help="output folder (default bench/results)")
    args = parser.parse_args(argv)

    import torch

    from sage_irp_ros.compat import torch_kernels
    from sage_irp_ros.decoding.generator import GenerationRequest
    from sage_irp_ros.irp.prompts import seed_prompt

    torch.set_num_threads(args.threads)
    run = {"run": run_info(argv, f"bench.probes.{NAME}"), "amx_bf16": torch_kernels.cpu_has_amx_bf16(),
           "threads": args.threads, "tokens": args.tokens, "rows": {}}
    lean = _load(0)
    torch_kernels.cpu_has_amx_bf16 = lambda: True  # the copy on any CPU: what the rule decides about
    models = {"int4 only": lean, "int4 + bf16 copy": _load(4)}
    ids = lean[0].tokenizer(seed_prompt(QUESTION))["input_ids"]
    print("| rows | int4 only: prefill / decode s | int4 + bf16 copy: prefill / decode s | copy / int4 only (decode) |")
    print("|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        runs = {name: [] for name in models}
        for _ in range(args.reps):
            for name, (_, generator) in models.items():
                start = time.perf_counter()
                batch = generator.generate(GenerationRequest(ids, [0.0] + [0.7] * (rows - 1),
                                                             max_new_tokens=args.tokens, min_new_tokens=args.tokens))
                runs[name].append({"wall_s": time.perf_counter() - start, "prefill_s": batch.prefill_s,
                                   "decode_s": batch.decode_s})
        medians = {name: {key: statistics.median(r[key] for r in reps) for key in ("prefill_s", "decode_s")}
                   for name, reps in runs.items()}
        ratio = medians["int4 + bf16 copy"]["decode_s"] / medians["int4 only"]["decode_s"]
        run["rows"][str(rows)] = {"runs": runs, "medians": medians, "copy_over_int4_decode": ratio}
        lean_m, copy_m = medians["int4 only"], medians["int4 + bf16 copy"]
        print(f"| {rows} | {lean_m['prefill_s']:.3f} / {lean_m['decode_s']:.3f} | "
              f"{copy_m['prefill_s']:.3f} / {copy_m['decode_s']:.3f} | {ratio:.2f}x |", flush=True)
        write_result(NAME, run, args.out or None)
    print(f"wrote {write_result(NAME, run, args.out or None)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
