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

"""Example py_trees tree: ask the on-board model which skill to run, then run it (a tool call).

The robot's skills are tools (OpenAI function format, :data:`SKILLS`); the node answers with one call
whose name is among them and whose arguments validate against that skill's schema, so the tree only
branches on the name::

    Selector "DispatchWhenReady"
    |- Sequence "Dispatch"
    |   |- SageReady, NotThrottled
    |   |- AskSage          tools=SKILLS: the call on the blackboard (sage/tool_call)
    |   `- Selector "Skill"
    |       |- Sequence "navigate_to"   CallIs("navigate_to", min_confidence) -> RunSkill(navigate_to)
    |       |- ... one branch per skill
    |       `- LogAnswer "no skill"     an answer in text (tool_choice auto), or not confident enough
    `- FallbackLog "throttled or not ready"

Run it against a running node (``sage_irp run`` in another terminal)::

    python -m sage_irp_ros.ros.examples.dispatch_tree --question "Bring me the red cup from the kitchen." \\
        [--tool-choice auto] [--min-confidence 0.5] [--namespace sage] [--timeout 120]

The skills here only log what they would do (``navigate_to(place='kitchen')``); a robot passes its own
handlers to :func:`create_dispatch_tree` (an action client per skill, say).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import py_trees
from py_trees.common import Access, Status

from sage_irp_ros.ros.behaviours import AskSage, NotThrottled, SageReady
from sage_irp_ros.ros.examples.ask_tree import ChoiceIs, FallbackLog, LogAnswer, run_tree

Handler = Callable[..., Any]


def _skill(name: str, description: str, properties: Mapping[str, Any], required: Sequence[str] = ()) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": dict(properties), "required": list(required)}}}


SKILLS = [
    _skill("navigate_to", "Drive the robot to a named place.",
           {"place": {"type": "string", "maxLength": 40}}, ["place"]),
    _skill("pick", "Pick up an object with the gripper.", {"object": {"type": "string", "maxLength": 40}}, ["object"]),
    _skill("place", "Put the held object down on a surface.",
           {"surface": {"type": "string", "maxLength": 40}}, ["surface"]),
    _skill("say", "Say a sentence aloud to the people nearby.", {"text": {"type": "string", "maxLength": 200}},
           ["text"]),
    _skill("dock", "Return to the charging dock.", {}),
]


class CallIs(ChoiceIs):
    """SUCCESS when the blackboard's tool call names ``tool`` with a confidence of at least ``min_confidence``."""

    what = "call"

    def __init__(self, tool: str, min_confidence: float = 0.0, tool_call_key: str = "sage/tool_call",
                 confidence_key: str = "sage/confidence"):
        super().__init__(tool, min_confidence, choice_key=tool_call_key, confidence_key=confidence_key)
        self.tool, self.tool_call_key = tool, tool_call_key

    def value(self, written):
        return written.get("name") if isinstance(written, dict) else None


class RunSkill(py_trees.behaviour.Behaviour):
    """Run ``handler(**arguments)`` of the blackboard's tool call once; SUCCESS unless the handler raises."""

    def __init__(self, tool: str, handler: Handler, tool_call_key: str = "sage/tool_call"):
        super().__init__(f"RunSkill({tool})")
        self.tool, self.handler, self.tool_call_key = tool, handler, tool_call_key
        self.blackboard = self.attach_blackboard_client(name=self.name)
        self.blackboard.register_key(tool_call_key, access=Access.READ)

    def update(self) -> Status:
        call = self.blackboard.get(self.tool_call_key) if self.blackboard.exists(self.tool_call_key) else None
        if not isinstance(call, dict) or call.get("name") != self.tool:
            self.feedback_message = f"no call of {self.tool} on the blackboard"
            return Status.FAILURE
        try:
            self.handler(**call.get("arguments", {}))
        except Exception as exc:  # noqa: BLE001 - a failing skill is this branch's FAILURE, not the tree's crash
            self.feedback_message = f"{self.tool} failed: {type(exc).__name__}: {exc}"
            return Status.FAILURE
        self.feedback_message = f"ran {self.tool}({json.dumps(call.get('arguments', {}), ensure_ascii=False)})"
        return Status.SUCCESS


def logging_handlers(tools: Sequence[dict], say: Callable[[str], None]) -> dict[str, Handler]:
    """A handler per tool that only says what it would do: ``navigate_to(place='kitchen')``."""
    def handler(name: str) -> Handler:
        def run(**arguments: Any) -> None:
            say(f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})")
        return run
    return {t["function"]["name"]: handler(t["function"]["name"]) for t in tools}


def create_dispatch_subtree(handlers: Mapping[str, Handler], min_confidence: float = 0.0,
                            say: Optional[Callable[[str], None]] = None) -> py_trees.behaviour.Behaviour:
    """Selector "Skill": the branch of the called tool runs its handler; otherwise (an answer in text, or a
    confidence under ``min_confidence``) the answer is logged and nothing runs."""
    branches: list[py_trees.behaviour.Behaviour] = [
        py_trees.composites.Sequence(name, memory=False, children=[CallIs(name, min_confidence),
                                                                   RunSkill(name, handler)])
        for name, handler in handlers.items()]
    branches.append(LogAnswer("NoSkill", say=lambda line: (say or print)(f"no skill: {line}")))
    return py_trees.composites.Selector("Skill", memory=False, children=branches)


def create_dispatch_tree(question: str, tools: Sequence[dict] = SKILLS,
                         handlers: Optional[Mapping[str, Handler]] = None, tool_choice: Any = None,
                         min_confidence: float = 0.0, namespace: str = "sage", timeout_s: float = 60.0,
                         say: Optional[Callable[[str], None]] = None, **fields: Any) -> py_trees.behaviour.Behaviour:
    """Ask which of ``tools`` to call for ``question`` and run its handler (default: log the call)."""
    handlers = handlers if handlers is not None else logging_handlers(tools, say or print)
    ask = py_trees.composites.Sequence("Dispatch", memory=False, children=[
        SageReady(namespace=namespace), NotThrottled(namespace=namespace),
        AskSage(question=question, tools=list(tools), tool_choice=tool_choice, timeout_s=timeout_s,
                namespace=namespace, **fields),
        create_dispatch_subtree(handlers, min_confidence, say),
    ])
    return py_trees.composites.Selector("DispatchWhenReady", memory=False, children=[
        ask, FallbackLog("throttled or not ready", say=say)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dispatch_tree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--question", default="Bring me the red cup from the kitchen.")
    parser.add_argument("--tool-choice", default=None, help="required (default), auto or a skill's name")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="least confidence to run the skill")
    parser.add_argument("--namespace", default="sage")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds until giving up")
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    choice = args.tool_choice
    if choice is not None and choice not in ("required", "auto"):
        choice = {"name": choice}
    return run_tree("sage_irp_dispatch_example", lambda say: create_dispatch_tree(
        args.question, tool_choice=choice, min_confidence=args.min_confidence, namespace=args.namespace,
        timeout_s=args.timeout, say=say), args.timeout, ros_args,
        lambda: json.dumps(py_trees.blackboard.Blackboard.storage.get("/sage/tool_call")), "no skill ran")


if __name__ == "__main__":
    sys.exit(main())
