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

"""The on-board generator: the generation seam implemented by the step-driven decode engine.

``TorchGenerator.session`` opens an :class:`EngineSession`: requests submitted to one
:class:`~sage_irp_ros.decoding.engine.DecodeEngine`, each pulled as it finishes, and requests submitted
later join between two steps (``generate_many`` is a session run to its end). Decoding is memory-bound
on an accelerator, so rows of several requests cost little more than one, and a request waiting for free
slots joins as soon as rows leave. The engine is kept
between calls (one per shape: its static cache keeps its addresses, which a compiled step's CUDA graph
holds). It turns the rows' tokens into :class:`~sage_irp_ros.decoding.generator.Candidate` objects: text
up to end-of-sequence, the untempered log-probs of the kept tokens (and of the end-of-sequence token,
which is part of the model's answer).
"""

from __future__ import annotations

import threading
from typing import Hashable, Sequence

import torch

from sage_irp_ros.answers.choices import OptionScore, spellings
from sage_irp_ros.compat import hf_compat
from sage_irp_ros.decoding.decode import Decoded, decode_simple
from sage_irp_ros.decoding.engine import CacheIgnored, DecodeEngine, StopRule
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest, decode_all
from sage_irp_ros.decoding.slots import StepFn
from sage_irp_ros.weights.loader import LoadedModel

MAX_SLOTS = 32  # rows decoded at once; a request beyond them waits for free slots


class TorchGenerator:
    """Candidates from the resident model, decoded by the step-driven engine."""

    def __init__(self, lm: LoadedModel, *, step_fn: StepFn | None = None, static_cache: bool = True,
                 max_slots: int = MAX_SLOTS, stop_rule: StopRule | None = None):
        """``step_fn``: a replacement for the eager step (a compiled step); ``static_cache``: False decodes
        with transformers' dynamic cache, one request at a time (the same tokens; for models a static cache
        cannot hold); ``max_slots``: the engine's most rows; ``stop_rule``: the engine's hook that drops
        rows between steps."""
        self.lm, self.step_fn, self.static_cache = lm, step_fn, static_cache
        self.max_slots, self.stop_rule = max_slots, stop_rule
        eos = lm.tokenizer.eos_token_id
        self.eos_ids = [i for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]
        self._engine: DecodeEngine | None = None
        self._lock = threading.Lock()  # one decode at a time over the resident model

    @property
    def pad_id(self) -> int:
        tokenizer = self.lm.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]

    @property
    def slot_engine(self) -> bool:
        """Whether requests decode in the slot engine (a static cache the model's forward takes)."""
        return self.static_cache and hf_compat.cache_argument(self.lm.model) is not None

    def generate(self, request: GenerationRequest) -> Batch:
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Batch]:
        """Every request's rows in one engine, one :class:`Batch` per request in order."""
        return decode_all(self.session(sum(r.rows for r in requests)), requests)

    def session(self, max_rows: int) -> "EngineSession":
        """A :class:`EngineSession` over the resident model, for up to ``max_rows`` rows at once."""
        return EngineSession(self, max_rows)

    def _engine_for(self, requests: Sequence[GenerationRequest], spare_rows: int = 0) -> DecodeEngine:
        """The engine of the shape these requests need (the kept one where it has it): slots for every row
        and ``spare_rows`` more, up to ``max_slots`` (never fewer than the largest request)."""
        most = max(r.rows for r in requests)
        rows = max(most, min(sum(r.rows for r in requests) + spare_rows, self.max_slots))
        # room for any of them to join whatever the others' prompts: the longest prompt + the most new tokens
        length = max(len(r.prompt_ids) for r in requests) + max(r.max_new_tokens for r in requests)
        shapes = getattr(self.step_fn, "shapes", None)
        capacity, length = shapes(rows, length) if shapes is not None else (rows, length)
        pooled = getattr(self.step_fn, "pooled_cache", None)
        cache = pooled(capacity, length) if pooled is not None else None
        engine = self._engine
        if (engine is None or engine.busy or engine.capacity != capacity or engine.length != length
                or (cache is not None and engine.slots.cache is not cache)):
            engine = DecodeEngine(self.lm.model, capacity=capacity, length=length, eos_ids=self.eos_ids,
                                  pad_id=self.pad_id, step_fn=self.step_fn, stop_rule=self.stop_rule, cache=cache)
            self._engine = engine
        return engine

    def _batch(self, request: GenerationRequest, out: Decoded) -> Batch:
        candidates = [self._candidate(out.tokens[i].tolist(), out.logprobs[i].tolist(), request.temperatures[i])
                      for i in range(request.rows)]
        return Batch(candidates, out.prefill_s, out.decode_s, out.stopped_early, step=out.step)

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], text: str) -> Candidate:
        """Untempered log-probs of a given answer after the prompt (one forward pass)."""
        lm = self.lm
        answer_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([list(prompt_ids) + answer_ids], dtype=torch.long, device=lm.device)
        logits = lm.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt_ids):, None]).squeeze(1)
        return Candidate(text=text, temperature=1.0, token_ids=answer_ids,
                         token_logprobs=logprobs.cpu().tolist(), finished=True)

    @torch.inference_mode()
    def score_options(self, prompt_ids: Sequence[int], neutral_ids: Sequence[int],
                      options: Sequence[str]) -> list[OptionScore]:
        """Every option's log-likelihood after ``prompt_ids`` and after ``neutral_ids``, in ONE forward:
        rows = options x spellings x the two prompts, right-padded (causal attention: the padding after a
        row's tokens changes none of its log-probs)."""
        lm = self.lm
        tok = lm.tokenizer
        spelled = [[tok(s, add_special_tokens=False)["input_ids"] or [0] for s in spellings(o)] for o in options]
        rows = [(list(prefix), ids) for prefix in (prompt_ids, neutral_ids) for group in spelled for ids in group]
        width = max(len(p) + len(a) for p, a in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([p + a + [pad] * (width - len(p) - len(a)) for p, a in rows], device=lm.device)
        mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in rows],
                            device=lm.device)
        logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        sums = []
        for row, (prefix, answer) in enumerate(rows):
            at = torch.arange(len(prefix) - 1, len(prefix) + len(answer) - 1, device=lm.device)
            sums.append(float(logp[row, at, torch.tensor(answer, device=lm.device)].sum()))
        out, index, half = [], 0, len(rows) // 2
        for group in spelled:
            asked = torch.logsumexp(torch.tensor(sums[index:index + len(group)]), 0)
            neutral = torch.logsumexp(torch.tensor(sums[half + index:half + index + len(group)]), 0)
            out.append(OptionScore(float(asked), len(group[0]), float(neutral), len(group[0])))
            index += len(group)
        return out

    def _candidate(self, tokens: list[int], logprobs: list[float], temperature: float) -> Candidate:
        end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        finished = end is not None
        kept = tokens[:end] if finished else tokens
        scored = logprobs[:end + 1] if finished else logprobs[:len(tokens)]
        text = self.lm.tokenizer.decode(kept, skip_special_tokens=True)
        return Candidate(text=text, temperature=float(temperature), token_ids=kept,
                         token_logprobs=scored, finished=finished)


