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

"""The generation seam: what the IRP engine asks of a generator, and what it gets back.

A generator turns one prompt into N candidate rows, each at its own temperature (0.0 = the greedy row),
and reports every sampled token's log-probability under the *untempered* model, so candidates drawn at
different temperatures can be compared. The on-board torch loop (:mod:`sage_irp_ros.decoding.torch_generator`)
implements :class:`Generator`; a remote serving engine can implement it too. Nothing here imports torch,
so selection, energies, the benchmarks' analysis and a remote client use these types without it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence


@dataclass
class Candidate:
    """One sampled answer with its untempered token log-probabilities."""

    text: str
    temperature: float
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finished: bool = False  # the model produced end-of-sequence (the answer is complete)
    backend: str = "local"  # who generated it: local (on board), remote (a server), local_fallback

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Batch:
    """The candidates of one generation call and how long its phases took."""

    candidates: list[Candidate]
    prefill_s: float
    decode_s: float
    stopped_early: bool  # the deadline or a cancel request cut decoding short
    step: str = "eager"  # "compiled": every decoding step of these rows ran through the compiled step

    @property
    def tokens(self) -> int:
        return sum(c.n_tokens for c in self.candidates)


class TokenConstraint(Protocol):
    """Restricts the tokens one row may take next (a grammar, a list of options).

    ``mask(generated, logits)`` receives the row's tokens so far and its ``(vocab,)`` logits and returns
    them with every forbidden token set to ``-inf`` (in place or as a new tensor). A row whose every
    token is forbidden ends there: a constraint can end its row, never the decode call.
    """

    def mask(self, generated: Sequence[int], logits: Any) -> Any: ...


@dataclass
class RowView:
    """One row of a request between two decode steps, as a decode loop shows it to a :class:`RowWatch`."""

    tokens: Sequence[int]  # decoded so far (an end-of-sequence token included)
    logprobs: Sequence[float]  # untempered, one per token
    ended: bool  # the row has left: end-of-sequence, a constraint's dead end, its limits, or a watch
    finished: bool  # it ended with end-of-sequence: a complete answer


class RowWatch(Protocol):
    """Watches a question's rows between decode steps (the IRP stopping rules, irp/stopping.py).

    A decode loop calls ``rows_to_leave`` after each step with every row of the request; the rows whose
    indices it returns leave at once (their slots serve other rows); their candidates are still returned.
    """

    def rows_to_leave(self, request: "GenerationRequest", rows: Sequence[RowView]) -> Sequence[int]: ...


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, one row per temperature, and the limits every row shares: a row group.

    ``prompt_ids`` are the resident tokenizer's rendering of the prompt; ``messages`` (chat roles and
    contents) and ``prompt_text`` (the rendered string) are what it was built from, for a backend with
    its own tokenizer and chat template (a serving engine). Several requests can be decoded together
    (:meth:`Generator.generate_many`): each is its own group with its own prompt and limits.
    """

    prompt_ids: Sequence[int]
    temperatures: Sequence[float]  # one row each; 0.0 = the greedy (argmax) row
    max_new_tokens: int
    min_new_tokens: int = 0  # end-of-sequence is banned before this many tokens
    deadline: float | None = None  # time.monotonic() after which decoding stops at the next token
    cancel: threading.Event | None = None  # set: decoding stops at the next token
    constraints: Sequence[TokenConstraint | None] | None = None  # one per row (None: unconstrained)
    messages: Sequence[dict[str, str]] | None = None  # the chat messages (None: a plain-text prompt)
    prompt_text: str | None = None  # the rendered prompt (chat template applied, or the seed prompt)
    watch: RowWatch | None = field(default=None, compare=False)  # the question's stopping rules (None: none)

    def __post_init__(self) -> None:
        if not self.temperatures:
            raise ValueError("a generation request needs at least one row")
        if self.constraints is not None and len(self.constraints) != len(self.temperatures):
            raise ValueError(f"{len(self.constraints)} constraints for {len(self.temperatures)} rows")

    @property
    def rows(self) -> int:
        return len(self.temperatures)


