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

"""Tool calls: the robot's skills as answers, one valid call by construction, with a confidence.

A question may carry ``tools`` in the OpenAI function format (``[{"type": "function", "function":
{"name", "description", "parameters"}}]``) and a ``tool_choice``: ``"required"`` (the default: the answer
is one call), ``"auto"`` (one more option, ``none``: the model answers in text) or ``{"name": ...}`` (that
tool, only its arguments are decoded). A call is two answers in one:

- **the name**, voted by the IRP rows (:func:`vote`): each row (the greedy one and the sampled ones)
  answers the tool prompt decoded under the grammar of the names, so every complete row names exactly
  one tool; the probabilities are the names' vote shares (and ``none``'s), the calibrated confidence is
  the choices' (:mod:`sage_irp_ros.answers.choices`). Scoring every name with ``score_options`` instead
  costs one forward of the long tool prompt per name and spelling (tens of seconds on a 2-core CPU);
  the rows share one prefill;
- **the arguments**, decoded under the chosen tool's ``parameters`` schema with the grammar
  (:mod:`sage_irp_ros.answers.grammar`): a greedy row and up to :data:`ARGUMENT_SAMPLES` sampled rows, the
  valid one the others agree with most (:func:`sage_irp_ros.answers.json_answers.pick`), validated with
  jsonschema. Candidates agree on calls, not on strings.

The prompts: where the tokenizer's chat template renders tools (``apply_chat_template(..., tools=...)``,
Qwen2.5 and others), the scoring and argument prompts use it; otherwise, and always for the IRP rows,
the plain format of :func:`tool_list` (one line per tool: ``name(arg, ...): description``).

Input is checked before anything runs (:func:`check_tools`, :func:`check_tool_choice`); limits:
:data:`MAX_TOOLS` tools, names of 1-64 letters, digits, ``_`` or ``-``, descriptions of at most
:data:`MAX_DESCRIPTION_CHARS` characters, parameters in the JSON-answer schema subset (16 KB each) and
:data:`MAX_TOOLS_BYTES` for the whole list. Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from sage_irp_ros.errors import INFERENCE_FAILED, INVALID_INPUT, SageError

MAX_TOOLS = 20
MAX_DESCRIPTION_CHARS = 1024
MAX_TOOLS_BYTES = 16 * 1024
ARGUMENT_SAMPLES = 2  # sampled argument rows besides the greedy one (fewer when the question asks for fewer)
NONE = "none"  # the option that answers in text (tool_choice "auto"); no tool may take this name
REQUIRED, AUTO = "required", "auto"
INSTRUCTION = "Answer with the name of the tool to call only."
AUTO_INSTRUCTION = f"Answer with the name of the tool to call only, or {NONE} if no tool fits."
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """One checked tool: its name, description and parameters schema (an object schema)."""

    name: str
    description: str
    parameters: dict

    def openai(self) -> dict:
        """The tool in the OpenAI function format (what a chat template's ``tools`` expects)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def signature(self) -> str:
        """``name(arg, arg?)``: the plain format's view of the parameters (``?``: optional)."""
        required = set(self.parameters.get("required", []))
        args = [p if p in required else f"{p}?" for p in self.parameters.get("properties", {})]
        return f"{self.name}({', '.join(args)})"


def _bad(message: str) -> SageError:
    return SageError(INVALID_INPUT, f"field 'tools' {message}")


def check_tools(value: Any) -> list[Tool]:
    """The question's ``tools`` checked: 1..20 tools, unique names, valid parameters schemas."""
    from sage_irp_ros.answers.json_answers import check_schema

    if not isinstance(value, list):
        raise _bad(f"must be a list of tools, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_TOOLS:
        raise _bad(f"needs 1 to {MAX_TOOLS} tools, got {len(value)}")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_TOOLS_BYTES:
        raise _bad(f"is {size} bytes; the limit is {MAX_TOOLS_BYTES}")
    tools: list[Tool] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object, got {type(item).__name__}")
        if item.get("type", "function") != "function":
            raise _bad(f"{where} has type {str(item.get('type'))[:40]!r}; only 'function' tools are supported")
        function = item.get("function", item)  # {"type": "function", "function": {...}} or the function itself
        if not isinstance(function, dict):
            raise _bad(f"{where}.function must be an object, got {type(function).__name__}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where} has no name")
        if not _NAME.match(name):
            raise _bad(f"{where} name {name[:40]!r} must be 1-64 letters, digits, '_' or '-'")
        if name.casefold() == NONE:
            raise _bad(f"{where} name {name!r} is reserved (tool_choice 'auto' answers in text with it)")
        if name.casefold() in seen:
            raise _bad(f"{where} name {name!r} repeats an earlier tool's name")
        seen.add(name.casefold())
        description = function.get("description", "")
        if not isinstance(description, str):
            raise _bad(f"{where} ({name}) description must be a string, got {type(description).__name__}")
        description = " ".join(description.split())
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise _bad(f"{where} ({name}) description is {len(description)} characters; "
                       f"the limit is {MAX_DESCRIPTION_CHARS}")
        parameters = function.get("parameters")
        parameters = dict(_EMPTY) if parameters is None else parameters
        if isinstance(parameters, dict) and parameters.get("additionalProperties") is False:
            parameters = {k: v for k, v in parameters.items() if k != "additionalProperties"}  # implied anyway
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise _bad(f"{where} ({name}) parameters must be a JSON Schema object with type 'object'")
        try:
            check_schema(parameters)
        except SageError as exc:
            reason = exc.message.replace("field 'json_schema' ", "", 1).replace("json_schema", "parameters")
            raise _bad(f"{where} ({name}) parameters: {reason}") from None
        tools.append(Tool(name, description, parameters))
    return tools


def check_tool_choice(value: Any, tools: Sequence[Tool]) -> str | dict:
    """``"required"``, ``"auto"`` or ``{"name": tool}`` (also OpenAI's ``{"type": "function", "function":
    {"name": ...}}``); an unknown name is invalid input."""
    if isinstance(value, str):
        if value in (REQUIRED, AUTO):
            return value
        raise SageError(INVALID_INPUT, f"field 'tool_choice' must be 'required', 'auto' or {{\"name\": ...}}, "
                                       f"got {value[:40]!r}")
    if isinstance(value, dict):
        name = value.get("function", {}).get("name") if isinstance(value.get("function"), dict) else value.get("name")
        names = [t.name for t in tools]
        if not isinstance(name, str) or name not in names:
            raise SageError(INVALID_INPUT, f"field 'tool_choice' names {str(name)[:64]!r}, which is not among "
                                           f"the tools ({', '.join(names)})")
        return {"name": name}
    raise SageError(INVALID_INPUT, f"field 'tool_choice' must be 'required', 'auto' or an object, "
                                   f"got {type(value).__name__}")


def options_of(tools: Sequence[Tool], tool_choice: str | dict | None) -> list[str]:
    """The names the call chooses among: every tool's, ``none`` too with ``auto``, only the forced one."""
    if isinstance(tool_choice, dict):
        return [tool_choice["name"]]
    return [t.name for t in tools] + ([NONE] if tool_choice == AUTO else [])


def tool_list(tools: Sequence[Tool], auto: bool) -> str:
    """The plain format: one line per tool (``name(arg, opt?): description``), ``none`` last with auto."""
    lines = [f"- {t.signature()}: {t.description}" if t.description else f"- {t.signature()}" for t in tools]
    if auto:
        lines.append(f"- {NONE}: no tool fits; answer in words instead")
    return "Tools:\n" + "\n".join(lines)


def name_prompt(question: str, tools: Sequence[Tool], auto: bool, listed: bool = True) -> str:
    """The prompt the name is chosen after: the tool list (unless the chat template renders the tools),
    the request, the instruction."""
    body = f"Request: {question}\n{AUTO_INSTRUCTION if auto else INSTRUCTION}"
    return f"{tool_list(tools, auto)}\n{body}" if listed else body


def vote(candidates: Sequence[Any], names: Sequence[str]) -> tuple[str, dict[str, float]]:
    """(the chosen name, each name's share of the rows naming one, summing to 1): every complete row names
    one, decoded under the names' grammar. The most voted name wins, the greedy row's on a tie, then the
    first. SageError inference_failed when no row named a tool (every row cut short)."""
    from sage_irp_ros.answers.choices import map_to_option

    votes = [0.0] * len(names)
    greedy = None
    for candidate in candidates:
        index = map_to_option(candidate.text, names)
        if index is not None:
            votes[index] += 1.0
            if candidate.temperature == 0.0:
                greedy = index
    total = sum(votes)
    if not total:
        raise SageError(INFERENCE_FAILED, f"none of {len(candidates)} candidates named a tool")
    best = max(range(len(names)), key=lambda i: (votes[i], i == greedy, -i))
    return names[best], {name: round(v / total, 6) for name, v in zip(names, votes)}


def arguments_prompt(question: str, tool: Tool, listed: bool = True) -> str:
    """The prompt the chosen tool's arguments are decoded after (under its schema's grammar)."""
    about = f"Call the tool {tool.name}" + (f" ({tool.description})" if tool.description and listed else "")
    schema = f", following this JSON Schema: {json.dumps(tool.parameters, ensure_ascii=False)}" if listed else ""
    return f"Request: {question}\n{about}. Answer with its arguments as JSON only{schema}."


def tool_named(tools: Sequence[Tool], name: str) -> Tool:
    return next(t for t in tools if t.name == name)


def takes_arguments(tool: Tool) -> bool:
    """False for a tool without parameters: its arguments are ``{}`` with nothing to decode."""
    return bool(tool.parameters.get("properties"))


# -- prompts as token ids --------------------------------------------------------------------------
_TEMPLATE_TOOLS: dict[int, bool] = {}
_PROBE = Tool("sage_irp_probe_tool", "probe", dict(_EMPTY))


def template_renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` (a probe tool's name shows up); once per tokenizer."""
    key = id(tokenizer)
    if key not in _TEMPLATE_TOOLS:
        ok = False
        if getattr(tokenizer, "chat_template", None):
            try:
                text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=[_PROBE.openai()],
                                                     tokenize=False, add_generation_prompt=True)
                ok = _PROBE.name in str(text)
            except Exception:  # noqa: BLE001 - a template that cannot take tools: the plain format
                ok = False
        _TEMPLATE_TOOLS[key] = ok
    return _TEMPLATE_TOOLS[key]


def prompt_ids(tokenizer, text: str, tools: Sequence[Tool], context: str = "", history=(),
               use_chat_template: bool = True) -> list[int]:
    """Token ids of ``text`` as a user turn, with ``tools`` rendered by the chat template where it can
    (``text`` then leaves the list out: ``listed=False``), else as :func:`render_prompt` does it."""
    from sage_irp_ros.irp.prompts import chat_messages, render_prompt, strip_special_tokens

    if not (use_chat_template and template_renders_tools(tokenizer)):
        return render_prompt(tokenizer, text, context, history, use_chat_template).ids
    specials = sorted({t for t in [*getattr(tokenizer, "all_special_tokens", []),
                                   *(tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special)]
                       if t}, key=len, reverse=True)

    def clean(value: str) -> str:
        return strip_special_tokens(value, specials)

    messages = chat_messages(clean(text), clean(context), [(clean(q), clean(a)) for q, a in history])
    safe = [Tool(t.name, clean(t.description), json.loads(clean(json.dumps(t.parameters)))).openai() for t in tools]
    rendered = tokenizer.apply_chat_template(messages, tools=safe, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def call_text(name: str, arguments: dict) -> str:
    """The result's ``answer`` for a call: the call as JSON, ``{"name": ..., "arguments": {...}}``."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
