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

"""A question refined alone, and the retry with fewer candidates after running out of memory.

The scheduler (:mod:`sage_irp_ros.serving.scheduler`) refines a question alone when a decode step shared
with others failed, so one question's fault stays its own; a question alone that runs out of memory is
retried once with fewer candidates (:meth:`AnswerOptions.reduced`), then fails with ``out_of_memory``.
"""

from __future__ import annotations

import logging

import torch

from sage_irp_ros import errors
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.engine import IRPEngine, RefineJob, Refinement

log = logging.getLogger(__name__)


def refine_alone(engine: IRPEngine, job: RefineJob) -> Refinement:
    """One question; out of memory: once more with fewer candidates (:func:`retry_fewer`)."""
    try:
        return engine.refine(*job)
    except SageError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_memory()
        return retry_fewer(engine, job, exc)


def retry_fewer(engine: IRPEngine, job: RefineJob, exc: BaseException) -> Refinement:
    """The question after it ran out of memory (``exc``) alone: once with fewer candidates, one per round;
    out of memory again: ``out_of_memory``."""
    options = job.options if job.options is not None else engine.default_options()
    fewer = options.reduced()
    log.warning("out of memory during generation (%s); retrying once with %d candidate(s), one per round",
                exc, fewer.rows)
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
