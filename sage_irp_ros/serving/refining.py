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

"""Refining prepared questions together, and alone when the shared call fails or memory runs out.

Several questions' candidates are decoded in one batched call (:meth:`IRPEngine.refine_many`); each
question is handed over as soon as it halts. When the shared call fails (out of memory, a constraint's
error), the questions not handed over yet are refined one by one, so one question's fault stays its own.
A question refined alone that runs out of memory is retried once with fewer candidates
(:meth:`AnswerOptions.reduced`), then fails with ``out_of_memory``.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from sage_irp_ros import errors
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.engine import IRPEngine, RefineJob, Refinement

log = logging.getLogger(__name__)


def refine_together(engine: IRPEngine, jobs: Sequence[RefineJob],
                    refined: Callable[[int, Refinement | Exception], None], pending: Callable[[int], bool]) -> None:
    """Refine ``jobs`` together, handing each to ``refined(k, outcome)`` as it halts. When the shared
    call fails, the jobs still ``pending`` are refined alone (with the out-of-memory retry); one job is
    refined alone from the start."""
    if len(jobs) > 1:
        try:
            engine.refine_many(list(jobs), on_done=refined)
            return
        except Exception as exc:  # noqa: BLE001 - retried alone below, so one question's fault stays its own
            if is_out_of_memory(exc):
                free_memory()
            log.warning("batched generation of %d questions failed (%s: %s); answering them one by one",
                        len(jobs), type(exc).__name__, exc)
    for k, job in enumerate(jobs):
        if not pending(k):
            continue
        try:
            outcome: Refinement | Exception = refine_alone(engine, job)
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        refined(k, outcome)


def refine_alone(engine: IRPEngine, job: RefineJob) -> Refinement:
    """One question; out of memory: once more with fewer candidates, then ``out_of_memory``."""
    try:
        return engine.refine(*job)
    except SageError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_memory()
        fewer = job.options.reduced()
        log.warning("out of memory during generation; retrying once with %d candidate(s), one per round",
                    fewer.rows)
        try:
            return engine.refine(*job._replace(options=fewer))
        except Exception as again:
            if is_out_of_memory(again):
                free_memory()
                raise SageError(errors.OUT_OF_MEMORY, f"out of memory during generation, also with "
                                                      f"{fewer.rows} candidate(s): {again}") from again
            raise


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory: torch's typed error on CUDA, a MemoryError (llama.cpp's
    KV cache full); on a CPU torch's allocation failure is a plain RuntimeError, known only by its message."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                           or "can't allocate memory" in str(exc).lower()))


def free_memory() -> None:
    """Give cached accelerator memory back before a retry."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
