"""The IRP node: a managed (lifecycle) ROS 2 node that answers questions, one result per question.

A thin adapter over :class:`sage_irp_ros.core.SageCore`: configure loads and warms up the model,
activate accepts questions, deactivate refuses them (queued ones get an error result) after the
running one finished (bounded), cleanup releases the model, shutdown fails what is pending.
Inference runs on one worker thread fed by a bounded queue, so subscription callbacks never block
and a full queue answers ``queue_full`` at once. Topics, QoS, parameters and error codes:
docs/interface.md.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from typing import Any

import psutil
import rclpy
import rclpy.logging
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, Float32MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from . import errors
from .config import ConfigError, SageConfig
from .core import SageCore
from .errors import CLIENT_ERRORS, ModelLoadError, SageError
from .questions import parse_id, parse_question
from .ros_compat import guard_change_state
from .ros_logging import route_to_node
from .ros_params import IRP_NODE_KEYS, declare_config, validate_update
from .ros_spin import init_ros, spin_nodes
from .throttle_signal import STALE, ThrottleSignal, ThrottleState

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
_STOP = object()


class IrpNode(Node, LifecycleNodeMixin):
    """Answers ``question`` messages with IRP; publishes answer, salience, snarc, result and status."""

    def __init__(self, node_name: str = "sage_irp", **kwargs: Any):
        Node.__init__(self, node_name, **kwargs)
        # A reentrant group lets get_state and status answer while configure loads the model.
        self._services_group = ReentrantCallbackGroup()
        LifecycleNodeMixin.__init__(self, callback_group=self._services_group)
        guard_change_state(self)  # Jazzy: an invalid transition would otherwise stop the node
        route_to_node(self.get_logger())  # the core's Python logging -> this node's logger, /rosout
        self.cfg = declare_config(self, IRP_NODE_KEYS)  # raises ConfigError naming every bad parameter
        self.core = SageCore(self.cfg, progress=self.get_logger().info)
        self._queue: queue.Queue = queue.Queue(maxsize=self.cfg.node.queue_size)
        self._lifecycle, self._state, self._load_error = "unconfigured", "idle", None
        self._active = threading.Event()
        self._stopping = threading.Event()  # set by stop(): refusals say shutting_down, not not_active
        self._cancel = threading.Event()
        self._idle = threading.Event()  # clear while the worker handles a question
        self._idle.set()
        self._throttle = ThrottleSignal()  # the last 'throttled' message, its age, staleness
        self._status_lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None

        # Per-answer topics are lifecycle publishers (silent unless active); result and status are
        # plain ones: every question gets its result and the status is heard in every state.
        self.pub_answer = self.create_lifecycle_publisher(String, "answer", RELIABLE)
        self.pub_salience = self.create_lifecycle_publisher(Float32, "salience", RELIABLE)
        self.pub_snarc = self.create_lifecycle_publisher(Float32MultiArray, "snarc", RELIABLE)
        self.pub_result = self.create_publisher(String, "result", RESULTS)
        self.pub_status = self.create_publisher(String, "status", LATCHED)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(String, "question", self._on_question, BURST, callback_group=inputs)
        self.create_subscription(Bool, "throttled", self._on_throttled, THROTTLED_IN, callback_group=inputs)
        self.create_service(Trigger, "~/reset_history", self._on_reset, callback_group=inputs)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._status_timer = self.create_timer(self.cfg.node.status_period_s, self._on_status_timer,
                                               callback_group=self._services_group)
        self._worker = threading.Thread(target=self._serve, name="sage_irp_worker", daemon=True)
        self._worker.start()
        if self.cfg.node.autostart:
            self._autostart = self.create_timer(0.0, self._run_autostart, callback_group=self._services_group)
        self.publish_status()

    # -- lifecycle --------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._set_state("configuring", "loading")
        try:
            self.core.reconfigure(self.cfg)
            self.core.load()
        except Exception as exc:  # noqa: BLE001 - every failure is logged, reported and cleaned up
            if isinstance(exc, ModelLoadError):
                self._load_error = str(exc)
                self.get_logger().error(f"configure failed: {exc}")
            else:  # warm-up or a library failure (RuntimeError, CUDA OOM ...): keep the traceback
                self._load_error = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"configure failed: {self._load_error}\n{traceback.format_exc()}")
            self.core.release()  # what load made resident, and the store, are freed again
            self._set_state("unconfigured", "error")
            return TransitionCallbackReturn.FAILURE
        self._load_error = None
        self._set_state("inactive", "idle")
        return LifecycleNodeMixin.on_configure(self, state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = LifecycleNodeMixin.on_activate(self, state)  # enables answer/salience/snarc
        self._active.set()
        self._set_state("active", "ready")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._fail_pending(errors.NOT_ACTIVE, "the node was deactivated before this question ran")
        self._wait_running("deactivate")
        self._fail_pending(errors.NOT_ACTIVE, "the node was deactivated before this question ran")
        result = LifecycleNodeMixin.on_deactivate(self, state)
        self._set_state("inactive", "idle")
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self.core.release(timeout=self.cfg.node.shutdown_timeout_s + CANCEL_GRACE_S):
            self.get_logger().error("cleanup failed: a generation is still running")
            return TransitionCallbackReturn.FAILURE
        self._set_state("unconfigured", "idle")
        return LifecycleNodeMixin.on_cleanup(self, state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._fail_pending(errors.NOT_ACTIVE, "the node hit an error")
        self._set_state("unconfigured", "error")
        return TransitionCallbackReturn.SUCCESS

    def _run_autostart(self) -> None:
        self.destroy_timer(self._autostart)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _wait_running(self, why: str) -> bool:
        """Wait (node.shutdown_timeout_s) for the running question; then cancel it (CANCEL_GRACE_S)."""
        timeout = self.cfg.node.shutdown_timeout_s
        if self._idle.wait(timeout):
            return True
        self.get_logger().warning(f"{why}: the running question did not finish within "
                                  f"node.shutdown_timeout_s = {timeout:g} s; cancelling it")
        self._cancel.set()
        return self._idle.wait(CANCEL_GRACE_S)

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving: fail queued questions, cancel the running one, join the worker, close the store.

        Takes at most ``timeout`` (default node.shutdown_timeout_s) + CANCEL_GRACE_S + 0.5 s + 2 s.
        """
        if not self._worker.is_alive():
            return
        self._stopping.set()
        self._active.clear()
        self._fail_pending(errors.SHUTTING_DOWN, "the node is shutting down")
        with self._queue.mutex:  # past maxsize if need be: the worker must see it
            self._queue.queue.append(_STOP)
            self._queue.unfinished_tasks += 1
            self._queue.not_empty.notify()
        self._worker.join(self.cfg.node.shutdown_timeout_s if timeout is None else timeout)
        if self._worker.is_alive():  # the running generation did not finish in time: cut it short
            self._cancel.set()
            self._worker.join(CANCEL_GRACE_S)
        self._fail_pending(errors.SHUTTING_DOWN, "the node is shutting down")
        self.core.release(timeout=0.5 if self._worker.is_alive() else None)
        self._set_state("finalized", "idle")
        try:  # let subscribers receive the last results before the process goes away
            self.pub_result.wait_for_all_acked(Duration(seconds=2))
        except Exception:
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
        if not self._active.is_set():
            self._refuse(question, self._inactive_error(f"node is {self._lifecycle}, not active"), received)
            return
        try:
            self._queue.put_nowait((question, received))
        except queue.Full:
            self._refuse(question, SageError(errors.QUEUE_FULL, (
                f"{self._queue.qsize()} questions already waiting "
                f"(node.queue_size = {self._queue.maxsize})")), received)
            return
        self.publish_status()

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
        new, result = validate_update(self.cfg, params, self._lifecycle)
        if new is not None:
            old, self.cfg = self.cfg, new
            self.core.reconfigure(new)
            self._apply_node_settings(old, new)
        return result

    def _apply_node_settings(self, old: SageConfig, new: SageConfig) -> None:
        """``node.*`` keys take effect at once: the queue bound and the status period."""
        if new.node.queue_size != old.node.queue_size:
            with self._queue.mutex:  # questions already waiting stay; the bound applies to new ones
                self._queue.maxsize = new.node.queue_size
        if new.node.status_period_s != old.node.status_period_s:
            self._status_timer.timer_period_ns = int(new.node.status_period_s * 1e9)
        self.publish_status()

    # -- worker -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._idle.clear()
            try:
                self._run(*item)
            finally:
                if not self._stopping.is_set():
                    self._cancel.clear()  # a cancel from deactivate applies to that question only
                self._idle.set()

    def _run(self, question, received: float) -> None:
        if not self._active.is_set():
            self._refuse(question, self._inactive_error("the node was deactivated before this question ran"),
                         received)
            return
        self._set_state(self._lifecycle, "busy")
        result = self.core.answer(question, received=received, throttled=self.throttle_state().throttled,
                                  cancel=self._cancel)
        if (not result["ok"] and result["error"]["code"] == errors.SHUTTING_DOWN
                and not self._stopping.is_set()):  # cancelled by deactivate, not by shutdown
            result = self.core.error_result(question, SageError(errors.NOT_ACTIVE, (
                "the node was deactivated while this question ran (cancelled after "
                "node.shutdown_timeout_s)")), received=received)
        self._publish_result(result)
        self._set_state(self._lifecycle, "ready" if self._active.is_set() else "idle")

    def _inactive_error(self, message: str) -> SageError:
        if self._stopping.is_set():
            return SageError(errors.SHUTTING_DOWN, "the node is shutting down")
        return SageError(errors.NOT_ACTIVE, message)

    def _refuse(self, question, error: SageError, received: float, question_id: str | None = None) -> None:
        """A question that never reached inference: counted as refused, its error result published."""
        self.core.stats.record(ok=False, code=error.code)
        self._publish_result(self.core.error_result(question, error, question_id=question_id, received=received))

    def _fail_pending(self, code: str, message: str) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                with self._queue.mutex:
                    self._queue.queue.appendleft(_STOP)
                    self._queue.unfinished_tasks += 1
                    self._queue.not_empty.notify()
                return
            question, received = item
            self._refuse(question, SageError(code, message), received)

    def _publish_result(self, result: dict[str, Any]) -> None:
        if result["ok"]:
            self.pub_answer.publish(String(data=result["answer"]))
            self.pub_salience.publish(Float32(data=float(result["snarc"]["total"])))
            values = [float(result["snarc"][k]) for k in SNARC_LABEL.split(",")]
            array = Float32MultiArray(data=values)
            array.layout.dim = [MultiArrayDimension(label=SNARC_LABEL, size=len(values), stride=len(values))]
            self.pub_snarc.publish(array)
        elif result["error"]["code"] in CLIENT_ERRORS:  # the client's or the node state's doing
            self.get_logger().warning(
                f"question {result['id']} refused: {result['error']['code']}: {result['error']['message']}",
                throttle_duration_sec=CLIENT_LOG_THROTTLE_S)
        else:  # an inference-side failure
            self.get_logger().error(f"question {result['id']}: {result['error']['code']}: "
                                    f"{result['error']['message']}")
        self.pub_result.publish(String(data=json.dumps(result, ensure_ascii=False)))

    # -- status -----------------------------------------------------------------------------------
    def _set_state(self, lifecycle: str, state: str) -> None:
        with self._status_lock:
            self._lifecycle, self._state = lifecycle, state
        self.publish_status()

    def _on_status_timer(self) -> None:
        self._update_throttle()
        self.publish_status()

    def status(self) -> dict[str, Any]:
        lm = self.core.lm
        stats = self.core.stats.snapshot()
        throttle = self.throttle_state()
        gpu_mb = None
        if lm is not None and lm.device.type == "cuda":
            import torch
            gpu_mb = round(torch.cuda.memory_allocated(lm.device) / 2**20, 1)
        return {
            "node": self.get_name(), "namespace": self.get_namespace(), "lifecycle": self._lifecycle,
            "state": self._state, "model": lm.model_id if lm else None,
            "device": str(lm.device) if lm else self.cfg.model.device,
            "precision": lm.precision if lm else self.cfg.model.precision,
            "packed_layers": lm.packed_layers if lm else None,
            "queue_depth": self._queue.qsize(), "queue_size": self._queue.maxsize,
            "status_period_s": self._status_timer.timer_period_ns / 1e9,
            "throttled": throttle.throttled, "throttled_signal": throttle.signal,
            "throttled_age_s": None if throttle.age_s is None else round(throttle.age_s, 3),
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "gpu_mem_mb": gpu_mb, "model_mb": round(lm.footprint_mb, 1) if lm else None,
            "max_memory_mb": self.cfg.model.max_memory_mb, "error": self._load_error,
            "memory_store": self.core.store_status(), **stats, "stamp": time.time(),
        }

    def publish_status(self) -> None:
        try:
            self.pub_status.publish(String(data=json.dumps(self.status())))
        except Exception:  # publishing after the context shut down: nothing left to tell
            pass


def main(args: list[str] | None = None) -> int:
    """Entry point of ``irp_node``: run the node until Ctrl-C or SIGTERM."""
    init_ros(args if args is not None else sys.argv)
    try:
        node = IrpNode()
    except ConfigError as exc:  # to the ROS logger (console, log file), not a bare print
        rclpy.logging.get_logger("sage_irp").error(str(exc))
        rclpy.try_shutdown()
        return 2
    return spin_nodes([node])


if __name__ == "__main__":
    sys.exit(main())
