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

"""Choices: does scoring the options beat reading the model's free-text answer? And is the confidence right?

``bench/quality/choices.json`` holds multiple-choice questions written for this package (yes/no and 3-4
options: facts, units, everyday science, robot safety and operations), split into tuning / held-out
halves by the same fixed hash as questions.json (bench/quality/question_set.py).

Collection runs every question through what the node runs for a choices question (the IRP candidates
of the choice prompt, with the greedy row, then the options scored in one batched forward) and dumps
the candidates and every option's scores; nothing is chosen there. The choice model and the confidence
calibration are then fitted on the TUNING half (``python -m bench.quality.calibrate``), and the report
evaluates the shipped calibration on one half:

    python -m bench.quality.choices --collect                 # both halves -> bench/results/choices_dump.json.gz
    python -m bench.quality.calibrate                         # tuning half -> sage_irp_ros/data/calibration.json
    python -m bench.quality.choices --report --half tune      # tables + reliability diagram
    python -m bench.quality.choices --report --half heldout   # once, at the end

Accuracy: the share of questions whose answer is the right option. Baselines: ``free-text greedy``, the
greedy (T = 0) answer to the choice prompt mapped onto the option it names (none named = wrong), and
``free-text IRP``, the consensus pick mapped the same way. Confidence: AUROC for "the answer is right",
expected calibration error (10 equal-width bins), and the accuracy of the most confident half.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from bench.quality.metrics import bootstrap_ci, confidence_report, reliability_png
from bench.quality.question_set import half_of
from bench.record import RESULTS, run_info, write_result

NAME = "choices"
QUESTIONS = Path(__file__).resolve().parent / "choices.json"
SEED = 1234


def load_choice_questions(half: str = "both", path: Path = QUESTIONS) -> list[dict]:
    """Choice questions of one half (``tune``, ``heldout``) or ``both``, each with its ``half`` added."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    out = [{**item, "half": half_of(item["q"])} for item in items]
    return [item for item in out if half in ("both", item["half"])]


def dump_path(out: Path) -> Path:
    return Path(out) / "choices_dump.json.gz"


def collect(out: Path, threads: int = 1, log=print) -> Path:
    """Run every question as the node would (IRP candidates + one batched option forward); dump all."""
    import torch

    from sage_irp_ros.answers import choices
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.irp.engine import IRPEngine
    from sage_irp_ros.weights.loader import load_model
    from sage_irp_ros.irp.options import AnswerOptions

    torch.set_num_threads(threads)
    cfg = SageConfig.from_mapping({"model": {"device": "cpu"}})
    lm = load_model(cfg.model)
    engine = IRPEngine(lm, cfg.llm_irp)
    options = AnswerOptions.resolve(cfg.llm_irp).replace(max_tokens=choices.MAX_TOKENS)
    trials, start = [], time.monotonic()
    for n, item in enumerate(load_choice_questions("both"), start=1):
        torch.manual_seed(SEED)
        refined = engine.refine(choices.choice_prompt(item["q"], item["choices"]), options=options)
        prompt_ids, neutral_ids = choices.score_prompts(lm.tokenizer, item["q"], item["choices"])
        begin = time.monotonic()
        scores = engine.generator.score_options(prompt_ids, neutral_ids, item["choices"])
        trials.append({**item, "score_s": round(time.monotonic() - begin, 4),
                       "decode_s": refined.irp.decode_s, "best": refined.best,
                       "energies": list(refined.irp.energies),
                       "candidates": [{"t": c.temperature, "text": c.text, "ids": c.token_ids,
                                       "lp": [round(x, 4) for x in c.token_logprobs], "finished": c.finished}
                                      for c in refined.candidates],
                       "scores": [vars(s) for s in scores]})
        if n % 20 == 0:
            log(f"{n} questions, {time.monotonic() - start:.0f} s")
    dump = {"run": run_info(None, f"bench.quality.{NAME}"), "model": lm.model_id, "precision": lm.precision,
            "seconds": round(time.monotonic() - start, 1), "trials": trials}
    path = dump_path(out)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(dump, f)
    return path


def read_dump(out: Path) -> dict:
    with gzip.open(dump_path(out), "rt", encoding="utf-8") as f:
        return json.load(f)


def evaluate(trials: list[dict], calibration) -> dict:
    """Per trial: right or not for each method, and the shipped confidence of the choice."""
    from sage_irp_ros.answers import choices
    from sage_irp_ros.decoding.generator import Candidate

    rows = []
    for trial in trials:
        opts, answer = trial["choices"], trial["a"]
        cands = [Candidate(c["text"], c["t"], c["ids"], c["lp"], c["finished"]) for c in trial["candidates"]]
        scores = [choices.OptionScore(**s) for s in trial["scores"]]
        picked = choices.choose(scores, [c.text for c in cands], opts, calibration.choice_weights)
        greedy = next(c for c in cands if c.temperature == 0.0)
        mapped_greedy = choices.map_to_option(greedy.text, opts)
        mapped_irp = choices.map_to_option(cands[trial["best"]].text, opts)
        rows.append({"q": trial["q"], "kind": trial["kind"], "choice_right": picked.choice == answer,
                     "greedy_right": mapped_greedy is not None and opts[mapped_greedy] == answer,
                     "irp_right": mapped_irp is not None and opts[mapped_irp] == answer,
                     "in_options": picked.choice in opts,
                     "confidence": calibration.choice_confidence(list(picked.probabilities.values())),
                     "score_s": trial["score_s"], "decode_s": trial["decode_s"]})
    return rows


def report(out: Path, half: str, png: bool = True) -> dict:
    from sage_irp_ros.irp.confidence import shipped

    trials = [t for t in read_dump(out)["trials"] if half in ("both", t["half"])]
    rows = evaluate(trials, shipped())
    right = {m: [r[f"{m}_right"] for r in rows] for m in ("choice", "greedy", "irp")}
    acc = {m: round(100 * sum(v) / len(v), 1) for m, v in right.items()}
    gain = bootstrap_ci([float(a) - float(b) for a, b in zip(right["choice"], right["greedy"])])
    conf = confidence_report([r["confidence"] for r in rows], right["choice"])
    result = {"half": half, "questions": len(rows), "accuracy": acc,
              "accuracy_ci": {m: bootstrap_ci([float(x) for x in v]) for m, v in right.items()},
              "choice_minus_greedy_points": gain, "in_options": sum(r["in_options"] for r in rows) / len(rows),
              "confidence": conf,
              "mean_score_s": round(sum(r["score_s"] for r in rows) / len(rows), 4),
              "mean_decode_s": round(sum(r["decode_s"] for r in rows) / len(rows), 4)}
    if png:
        result["reliability_png"] = str(reliability_png([r["confidence"] for r in rows], right["choice"],
                                                        Path(out) / f"reliability_choices_{half}.png",
                                                        f"choices, {half} half"))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect", action="store_true", help="run the model on every question, dump")
    parser.add_argument("--report", action="store_true", help="evaluate the shipped calibration on --half")
    parser.add_argument("--half", choices=("tune", "heldout", "both"), default="tune")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.collect:
        print(f"wrote {collect(Path(args.out), args.threads)}")
    if args.report:
        result = report(Path(args.out), args.half)
        print(json.dumps(result, indent=1))
        write_result(f"{NAME}_{args.half}", {"run": run_info(argv, f"bench.quality.{NAME}"), **result}, args.out)


if __name__ == "__main__":
    main()
