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

"""Result and AnswerOptions without a model: the documented JSON, round trips, options resolved once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.salience.memory_store import Exchange
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import Question
from sage_irp_ros.results import IRPSummary, Result, ResultError, Timing
from sage_irp_ros.salience.snarc import SnarcScores

INTERFACE = Path(__file__).resolve().parents[1] / "docs" / "interface.md"


def _documented() -> dict:
    """The example of docs/interface.md's "Result JSON" section."""
    text = INTERFACE.read_text(encoding="utf-8")
    block = re.search(r"### Result JSON\n```json\n(.*?)```", text, re.S)
    assert block, "docs/interface.md has no Result JSON example"
    return json.loads(block.group(1))


def _keys(value):
    """The nested key structure of a JSON value (dicts only)."""
    return {k: _keys(v) for k, v in value.items()} if isinstance(value, dict) else None


def _ok_result() -> Result:
    return Result(id="q1", conversation="c1", question="What is 2+2?", ok=True, answer="Four. ✓",
                  snarc=SnarcScores(0.0, 0.61, 0.42, 0.55, 0.13, 0.342, True),
                  irp=IRPSummary(candidates=3, rounds=1, best_energy=0.21,
                                 energies=[0.3, 0.21, 0.25, 0.22], temperatures=[0.7, 0.647, 0.594, 0.0],
                                 halt_reason="max_iterations", finished=True, prefill_s=0.05, decode_s=3.2,
                                 scoring_s=0.0001),
                  timing=Timing(0.0, 3.3, 3.3, 180, 54.5), model="SmolLM2-135M-Instruct", warnings=["w"],
                  stamp=1795700000.25)


def test_result_json_has_exactly_the_documented_keys_in_order():
    documented = _documented()
    produced = _ok_result().to_dict()
    assert _keys(produced) == _keys(documented)
    assert list(produced) == list(documented)  # the same order too
    for part in ("snarc", "irp", "timing"):
        assert list(produced[part]) == list(documented[part]), part
    assert Result.from_dict(documented).to_dict() == documented


def test_round_trip_ok_and_error_results():
    ok = _ok_result()
    assert Result.from_json(ok.to_json()) == ok and Result.from_dict(ok.to_dict()) == ok
    assert "✓" in ok.to_json()  # UTF-8 kept, not escaped
    failed = Result(id="e1", error=ResultError("queue_full", "8 questions already waiting"),
                    timing=Timing(total_s=0.001), stamp=1.5)
    data = failed.to_dict()
    assert data["ok"] is False and data["answer"] == "" and data["snarc"] is None and data["irp"] is None
    assert data["error"] == {"code": "queue_full", "message": "8 questions already waiting"}
    assert Result.from_json(failed.to_json()) == failed


def test_attributes_behaviour_trees_branch_on():
    ok, failed = _ok_result(), Result(id="e", error=ResultError("deadline", "too late"))
    assert (ok.ok, ok.answer, ok.salience, ok.error_code, ok.error_message) == (True, "Four. ✓", 0.342, None, None)
    assert (failed.ok, failed.salience, failed.error_code, failed.error_message) == (
        False, None, "deadline", "too late")


def test_from_dict_ignores_unknown_keys_and_fills_missing_ones():
    data = {**_ok_result().to_dict(), "future_key": 1}
    data["irp"] = {**data["irp"], "new_irp_key": True}
    del data["warnings"]
    parsed = Result.from_dict(data)
    assert parsed.warnings == [] and parsed.irp == _ok_result().irp
    with pytest.raises((TypeError, ValueError)):
        Result.from_json("[1, 2]")
    with pytest.raises(ValueError):
        Result.from_json("not json")


def test_timing_measure_rounds_as_the_result_always_did():
    timing = Timing.measure(received=10.0, start=10.5, now=13.0, inference_s=2.0, tokens=7)
    assert timing == Timing(queued_s=0.5, inference_s=2.0, total_s=3.0, tokens=7, tokens_per_s=3.5)
    assert Timing.measure(received=1.0, start=1.0, now=1.0, inference_s=0.0, tokens=0).tokens_per_s == 0.0


