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

"""Several row groups with their own prompts in one batched decode: the decode loop for many askers.

A group is one :class:`~sage_irp_ros.decoding.generator.GenerationRequest`: a prompt, its rows (temperatures),
its own deadline, cancel, constraints, ``min_new_tokens`` and ``max_new_tokens``. Decoding is
memory-bound, so rows of four questions cost little more than the rows of one; this loop lets them share
every step.

Layout of the one static KV cache (``width`` = the longest prompt)::

    slot   0 .. L_g-1        L_g .. width-1         width, width+1, ...
           group g's prompt  masked (right padding)  the tokens decoded, one slot per step for every row

1. the distinct prompts are prefilled ONCE each, as one right-padded batch without an attention mask:
   causal attention means the padding after a prompt changes none of its positions, so every prompt's
   last logits are those of prefilling it alone;
2. the prompt rows are repeated to one row per candidate (:func:`hf_compat.select_cache_rows`);
3. each step feeds every row its own position (``L_g + step``) while all rows write the same slot; a
   2-D attention mask hides each row's padding slots. Keys carry their rotary position, so where a key
   sits in the cache changes nothing;
4. a group ends when its rows have all ended, at its ``max_new_tokens``, its deadline or its cancel; it
   is handed to ``on_done`` at once (its question can be answered while the others decode), its rows
   leave the batch (the cache, mask and row state are compacted) and the others go on.

A greedy row gets the tokens it gets decoded alone (test_decode_groups) up to float rounding of the
padded attention. Sampled rows draw from the same tempered distribution, not the same tokens: a seed's
random numbers are spread over other rows. The compiled step is not used here: its fixed shapes serve
one prompt's rows (:mod:`decode`); a lone request is decoded there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from sage_irp_ros.compat import hf_compat
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.decode import Decoded, constrain, sample


@dataclass
class _Group:
    """One request's bookkeeping while the batch decodes."""

    request: GenerationRequest
    tokens: list[list[int]] = field(default_factory=list)  # per row (also what its constraints read)
    logprobs: list[list[float]] = field(default_factory=list)
    done: bool = False
    stopped: bool = False  # the deadline or cancel cut it short
    end: float = 0.0


def supports_groups(model, static_cache: bool) -> bool:
    """True when ``model`` can decode several prompts in one batch here (a static KV cache argument)."""
    return static_cache and hf_compat.cache_argument(model) is not None


def step_masked(model, tokens: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor,
                slot: int) -> torch.Tensor:
    """One decoding step with per-row positions and a (rows, cache length) attention mask; every row
    writes cache slot ``slot``."""
    return model(input_ids=tokens[:, None], position_ids=positions, attention_mask=mask, use_cache=True,
                 **hf_compat.cache_kwargs(model, cache),
                 **hf_compat.cache_position_kwargs(model, slot, 1, tokens.device)).logits[:, -1]


@torch.inference_mode()
def decode_groups(model, requests: Sequence[GenerationRequest], *, eos_ids: Sequence[int], pad_id: int,
                  on_done: Callable[[int, Decoded], None] | None = None) -> list[Decoded]:
    """Decode every group of ``requests`` in one batch; one :class:`Decoded` per request, in order.
    ``on_done(index, decoded)`` is called as each group ends, while the others go on decoding."""
    device = next(model.parameters()).device
    lengths = [len(r.prompt_ids) for r in requests]
    width, max_new = max(lengths), max(r.max_new_tokens for r in requests)
    start = time.monotonic()
    cache = hf_compat.new_cache(model, width + max_new, True)
    prompts = torch.tensor([list(r.prompt_ids) + [pad_id] * (width - n) for r, n in zip(requests, lengths)],
                           dtype=torch.long, device=device)
    last = torch.tensor([n - 1 for n in lengths], dtype=torch.long, device=device)
    keep = torch.unique(last)  # sorted: the positions whose logits some prompt needs
    logits = model(input_ids=prompts, use_cache=True, **hf_compat.cache_kwargs(model, cache),
                   **hf_compat.cache_position_kwargs(model, 0, width, device),
                   **hf_compat.prefill_kwargs(model, keep)).logits
    column = torch.searchsorted(keep, last) if logits.shape[1] == keep.numel() else last
    logits = logits[torch.arange(len(requests), device=device), column]
    groups = [_Group(r, [[] for _ in range(r.rows)], [[] for _ in range(r.rows)]) for r in requests]
    owner = [g for g, request in enumerate(requests) for _ in range(request.rows)]
    row_group = torch.tensor(owner, dtype=torch.long, device=device)
    hf_compat.select_cache_rows(cache, row_group)
    logits = logits.index_select(0, row_group)
    first_step = time.monotonic()
    state = _Rows.build(groups, lengths, width, width + max_new, device)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    end_id = int(eos[0]) if eos.numel() else pad_id
    out: list[Decoded | None] = [None] * len(requests)
    is_eos = torch.isin(torch.arange(logits.shape[1], device=device), eos)[None, :]
    for index in range(max_new):
        banned = state.min_new > index
        if eos.numel() and bool(banned.any()):
            logits = logits.masked_fill(banned[:, None] & is_eos, float("-inf"))
        allowed = (constrain(logits, state.constraints, state.generated, state.finished, end_id)
                   if any(c is not None for c in state.constraints) else None)
        tokens, logp = sample(logits, state.temps, state.greedy, allowed)
        tokens = torch.where(state.finished, torch.full_like(tokens, pad_id), tokens)
        state.finished |= torch.isin(tokens, eos)
        if allowed is not None:
            state.finished |= tokens == end_id
        token_list, logp_list, finished = tokens.tolist(), logp.tolist(), state.finished.tolist()
        now = time.monotonic()
        for i, (g, r) in enumerate(state.slots):
            groups[g].tokens[r].append(token_list[i])
            groups[g].logprobs[r].append(logp_list[i])
        ended = _end_groups(groups, state, finished, index, now)
        for g in ended:
            out[g] = _decoded(groups[g], first_step - start, first_step)
            if on_done is not None:
                on_done(g, out[g])
        if all(group.done for group in groups):
            break
        if ended:
            keep_rows = torch.tensor([i for i, (g, _) in enumerate(state.slots) if not groups[g].done],
                                     dtype=torch.long, device=device)
            hf_compat.select_cache_rows(cache, keep_rows)
            state = state.select(keep_rows)
            tokens = tokens.index_select(0, keep_rows)
        logits = step_masked(model, tokens, state.positions, cache, state.mask, width + index)
        state.positions += 1
    return [decoded if decoded is not None else _decoded(group, first_step - start, first_step)
            for decoded, group in zip(out, groups)]


