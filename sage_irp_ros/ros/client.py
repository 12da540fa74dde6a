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

"""SageClient: ask the IRP node a question over its topics and get the result with the same id.

One implementation for everything that asks: ``sage_irp ask``, the py_trees behaviours and tests.
It publishes on ``<ns>/question`` and matches ``<ns>/result`` messages by id; a result that arrives
after its caller gave up (timeout, behaviour preempted) is ignored.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_msgs.msg import String

from sage_irp_ros.results import Result

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Results of every client's questions share one topic: a deep reader history so a burst of them (other
# clients' included) does not overwrite ours before the executor takes it.
RESULTS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def topic(namespace: str, name: str) -> str:
    ns = namespace.strip("/")
    return f"/{ns}/{name}" if ns else name


class SageClient:
    """Question/result matching over topics; the node it lives on must be spun by an executor."""

    def __init__(self, node: Node, namespace: str = "sage"):
        self.node = node
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.status: dict[str, Any] | None = None
        self._status_changed = threading.Condition()
        self._pub = node.create_publisher(String, topic(namespace, "question"), RELIABLE)
        self._sub = node.create_subscription(String, topic(namespace, "result"), self._on_result, RESULTS)
        self._status_sub = node.create_subscription(String, topic(namespace, "status"), self._on_status, LATCHED)

    # -- asking -----------------------------------------------------------------------------------
    def ask_async(self, question: str, *, id: str | None = None, conversation: str | None = None,
                  choices: Sequence[str] | None = None, json_schema: Mapping[str, Any] | None = None,
                  min_confidence: float | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                  tool_choice: str | Mapping[str, Any] | None = None, **fields: Any) -> Future:
        """Publish a question; the returned future completes with a :class:`Result`.

        Without ``conversation`` the question stands alone: no history, and it leaves none. Questions
        with the same ``conversation`` id share that conversation's recent exchanges as context.
        ``choices``: the answer is one of these options (``Result.choice``, ``Result.probabilities``);
        ``json_schema``: the answer is JSON valid under this schema (``Result.json``); ``tools`` (OpenAI
        function format) and ``tool_choice`` (``"required"``, ``"auto"``, ``{"name": ...}``): the answer is
        one call of a tool (``Result.tool_call``, ``Result.probabilities`` over the names); ``min_confidence``:
        below it the result says ``confident`` false. ``fields`` are the question JSON's other optional
        fields (``context``, ``deadline_s``, ...).
        """
        qid = id or uuid.uuid4().hex[:12]
        future = Future()
        with self._lock:
            self._pending[qid] = future
        optional = {"conversation": conversation, "choices": list(choices) if choices is not None else None,
                    "json_schema": json_schema, "tools": list(tools) if tools is not None else None,
                    "tool_choice": tool_choice, "min_confidence": min_confidence, **fields}
        payload = {"id": qid, "question": question, **{k: v for k, v in optional.items() if v is not None}}
        self._pub.publish(String(data=json.dumps(payload)))
        return future

    def ask(self, question: str, timeout: float = 120.0, wait_ready: bool = False, *,
            conversation: str | None = None, **fields: Any) -> Result:
        """Blocking form: wait for the node (and, with ``wait_ready``, for it to be active), ask, and
        wait for the result. ``conversation``, ``choices``, ``json_schema``, ``tools``, ``tool_choice``,
        ``min_confidence`` and ``fields`` as for :meth:`ask_async` (passed in ``fields``). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        if not self.wait_for_node(timeout):
            raise TimeoutError(f"no IRP node answered on {self._pub.topic_name} within {timeout:g} s")
        if wait_ready and not self.wait_until_ready(max(0.0, deadline - time.monotonic())):
            state = self.status or {}
            raise TimeoutError(f"the IRP node did not become active within {timeout:g} s (lifecycle "
                               f"{state.get('lifecycle')}, state {state.get('state')}, error {state.get('error')})")
        future = self.ask_async(question, conversation=conversation, **fields)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(max(0.0, deadline - time.monotonic())):
            self.forget(future)
            raise TimeoutError(f"no result within {timeout:g} s")
        return future.result()

    def forget(self, future: Future) -> None:
        """Stop waiting for a question (its late result will be ignored)."""
        with self._lock:
            for qid, pending in list(self._pending.items()):
                if pending is future:
                    del self._pending[qid]
        future.cancel()

    # -- node state -------------------------------------------------------------------------------
    def wait_for_node(self, timeout: float) -> bool:
        """True once the question topic has a subscriber and the result topic a publisher."""
        return self._wait(lambda: self._pub.get_subscription_count() > 0
                          and self._sub.get_publisher_count() > 0, timeout, poll=0.05)

    def wait_until_ready(self, timeout: float) -> bool:
        """True once the node's status says it is active (model loaded and accepting)."""
        return self._wait(lambda: bool(self.status) and self.status.get("lifecycle") == "active", timeout)

    def _wait(self, condition: Callable[[], bool], timeout: float, poll: float | None = None) -> bool:
        deadline = time.monotonic() + timeout
        with self._status_changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Status changes notify; graph changes (matching) have no Python event, so poll those.
                self._status_changed.wait(min(left, poll) if poll else left)
        return True

    # -- callbacks --------------------------------------------------------------------------------
    def _on_result(self, msg: String) -> None:
        try:
            result = Result.from_json(msg.data)
        except (TypeError, ValueError):  # not a result message: no question of ours to match
            return
        with self._lock:
            future = self._pending.pop(result.id, None)
        if future is not None and not future.cancelled():
            future.set_result(result)

    def _on_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        with self._status_changed:
            self.status = status
            self._status_changed.notify_all()


@contextmanager
def spinning(node: Node) -> Iterator[Node]:
    """Spin ``node`` on a background thread for the duration of the block, then stop and join it."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:  # Ctrl-C shut the context down: nothing left to spin
            pass

    thread = threading.Thread(target=spin, name="sage_client_spin", daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
