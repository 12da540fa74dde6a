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

"""SNARC: the 5-D salience (Surprise, Novelty, Arousal, Reward, Conflict) of one dialogue exchange.

This reproduces the research system's scorer exactly (docs: the spec's "SNARC" section; its reference
vectors, kept in ``test/data/snarc_vectors.json``, match to 1e-6), so salience figures stay comparable with the
report. The scores are cheap lexical heuristics, not semantics: words are the lower-cased text split
on whitespace (punctuation stays attached), and some checks are plain substring tests, exactly as the
original did. Word lists are frozen at import, so one score costs a few microseconds.

The weighted total and the salience threshold come from :class:`~sage_irp_ros.config.settings.SnarcConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sage_irp_ros.config.settings import SnarcConfig

# Novelty: distinct words (exact, after lower-casing) that mark talk about knowing and thinking.
_COGNITIVE_WORDS = frozenset({
    "understand", "know", "aware", "conscious", "process", "think", "believe", "certain",
    "uncertain", "paradox", "meta", "self", "reference", "cognition"})
# Arousal: question words, tested as substrings of the lower-cased question ("show" counts for "how").
_QUESTION_WORDS = ("what", "why", "how", "when", "where", "who")
# Conflict: three families of substrings of lower(q + " " + a); each term counts once.
_CONFLICT_TERMS = (
    "aware", "know", "understand", "think", "believe", "certain", "uncertain", "accurate", "true",
    "false", "paradox", "contradiction", "self", "myself", "you", "generate", "process", "create",
    "discover")
_SELF_REFERENCE_PHRASES = (
    "you know", "you understand", "you are", "you can", "i am", "i know", "i think", "your answer",
    "this conversation", "my response")
_UNCERTAINTY_TERMS = ("uncertain", "maybe", "might", "could", "perhaps")
_SENTENCE_END = frozenset(".!?")
SURPRISE_WINDOW = 3  # earlier exchanges whose questions define "expected" words


@dataclass(frozen=True)
class SnarcScores:
    """One exchange's five scores in [0, 1], their weighted total and whether it reached the threshold."""

    surprise: float
    novelty: float
    arousal: float
    reward: float
    conflict: float
    total: float
    salient: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {"surprise": self.surprise, "novelty": self.novelty, "arousal": self.arousal,
                "reward": self.reward, "conflict": self.conflict, "total": self.total,
                "salient": self.salient}

    def as_list(self) -> list[float]:
        """``[surprise, novelty, arousal, reward, conflict, total]`` (e.g. for a Float32MultiArray)."""
        return [self.surprise, self.novelty, self.arousal, self.reward, self.conflict, self.total]


def _words(text: str) -> list[str]:
    return text.lower().split()


def _count_in(terms: Sequence[str], text: str) -> int:
    """How many of ``terms`` occur as substrings of ``text`` (each counted once)."""
    return sum(1 for term in terms if term in text)


def _well_formed(text: str) -> bool:
    """Has sentence punctuation (one of .!?) and at least one uppercase letter."""
    return not _SENTENCE_END.isdisjoint(text) and any(c.isupper() for c in text)


class SnarcScorer:
    """Scores exchanges with the research formulas; weights and threshold from ``SnarcConfig``."""

    def __init__(self, cfg: SnarcConfig | None = None):
        self.cfg = cfg if cfg is not None else SnarcConfig()
        self._weights = self.cfg.weights
        self._threshold = self.cfg.salience_threshold

    # -- the five dimensions -------------------------------------------------------------------
    @staticmethod
    def surprise(q_words: list[str], history: Sequence[tuple[str, str]]) -> float:
        """Share of the question's distinct words absent from the last 3 earlier questions."""
        if not history:
            return 0.0
        recent: set[str] = set()
        for earlier_question, _ in history[-SURPRISE_WINDOW:]:
            recent.update(_words(earlier_question))
        current = set(q_words)
        if not recent or not current:
            return 0.0
        return min(1.0, len(current - recent) / len(current))

    @staticmethod
    def novelty(question: str, answer: str) -> float:
        """Half type/token ratio of question+answer, half cognitive vocabulary (3 distinct words = full)."""
        words = _words(question + " " + answer)
        if not words:
            return 0.0
        distinct = set(words)
        ttr = len(distinct) / len(words)
        k = len(distinct & _COGNITIVE_WORDS)
        return min(1.0, 0.5 * ttr + 0.5 * min(1.0, k / 3))

    @staticmethod
    def arousal(question: str, q_words: list[str], a_words: list[str]) -> float:
        """Question length (20 words = full), a question word, answer length (50 words = full)."""
        lowered = question.lower()
        asks = any(w in lowered for w in _QUESTION_WORDS)
        score = (0.3 * min(1.0, len(q_words) / 20) + 0.2 * (1.0 if asks else 0.0)
                 + 0.5 * min(1.0, len(a_words) / 50))
        return min(1.0, score)

    @staticmethod
    def reward(answer: str, a_words: list[str], final_energy: float | None) -> float:
        """Answer near 50 words, well formed, and a low IRP energy (0.5 when there is no IRP info).

        A NaN energy counts as no IRP info. Energies are not clamped (as in the original): a
        negative energy raises the IRP term above 1, and the sum is capped at 1.
        """
        length = max(0.0, 1.0 - abs(len(a_words) - 50) / 50)
        form = 1.0 if _well_formed(answer) else 0.5
        if final_energy is None or math.isnan(final_energy):
            irp = 0.5
        else:
            irp = 1.0 - min(1.0, final_energy)
        return min(1.0, 0.3 * length + 0.2 * form + 0.5 * irp)

    @staticmethod
    def conflict(question: str, answer: str) -> float:
        """Self-referential and epistemic vocabulary, direct address, hedging (substring matches)."""
        text = (question + " " + answer).lower()
        m = _count_in(_CONFLICT_TERMS, text)
        s = _count_in(_SELF_REFERENCE_PHRASES, text)
        u = _count_in(_UNCERTAINTY_TERMS, text)
        return min(1.0, 0.4 * min(1.0, m / 3) + 0.4 * min(1.0, s / 2) + 0.2 * min(1.0, u / 2))

    # -- the whole vector ------------------------------------------------------------------------
    def score(self, question: str, answer: str, history: Sequence[tuple[str, str]] = (),
              final_energy: float | None = None) -> SnarcScores:
        """Score one exchange.

        ``history`` holds the earlier ``(question, answer)`` exchanges of the same conversation,
        oldest first, not including this one (only the questions of the last ``SURPRISE_WINDOW``
        are read, for surprise). ``final_energy`` is the IRP's best energy, or None.
        """
        q_words = _words(question)
        a_words = _words(answer)
        dims = (
            self.surprise(q_words, history),
            self.novelty(question, answer),
            self.arousal(question, q_words, a_words),
            self.reward(answer, a_words, final_energy),
            self.conflict(question, answer),
        )
        total = sum(w * d for w, d in zip(self._weights, dims))
        return SnarcScores(*dims, total=total, salient=total >= self._threshold)
