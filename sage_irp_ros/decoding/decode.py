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

"""The one decode loop: N rows at N temperatures, one shared prefill, a static KV cache.

Every path that generates (the IRP engine, the benchmarks, the GPU check) runs this loop, in the style of
pytorch-labs/gpt-fast: only what best-of-N needs, no logits-processor machinery.

1. :func:`prefill` runs the prompt ONCE (batch 1, only the last position's logits) into a KV cache sized
   for prompt + ``max_new_tokens``; the cache is then repeated to N rows (``hf_compat``);
2. per step, :func:`sample` draws one token per row at that row's temperature (argmax for a
   temperature-0 row) and returns the token's log-probability under the *untempered* model (the model's
   own confidence, comparable across temperatures); end-of-sequence is banned before
   ``min_new_tokens``; optional per-row :class:`~sage_irp_ros.decoding.generator.TokenConstraint` masks restrict
   what a row may draw (the untempered log-prob is still the model's own); a finished row emits padding;
   then the deadline and cancel are checked;
3. :func:`step` runs one forward pass of the N new tokens.

The static cache keeps every tensor's address and shape fixed across steps, which is what a compiled
step (CUDA graphs) needs; ``step`` is the one function to hand to ``torch.compile``. A ``step_fn`` with a
``shapes(rows, length)`` method (:class:`~sage_irp_ros.decoding.compiled_step.CompiledStep`) fixes the shapes across
questions too: the cache gets the length it asks for and the step the rows it asks for, the rows above
the request's being padding rows that are stepped but never sampled (their logits are dropped). A model whose
``forward`` takes no KV cache is still driven by this loop: each step then runs the whole sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from sage_irp_ros.compat import hf_compat
from sage_irp_ros.decoding.generator import GenerationRequest, TokenConstraint

StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, object], torch.Tensor]

# Steps between checks whether every row has ended: ``bool(finished.all())`` waits for the device, which
# on CUDA stalls the queue of launches once per token; on the CPU it costs microseconds, so every step.
FINISHED_CHECK_EVERY = {"cpu": 1}
FINISHED_CHECK_DEFAULT = 8


@dataclass
class Decoded:
    """Tokens and untempered log-probs of every row, and how long the phases took."""

    tokens: torch.Tensor  # (rows, steps) on CPU; rows that finished early are padded after EOS
    logprobs: torch.Tensor  # (rows, steps) float32 on CPU
    prefill_s: float
    decode_s: float
    stopped_early: bool  # the deadline or a cancel request cut decoding short


def prefill(model, prompt: torch.Tensor, cache) -> torch.Tensor:
    """Run the (1, P) prompt once into ``cache`` (None: no cache); the last position's (1, vocab) logits."""
    return model(input_ids=prompt, use_cache=cache is not None, **hf_compat.cache_kwargs(model, cache),
                 **hf_compat.prefill_kwargs(model)).logits[:, -1]


