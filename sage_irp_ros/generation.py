"""Sample N candidate answers at N temperatures in ONE ``generate`` call.

The research loop called ``generate`` once per candidate; decoding is memory-bound, so one batched
call of N rows costs little more than one row. A logits processor divides each row by its own
temperature and, on the way, records the log-probability of every sampled token under the
*untempered* distribution — the model's own confidence, comparable across temperatures, gathered
step by step so no full-vocabulary logits are kept (an 8 GB Jetson cannot afford N x vocab x steps).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from . import hf_compat
from .model_loader import LoadedModel


@dataclass
class Candidate:
    """One sampled answer with its untempered token log-probabilities."""

    text: str
    temperature: float
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finished: bool = False  # the model produced end-of-sequence (the answer is complete)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Batch:
    """The candidates of one generate call and how long its phases took."""

    candidates: list[Candidate]
    prefill_s: float
    decode_s: float
    stopped_early: bool  # the deadline or a cancel request cut decoding short

    @property
    def tokens(self) -> int:
        return sum(c.n_tokens for c in self.candidates)


class RowTemperature(LogitsProcessor):
    """Divide row i's logits by temperature i; record untempered log-probs of the sampled tokens.

    A row whose temperature is 0.0 is decoded greedily: only its argmax token keeps a finite score,
    so the sampler cannot draw anything else (the log-prob recorded is still the untempered one).
    """

    def __init__(self, temperatures: Sequence[float], device: torch.device):
        temps = torch.tensor(list(temperatures), dtype=torch.float32, device=device)[:, None]
        self.greedy = temps <= 0.0  # (rows, 1)
        self.temperatures = torch.where(self.greedy, torch.ones_like(temps), temps)
        self.any_greedy = bool(self.greedy.any())
        self.steps: list[torch.Tensor] = []
        self.first_call: float | None = None
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first_call is None:
            self.first_call = time.monotonic()  # prefill has finished
        self._collect(input_ids[:, -1])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        tempered = scores / self.temperatures.to(scores.dtype)
        if self.any_greedy:
            argmax = torch.full_like(tempered, float("-inf")).scatter_(1, scores.argmax(dim=-1, keepdim=True), 0.0)
            tempered = torch.where(self.greedy, argmax, tempered)
        return tempered

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs of all sampled tokens, shape (rows, steps)."""
        self._collect(last_tokens)
        if not self.steps:
            return torch.empty((self.temperatures.shape[0], 0))
        return torch.stack(self.steps, dim=1).cpu()

    def _collect(self, tokens: torch.Tensor) -> None:
        if self._last is not None:
            self.steps.append(self._last.gather(1, tokens[:, None]).squeeze(1))
            self._last = None