def test_exchange_from_result():
    result = _ok_result()
    exchange = Exchange.from_result(result)
    assert (exchange.stamp, exchange.conversation, exchange.question_id, exchange.question, exchange.answer) == (
        result.stamp, "c1", "q1", "What is 2+2?", "Four. ✓")
    assert exchange.scores == result.snarc and exchange.irp == result.irp.to_dict()
    assert exchange.timing == result.timing.to_dict() and exchange.model == "SmolLM2-135M-Instruct"
    with pytest.raises(ValueError):
        Exchange.from_result(Result(id="e", error=ResultError("deadline", "late")))


# -- options ------------------------------------------------------------------------------------------
def _irp(**keys):
    return SageConfig.from_mapping({"llm_irp": keys}).llm_irp


def test_options_resolve_config_and_question_once():
    cfg = _irp(irp_iterations=3, max_tokens=100, candidates_per_round=2, deadline_s=5.0)
    plain = AnswerOptions.resolve(cfg)
    assert (plain.candidates, plain.max_tokens, plain.candidates_per_round, plain.greedy) == (3, 100, 2, True)
    assert plain.deadline is None and plain.deadline_s == 5.0 and not plain.throttled and plain.rows == 4
    cancel = threading.Event()
    asked = AnswerOptions.resolve(cfg, Question(text="q", candidates=7, deadline_s=2.0), received=100.0,
                                  cancel=cancel)
    assert (asked.candidates, asked.deadline, asked.deadline_s, asked.cancel) == (7, 102.0, 2.0, cancel)
    assert AnswerOptions.resolve(cfg, Question(text="q"), received=100.0).deadline == 105.0
    assert AnswerOptions.resolve(_irp(deadline_s=0.0), received=100.0).deadline is None
    assert AnswerOptions.resolve(_irp(greedy_candidate=False)).greedy is False
    with pytest.raises(Exception):
        plain.candidates = 1  # frozen


def _throttle(**keys):
    return SageConfig.from_mapping({"throttle": keys}).throttle


def test_throttled_options_are_the_greedy_row_alone():
    cfg = _irp(candidates=3, max_tokens=100, greedy_candidate=False)
    throttled = AnswerOptions.resolve(cfg, Question(text="q", candidates=9), throttled=True,
                                      throttle=_throttle(max_tokens=64))
    assert (throttled.candidates, throttled.greedy, throttled.max_tokens, throttled.rows) == (0, True, 64, 1)
    assert throttled.throttled
    assert AnswerOptions.resolve(_irp(max_tokens=20), throttled=True, throttle=_throttle(max_tokens=64)
                                 ).max_tokens == 20
    off = AnswerOptions.resolve(_irp(candidates=3), throttled=True, throttle=_throttle(enabled=False))
    assert not off.throttled and off.candidates == 3


def test_reduced_options_after_running_out_of_memory():
    options = AnswerOptions.resolve(_irp(irp_iterations=5, candidates_per_round=0))
    fewer = options.reduced()
    assert (fewer.candidates, fewer.candidates_per_round, fewer.greedy, fewer.rows) == (2, 1, False, 2)
    assert options.candidates == 5  # the original is unchanged
    assert AnswerOptions.resolve(_irp(irp_iterations=1)).reduced().candidates == 1
    greedy_only = AnswerOptions.resolve(_irp(), throttled=True)
    assert greedy_only.reduced() == greedy_only


def test_the_seam_types_selection_and_results_import_no_torch():
    """A remote generator, the benchmarks' analysis and a torch-free install use these without torch."""
    modules = ("decoding.generator", "irp.selection", "irp.energy", "results", "irp.options", "questions",
               "serving.worker", "answers.choices", "answers.json_answers", "irp.confidence")
    code = ("import sys\n" + "".join(f"import sage_irp_ros.{m}\n" for m in modules)
            + "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
