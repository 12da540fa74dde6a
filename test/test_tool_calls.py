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

"""Tool calls: ``tools``/``tool_choice`` checked and refused with the reason, the prompts, the result's
``tool_call`` on the wire, and (llguidance and a tiny model) one valid call per question, whatever the
model, with probabilities over the names that sum to 1."""

from __future__ import annotations

import importlib.util
import json

import jsonschema
import pytest

from sage_irp_ros.answers import tool_calls
from sage_irp_ros.errors import INVALID_INPUT, SageError
from sage_irp_ros.questions import parse_question
from sage_irp_ros.results import Result

NAVIGATE = {"type": "function", "function": {
    "name": "navigate_to", "description": "Drive the robot to a named place.",
    "parameters": {"type": "object", "properties": {"place": {"enum": ["kitchen", "dock", "lab"]},
                                                    "speed": {"type": "number", "minimum": 0, "maximum": 1}},
                   "required": ["place"], "additionalProperties": False}}}
SAY = {"type": "function", "function": {
    "name": "say", "description": "Say a sentence aloud.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 12}},
                   "required": ["text"]}}}
DOCK = {"type": "function", "function": {"name": "dock", "description": "Return to the charger."}}
TOOLS = [NAVIGATE, SAY, DOCK]
needs_grammar = pytest.mark.skipif(not (importlib.util.find_spec("torch") and importlib.util.find_spec("llguidance")),
                                   reason="needs torch and llguidance")


def _ask(tools=TOOLS, question="Go to the kitchen, please.", **fields):
    return parse_question(json.dumps({"question": question, "tools": tools, **fields}), 20000)


def _tool(name="t", parameters=None, **function):
    body = {"name": name, **function}
    if parameters is not None:
        body["parameters"] = parameters
    return {"type": "function", "function": body}


# -- the question: tools and tool_choice --------------------------------------------------------------
def test_tools_are_kept_checked_and_required_by_default():
    q = _ask()
    assert [t.name for t in q.tools] == ["navigate_to", "say", "dock"]
    assert q.tool_choice == "required" and q.warnings == []
    assert q.tools[0].parameters == {k: v for k, v in NAVIGATE["function"]["parameters"].items()
                                     if k != "additionalProperties"}
    assert q.tools[2].parameters == {"type": "object", "properties": {}}  # no parameters: no arguments
    assert q.tools[0].openai()["function"]["name"] == "navigate_to"
    assert _ask(tool_choice="auto").tool_choice == "auto"
    assert _ask(tool_choice={"name": "say"}).tool_choice == {"name": "say"}
    assert _ask(tool_choice={"type": "function", "function": {"name": "dock"}}).tool_choice == {"name": "dock"}
    # the bare function (without the {"type": "function", "function": ...} wrapper) is accepted too
    assert _ask(tools=[{"name": "stop"}]).tools[0].name == "stop"


@pytest.mark.parametrize("tools, reason", [
    ({"name": "x"}, "must be a list of tools"),
    ([], "needs 1 to 20 tools"),
    ([_tool(f"t{i}") for i in range(21)], "needs 1 to 20 tools, got 21"),
    (["navigate_to"], "item 0 must be an object"),
    ([{"type": "retrieval"}], "only 'function' tools"),
    ([{"type": "function", "function": {"description": "no name"}}], "item 0 has no name"),
    ([_tool("go home")], "letters, digits"),
    ([_tool("none")], "reserved"),
    ([_tool("say"), _tool("Say")], "item 1 name 'Say' repeats"),
    ([_tool("t", description=5)], "description must be a string"),
    ([_tool("t", description="x" * 1025)], "description is 1025 characters"),
    ([_tool("t", parameters={"type": "string"})], "type 'object'"),
    ([_tool("t", parameters={"type": "object", "properties": {"n": {"type": "integer", "minimum": "a"}}})],
     "item 0 (t) parameters: is not a valid JSON Schema"),
    ([_tool("t", parameters={"type": "object", "properties": {"p": {"type": "string", "pattern": "a+"}}})],
     "unsupported keyword 'pattern' at parameters.properties.p"),
    ([_tool(f"t{i}", description="d" * 1000) for i in range(17)], "bytes; the limit is 16384"),
])
def test_bad_tools_are_invalid_input_with_the_reason(tools, reason):
    with pytest.raises(SageError) as err:
        _ask(tools=tools)
    assert err.value.code == INVALID_INPUT and reason in err.value.message, err.value.message
    assert "'tools'" in err.value.message


@pytest.mark.parametrize("fields, reason", [
    ({"tool_choice": {"name": "fly"}}, "names 'fly', which is not among the tools (navigate_to, say, dock)"),
    ({"tool_choice": "sometimes"}, "must be 'required', 'auto' or"),
    ({"tool_choice": 3}, "must be 'required', 'auto' or an object"),
    ({"choices": ["a", "b"]}, "'tools' cannot be combined"),
    ({"json_schema": {"type": "string"}}, "'tools' cannot be combined"),
])
def test_bad_tool_choice_and_combinations_are_invalid_input(fields, reason):
    with pytest.raises(SageError) as err:
        _ask(**fields)
    assert err.value.code == INVALID_INPUT and reason in err.value.message, err.value.message


