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

"""Selection rules on constructed candidates (no model), and the greedy row on a tiny real model.

Accuracy lives in the benchmark (bench/quality/run_quality.py); these tests pin each rule's logic.
"""

import pytest
import torch

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.irp.energy import ResponseEnergy, seed_energy
from sage_irp_ros.decoding.generator import Candidate, GenerationRequest
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.irp.engine import IRPEngine
from sage_irp_ros.weights.loader import load_model
from sage_irp_ros.irp.selection import (Consensus, PerCandidate, agreement, best_index, mean_nll, overlap_f1,
                                        selection_rule, words)


def _c(text, lp=-0.5, finished=True, tokens=None, t=0.7):
    ids = tokens if tokens is not None else list(range(len(text.split())))
    return Candidate(text, t, ids, [lp] * (len(ids) + (1 if finished else 0)), finished)


def test_words_and_overlap():
    assert words("It's 3.5 m, it's.") == {"it's": 2, "3.5": 1, "m": 1}
    assert overlap_f1(words("Paris is the capital"), words("Paris is the capital")) == 1.0
    assert overlap_f1(words("Paris"), words("Rome")) == 0.0
    assert overlap_f1(words(""), words("Rome")) == 0.0
    assert overlap_f1(words("a b"), words("a c")) == pytest.approx(0.5)


def test_agreement_is_mean_similarity_to_the_others():
    cands = [_c("The capital is Paris."), _c("The capital is Paris."), _c("The capital is Lyon.")]
    a = agreement(cands, drop_shared=False)
    assert a[0] == a[1] > a[2]
    assert a[0] == pytest.approx((1.0 + 0.75) / 2)
    assert agreement(cands) == pytest.approx([0.5, 0.5, 0.0])  # "the capital is" said by all: left out
    assert agreement([_c("alone")]) == [0.0]  # no company, no agreement
    assert agreement([]) == []


def test_consensus_picks_the_majority_answer_over_a_more_confident_outlier():
    outlier = _c("The answer is 19.", lp=-0.05)
    majority = [_c("Seven times eight is 56.", lp=-0.6), _c("It is 56.", lp=-0.7), _c("The answer is 56.", lp=-0.8)]
    cands = [outlier, *majority]
    agreeing = Consensus(agreement_weight=0.6, confidence_weight=0.3, finish_weight=0.0, repetition_weight=0.1,
                         nll_scale=2.0)
    assert best_index(agreeing.energies(cands, [], 0.7)) in (1, 2, 3)
    assert best_index([mean_nll(c) for c in cands]) == 0  # plain NLL would take the outlier


def test_consensus_confidence_breaks_agreement_ties_and_repetition_costs():
    sure, unsure = _c("The capital is Paris.", lp=-0.2), _c("The capital is Paris.", lp=-1.5)
    assert best_index(Consensus().energies([unsure, sure], [], 0.7)) == 1
    loop = _c("go go go go go go go", tokens=[1, 2, 3] * 7)
    fresh = _c("go go go go go go go", tokens=list(range(21)))
    e = Consensus().energies([loop, fresh], [], 0.7)
    assert e[0] > e[1]


def test_consensus_energies_are_bounded_and_empty_answers_lose():
    cands = [_c(""), _c("Paris."), _c("Paris is it."), Candidate("Paris", 0.7, [1], [], False)]
    e = Consensus().energies(cands, [], 0.7)
    assert all(0.0 <= v <= 1.0 for v in e)
    assert e[0] == 1.0 and e[3] == 1.0 and best_index(e) in (1, 2)


def test_finish_weight_penalises_cut_answers():
    cut, done = _c("The capital is Paris", finished=False), _c("The capital is Paris")
    e = Consensus(agreement_weight=0.5, confidence_weight=0.0, finish_weight=0.5, repetition_weight=0.0)
    energies = e.energies([cut, done], [], 0.7)
    assert energies[0] - energies[1] == pytest.approx(0.5)


