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

"""The step-driven decode engine (sage_irp_ros/decoding/engine.py, slots.py), on a real tiny Llama.

Each request must decode as it would alone: greedy rows token-identical, untempered log-probs equal up to
float rounding; a request that ends (its max tokens, its cancel, its deadline) leaves the others
untouched; a request that joins while others decode, into slots that rows left, decodes as it would alone;
the stopping-rule hook drops the rows it names.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.decode import decode_simple
from sage_irp_ros.decoding.engine import DecodeEngine
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.irp.prompts import build_prompt_ids
from tiny_models import load_on_cpu

QUESTIONS = ["What is 2+2?", "How does compression affect meaning? Are you aware of this conversation?",
             "Yes.", "The robot moves to the kitchen and picks up the cup. What is the difference?"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_on_cpu(path=str(tiny_model_dir))


def _ids(lm, text):
    return build_prompt_ids(lm.tokenizer, text)


def _alone(lm, request):
    """The request decoded alone, by the plain loop over transformers' dynamic cache (no slots, no mask)."""
    return decode_simple(lm.model, request, eos_ids=[lm.tokenizer.eos_token_id], pad_id=lm.tokenizer.pad_token_id)


def _engine(lm, capacity, length=256, **kw):
    return DecodeEngine(lm.model, capacity=capacity, length=length, eos_ids=[lm.tokenizer.eos_token_id],
                        pad_id=lm.tokenizer.pad_token_id, **kw)


def _groups(lm, requests, capacity=None):
    """Every request submitted at once to one engine (slots for all rows unless ``capacity``)."""
    engine = _engine(lm, capacity or sum(r.rows for r in requests))
    for index, request in enumerate(requests):
        engine.submit(request, key=index)
    done = {finished.key: finished.decoded for finished in engine.run()}
    assert sorted(done) == list(range(len(requests)))  # exactly one result per request
    return [done[i] for i in range(len(requests))]


def test_greedy_rows_of_every_group_match_decoding_alone(tiny):
    requests = [GenerationRequest(_ids(tiny, q), [0.0, 0.0], 12 + 3 * i, min_new_tokens=12 + 3 * i)
                for i, q in enumerate(QUESTIONS)]
    assert len({len(r.prompt_ids) for r in requests}) == len(requests)  # different prompt lengths
    together = _groups(tiny, requests)
    for request, out in zip(requests, together):
        alone = _alone(tiny, request)
        assert out.tokens.shape == (2, request.max_new_tokens)
        assert out.tokens.tolist() == alone.tokens.tolist()
        torch.testing.assert_close(out.logprobs, alone.logprobs, atol=1e-4, rtol=1e-4)


def test_sampled_rows_keep_their_temperature_and_greedy_rows_their_tokens(tiny):
    torch.manual_seed(0)
    requests = [GenerationRequest(_ids(tiny, QUESTIONS[0]), [0.7, 0.0], 10, min_new_tokens=10),
                GenerationRequest(_ids(tiny, QUESTIONS[1]), [0.9, 0.8, 0.0], 10, min_new_tokens=10)]
    together = _groups(tiny, requests)
    for request, out in zip(requests, together):
        assert out.tokens.shape == (request.rows, 10)
        assert out.tokens[-1].tolist() == _alone(tiny, GenerationRequest(
            request.prompt_ids, [0.0], 10, min_new_tokens=10)).tokens[0].tolist()


def test_a_cancelled_group_leaves_and_the_others_finish(tiny):
    cancel = threading.Event()
    cancel.set()  # checked after the first token: this group stops there
    requests = [GenerationRequest(_ids(tiny, QUESTIONS[0]), [0.0], 16, min_new_tokens=16, cancel=cancel),
                GenerationRequest(_ids(tiny, QUESTIONS[1]), [0.0, 0.0], 16, min_new_tokens=16),
                GenerationRequest(_ids(tiny, QUESTIONS[2]), [0.0], 16, min_new_tokens=16,
                                  deadline=time.monotonic() - 1)]
    cut, full, late = _groups(tiny, requests)
    assert cut.stopped_early and late.stopped_early and not full.stopped_early
    assert cut.tokens.shape == (1, 1) and late.tokens.shape == (1, 1)
    assert full.tokens.tolist() == _alone(tiny, requests[1]).tokens.tolist()