def _decoded(group: _Group, prefill_s: float, first_step: float) -> Decoded:
    rows = group.request.rows
    return Decoded(torch.tensor(group.tokens, dtype=torch.long).reshape(rows, -1),
                   torch.tensor(group.logprobs, dtype=torch.float32).reshape(rows, -1), prefill_s=prefill_s,
                   decode_s=(group.end or time.monotonic()) - first_step, stopped_early=group.stopped)


def _end_groups(groups: list[_Group], state: "_Rows", finished: list[bool], index: int, now: float) -> list[int]:
    """Mark the groups that end after step ``index``; returns their indices."""
    ended = []
    for g, group in enumerate(groups):
        if group.done:
            continue
        mine = [i for i, (owner, _) in enumerate(state.slots) if owner == g]
        request = group.request
        complete = all(finished[i] for i in mine) or index + 1 >= request.max_new_tokens
        stopped = ((request.cancel is not None and request.cancel.is_set())
                   or (request.deadline is not None and now >= request.deadline))
        if complete or stopped:
            group.done, group.end, group.stopped = True, now, not complete
            ended.append(g)
    return ended


@dataclass
class _Rows:
    """Per-row tensors and lists of the rows still decoding, in batch order."""

    slots: list[tuple[int, int]]  # (group, row within the group)
    temps: torch.Tensor
    greedy: torch.Tensor
    min_new: torch.Tensor
    finished: torch.Tensor
    positions: torch.Tensor  # (rows, 1)
    mask: torch.Tensor  # (rows, cache length)
    constraints: list
    generated: list[list[int]]  # each row's tokens so far: its group's own lists, not copies

    @classmethod
    def build(cls, groups: Sequence[_Group], lengths: list[int], width: int, cache_len: int,
              device: torch.device) -> "_Rows":
        slots, temps, mins, positions, constraints = [], [], [], [], []
        for g, group in enumerate(groups):
            request = group.request
            for r, t in enumerate(request.temperatures):
                slots.append((g, r))
                temps.append(float(t))
                mins.append(request.min_new_tokens)
                positions.append(lengths[g])
                constraints.append(request.constraints[r] if request.constraints else None)
        temps_t = torch.tensor(temps, dtype=torch.float32, device=device)
        greedy = temps_t <= 0.0
        mask = torch.ones((len(slots), cache_len), dtype=torch.long, device=device)
        for i, (g, _) in enumerate(slots):
            mask[i, lengths[g]:width] = 0
        return cls(slots, torch.where(greedy, torch.ones_like(temps_t), temps_t)[:, None], greedy,
                   torch.tensor(mins, device=device), torch.zeros(len(slots), dtype=torch.bool, device=device),
                   torch.tensor(positions, dtype=torch.long, device=device)[:, None], mask, constraints,
                   [groups[g].tokens[r] for g, r in slots])

    def select(self, rows: torch.Tensor) -> "_Rows":
        keep = rows.tolist()
        return _Rows([self.slots[i] for i in keep], self.temps.index_select(0, rows),
                     self.greedy.index_select(0, rows), self.min_new.index_select(0, rows),
                     self.finished.index_select(0, rows), self.positions.index_select(0, rows),
                     self.mask.index_select(0, rows), [self.constraints[i] for i in keep],
                     [self.generated[i] for i in keep])