def test_greedy_margin_keeps_the_greedy_row_unless_a_sample_is_clearly_better():
    greedy = _c("The capital is Paris.", lp=-0.6, t=0.0)
    sample = _c("The capital is Paris.", lp=-0.5)
    plain = Consensus(agreement_weight=0.0, confidence_weight=1.0, finish_weight=0.0, repetition_weight=0.0,
                      nll_scale=1.0)
    assert best_index(plain.energies([sample, greedy], [], 0.7)) == 0  # more confident sample wins
    kept = Consensus(agreement_weight=0.0, confidence_weight=1.0, finish_weight=0.0, repetition_weight=0.0,
                     nll_scale=1.0, greedy_margin=0.2)
    e = kept.energies([sample, greedy], [], 0.7)
    assert e[1] == pytest.approx(0.4) and best_index(e) == 1  # 0.1 better is not enough
    much_better = _c("The capital is Paris.", lp=-0.2)
    assert best_index(kept.energies([much_better, greedy], [], 0.7)) == 0


def test_per_candidate_rules_score_only_new_candidates():
    calls = []
    rule = PerCandidate(lambda c, t0: calls.append(c.text) or 0.3)
    first = rule.energies([_c("a")], [], 0.7)
    assert rule.energies([_c("a"), _c("b")], first, 0.7) == [0.3, 0.3] and calls == ["a", "b"]


def test_named_rules():
    cand = _c("The answer is four.")
    assert selection_rule("seed").energies([cand], [], 0.7) == [seed_energy(cand, 0.7)]
    assert selection_rule("response").energies([cand], [], 0.7) == [ResponseEnergy()(cand, 0.7)]
    assert isinstance(selection_rule("consensus"), Consensus)
    with pytest.raises(ValueError):
        selection_rule("nope")
    assert best_index([0.5, 0.2, 0.2]) == 1  # the earliest of equal energies


# -- the greedy row on a tiny real model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir), "device": "cpu"}})
    return load_model(cfg.model)


def test_zero_temperature_row_is_greedy_decoding(lm):
    prompt = lm.tokenizer("What is 2+2? The answer is")["input_ids"]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        plain = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=12, min_new_tokens=12, pad_token_id=lm.tokenizer.pad_token_id)
    expected = plain[0, len(prompt):].tolist()
    for seed in range(3):  # whatever the sampled rows draw, the T = 0 row is the argmax path
        torch.manual_seed(seed)
        batch = TorchGenerator(lm).generate(GenerationRequest(prompt, [1.5, 0.0, 2.0], 12, min_new_tokens=12))
        greedy = batch.candidates[1]
        assert greedy.token_ids == expected and greedy.temperature == 0.0
        assert len(greedy.token_logprobs) == 12 and all(lp <= 0.0 for lp in greedy.token_logprobs)
    assert batch.candidates[0].token_ids != expected or batch.candidates[2].token_ids != expected


def test_engine_adds_one_greedy_row_to_the_first_round(lm):
    cfg = SageConfig.from_mapping({"llm_irp": {"candidates": 3, "max_tokens": 6, "stopping": "off",
                                               "candidates_per_round": 1, "energy_plateau_delta": 0.0,
                                               "energy_convergence_threshold": 0.0}}).llm_irp
    assert cfg.greedy_candidate  # on by default
    engine = IRPEngine(lm, cfg)
    info = engine.refine("What is 2+2?").irp
    assert info.temperatures == pytest.approx([0.7, 0.0, 0.647, 0.594])
    assert info.candidates == 3 and len(info.energies) == 4 and info.rounds == 3
    assert len(info.energies) == 4 and round(info.best_energy, 6) == min(info.energies)
    off = IRPEngine(lm, SageConfig.from_mapping({"llm_irp": {"max_tokens": 6, "device": "cpu",
                                                             "greedy_candidate": False}}).llm_irp)
    assert 0.0 not in off.refine("What is 2+2?").irp.temperatures
