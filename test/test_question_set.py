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
