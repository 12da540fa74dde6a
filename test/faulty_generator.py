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

"""A Generator that fails on chosen calls: fault injection through ``SageCore(wrap_generator=...)``.

It delegates every call to the real on-board generator and raises a given exception on the calls named
(counted over ``generate`` and ``generate_many`` together, from 1), recording what each call asked for:
the fault tests then check the engine's retries by the rows and prompts it sent, whatever the grouping of
rows into requests (``llm_irp.sampled_prompts``) and without patching a module's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Sequence

from sage_irp_ros.decoding.generator import Batch, GenerationRequest, Generator, generate_all


@dataclass(frozen=True)
class Call:
    """One generation call the engine made: which method, its requests, and whether it was failed."""

    method: str  # "generate" or "generate_many"
    requests: tuple[GenerationRequest, ...]
    failed: bool

    @property
    def rows(self) -> int:
        """Rows over all of the call's requests (the batch the decode would have had)."""
        return sum(r.rows for r in self.requests)

    @property
    def temperatures(self) -> list[float]:
        """Every row's temperature, request after request."""
        return [t for r in self.requests for t in r.temperatures]

    def asks(self, *texts: str) -> list[str]:
        """Which of ``texts`` (question texts) any of the call's prompts contains."""
        return [t for t in texts if any(t in (r.prompt_text or "") for r in self.requests)]


class FaultyGenerator:
    """Delegates to the wrapped generator; raises ``error`` on the calls numbered in ``fail_calls``.

    Pass :meth:`wrap` as ``SageCore(wrap_generator=...)``: the core calls it again when it rebuilds its
    engines (``reconfigure``), and the same recorder keeps counting. ``score`` / ``score_options`` and
    every other attribute go to the wrapped generator unrecorded.
    """

    inner: Generator | None = None
    session = None  # no step session: every decode step of the scheduler is one recorded call

    def __init__(self, error: BaseException, fail_calls: Collection[int] | None = None):
        """``fail_calls``: 1-based numbers of the calls that raise; None: every call raises."""
        self.error = error
        self.fail_calls = None if fail_calls is None else frozenset(fail_calls)
        self.calls: list[Call] = []

    def wrap(self, inner: Generator) -> "FaultyGenerator":
        """Decorate ``inner`` (SageCore's ``wrap_generator``)."""
        self.inner = inner
        return self

    def generate(self, request: GenerationRequest) -> Batch:
        self._enter("generate", [request])
        return self.inner.generate(request)

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        self._enter("generate_many", requests)
        return generate_all(self.inner, requests)

    def __getattr__(self, name: str) -> Any:
        if self.inner is None:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _enter(self, method: str, requests: Sequence[GenerationRequest]) -> None:
        """Record the call; raise when it is one of the failing ones."""
        number = len(self.calls) + 1
        failed = self.fail_calls is None or number in self.fail_calls
        self.calls.append(Call(method, tuple(requests), failed))
        if failed:
            raise self.error


def faulty_core_of(make_core, model_dir, tmp_path, error: BaseException):
    """A fixture's body: a core (``make_core(model_dir, tmp_path, faults)``) whose first generation call
    raises ``error`` while later calls reach the model; yields ``(core, faults)``, released after."""
    faults = FaultyGenerator(error, fail_calls={1})
    core = make_core(model_dir, tmp_path, faults)
    yield core, faults
    core.release()
