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

"""The on-board generator: the generation seam implemented by the torch decode loop over a resident model.

``TorchGenerator.generate`` decodes every row of a request in one batched call (:mod:`decode`): decoding
is memory-bound, so N rows cost little more than one. It turns the rows' tokens into
:class:`~sage_irp_ros.decoding.generator.Candidate` objects: text up to end-of-sequence, the untempered
log-probs of the kept tokens (and of the end-of-sequence token, which is part of the model's answer).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest
from sage_irp_ros.answers.choices import OptionScore, spellings
from sage_irp_ros.decoding import decode
from sage_irp_ros.decoding.decode_groups import decode_groups, supports_groups
from sage_irp_ros.weights.loader import LoadedModel


class TorchGenerator:
    """Candidates from the resident model, one batched decode per request."""

    def __init__(self, lm: LoadedModel, *, step_fn: decode.StepFn | None = None, static_cache: bool = True):
        """``step_fn``: a replacement for :func:`decode.step` (a compiled step); ``static_cache``: False
        decodes with transformers' dynamic cache (the same tokens; for models a static cache cannot hold)."""
        self.lm, self.step_fn, self.static_cache = lm, step_fn, static_cache
        eos = lm.tokenizer.eos_token_id
        self.eos_ids = [i for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]

    @property
    def pad_id(self) -> int:
        tokenizer = self.lm.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]

    def generate(self, request: GenerationRequest) -> Batch:
        out = decode.decode(self.lm.model, request, eos_ids=self.eos_ids, pad_id=self.pad_id,
                            static_cache=self.static_cache, step_fn=self.step_fn)
        return self._batch(request, out)

    def generate_many(self, requests: Sequence[GenerationRequest],
                      on_done: Callable[[int, Batch], None] | None = None) -> list[Batch]:
        """Every request's rows in one batched decode (:mod:`decode_groups`); ``on_done(index, batch)`` as
        each request ends. A lone request, or a model without a static cache, goes through
        :func:`decode.decode` one request at a time."""
        if len(requests) == 1 or not supports_groups(self.lm.model, self.static_cache):
            batches = []
            for index, request in enumerate(requests):
                batches.append(self.generate(request))
                if on_done is not None:
                    on_done(index, batches[-1])
            return batches
        done: dict[int, Batch] = {}

        def finished(index: int, out: decode.Decoded) -> None:
            done[index] = self._batch(requests[index], out)
            if on_done is not None:
                on_done(index, done[index])

        outs = decode_groups(self.lm.model, requests, eos_ids=self.eos_ids, pad_id=self.pad_id, on_done=finished)
        return [done[i] if i in done else self._batch(r, out) for i, (r, out) in enumerate(zip(requests, outs))]

    def _batch(self, request: GenerationRequest, out: decode.Decoded) -> Batch:
        candidates = [self._candidate(out.tokens[i].tolist(), out.logprobs[i].tolist(), request.temperatures[i])
                      for i in range(request.rows)]
        return Batch(candidates, out.prefill_s, out.decode_s, out.stopped_early)

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
