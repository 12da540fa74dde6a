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

"""What every decode path shares (sampling, the result type) and :func:`decode`, one request decoded.

Every local path decodes in :class:`~sage_irp_ros.decoding.engine.DecodeEngine`, the step-driven engine over
row slots in one static KV cache. The one exception is a model a static cache cannot serve (its ``forward``
takes no cache argument, or ignores the one it gets, or the caller asks for a dynamic cache): it is
decoded by :func:`decode_simple`, a plain loop over one request (each step runs the whole sequence when
there is no cache), with the same sampling and the same limits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from sage_irp_ros.compat import hf_compat
from sage_irp_ros.decoding.generator import GenerationRequest, TokenConstraint


@dataclass
class Decoded:
    """Tokens and untempered log-probs of every row, and how long the phases took."""

    tokens: torch.Tensor  # (rows, steps) on CPU; rows that ended early are padded after their last token
    logprobs: torch.Tensor  # (rows, steps) float32 on CPU (0.0 in the padding)
    prefill_s: float
    decode_s: float
    stopped_early: bool  # the deadline or a cancel request cut decoding short
    step: str = "eager"  # "compiled" when every step ran through the compiled step


def sample(logits: torch.Tensor, temperatures: torch.Tensor, greedy: torch.Tensor,
           allowed: torch.Tensor | None = None, *, inverse_cdf: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row at its temperature (argmax where ``greedy``) -> (tokens, untempered log-probs).

    ``allowed``: the logits with forbidden tokens at -inf (constraints); tokens are drawn from it, while
    the log-prob recorded is the unconstrained model's. Several rows (and one row with ``inverse_cdf``)
    draw by the inverse CDF, one uniform number per row, where ``multinomial`` draws one exponential per
    vocabulary entry (on a CPU a twelfth of a 4-row step and a sixth of a 16-row one); one row otherwise
    draws with ``multinomial``, generate's arithmetic, so a seed draws the tokens ``generate`` draws.
    """
    logits = logits.float()
    draw = logits if allowed is None else allowed.float()
    probs = torch.softmax(draw / temperatures, dim=-1)
    if probs.shape[0] == 1 and not inverse_cdf:
        sampled = torch.multinomial(probs, 1).squeeze(1)
    else:
        cdf = probs.cumsum_(dim=-1)
        u = torch.rand((cdf.shape[0], 1), device=cdf.device) * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    tokens = torch.where(greedy, draw.argmax(dim=-1), sampled)
    return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def constrained(logits: torch.Tensor, constraints: Sequence[TokenConstraint | None], generated: Sequence[list[int]],
                end_id: int) -> torch.Tensor | None:
    """``logits`` with each row's constraint applied (None when no row has one); a row left with no allowed
    token may only take ``end_id``: a dead end ends its row, never the call."""
    if not any(c is not None for c in constraints):
        return None
    allowed = logits.clone()
    for i, constraint in enumerate(constraints):
        if constraint is None:
            continue
        allowed[i] = constraint.mask(generated[i], allowed[i])
        if not bool(torch.isfinite(allowed[i]).any()):
            allowed[i] = torch.full_like(allowed[i], float("-inf"))
            allowed[i, end_id] = 0.0
    return allowed


def decode(model, request: GenerationRequest, *, eos_ids: Sequence[int], pad_id: int,
           static_cache: bool = True, step_fn=None) -> Decoded:
    """Decode every row of ``request`` alone: in a :class:`~sage_irp_ros.decoding.engine.DecodeEngine` of
    its own shape (``step_fn``'s bucketed shape when it has ``shapes``), or by :func:`decode_simple` where
    a static cache cannot serve the model."""
    from sage_irp_ros.decoding.engine import CacheIgnored, DecodeEngine

    if static_cache and hf_compat.cache_argument(model) is not None:
        length = len(request.prompt_ids) + request.max_new_tokens
        shapes = getattr(step_fn, "shapes", None)
        capacity, length = shapes(request.rows, length) if shapes is not None else (request.rows, length)
        engine = DecodeEngine(model, capacity=capacity, length=length, eos_ids=eos_ids, pad_id=pad_id,
                              step_fn=step_fn)
        engine.submit(request)
        try:
            done = next(iter(engine.run()))
        except CacheIgnored:
            return decode_simple(model, request, eos_ids=eos_ids, pad_id=pad_id, cache=False)
        done.decoded.step = done.step
        return done.decoded
    return decode_simple(model, request, eos_ids=eos_ids, pad_id=pad_id, cache=static_cache is False)


