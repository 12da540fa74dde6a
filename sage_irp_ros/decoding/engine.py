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

"""The step-driven decode engine: rows join and leave a fixed set of slots between two steps.

Every local generation (a lone question, prompt-diverse candidates, several questions, throttled greedy,
constrained rows) is decoded here. The engine holds a fixed number of row slots in one static KV cache
(:class:`~sage_irp_ros.decoding.slots.SlotCache`); each occupied slot is one candidate row with its own
prompt length, position, temperature, constraint, ``min_new_tokens`` and ``max_new_tokens``, and its
request's deadline and cancel.

- :meth:`DecodeEngine.submit` queues a :class:`~sage_irp_ros.decoding.generator.GenerationRequest`;
- :meth:`DecodeEngine.step` first admits waiting requests whose rows all fit in the free slots (FIFO: the
  prompt is prefilled ONCE and copied into each of its rows' slots), then samples one token for every
  occupied row, lets rows leave (end-of-sequence, ``max_new_tokens``, a constraint's dead end, the
  request's cancel or deadline, or the ``stop_rule`` hook), and runs one forward pass of every slot, in
  one batch, through the step function (eager, or a compiled step at the engine's fixed shape).
  It returns the requests that finished during the step: a caller pulls results, nothing calls back;
- :meth:`DecodeEngine.run` is the loop over ``step()`` until nothing is queued or decoding.

A greedy row gets the tokens it gets decoded alone (test_decode_engine), up to float rounding of the
masked attention; sampled rows draw from the same tempered distribution (one seed's random numbers are
shared by the rows sampled in the same step).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch

from sage_irp_ros.compat import hf_compat
from sage_irp_ros.decoding.decode import Decoded, constrained, sample
from sage_irp_ros.decoding.generator import GenerationRequest, RowView, TokenConstraint
from sage_irp_ros.decoding.slots import SlotCache, StepFn, step_masked


@dataclass
class Row:
    """One candidate row in a slot: what the ``stop_rule`` hook sees (read it, do not change it)."""

    job: "Job"
    index: int  # the row's place in its request (its temperature's index)
    slot: int
    temperature: float
    constraint: TokenConstraint | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ended: bool = False  # left its slot (any reason)

    @property
    def request(self) -> GenerationRequest:
        return self.job.request


@dataclass
class Job:
    """One submitted request while it waits or decodes."""

    request: GenerationRequest
    key: Hashable
    rows: list[Row] = field(default_factory=list)
    submitted: float = 0.0
    prefill_s: float = 0.0
    first_step: float = 0.0  # when its rows were inserted
    end: float = 0.0
    stopped: bool = False  # the deadline or a cancel cut it short
    compiled_steps: int = 0  # forward passes of its rows that ran through the compiled step
    eager_steps: int = 0


@dataclass(frozen=True)
class Finished:
    """A request that finished: its key, the request and its rows' tokens."""

    key: Hashable
    request: GenerationRequest
    decoded: Decoded
    step: str  # "compiled" when every forward pass of its rows ran through the compiled step, else "eager"


StopRule = Callable[[Sequence[Row]], Sequence[Row]]  # the occupied rows -> the rows to drop now


class CacheIgnored(RuntimeError):
    """The model's forward took the KV cache it was given and did not fill it: decode without one."""


