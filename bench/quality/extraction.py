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

"""JSON extraction: does decoding under the schema's grammar beat asking for JSON and hoping?

``bench/quality/extraction.json`` holds extraction tasks written for this package: a sentence, what to
extract, a schema and the expected field values ("The pallet on shelf 3 weighs 12 kg." ->
``{"shelf": 3, "mass_kg": 12}``), split into halves by the fixed hash of the sentence. Nothing is tuned
on them. Per task:

- ``grammar``: what the node answers (``SageCore.answer`` with ``json_schema``: every candidate under
  the grammar, the agreeing valid one chosen);
- ``greedy``: the greedy row of the same prompt without the grammar; its first ``{...}`` is parsed.

Field accuracy: the share of expected fields whose value is right (numbers equal to 1e-6; strings
compared lower-case with a leading "the " and a trailing plural "s" dropped); a reply that does not parse
scores 0. Also: the share that parses and validates, the confidence's AUROC for "every field right",
and the grammar masks' time as a share of decoding (``JsonConstraint.mask`` timed around each call).

    python -m bench.quality.extraction --half tune [--out bench/results]
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from bench.quality.metrics import bootstrap_ci, confidence_report
from bench.quality.question_set import half_of
from bench.record import main_by_half

NAME = "extraction"
TASKS = Path(__file__).resolve().parent / "extraction.json"
MAX_TOKENS = 64


def load_tasks(half: str = "both", path: Path = TASKS) -> list[dict]:
    items = [{**t, "half": half_of(t["text"])} for t in json.loads(Path(path).read_text(encoding="utf-8"))]
    return [t for t in items if half in ("both", t["half"])]


def _norm(value):
    if isinstance(value, str):
        text = re.sub(r"^the ", "", value.strip().lower())
        return text[:-1] if text.endswith("s") and len(text) > 3 else text
    return value


def field_accuracy(value, expected: dict) -> float:
    if not isinstance(value, dict):
        return 0.0
    right = 0
    for key, want in expected.items():
        got = value.get(key)
        if isinstance(want, bool) or isinstance(got, bool):
            right += got is want
        elif isinstance(want, (int, float)) and isinstance(got, (int, float)):
            right += abs(got - want) < 1e-6
        else:
            right += _norm(got) == _norm(want)
    return right / len(expected)


def first_object(text: str):
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return None


def run(half: str, threads: int = 1, log=print) -> dict:
    import torch

    from sage_irp_ros.answers import grammar
    from sage_irp_ros.decoding.generator import GenerationRequest
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.serving.core import SageCore
    from sage_irp_ros.answers.json_answers import json_prompt, parse_valid
    from sage_irp_ros.irp.prompts import build_prompt_ids
    from sage_irp_ros.questions import Question

    torch.set_num_threads(threads)
    timed = {"mask_s": 0.0, "masks": 0}
    plain_mask = grammar.JsonConstraint.mask

    def mask(self, generated, logits):
        start = time.perf_counter()
        try:
            return plain_mask(self, generated, logits)
        finally:
            timed["mask_s"] += time.perf_counter() - start
            timed["masks"] += 1

    grammar.JsonConstraint.mask = mask
    cfg = SageConfig.from_mapping({"model": {"device": "cpu"}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": MAX_TOKENS, "seed": 1234}})
    core = SageCore(cfg)
    core.load()
    rows, decode_s = [], 0.0
    for n, task in enumerate(load_tasks(half), start=1):
        question = f"{task['text']} {task['task']}"
        result = core.answer(Question(text=question, json_schema=task["schema"]))
        decode_s += result.irp.decode_s if result.irp is not None else 0.0
        torch.manual_seed(1234)
        prompt = build_prompt_ids(core.lm.tokenizer, json_prompt(question, task["schema"]))
        greedy = core.engine.generator.generate(GenerationRequest(prompt, [0.0], MAX_TOKENS)).candidates[0]
        parsed = first_object(greedy.text)
        rows.append({"text": task["text"], "kind": task["kind"], "ok": result.ok, "json": result.json,
                     "grammar_fields": field_accuracy(result.json, task["expected"]),
                     "grammar_valid": result.ok and parse_valid(result.answer, task["schema"])[1],
                     "greedy_text": greedy.text, "greedy_fields": field_accuracy(parsed, task["expected"]),
                     "greedy_valid": parsed is not None and parse_valid(json.dumps(parsed), task["schema"])[1],
                     "confidence": result.confidence if result.confidence is not None else 0.0})
        if n % 10 == 0:
            log(f"{n} tasks")
    grammar.JsonConstraint.mask = plain_mask
    core.release()
    gain = bootstrap_ci([r["grammar_fields"] - r["greedy_fields"] for r in rows])
    all_right = [r["grammar_fields"] == 1.0 for r in rows]
    return {"half": half, "tasks": len(rows),
            "field_accuracy": {"grammar": bootstrap_ci([r["grammar_fields"] for r in rows]),
                               "greedy": bootstrap_ci([r["greedy_fields"] for r in rows])},
            "grammar_minus_greedy_points": gain,
            "valid": {"grammar": round(sum(r["grammar_valid"] for r in rows) / len(rows), 3),
                      "greedy": round(sum(r["greedy_valid"] for r in rows) / len(rows), 3)},
            "confidence_all_fields_right": confidence_report([r["confidence"] for r in rows], all_right),
            "mask_share_of_decode": round(timed["mask_s"] / decode_s, 4) if decode_s else None,
            "mask_us_per_row_token": round(1e6 * timed["mask_s"] / max(1, timed["masks"]), 1),
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    main_by_half(NAME, __doc__, run, argv)


if __name__ == "__main__":
    main()