@torch.inference_mode()
def decode_simple(model, request: GenerationRequest, *, eos_ids: Sequence[int], pad_id: int,
                  cache: bool = True) -> Decoded:
    """One request's rows with transformers' dynamic cache (``cache``; where the model takes one), else by
    running the whole sequence each step. Stops when every row ended, at ``max_new_tokens``, or (after the
    current token) at the deadline or cancel."""
    device = next(model.parameters()).device
    rows = request.rows
    temps = torch.tensor(list(request.temperatures), dtype=torch.float32, device=device)
    greedy = temps <= 0.0
    temps = torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    end_id = int(eos[0]) if eos.numel() else pad_id
    prompt = torch.tensor([list(request.prompt_ids)], dtype=torch.long, device=device)
    start = time.monotonic()
    kv = hf_compat.new_cache(model, 0, False) if cache else None
    out = model(input_ids=prompt, use_cache=kv is not None, **hf_compat.cache_kwargs(model, kv))
    if kv is not None and hf_compat.cache_length(kv) != prompt.shape[1]:
        kv = None
    if kv is not None and rows > 1:
        hf_compat.repeat_cache_rows(kv, rows)
    logits = out.logits[:, -1].expand(rows, -1)
    sequence, first = prompt.expand(rows, -1), time.monotonic()
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    out_tokens, out_logp, stopped = [], [], False
    for index in range(request.max_new_tokens):
        if index < request.min_new_tokens and eos.numel():
            logits = logits.index_fill(1, eos, float("-inf"))
        allowed = _constrain(logits, request.constraints, generated, finished, end_id)
        tokens, logp = sample(logits, temps, greedy, allowed)
        tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
        out_tokens.append(tokens)
        out_logp.append(torch.where(finished, torch.zeros_like(logp), logp))
        finished |= torch.isin(tokens, eos) | ((tokens == end_id) if allowed is not None else False)
        for row, token in enumerate(tokens.tolist()):
            generated[row].append(token)
        if index + 1 == request.max_new_tokens or bool(finished.all()):
            break
        cancel, deadline = request.cancel, request.deadline
        if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            stopped = True
            break
        sequence = torch.cat([sequence, tokens[:, None]], dim=1)
        if kv is None:  # no KV cache: run the whole sequence again
            logits = model(input_ids=sequence).logits[:, -1]
        else:
            logits = model(input_ids=tokens[:, None], position_ids=torch.full((rows, 1), sequence.shape[1] - 1,
                           device=device), use_cache=True, **hf_compat.cache_kwargs(model, kv)).logits[:, -1]
    end = time.monotonic()
    tokens = torch.stack(out_tokens, 1).cpu() if out_tokens else torch.empty((rows, 0), dtype=torch.long)
    logprobs = torch.stack(out_logp, 1).float().cpu() if out_logp else torch.empty((rows, 0))
    return Decoded(tokens, logprobs, prefill_s=first - start, decode_s=end - first, stopped_early=stopped)


def _constrain(logits: torch.Tensor, constraints, generated: list[list[int]], finished: torch.Tensor,
               end_id: int) -> torch.Tensor | None:
    """Each unfinished row's constraint applied (None when no row has one); a dead end gets ``end_id``."""
    if not constraints or not any(constraints):
        return None
    allowed, done = logits.clone(), finished.tolist()
    for row, constraint in enumerate(constraints):
        if constraint is None or done[row]:
            continue
        allowed[row] = constraint.mask(generated[row], allowed[row])
        if not bool(torch.isfinite(allowed[row]).any()):
            allowed[row] = torch.full_like(allowed[row], float("-inf"))
            allowed[row, end_id] = 0.0
    return allowed
