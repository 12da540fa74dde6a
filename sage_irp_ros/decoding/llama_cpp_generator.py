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

"""The generation seam over llama.cpp's forward: rows as sequence ids, joining and leaving between steps.

:class:`LlamaCppGenerator` implements :class:`~sage_irp_ros.decoding.generator.Generator` for a model
loaded with ``model.forward: llama_cpp`` (:mod:`~sage_irp_ros.weights.llama_cpp_model`). llama.cpp only
computes logits; everything a candidate is made of stays the package's: sampling at each row's
temperature (the greedy row by argmax), the constraints of JSON answers, ``min_new_tokens``, the
untempered log-probs the energies read, deadlines and cancels.

One session (:class:`LlamaCppSession`) serves every call: waiting requests are admitted between two steps
while sequence ids and KV cells are free (the prompt is decoded once and shared by the request's rows);
each step decodes one token for every running row in one ``llama_decode``; a row that ends
(end-of-sequence, a constraint's dead end) leaves at once and its id serves the next request; a request
ends when its rows have, at its ``max_new_tokens``, deadline or cancel, and the step returns it then.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

from sage_irp_ros.answers.choices import OptionScore, spellings
from sage_irp_ros.decoding.decode import constrained, sample
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest, RowView, decode_all
from sage_irp_ros.decoding.llama_cpp_forward import SCORING_SEQUENCE, LlamaCppForward
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.weights.loader import LoadedModel


@dataclass
class _Running:
    """One request while it decodes: its rows' sequence ids, tokens and log-probs so far."""

    index: Hashable  # the session key
    request: GenerationRequest
    seqs: list[int]
    logits: torch.Tensor  # (rows, vocab): the next token's logits of every row
    prefill_s: float
    first_step: float
    tokens: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    steps: int = 0
    stopped: bool = False  # the deadline or cancel cut it short

    @property
    def cells(self) -> int:
        """KV cells this request may take: its prompt once, and every row's new tokens."""
        return len(self.request.prompt_ids) + self.request.rows * self.request.max_new_tokens


class LlamaCppGenerator(TorchGenerator):
    """Candidates from llama.cpp's forward with the package's own sampling (see the module docstring)."""

    def __init__(self, lm: LoadedModel):
        super().__init__(lm)
        self.forward: LlamaCppForward = lm.model

    def generate(self, request: GenerationRequest) -> Batch:
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        return decode_all(self.session(SCORING_SEQUENCE), requests)

    def session(self, max_rows: int) -> "LlamaCppSession":
        """A :class:`LlamaCppSession`: at most ``max_rows`` rows decoding at once (a larger request alone)."""
        return LlamaCppSession(self, max_rows)

    # -- one request's life ---------------------------------------------------------------------------
    def _admit(self, index: Hashable, request: GenerationRequest, seqs: list[int]) -> _Running:
        start = time.monotonic()
        last = self.forward.prefill(seqs[0], list(request.prompt_ids))
        for seq in seqs[1:]:
            self.forward.share(seqs[0], seq)
        rows = request.rows
        logits = torch.from_numpy(last).float().expand(rows, -1).clone()
        now = time.monotonic()
        return _Running(index, request, seqs, logits, prefill_s=now - start, first_step=now,
                        tokens=[[] for _ in range(rows)], logprobs=[[] for _ in range(rows)], ended=[False] * rows)

    def _sample(self, run: _Running) -> list[int]:
        """The next token of every running row from its logits (the request's own rules); returns the
        sequence ids of the rows that ended, free again."""
        request = run.request
        live = [row for row in range(request.rows) if not run.ended[row]]
        logits = run.logits[live]
        if run.steps < request.min_new_tokens and self.eos_ids:
            logits = logits.index_fill(1, torch.tensor(self.eos_ids), float("-inf"))
        end_id = self.eos_ids[0] if self.eos_ids else self.pad_id
        allowed = None
        if request.constraints:
            allowed = constrained(logits, [request.constraints[row] for row in live], [run.tokens[row] for row in live],
                                  end_id)
        temps = torch.tensor([request.temperatures[row] for row in live], dtype=torch.float32)
        greedy = temps <= 0.0
        tokens, logp = sample(logits, torch.where(greedy, torch.ones_like(temps), temps)[:, None], greedy, allowed,
                              inverse_cdf=True)
        left = []
        for k, row in enumerate(live):
            token = int(tokens[k])
            run.tokens[row].append(token)
            run.logprobs[row].append(float(logp[k]))
            if token in self.eos_ids or (allowed is not None and token == end_id):
                run.ended[row] = True
                self.forward.free(run.seqs[row])
                left.append(run.seqs[row])
        run.steps += 1
        return left

    def _watch(self, run: _Running) -> list[int]:
        """The rows the question's stopping rules send away now (their ids, free again)."""
        watch = run.request.watch
        if watch is None:  # called also when this step ended its last rows: the rules read finished rows
            return []
        eos = set(self.eos_ids)
        views = [RowView(run.tokens[r], run.logprobs[r], run.ended[r], bool(run.tokens[r]) and run.tokens[r][-1] in eos)
                 for r in range(run.request.rows)]
        left = []
        for row in watch.rows_to_leave(run.request, views):
            if not run.ended[row]:
                run.ended[row] = True
                self.forward.free(run.seqs[row])
                left.append(run.seqs[row])
        return left

    def _request_ended(self, run: _Running) -> bool:
        request = run.request
        if all(run.ended) or run.steps >= request.max_new_tokens:
            return True
        if (request.cancel is not None and request.cancel.is_set()) or (
                request.deadline is not None and time.monotonic() >= request.deadline):
            run.stopped = True
            return True
        return False

    def _finish(self, run: _Running) -> tuple[Batch, list[int]]:
        """The request's batch, and the sequence ids its running rows held, free again."""
        held = [seq for row, seq in enumerate(run.seqs) if not run.ended[row]]
        for seq in held:
            self.forward.free(seq)
        candidates = [self._candidate(run.tokens[row], run.logprobs[row], run.request.temperatures[row])
                      for row in range(run.request.rows)]
        return Batch(candidates, run.prefill_s, time.monotonic() - run.first_step, run.stopped, step="llama_cpp"), held

    # -- scoring given answers ------------------------------------------------------------------------
    def score(self, prompt_ids: Sequence[int], text: str) -> Candidate:
        """Untempered log-probs of a given answer after the prompt."""
        answer = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        logprobs = self._answer_logprobs(list(prompt_ids), answer)
        return Candidate(text=text, temperature=1.0, token_ids=answer, token_logprobs=logprobs, finished=True)

    def score_options(self, prompt_ids: Sequence[int], neutral_ids: Sequence[int],
                      options: Sequence[str]) -> list[OptionScore]:
        """Every option's log-likelihood (summed over its spellings) after both prompts."""
        tok = self.lm.tokenizer
        out = []
        for option in options:
            spelled = [tok(s, add_special_tokens=False)["input_ids"] or [0] for s in spellings(option)]
            sums = [[sum(self._answer_logprobs(list(prefix), ids)) for ids in spelled]
                    for prefix in (prompt_ids, neutral_ids)]
            asked, neutral = (float(torch.logsumexp(torch.tensor(s), 0)) for s in sums)
            out.append(OptionScore(asked, len(spelled[0]), neutral, len(spelled[0])))
        return out

    def _answer_logprobs(self, prefix: list[int], answer: list[int]) -> list[float]:
        seq = SCORING_SEQUENCE
        with self.forward.busy:
            return self._logprobs_in(seq, prefix, answer)

    def _logprobs_in(self, seq: int, prefix: list[int], answer: list[int]) -> list[float]:
        try:  # the logits that predict the answer's tokens: from the prompt's last position on
            at = torch.from_numpy(self.forward.prefill(seq, prefix + answer, logits_from=len(prefix) - 1)).float()
        finally:
            self.forward.free(seq)
        return torch.log_softmax(at[:len(answer)], dim=-1).gather(1, torch.tensor(answer)[:, None]).squeeze(1).tolist()


