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

"""Example py_trees tree: ask the robot's LLM a question when it is ready, log the answer, else wait.

    Selector "AskWhenReady" (no memory: re-checks the conditions every tick, preempting the fallback)
    |- Sequence "Ask" (no memory: a throttle report or a node going down preempts AskSage)
    |   |- SageReady      status topic: lifecycle active, state ready/busy
    |   |- NotThrottled   throttled topic false or never received
    |   |- AskSage        question -> result with the same id; answer/salience on the blackboard
    |   `- LogAnswer      logs (or speaks, via ``say``) the answer
    `- FallbackLog "throttled or not ready"   RUNNING: the tree keeps waiting instead of failing

Run it against a running node (``sage_irp run`` in another terminal)::

    python -m sage_irp_ros.ros.examples.ask_tree --question "Where is the dock?" [--conversation C]
        [--namespace sage] [--timeout 120]

Without ``--conversation`` the question is asked on its own (no history, and it leaves none).

With ``--choice`` options the tree asks a choices question and branches on the answer (``create_choice_tree``)::

    Selector "AskWhenReady"
    |- Sequence "Ask"
    |   |- SageReady, NotThrottled
    |   |- AskSage         choices yes/no: choice and confidence on the blackboard
    |   `- Selector "Decide"
    |       |- Sequence "Go"   ChoiceIs("yes", min_confidence) -> LogAnswer "go: ..."
    |       `- LogAnswer "stop: ..."   any other option, or not confident enough: the safe branch
    `- FallbackLog "throttled or not ready"

    python -m sage_irp_ros.ros.examples.ask_tree --question "Is the path clear?" --choice yes --choice no \
        --min-confidence 0.6

``main`` ticks the tree at 2 Hz until it succeeds (exit 0, the answer printed) or the timeout passes
(exit 1, the last feedback printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Optional, Sequence

import py_trees
from py_trees.common import Access, Status

from sage_irp_ros.ros.behaviours import AskSage, NotThrottled, SageReady

TICK_HZ = 2.0


class LogAnswer(py_trees.behaviour.Behaviour):
    """Hand the answer on the blackboard to ``say`` (default: the behaviour's logger); FAILURE if none."""

    def __init__(self, name: str = "LogAnswer", answer_key: str = "sage/answer",
                 salience_key: str = "sage/salience", say: Optional[Callable[[str], None]] = None):
        super().__init__(name)
        self.answer_key, self.salience_key = answer_key, salience_key
        self.say = say
        self.blackboard = self.attach_blackboard_client(name=name)
        self.blackboard.register_key(answer_key, access=Access.READ)
        self.blackboard.register_key(salience_key, access=Access.READ)

    def update(self) -> Status:
        try:
            answer = self.blackboard.get(self.answer_key)
        except KeyError:
            self.feedback_message = "no answer on the blackboard"
            return Status.FAILURE
        salience = self.blackboard.get(self.salience_key) if self.blackboard.exists(self.salience_key) else None
        line = f"answer (salience {salience:.3f}): {answer}" if salience is not None else f"answer: {answer}"
        (self.say or self.logger.info)(line)
        self.feedback_message = line
        return Status.SUCCESS


class ChoiceIs(py_trees.behaviour.Behaviour):
    """SUCCESS when the blackboard's choice is ``option`` with a confidence of at least ``min_confidence``."""

    what = "choice"

    def __init__(self, option: str, min_confidence: float = 0.0, choice_key: str = "sage/choice",
                 confidence_key: str = "sage/confidence"):
        super().__init__(f"{type(self).__name__}({option})")
        self.option, self.min_confidence = option, float(min_confidence)
        self.choice_key, self.confidence_key = choice_key, confidence_key
        self.blackboard = self.attach_blackboard_client(name=self.name)
        self.blackboard.register_key(choice_key, access=Access.READ)
        self.blackboard.register_key(confidence_key, access=Access.READ)

    def value(self, written):
        """What the blackboard's entry says to compare with ``option`` (the choice itself)."""
        return written

    def update(self) -> Status:
        written = self.blackboard.get(self.choice_key) if self.blackboard.exists(self.choice_key) else None
        confidence = self.blackboard.get(self.confidence_key) if self.blackboard.exists(self.confidence_key) else None
        value = self.value(written)
        ok = value == self.option and confidence is not None and confidence >= self.min_confidence
        self.feedback_message = f"{self.what} {value!r}, confidence {confidence}"
        return Status.SUCCESS if ok else Status.FAILURE


class FallbackLog(py_trees.behaviour.Behaviour):
    """Log ``message`` once each time this branch is entered and report ``status`` (default RUNNING)."""

    def __init__(self, message: str, status: Status = Status.RUNNING,
                 say: Optional[Callable[[str], None]] = None):
        super().__init__("FallbackLog")
        self.message, self.result_status, self.say = message, status, say
        self.feedback_message = message

    def initialise(self) -> None:
        (self.say or self.logger.info)(self.message)

    def update(self) -> Status:
        return self.result_status


def create_tree(question: str = "What is 2+2?", namespace: str = "sage", timeout_s: float = 60.0,
                say: Optional[Callable[[str], None]] = None, conversation: Optional[str] = None,
                **fields: Any) -> py_trees.behaviour.Behaviour:
    """The example tree's root; ``conversation`` (None: none) and ``fields`` (``deadline_s``, ...) go
    into the question JSON."""
    ask = py_trees.composites.Sequence("Ask", memory=False, children=[
        SageReady(namespace=namespace),
        NotThrottled(namespace=namespace),
        AskSage(question=question, timeout_s=timeout_s, namespace=namespace, conversation=conversation,
                **fields),
        LogAnswer(say=say),
    ])
    return py_trees.composites.Selector("AskWhenReady", memory=False, children=[
        ask, FallbackLog("throttled or not ready", say=say)])


def create_choice_tree(question: str = "Is the path clear?", choices: Sequence[str] = ("yes", "no"),
                       go: Optional[str] = None, min_confidence: float = 0.0, namespace: str = "sage",
                       timeout_s: float = 60.0, say: Optional[Callable[[str], None]] = None,
                       **fields: Any) -> py_trees.behaviour.Behaviour:
    """Ask a choices question and branch: "go" when the answer is ``go`` (default: the first option) with a
    confidence of at least ``min_confidence``, else "stop" (the safe branch)."""
    go = choices[0] if go is None else go
    decide = py_trees.composites.Selector("Decide", memory=False, children=[
        py_trees.composites.Sequence("Go", memory=False, children=[
            ChoiceIs(go, min_confidence), LogAnswer("LogGo", say=_prefixed("go", say))]),
        LogAnswer("LogStop", say=_prefixed("stop", say)),
    ])
    ask = py_trees.composites.Sequence("Ask", memory=False, children=[
        SageReady(namespace=namespace), NotThrottled(namespace=namespace),
        AskSage(question=question, choices=list(choices), timeout_s=timeout_s, namespace=namespace, **fields),
        decide,
    ])
    return py_trees.composites.Selector("AskWhenReady", memory=False, children=[
        ask, FallbackLog("throttled or not ready", say=say)])


def _prefixed(prefix: str, say: Optional[Callable[[str], None]]) -> Callable[[str], None]:
    def out(line: str) -> None:
        (say or print)(f"{prefix}: {line}")
    return out


def tick_until(tree: py_trees.trees.BehaviourTree, timeout_s: float, hz: float = TICK_HZ,
               until: Sequence[Status] = (Status.SUCCESS,)) -> Status:
    """Tick at ``hz`` until the root's status is in ``until`` or ``timeout_s`` passes; the last status."""
    period = 1.0 / hz
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        tree.tick()
        if tree.root.status in until or started >= deadline:
            return tree.root.status
        time.sleep(max(0.0, period - (time.monotonic() - started)))  # the tick period, not a sync


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sage_irp_bt_example", description=__doc__.split("\n\n")[0])
    parser.add_argument("--question", default="What is 2+2?")
    parser.add_argument("--conversation", help="conversation id (default: none, no history)")
    parser.add_argument("--choice", action="append", dest="choices", metavar="OPTION",
                        help="ask a choices question and branch on it (the first option is 'go')")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="with --choice: least confidence to go")
    parser.add_argument("--namespace", default="sage")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds until giving up")
    args, ros_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.choices:
        def make(say):
            return create_choice_tree(args.question, args.choices, min_confidence=args.min_confidence,
                                      namespace=args.namespace, timeout_s=args.timeout, say=say,
                                      conversation=args.conversation)
    else:
        def make(say):
            return create_tree(args.question, args.namespace, args.timeout, say, conversation=args.conversation)
    return run_tree("sage_irp_bt_example", make, args.timeout, ros_args,
                    lambda: py_trees.blackboard.Blackboard.storage.get("/sage/answer"), "no answer")


def run_tree(name: str, make_root: Callable[[Callable[[str], None]], py_trees.behaviour.Behaviour], timeout: float,
             ros_args: list[str], success: Callable[[], object], nothing: str) -> int:
    """Run an example tree on its own node until it succeeds or ``timeout`` passes: print ``success()``
    and return 0, else say what it waited for and return 1 (130 on Ctrl-C)."""
    import rclpy

    from sage_irp_ros.ros.client import spinning

    rclpy.init(args=[name, *ros_args])
    node = rclpy.create_node(name)
    try:
        with spinning(node):
            tree = py_trees.trees.BehaviourTree(make_root(node.get_logger().info))
            tree.setup(node=node)  # non-blocking; the conditions wait for the node at tick time
            if tick_until(tree, timeout) == Status.SUCCESS:
                print(success())
                return 0
            tip = tree.tip()
            print(f"{nothing} within {timeout:g} s: {tip.name if tip else '-'}: "
                  f"{tip.feedback_message if tip else ''}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