class EngineSession:
    """The decode session of a :class:`TorchGenerator`: requests join its :class:`DecodeEngine` between steps.

    The engine is shaped when a step finds it idle with requests waiting: slots for the waiting rows (on
    CUDA, where a free slot costs almost nothing, up to ``max_rows`` more, so later questions join at once;
    on a CPU every slot costs compute, so it fits the rows that start it), positions for the longest prompt
    and the most new tokens. With the eager step, requests that arrive while it decodes grow it (more slots
    and positions, the running rows kept in place) and join at the next step; with a compiled step, built
    for one shape, a request that does not fit the running engine waits for it to drain.
    A model whose forward ignores the cache is decoded one request per step (``decode_simple``).
    """

    def __init__(self, generator: TorchGenerator, max_rows: int):
        self.generator, self.max_rows = generator, max(1, max_rows)
        self.engine: DecodeEngine | None = None
        self.waiting: list[tuple[Hashable, GenerationRequest]] = []  # not yet given to the engine
        self.inside: dict[Hashable, GenerationRequest] = {}  # given to the engine, not finished

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or bool(self.inside)

    def submit(self, request: GenerationRequest, key: Hashable) -> None:
        self.waiting.append((key, request))

    def close(self) -> None:
        """Drop what waits and decodes; an engine left with rows is not kept for the next session."""
        gen = self.generator
        with gen._lock:
            if self.engine is not None and self.engine.busy and gen._engine is self.engine:
                gen._engine = None
            self.engine, self.waiting, self.inside = None, [], {}

    def step(self) -> list[tuple[Hashable, Batch]]:
        gen = self.generator
        with gen._lock:
            if not gen.slot_engine:
                return self._step_simple()
            if self.engine is None or not self.engine.busy:
                if self.waiting:
                    spare = self.max_rows - sum(r.rows for _, r in self.waiting) if gen.lm.device.type == "cuda" else 0
                    self.engine = gen._engine_for([r for _, r in self.waiting], max(0, spare))
            engine = self.engine
            if engine is None:
                return []
            if gen.step_fn is None and self.waiting and engine.busy:  # eager: room for them at once
                engine.grow(min(gen.max_slots, len(engine.occupied) + sum(r.rows for _, r in self.waiting)),
                            max(len(r.prompt_ids) + r.max_new_tokens for _, r in self.waiting))
            for key, request in list(self.waiting):
                need = len(request.prompt_ids) + request.max_new_tokens
                if request.rows <= engine.capacity and need <= engine.length:
                    engine.submit(request, key)
                    self.inside[key] = request
                    self.waiting.remove((key, request))
            try:
                finished = engine.step()
            except CacheIgnored:
                gen.static_cache, gen._engine, self.engine = False, None, None
                self.waiting[:0] = list(self.inside.items())  # decoded again, one at a time
                self.inside.clear()
                return []
            out = []
            for done in finished:
                done.decoded.step = done.step
                del self.inside[done.key]
                out.append((done.key, gen._batch(done.request, done.decoded)))
            return out

    def _step_simple(self) -> list[tuple[Hashable, Batch]]:
        if not self.waiting:
            return []
        gen = self.generator
        key, request = self.waiting.pop(0)
        out = decode_simple(gen.lm.model, request, eos_ids=gen.eos_ids, pad_id=gen.pad_id,
                            cache=gen.static_cache is False)
        return [(key, gen._batch(request, out))]
