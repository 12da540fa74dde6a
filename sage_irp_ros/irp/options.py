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

"""How one question is answered: the IRP settings resolved once, from config, question and throttling.

Every default is filled in :meth:`AnswerOptions.resolve`, nowhere else; the engine reads the
resolved values as they are. While the platform is throttled (with thermal monitoring on) a question
is answered by the greedy row alone: one row at temperature 0 with ``throttle.max_tokens``, the
strongest single answer the model gives, and no sampled rows. After running out of memory the core
retries once with :meth:`AnswerOptions.reduced`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Callable

from sage_irp_ros.config.settings import IRPConfig, ThrottleConfig
from sage_irp_ros.irp.prompts import bank_indices
from sage_irp_ros.questions import Question


@dataclass(frozen=True)
class AnswerOptions:
    """One question's resolved IRP settings.

    ``candidates``: sampled candidates of the temperature schedule (0 = none: greedy row only).
    ``candidates_per_round``: sampled rows per batched call (0 = all in one call).
    ``greedy``: decode the greedy (T = 0) continuation as one more row of the first call.
    ``deadline``: ``time.monotonic()`` instant after which no new token is decoded (None = none);
    ``deadline_s`` is the budget it came from, for messages.
    ``min_confidence``: the question's own, else ``llm_irp.min_confidence`` (0 = off).
    """

    candidates: int
    max_tokens: int
    candidates_per_round: int = 0
    greedy: bool = True
    min_new_tokens: int = 0
    deadline: float | None = None
    deadline_s: float | None = None
    cancel: threading.Event | None = None
    throttled: bool = False
    min_confidence: float = 0.0
    stopping: str = "off"  # llm_irp.stopping: auto | parallel | sequential | off (throttled: off)
    constraint: Callable[[], Any] | None = None  # a fresh TokenConstraint per row (a JSON schema's grammar)
    sampled_prompts: tuple[int, ...] = (0,)  # phrasings the sampled rows use in turn (prompts.PROMPT_BANK)

    @classmethod
    def resolve(cls, cfg: IRPConfig, question: Question | None = None, *, throttled: bool = False,
                throttle: ThrottleConfig | None = None, received: float | None = None,
                cancel: threading.Event | None = None) -> "AnswerOptions":
        """The options for ``question`` under ``cfg``; ``throttled`` is the platform's throttle state and
        ``throttle`` what it changes (default: the ``throttle:`` section's defaults).

        The deadline is ``received`` (when the question arrived, ``time.monotonic()``) plus the
        question's ``deadline_s``, else ``cfg.deadline_s``; none without ``received`` or a budget.
        """
        deadline_s = (question.deadline_s if question is not None else None) or cfg.deadline_s or None
        deadline = received + deadline_s if deadline_s and received is not None else None
        min_confidence = question.min_confidence if question is not None else None
        common: dict[str, Any] = {"deadline": deadline, "deadline_s": deadline_s, "cancel": cancel,
                                  "min_confidence": cfg.min_confidence if min_confidence is None else min_confidence}
        throttle = throttle or ThrottleConfig()
        if throttled and throttle.enabled:
            return cls(candidates=0, max_tokens=min(throttle.max_tokens, cfg.max_tokens), greedy=True,
                       throttled=True, **common)
        candidates = (question.candidates if question is not None else None) or cfg.candidates
        return cls(candidates=candidates, max_tokens=cfg.max_tokens, candidates_per_round=cfg.candidates_per_round,
                   greedy=cfg.greedy_candidate, sampled_prompts=bank_indices(cfg.sampled_prompts),
                   stopping=cfg.stopping, **common)

    @property
    def rows(self) -> int:
        """Candidates the options ask for at most: the sampled ones plus the greedy row."""
        return self.candidates + (1 if self.greedy else 0)

    def reduced(self) -> "AnswerOptions":
        """The smaller retry after running out of memory: half the sampled candidates (at least one),
        one per call, no greedy row. Options that are the greedy row alone stay as they are."""
        if self.candidates == 0:
            return self
        return dataclasses.replace(self, candidates=max(1, self.candidates // 2), candidates_per_round=1,
                                   greedy=False)

    def replace(self, **changes: Any) -> "AnswerOptions":
        """A copy with ``changes`` (field names as above)."""
        return dataclasses.replace(self, **changes)
