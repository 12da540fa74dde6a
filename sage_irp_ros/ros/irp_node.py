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

"""The IRP node: a managed (lifecycle) ROS 2 node that answers questions, one result per question.

A thin adapter over :class:`sage_irp_ros.serving.core.SageCore`: configure loads and warms up the model,
activate accepts questions, deactivate refuses them (queued ones get an error result) after the
running one finished (bounded), cleanup releases the model, shutdown fails what is pending.
Inference runs on one :class:`~sage_irp_ros.serving.worker.QuestionWorker` thread fed by a bounded queue, so
subscription callbacks never block and a full queue answers ``queue_full`` at once. The lifecycle
state is rclpy's (read through :func:`~sage_irp_ros.ros.compat.lifecycle_state`, never copied); the
error code of a cancelled question is the core's. Topics, QoS, parameters and error codes:
docs/interface.md.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, NamedTuple

import psutil
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, Float32MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from sage_irp_ros import errors
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.serving.core import Ask, SageCore
from sage_irp_ros.errors import CLIENT_ERRORS, ModelLoadError, SageError
from sage_irp_ros.questions import Question, parse_id, parse_question
from sage_irp_ros.results import Result
from sage_irp_ros.ros.compat import guard_change_state, lifecycle_state
from sage_irp_ros.ros.logging_bridge import route_to_node
from sage_irp_ros.ros.params import IRP_NODE_KEYS, declare_config, validate_update
from sage_irp_ros.ros.spin import run_main
from sage_irp_ros.serving.throttle_signal import STALE, ThrottleSignal, ThrottleState
from sage_irp_ros.serving.worker import Cancel, QuestionWorker

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# question in / result out: a deeper history, so a burst of questions arriving faster than the executor
# takes them (or of queue_full results) is not overwritten in DDS before the node sees it. Depth does not
# affect QoS matching: depth-10 clients connect as before.
BURST = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Results: a reliable writer re-sends from its history until readers acknowledge; a burst of queue_full
# refusals to a slow (CPU-starved) reader must not push unacknowledged results out of it. ~2 kB each.
RESULTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# throttled in: best effort + volatile is the reader QoS that matches every writer (reliable or best
# effort, volatile or transient local), so a third-party thermal monitor with rclpy's default QoS is
# heard as well as the diagnostics node's latched writer. Writers republish; staleness covers silence.
THROTTLED_IN = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
SNARC_LABEL = "surprise,novelty,arousal,reward,conflict,total"
CANCEL_GRACE_S = 2.0      # a cancelled generation stops at its next token; wait this long for it
CLIENT_LOG_THROTTLE_S = 5.0  # refusals (client errors) log at most one WARN line per this period
PRIMARY_STATES = ("unconfigured", "inactive", "active")  # the ones a shutdown transition starts from
STOPPED_STATES = ("shuttingdown", "finalized")
DEACTIVATED = "the node was deactivated before this question ran"


class Pending(NamedTuple):
    """A question waiting for the worker, with the monotonic time it was received."""

    question: Question
    received: float


class IrpNode(Node, LifecycleNodeMixin):
    """Answers ``question`` messages with IRP; publishes answer, salience, snarc, result and status."""

    def __init__(self, node_name: str = "sage_irp", **kwargs: Any):
        Node.__init__(self, node_name, **kwargs)
        # A reentrant group lets get_state and status answer while configure loads the model.
        self._services_group = ReentrantCallbackGroup()
        LifecycleNodeMixin.__init__(self, callback_group=self._services_group)
        # Jazzy: an invalid transition would otherwise stop the node; each transition ends with a status.
        guard_change_state(self, after=self.publish_status)
        route_to_node(self.get_logger())  # the core's Python logging -> this node's logger, /rosout
        self.cfg = declare_config(self, IRP_NODE_KEYS)  # raises ConfigError naming every bad parameter
        self.core = SageCore(self.cfg, progress=self.get_logger().info)
        self._error: str | None = None  # why the last configure failed: the status' "error"
        self._throttle = ThrottleSignal()  # the last 'throttled' message, its age, staleness

        # Per-answer topics are lifecycle publishers (silent unless active); result and status are
        # plain ones: every question gets its result and the status is heard in every state.
        self.pub_answer = self.create_lifecycle_publisher(String, "answer", RELIABLE)
        self.pub_salience = self.create_lifecycle_publisher(Float32, "salience", RELIABLE)
        self.pub_snarc = self.create_lifecycle_publisher(Float32MultiArray, "snarc", RELIABLE)
        self.pub_result = self.create_publisher(String, "result", RESULTS)
        self.pub_status = self.create_publisher(String, "status", LATCHED)
        self._worker: QuestionWorker[Pending] = QuestionWorker(
            self._answer, self.cfg.node.queue_size, name="sage_irp_worker", on_idle=self.publish_status,
            on_crash=lambda exc: self.get_logger().error(f"worker: {type(exc).__name__}: {exc}"),
            handle_many=self._answer_many, batch_limit=self._batch_limit,
            batch_key=lambda item: item.question.conversation, batch_wait=lambda: self.cfg.node.batch_wait_s)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(String, "question", self._on_question, BURST, callback_group=inputs)
        self.create_subscription(Bool, "throttled", self._on_throttled, THROTTLED_IN, callback_group=inputs)
        self.create_service(Trigger, "~/reset_history", self._on_reset, callback_group=inputs)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._status_timer = self.create_timer(self.cfg.node.status_period_s, self._on_status_timer,
                                               callback_group=self._services_group)
        if self.cfg.node.autostart:
            self._autostart = self.create_timer(0.0, self._run_autostart, callback_group=self._services_group)
        self.publish_status()

    # -- lifecycle --------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.publish_status()  # configuring: state loading
        try:
            self.core.reconfigure(self.cfg)
            self.core.load()
        except Exception as exc:  # noqa: BLE001 - every failure is logged, reported and cleaned up
            if isinstance(exc, ModelLoadError):
                self._error = str(exc)
                self.get_logger().error(f"configure failed: {exc}")
            else:  # warm-up or a library failure (RuntimeError, CUDA OOM ...): keep the traceback
                self._error = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"configure failed: {self._error}\n{traceback.format_exc()}")
            self.core.release()  # what load made resident, and the store, are freed again
            return TransitionCallbackReturn.FAILURE
        self._error = None
        return LifecycleNodeMixin.on_configure(self, state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Questions arriving from now on are refused: the state machine reads 'deactivating'.
        self._refuse_pending(errors.NOT_ACTIVE, DEACTIVATED)
        self._wait_running()
        self._refuse_pending(errors.NOT_ACTIVE, DEACTIVATED)
        return LifecycleNodeMixin.on_deactivate(self, state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self.core.release(timeout=self.cfg.node.shutdown_timeout_s + CANCEL_GRACE_S):
            self.get_logger().error("cleanup failed: a generation is still running")
            return TransitionCallbackReturn.FAILURE
        return LifecycleNodeMixin.on_cleanup(self, state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._stop_serving():  # not stopped by stop() before: let subscribers get the last results
            self._wait_results_acked()
        return LifecycleNodeMixin.on_shutdown(self, state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._refuse_pending(errors.NOT_ACTIVE, "the node hit an error")
        self._error = f"a lifecycle transition from {state.label} raised"
        return TransitionCallbackReturn.SUCCESS

    def _run_autostart(self) -> None:
        self.destroy_timer(self._autostart)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()
        self.publish_status()

    def _wait_running(self) -> bool:
        """Wait (node.shutdown_timeout_s) for the running question; then cancel it (CANCEL_GRACE_S)."""
        timeout = self.cfg.node.shutdown_timeout_s
        if self._worker.wait_idle(timeout):
            return True
        self.get_logger().warning(f"deactivate: the running question did not finish within "
                                  f"node.shutdown_timeout_s = {timeout:g} s; cancelling it")
        self._worker.cancel(SageError(errors.NOT_ACTIVE, (
            "the node was deactivated while this question ran (cancelled after node.shutdown_timeout_s)")))
        return self._worker.wait_idle(CANCEL_GRACE_S)

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving (SIGINT/SIGTERM): fail queued questions, cancel the running one, join the worker,
        close the store; then the lifecycle shutdown transition, where the state machine allows one.

        Takes at most ``timeout`` (default node.shutdown_timeout_s) + CANCEL_GRACE_S + 0.5 s + 2 s.
        """
        self._stop_serving(timeout)
        if lifecycle_state(self) in PRIMARY_STATES:  # not in a transition another thread runs
            try:
                self.trigger_shutdown()  # -> finalized; on_shutdown finds the worker stopped
            except Exception as exc:  # noqa: BLE001 - a transition started meanwhile: serving is over anyway
                self.get_logger().warning(f"lifecycle shutdown not possible: {exc}")
        self.publish_status()
        self._wait_results_acked()

    def _stop_serving(self, timeout: float | None = None) -> bool:
        """Refuse what waits, stop the worker (cancel after ``timeout``), release; False if done before."""
        if self._worker.stopping:
            return False
        for item in self._worker.stop():
            self._refuse(item.question, SageError(errors.SHUTTING_DOWN, "the node is shutting down"), item.received)
        self._worker.join(self.cfg.node.shutdown_timeout_s if timeout is None else timeout,
                          SageError(errors.SHUTTING_DOWN, "generation cancelled: the node is stopping"),
                          CANCEL_GRACE_S)
        self.core.release(timeout=0.5 if self._worker.alive else None)
        return True

    def _wait_results_acked(self) -> None:
        try:  # let subscribers receive the last results before the process goes away
            self.pub_result.wait_for_all_acked(Duration(seconds=2))
        except Exception:  # noqa: BLE001 - the context is already down: nothing left to wait for
            pass

    # -- inputs -----------------------------------------------------------------------------------
    def _on_question(self, msg: String) -> None:
        received = time.monotonic()
        try:
            question = parse_question(msg.data, self.cfg.llm_irp.max_question_chars)
        except SageError as exc:
            self._refuse(None, exc, received, question_id=parse_id(msg.data))
            return
        for warning in question.warnings:
            self.get_logger().warning(f"question {question.id}: {warning}")
        error = self._not_serving("node is {state}, not active")
        if error is None and not self._worker.submit(Pending(question, received)):
            error = self._not_serving("node is {state}, not active") or SageError(errors.QUEUE_FULL, (
                f"{self._worker.depth()} questions already waiting (node.queue_size = {self._worker.maxsize})"))
        if error is not None:
            self._refuse(question, error, received)
            return
        self.publish_status()

    def _not_serving(self, message: str) -> SageError | None:
        """None while active and serving; else the refusal (``message`` may name ``{state}``)."""
        state = lifecycle_state(self)
        if self._worker.stopping or state in STOPPED_STATES:
            return SageError(errors.SHUTTING_DOWN, "the node is shutting down")
        if state != "active":
            return SageError(errors.NOT_ACTIVE, message.format(state=state))
        return None

    def _on_throttled(self, msg: Bool) -> None:
        self._throttle.update(bool(msg.data))
        if self._update_throttle():
            self.publish_status()

    def throttle_state(self) -> ThrottleState:
        """Throttled or not (stale after throttle.stale_timeout_s: not), and why."""
        return self._throttle.state(self.cfg.throttle.stale_timeout_s)

    def _update_throttle(self) -> bool:
        """Log a change of the effective throttle state; True when it changed."""
        change = self._throttle.changed(self.cfg.throttle.stale_timeout_s)
        if change is None:
            return False
        before, now = change
        if now.signal == STALE:
            self.get_logger().warning(
                f"no 'throttled' message for {now.age_s:.1f} s (throttle.stale_timeout_s = "
                f"{self.cfg.throttle.stale_timeout_s:g} s): treating the platform as not throttled")
        elif now.throttled:
            self.get_logger().warning("platform throttled: using throttled_* limits")
        elif before.throttled:
            self.get_logger().info("platform no longer throttled")
        return True

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        cleared = self.core.reset_history()
        response.success = True
        response.message = (f"cleared {cleared} conversation histories and the recent exchanges SNARC "
                            "surprise compares with")
        return response

    def _on_set_parameters(self, params):
        new, result = validate_update(self.cfg, params, lifecycle_state(self))
        if new is not None:
            old, self.cfg = self.cfg, new
            self.core.reconfigure(new)
            self._apply_node_settings(old, new)
        return result

    def _apply_node_settings(self, old: SageConfig, new: SageConfig) -> None:
        """``node.*`` keys take effect at once: the queue bound and the status period."""
        if new.node.queue_size != old.node.queue_size:
            self._worker.resize(new.node.queue_size)  # questions already waiting stay
        if new.node.status_period_s != old.node.status_period_s:
            self._status_timer.timer_period_ns = int(new.node.status_period_s * 1e9)
        self.publish_status()

    # -- the worker's side ------------------------------------------------------------------------
    def _answer(self, item: Pending, cancel: Cancel) -> None:
        """Run one queued question on the worker thread (others may join it while it decodes)."""
        self._answer_many([item], cancel)

    def _answer_many(self, items: list[Pending], cancel: Cancel) -> None:
        """Run queued questions together (node.batch_size): one result each, published as soon as it is
        ready; questions that arrive meanwhile join between two decode steps, up to the batch size."""
        error = self._not_serving(DEACTIVATED)
        if error is not None:
            for item in items:
                self._refuse(item.question, error, item.received)
            return
        self.publish_status()  # busy, with the batch
        throttled = self.throttle_state().throttled

        def more(refining: int, conversations: set) -> list[Ask]:  # called between two decode steps
            if not self._worker.depth() or self._not_serving(DEACTIVATED) is not None:
                return []
            joining = self._worker.take_more(self._batch_limit() - refining, conversations)
            throttled = self.throttle_state().throttled
            return [Ask(item.question, item.received, throttled, cancel) for item in joining]

        def published(index: int, result: Result) -> None:
            self._publish_result(result)
            self._worker.item_done()

        self.core.answer_many([Ask(item.question, item.received, throttled, cancel) for item in items],
                              on_result=published, more=more)

    def _batch_limit(self) -> int:
        """Questions the worker may take at once: node.batch_size, one while the platform is throttled."""
        return 1 if self.throttle_state().throttled and self.cfg.throttle.enabled else self.cfg.node.batch_size

    def _refuse(self, question: Question | None, error: SageError, received: float,
                question_id: str | None = None) -> None:
        """A question that never reached inference: counted as refused, its error result published."""
        self._publish_result(self.core.refuse(question, error, question_id=question_id, received=received))

    def _refuse_pending(self, code: str, message: str) -> None:
        for item in self._worker.take_pending():
            self._refuse(item.question, SageError(code, message), item.received)

    def _publish_result(self, result: Result) -> None:
        """The one place that reads a result: answer/salience/snarc when ok, a log line, the result JSON."""
        if result.ok:
            self.pub_answer.publish(String(data=result.answer))
            self.pub_salience.publish(Float32(data=float(result.snarc.total)))
            values = [float(getattr(result.snarc, k)) for k in SNARC_LABEL.split(",")]
            array = Float32MultiArray(data=values)
            array.layout.dim = [MultiArrayDimension(label=SNARC_LABEL, size=len(values), stride=len(values))]
            self.pub_snarc.publish(array)
        elif result.error.code in CLIENT_ERRORS:  # the client's or the node state's doing
            self.get_logger().warning(f"question {result.id} refused: {result.error.code}: {result.error.message}",
                                      throttle_duration_sec=CLIENT_LOG_THROTTLE_S)
        else:  # an inference-side failure
            self.get_logger().error(f"question {result.id}: {result.error.code}: {result.error.message}")
        self.pub_result.publish(String(data=result.to_json()))

    # -- status -----------------------------------------------------------------------------------
    def _on_status_timer(self) -> None:
        self._update_throttle()
        self.publish_status()

    def _operational_state(self, lifecycle: str) -> str:
        """idle | loading | ready | busy | error, from the lifecycle state and the worker."""
        if lifecycle == "configuring":
            return "loading"
        if self._worker.busy:
            return "busy"
        if lifecycle == "unconfigured" and self._error is not None:
            return "error"
        return "ready" if lifecycle == "active" else "idle"

    def status(self) -> dict[str, Any]:
        """The status JSON (docs/interface.md): the core's part plus this node's facts."""
        lifecycle = lifecycle_state(self)
        throttle = self.throttle_state()
        return {
            "node": self.get_name(), "namespace": self.get_namespace(), "lifecycle": lifecycle,
            "state": self._operational_state(lifecycle), **self.core.status().to_dict(),
            "queue_depth": self._worker.depth(), "queue_size": self._worker.maxsize,
            "batch": self._worker.running, "batch_size": self._batch_limit(),
            "status_period_s": self._status_timer.timer_period_ns / 1e9,
            "throttled": throttle.throttled, "throttled_signal": throttle.signal,
            "throttled_age_s": None if throttle.age_s is None else round(throttle.age_s, 3),
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "error": self._error, "stamp": time.time(),
        }

    def publish_status(self) -> None:
        """Publish the status now (latched): on every change and on the status timer."""
        try:
            self.pub_status.publish(String(data=json.dumps(self.status())))
        except Exception:  # noqa: BLE001 - publishing after the context shut down: nothing left to tell
            pass


def main(args: list[str] | None = None) -> int:
    """Entry point of ``irp_node``: run the node until Ctrl-C or SIGTERM."""
    return run_main(IrpNode, "sage_irp", args)


if __name__ == "__main__":
    sys.exit(main())
