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

"""Choices and confidence without a model: option validation, mapping answers onto options, the choice
model's probabilities, the shipped calibration and min_confidence."""

from __future__ import annotations

import json
import math

import pytest

from sage_irp_ros.answers import choices
from sage_irp_ros.decoding.generator import Candidate
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.irp.confidence import CHOICE_FEATURES, FREE_TEXT_FEATURES, Calibrator, is_confident, shipped
from sage_irp_ros.errors import INVALID_INPUT, SageError
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import parse_question


def _parse(**fields):
    return parse_question(json.dumps({"question": "Is the path clear?", **fields}), 4000)


def test_choices_are_parsed_and_normalised():
    q = _parse(choices=[" yes ", "no"], min_confidence=0.7)
    assert q.choices == ["yes", "no"] and q.min_confidence == 0.7 and q.warnings == []
    assert _parse().choices is None and _parse(choices=None).choices is None


@pytest.mark.parametrize("value,fragment", [
    (["yes"], "needs 2 to 20 options, got 1"),
    ([], "needs 2 to 20 options, got 0"),
    ([f"o{i}" for i in range(21)], "needs 2 to 20 options, got 21"),
    (["yes", "Yes"], "item 1 ('Yes') repeats an earlier option"),
    (["yes", "  "], "item 1 is empty"),
    (["yes", "x" * 201], "item 1 is 201 characters; the limit is 200"),
    (["yes", 3], "item 1 must be a string, got int"),
    ("yes,no", "must be a list of strings, got str"),
])
def test_bad_choices_are_invalid_input_naming_the_field(value, fragment):
    with pytest.raises(SageError) as err:
        _parse(choices=value)
    assert err.value.code == INVALID_INPUT and "'choices'" in err.value.message and fragment in err.value.message


def test_choices_with_json_schema_and_bad_min_confidence_are_refused():
    with pytest.raises(SageError) as err:
        _parse(choices=["a", "b"], json_schema={"type": "object"})
    assert err.value.code == INVALID_INPUT and "'choices' and 'json_schema'" in err.value.message
    for value in (1.5, -0.1, "high", True):
        with pytest.raises(SageError) as err:
            _parse(min_confidence=value)
        assert err.value.code == INVALID_INPUT and "min_confidence" in err.value.message


def test_min_confidence_resolves_from_question_then_config():
    cfg = SageConfig.from_mapping({"llm_irp": {"min_confidence": 0.6}}).llm_irp
    assert AnswerOptions.resolve(cfg).min_confidence == 0.6
    assert AnswerOptions.resolve(cfg, _parse(min_confidence=0.0)).min_confidence == 0.0
    assert AnswerOptions.resolve(cfg, _parse(), throttled=True).min_confidence == 0.6
    assert AnswerOptions.resolve(SageConfig().llm_irp).min_confidence == 0.0
    assert is_confident(0.1, 0.0) and is_confident(0.7, 0.7) and not is_confident(0.69, 0.7)


@pytest.mark.parametrize("text,expected", [
    ("Yes", 0), ("yes.", 0), ("No, the path is blocked.", 1), ("NO", 1), ("I think yes, but no.", 0),
    ("Maybe.", None), ("", None), ("nothing", None),
])
def test_map_to_option_yes_no(text, expected):
    assert choices.map_to_option(text, ["yes", "no"]) == expected


def test_map_to_option_prefers_the_whole_answer_then_the_earliest_longest():
    opts = ["1 kg of iron", "1 g of feathers", "they weigh the same"]
    assert choices.map_to_option("They weigh the same.", opts) == 2
    assert choices.map_to_option("The answer is 1 g of feathers, not 1 kg of iron", opts) == 1
    assert choices.map_to_option("red", ["red", "red wine"]) == 0
    assert choices.map_to_option("red wine please", ["red", "red wine"]) == 1
    assert choices.vote_shares(["yes", "Yes!", "no", "hmm"], ["yes", "no"]) == [0.5, 0.25]


