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

"""Selection rules: energies for a whole candidate set, so a rule can compare candidates.

A per-candidate energy (``seed``, ``response``, or any ``EnergyFn``) scores each answer alone. The
``consensus`` rule also asks how much an answer agrees with the others (self-consistency / minimum
Bayes risk): wrong answers are often wrong in different ways, right answers alike. On its own it
did not beat the model's confidence on this package's questions (a 135M model's wrong answers often
agree too), so the default weights combine it with confidence and repetition. Agreement is the mean unigram F1
(ROUGE-1) between an answer's words and each other candidate's words, leaving out the words all
candidates share: a few microseconds per pair, far under 2 % of an answer's time
(docs/performance.md, "Answer quality").

Every rule returns one energy per candidate, lower is better, in [0, 1]. A set-level rule rescores all
candidates when new ones arrive (an answer's agreement changes with its company); a per-candidate energy
is computed once per candidate (:class:`PerCandidate`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence

from sage_irp_ros.irp.energy import EnergyFn, ResponseEnergy, repetition, seed_energy
from sage_irp_ros.decoding.generator import Candidate

_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")


class SelectionRule(Protocol):
    """``energies(candidates, previous, t0)``: one energy per candidate, ``previous`` those known so far."""

    def energies(self, candidates: Sequence[Candidate], previous: Sequence[float],
                 initial_temperature: float) -> list[float]: ...


@dataclass(frozen=True)
class PerCandidate:
    """A per-candidate energy as a selection rule: new candidates are scored, earlier values kept."""

    fn: EnergyFn

    def energies(self, candidates: Sequence[Candidate], previous: Sequence[float],
                 initial_temperature: float) -> list[float]:
        return [*previous, *(float(self.fn(c, initial_temperature)) for c in candidates[len(previous):])]


def words(text: str) -> Counter:
    """Bag of lower-case words and numbers ("3.5", "don't" stay one word)."""
    return Counter(_WORD.findall(text.lower()))


def overlap_f1(a: Counter, b: Counter) -> float:
    """Unigram F1 of two bags of words (ROUGE-1 F1): 1 for the same words, 0 for none shared."""
    if not a or not b:
        return 0.0
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(b.values()), common / sum(a.values())
    return 2 * precision * recall / (precision + recall)


def agreement(candidates: Sequence[Candidate], drop_shared: bool = True) -> list[float]:
    """Each candidate's mean similarity to the others, in [0, 1]; 0 for a lone candidate.

    ``drop_shared``: words that every candidate contains ("The answer is ...") are left out first, so
    that agreement is measured on what the candidates actually say differently.
    """
    bags = [words(c.text) for c in candidates]
    n = len(bags)
    if n < 2:
        return [0.0] * n
    if drop_shared:
        shared = set.intersection(*(set(b) for b in bags))
        bags = [Counter({w: k for w, k in b.items() if w not in shared}) for b in bags]
    sims = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            sims[i][j] = sims[j][i] = overlap_f1(bags[i], bags[j])
    return [sum(row) / (n - 1) for row in sims]


def mean_nll(candidate: Candidate) -> float:
    """Mean negative log-likelihood (nats/token) of the answer under the untempered model."""
    lps = candidate.token_logprobs
    value = -sum(lps) / len(lps) if lps else math.inf
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class Consensus:
    """Agreement with the other candidates, plus the model's confidence, finish and repetition.

    energy = a * (1 - agreement) + c * min(1, mean NLL / nll_scale) + f * cut + r * repetition,
    with the weights summing to 1, minus ``greedy_margin`` for the greedy (T = 0) row: a sampled answer
    must score that much better to replace the greedy one. Weights were chosen on the tuning half of
    bench/quality/questions.json and confirmed on the held-out half (docs/performance.md, "Answer quality").
    """

    # Searched on the tuning half, both settings (bench/quality/evaluate.py, grid steps of 0.2; 169 questions,
    # 2 + 1 seeds): repetition separates degenerate loops from answers, confidence and agreement then
    # rank the answers; a margin for the greedy row did not help on the tuning half.
    agreement_weight: float = 0.2
    confidence_weight: float = 0.4
    finish_weight: float = 0.0
    repetition_weight: float = 0.4
    nll_scale: float = 2.0
    greedy_margin: float = 0.0

    def energies(self, candidates: Sequence[Candidate], previous: Sequence[float],
                 initial_temperature: float) -> list[float]:
        agree = agreement(candidates)
        out = []
        for candidate, a in zip(candidates, agree):
            if not candidate.text.split() or not candidate.token_logprobs:
                out.append(1.0)
                continue
            nll = mean_nll(candidate)
            confidence = min(1.0, nll / self.nll_scale) if math.isfinite(nll) else 1.0
            value = (self.agreement_weight * (1.0 - a) + self.confidence_weight * confidence
                     + self.finish_weight * (0.0 if candidate.finished else 1.0)
                     + self.repetition_weight * repetition(candidate.token_ids)
                     - (self.greedy_margin if candidate.temperature == 0.0 else 0.0))
            out.append(min(1.0, max(0.0, value)))
        return out


def selection_rule(name: str) -> SelectionRule:
    """The rule selected by ``llm_irp.energy``."""
    if name == "seed":
        return PerCandidate(seed_energy)
    if name == "response":
        return PerCandidate(ResponseEnergy())
    if name == "consensus":
        return Consensus()
    raise ValueError(f"unknown selection rule {name!r}")


def best_index(energies: Sequence[float]) -> int:
    """The first candidate with the lowest energy (the earliest wins a tie, as in the research loop)."""
    return min(range(len(energies)), key=lambda i: (energies[i], i))
