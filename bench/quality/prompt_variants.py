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

"""Prompt-diverse candidates: does spreading the sampled rows over prompt phrasings beat one prompt?

    python -m bench.quality.prompt_variants [--setting edge] [--half both] [--per-call 2] [--update-docs]
    python -m bench.quality.prompt_variants --from-dump        # re-evaluate the stored dump

Generation runs once: for every question, the sampled rows at the setting's temperatures under EVERY
phrasing of ``prompts.PROMPT_BANK`` plus the greedy row under the plain prompt, all in one batched call
(``Generator.generate_many``; ``--per-call`` questions share it). An assignment then says which phrasing
each sampled row uses (``0,1,2``: row i from phrasing i; ``0,0,0``: the plain prompt only), and the
package's default selection rule picks among those rows and the greedy row, offline. The assignment
(and whether prompt diversity is on by default) is chosen on the tuning half; the held-out half reports
it, paired against greedy decoding and against the plain prompt, with bootstrap 95 % intervals.
Ties on the tuning half go to the assignment with fewer distinct prompts (fewer prefills). An
assignment is ``llm_irp.sampled_prompts`` spelled per row (``2,2,2`` = ``sampled_prompts: "2"``).
Writes ``prompt_variants.json`` and ``quality_dump_variants_<setting>.json.gz`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from bench.quality.evaluate import bootstrap_diff, mean, per_question
from bench.quality.question_set import load_questions
from bench.quality.run_quality import candidate_row, interleave, parse_overrides, setting_plan
from bench.record import RESULTS, add_update_docs_flag, run_info, update_docs, write_result
from sage_irp_ros.decoding.generator import Candidate, GenerationRequest
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.weights.loader import load_model
from sage_irp_ros.irp.prompts import PROMPT_BANK, render_prompt
from sage_irp_ros.irp.selection import best_index, selection_rule

NAME = "prompt_variants"
SECTION = "prompt-variants"
# Assignments compared on the tuning half: the plain prompt, each single phrasing, and the bank's
# phrasings spread over the rows (round robin, as llm_irp.prompt_variants does, in bank order).
ASSIGNMENTS = ("0,0,0", "1,1,1", "2,2,2", "3,3,3", "0,1,0", "0,1,2", "0,2,3", "0,1,3", "1,2,3")


def generate(setting: str, questions: list[dict], cfg: SageConfig, per_call: int, log=print) -> dict:
    temps, max_tokens = setting_plan(setting)
    lm = load_model(cfg.model)
    generator = TorchGenerator(lm)
    trials, start = [], time.monotonic()
    ordered = interleave(questions)
    for first in range(0, len(ordered), per_call):
        chunk = ordered[first:first + per_call]
        requests = []
        for item in chunk:
            for v, system in enumerate(PROMPT_BANK):
                ids = render_prompt(lm.tokenizer, item["q"], system=system).ids
                requests.append(GenerationRequest(ids, [*temps, 0.0] if v == 0 else temps, max_tokens))
        torch.manual_seed(first)
        batches = generator.generate_many(requests)
        for n, item in enumerate(chunk):
            variants = [[candidate_row(c, item["a"]) for c in batch.candidates]
                        for batch in batches[n * len(PROMPT_BANK):(n + 1) * len(PROMPT_BANK)]]
            trials.append({"q": item["q"], "kind": item["kind"], "half": item["half"], "seed": 0,
                           "variants": variants})
        log(f"[{setting}] {len(trials)}/{len(ordered)} questions, {time.monotonic() - start:.0f} s")
    return {"setting": setting, "temperatures": temps, "max_tokens": max_tokens, "bank": list(PROMPT_BANK),
            "precision": lm.precision, "weights": lm.weight_quantization,
            "seconds": round(time.monotonic() - start, 1), "trials": trials}


def composed(trial: dict, assignment: str) -> tuple[list[Candidate], list[bool]]:
    """The candidates a node with this assignment would see, in the engine's row order: sampled row i
    from phrasing ``assignment[i]``, then the greedy row (plain prompt)."""
    rows = [trial["variants"][int(v)][row] for row, v in enumerate(assignment.split(","))]
    rows.append(trial["variants"][0][-1])
    return [Candidate(r["text"], r["t"], r["ids"], r["lp"], r["finished"]) for r in rows], [r["correct"] for r in rows]


def evaluate(dump: dict) -> dict:
    """Per assignment and half: the default rule's accuracy and its paired differences."""
    rule = selection_rule(SageConfig().llm_irp.energy)
    t0 = SageConfig().llm_irp.initial_temperature
    greedy = [(t, float(t["variants"][0][-1]["correct"])) for t in dump["trials"]]
    out: dict = {"greedy": {}, "assignments": {}}
    for half in ("tune", "heldout"):
        out["greedy"][half] = round(100 * mean(per_question(greedy, half)), 2)
    for assignment in ASSIGNMENTS:
        scores, ceiling = [], []
        for trial in dump["trials"]:
            cands, ok = composed(trial, assignment)
            scores.append((trial, float(ok[best_index(rule.energies(cands, [], t0))])))
            ceiling.append((trial, float(any(ok))))
        row = {}
        for half in ("tune", "heldout"):
            mine = per_question(scores, half)
            d, lo, hi = bootstrap_diff(mine, per_question(greedy, half))
            row[half] = {"accuracy": round(100 * mean(mine), 2), "vs_greedy": [round(100 * x, 2) for x in (d, lo, hi)],
                         "ceiling": round(100 * mean(per_question(ceiling, half)), 2), "_scores": mine}
        out["assignments"][assignment] = row
    plain = out["assignments"]["0,0,0"]
    for assignment, row in out["assignments"].items():
        for half in ("tune", "heldout"):
            d, lo, hi = bootstrap_diff(row[half]["_scores"], plain[half]["_scores"])
            row[half]["vs_plain"] = [round(100 * x, 2) for x in (d, lo, hi)]
    for row in out["assignments"].values():
        for half in ("tune", "heldout"):
            row[half].pop("_scores")
    # Ties on the tuning half go to the cheaper assignment: fewer distinct prompts, fewer prefills.
    best = max(ASSIGNMENTS, key=lambda a: (out["assignments"][a]["tune"]["accuracy"], -len(set(a.split(",")) - {"0"})))
    out["chosen_on_tune"] = best
    return out