def test_groups_end_at_their_own_max_tokens_and_eos(tiny):
    requests = [GenerationRequest(_ids(tiny, q), [0.0], n) for q, n in zip(QUESTIONS, (3, 20, 7, 11))]
    for request, out in zip(requests, _groups(tiny, requests)):
        alone = _alone(tiny, request)
        assert out.tokens.tolist() == alone.tokens.tolist()
        assert not out.stopped_early


@pytest.mark.parametrize("max_slots", [32, 2])
def test_generator_decodes_many_requests_into_one_batch_each(tiny, max_slots):
    """With 2 slots the requests take turns: each waits for the slots the one before leaves."""
    generator = TorchGenerator(tiny, max_slots=max_slots)
    requests = [GenerationRequest(_ids(tiny, q), [0.0, 0.0], 8 + 2 * i) for i, q in enumerate(QUESTIONS[:3])]
    session, order = generator.session(max_slots), []
    for index, request in enumerate(requests):
        session.submit(request, index)
    done = {}
    while session.busy:
        for index, batch in session.step():
            order.append(index)
            done[index] = batch
    batches = [done[i] for i in range(3)]
    assert [len(b.candidates) for b in batches] == [2, 2, 2] and sorted(order) == [0, 1, 2]
    for request, batch in zip(requests, batches):
        assert [c.token_ids for c in batch.candidates] == [c.token_ids for c in generator.generate(request).candidates]
        assert [c.token_ids for c in batch.candidates] == [
            r[:len(c.token_ids)] for r, c in zip(_alone(tiny, request).tokens.tolist(), batch.candidates)]


def test_a_request_joining_mid_decode_gets_its_tokens_alone(tiny):
    """2 slots: A (short prompt, 24 tokens) and C (long prompt, 4) decode; D waits, joins C's slot after C
    leaves, while A decodes (the cache compacted first: D's 22 tokens leave no room past the cursor
    otherwise)."""
    a, c, d = (_ids(tiny, q) for q in (QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]))
    assert len(a) < len(c) and len(d) <= len(c)
    requests = {"A": GenerationRequest(a, [0.0], 24, min_new_tokens=24),
                "C": GenerationRequest(c, [0.0], 4, min_new_tokens=4),
                "D": GenerationRequest(d, [0.0], 22, min_new_tokens=22)}
    engine = _engine(tiny, 2, length=len(c) + 24)
    compactions = []
    compact = engine.slots.compact
    engine.slots.compact = lambda occupied: (compactions.append(list(occupied)), compact(occupied))
    for key, request in requests.items():
        engine.submit(request, key=key)
    order, joined = [], None
    while engine.busy:
        order += [(f.key, f.decoded) for f in engine.step()]
        if joined is None and any(r is not None and r.job.key == "D" for r in engine.rows):
            joined = engine.steps
            assert any(r is not None and r.job.key == "A" for r in engine.rows)  # A still decoding
    # D joined in the step after C took its 4th and last token (the 5th forward pass), while A decoded
    assert [key for key, _ in order] == ["C", "A", "D"] and joined == 5 and compactions
    for key, decoded in order:
        assert decoded.tokens.tolist() == _alone(tiny, requests[key]).tokens.tolist(), key


def test_the_stop_rule_drops_rows_between_steps(tiny):
    """The hook sees the occupied rows each step; a row it names leaves with its tokens so far."""
    seen = []

    def drop_sampled_after_three(rows):
        seen.append(len(rows))
        return [r for r in rows if r.temperature > 0 and len(r.tokens) >= 3]

    torch.manual_seed(0)
    request = GenerationRequest(_ids(tiny, QUESTIONS[0]), [0.0, 0.9], 10, min_new_tokens=10)
    engine = _engine(tiny, 2, stop_rule=drop_sampled_after_three)
    engine.submit(request)
    (done,) = list(engine.run())
    tokens = done.decoded.tokens.tolist()
    assert tokens[0] == _alone(tiny, GenerationRequest(request.prompt_ids, [0.0], 10, min_new_tokens=10)
                               ).tokens[0].tolist()
    assert tokens[1][3:] == [tiny.tokenizer.pad_token_id] * 7 and seen[:4] == [2, 2, 2, 1]
    assert not done.decoded.stopped_early