def test_tool_choice_without_tools_is_invalid_input():
    with pytest.raises(SageError) as err:
        parse_question(json.dumps({"question": "hi", "tool_choice": "auto"}), 4000)
    assert err.value.code == INVALID_INPUT and "needs 'tools'" in err.value.message


# -- prompts and options ------------------------------------------------------------------------------
def test_the_plain_format_lists_signatures_and_none_only_with_auto():
    tools = _ask().tools
    listing = tool_calls.tool_list(tools, auto=False)
    assert listing.splitlines() == ["Tools:", "- navigate_to(place, speed?): Drive the robot to a named place.",
                                    "- say(text): Say a sentence aloud.", "- dock(): Return to the charger."]
    assert "- none:" in tool_calls.tool_list(tools, auto=True)
    prompt = tool_calls.name_prompt("Go home", tools, auto=True)
    assert prompt.startswith("Tools:\n") and prompt.endswith(tool_calls.AUTO_INSTRUCTION)
    assert "Request: Go home" in prompt
    assert tool_calls.options_of(tools, "required") == ["navigate_to", "say", "dock"]
    assert tool_calls.options_of(tools, "auto") == ["navigate_to", "say", "dock", "none"]
    assert tool_calls.options_of(tools, {"name": "say"}) == ["say"]
    assert '"maxLength": 12' in tool_calls.arguments_prompt("Say hi", tools[1])


def test_a_chat_template_that_renders_tools_is_used(tiny_model_dir):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert not tool_calls.template_renders_tools(plain)  # its template ignores tools: the plain format
    with_tools = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with_tools.chat_template = ("{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t['function']['name'] }}: "
                                "{{ t['function']['description'] }}\n{% endfor %}<|im_end|>\n{% endif %}"
                                + with_tools.chat_template)
    assert tool_calls.template_renders_tools(with_tools)
    tools = _ask().tools
    text = with_tools.decode(tool_calls.prompt_ids(with_tools, "Request: go<|im_end|>", tools))
    assert "navigate_to: Drive the robot to a named place." in text
    assert text.count("<|im_end|>") == 2  # the system turn's and the user turn's: the forged one is gone
    ignored = plain.decode(tool_calls.prompt_ids(plain, "Request: go", tools))
    assert "navigate_to" not in ignored  # the plain format puts the list in the text itself


# -- the result ---------------------------------------------------------------------------------------
def test_tool_call_round_trips_and_old_results_read_as_none():
    call = {"name": "navigate_to", "arguments": {"place": "lab", "speed": 0.5}}
    result = Result(id="a", ok=True, answer=tool_calls.call_text(call["name"], call["arguments"]), tool_call=call,
                    probabilities={"navigate_to": 0.7, "dock": 0.3}, confidence=0.6, confident=True)
    again = Result.from_json(result.to_json())
    assert again == result and again.tool_call == call
    keys = list(result.to_dict())
    assert keys.index("tool_call") == keys.index("json") + 1
    assert json.loads(result.answer) == call
    old = result.to_dict()
    del old["tool_call"]
    assert Result.from_dict(old).tool_call is None
    assert Result.from_dict({**old, "tool_call": "navigate_to"}).tool_call is None  # not a call: ignored


# -- answering with a tiny model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def core(tiny_model_dir):
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.serving.core import SageCore

    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir)}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": 40, "candidates": 2, "min_available_memory_mb": 0,
                                               "seed": 1}})
    core = SageCore(cfg)
    core.load()
    yield core
    core.release()


def _answered(core, q):
    """The form's answer as the core computes it (prepare, refine, finish), with the call itself."""
    from sage_irp_ros.answers.forms import ToolCall, form_of
    from sage_irp_ros.irp.options import AnswerOptions

    form = form_of(q)
    assert isinstance(form, ToolCall)
    text, options = form.prepare(core.engine, q, AnswerOptions.resolve(core.cfg.llm_irp, q))
    refined = core.engine.refine(text, q.context, (), options)
    return form.finish(core.engine, q, (), refined)


def _valid_call(call, tools) -> None:
    spec = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in tools}
    assert call["name"] in spec
    jsonschema.validate(call["arguments"], spec[call["name"]])


@needs_grammar
@pytest.mark.parametrize("question", ["Go to the kitchen, please.", "Tell everyone lunch is ready.",
                                      "Your battery is low.", "What is 2+2?"])