def table(summary: dict, dump: dict) -> str:
    lines = [f"Setting {dump['setting']} ({len(dump['temperatures'])} sampled rows + the greedy row, "
             f"{dump['max_tokens']} tokens, weights {dump['weights']}, {dump['precision']}); greedy decoding: "
             f"tune {summary['greedy']['tune']:.1f} %, held-out {summary['greedy']['heldout']:.1f} %. "
             f"Assignment chosen on the tuning half: `{summary['chosen_on_tune']}`.", "",
             "| sampled rows' phrasings | tune | held-out | held-out vs greedy | held-out vs plain prompt | "
             "held-out ceiling |", "|---|---|---|---|---|---|"]
    for assignment, row in summary["assignments"].items():
        h = row["heldout"]
        lines.append(f"| `{assignment}` | {row['tune']['accuracy']:.1f} % | {h['accuracy']:.1f} % | "
                     f"{h['vs_greedy'][0]:+.1f} [{h['vs_greedy'][1]:+.1f}, {h['vs_greedy'][2]:+.1f}] | "
                     f"{h['vs_plain'][0]:+.1f} [{h['vs_plain'][1]:+.1f}, {h['vs_plain'][2]:+.1f}] | "
                     f"{h['ceiling']:.1f} % |")
    named = [f"{i} = " + (f'"{s}"' if s else "the plain prompt") for i, s in enumerate(dump["bank"])]
    lines += ["", "Phrasings: " + "; ".join(named) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=("short", "edge"), default="edge")
    parser.add_argument("--half", choices=("tune", "heldout", "both"), default="both")
    parser.add_argument("--per-call", type=int, default=2, help="questions decoded together")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions (a smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--from-dump", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    add_update_docs_flag(parser, SECTION)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality_dump_variants_{args.setting}.json.gz"
    if args.from_dump:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            dump = json.load(f)
    else:
        cfg = SageConfig.from_mapping(parse_overrides(args.set))
        questions = load_questions(args.half)
        dump = generate(args.setting, questions[:args.limit] if args.limit else questions, cfg, args.per_call)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(dump, f, separators=(",", ":"))
    summary = evaluate(dump)
    text = table(summary, dump)
    print(text)
    write_result(NAME, {"run": run_info(argv, f"bench.quality.{NAME}"), "setting": args.setting,
                        "seconds": dump["seconds"], **summary}, out)
    if args.update_docs and not update_docs(SECTION, text):
        print(f"docs/performance.md has no '{SECTION}' markers: not updated")


if __name__ == "__main__":
    main()
