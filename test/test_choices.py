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

"""Choices questions through SageCore over a tiny model: the answer is one of the options, the options
are scored in one batched forward that equals scoring each alone, and every ok result has a confidence."""

from __future__ import annotations

import math
import time

import pytest
import torch

from sage_irp_ros.answers import choices
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.generator import generate_all
from sage_irp_ros.serving.core import SageCore
from sage_irp_ros.questions import Question


@pytest.fixture
def core(tiny_model_dir):
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir)}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": 8, "min_available_memory_mb": 0, "seed": 3}})
    core = SageCore(cfg)
    core.load()
    yield core
    core.release()


@pytest.mark.parametrize("options", [["yes", "no"], ["red", "green", "blue", "a longer option here"]])
def test_answer_is_exactly_one_of_the_options_with_probabilities(core, options):
    result = core.answer(Question(text="Is the path clear?", id="c1", choices=options))
    assert result.ok and result.answer in options and result.choice == result.answer
    assert list(result.probabilities) == options
    assert math.isclose(sum(result.probabilities.values()), 1.0, abs_tol=1e-5)
    assert result.probabilities[result.choice] == max(result.probabilities.values())
    assert 0.0 <= result.confidence <= 1.0 and result.confident is True
    assert result.json is None and result.irp.scoring_s > 0


def test_free_text_results_carry_a_confidence_and_no_choice(core):
    result = core.answer(Question(text="What is 2+2?"))
    assert result.ok and result.choice is None and result.probabilities is None
    assert 0.0 <= result.confidence <= 1.0 and result.confident is True


def test_min_confidence_marks_the_result_not_confident_but_keeps_it_ok(core):
    result = core.answer(Question(text="Is it?", choices=["yes", "no"], min_confidence=1.0))
    assert result.ok and result.answer in ("yes", "no") and result.confident is False
    core.reconfigure(core.cfg.with_updates({"llm_irp.min_confidence": 1.0}))
    assert core.answer(Question(text="What is 2+2?")).confident is False
    assert core.answer(Question(text="What is 2+2?", min_confidence=0.0)).confident is True


def test_batched_option_scores_equal_scoring_each_option_alone(core):
    generator, tok = core.engine.generator, core.lm.tokenizer
    options = ["yes", "no", "two words", "a much longer option than the others"]
    prompt_ids, neutral_ids = choices.score_prompts(tok, "Is the path clear?", options)
    batched = generator.score_options(prompt_ids, neutral_ids, options)
    for option, score in zip(options, batched):
        for prefix, expected_sum in ((prompt_ids, score.ll_sum), (neutral_ids, score.neutral_sum)):
            alone = [sum(generator.score(prefix, s).token_logprobs) for s in choices.spellings(option)]
            assert expected_sum == pytest.approx(float(torch.logsumexp(torch.tensor(alone), 0)), abs=2e-3)
        assert score.n_tokens == len(tok(option, add_special_tokens=False)["input_ids"])


class _PastDeadline:
    """Delegates each generation call once its requests' deadline has passed: the deadline falls while
    the question is generating, never while it is queued."""

    def __init__(self, inner):
        self.inner = inner

    session = None  # every decode step is one call, which waits for the deadline

    def generate_many(self, requests):
        deadline = max(r.deadline for r in requests)
        while time.monotonic() < deadline:
            time.sleep(deadline - time.monotonic())
        return generate_all(self.inner, requests)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_choices_question_after_the_deadline_still_gets_an_option(tiny_model_dir):
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir)}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": 8, "min_available_memory_mb": 0, "stopping": "off"}})
    core = SageCore(cfg, wrap_generator=_PastDeadline)
    core.load()
    try:
        result = core.answer(Question(text="Is it?", choices=["yes", "no"], deadline_s=1.0))
        queued = core.answer(Question(text="Is it?", choices=["yes", "no"], deadline_s=1.0),
                             received=time.monotonic() - 2.0)
    finally:
        core.release()
    assert result.ok and result.answer in ("yes", "no") and result.irp.halt_reason == "deadline"
    assert list(result.probabilities) == ["yes", "no"]
    assert not queued.ok and queued.error_code == "deadline"  # passed in the queue: nothing was generated
