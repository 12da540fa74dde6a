"""The engine's own decode loop: N rows at N temperatures, one shared prefill, a static KV cache.

``transformers``' ``generate`` runs a dozen logits processors, stopping criteria and bookkeeping in
Python at every step; for a 135M model on a small CPU that was a visible share of each token. This loop
does only what the IRP engine needs, in the style of pytorch-labs/gpt-fast:

1. prefill the prompt ONCE (batch 1, only the last position's logits) into a static KV cache sized for
   prompt + ``max_new_tokens``, then repeat the cache to N rows;
2. per step: untempered log-softmax of the logits (recorded for the sampled token: the model's own
   confidence, comparable across temperatures), per-row temperature, sampling (a row whose temperature
   is 0.0 is decoded greedily, its untempered log-probs still recorded), end-of-sequence handling
   (``min_new_tokens`` bans it; a finished row emits padding), then the deadline/cancel check;
3. one forward pass of the N new tokens.

The static cache keeps every tensor's address and shape fixed across steps, which is what a compiled
step (CUDA graphs) needs; ``step`` is the one function to hand to ``torch.compile``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, StaticCache

from . import hf_compat


@dataclass
class Decoded:
    """Tokens and untempered log-probs of every row, and how long the phases took."""

    tokens: torch.Tensor  # (rows, steps) on CPU; rows that finished early are padded after EOS
    logprobs: torch.Tensor  # (rows, steps) float32 on CPU
    prefill_s: float
    decode_s: float
    stopped_early: bool  # the deadline or a cancel request cut decoding short


def make_cache(model, max_len: int, static: bool = True):
    """A static KV cache of ``max_len`` positions (or a dynamic one when ``static`` is false)."""
    config = model.config
    return StaticCache(config=config, max_cache_len=max_len) if static else DynamicCache(config=config)


def prefill(model, prompt: torch.Tensor, cache, rows: int) -> torch.Tensor:
    """Run the (1, P) prompt once, repeat its cache to ``rows`` rows; returns (rows, vocab) logits."""
    logits = model(input_ids=prompt, use_cache=True, **hf_compat.cache_kwargs(model, cache),
                   **hf_compat.prefill_kwargs(model)).logits[:, -1]
    if rows > 1:
        repeat_rows(cache, rows)
    return logits.expand(rows, -1)


def repeat_rows(cache, rows: int) -> None:
    """Give every row its own copy of the batch-1 prompt cache (static or dynamic layers)."""
    if isinstance(cache, DynamicCache):
        cache.batch_repeat_interleave(rows)
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat(rows, 1, 1, 1)
        layer.values = layer.values.repeat(rows, 1, 1, 1)
        layer.batch_size = rows


def step(model, tokens: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step: (rows,) new tokens at (rows, 1) positions -> (rows, vocab) logits."""
    return model(input_ids=tokens[:, None], position_ids=positions, use_cache=True,
                 **hf_compat.cache_kwargs(model, cache)).logits[:, -1]


def choose(logits: torch.Tensor, temperatures: torch.Tensor, greedy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row at its temperature (argmax where ``greedy``); (tokens, untempered logp)."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    # softmax(logits / T) then multinomial: generate's arithmetic, so a seed draws the same tokens
    sampled = torch.multinomial(torch.softmax(logits / temperatures, dim=-1), 1).squeeze(1)
    tokens = torch.where(greedy, logp.argmax(dim=-1), sampled)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


@torch.inference_mode()
def decode(model, prompt_ids: Sequence[int], temperatures: Sequence[float], max_new_tokens: int, *,
           eos_ids: Sequence[int], pad_id: int, min_new_tokens: int = 0, deadline: float | None = None,
           cancel: threading.Event | None = None, static_cache: bool = True,
           step_fn: Callable | None = None) -> Decoded:
    """Decode ``len(temperatures)`` rows for one prompt; stops when every row ended, at
    ``max_new_tokens``, or (after the current token) when the deadline passes or ``cancel`` is set."""
    device = next(model.parameters()).device
    rows = len(temperatures)
    step_fn = step_fn or step
    temps = torch.tensor(list(temperatures), dtype=torch.float32, device=device)
    greedy = temps <= 0.0  # temperature 0.0: argmax (the greedy row)
    temps = torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    start = time.monotonic()
    cache = make_cache(model, prompt.shape[1] + max_new_tokens, static_cache)
    logits = prefill(model, prompt, cache, rows)
    first = time.monotonic()
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    position = torch.full((rows, 1), prompt.shape[1], dtype=torch.long, device=device)
    out_tokens, out_logp, stopped = [], [], False
    for index in range(max_new_tokens):
        if index < min_new_tokens and eos.numel():
            logits = logits.index_fill(1, eos, float("-inf"))
        tokens, logp = choose(logits, temps, greedy)
        tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
        out_tokens.append(tokens)
        out_logp.append(logp)
        finished |= torch.isin(tokens, eos)
        if index + 1 == max_new_tokens or bool(finished.all()):
            break
        if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            stopped = True
            break
        logits = step_fn(model, tokens, position, cache)
        position += 1
    end = time.monotonic()
    tokens = torch.stack(out_tokens, 1).cpu() if out_tokens else torch.empty((rows, 0), dtype=torch.long)
    logprobs = torch.stack(out_logp, 1).float().cpu() if out_logp else torch.empty((rows, 0))
    return Decoded(tokens, logprobs, prefill_s=first - start, decode_s=end - first, stopped_early=stopped)
