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

"""Energies that rank candidate answers: lower is better, always in [0, 1].

``seed``: the research formula. 40 % of it is the sampling temperature, so the coldest sample
nearly always wins and selection carries little information; kept for compatibility.

``response``: measures the answer itself and never looks at the temperature (the default until the
``consensus`` rule of selection.py, which also compares candidates with each other):
  - confidence: mean negative log-likelihood of the answer's tokens under the untempered model,
  - finish: whether the model ended the answer (an answer cut off by max_tokens is penalised),
  - repetition: share of repeated token trigrams (degenerate loops),
  - length: too few words to be an answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from sage_irp_ros.decoding.generator import Candidate

EnergyFn = Callable[[Candidate, float], float]  # (candidate, initial_temperature) -> energy

_SENTENCE_END = re.compile(r"[.!?]")
_UPPER = re.compile(r"[A-Z]")


def seed_energy(candidate: Candidate, initial_temperature: float) -> float:
    """The research system's energy (spec: "Seed energy")."""
    words = len(candidate.text.split())
    well_formed = bool(_SENTENCE_END.search(candidate.text)) and bool(_UPPER.search(candidate.text))
    value = (0.4 * candidate.temperature / initial_temperature
             + 0.3 * min(1.0, abs(words - 50) / 50)
             + 0.3 * (0.0 if well_formed else 0.3))
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class ResponseEnergy:
    """Weights and scales of the ``response`` energy; the weights sum to 1."""

    # Chosen on bench/quality/run_quality.py's checkable questions (docs/performance.md, "Answer quality"): with the
    # NLL scale at 2 nats the confidence term spans the range real answers have (0.3-2 nats/token); a
    # heavier finish term made short, finished, wrong answers beat longer right ones cut at max_tokens.
    confidence_weight: float = 0.7
    finish_weight: float = 0.1
    repetition_weight: float = 0.1
    length_weight: float = 0.1
    nll_scale: float = 2.0  # mean NLL (nats/token) that counts as no confidence at all
    min_words: int = 3

    def __call__(self, candidate: Candidate, initial_temperature: float = 0.0) -> float:
        words = candidate.text.split()
        if not words or not candidate.token_logprobs:
            return 1.0
        mean_nll = -sum(candidate.token_logprobs) / len(candidate.token_logprobs)
        confidence = min(1.0, max(0.0, mean_nll / self.nll_scale)) if math.isfinite(mean_nll) else 1.0
        unfinished = 0.0 if candidate.finished else 1.0
        length = max(0.0, (self.min_words - len(words)) / self.min_words)
        value = (self.confidence_weight * confidence + self.finish_weight * unfinished
                 + self.repetition_weight * repetition(candidate.token_ids)
                 + self.length_weight * length)
        return min(1.0, max(0.0, value))


def repetition(tokens: list[int], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
