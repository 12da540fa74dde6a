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

"""Adaptive IRP: which stopping rules a question runs under, and on which schedule.

Two costs, two schedules (docs/performance.md, "Adaptive IRP"):

- **parallel**: every row of a question starts at once and the rules (:mod:`~sage_irp_ros.irp.stopping`)
  drop rows and end the question between decode steps. Where extra rows are nearly free (a GPU, or a
  CPU whose batched step costs little more than one row) this costs about the greedy row's latency;
- **sequential**: the greedy row decodes alone first; the sampled rows start only when it is not
  confident. Where each extra row costs most of a row (llama.cpp's forward on a CPU) this does the least
  work, and on a CPU work is latency.

``llm_irp.stopping: auto`` takes sequential where the warm-up measured a 4-row step at more than
:data:`SEQUENTIAL_ABOVE` times a 1-row step, else parallel. The crossover comes from the stored replay:
parallel costs about ``1.03 + 2.41 a`` greedy-row steps and sequential ``1.51 + 0.62 a``, where ``a`` is
what one extra row adds to a step (``r4 = 1 + 3 a``): equal at a 4-row step of 1.8 one-row steps.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from sage_irp_ros.config.settings import IRPConfig
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest, Generator
from sage_irp_ros.irp.stopping import (AgreementStop, ConfidencePrune, ConfidentGreedy, QuestionWatch, StoppingRules,
                                       greedy_row)

SEQUENTIAL_ABOVE = 1.8  # a 4-row step's time over a 1-row step's above which sequential is the cheaper schedule
PRUNE_WINDOW = 8  # tokens a row's recent confidence is judged on (chosen on the tuning half)


def rules_from(cfg: IRPConfig) -> StoppingRules:
    """The ``llm_irp.stop_*`` keys as rules, in the order they are checked (a key at 0 is off)."""
    rules = []
    if cfg.stop_greedy_nll > 0:
        rules.append(ConfidentGreedy(max_nll=cfg.stop_greedy_nll))
    if cfg.stop_greedy_confidence > 0:
        rules.append(ConfidentGreedy(max_nll=math.inf, min_confidence=cfg.stop_greedy_confidence))
    if cfg.stop_prune_margin > 0:
        rules.append(ConfidencePrune(margin=cfg.stop_prune_margin, window=PRUNE_WINDOW, min_steps=PRUNE_WINDOW))
    if cfg.stop_agree_rows > 0:
        rules.append(AgreementStop(min_finished=cfg.stop_agree_rows, min_agreement=cfg.stop_agree_f1))
    return StoppingRules(rules)


def choose_schedule(mode: str, row_cost: float | None, on_board: bool) -> str:
    """``parallel``, ``sequential`` or ``off`` for ``llm_irp.stopping`` = ``mode``: ``auto`` is sequential
    only on board where the measured ``row_cost`` (a 4-row step over a 1-row step) is over the crossover."""
    if mode != "auto":
        return mode
    return "sequential" if on_board and row_cost is not None and row_cost > SEQUENTIAL_ABOVE else "parallel"


def greedy_is_confident(rules: StoppingRules, greedy: Candidate) -> bool:
    """The sequential schedule's gate: does a greedy-row rule end the question on this row alone?"""
    row = greedy_row(greedy)
    return any(rule.confident(row) for rule in rules.rules if isinstance(rule, ConfidentGreedy))


def kept(requests: Sequence[GenerationRequest], batches: Sequence[Batch],
         watch: QuestionWatch | None) -> list[Candidate]:
    """The round's candidates that no rule dropped, in request and row order."""
    if watch is None or len(requests) != len(batches):
        return [c for batch in batches for c in batch.candidates]
    return [c for request, batch in zip(requests, batches) for i, c in enumerate(batch.candidates)
            if watch.dropped(request, i) is None]


def measure_row_cost(generator: Generator, prompt_ids: Sequence[int], tokens: int = 8) -> float:
    """A 4-row decoding step's time over a 1-row step's on ``generator`` (best of two each)."""
    def per_step(rows: int) -> float:
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            batch = generator.generate(GenerationRequest(prompt_ids, [0.0] + [0.7] * (rows - 1),
                                                         max_new_tokens=tokens, min_new_tokens=tokens))
            best = min(best, batch.decode_s or (time.perf_counter() - start))
        return best

    one = per_step(1)
    return per_step(4) / one if one > 0 else 1.0