class Generator(Protocol):
    """Produces candidates for a prompt; the IRP engine's only way to reach a model."""

    def generate(self, request: GenerationRequest) -> Batch:
        """All rows of ``request`` in one call (batched where the backend can)."""
        ...

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        """Every request's rows in one call where the backend can (several prompts in one batch); one
        :class:`Batch` per request, in order. A request that ends (finished, deadline, cancel) leaves the
        others running. Optional: :func:`generate_all` falls back to one :meth:`generate` per request."""
        ...

    def score(self, prompt_ids: Sequence[int], text: str) -> Candidate:
        """A given answer as a candidate: its tokens and their untempered log-probs after the prompt."""
        ...

    def score_options(self, prompt_ids: Sequence[int], neutral_ids: Sequence[int],
                      options: Sequence[str]) -> list[Any]:
        """Each option's :class:`~sage_irp_ros.answers.choices.OptionScore` after the two prompts (choices
        questions only; batched where the backend can)."""
        ...


def generate_all(generator: Generator, requests: Sequence[GenerationRequest]) -> list[Batch]:
    """``generator.generate_many(requests)`` where the generator has it, else one ``generate`` each."""
    many = getattr(generator, "generate_many", None)
    if many is not None:
        return list(many(requests))
    return [generator.generate(request) for request in requests]


class DecodeSession(Protocol):
    """Requests decoded step by step: the scheduler's view of a generator.

    ``submit`` queues a request between two steps; ``step`` decodes one step of every running row (admitting
    waiting requests first, as rows fit) and returns ``(key, batch)`` for each request that finished during
    it; ``busy`` says whether anything waits or decodes. A session is driven by one thread; ``score`` and
    ``score_options`` of its generator may be called between two steps.
    """

    def submit(self, request: GenerationRequest, key: Hashable) -> None: ...

    def step(self) -> list[tuple[Hashable, Batch]]: ...

    @property
    def busy(self) -> bool: ...

    def close(self) -> None:
        """Give back what the session holds (its rows' cache) and drop what it still decodes: after a
        failed step, before the questions are decoded again in a new session."""
        ...


def open_session(generator: Generator, max_rows: int) -> DecodeSession:
    """A session over ``generator`` with at most ``max_rows`` rows decoding at once (a request with more
    rows runs alone): the generator's own (``generator.session(max_rows)``, where requests join and leave
    between decode steps), else a :class:`CallSession` (each step is one :meth:`Generator.generate_many`
    call of what waits)."""
    session = getattr(generator, "session", None)
    return session(max_rows) if session is not None else CallSession(generator, max_rows)


class CallSession:
    """A session over a generator without steps (a serving engine, a decorator): each :meth:`step` decodes
    the waiting requests, up to ``max_rows`` rows, in one :func:`generate_all` call."""

    def __init__(self, generator: Generator, max_rows: int):
        self.generator, self.max_rows = generator, max(1, max_rows)
        self.waiting: deque[tuple[Hashable, GenerationRequest]] = deque()

    def submit(self, request: GenerationRequest, key: Hashable) -> None:
        self.waiting.append((key, request))

    @property
    def busy(self) -> bool:
        return bool(self.waiting)

    def close(self) -> None:
        self.waiting.clear()

    def step(self) -> list[tuple[Hashable, Batch]]:
        taken = [self.waiting.popleft()] if self.waiting else []
        while self.waiting and sum(r.rows for _, r in taken) + self.waiting[0][1].rows <= self.max_rows:
            taken.append(self.waiting.popleft())
        if not taken:
            return []
        batches = generate_all(self.generator, [request for _, request in taken])
        return [(key, batch) for (key, _), batch in zip(taken, batches)]


def decode_all(session: DecodeSession, requests: Sequence[GenerationRequest]) -> list[Batch]:
    """Every request through ``session`` to its end; one batch per request, in order."""
    for index, request in enumerate(requests):
        session.submit(request, index)
    done: dict[Hashable, Batch] = {}
    while session.busy:
        done.update(session.step())
    return [done[index] for index in range(len(requests))]
