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

"""Row groups with their own prompts in one batch (sage_irp_ros/decoding/decode_groups.py), on a real tiny Llama.

Each group must decode as it would alone: greedy rows token-identical, untempered log-probs equal up to
float rounding; a group that ends (its max tokens, its cancel, its deadline) leaves the others untouched.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.decode import decode
from sage_irp_ros.decoding.decode_groups import decode_groups
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
    return decode(lm.model, request, eos_ids=[lm.tokenizer.eos_token_id], pad_id=lm.tokenizer.pad_token_id)


def _groups(lm, requests):
    return decode_groups(lm.model, requests, eos_ids=[lm.tokenizer.eos_token_id], pad_id=lm.tokenizer.pad_token_id)


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


def test_generator_decodes_many_requests_into_one_batch_each(tiny):
    generator = TorchGenerator(tiny)
    requests = [GenerationRequest(_ids(tiny, q), [0.0, 0.0], 8) for q in QUESTIONS[:3]]
    batches = generator.generate_many(requests)
    assert [len(b.candidates) for b in batches] == [2, 2, 2]
    for request, batch in zip(requests, batches):
        assert [c.token_ids for c in batch.candidates] == [c.token_ids for c in generator.generate(request).candidates]
