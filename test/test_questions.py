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

"""Question parsing: plain text, JSON, and precise rejections."""

import pytest

from sage_irp_ros.errors import INVALID_INPUT, TOO_LONG, SageError
from sage_irp_ros.questions import parse_id, parse_question


def test_plain_text_gets_generated_id_and_no_conversation():
    q = parse_question("  What is 2+2? ", 100)
    assert q.text == "What is 2+2?" and len(q.id) == 12 and q.conversation is None


@pytest.mark.parametrize("raw", ['{"question": "Hi"}', '{"question": "Hi", "conversation": null}'])
def test_json_without_conversation_has_none(raw):
    q = parse_question(raw, 100)
    assert q.conversation is None and q.warnings == []


def test_reset_without_conversation_is_a_warning():
    q = parse_question('{"question": "Hi", "reset": true}', 100)
    assert q.reset and q.conversation is None
    assert len(q.warnings) == 1 and "'reset' has no effect without 'conversation'" in q.warnings[0]
    assert parse_question('{"question": "Hi", "reset": false}', 100).warnings == []


def test_json_fields_and_text_alias():
    q = parse_question('{"id": "a1", "text": "Hi", "conversation": "c", "context": "ctx", '
                       '"max_iterations": 2, "deadline_s": 1.5, "reset": true, "extra": 1}', 100)
    assert (q.id, q.text, q.conversation, q.context, q.candidates, q.deadline_s, q.reset) == (
        "a1", "Hi", "c", "ctx", 2, 1.5, True)
    assert q.warnings == ["ignored unknown fields: extra"]


def test_candidates_and_its_older_name_max_iterations():
    assert parse_question('{"question": "Hi", "candidates": 4}', 100).candidates == 4
    assert parse_question('{"question": "Hi", "max_iterations": 4}', 100).candidates == 4
    assert parse_question('{"question": "Hi", "candidates": 4, "max_iterations": 4}', 100).candidates == 4
    with pytest.raises(SageError) as err:
        parse_question('{"question": "Hi", "candidates": 4, "max_iterations": 2}', 100)
    assert err.value.code == INVALID_INPUT and "disagree" in err.value.message


@pytest.mark.parametrize("raw,code,fragment", [
    ("", INVALID_INPUT, "question is empty"),
    ("   \n\t ", INVALID_INPUT, "question is empty"),
    ("\x00\x01\x02", INVALID_INPUT, "question is empty"),
    ('{"question": ', INVALID_INPUT, "not valid JSON"),
    ("[1, 2]", INVALID_INPUT, "must be an object"),
    ('{"id": "x"}', INVALID_INPUT, "no 'question' field"),
    ('{"question": 5}', INVALID_INPUT, "field 'question' must be a string"),
    ('{"question": "q", "max_iterations": "3"}', INVALID_INPUT, "'max_iterations' must be an integer"),
    ('{"question": "q", "candidates": 0}', INVALID_INPUT, "candidates must be in [1, 64]"),
    ('{"question": "q", "max_iterations": -1}', INVALID_INPUT, "max_iterations must be in [1, 64]"),
    ('{"question": "q", "max_iterations": 100000}', INVALID_INPUT, "max_iterations must be in"),
    ('{"question": "q", "deadline_s": 0}', INVALID_INPUT, "deadline_s must be in"),
    ('{"question": "q", "deadline_s": 1e9}', INVALID_INPUT, "deadline_s must be in"),
    ('{"question": "q", "reset": 1}', INVALID_INPUT, "'reset' must be true or false"),
    ('{"question": "q", "conversation": 7}', INVALID_INPUT, "'conversation' must be a string"),
    ('{"question": "q", "conversation": " "}', INVALID_INPUT, "conversation is empty"),
    ("x" * 101, TOO_LONG, "limit is 100"),
    ("y" * 1_000_000, TOO_LONG, "limit is 100"),
    ("bad \ud800 surrogate", INVALID_INPUT, "lone surrogate"),
])
def test_rejections_are_precise(raw, code, fragment):
    with pytest.raises(SageError) as err:
        parse_question(raw, 100)
    assert err.value.code == code and fragment in err.value.message


def test_control_characters_are_removed_but_newlines_kept():
    assert parse_question("a\x07b\nc", 100).text == "ab\nc"


def test_id_of_a_rejected_message_is_recovered():
    assert parse_id('{"id": "q7", "question": 5}') == "q7"
    assert parse_id("not json") is None
