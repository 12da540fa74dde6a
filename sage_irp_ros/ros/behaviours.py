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

"""py_trees behaviours that ask the IRP node questions: ``AskSage``, ``SageReady``, ``NotThrottled``.

Why these exist: behaviour trees tick at a fixed rate and must never block, while an answer takes
seconds. ``AskSage`` publishes the question once (through :class:`~sage_irp_ros.ros.client.SageClient`,
the one question/result implementation of this package) and reports RUNNING on every tick until the
result with its id arrives; preempting it (``stop(Status.INVALID)``) forgets the pending question so a
late result can never write to the blackboard afterwards. The two conditions let a tree check, without
asking anything, whether the node is loaded (``SageReady``) and whether the platform is thermally
throttled (``NotThrottled``).

py_trees is an optional dependency (``pip install py-trees`` or the ``bt`` extra); this is the only
package module that imports it. Follows the py_trees 2.x / py_trees_ros convention: build the tree
without ROS, then ``tree.setup(node=my_rclpy_node)`` hands every behaviour the node it subscribes on.
That node must be spun by an executor (e.g. :func:`~sage_irp_ros.ros.client.spinning`) while ticking.
"""

from __future__ import annotations

import time
import uuid
import weakref
from typing import Any, Callable, Optional, Sequence, Union

import py_trees
from py_trees.common import Access, Status
from rclpy.node import Node
from std_msgs.msg import Bool

from sage_irp_ros.ros.client import LATCHED, SageClient, topic
from sage_irp_ros.results import Result

ClientSource = Union[SageClient, Callable[[], SageClient], None]

# One SageClient per (node, namespace): behaviours of one tree share its subscriptions.
_shared: "weakref.WeakKeyDictionary[Node, dict[str, SageClient]]" = weakref.WeakKeyDictionary()


def shared_client(node: Node, namespace: str = "sage") -> SageClient:
    """The SageClient of ``node`` for ``namespace``, created on first use and then reused."""
    per_node = _shared.setdefault(node, {})
    if namespace not in per_node:
        per_node[namespace] = SageClient(node, namespace=namespace)
    return per_node[namespace]


class _SageBehaviour(py_trees.behaviour.Behaviour):
    """Common setup: find the SageClient (given, from a factory, or shared on ``setup(node=...)``)."""

    def __init__(self, name: str, client: ClientSource = None, namespace: str = "sage"):
        super().__init__(name)
        self.namespace = namespace
        self._client_source = client
        self.client: Optional[SageClient] = client if isinstance(client, SageClient) else None
        self.node: Optional[Node] = None

    def setup(self, **kwargs: Any) -> None:
        """Accepts ``node=`` (an rclpy Node, spun elsewhere); raises KeyError without node or client."""
        self.node = kwargs.get("node") or (self.client.node if self.client else None)
        if self.client is None:
            if callable(self._client_source):
                self.client = self._client_source()
            elif self.node is not None:
                self.client = shared_client(self.node, self.namespace)
            else:
                raise KeyError(f"{self.qualified_name}: setup() needs node=<rclpy Node> or a client")
        if self.node is None:
            self.node = self.client.node


