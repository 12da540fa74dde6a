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

"""Probe: one decoding step's Linear products, plain weights vs weights packed for oneDNN, by row count.

    python -m bench.probes.linear_kernels [--shape smollm2-shape] [--dtype fp32|bf16] [--threads 1] [--reps 8]

Builds the weight matrices of one decoding step of the named architecture (every layer's q, k, v, o,
gate, up, down projections and the output head, as separate tensors so they stream from memory as in
the model) and times multiplying them by 1, 2, 3, 5, 8 and 40 rows: ``F.linear`` on the plain weights
(PyTorch's default CPU path) against ``cpu_packing.PackedLinear`` for several layout hints. This is the
measurement behind ``model.pack_cpu_weights`` and ``cpu_packing.ROWS_HINT`` (docs/performance.md).
Prints a markdown table and writes ``linear_kernels.json`` (median ms per row count and layout, the
machine, versions and git commit) into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.record import run_info, write_result

NAME = "linear_kernels"

ROWS = (1, 2, 3, 5, 8, 40)
HINTS = (1, 2, 4, 8, 64)


def step_weights(shape: str, dtype):
    """(out, in) weight tensors of one decoding step of the architecture, head last."""
    import torch

    from bench.models import SHAPES

    _, c = SHAPES[shape]
    hidden, inter, head_dim = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    per_layer = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden),
                 (inter, hidden), (hidden, inter)]
    torch.manual_seed(0)
    weights = [torch.randn(o, i, dtype=dtype) for _ in range(c["num_hidden_layers"]) for o, i in per_layer]
    return weights + [torch.randn(c["vocab_size"], hidden, dtype=dtype)]


def time_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="smollm2-shape", help="architecture from bench.models.SHAPES")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--out", default="", help="output folder (default bench/results)")
    args = parser.parse_args(argv)

    import torch
    from torch import nn

    from sage_irp_ros.weights.cpu_packing import PackedLinear

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    weights = step_weights(args.shape, dtype)
    mb = sum(w.numel() * w.element_size() for w in weights) / 2**20
    result = {"run": run_info(argv, f"bench.probes.{NAME}"), "shape": args.shape, "dtype": args.dtype,
              "threads": args.threads, "reps": args.reps, "matrices": len(weights), "mb_per_step": mb,
              "rows": list(ROWS), "ms": {}}
    print(f"{args.shape}, {args.dtype}, {args.threads} thread(s): {len(weights)} matrices, {mb:.0f} MB per step; "
          f"median ms of {args.reps} steps")
    print("| weights | " + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in ROWS) + " |")
    print("|---|" + "---|" * len(ROWS))

    def row(label: str, apply) -> None:
        cells = []
        for rows in ROWS:
            inputs = {n: torch.randn(rows, n, dtype=dtype) for n in {w.shape[1] for w in weights}}
            cells.append(f"{time_ms(lambda: [apply(i, inputs) for i in range(len(weights))], args.reps):.1f}")
        result["ms"][label] = [float(c) for c in cells]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    with torch.inference_mode():
        row("plain (F.linear)", lambda i, x: torch.nn.functional.linear(x[weights[i].shape[1]], weights[i]))
        for hint in HINTS:
            packed = [PackedLinear(_linear(w, nn), hint) for w in weights]
            row(f"packed, hint {hint}", lambda i, x, p=packed: p[i](x[p[i].in_features]))
            del packed
    print(f"wrote {write_result(NAME, result, args.out or None)}")
    return 0


def _linear(weight, nn):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


if __name__ == "__main__":
    raise SystemExit(main())
