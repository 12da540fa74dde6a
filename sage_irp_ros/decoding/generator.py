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

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


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
        others running; a backend may take ``on_done(index, batch)`` too, called as each request ends.
        Optional: :func:`generate_all` falls back to one :meth:`generate` per request."""
        ...

    def score(self, prompt_ids: Sequence[int], text: str) -> Candidate:
        """A given answer as a candidate: its tokens and their untempered log-probs after the prompt."""
        ...

    def score_options(self, prompt_ids: Sequence[int], neutral_ids: Sequence[int],
                      options: Sequence[str]) -> list[Any]:
        """Each option's :class:`~sage_irp_ros.answers.choices.OptionScore` after the two prompts (choices
        questions only; batched where the backend can)."""
        ...


def generate_all(generator: Generator, requests: Sequence[GenerationRequest],
                 on_done: Callable[[int, Batch], None] | None = None) -> list[Batch]:
    """``generator.generate_many(requests)`` where the generator has it, else one ``generate`` each;
    ``on_done(index, batch)`` once per request, as soon as the generator hands it over."""
    many = getattr(generator, "generate_many", None)
    if many is not None and on_done is not None and "on_done" in inspect.signature(many).parameters:
        return list(many(requests, on_done=on_done))
    batches = list(many(requests)) if many is not None else []
    for index, request in enumerate(requests):
        if many is None:
            batches.append(generator.generate(request))
        if on_done is not None:
            on_done(index, batches[index])
    return batches
