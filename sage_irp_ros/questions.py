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

"""Parse an incoming question message: plain text or a JSON object, treated as untrusted input.

Sizes are bounded before anything is parsed, nothing from a message is evaluated, formatted or
used as a path, and every rejection is a :class:`SageError` with a precise code and message.
Unknown JSON fields are ignored with a warning (recorded in ``Question.warnings``), so newer clients
keep working with older nodes.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sage_irp_ros.errors import INVALID_INPUT, TOO_LONG, SageError

if TYPE_CHECKING:
    from sage_irp_ros.answers.tool_calls import Tool

FIELDS = ("id", "question", "text", "conversation", "context", "candidates", "max_iterations", "deadline_s", "reset",
          "choices", "min_confidence", "json_schema", "tools", "tool_choice")
MIN_CHOICES, MAX_CHOICES, MAX_CHOICE_CHARS = 2, 20, 200
MAX_ID_CHARS = 128
MAX_CANDIDATES = 64
MAX_DEADLINE_S = 3600.0
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The id of a message too big (or too broken) to parse, read from a bounded prefix only: clients such
# as SageClient put "id" first, so their over-long questions still get an error result they can match.
_ID_PREFIX = re.compile(r'\s*\{\s*"id"\s*:\s*"([^"\\\x00-\x1f]{1,%d})"' % MAX_ID_CHARS)
_PARSE_ID_LIMIT = 1_000_000


@dataclass
class Question:
    """A validated question.

    ``conversation`` is the caller's conversation id, or None for a question asked on its own: such a
    question is answered without history and adds nothing to any other question's history.
    """

    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    conversation: str | None = None
    context: str = ""
    candidates: int | None = None  # sampled candidates (llm_irp.candidates for this question)
    deadline_s: float | None = None
    reset: bool = False
    choices: list[str] | None = None  # the answer must be exactly one of these
    json_schema: dict | None = None  # the answer must be JSON valid under this schema
    min_confidence: float | None = None  # llm_irp.min_confidence for this question
    tools: list[Tool] | None = None  # the answer must be one call of these (answers/tool_calls.py)
    tool_choice: str | dict | None = None  # with tools: "required" (default), "auto" or {"name": tool}
    warnings: list[str] = field(default_factory=list)


def parse_question(raw: str, max_chars: int) -> Question:
    """Parse a ``question`` message. Raises SageError(invalid_input | too_long)."""
    if not isinstance(raw, str):
        raise SageError(INVALID_INPUT, "question message must be a string")
    # A JSON envelope may add a little to the question itself; anything beyond that is refused unread.
    if len(raw) > 2 * max_chars + 4096:
        raise SageError(TOO_LONG, f"message is {len(raw)} characters; the limit is {max_chars} for the question")
    _check_encodable(raw, "message")
    if "\ufffd" in raw:  # rclpy decodes invalid UTF-8 on the wire to U+FFFD replacement characters
        raise SageError(INVALID_INPUT, "message is not valid UTF-8 (it holds U+FFFD replacement characters)")
    stripped = raw.strip()
    if stripped.startswith("{"):
        return _from_json(stripped, max_chars)
    if stripped.startswith("[") or stripped.startswith('"'):
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            raise SageError(INVALID_INPUT, "JSON question must be an object with a 'question' field")
    return Question(text=_clean_text(raw, "question", max_chars))


def parse_id(raw: str) -> str | None:
    """Best-effort id of a message that failed to parse, so its error result can still be matched.

    Messages up to 1 MB are parsed as JSON; bigger or broken ones only have their first 256
    characters matched against ``{"id": "..."`` (no parsing of the rest)."""
    if not isinstance(raw, str):
        return None
    data = None
    if len(raw) < _PARSE_ID_LIMIT:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    value = data.get("id") if isinstance(data, dict) else None
    if data is None:
        match = _ID_PREFIX.match(raw[:256])
        value = match.group(1) if match else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _from_json(text: str, max_chars: int) -> Question:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SageError(INVALID_INPUT, f"message starts with '{{' but is not valid JSON: {exc.msg} "
                                       f"at character {exc.pos}") from None
    if not isinstance(data, dict):
        raise SageError(INVALID_INPUT, "JSON question must be an object with a 'question' field")
    body = data.get("question", data.get("text"))
    if body is None:
        raise SageError(INVALID_INPUT, "JSON question has no 'question' field (or its alias 'text')")
    question = Question(text=_clean_text(_typed(body, str, "question"), "question", max_chars))
    if "id" in data:
        question.id = _clean_text(_typed(data["id"], str, "id"), "id", MAX_ID_CHARS)
    if data.get("conversation") is not None:  # null (as results show an unnamed one) = no conversation
        question.conversation = _clean_text(_typed(data["conversation"], str, "conversation"),
                                            "conversation", MAX_ID_CHARS)
    if "context" in data:
        context = _typed(data["context"], str, "context")
        question.context = _clean_text(context, "context", max_chars) if context.strip() else ""
    for name in ("candidates", "max_iterations"):  # max_iterations: the older name, still accepted
        if name not in data:
            continue
        value = _typed(data[name], int, name)
        if not 1 <= value <= MAX_CANDIDATES:
            raise SageError(INVALID_INPUT, f"{name} must be in [1, {MAX_CANDIDATES}], got {value}")
        if question.candidates is not None and question.candidates != value:
            raise SageError(INVALID_INPUT, f"'candidates' ({question.candidates}) and its older name "
                                           f"'max_iterations' ({value}) disagree: send one of them")
        question.candidates = value
    if "deadline_s" in data:
        value = _typed(data["deadline_s"], float, "deadline_s")
        if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_S):
            raise SageError(INVALID_INPUT, f"deadline_s must be in (0, {MAX_DEADLINE_S:g}], got {value}")
        question.deadline_s = float(value)
    if "reset" in data:
        question.reset = _typed(data["reset"], bool, "reset")
        if question.reset and question.conversation is None:
            question.warnings.append("'reset' has no effect without 'conversation': "
                                     "a question without one is answered with no history anyway")
    if data.get("choices") is not None:
        question.choices = _choices(data["choices"])
    if data.get("json_schema") is not None and question.choices is not None:
        raise SageError(INVALID_INPUT, "'choices' and 'json_schema' cannot be combined: send one of them")
    if data.get("json_schema") is not None:
        from sage_irp_ros.answers.json_answers import check_schema

        question.json_schema = check_schema(data["json_schema"])
    if data.get("tools") is not None:
        _tools(question, data)
    elif data.get("tool_choice") is not None:
        raise SageError(INVALID_INPUT, "field 'tool_choice' needs 'tools'")
    if "min_confidence" in data:
        value = _typed(data["min_confidence"], float, "min_confidence")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise SageError(INVALID_INPUT, f"min_confidence must be in [0, 1], got {value}")
        question.min_confidence = float(value)
    unknown = sorted(str(k)[:40] for k in data if k not in FIELDS)
    if unknown:
        question.warnings.append(f"ignored unknown fields: {', '.join(unknown)}")
    return question


def _tools(question: Question, data: dict) -> None:
    """``tools`` and ``tool_choice`` (answers/tool_calls.py checks them); not with choices or json_schema."""
    from sage_irp_ros.answers.tool_calls import REQUIRED, check_tool_choice, check_tools

    if question.choices is not None or question.json_schema is not None:
        raise SageError(INVALID_INPUT, "'tools' cannot be combined with 'choices' or 'json_schema': send one of them")
    question.tools = check_tools(data["tools"])
    choice = data.get("tool_choice")
    question.tool_choice = REQUIRED if choice is None else check_tool_choice(choice, question.tools)


def _choices(value: Any) -> list[str]:
    """2..20 distinct non-empty option strings of at most 200 characters (compared stripped, case-blind)."""
    if not isinstance(value, list):
        raise SageError(INVALID_INPUT, f"field 'choices' must be a list of strings, got {type(value).__name__}")
    if not MIN_CHOICES <= len(value) <= MAX_CHOICES:
        raise SageError(INVALID_INPUT, f"field 'choices' needs {MIN_CHOICES} to {MAX_CHOICES} options, "
                                       f"got {len(value)}")
    out: list[str] = []
    seen: set[str] = set()
    for index, option in enumerate(value):
        if not isinstance(option, str):
            raise SageError(INVALID_INPUT, f"field 'choices' item {index} must be a string, "
                                           f"got {type(option).__name__}")
        _check_encodable(option, "choices")
        text = " ".join(_CONTROL.sub("", option).split())
        if not text:
            raise SageError(INVALID_INPUT, f"field 'choices' item {index} is empty")
        if len(text) > MAX_CHOICE_CHARS:
            raise SageError(INVALID_INPUT, f"field 'choices' item {index} is {len(text)} characters; "
                                           f"the limit is {MAX_CHOICE_CHARS}")
        if text.casefold() in seen:
            raise SageError(INVALID_INPUT, f"field 'choices' item {index} ({text[:40]!r}) repeats an earlier option")
        seen.add(text.casefold())
        out.append(text)
    return out


def _typed(value: Any, kind: type, name: str) -> Any:
    """Check a JSON field's type (bool is not a number; a whole float is an int)."""
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise SageError(INVALID_INPUT, f"field '{name}' must be {names[kind]}, got {type(value).__name__}")
    return value


def _clean_text(text: str, name: str, max_chars: int) -> str:
    """Drop control characters (keeping newlines and tabs), refuse empty and over-long text."""
    _check_encodable(text, name)
    text = _CONTROL.sub("", text).strip()
    if not text:
        raise SageError(INVALID_INPUT, f"{name} is empty")
    if len(text) > max_chars:
        raise SageError(TOO_LONG, f"{name} is {len(text)} characters; the limit is {max_chars}")
    return text


def _check_encodable(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SageError(INVALID_INPUT, f"{name} is not valid Unicode (lone surrogate)") from None