def test_probabilities_sum_to_one_and_choose_picks_an_option():
    scores = [choices.OptionScore(-1.0, 1, -0.5, 1), choices.OptionScore(-3.0, 2, -2.0, 2)]
    feats = choices.features(scores, [0.25, 0.75])
    assert feats[0] == {"ll_sum": -1.0, "ll_mean": -1.0, "pmi_sum": -0.5, "pmi_mean": -0.5, "vote": 0.25}
    assert feats[1]["ll_mean"] == -1.5 and feats[1]["pmi_mean"] == -0.5
    picked = choices.choose(scores, ["no", "no", "no", "yes"], ["yes", "no"], {"vote": 4.0})
    assert picked.choice == "no" and math.isclose(sum(picked.probabilities.values()), 1.0, abs_tol=1e-5)
    assert picked.probabilities["no"] > 0.8 and picked.top == picked.probabilities["no"]
    tie = choices.choose(scores, [], ["yes", "no"], {"vote": 1.0})  # equal: the first option
    assert tie.choice == "yes" and tie.probabilities == {"yes": 0.5, "no": 0.5}


def test_choice_prompt_lists_the_options():
    text = choices.choice_prompt("Is the path clear?", ["yes", "no"])
    assert text.startswith("Is the path clear?\nOptions: yes; no.") and choices.INSTRUCTION in text
    assert "Is the path clear?" not in choices.neutral_prompt(["yes", "no"])
    assert choices.spellings("yes") == ["yes", "Yes"] and choices.spellings("Paris") == ["Paris"]


def test_shipped_calibration_loads_and_gives_probabilities():
    cal = shipped()
    assert set(cal.choice_weights) <= set(choices.FEATURES) and cal.choice_weights
    assert set(cal.choices.weights) <= set(CHOICE_FEATURES)
    assert set(cal.free_text.weights) <= set(FREE_TEXT_FEATURES)
    good = Candidate("Paris is the capital.", 0.0, [1, 2, 3, 4], [-0.1, -0.1, -0.2, -0.1], True)
    other = Candidate("Paris.", 0.7, [1, 5], [-0.3, -0.2], True)
    for conf in (cal.free_text_confidence([good, other], [0.2, 0.3], 0), cal.free_text_confidence([good], [0.2], 0),
                 cal.choice_confidence([0.9, 0.1]), cal.choice_confidence([0.34, 0.33, 0.33])):
        assert 0.0 <= conf <= 1.0
    assert cal.choice_confidence([0.95, 0.05]) >= cal.choice_confidence([0.55, 0.45])  # monotone


def test_calibrator_is_a_logistic_model():
    model = Calibrator({"a": 2.0}, bias=-1.0)
    assert model({"a": 0.5}) == pytest.approx(0.5) and model({}) == pytest.approx(1 / (1 + math.e))
    assert Calibrator.from_dict(model.to_dict()) == model
    assert 0.0 < Calibrator({"a": 1e9})({"a": 1.0}) <= 1.0


def test_cli_ask_takes_choices_and_min_confidence_and_prints_them():
    from sage_irp_ros.tools.cli import _format, _parser
    from sage_irp_ros.results import IRPSummary, Result
    from sage_irp_ros.salience.snarc import SnarcScores

    args = _parser().parse_args(["ask", "Is the path clear?", "--choice", "yes", "--choice", "no",
                                 "--min-confidence", "0.7"])
    assert args.choices == ["yes", "no"] and args.min_confidence == 0.7
    assert _parser().parse_args(["ask", "Hi"]).choices is None
    result = Result(id="a", ok=True, answer="no", choice="no", probabilities={"yes": 0.2, "no": 0.8},
                    confidence=0.64, confident=False, snarc=SnarcScores(0, 0, 0, 0, 0, 0.1, False),
                    irp=IRPSummary(best_energy=0.3))
    text = _format(result)
    assert text.startswith("A: no\n") and "options: yes 0.20, no 0.80" in text
    assert "confidence 0.64 (NOT confident: under min_confidence)" in text
