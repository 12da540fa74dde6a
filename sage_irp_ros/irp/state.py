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

"""What one question's refinement knows while it runs, what a question asks for, and what it gives."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

from sage_irp_ros.decoding.generator import Candidate, GenerationRequest, TokenConstraint
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.irp.prompts import Prompt
from sage_irp_ros.results import IRPSummary


@dataclass
class IRPState:
    """Everything one question's refinement knows; the protocol's verbs read and update it."""

    question: str
    context: str
    prompt_ids: list[int]
    schedule: list[float]
    max_tokens: int
    round_size: int
    deadline: float | None = None
    cancel: threading.Event | None = None
    min_new_tokens: int = 0
    iteration: int = 0
    temperature: float = 0.0
    best_response: str = ""
    best_energy: float = float("inf")
    best_finished: bool = False
    greedy_pending: bool = False  # the greedy (T = 0) row is still to be added to the next round
    throttled: bool = False
    constraint: Callable[[], TokenConstraint] | None = None  # a fresh constraint per row (None: none)
    candidates: list[Candidate] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    tokens: int = 0
    rounds: int = 0
    halt_reason: str | None = None
    history_used: int = 0
    batch: int = 1  # questions refined together with this one (refine_many), itself included
    messages: list[dict[str, str]] | None = None  # what prompt_ids were rendered from (a remote backend's prompt)
    prompt_text: str = ""
    variants: dict[int, Prompt] = field(default_factory=dict)  # the bank's other phrasings the sampled rows use
    sampled_prompts: tuple[int, ...] = (0,)  # the phrasing of sampled row i is sampled_prompts[i % len]
    steps: list[str] = field(default_factory=list)  # which step decoded each batch ("compiled" / "eager")
    stopping: str = "off"  # the early-stopping schedule: parallel, sequential or off (irp/adaptive.py)
    greedy_first: bool = False  # sequential: the next round is the greedy row alone
    watch: Any = None  # this round's QuestionWatch (irp/stopping.py), None without rules
    round: list[GenerationRequest] = field(default_factory=list)  # this round's requests, as sent
    dropped: dict[str, int] = field(default_factory=dict)  # rows the rules dropped, by rule
    timings: dict[str, float] = field(default_factory=lambda: {
        "prefill_s": 0.0, "decode_s": 0.0, "scoring_s": 0.0})


class RefineJob(NamedTuple):
    """One question for :meth:`IRPEngine.refine_many`: the text, context, history and its options."""

    question: str
    context: str = ""
    history: Sequence[tuple[str, str]] = ()
    options: AnswerOptions | None = None


@dataclass(frozen=True)
class Refinement:
    """What one question's refinement gives: the chosen answer, the result's ``irp`` summary, the
    tokens generated over all candidates and the temperature the schedule ended at."""

    answer: str
    irp: IRPSummary
    tokens: int
    final_temperature: float
    candidates: tuple[Candidate, ...] = ()  # every candidate, in the order of ``irp.energies``
    best: int = 0  # index of the chosen candidate