class AskSage(_SageBehaviour):
    """Ask a question and wait for its result: RUNNING while waiting, SUCCESS on an ok result.

    The question is ``question`` (a constant) or the value of the blackboard key ``question_key``,
    read when the behaviour starts. On an ok result, the answer (str), the salience (float) and the
    whole result (:class:`~sage_irp_ros.results.Result`) are written to ``answer_key``,
    ``salience_key`` and ``result_key``. An error result writes ``result_key`` only (trees can branch
    on ``error_code``) and gives FAILURE, as does no result within ``timeout_s`` (counted from the
    first tick, including the wait for the node to be discovered) or a missing ``question_key``.
    Without ``conversation`` each question stands alone (no history, and it leaves none for any other
    asker); behaviours given the same ``conversation`` id share that conversation's recent exchanges.
    ``fields`` are sent in the question JSON too (``context``, ``deadline_s``, ...).

    With ``choices`` (e.g. ``["yes", "no"]``) the answer is one of them: an ok result also writes the
    chosen option to ``choice_key``. Every ok result writes its calibrated confidence to
    ``confidence_key``. With ``min_confidence`` (sent with the question) a result under it gives FAILURE
    after writing every key, so a Selector can take a safe branch; without it, confidence never fails.

    With ``tools`` (OpenAI function format) and ``tool_choice`` the answer is one call of a tool: an ok
    result writes it to ``tool_call_key`` as ``{"name": ..., "arguments": {...}}`` (None when, with
    ``tool_choice="auto"``, the model answered in text), for the tree to dispatch
    (:mod:`sage_irp_ros.ros.examples.dispatch_tree`).
    """

    def __init__(self, name: str = "AskSage", client: ClientSource = None, *,
                 question: Optional[str] = None, question_key: Optional[str] = None,
                 answer_key: str = "sage/answer", salience_key: str = "sage/salience",
                 result_key: str = "sage/result", timeout_s: float = 30.0, namespace: str = "sage",
                 conversation: Optional[str] = None, choices: Optional[Sequence[str]] = None,
                 min_confidence: Optional[float] = None, choice_key: str = "sage/choice",
                 confidence_key: str = "sage/confidence", tools: Optional[Sequence[dict]] = None,
                 tool_choice: Union[str, dict, None] = None, tool_call_key: str = "sage/tool_call", **fields: Any):
        super().__init__(name, client, namespace)
        self.tools = list(tools) if tools is not None else None
        self.tool_choice, self.tool_call_key = tool_choice, tool_call_key
        self.choices = list(choices) if choices is not None else None
        self.min_confidence = min_confidence
        self.choice_key, self.confidence_key = choice_key, confidence_key
        if (question is None) == (question_key is None):
            raise ValueError("AskSage needs exactly one of question= or question_key=")
        self.question = question
        self.question_key = question_key
        self.answer_key, self.salience_key, self.result_key = answer_key, salience_key, result_key
        self.timeout_s = float(timeout_s)
        self.conversation = conversation
        self.fields = fields
        self.question_id: Optional[str] = None  # id of the question last published
        self.result: Optional[Result] = None    # result of the last completed question
        self._future = None
        self._text: Optional[str] = None
        self._deadline = 0.0
        self.blackboard = self.attach_blackboard_client(name=name)
        for key in (answer_key, salience_key, result_key, choice_key, confidence_key, tool_call_key):
            self.blackboard.register_key(key, access=Access.WRITE)
        if question_key is not None:
            self.blackboard.register_key(question_key, access=Access.READ)

    def initialise(self) -> None:
        """Start a new round: read the question; it is published on the first tick the node is matched."""
        self._forget()
        self.result = None
        self.question_id = None
        self._deadline = time.monotonic() + self.timeout_s
        if self.question_key is None:
            self._text = self.question
        else:
            try:
                value = self.blackboard.get(self.question_key)
                self._text = "" if value is None else str(value)
            except KeyError:
                self._text = None

    def update(self) -> Status:
        if self.client is None:
            self.feedback_message = "not set up (call setup(node=...))"
            return Status.FAILURE
        if self._text is None:
            self.feedback_message = f"no question on the blackboard at '{self.question_key}'"
            return Status.FAILURE
        if self._future is None:
            if time.monotonic() >= self._deadline:
                self.feedback_message = f"no IRP node on {self.namespace} within {self.timeout_s:g} s"
                return Status.FAILURE
            if not self.client.wait_for_node(0.0):  # not discovered yet: publishing now would be lost
                self.feedback_message = "waiting for the IRP node"
                return Status.RUNNING
            self.question_id = uuid.uuid4().hex[:12]  # fresh per round: a retry never matches an old result
            self._future = self.client.ask_async(self._text, id=self.question_id,
                                                 conversation=self.conversation, choices=self.choices,
                                                 min_confidence=self.min_confidence, tools=self.tools,
                                                 tool_choice=self.tool_choice, **self.fields)
        if not self._future.done():
            if time.monotonic() >= self._deadline:
                self._forget()
                self.feedback_message = f"no result within {self.timeout_s:g} s"
                return Status.FAILURE
            self.feedback_message = f"waiting for result {self.question_id}"
            return Status.RUNNING
        result: Result = self._future.result()
        self._future = None
        self.result = result
        self.blackboard.set(self.result_key, result)
        if not result.ok:
            self.feedback_message = f"error {result.error_code}: {result.error_message}"
            return Status.FAILURE
        self.blackboard.set(self.answer_key, result.answer)
        self.blackboard.set(self.salience_key, result.salience)
        self.blackboard.set(self.choice_key, result.choice)
        self.blackboard.set(self.confidence_key, result.confidence)
        self.blackboard.set(self.tool_call_key, result.tool_call)
        if result.confident is False:
            self.feedback_message = (f"answered {result.answer!r} with confidence {result.confidence} "
                                     f"under min_confidence {self.min_confidence}")
            return Status.FAILURE
        self.feedback_message = f"answered (salience {result.salience}, confidence {result.confidence})"
        return Status.SUCCESS

    def terminate(self, new_status: Status) -> None:
        """On preemption (INVALID) stop waiting: the pending question is forgotten, its result ignored."""
        if new_status == Status.INVALID and self._future is not None:
            self.feedback_message = f"preempted while waiting for {self.question_id}"
        self._forget()

    def _forget(self) -> None:
        if self._future is not None and self.client is not None:
            self.client.forget(self._future)
        self._future = None


class SageReady(_SageBehaviour):
    """SUCCESS while the node's status says lifecycle ``active`` and state ``ready`` or ``busy``."""

    def __init__(self, name: str = "SageReady", client: ClientSource = None, namespace: str = "sage"):
        super().__init__(name, client, namespace)

    def update(self) -> Status:
        status = self.client.status if self.client is not None else None
        if not status:
            self.feedback_message = "no status from the IRP node yet"
            return Status.FAILURE
        ready = status.get("lifecycle") == "active" and status.get("state") in ("ready", "busy")
        self.feedback_message = f"lifecycle {status.get('lifecycle')}, state {status.get('state')}"
        return Status.SUCCESS if ready else Status.FAILURE


class NotThrottled(py_trees.behaviour.Behaviour):
    """SUCCESS unless the latched ``<namespace>/throttled`` topic last said true (never received: SUCCESS)."""

    def __init__(self, name: str = "NotThrottled", namespace: str = "sage"):
        super().__init__(name)
        self.namespace = namespace
        self.throttled: Optional[bool] = None
        self._subscription = None

    def setup(self, **kwargs: Any) -> None:
        """Subscribes on ``node=`` (an rclpy Node, spun elsewhere)."""
        node: Optional[Node] = kwargs.get("node")
        if node is None:
            raise KeyError(f"{self.qualified_name}: setup() needs node=<rclpy Node>")
        if self._subscription is None:
            self._subscription = node.create_subscription(
                Bool, topic(self.namespace, "throttled"), self._on_throttled, LATCHED)

    def _on_throttled(self, msg: Bool) -> None:
        self.throttled = bool(msg.data)

    def update(self) -> Status:
        self.feedback_message = {None: "no throttle report (assumed not throttled)",
                                 True: "platform throttled", False: "not throttled"}[self.throttled]
        return Status.FAILURE if self.throttled else Status.SUCCESS