class LlamaCppSession:
    """Requests decoded step by step in llama.cpp's one KV cache (the module docstring).

    A waiting request is admitted when its rows get sequence ids, its cells fit (its prompt once and every
    row's new tokens, besides what the running requests may take and a reserve for scoring given answers
    between steps) and the running rows plus its own stay within ``max_rows``; the first request is always
    admitted (a request the cache cannot hold fails in llama.cpp with its own error).
    """

    SCORING_CELLS = 512  # kept free while requests run: choices and scoring between two steps

    def __init__(self, generator: LlamaCppGenerator, max_rows: int):
        self.generator, self.max_rows = generator, max(1, min(max_rows, SCORING_SEQUENCE))
        self.waiting: deque[tuple[Hashable, GenerationRequest]] = deque()
        self.free = list(range(SCORING_SEQUENCE))  # SCORING_SEQUENCE scores given answers
        self.running: list[_Running] = []

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def submit(self, request: GenerationRequest, key: Hashable) -> None:
        if request.rows > SCORING_SEQUENCE:
            raise ValueError(f"a request of {request.rows} rows: llama.cpp's forward decodes at most "
                             f"{SCORING_SEQUENCE} rows at once")
        self.waiting.append((key, request))

    def close(self) -> None:
        """Free the running rows' cells (their sequence ids serve the next session) and drop what waits."""
        with self.generator.forward.busy:
            for run in self.running:
                for seq in run.seqs:
                    self.generator.forward.free(seq)
            self.running, self.waiting = [], deque()
            self.free = list(range(SCORING_SEQUENCE))

    def step(self) -> list[tuple[Hashable, Batch]]:
        gen = self.generator
        with gen.forward.busy:
            while self.waiting and (not self.running or self._fits(self.waiting[0][1])):
                key, request = self.waiting.popleft()
                self.running.append(gen._admit(key, request, [self.free.pop(0) for _ in range(request.rows)]))
            done, entries = [], []
            for run in list(self.running):
                self.free.extend(gen._sample(run))
                self.free.extend(gen._watch(run))
                if gen._request_ended(run):
                    self.running.remove(run)
                    batch, held = gen._finish(run)
                    self.free.extend(held)
                    done.append((run.index, batch))
                    continue
                position = len(run.request.prompt_ids) + run.steps - 1
                for row, seq in enumerate(run.seqs):
                    if not run.ended[row]:
                        entries.append((run, row, run.tokens[row][-1], position, seq))
            if entries:
                logits = torch.from_numpy(gen.forward.step([e[2] for e in entries], [e[3] for e in entries],
                                                           [e[4] for e in entries]))
                for k, (run, row, *_) in enumerate(entries):
                    run.logits[row] = logits[k]
        return done

    def _fits(self, request: GenerationRequest) -> bool:
        rows = sum(sum(not ended for ended in run.ended) for run in self.running)
        cells = sum(run.cells for run in self.running) + self.SCORING_CELLS
        need = len(request.prompt_ids) + request.rows * request.max_new_tokens
        return (request.rows <= len(self.free) and rows + request.rows <= self.max_rows
                and cells + need <= self.generator.forward.n_ctx)
