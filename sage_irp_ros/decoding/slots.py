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

"""The decode engine's row slots: one static KV cache of ``capacity`` rows x ``length`` positions.

Why one fixed cache: every tensor a decoding step touches keeps its shape and address whatever rows come
and go, so one compiled step (CUDA graphs included) serves every question. Layout of a slot's cache row::

    column  0 .. L-1              L .. c-1                  c (the cursor)
            its prompt (copied)   masked (not this row's)   the token every occupied row writes this step

- a row is **inserted** between two steps: its prompt's keys and values, prefilled once for all rows of
  its request, are copied into columns ``0 .. L-1`` of its slot; its mask row marks those columns;
  its position id is ``L``. The cursor moves up to ``L`` if it was below (the other rows get a masked gap);
- each **step** writes every row's new key at the cursor column with the row's own position id (keys
  carry their rotary position, so where a key sits in the cache changes nothing) and marks that column;
- a row **leaves** by being forgotten: its slot is free at once; the next row inserted there resets the
  slot's mask row;
- when the cursor would run past the end, :meth:`SlotCache.compact` moves each occupied row's valid
  columns to the front of its row (in place: the cache keeps its addresses).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from sage_irp_ros.compat import hf_compat

StepFn = Callable[..., torch.Tensor]  # (model, tokens, positions, cache, mask) -> (rows, vocab) logits


def step_masked(model, tokens: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """One eager decoding step: (rows,) tokens at (rows, 1) position ids under a (rows, length) mask ->
    (rows, vocab) logits. The write column is the cache's own fill level (5.x) or ``cache_position`` (4.x:
    the highest marked column, where the cursor is)."""
    slot = {}
    if hf_compat.takes_cache_position(model):
        column = int(mask[0].nonzero().max()) if bool(mask[0].any()) else 0
        slot = {"cache_position": torch.tensor([column], device=tokens.device)}
    return model(input_ids=tokens[:, None], position_ids=positions, attention_mask=mask, use_cache=True,
                 **hf_compat.cache_kwargs(model, cache), **slot).logits[:, -1]


class SlotCache:
    """The engine's KV cache, mask, position ids and write cursor (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, capacity: int, length: int, cache: Any = None):
        """``cache``: a static cache of exactly this shape to decode in (a compiled step's pooled one);
        default: one allocated at the first insert, with the prompt cache's heads and dtype."""
        self.model, self.capacity, self.length = model, capacity, length
        self.device = next(model.parameters()).device
        self.cache = cache
        with torch.inference_mode():  # as every step's tensors: a compiled step's guards see one kind
            self.mask = torch.zeros((capacity, length), dtype=torch.long, device=self.device)
            self.positions = torch.zeros((capacity, 1), dtype=torch.long, device=self.device)
        self.cursor = 0  # the column the next step writes, for every row
        self._synced = False  # the cache's own fill level equals the cursor

    def fits(self, prompt_len: int, steps: int) -> bool:
        """Whether a row of ``prompt_len`` prompt tokens and ``steps`` more steps fits from the cursor on."""
        return max(self.cursor, prompt_len) + steps <= self.length

    def reset(self) -> None:
        """No row is occupied: the next insert starts at column 0."""
        self.mask.zero_()
        self.cursor, self._synced = 0, False

    def prefill(self, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, Any]:
        """Run one prompt once into a one-row cache of its own length: its last (vocab,) logits and the cache
        (None when the model did not fill it: its forward ignores the cache it was given)."""
        prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        cache = hf_compat.new_cache(self.model, prompt.shape[1], True)
        logits = self.model(input_ids=prompt, use_cache=True, **hf_compat.cache_kwargs(self.model, cache),
                            **hf_compat.cache_position_kwargs(self.model, 0, prompt.shape[1], self.device),
                            **hf_compat.prefill_kwargs(self.model)).logits[0, -1]
        filled = cache is not None and hf_compat.cache_length(cache) == prompt.shape[1]
        return logits.float(), cache if filled else None

    def insert(self, slots: Sequence[int], prompt_cache: Any, prompt_len: int) -> None:
        """Copy a prefilled prompt into ``slots`` (each gets its own copy) at columns 0 .. prompt_len-1."""
        self._allocate(prompt_cache)
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        for source, target in zip(prompt_cache.layers, self.cache.layers):
            target.keys[index, :, :prompt_len] = source.keys[:, :, :prompt_len].to(target.keys.dtype)
            target.values[index, :, :prompt_len] = source.values[:, :, :prompt_len].to(target.values.dtype)
        self.mask[index] = 0
        self.mask[index, :prompt_len] = 1
        self.positions[index] = prompt_len
        if prompt_len > self.cursor:
            self.cursor, self._synced = prompt_len, False

    def compact(self, occupied: Sequence[int]) -> None:
        """Move each occupied row's marked columns to the front of its row, in order; the cursor follows."""
        if not occupied:
            self.reset()
            return
        rows = torch.tensor(list(occupied), dtype=torch.long, device=self.device)
        valid = self.mask.index_select(0, rows).bool()
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # marked columns first
        counts = valid.sum(dim=1)
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                rows_kv = tensor.index_select(0, rows)
                moved = rows_kv.gather(2, order[:, None, :, None].expand_as(rows_kv))
                tensor[rows] = moved
        columns = torch.arange(self.length, device=self.device)[None, :]
        self.mask.zero_()  # free rows too: no stale mark beyond the new cursor
        self.mask[rows] = (columns < counts[:, None]).to(self.mask.dtype)
        self.cursor, self._synced = int(counts.max()), False

    def step(self, step_fn: StepFn, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token for every slot (free slots too: their logits are never read) at the cursor."""
        self.mask[:, self.cursor] = 1
        if not self._synced:
            for layer in self.cache.layers:
                length = getattr(layer, "cumulative_length", None)
                if isinstance(length, torch.Tensor):  # 5.x: the cache's own write position
                    length.fill_(self.cursor)
            self._synced = True
        logits = step_fn(self.model, tokens, self.positions, self.cache, self.mask)
        self.positions += 1
        self.cursor += 1
        return logits

    def grown(self, capacity: int, length: int) -> "SlotCache":
        """A larger copy (more slots, more positions): every row keeps its columns, mask and position."""
        bigger = SlotCache(self.model, capacity, length)
        bigger.mask[:self.capacity, :self.length] = self.mask
        bigger.positions[:self.capacity] = self.positions
        bigger.cursor = self.cursor
        if self.cache is not None:
            layers = self.cache.layers
            bigger.cache = hf_compat.allocated_static_cache(
                self.model, capacity, length, [int(layer.keys.shape[1]) for layer in layers],
                [int(layer.keys.shape[3]) for layer in layers], layers[0].keys.dtype, self.device)
            for source, target in zip(layers, bigger.cache.layers):
                target.keys[:self.capacity, :, :self.length] = source.keys
                target.values[:self.capacity, :, :self.length] = source.values
        return bigger

    def _allocate(self, prompt_cache: Any) -> None:
        """The slot cache, shaped after the prompt cache's heads and dtype (once)."""
        if self.cache is not None:
            return
        layers = prompt_cache.layers
        self.cache = hf_compat.allocated_static_cache(
            self.model, self.capacity, self.length, [int(layer.keys.shape[1]) for layer in layers],
            [int(layer.keys.shape[3]) for layer in layers], layers[0].keys.dtype, self.device)