def step(model, tokens: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
    """One decoding step: (rows,) new tokens at (rows, 1) positions -> (rows, vocab) logits. Every row
    has the same position, which is also the cache slot written (``cache_position`` on 4.x: a finished
    row's padding token may have a zero embedding, which 4.x would not count as a filled slot)."""
    slot = {"cache_position": positions[0]} if hf_compat.takes_cache_position(model) else {}
    return model(input_ids=tokens[:, None], position_ids=positions, use_cache=True,
                 **hf_compat.cache_kwargs(model, cache), **slot).logits[:, -1]


def sample(logits: torch.Tensor, temperatures: torch.Tensor, greedy: torch.Tensor,
           allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row at its temperature (argmax where ``greedy``) -> (tokens, untempered log-probs).

    ``allowed``: the logits with forbidden tokens at -inf (constraints); tokens are drawn from it, while
    the log-prob recorded is the unconstrained model's. One row draws with ``multinomial``, generate's
    arithmetic, so a seed draws the tokens ``generate`` draws; several rows draw the same distribution
    by its inverse CDF, one uniform number per row, where ``multinomial`` draws one exponential per
    vocabulary entry (on a CPU a twelfth of a 4-row step and a sixth of a 16-row one).
    """
    logits = logits.float()
    draw = logits if allowed is None else allowed.float()
    probs = torch.softmax(draw / temperatures, dim=-1)
    if probs.shape[0] == 1:
        sampled = torch.multinomial(probs, 1).squeeze(1)
    else:
        cdf = probs.cumsum_(dim=-1)
        u = torch.rand((cdf.shape[0], 1), device=cdf.device) * cdf[:, -1:]
        sampled = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    tokens = torch.where(greedy, draw.argmax(dim=-1), sampled)
    return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def constrain(logits: torch.Tensor, constraints: Sequence[TokenConstraint | None], generated: list[list[int]],
              finished: torch.Tensor, end_id: int) -> torch.Tensor:
    """Apply each unfinished row's constraint; a row left with no allowed token is given ``end_id``."""
    allowed = logits.clone()
    done = finished.tolist()
    for row, constraint in enumerate(constraints):
        if constraint is None or done[row]:
            continue
        allowed[row] = constraint.mask(generated[row], allowed[row])
        if not bool(torch.isfinite(allowed[row]).any()):  # a dead end: the row ends, the call goes on
            allowed[row] = torch.full_like(allowed[row], float("-inf"))
            allowed[row, end_id] = 0.0
    return allowed


@torch.inference_mode()
def decode(model, request: GenerationRequest, *, eos_ids: Sequence[int], pad_id: int,
           static_cache: bool = True, step_fn: StepFn | None = None) -> Decoded:
    """Decode every row of ``request``; stops when every row ended, at ``max_new_tokens``, or (after the
    current token) when the deadline passes or ``cancel`` is set."""
    device = next(model.parameters()).device
    rows, max_new = request.rows, request.max_new_tokens
    temps = torch.tensor(list(request.temperatures), dtype=torch.float32, device=device)
    greedy = temps <= 0.0  # temperature 0.0: argmax (the greedy row)
    temps = torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    end_id = int(eos[0]) if eos.numel() else pad_id
    constraints = request.constraints if request.constraints and any(request.constraints) else None
    prompt = torch.tensor([list(request.prompt_ids)], dtype=torch.long, device=device)
    start = time.monotonic()
    length = prompt.shape[1] + max_new
    shapes = getattr(step_fn, "shapes", None) if static_cache else None
    step_rows, cache_len = shapes(rows, length) if shapes is not None else (rows, length)
    cache = hf_compat.new_cache(model, cache_len, static_cache)
    logits = prefill(model, prompt, cache)
    if cache is not None and hf_compat.cache_length(cache) != prompt.shape[1]:
        hf_compat.warn_once(f"prefill-ignored:{type(model).__name__}",
                            f"{type(model).__name__} did not fill the KV cache it was given: every decoding "
                            "step runs the whole sequence (slow)")
        cache = None
    adopt = getattr(step_fn, "adopt_cache", None)  # a compiled step's own cache handling (rows, pooling)
    if cache is None:
        step_rows = rows
    elif adopt is not None:
        cache = adopt(cache, step_rows)
    elif step_rows > 1:
        hf_compat.repeat_cache_rows(cache, step_rows)
    padding = torch.full((step_rows - rows,), pad_id, dtype=torch.long, device=device) if step_rows > rows else None
    logits = logits.expand(rows, -1)
    step_fn = step_fn or step
    sequence = prompt.expand(rows, -1)  # only grown (and used) without a cache
    first = time.monotonic()
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    position = torch.full((step_rows, 1), prompt.shape[1], dtype=torch.long, device=device)
    check_every = FINISHED_CHECK_EVERY.get(device.type, FINISHED_CHECK_DEFAULT)
    generated: list[list[int]] = [[] for _ in range(rows)]
    out_tokens, out_logp, stopped = [], [], False
    for index in range(max_new):
        if index < request.min_new_tokens and eos.numel():
            logits = logits.index_fill(1, eos, float("-inf"))
        allowed = constrain(logits, constraints, generated, finished, end_id) if constraints else None
        tokens, logp = sample(logits, temps, greedy, allowed)
        tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
        out_tokens.append(tokens)
        out_logp.append(logp)
        finished |= torch.isin(tokens, eos)
        if allowed is not None:  # a row a constraint ended took end_id (padding for a model without EOS)
            finished |= tokens == end_id
        if constraints:
            for row, token in enumerate(tokens.tolist()):
                generated[row].append(token)
        if index + 1 == max_new or ((index + 1) % check_every == 0 and bool(finished.all())):
            break
        cancel, deadline = request.cancel, request.deadline
        if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            stopped = True
            break
        if cache is None:  # a model without a KV cache: run the whole sequence again
            sequence = torch.cat([sequence, tokens[:, None]], dim=1)
            logits = model(input_ids=sequence).logits[:, -1]
        elif padding is None:
            logits = step_fn(model, tokens, position, cache)
        else:  # padding rows keep the compiled shape; only the request's rows are sampled
            logits = step_fn(model, torch.cat([tokens, padding]), position, cache)[:rows]
        position += 1
    end = time.monotonic()
    tokens = torch.stack(out_tokens, 1).cpu() if out_tokens else torch.empty((rows, 0), dtype=torch.long)
    logprobs = torch.stack(out_logp, 1).float().cpu() if out_logp else torch.empty((rows, 0))
    return Decoded(tokens, logprobs, prefill_s=first - start, decode_s=end - first, stopped_early=stopped)
