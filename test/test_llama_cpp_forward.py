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

"""llama.cpp's forward (model.forward: llama_cpp) over the embedded GGUF: the package's own sampling on
its logits, rows that join and leave between steps, scoring, cancels, and when auto chooses it."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.llama_cpp_forward import SCORING_SEQUENCE, unavailable
from sage_irp_ros.irp.engine import local_generator
from sage_irp_ros.irp.prompts import seed_prompt
from sage_irp_ros.weights.llama_cpp_model import resolve_forward
from sage_irp_ros.weights.loader import load_model

WHY_NOT = unavailable()
pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(bool(WHY_NOT), reason=f"{WHY_NOT} (scripts/setup.sh installs it from the "
                                                       "llama-cpp-python wheel in ../shared/wheels)")]


@pytest.fixture(scope="module")
def lm():
    loaded = load_model(SageConfig.from_mapping({"model": {"forward": "llama_cpp"}}).model)
    assert loaded.forward == "llama_cpp" and loaded.weight_quantization == "gguf"
    return loaded


@pytest.fixture(scope="module")
def generator(lm):
    return local_generator(lm, SageConfig().llm_irp)


def _ids(lm, question: str) -> list[int]:
    return lm.tokenizer(seed_prompt(question))["input_ids"]


def test_the_greedy_row_follows_llama_cpps_own_logits(lm, generator):
    """Each token of the greedy row is the argmax of the logits llama.cpp's own Llama object computes for
    the same prefix (up to near-ties: the two contexts lay out their KV cache differently, so logits
    differ in the second decimal)."""
    import numpy as np
    from llama_cpp import Llama

    from sage_irp_ros.weights.embedded_model import embedded_gguf

    ids = _ids(lm, "What is the capital of France?")
    ours = generator.generate(GenerationRequest(ids, [0.0], max_new_tokens=16)).candidates[0]
    llm = Llama(model_path=str(embedded_gguf()), n_ctx=512, n_threads=1, verbose=False, logits_all=True)
    llm.eval(ids + ours.token_ids)
    scores = np.asarray(llm.scores[len(ids) - 1:len(ids) - 1 + ours.n_tokens])
    chosen = scores[np.arange(ours.n_tokens), ours.token_ids]
    assert ours.n_tokens >= 5 and bool(np.all(chosen >= scores.max(axis=1) - 0.5))
    assert int((chosen == scores.max(axis=1)).sum()) >= ours.n_tokens - 2


def test_log_probs_are_untempered_and_scoring_agrees_with_decoding(lm, generator):
    ids = _ids(lm, "Name a colour.")
    row = generator.generate(GenerationRequest(ids, [0.0], max_new_tokens=8)).candidates[0]
    scored = generator.score(ids, row.text)
    assert scored.token_ids == row.token_ids[:len(scored.token_ids)]
    assert torch.allclose(torch.tensor(scored.token_logprobs), torch.tensor(row.token_logprobs[:len(scored.token_ids)]),
                          atol=1e-3)
    assert all(lp <= 0.0 for lp in row.token_logprobs)


def test_prefill_returns_the_logits_of_the_positions_asked_for_only(lm):
    """Scoring an answer computes the output head for the answer's positions, not the whole prompt's."""
    forward, ids = lm.model, _ids(lm, "Name a colour of the sky.")
    try:
        every = forward.prefill(SCORING_SEQUENCE, ids, logits_from=0)
    finally:
        forward.free(SCORING_SEQUENCE)
    try:
        tail = forward.prefill(SCORING_SEQUENCE, ids, logits_from=len(ids) - 3)
    finally:
        forward.free(SCORING_SEQUENCE)
    last = forward.prefill(SCORING_SEQUENCE, ids)
    forward.free(SCORING_SEQUENCE)
    assert every.shape == (len(ids), forward.vocab_size) and tail.shape == (3, forward.vocab_size)
    assert np.allclose(tail, every[-3:], atol=1e-3) and np.array_equal(tail.argmax(axis=1), every[-3:].argmax(axis=1))
    assert np.allclose(last, every[-1], atol=1e-3)


def test_a_request_that_waits_for_free_rows_joins_between_steps_and_decodes_as_alone(lm, generator):
    """More rows than sequence ids: the last request starts when the first rows leave, its greedy row
    gets the tokens it gets alone, and each request is handed over once, as it ends."""
    short = GenerationRequest(_ids(lm, "Say hi."), [0.0] + [0.7] * (SCORING_SEQUENCE - 1), max_new_tokens=3)
    late = GenerationRequest(_ids(lm, "What is 2+2?"), [0.0, 0.9], max_new_tokens=10)
    alone = generator.generate(GenerationRequest(late.prompt_ids, [0.0], max_new_tokens=10)).candidates[0]
    session, order, done = generator.session(SCORING_SEQUENCE), [], {}
    session.submit(short, 0)
    session.submit(late, 1)
    while session.busy:
        for index, batch in session.step():
            order.append(index)
            done[index] = batch
    batches = [done[0], done[1]]
    assert order == [0, 1] and len(batches[0].candidates) == SCORING_SEQUENCE
    assert batches[1].candidates[0].token_ids == alone.token_ids


def test_a_cache_too_small_for_two_questions_decodes_them_one_after_the_other(lm):
    """model.kv_cache_cells: with 1024 cells (512 kept for scoring) two requests of 300 cells each cannot
    decode together; the second waits for the first to leave and then decodes as it does alone."""
    small = load_model(SageConfig.from_mapping({"model": {"forward": "llama_cpp", "kv_cache_cells": 1024}}).model)
    assert small is not lm and small.model.n_ctx == 1024
    generator = local_generator(small, SageConfig().llm_irp)
    first = GenerationRequest(_ids(small, "Tell me a story."), [0.0, 0.7], max_new_tokens=140, min_new_tokens=140)
    second = GenerationRequest(_ids(small, "What is 2+2?"), [0.0, 0.7], max_new_tokens=140, min_new_tokens=8)
    alone = generator.generate(GenerationRequest(second.prompt_ids, [0.0], max_new_tokens=140,
                                                 min_new_tokens=8)).candidates[0]
    session, steps_when_done = generator.session(8), {}
    session.submit(first, "first")
    session.submit(second, "second")
    steps = 0
    while session.busy:
        steps += 1
        for key, batch in session.step():
            steps_when_done[key] = (steps, batch)
    assert steps_when_done["second"][0] > steps_when_done["first"][0] + 8  # it started after the first ended
    assert steps_when_done["second"][1].candidates[0].token_ids == alone.token_ids


def test_a_q8_0_cache_holds_a_sequence_in_about_half_the_bytes_and_still_answers(lm):
    """model.kv_cache_type: q8_0 cells (8-bit blocks of 32 values, 34 bytes against f16's 64) hold the same
    prompt in about half the bytes, and the greedy row still answers."""
    q8 = load_model(SageConfig.from_mapping({"model": {"forward": "llama_cpp", "kv_cache_type": "q8_0"}}).model)
    assert q8 is not lm and q8.key != lm.key
    ids, sizes = _ids(lm, "What is the capital of France?"), []
    for forward in (lm.model, q8.model):
        forward.prefill(SCORING_SEQUENCE, ids)
        try:
            sizes.append(forward._L.llama_state_seq_get_size(forward._ctx, SCORING_SEQUENCE))
        finally:
            forward.free(SCORING_SEQUENCE)
    assert 0.4 * sizes[0] < sizes[1] < 0.6 * sizes[0]
    row = local_generator(q8, SageConfig().llm_irp).generate(GenerationRequest(ids, [0.0], max_new_tokens=16))
    assert "Paris" in row.candidates[0].text


def test_a_greedy_answer_does_not_depend_on_the_question_before_it(lm, generator):
    """No state outlives a call: the same greedy row after a different question as after none."""
    first, second = _ids(lm, "What is 2+2?"), _ids(lm, "What is the boiling point of water in Celsius?")
    request = GenerationRequest(second, [0.0], max_new_tokens=40, min_new_tokens=40)
    alone = generator.generate(request).candidates[0]
    generator.generate(GenerationRequest(first, [0.0, 0.7], max_new_tokens=4))
    after = generator.generate(request).candidates[0]
    assert after.token_ids == alone.token_ids and alone.n_tokens == 40


def test_a_cancel_stops_a_request_at_its_next_token(lm, generator):
    cancel = threading.Event()
    cancel.set()
    batch = generator.generate(GenerationRequest(_ids(lm, "Tell a story."), [0.0, 0.7], max_new_tokens=50,
                                                 cancel=cancel))
    assert batch.stopped_early and all(c.n_tokens <= 1 for c in batch.candidates)  # EOS is not kept


def test_min_new_tokens_bans_the_end_of_sequence(lm, generator):
    batch = generator.generate(GenerationRequest(_ids(lm, "Say yes."), [0.0], max_new_tokens=20, min_new_tokens=20))
    assert batch.candidates[0].n_tokens == 20 and not batch.candidates[0].finished


def test_choices_are_scored_on_llama_cpp(lm, generator):
    ids, neutral = _ids(lm, "Is fire hot? Answer yes or no."), _ids(lm, "Answer yes or no.")
    yes, no = generator.score_options(ids, neutral, ["yes", "no"])
    assert yes.n_tokens >= 1 and yes.ll_sum < 0 and no.ll_sum < 0 and yes.ll_sum != no.ll_sum


@pytest.mark.parametrize("updates,device", [
    ({"model.forward": "torch"}, "cpu"),
    ({"model.weight_quantization": "int4"}, "cpu"),
    ({}, "cuda"),
])
def test_auto_chooses_llama_cpp_only_for_a_gguf_on_cpu_with_the_default_weights(updates, device, tmp_path):
    from sage_irp_ros.weights.embedded_model import embedded_gguf

    gguf = embedded_gguf()
    assert resolve_forward(SageConfig().model, torch.device("cpu"), gguf, None) == "llama_cpp"
    assert resolve_forward(SageConfig().with_updates(updates).model, torch.device(device), gguf, None) == "torch"
    assert resolve_forward(SageConfig().model, torch.device("cpu"), gguf, tmp_path) == "torch"  # an adapter


def test_asking_for_llama_cpp_where_it_cannot_run_falls_back_to_torch_with_one_line(tiny_model_dir, caplog):
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir), "forward": "llama_cpp"}}).model
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros"):
        assert resolve_forward(cfg, torch.device("cpu"), None, None) == "torch"
    assert "model.forward llama_cpp: using torch instead: the model is not a GGUF" in caplog.text


def test_a_closed_session_gives_back_its_rows_cells(lm, generator):
    """A session dropped mid-decode (a failed step; the scheduler decodes its questions again elsewhere)
    frees its rows' cells: the next request decodes as it does alone."""
    request = GenerationRequest(_ids(lm, "What is 2+2?"), [0.0], max_new_tokens=12, min_new_tokens=12)
    alone = generator.generate(request).candidates[0]
    session = generator.session(8)
    dropped = GenerationRequest(_ids(lm, "Tell me a story."), [0.0, 0.7], max_new_tokens=40, min_new_tokens=20)
    session.submit(dropped, "dropped")  # no row can end before the close: end-of-sequence is banned
    for _ in range(5):
        assert session.step() == []
    session.close()
    assert not session.busy
    assert generator.generate(request).candidates[0].token_ids == alone.token_ids
