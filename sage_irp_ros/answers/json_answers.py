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

"""JSON answers: the ``json_schema`` a question may carry, checked before anything runs, and the
candidates' JSON parsed, validated and compared.

The schema subset (docs/interface.md, "JSON answers"): ``type`` (object, array, string, number,
integer, boolean), ``properties``, ``required``, ``enum``, ``items``, ``minimum``/``maximum``,
``maxLength``, plus ``title``/``description`` (ignored); at most 16 KB of JSON, nested at most 8 deep.
Anything else is ``invalid_input`` naming the field and the keyword, so a schema a grammar cannot
honour is refused up front instead of half applied. Decoding under the schema's grammar is
:mod:`sage_irp_ros.answers.grammar`; validation here uses ``jsonschema``.

Selection among valid candidates prefers agreement: the candidate whose leaf values (``"shelf": 3``)
most other valid candidates share, the lower energy on a tie.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from sage_irp_ros.errors import INVALID_INPUT, SageError

MAX_SCHEMA_BYTES = 16 * 1024
MAX_DEPTH = 8
TYPES = ("object", "array", "string", "number", "integer", "boolean")
KEYWORDS = ("type", "properties", "required", "enum", "items", "minimum", "maximum", "maxLength", "title",
            "description")


def _bad(message: str) -> SageError:
    return SageError(INVALID_INPUT, f"field 'json_schema' {message}")


def check_schema(schema: Any) -> dict:
    """``schema`` when it is a supported JSON Schema object; SageError(invalid_input) naming the problem."""
    if not isinstance(schema, dict):
        raise _bad(f"must be a JSON object, got {type(schema).__name__}")
    size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        raise _bad(f"is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")
    _check(schema, "json_schema", 0)
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _bad(f"is not a valid JSON Schema: {exc.message}") from None
    return schema


def _check(node: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _bad(f"nests deeper than {MAX_DEPTH} levels at {where}")
    if not isinstance(node, dict):
        raise _bad(f"{where} must be a schema object, got {type(node).__name__}")
    unknown = sorted(str(k) for k in node if k not in KEYWORDS)
    if unknown:
        raise _bad(f"uses unsupported keyword '{unknown[0][:40]}' at {where} (supported: {', '.join(KEYWORDS)})")
    kind = node.get("type")
    if kind is None and "enum" not in node:
        raise _bad(f"{where} needs a 'type' (one of {', '.join(TYPES)}) or an 'enum'")
    if kind is not None and kind not in TYPES:
        raise _bad(f"{where} has type {str(kind)[:40]!r}; supported: {', '.join(TYPES)}")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise _bad(f"{where}.enum must be a non-empty list")
    properties = node.get("properties", {})
    if not isinstance(properties, dict):
        raise _bad(f"{where}.properties must be an object")
    for name, sub in properties.items():
        _check(sub, f"{where}.properties.{str(name)[:40]}", depth + 1)
    required = node.get("required", [])
    if not isinstance(required, list) or any(r not in properties for r in required):
        raise _bad(f"{where}.required must list names of its properties")
    if "items" in node:
        _check(node["items"], f"{where}.items", depth + 1)


def parse_valid(text: str, schema: dict) -> tuple[Any, bool]:
    """(the parsed JSON or None, whether it parses and validates against ``schema``)."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        return None, False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return value, False
    return value, True


def leaves(value: Any, prefix: str = "") -> set[tuple[str, str]]:
    """Every leaf of a JSON value as (path, value as JSON): what agreement compares."""
    if isinstance(value, dict):
        return set().union(*(leaves(v, f"{prefix}.{k}") for k, v in value.items())) if value else {(prefix, "{}")}
    if isinstance(value, list):
        return set().union(*(leaves(v, f"{prefix}[{i}]") for i, v in enumerate(value))) if value else {(prefix, "[]")}
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 12.0 and 12 are the same value
    return {(prefix, json.dumps(value, sort_keys=True))}


def pick(values: Sequence[Any], valid: Sequence[bool], energies: Sequence[float]) -> int | None:
    """Index of the valid candidate whose leaves agree most with the other valid ones (lower energy on a
    tie, then the earliest); None when no candidate is valid."""
    ok = [i for i, v in enumerate(valid) if v]
    if not ok:
        return None
    sets = {i: leaves(values[i]) for i in ok}

    def agreement(i: int) -> float:
        others = [j for j in ok if j != i]
        if not others or not sets[i]:
            return 0.0
        return sum(len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for j in others) / len(others)

    return min(ok, key=lambda i: (-agreement(i), energies[i] if i < len(energies) else 1.0, i))


def json_prompt(question: str, schema: dict) -> str:
    """The question as the model sees it: the question, then the schema its JSON answer follows."""
    return f"{question}\nAnswer with JSON only, following this JSON Schema: {json.dumps(schema, ensure_ascii=False)}"