class DecodeEngine:
    """A fixed set of ``capacity`` row slots over one static cache of ``length`` positions (module docstring)."""

    def __init__(self, model: torch.nn.Module, *, capacity: int, length: int, eos_ids: Sequence[int], pad_id: int,
                 step_fn: StepFn | None = None, stop_rule: StopRule | None = None, cache: Any = None):
        """``step_fn``: a replacement for the eager step (a :class:`~sage_irp_ros.decoding.compiled_step.
        CompiledStep`; its ``last_compiled`` says whether a call ran compiled); ``cache``: a static cache of
        this shape to decode in (a compiled step's pooled one, whose addresses its CUDA graph holds)."""
        self.model, self.capacity, self.length, self.pad_id = model, capacity, length, pad_id
        self.step_fn, self.stop_rule = step_fn, stop_rule
        self.slots = SlotCache(model, capacity, length, cache)
        self.device = self.slots.device
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=self.device)
        self.eos_set = {int(e) for e in self.eos.tolist()}
        self.end_id = int(self.eos[0]) if self.eos.numel() else pad_id
        self.rows: list[Row | None] = [None] * capacity
        self.waiting: deque[Job] = deque()
        self.logits: torch.Tensor | None = None  # (capacity, vocab): what each slot samples next
        self.steps = self.compiled_steps = 0

    # -- feeding ----------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, key: Hashable = None) -> None:
        """Queue ``request``; it joins at the start of a later :meth:`step` (first come, first admitted)."""
        need = len(request.prompt_ids) + request.max_new_tokens
        if request.rows > self.capacity or need > self.length:
            raise ValueError(f"a request of {request.rows} rows x {need} positions does not fit an engine of "
                             f"{self.capacity} slots x {self.length} positions")
        self.waiting.append(Job(request, key, submitted=time.monotonic()))

    def grow(self, capacity: int, length: int) -> None:
        """More slots and positions, between two steps, the rows decoding where they are (an eager step
        only: a compiled step is built for one shape)."""
        capacity, length = max(capacity, self.capacity), max(length, self.length)
        if (capacity, length) == (self.capacity, self.length):
            return
        with torch.inference_mode():
            self.slots = self.slots.grown(capacity, length)
            if self.logits is not None:
                logits = torch.zeros((capacity, self.logits.shape[1]), dtype=self.logits.dtype, device=self.device)
                logits[:self.capacity] = self.logits
                self.logits = logits
        self.rows += [None] * (capacity - self.capacity)
        self.capacity, self.length = capacity, length

    @property
    def busy(self) -> bool:
        """True while a request waits or decodes."""
        return bool(self.waiting) or any(row is not None for row in self.rows)

    @property
    def occupied(self) -> list[int]:
        return [slot for slot, row in enumerate(self.rows) if row is not None]

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Iterator[Finished]:
        """Step until nothing waits or decodes, yielding each request as it finishes."""
        while self.busy:
            yield from self.step()

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Admit, sample one token per occupied row, let rows leave, decode the rest one step (docstring)."""
        finished = self._admit()
        occupied = self.occupied
        if not occupied:
            return finished
        rows = [self.rows[s] for s in occupied]
        tokens, logprobs = self._sample(occupied, rows)
        now = time.monotonic()
        touched: dict[int, Job] = {}
        for row, token, logprob in zip(rows, tokens, logprobs):
            row.tokens.append(token)
            row.logprobs.append(logprob)
            request = row.request
            dead_end = row.constraint is not None and token == self.end_id
            if token in self.eos_set or dead_end or len(row.tokens) >= request.max_new_tokens:
                self._leave(row)
            touched[id(row.job)] = row.job
        for job in touched.values():
            request, live = job.request, [r for r in job.rows if not r.ended]
            if live and ((request.cancel is not None and request.cancel.is_set())
                         or (request.deadline is not None and now >= request.deadline)):
                job.stopped = True
                for row in live:
                    self._leave(row)
        for job in touched.values():  # the question's stopping rules (irp/stopping.py), where it has them
            watch = job.request.watch
            if watch is not None:  # also when this step ended its last rows: the rules read finished rows
                views = [RowView(r.tokens, r.logprobs, r.ended, bool(r.tokens) and r.tokens[-1] in self.eos_set)
                         for r in job.rows]
                for i in watch.rows_to_leave(job.request, views):
                    if not job.rows[i].ended:
                        self._leave(job.rows[i])
        if self.stop_rule is not None:
            still = [r for r in rows if not r.ended]
            for row in (self.stop_rule(still) if still else ()):
                self._leave(row)
        finished += [self._finish(job, now) for job in touched.values() if all(r.ended for r in job.rows)]
        occupied = self.occupied
        if occupied:
            self._forward(occupied)
        else:
            self.slots.reset()
        return finished

    # -- inside a step ----------------------------------------------------------------------------
    def _admit(self) -> list[Finished]:
        """Insert waiting requests (in order) while their rows fit; a request of no tokens finishes here."""
        done = []
        while self.waiting:
            job = self.waiting[0]
            request = job.request
            if request.max_new_tokens <= 0:
                self.waiting.popleft()
                done.append(self._finish(job, time.monotonic()))
                continue
            free = [s for s, row in enumerate(self.rows) if row is None]
            if len(free) < request.rows:
                break
            prompt_len, steps = len(request.prompt_ids), request.max_new_tokens
            remaining = max((r.request.max_new_tokens - len(r.tokens) for r in self.rows if r is not None),
                            default=0)
            if not self.slots.fits(prompt_len, max(steps, remaining)):
                if len(free) < self.capacity:
                    self.slots.compact(self.occupied)
                if not self.slots.fits(prompt_len, max(steps, remaining)):
                    break  # waits until rows leave
            self.waiting.popleft()
            self._insert(job, free[:request.rows])
        return done

    def _insert(self, job: Job, slots: list[int]) -> None:
        request = job.request
        start = time.monotonic()
        logits, cache = self.slots.prefill(request.prompt_ids)
        if cache is None:
            hf_compat.warn_once(f"prefill-ignored:{type(self.model).__name__}",
                                f"{type(self.model).__name__} did not fill the KV cache it was given: every "
                                "decoding step runs the whole sequence (slow)")
            raise CacheIgnored(type(self.model).__name__)
        self.slots.insert(slots, cache, len(request.prompt_ids))
        if self.logits is None:
            self.logits = torch.zeros((self.capacity, logits.shape[-1]), dtype=torch.float32, device=self.device)
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.logits[index] = logits
        constraints = request.constraints or [None] * request.rows
        for i, (slot, temperature) in enumerate(zip(slots, request.temperatures)):
            row = Row(job, i, slot, float(temperature), constraints[i])
            job.rows.append(row)
            self.rows[slot] = row
        job.first_step = time.monotonic()
        job.prefill_s = job.first_step - start

    def _sample(self, occupied: list[int], rows: list[Row]) -> tuple[list[int], list[float]]:
        """One token per occupied row (in slot order) and its untempered log-prob."""
        index = torch.tensor(occupied, dtype=torch.long, device=self.device)
        logits = self.logits.index_select(0, index)
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=self.device)
        greedy = temps <= 0.0
        temps = torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        banned = [i for i, r in enumerate(rows) if len(r.tokens) < r.request.min_new_tokens]
        if banned and self.eos.numel():
            where = torch.tensor(banned, dtype=torch.long, device=self.device)
            logits[where[:, None], self.eos[None, :]] = float("-inf")
        allowed = constrained(logits, [r.constraint for r in rows], [r.tokens for r in rows], self.end_id)
        tokens, logprobs = sample(logits, temps, greedy, allowed)
        return tokens.tolist(), logprobs.float().tolist()

    def _forward(self, occupied: list[int]) -> None:
        """One forward pass of every slot: occupied slots feed their last token, free ones padding."""
        tokens = torch.full((self.capacity,), self.pad_id, dtype=torch.long, device=self.device)
        index = torch.tensor(occupied, dtype=torch.long, device=self.device)
        last = torch.tensor([self.rows[s].tokens[-1] for s in occupied], dtype=torch.long, device=self.device)
        tokens.index_copy_(0, index, last)
        if not self.slots.fits(0, 1):
            self.slots.compact(occupied)
        self.logits = self.slots.step(self.step_fn or step_masked, tokens).float()
        compiled = bool(getattr(self.step_fn, "last_compiled", False))
        self.steps += 1
        self.compiled_steps += compiled
        for job in {id(self.rows[s].job): self.rows[s].job for s in occupied}.values():
            if compiled:
                job.compiled_steps += 1
            else:
                job.eager_steps += 1

    def _leave(self, row: Row) -> None:
        if not row.ended:
            row.ended = True
            self.rows[row.slot] = None

    def _finish(self, job: Job, now: float) -> Finished:
        job.end = now
        rows = job.request.rows
        width = max((len(r.tokens) for r in job.rows), default=0)
        tokens = torch.full((rows, width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((rows, width), dtype=torch.float32)
        for row in job.rows:
            tokens[row.index, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            logprobs[row.index, :len(row.logprobs)] = torch.tensor(row.logprobs, dtype=torch.float32)
        decoded = Decoded(tokens, logprobs, prefill_s=job.prefill_s,
                          decode_s=(now - job.first_step) if job.first_step else 0.0, stopped_early=job.stopped)
        step = "compiled" if job.compiled_steps and not job.eager_steps else "eager"
        return Finished(job.key, job.request, decoded, step)
