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

"""Answer quality while throttled: the greedy row alone against one sample, on the held-out half.

While the platform is throttled the node answers with one row: the greedy (T = 0) continuation, at most
``throttle.max_tokens`` tokens. The alternative it replaced was one sample at the first temperature
(0.7) with the same token cap. Both are read from the stored candidate dumps of ``bench.quality.run_quality``
(no generation): a row's first ``throttle.max_tokens`` tokens are exactly what a decode capped there
draws (greedy is deterministic; a sample's prefix has the capped sample's distribution).

    python -m bench.quality.throttled                 # writes bench/results/throttled.json

Reported per setting and half: accuracy of the greedy row capped (throttled now), one 0.7 sample capped
(throttled before), the uncapped greedy row and the default pick, with paired bootstrap intervals.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.quality.evaluate import bootstrap_diff, mean, per_question
from bench.quality.question_set import is_correct, load_questions
from bench.quality.run_quality import dump_path, read_dump
from bench.record import RESULTS, run_info, write_result

NAME = "throttled"


def capped_scores(dump: dict, tokenizer, temperature: float, cap: int, answers: dict[str, list[str]]):
    """(trial, correct) for the row at ``temperature`` of every trial, cut to ``cap`` tokens."""
    from sage_irp_ros.irp.prompts import clean_answer

    out = []
    for trial in dump["trials"]:
        row = next(c for c in trial["candidates"] if c["t"] == temperature)
        text = clean_answer(tokenizer.decode(row["ids"][:cap], skip_special_tokens=True))
        out.append((trial, float(is_correct(text, answers[trial["q"]]))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=int, default=64, help="throttle.max_tokens (default: the package's)")
    parser.add_argument("--dumps", default=str(RESULTS), help="folder with quality_dump_<setting>.json.gz")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from sage_irp_ros.weights.embedded_model import converted_gguf, embedded_gguf

    tokenizer = AutoTokenizer.from_pretrained(str(converted_gguf(embedded_gguf())))
    answers = {q["q"]: q["a"] for q in load_questions()}
    result: dict = {"run": run_info(argv, f"bench.quality.{NAME}"), "cap": args.cap, "settings": {}}
    for setting in ("short", "edge"):
        dump = read_dump(dump_path(Path(args.dumps), setting))
        first = max(t for t in dump["temperatures"] if t > 0)
        rows = {"greedy_capped": capped_scores(dump, tokenizer, 0.0, args.cap, answers),
                "sample_capped": capped_scores(dump, tokenizer, first, args.cap, answers),
                "greedy": [(t, float(next(c for c in t["candidates"] if c["t"] == 0.0)["correct"]))
                           for t in dump["trials"]]}
        table = {}
        for half in ("tune", "heldout"):
            acc = {name: per_question(scores, half) for name, scores in rows.items()}
            table[half] = {"questions": len(acc["greedy"]), **{name: round(mean(a), 4) for name, a in acc.items()},
                           "greedy_capped_minus_sample_capped": bootstrap_diff(acc["greedy_capped"],
                                                                               acc["sample_capped"]),
                           "greedy_capped_minus_greedy": bootstrap_diff(acc["greedy_capped"], acc["greedy"])}
        result["settings"][setting] = {"max_tokens": dump["max_tokens"], **table}
        held = table["heldout"]
        print(f"{setting} (max_tokens {dump['max_tokens']}), held-out {held['questions']} questions: greedy capped at "
              f"{args.cap} {held['greedy_capped']:.1%}, one 0.7 sample capped {held['sample_capped']:.1%}, greedy "
              f"uncapped {held['greedy']:.1%}")
    print(f"wrote {write_result(NAME, result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
