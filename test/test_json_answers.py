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

"""JSON answers: the schema subset and its refusals, validation, agreement among candidates, and (with
llguidance and a tiny model) answers decoded under the schema's grammar that always validate."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sage_irp_ros.errors import INVALID_INPUT, SageError
from sage_irp_ros.answers.json_answers import MAX_SCHEMA_BYTES, check_schema, leaves, parse_valid, pick
from sage_irp_ros.questions import parse_question

SCHEMA = {"type": "object", "properties": {"shelf": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "mass_kg": {"type": "number"},
                                           "state": {"enum": ["full", "empty"]},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}}},
          "required": ["shelf", "mass_kg"]}


def _parse(schema):
    return parse_question(json.dumps({"question": "The pallet on shelf 3 weighs 12 kg.", "json_schema": schema}), 20000)


def test_a_supported_schema_is_kept():
    q = _parse(SCHEMA)
    assert q.json_schema == SCHEMA and q.warnings == [] and q.choices is None


@pytest.mark.parametrize("schema,fragment", [
    ([1], "must be a JSON object, got list"),
    ("object", "must be a JSON object, got str"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}},
     "unsupported keyword 'pattern' at json_schema.properties.a"),
    ({"type": "object", "$ref": "#/x"}, "unsupported keyword '$ref' at json_schema"),
    ({"type": "null"}, "has type 'null'"),
    ({"properties": {}}, "needs a 'type'"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required must list names"),
    ({"type": "string", "enum": []}, "enum must be a non-empty list"),
    ({"type": "object", "properties": {"a": {"type": "string", "description": "x" * MAX_SCHEMA_BYTES}}},
     f"the limit is {MAX_SCHEMA_BYTES}"),
    ({"type": "integer", "minimum": "zero"}, "is not a valid JSON Schema"),
])
def test_bad_schemas_are_invalid_input_naming_the_field(schema, fragment):
    with pytest.raises(SageError) as err:
        _parse(schema)
    assert err.value.code == INVALID_INPUT and "'json_schema'" in err.value.message
    assert fragment in err.value.message


def test_too_deep_schema_is_refused():
    schema = {"type": "string"}
    for _ in range(10):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SageError) as err:
        check_schema(schema)
    assert "nests deeper than 8" in err.value.message


def test_parse_valid_and_leaves():
    assert parse_valid('{"shelf": 3, "mass_kg": 12}', SCHEMA) == ({"shelf": 3, "mass_kg": 12}, True)
    assert parse_valid('{"shelf": 3}', SCHEMA) == ({"shelf": 3}, False)  # mass_kg is required
    assert parse_valid('{"shelf": 3, "mass_kg": 12', SCHEMA) == (None, False)
    assert leaves({"a": 1, "b": [True, "x"], "c": {}}) == {(".a", "1"), (".b[0]", "true"), (".b[1]", '"x"'),
                                                           (".c", "{}")}


def test_pick_prefers_the_valid_candidate_that_agrees_with_the_others():
    values = [{"shelf": 4, "mass_kg": 12}, {"shelf": 3, "mass_kg": 12}, None, {"shelf": 3, "mass_kg": 12.0}]
    assert pick(values, [True, True, False, True], [0.1, 0.5, 0.0, 0.4]) == 3  # agrees, lower energy than 1
    assert pick(values, [False, False, False, False], [0.1] * 4) is None
    assert pick(values, [True, False, False, False], [0.9] * 4) == 0


@pytest.mark.skipif(not (importlib.util.find_spec("torch") and importlib.util.find_spec("llguidance")),
                    reason="needs torch and llguidance")
def test_json_schema_question_is_decoded_under_the_grammar(tiny_model_dir):
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.serving.core import SageCore

    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir)}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": 48, "min_available_memory_mb": 0, "seed": 1}})
    core = SageCore(cfg)
    core.load()
    try:
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "state": {"enum": ["a", "b"]}},
                  "required": ["ok", "state"]}
        result = core.answer(_parse(schema))
        assert result.ok, result.error
        assert parse_valid(result.answer, schema) == (result.json, True)
        assert set(result.json) == {"ok", "state"} and 0.0 <= result.confidence <= 1.0
        # a schema no answer can complete within max_tokens: one error result, the core keeps serving
        long_text = {"type": "object", "properties": {"s": {"enum": ["ab" * 60]}}, "required": ["s"]}
        failed = core.answer(_parse(long_text))
        assert not failed.ok and failed.error_code == "inference_failed" and "max_tokens" in failed.error_message
        # a valid JSON Schema no value satisfies: refused at compile time, or no valid candidate
        empty = core.answer(_parse({"type": "integer", "minimum": 5, "maximum": 1}))
        assert not empty.ok and empty.error_code in ("invalid_input", "inference_failed"), empty.error
        assert core.answer(_parse(schema)).ok
    finally:
        core.release()
