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

"""The answer-quality question set: its fixed split and its written scoring rules (no model)."""

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds bench/

from bench.quality.evaluate import bootstrap_diff  # noqa: E402
from bench.quality.question_set import KINDS, half_of, is_correct, load_questions  # noqa: E402


def test_set_is_large_and_well_formed():
    items = load_questions()
    assert len(items) >= 300
    assert len({q["q"] for q in items}) == len(items)
    for q in items:
        assert q["kind"] in KINDS and q["a"] and all(isinstance(k, str) and k for k in q["a"]), q
    halves = Counter((q["half"], q["kind"]) for q in items)
    assert all(halves[(h, k)] >= 10 for h in ("tune", "heldout") for k in KINDS)


def test_split_is_a_fixed_hash_of_the_text():
    assert half_of("What is the capital of France?") == half_of("  What is the capital of France?\n")
    tune, held = load_questions("tune"), load_questions("heldout")
    assert {q["half"] for q in tune} == {"tune"} and {q["half"] for q in held} == {"heldout"}
    assert len(tune) + len(held) == len(load_questions())
    assert not {q["q"] for q in tune} & {q["q"] for q in held}
    with pytest.raises(ValueError):
        load_questions("all")


@pytest.mark.parametrize("text,keywords,expected", [
    ("The answer is 4.", ["4"], True),
    ("It is 14.", ["4"], False),             # whole numbers only
    ("About 4.5 m.", ["4"], False),          # a decimal part is another number
    ("That is 1,000 meters.", ["1000"], True),
    ("Water is H₂O.", ["h2o"], True),
    ("PARIS, of course", ["paris"], True),
    ("Reduce speed", ["red"], False),        # whole words only
    ("Go to the charging dock", ["charg*"], True),
    ("It is 2.5 meters", ["2.5"], True),
    ("Mexico City", ["mexico city"], True),
    ("", ["4"], False),
])
def test_scoring_rules(text, keywords, expected):
    assert is_correct(text, keywords) is expected


def test_paired_bootstrap_interval_contains_the_mean():
    a = {f"q{i}": float(i % 2) for i in range(40)}
    b = {f"q{i}": 0.0 for i in range(40)}
    mean, lo, hi = bootstrap_diff(a, b)
    assert mean == 0.5 and lo <= mean <= hi and hi - lo < 0.5
    assert bootstrap_diff(b, b) == (0.0, 0.0, 0.0)


def _dump(trials, max_tokens=32):
    return {"setting": "short", "temperatures": [0.7, 0.0], "max_tokens": max_tokens, "seeds": 1,
            "seconds": 1.0, "overrides": [], "trials": trials}


def _trial(q, seed, greedy_ok, sample_ok):
    cand = {"ids": [1, 2], "lp": [-0.5, -0.5, -0.1], "finished": True}
    return {"q": q, "kind": "fact", "half": "heldout", "seed": seed, "gen_s": 1.0, "candidates": [
        {**cand, "t": 0.7, "text": "a b", "correct": sample_ok},
        {**cand, "t": 0.0, "text": "a b", "correct": greedy_ok}]}


def test_dumps_of_parallel_runs_merge_by_question_and_seed(tmp_path):
    from bench.quality.run_quality import merge_dumps, write_dump

    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    write_dump(_dump([_trial("q1", 0, True, False), _trial("q2", 0, False, False)]), a)
    write_dump(_dump([_trial("q2", 0, False, False), _trial("q1", 1, True, True)]), b)
    merged = merge_dumps([a, b])
    assert sorted((t["q"], t["seed"]) for t in merged["trials"]) == [("q1", 0), ("q1", 1), ("q2", 0)]
    write_dump(_dump([], max_tokens=150), b)
    with pytest.raises(SystemExit):
        merge_dumps([a, b])


def test_compare_pairs_only_the_trials_both_runs_have():
    from bench.quality.evaluate import compare

    ref = _dump([_trial("q1", 0, True, True), _trial("q2", 0, False, False), _trial("q3", 0, True, True)])
    other = _dump([_trial("q1", 0, False, False), _trial("q2", 0, False, False)])
    text = compare(ref, other, "bf16")
    assert "2 common trials, 2 held-out questions" in text
    assert "| greedy decoding (T = 0 row) | 50.0 | 0.0 | -50.0" in text


def test_choice_questions_are_well_formed_and_split_by_the_fixed_hash():
    from bench.quality.choices import load_choice_questions
    from sage_irp_ros.questions import parse_question

    items = load_choice_questions("both")
    assert len(items) >= 200 and len({i["q"] for i in items}) == len(items)
    kinds = {i["kind"] for i in items}
    assert {"fact", "units", "science", "robot", "everyday"} <= kinds
    for item in items:
        assert item["a"] in item["choices"], item
        parsed = parse_question(json.dumps({"question": item["q"], "choices": item["choices"]}), 4000)
        assert parsed.choices == item["choices"]  # every set question is a valid choices question
    yes_no = [i for i in items if i["choices"] == ["yes", "no"]]
    assert abs(sum(i["a"] == "yes" for i in yes_no) - len(yes_no) / 2) <= 5  # balanced: no prior wins
    halves = {h: len(load_choice_questions(h)) for h in ("tune", "heldout")}
    assert sum(halves.values()) == len(items) and min(halves.values()) >= 80


def test_extraction_tasks_validate_their_own_expected_values():
    import jsonschema

    from bench.quality.extraction import field_accuracy, load_tasks
    from sage_irp_ros.answers.json_answers import check_schema

    tasks = load_tasks("both")
    assert len(tasks) >= 60 and len({t["text"] for t in tasks}) == len(tasks)
    for task in tasks:
        check_schema(task["schema"])
        jsonschema.validate(task["expected"], task["schema"])
        assert field_accuracy(task["expected"], task["expected"]) == 1.0
    assert field_accuracy({"item": "The Apples", "quantity": 3.0}, {"item": "apple", "quantity": 3}) == 1.0
    assert field_accuracy({"shelf": 3}, {"shelf": 3, "mass_kg": 12}) == 0.5 and field_accuracy(None, {"a": 1}) == 0.0