def test_every_answer_is_one_valid_call_with_probabilities_over_the_names(core, question):
    q = _ask(question=question)
    answered = _answered(core, q)
    _valid_call(answered.tool_call, TOOLS)
    assert json.loads(answered.answer) == answered.tool_call
    assert list(answered.probabilities) == ["navigate_to", "say", "dock"]
    assert abs(sum(answered.probabilities.values()) - 1.0) < 1e-5
    assert answered.probabilities[answered.tool_call["name"]] == max(answered.probabilities.values())
    assert 0.0 <= answered.confidence <= 1.0
    assert answered.refinement.irp.scoring_s > 0.0
    # through the core: the same kind of answer in the result, counted as served
    result = core.answer(q)
    assert result.ok, result.error
    _valid_call(json.loads(result.answer), TOOLS)
    assert abs(sum(result.probabilities.values()) - 1.0) < 1e-5


@needs_grammar
def test_a_named_tool_decodes_only_its_arguments(core):
    answered = _answered(core, _ask(tool_choice={"name": "navigate_to"}))
    assert answered.tool_call["name"] == "navigate_to" and answered.probabilities == {"navigate_to": 1.0}
    _valid_call(answered.tool_call, TOOLS)
    assert answered.tool_call["arguments"]["place"] in ("kitchen", "dock", "lab")
    assert answered.refinement.tokens > 1  # the arguments' rows are counted with the name's one token
    no_arguments = _answered(core, _ask(tool_choice={"name": "dock"}))
    assert no_arguments.tool_call == {"name": "dock", "arguments": {}}


@needs_grammar
def test_auto_adds_none_to_the_options(core):
    try:
        answered = _answered(core, _ask(tool_choice="auto", question="Hello there."))
    except SageError as exc:  # the random tiny model may choose none and then say nothing
        assert exc.code == "inference_failed" and "no answer text" in exc.message
        return
    assert list(answered.probabilities) == ["navigate_to", "say", "dock", "none"]
    assert abs(sum(answered.probabilities.values()) - 1.0) < 1e-5
    if answered.tool_call is None:
        assert answered.answer and max(answered.probabilities, key=answered.probabilities.get) == "none"
    else:
        _valid_call(answered.tool_call, TOOLS)


@needs_grammar
def test_bad_tools_fail_alone_and_the_core_keeps_serving(core):
    raw = json.dumps({"id": "bad", "question": "go", "tools": [_tool("a"), _tool("a")]})
    with pytest.raises(SageError) as err:
        parse_question(raw, 4000)
    refused = core.refuse(None, err.value, question_id="bad")
    assert not refused.ok and refused.error_code == INVALID_INPUT and "repeats" in refused.error_message
    assert refused.tool_call is None and refused.to_dict()["tool_call"] is None
    assert core.answer(_ask()).ok


# -- a behaviour tree dispatching the call ------------------------------------------------------------
def test_the_dispatch_subtree_runs_the_called_skill_only():
    pytest.importorskip("py_trees")
    pytest.importorskip("rclpy")
    import py_trees
    from py_trees.common import Status

    from sage_irp_ros.ros.examples.dispatch_tree import SKILLS, create_dispatch_subtree

    ran, said = [], []
    handlers = {t["function"]["name"]: (lambda name: lambda **kw: ran.append((name, kw)))(t["function"]["name"])
                for t in SKILLS}
    handlers["pick"] = lambda **kw: (_ for _ in ()).throw(RuntimeError("gripper jammed"))
    tree = py_trees.trees.BehaviourTree(create_dispatch_subtree(handlers, min_confidence=0.5, say=said.append))
    storage = py_trees.blackboard.Blackboard.storage
    try:
        storage.update({"/sage/tool_call": {"name": "navigate_to", "arguments": {"place": "kitchen"}},
                        "/sage/confidence": 0.8, "/sage/answer": "{...}", "/sage/salience": 0.3})
        tree.tick()
        assert tree.root.status == Status.SUCCESS and ran == [("navigate_to", {"place": "kitchen"})]
        storage["/sage/confidence"] = 0.2  # not confident: no skill runs, the answer is only logged
        tree.tick()
        assert ran == [("navigate_to", {"place": "kitchen"})] and said and said[-1].startswith("no skill:")
        storage.update({"/sage/tool_call": None, "/sage/confidence": 0.9, "/sage/answer": "Hello!"})
        tree.tick()  # an answer in text (tool_choice auto): logged, nothing runs
        assert len(ran) == 1 and "Hello!" in said[-1]
        storage["/sage/tool_call"] = {"name": "pick", "arguments": {"object": "cup"}}
        tree.tick()  # a failing skill is its branch's failure: the tree falls through to the log
        assert len(ran) == 1 and "no skill:" in said[-1]
        pick = next(n for n in tree.root.iterate() if n.name == "RunSkill(pick)")
        assert "gripper jammed" in pick.feedback_message
    finally:
        for key in ("/sage/tool_call", "/sage/confidence", "/sage/answer", "/sage/salience"):
            storage.pop(key, None)
