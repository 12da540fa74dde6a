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

"""Memory the embedded model adds to a process: RSS after ``load_model`` minus RSS before, per configuration.

    python -m bench.speed.load_memory [--variant NAME:KEY=VALUE,... ...] [--out bench/results]

Each variant loads in a fresh child process (a process's RSS never shrinks back, so variants cannot share
one); torch, transformers and the package are imported before the first reading, so the difference is
the model: weights, packed copies, the tokenizer and the warm-up generation's buffers. ``--peer CELLS``
adds the row a user would compare with: llama-cpp-python's own ``Llama`` over the same GGUF with a
CELLS-token context (importing llama_cpp counts in both: the package imports it while it loads). Prints
a markdown table and writes ``load_memory.json`` (every variant's row, the machine, versions and git
commit) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.record import run_info, write_result

NAME = "load_memory"

DEFAULT_VARIANTS = ("defaults (auto):", "full width, precision auto:weight_quantization=none",
                    "fp32 packed:precision=fp32,weight_quantization=none",
                    "fp32 not packed:precision=fp32,pack_cpu_weights=false,weight_quantization=none",
                    "bf16 packed:precision=bf16,weight_quantization=none", "int8:weight_quantization=int8",
                    "int4 (a bf16 copy for batches on AMX CPUs):weight_quantization=int4",
                    "int4 only:weight_quantization=int4,int4_dense_above_rows=0")


def _rss_mb() -> dict[str, float]:
    """The process's resident set and its two parts: anonymous memory and pages of mapped files (a
    memory-mapped model file's pages are shared with the page cache and reclaimable)."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name = line.split(":", 1)[0]
            if name in ("VmRSS", "RssAnon", "RssFile"):
                found[name] = int(line.split()[1]) / 1024
    return found


def child(spec: str) -> dict:
    import torch
    import yaml

    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.irp.engine import IRPEngine
    from sage_irp_ros.weights.loader import load_model
    from sage_irp_ros.irp.options import AnswerOptions

    name, _, pairs = spec.partition(":")
    model = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs.split(",") if p)}
    cfg = SageConfig.from_mapping({"model": model})
    torch.set_num_threads(1)
    before = _rss_mb()
    lm = load_model(cfg.model, lambda message: None)
    loaded = _rss_mb()
    IRPEngine(lm, cfg.llm_irp, use_chat_template=False).refine(
        "What is 2+2?", options=AnswerOptions.resolve(cfg.llm_irp).replace(max_tokens=8))
    return _row(name, before, loaded, _rss_mb(), lm.footprint_mb)


def _row(variant: str, before: dict, loaded: dict, answered: dict, footprint_mb: float) -> dict:
    """One table row from the three readings (before loading, loaded, after one answer)."""
    return {"variant": variant, "rss_before_mb": before["VmRSS"],
            "added_by_load_mb": loaded["VmRSS"] - before["VmRSS"],
            "added_after_one_answer_mb": answered["VmRSS"] - before["VmRSS"], "footprint_mb": footprint_mb,
            "added_anon_mb": loaded.get("RssAnon", 0) - before.get("RssAnon", 0),
            "added_file_mb": loaded.get("RssFile", 0) - before.get("RssFile", 0)}


def peer(cells: int) -> dict:
    """The same readings for llama-cpp-python's ``Llama`` alone: the GGUF, ``cells`` context, one answer."""
    from sage_irp_ros.weights.embedded_model import embedded_gguf

    gguf = str(embedded_gguf())
    before = _rss_mb()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=cells, n_threads=1, n_threads_batch=1, verbose=False)
    loaded = _rss_mb()
    llm("What is 2+2?", max_tokens=8)
    return _row(f"llama-cpp-python alone, {cells} cells", before, loaded, _rss_mb(), os.path.getsize(gguf) / 2**20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="a configuration (llm_irp keys; repeatable; default: the five of the docs table)")
    parser.add_argument("--peer", type=int, action="append", default=[], metavar="CELLS",
                        help="add llama-cpp-python alone with a CELLS-token context (repeatable)")
    parser.add_argument("--out", default="", help="output folder (default bench/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--peer-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print("LOAD-MEMORY " + json.dumps(child(args.child)))
        return 0
    if args.peer_child is not None:
        print("LOAD-MEMORY " + json.dumps(peer(args.peer_child)))
        return 0
    result = {"run": run_info(argv, f"bench.speed.{NAME}"), "rows": []}
    print("| configuration | RSS added by load, MB | of which mapped file pages | after one answer, MB | "
          "weights (footprint), MB |")
    print("|---|---|---|---|---|")
    runs = [("--child", spec) for spec in args.variant or DEFAULT_VARIANTS]
    for flag, spec in runs + [("--peer-child", str(cells)) for cells in args.peer]:
        out = subprocess.run([sys.executable, "-m", f"bench.speed.{NAME}", flag, spec], capture_output=True,
                             text=True, check=True).stdout
        row = json.loads(next(line for line in out.splitlines() if line.startswith("LOAD-MEMORY "))[12:])
        result["rows"].append({"spec": spec, **row})
        write_result(NAME, result, args.out or None)
        print(f"| {row['variant']} | {row['added_by_load_mb']:.0f} | {row['added_file_mb']:.0f} | "
              f"{row['added_after_one_answer_mb']:.0f} | {row['footprint_mb']:.0f} |", flush=True)
    print(f"wrote {write_result(NAME, result, args.out or None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
