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

"""Choices: the answer is exactly one of the caller's options, with a probability for each.

Two kinds of evidence, both already at hand or one batched forward away:

- **option likelihood**: every option's log-likelihood as the answer to the question's prompt, and the
  same after a neutral prompt that lists the options without the question; their difference is the
  pointwise mutual information (Holtzman et al. 2021, "Surface Form Competition"), which removes the
  model's prior for an option ("yes" is likely whatever the question). Each option is scored as written
  and with its first letter upper-cased (the model's own way of starting an answer), the two summed.
  All rows (options x spellings x both prompts) run as one right-padded batch
  (:meth:`~sage_irp_ros.decoding.torch_generator.TorchGenerator.score_options`);
- **agreement**: the free-text candidates IRP sampled anyway, each mapped onto the option it names
  (whole words, the earliest named option), as vote shares.

The probabilities are a conditional logit over these features, ``softmax(sum_k w_k * feature_k)``, with
the weights fitted on the tuning half of bench/quality/choices.json (``python -m bench.quality.choices
--fit``) and shipped in the package's calibration file (:mod:`sage_irp_ros.irp.confidence`). Nothing here
imports torch: a remote :class:`~sage_irp_ros.decoding.generator.Generator` can implement ``score_options``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from sage_irp_ros.irp.prompts import build_prompt_ids

FEATURES = ("ll_sum", "ll_mean", "pmi_sum", "pmi_mean", "vote")
INSTRUCTION = "Answer with one of the options only."
# Free-text candidates of a choices question are short: an option and maybe a reason.
MAX_TOKENS = 24
_WORD = re.compile(r"[a-z0-9]+")


def choice_prompt(question: str, options: Sequence[str]) -> str:
    """The question as the model sees it: the question, its options, and the instruction."""
    return f"{question}\nOptions: {'; '.join(options)}.\n{INSTRUCTION}"


def neutral_prompt(options: Sequence[str]) -> str:
    """The options without the question: what the model thinks of them before reading it (the prior)."""
    return f"Options: {'; '.join(options)}.\n{INSTRUCTION}"


def spellings(option: str) -> list[str]:
    """The option as written and with its first letter upper-cased (one of them when they are equal)."""
    upper = option[:1].upper() + option[1:]
    return [option] if upper == option else [option, upper]


def map_to_option(text: str, options: Sequence[str]) -> int | None:
    """The option a free-text answer names: the whole answer, else the earliest option found in it as
    whole words (the longest when two start at the same place); None when it names none."""
    low = " ".join(_WORD.findall(text.lower()))
    keys = [" ".join(_WORD.findall(o.lower())) for o in options]
    for index, key in enumerate(keys):
        if key and low == key:
            return index
    best: tuple[int, int, int] | None = None  # (position, -length, index)
    for index, key in enumerate(keys):
        if not key:
            continue
        match = re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", low)
        if match and (best is None or (match.start(), -len(key)) < best[:2]):
            best = (match.start(), -len(key), index)
    return best[2] if best is not None else None


def vote_shares(texts: Sequence[str], options: Sequence[str]) -> list[float]:
    """Share of the candidates that name each option (candidates naming none count for none)."""
    votes = [0] * len(options)
    for text in texts:
        index = map_to_option(text, options)
        if index is not None:
            votes[index] += 1
    return [v / len(texts) if texts else 0.0 for v in votes]


@dataclass(frozen=True)
class OptionScore:
    """An option's log-likelihood (summed over its spellings) and token count, after the question's
    prompt and after the neutral prompt."""

    ll_sum: float
    n_tokens: int
    neutral_sum: float
    neutral_tokens: int


def features(scores: Sequence[OptionScore], votes: Sequence[float]) -> list[dict[str, float]]:
    """Per option: the features the choice model weighs (:data:`FEATURES`)."""
    out = []
    for score, vote in zip(scores, votes):
        ll_mean = score.ll_sum / max(1, score.n_tokens)
        neutral_mean = score.neutral_sum / max(1, score.neutral_tokens)
        out.append({"ll_sum": score.ll_sum, "ll_mean": ll_mean, "pmi_sum": score.ll_sum - score.neutral_sum,
                    "pmi_mean": ll_mean - neutral_mean, "vote": vote})
    return out


def probabilities(feats: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> list[float]:
    """softmax over options of the weighted features (a conditional logit)."""
    logits = [sum(w * f.get(name, 0.0) for name, w in weights.items()) for f in feats]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


@dataclass(frozen=True)
class Choice:
    """The chosen option, every option's probability (summing to 1) and the features they came from."""

    choice: str
    probabilities: dict[str, float]
    features: list[dict[str, float]]

    @property
    def top(self) -> float:
        return self.probabilities[self.choice]


def score_prompts(tokenizer, question: str, options: Sequence[str], context: str = "",
                  history=(), use_chat_template: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of the question's choice prompt and of the neutral prompt."""
    return (build_prompt_ids(tokenizer, choice_prompt(question, options), context, history, use_chat_template),
            build_prompt_ids(tokenizer, neutral_prompt(options), "", (), use_chat_template))


def choose(scores: Sequence[OptionScore], texts: Sequence[str], options: Sequence[str],
           weights: Mapping[str, float]) -> Choice:
    """The most probable option (the first on a tie) given the option scores and candidate texts."""
    feats = features(scores, vote_shares(texts, options))
    probs = probabilities(feats, weights)
    best = max(range(len(options)), key=lambda i: (probs[i], -i))
    return Choice(options[best], {o: round(p, 6) for o, p in zip(options, probs)}, feats)