class StopWhen(StoppingCriteria):
    """Stop every row once the deadline passes or a cancel event is set."""

    def __init__(self, deadline: float | None, cancel: threading.Event | None):
        self.deadline, self.cancel, self.fired = deadline, cancel, False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = (self.cancel is not None and self.cancel.is_set()) or (
            self.deadline is not None and time.monotonic() >= self.deadline)
        self.fired |= stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def sample_candidates(lm: LoadedModel, prompt_ids: Sequence[int], temperatures: Sequence[float],
                      max_new_tokens: int, *, min_new_tokens: int = 0, deadline: float | None = None,
                      cancel: threading.Event | None = None) -> Batch:
    """Generate ``len(temperatures)`` candidates for one prompt in a single batched call.

    A temperature of 0.0 makes that row the greedy (argmax) continuation.
    """
    tokenizer = lm.tokenizer
    rows = len(temperatures)
    static = getattr(lm, "decoder", "hf") == "static"  # the package's own loop (decode.py)
    if static and hf_compat.cache_argument(lm.model) is None:  # a model whose forward takes no KV cache
        hf_compat.warn_once(f"decoder:{type(lm.model).__name__}", f"{type(lm.model).__name__} takes no KV "
                            "cache argument: falling back to transformers' generate")
        static = False
    if static:
        from .decode import decode

        eos = tokenizer.eos_token_id
        out = decode(lm.model, prompt_ids, temperatures, max_new_tokens, min_new_tokens=min_new_tokens,
                     eos_ids=list(eos) if isinstance(eos, (list, tuple)) else [eos],
                     pad_id=tokenizer.pad_token_id, deadline=deadline, cancel=cancel)
        return Batch([_candidate(tokenizer, out.tokens[i].tolist(), out.logprobs[i].tolist(), temperatures[i])
                      for i in range(rows)], out.prefill_s, out.decode_s, out.stopped_early)
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=lm.device)
    processor = RowTemperature(temperatures, lm.device)
    stopper = StopWhen(deadline, cancel)
    start = time.monotonic()
    cache = shared_prefill(lm.model, input_ids, rows) if rows > 1 and input_ids.shape[1] > 1 else None
    batch_ids = input_ids.expand(rows, -1)
    sequences = lm.model.generate(
        input_ids=batch_ids, attention_mask=torch.ones_like(batch_ids), **hf_compat.cache_kwargs(lm.model, cache),
        do_sample=True, temperature=1.0, top_k=None, top_p=None,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        logits_processor=LogitsProcessorList([processor]),
        stopping_criteria=StoppingCriteriaList([stopper]))
    end = time.monotonic()
    new_tokens = sequences[:, input_ids.shape[1]:]
    logprobs = processor.finish(new_tokens[:, -1]) if new_tokens.shape[1] else processor.finish(
        input_ids[:, -1].expand(rows))
    candidates = [_candidate(tokenizer, new_tokens[i].tolist(), logprobs[i].tolist(), temperatures[i])
                  for i in range(rows)]
    first = processor.first_call or end
    return Batch(candidates, prefill_s=first - start, decode_s=end - first, stopped_early=stopper.fired)


def shared_prefill(model, input_ids: torch.Tensor, rows: int):
    """Prefill the prompt ONCE and copy its KV cache to every row; None where the model cannot share.

    ``num_return_sequences=N`` would run the prompt through the model N times; with a conversation
    history in the prompt that dominated a question's time (measured: 4.5 s -> 1.2 s for a 370-token
    prompt and 5 rows on 2 CPU cores, same tokens out). The last prompt token is left for generate,
    which then only decodes. The cache's argument name differs between transformers versions
    (``hf_compat``); a model that cannot share is said once in the log, then prefilled per row.
    """
    name = hf_compat.cache_argument(model)
    if name is None:
        hf_compat.warn_once(f"prefill:{type(model).__name__}",
                            f"shared prefill off for {type(model).__name__}: its forward takes no KV cache "
                            "argument, so the prompt is prefilled once per candidate")
        return None
    cache = hf_compat.new_dynamic_cache(model.config)
    prefix = input_ids[:, :-1]
    # the prefill's logits are not needed: skip the output head for all but one position
    model(input_ids=prefix, use_cache=True, **{name: cache}, **hf_compat.prefill_kwargs(model))
    if hf_compat.cache_length(cache) != prefix.shape[1]:
        hf_compat.warn_once(f"prefill-ignored:{type(model).__name__}",
                            f"shared prefill off for {type(model).__name__}: it did not fill the KV cache "
                            f"passed as `{name}`, so the prompt is prefilled once per candidate")
        return None
    if not hf_compat.repeat_cache_rows(cache, rows):
        return None
    return cache


def _candidate(tokenizer, tokens: list[int], logprobs: list[float], temperature: float) -> Candidate:
    eos = tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    finished = end is not None
    kept = tokens[:end] if finished else tokens
    scored = logprobs[:end + 1] if finished else logprobs[:len(tokens)]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Candidate(text=text, temperature=float(temperature), token_ids=kept,
                     token_logprobs=scored, finished=finished)


@torch.inference_mode()
def score_text(lm: LoadedModel, prompt_ids: Sequence[int], text: str) -> Candidate:
    """Untempered log-probs of a given answer after the prompt (one forward pass)."""
    answer_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(prompt_ids) + answer_ids], dtype=torch.long, device=lm.device)
    logits = lm.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt_ids):, None]).squeeze(1)
    return Candidate(text=text, temperature=1.0, token_ids=answer_ids,
                     token_logprobs=logprobs.cpu().tolist(), finished=True)
