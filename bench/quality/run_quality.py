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

"""Answer quality: does IRP's pick beat greedy decoding? Measured on questions it was not tuned on.

Generation (the expensive part) runs once and dumps every candidate with its features: token ids,
untempered log-probs, finished, text, temperature, correct. Every selection rule is then evaluated
offline on the dump (``bench/quality/evaluate.py``), on the tuning and the held-out half of
``bench/quality/questions.json`` (split and scoring rules: ``bench/quality/question_set.py``).

Settings (each question on its own, no history, the chat prompt the node uses):
  short  5 sampled candidates at 0.70 -> 0.54, 32 new tokens, plus the greedy (T = 0) row
  edge   config/edge.yaml: its schedule (0.7, 0.647, 0.594), 150 new tokens, plus the greedy row

    python -m bench.quality.run_quality                       # both settings, then the report
    python -m bench.quality.run_quality --setting short --seeds 2   # one setting's generation + report
    python -m bench.quality.run_quality --from-dump           # re-evaluate the dumps in --out only
    python -m bench.quality.run_quality --from-dump --update-docs   # ... and rewrite docs/performance.md's tables
    python -m bench.quality.run_quality --setting short --half heldout --out bf16-run \\
        --set model.precision=bf16 --compare bench/results  # paired against the fp32 dumps
    python -m bench.quality.run_quality --merge run-a run-b # union of dumps from parallel runs, then report
    python -m bench.quality.run_quality --half heldout --seeds 1 --setting short --out q-run \\
        --set model.weight_quantization=int8                # a quick accuracy check of a config

Outputs in ``--out`` (default bench/results): quality_dump_<setting>.json.gz (the candidates),
run_quality.json (the summary, with the machine, versions and git commit: ``bench.record``) and
run_quality.md (the tables). docs/performance.md changes only with ``--update-docs``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from pathlib import Path

import torch
import yaml

from bench.quality.question_set import is_correct, load_questions
from bench.record import REPO, RESULTS, add_update_docs_flag, run_info, update_docs, write_result
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.irp.engine import temperature_schedule
from sage_irp_ros.irp.engine import local_generator
from sage_irp_ros.weights.loader import load_model
from sage_irp_ros.irp.prompts import build_prompt_ids, clean_answer

NAME = "run_quality"
EDGE_YAML = REPO / "config" / "edge.yaml"
SHORT_TEMPERATURES = [0.70, 0.66, 0.62, 0.58, 0.54]


def setting_plan(setting: str) -> tuple[list[float], int]:
    """(sampled temperatures, max new tokens) of a setting; the greedy row is added on top."""
    if setting == "short":
        return list(SHORT_TEMPERATURES), 32
    if setting == "edge":
        irp = SageConfig.from_yaml(EDGE_YAML).llm_irp
        return temperature_schedule(irp, irp.candidates), irp.max_tokens
    raise ValueError(f"unknown setting {setting!r}")


def parse_overrides(pairs: list[str]) -> dict:
    """``["model.precision=bf16", ...]`` -> nested mapping for SageConfig.from_mapping (YAML-typed values)."""
    nested: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set wants section.key=value, got {pair!r}")
        nested.setdefault(section, {})[name] = yaml.safe_load(value)
    return nested


def interleave(questions: list[dict]) -> list[dict]:
    """Alternate the halves, each in a fixed hash order, so a run stopped early covers both and every kind.

    (The committed dumps were made with file order within each half, which is grouped by kind: their
    cut-short runs reached few robot and no instruction questions; docs/performance.md says so.)
    """
    def order(q: dict) -> str:
        return hashlib.sha256(q["q"].encode("utf-8")).hexdigest()
    tune = sorted((q for q in questions if q["half"] == "tune"), key=order)
    held = sorted((q for q in questions if q["half"] == "heldout"), key=order)
    out = []
    for i in range(max(len(tune), len(held))):
        out += tune[i:i + 1] + held[i:i + 1]
    return out


def generate(setting: str, questions: list[dict], seeds: int, cfg: SageConfig, log=print,
             checkpoint=None, done: list[dict] | None = None) -> dict:
    """One batched call per (question, seed): the sampled rows plus the greedy row; returns the dump.

    Seed 0 runs over all questions before seed 1, and ``checkpoint(dump)`` is called every 5
    questions, so a run cut short still leaves a usable dump. Trials in ``done`` (a previous dump of
    the same setting) are kept and not generated again: each (question, seed) is seeded on its own,
    so a resumed run gives the same candidates as one run from the start.
    """
    temps, max_tokens = setting_plan(setting)
    rows = [*temps, 0.0]
    lm = load_model(cfg.model)
    generator = local_generator(lm, cfg.llm_irp)  # the forward model.forward chose (torch or llama.cpp)
    trials: list[dict] = list(done or [])
    have = {(t["q"], t["seed"]) for t in trials}
    start = time.monotonic()

    def dump() -> dict:
        return {"setting": setting, "temperatures": rows, "max_tokens": max_tokens, "seeds": seeds,
                "model": cfg.model.path or "SmolLM2-135M-Instruct (embedded)",
                "precision": lm.precision, "seconds": round(time.monotonic() - start, 1),
                "trials": trials}

    for seed in range(seeds):
        for n, item in enumerate(interleave(questions)):
            if (item["q"], seed) in have:
                continue
            prompt = build_prompt_ids(lm.tokenizer, item["q"])
            torch.manual_seed(seed)
            batch = generator.generate(GenerationRequest(prompt, rows, max_tokens))
            cands = [candidate_row(c, item["a"]) for c in batch.candidates]
            trials.append({"q": item["q"], "kind": item["kind"], "half": item["half"], "seed": seed,
                           "gen_s": round(batch.prefill_s + batch.decode_s, 4), "candidates": cands})
            if (n + 1) % 5 == 0:
                log(f"[{setting}] seed {seed}: {n + 1}/{len(questions)} questions, "
                    f"{time.monotonic() - start:.0f} s")
                if checkpoint is not None:
                    checkpoint(dump())
    return dump()


def candidate_row(candidate, answers) -> dict:
    """One candidate as a dump stores it: temperature, cleaned text, token ids, log-probs, finished, correct."""
    text = clean_answer(candidate.text)
    return {"t": candidate.temperature, "text": text, "ids": candidate.token_ids,
            "lp": [round(x, 4) for x in candidate.token_logprobs], "finished": candidate.finished,
            "correct": is_correct(text, answers)}


def dump_path(out: Path, setting: str) -> Path:
    return out / f"quality_dump_{setting}.json.gz"


def write_dump(dump: dict, path: Path) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(dump, f, separators=(",", ":"))


def read_dump(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def resumable(path: Path, setting: str, overrides: list[str]) -> list[dict]:
    """The trials of an existing dump that a run of ``setting`` with ``overrides`` may keep, else []."""
    if not path.exists():
        return []
    dump = read_dump(path)
    temps, max_tokens = setting_plan(setting)
    same = (dump["temperatures"] == [*temps, 0.0] and dump["max_tokens"] == max_tokens
            and dump.get("overrides", []) == overrides)
    return dump["trials"] if same else []


def merge_dumps(paths: list[Path]) -> dict:
    """One dump from several runs of the same setting (e.g. halves run in parallel processes)."""
    dumps = [read_dump(p) for p in paths]
    first = dumps[0]
    for d in dumps[1:]:
        if (d["temperatures"], d["max_tokens"], d.get("overrides", [])) != (
                first["temperatures"], first["max_tokens"], first.get("overrides", [])):
            raise SystemExit(f"cannot merge dumps of different settings: {paths}")
    trials = {(t["q"], t["seed"]): t for d in dumps for t in d["trials"]}
    return {**first, "seeds": max(d["seeds"] for d in dumps), "trials": list(trials.values()),
            "seconds": round(sum(d["seconds"] for d in dumps), 1)}


def docs_text(markdown: str) -> str:
    """The report as docs/performance.md shows it: without its title, each heading one level down."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("#") else line for line in lines).strip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=("short", "edge", "both"), default="both")
    parser.add_argument("--half", choices=("tune", "heldout", "both"), default="both")
    parser.add_argument("--questions", type=int, default=0, help="first N questions of the half (0 = all)")
    parser.add_argument("--seeds", type=int, default=0, help="seeds per question (default: short 2, edge 1)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="configuration override, e.g. model.precision=bf16 (repeatable)")
    parser.add_argument("--from-dump", action="store_true", help="evaluate the dumps in --out, no generation")
    parser.add_argument("--fresh", action="store_true",
                        help="generate every trial again (default: keep the trials of a matching dump in --out)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                        help="merge the dumps in these output folders into --out, then report (no generation)")
    parser.add_argument("--compare", default="", metavar="DIR",
                        help="also compare this run's dumps with the reference dumps in DIR (e.g. bf16 vs fp32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: several spinning threads crawl on a shared, busy CPU)")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default bench/results)")
    add_update_docs_flag(parser, "quality")
    args = parser.parse_args(argv)
    run = run_info(argv, f"bench.quality.{NAME}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = ["short", "edge"] if args.setting == "both" else [args.setting]
    if args.merge:
        for setting in settings:
            paths = [p for p in (dump_path(Path(d), setting) for d in args.merge) if p.exists()]
            if paths:
                write_dump(merge_dumps(paths), dump_path(out, setting))
    elif not args.from_dump:
        cfg = SageConfig.from_mapping({"llm_irp": {"device": "cpu"}, **parse_overrides(args.set)})
        questions = load_questions(args.half)
        if args.questions:
            questions = questions[:args.questions]
        for setting in settings:
            seeds = args.seeds or (2 if setting == "short" else 1)
            path = dump_path(out, setting)
            done = [] if args.fresh else resumable(path, setting, args.set)
            dump = generate(setting, questions, seeds, cfg, log=lambda m: print(m, flush=True),
                            checkpoint=lambda d: write_dump({**d, "overrides": args.set}, path), done=done)
            write_dump({**dump, "overrides": args.set}, path)
            print(f"[{setting}] wrote {dump_path(out, setting)} ({dump['seconds']} s)")
    from bench.quality.evaluate import report

    dumps = {s: read_dump(dump_path(out, s)) for s in ("short", "edge") if dump_path(out, s).exists()}
    summary, markdown = report(dumps)
    if args.compare:
        from bench.quality.evaluate import compare

        label = ", ".join(args.set) or "this run"
        for setting, dump in dumps.items():
            ref = dump_path(Path(args.compare), setting)
            if ref.exists():
                markdown += f"\n## {setting}: " + compare(read_dump(ref), dump, label)
    path = write_result(NAME, {"run": run, "dumps": {s: str(dump_path(out, s).name) for s in dumps},
                               "overrides": args.set, **summary}, out)
    (out / f"{NAME}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {path}, {out / f'{NAME}.md'}")
    if args.update_docs:
        if out.resolve() != RESULTS.resolve() or args.compare or args.set:
            print("--update-docs ignored: only the default configuration's report in bench/results goes into "
                  "docs/performance.md")
        elif update_docs("quality", docs_text(markdown)):
            print("refreshed the answer-quality tables of docs/performance.md")


if __name__ == "__main__":
    main()
