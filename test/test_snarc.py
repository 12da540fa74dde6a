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

"""SNARC scorer: the research system's reference vectors, each dimension's edges, weights and threshold."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest

from sage_irp_ros.config.settings import SnarcConfig
from sage_irp_ros.salience.snarc import SnarcScorer

# The research system's reference vectors (its spec's snarc_vectors.json), kept with the tests.
VECTORS = Path(__file__).resolve().parent / "data" / "snarc_vectors.json"
# The spec folder, where present: SAGE_IRP_SPEC_DIR, else shared/spec beside the repository.
SPEC_DIR = Path(os.environ.get("SAGE_IRP_SPEC_DIR") or Path(__file__).resolve().parents[2] / "shared" / "spec")
DIMS = ("surprise", "novelty", "arousal", "reward", "conflict")


def reference_vectors() -> list[dict]:
    return json.loads(VECTORS.read_text())


def _weights(**overrides: float) -> SnarcConfig:
    base = {f"{d}_weight": 0.0 for d in DIMS}
    base.update(overrides)
    return SnarcConfig(**base)


@pytest.fixture
def scorer() -> SnarcScorer:
    return SnarcScorer(SnarcConfig())


# -- reference vectors ---------------------------------------------------------------------------
def test_reference_vectors_match_to_1e6(scorer):
    vectors = reference_vectors()
    assert len(vectors) >= 3
    history: list[tuple[str, str]] = []
    for entry in vectors:
        got = scorer.score(entry["question"], entry["answer"], history, entry["irp_final_energy"])
        for dim in DIMS:
            assert getattr(got, dim) == pytest.approx(entry[dim], abs=1e-6), (entry["question"], dim)
        assert got.total == pytest.approx(entry["total_salience"], abs=1e-6)
        assert got.salient is entry["salient"]
        history.append((entry["question"], entry["answer"]))


def test_kept_copy_matches_the_spec_foldersreference_vectors():
    spec = SPEC_DIR / "snarc_vectors.json"
    if not spec.is_file():
        pytest.skip(f"no {spec} (set SAGE_IRP_SPEC_DIR to the spec folder to compare the kept copy with it)")
    assert json.loads(spec.read_text()) == reference_vectors()


def test_scores_container(scorer):
    s = scorer.score("What is 2+2?", "Four.")
    assert list(s.as_dict()) == [*DIMS, "total", "salient"]
    assert s.as_list() == [s.surprise, s.novelty, s.arousal, s.reward, s.conflict, s.total]
    assert all(0.0 <= v <= 1.0 for v in s.as_list()[:5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.total = 0.0  # type: ignore[misc]


def test_default_config_when_none():
    assert SnarcScorer().score("a", "b") == SnarcScorer(SnarcConfig()).score("a", "b")


# -- surprise ------------------------------------------------------------------------------------
def test_surprise_zero_without_history(scorer):
    assert scorer.score("Totally new words here", "ok").surprise == 0.0


def test_surprise_zero_when_earlier_questions_have_no_words(scorer):
    assert scorer.score("new words", "x", history=[("", "a"), ("   ", "b")]).surprise == 0.0


def test_surprise_fraction_of_distinct_new_words(scorer):
    # {what, is, love?} vs R = {what, is, life?}: one of three distinct words is new.
    s = scorer.score("What is love? love?", "x", history=[("what is life?", "y")])
    assert s.surprise == pytest.approx(1 / 3)


def test_surprise_only_last_three_questions_count(scorer):
    history = [("alpha", "a"), ("beta", "b"), ("gamma", "c"), ("delta", "d")]
    assert scorer.score("alpha", "x", history).surprise == 1.0  # alpha fell out of the window
    assert scorer.score("beta", "x", history).surprise == 0.0
    assert scorer.score("Delta", "x", history).surprise == 0.0  # case-insensitive


def test_surprise_ignores_earlier_answers_and_empty_question(scorer):
    assert scorer.score("word", "x", history=[("other", "word")]).surprise == 1.0
    assert scorer.score("", "x", history=[("other", "y")]).surprise == 0.0


# -- novelty -------------------------------------------------------------------------------------
def test_novelty_zero_for_empty_text(scorer):
    assert scorer.score("", "").novelty == 0.0
    assert scorer.score("  \n", "\t").novelty == 0.0


def test_novelty_type_token_ratio(scorer):
    assert scorer.score("the the", "the the").novelty == pytest.approx(0.5 * 0.25)


def test_novelty_caps_at_one_and_counts_exact_words(scorer):
    assert scorer.score("know think", "believe") .novelty == 1.0  # ttr 1, k = 3
    assert scorer.score("know think believe", "aware self meta").novelty == 1.0  # k > 3 capped
    # Punctuation stays attached: "know?" is not "know"; repeats count once.
    assert scorer.score("know? know know", "").novelty == pytest.approx(0.5 * 2 / 3 + 0.5 / 3)


# -- arousal -------------------------------------------------------------------------------------
def test_arousal_components(scorer):
    assert scorer.score("", "").arousal == 0.0
    assert scorer.score("what", "").arousal == pytest.approx(0.3 / 20 + 0.2)
    assert scorer.score("Show me", "").arousal == pytest.approx(0.3 * 2 / 20 + 0.2)  # substring "how"
    assert scorer.score("tell me", " ".join(["w"] * 25)).arousal == pytest.approx(0.3 * 2 / 20 + 0.25)


def test_arousal_caps_at_one(scorer):
    q = "why " + " ".join(["x"] * 40)
    assert scorer.score(q, " ".join(["y"] * 200)).arousal == 1.0


# -- reward --------------------------------------------------------------------------------------
def test_reward_components(scorer):
    fifty = "Yes " + " ".join(["w"] * 48) + " done."
    assert scorer.score("q", fifty, final_energy=0.0).reward == pytest.approx(1.0)
    assert scorer.score("q", fifty).reward == pytest.approx(0.3 + 0.2 + 0.25)
    assert scorer.score("q", fifty.lower(), final_energy=0.0).reward == pytest.approx(0.3 + 0.1 + 0.5)
    assert scorer.score("q", "").reward == pytest.approx(0.1 + 0.25)  # 0 words, not well formed
    assert scorer.score("q", " ".join(["w"] * 100)).reward == pytest.approx(0.1 + 0.25)


def test_reward_irp_energy_edges(scorer):
    a = "Fine."  # 1 word: length term 0.3 * 1/50
    base = 0.3 * (1 / 50) + 0.2
    assert scorer.score("q", a, final_energy=2.5).reward == pytest.approx(base)  # energy above 1: irp 0
    assert scorer.score("q", a, final_energy=float("nan")).reward == pytest.approx(base + 0.25)
    assert scorer.score("q", a, final_energy=-5.0).reward == 1.0  # unclamped energy, capped sum
    assert scorer.score("q", a, final_energy=0.42).reward == pytest.approx(base + 0.5 * 0.58)


# -- conflict ------------------------------------------------------------------------------------
def test_conflict_components(scorer):
    assert scorer.score("hello", "world").conflict == 0.0
    assert scorer.score("", "true true true").conflict == pytest.approx(0.4 / 3)  # counted once
    assert scorer.score("maybe", "").conflict == pytest.approx(0.1)
    # "you are": phrase s=1 and term "you" m=1.
    assert scorer.score("you are", "").conflict == pytest.approx(0.4 / 3 + 0.2)


def test_conflict_caps_at_one(scorer):
    text = "I think you know you are uncertain, maybe it might be true or false"
    assert scorer.score(text, "").conflict == 1.0


# -- weights and threshold -----------------------------------------------------------------------
def test_total_follows_config_weights():
    q, a = "Can you know with certainty?", "Absolute certainty is difficult."
    history = [("What is knowledge?", "It is information.")]
    plain = SnarcScorer(SnarcConfig()).score(q, a, history)
    for dim in DIMS:
        only = SnarcScorer(_weights(**{f"{dim}_weight": 1.0})).score(q, a, history)
        assert only.total == pytest.approx(getattr(plain, dim))
    doubled = SnarcScorer(SnarcConfig(**{f"{d}_weight": 0.4 for d in DIMS})).score(q, a, history)
    assert doubled.total == pytest.approx(2 * plain.total)


def test_zero_weights_give_zero_total():
    s = SnarcScorer(_weights()).score("Why are you aware?", "I think I am.")
    assert s.total == 0.0
    assert s.salient is False
    assert s.conflict > 0  # dimensions are still reported
    assert SnarcScorer(_weights(salience_threshold=0.0)).score("a", "b").salient is True


def test_threshold_decides_salience():
    s = SnarcScorer(SnarcConfig()).score("What is knowledge?", "Knowledge is information.")
    assert SnarcScorer(SnarcConfig(salience_threshold=s.total)).score(
        "What is knowledge?", "Knowledge is information.").salient is True  # >= threshold
    assert SnarcScorer(SnarcConfig(salience_threshold=min(1.0, s.total + 1e-9))).score(
        "What is knowledge?", "Knowledge is information.").salient is False


def test_scoring_cost_is_reported(scorer):
    vectors = reference_vectors()
    history = [(v["question"], v["answer"]) for v in vectors]
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        scorer.score(vectors[i % 3]["question"], vectors[i % 3]["answer"], history, 0.3)
    per_call = (time.perf_counter() - start) / n
    print(f"\nSNARC score: {per_call * 1e6:.1f} us per exchange (report anchor: 1000 us)")
    assert math.isfinite(per_call)
