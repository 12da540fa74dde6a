"""The IRP node: a managed (lifecycle) ROS 2 node that answers questions, one result per question.

A thin adapter over :class:`sage_irp_ros.core.SageCore`: configure loads and warms up the model,
activate accepts questions, deactivate refuses them (queued ones get an error result), cleanup
releases the model, shutdown fails what is pending. Inference runs on one worker thread fed by a
bounded queue, so subscription callbacks never block and a full queue answers ``queue_full`` at once.
Topics, QoS, parameters and error codes: docs/interface.md.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import psutil
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, Float32MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from . import errors
from .config import ConfigError
from .core import SageCore
from .errors import ModelLoadError, SageError
from .questions import parse_id, parse_question
from .ros_compat import guard_change_state
from .ros_params import declare_config, validate_update

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# question in / result out: a deeper history, so a burst of questions arriving faster than the executor
# takes them (or of queue_full results) is not overwritten in DDS before the node sees it. Depth does not
# affect QoS matching: depth-10 clients connect as before.
BURST = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Results: a reliable writer re-sends from its history until readers acknowledge; a burst of queue_full
# refusals to a slow (CPU-starved) reader must not push unacknowledged results out of it. ~2 kB each.
RESULTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
SNARC_LABEL = "surprise,novelty,arousal,reward,conflict,total"
_STOP = object()


class IrpNode(Node, LifecycleNodeMixin):
    """Answers ``question`` messages with IRP; publishes answer, salience, snarc, result and status."""

    def __init__(self, node_name: str = "sage_irp", **kwargs: Any):
        Node.__init__(self, node_name, **kwargs)
        # A reentrant group lets get_state and status answer while configure loads the model.
        self._services_group = ReentrantCallbackGroup()
        LifecycleNodeMixin.__init__(self, callback_group=self._services_group)
        guard_change_state(self)  # Jazzy: an invalid transition would otherwise stop the node
        self.cfg = declare_config(self)  # raises ConfigError naming every bad parameter
        self.core = SageCore(self.cfg, progress=self.get_logger().info)
        self._queue: queue.Queue = queue.Queue(maxsize=self.cfg.node.queue_size)
        self._lifecycle, self._state, self._load_error = "unconfigured", "idle", None
        self._active = threading.Event()
        self._stopping = threading.Event()  # set by stop(): refusals say shutting_down, not not_active
        self._cancel = threading.Event()
        self._throttled = False
        self._status_lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None

        self.pub_answer = self.create_publisher(String, "answer", RELIABLE)
        self.pub_salience = self.create_publisher(Float32, "salience", RELIABLE)
        self.pub_snarc = self.create_publisher(Float32MultiArray, "snarc", RELIABLE)
        self.pub_result = self.create_publisher(String, "result", RESULTS)
        self.pub_status = self.create_publisher(String, "status", LATCHED)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(String, "question", self._on_question, BURST, callback_group=inputs)
        self.create_subscription(Bool, "throttled", self._on_throttled, LATCHED, callback_group=inputs)
        self.create_service(Trigger, "~/reset_history", self._on_reset, callback_group=inputs)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._status_timer = self.create_timer(self.cfg.node.status_period_s, self.publish_status,
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
        except ModelLoadError as exc:
            self._load_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self._set_state("unconfigured", "error")
            return TransitionCallbackReturn.FAILURE
        self._load_error = None
        self._set_state("inactive", "idle")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.set()
        self._set_state("active", "ready")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._fail_pending(errors.NOT_ACTIVE, "the node was deactivated before this question ran")
        self._set_state("inactive", "idle")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.release()
        self._set_state("unconfigured", "idle")
        return TransitionCallbackReturn.SUCCESS

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

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving: fail queued questions, cancel the running one, join the worker, close the store."""
        if not self._worker.is_alive():
            return
        self._stopping.set()
        self._active.clear()
        self._fail_pending(errors.SHUTTING_DOWN, "the node is shutting down")
        self._queue.put(_STOP)
        self._worker.join(self.cfg.node.shutdown_timeout_s if timeout is None else timeout)
        if self._worker.is_alive():  # the running generation did not finish in time: cut it short
            self._cancel.set()
            self._worker.join(5.0)
        self._fail_pending(errors.SHUTTING_DOWN, "the node is shutting down")
        self.core.release()
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
            self._reject(exc, parse_id(msg.data), received)
            return
        for warning in question.warnings:
            self.get_logger().warning(f"question {question.id}: {warning}")
        if not self._active.is_set():
            self._reject(self._inactive_error(f"node is {self._lifecycle}, not active"),
                         question.id, received, question)
            return
        try:
            self._queue.put_nowait((question, received))
        except queue.Full:
            self._reject(SageError(errors.QUEUE_FULL, f"{self._queue.qsize()} questions already waiting "
                                                      f"(node.queue_size = {self.cfg.node.queue_size})"),
                         question.id, received, question)
            return
        self.publish_status()

    def _on_throttled(self, msg: Bool) -> None:
        if bool(msg.data) != self._throttled:
            self._throttled = bool(msg.data)
            self.get_logger().warning("platform throttled: using throttled_* limits" if self._throttled
                                      else "platform no longer throttled")
            self.publish_status()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        cleared = self.core.reset_history()
        response.success, response.message = True, f"cleared {cleared} conversation histories"
        return response

    def _on_set_parameters(self, params):
        new, result = validate_update(self.cfg, params)
        if new is not None:
            model_keys = {p.name for p in params if p.name.startswith("model.")}
            self.cfg = new
            self.core.reconfigure(new)
            if model_keys:
                self.get_logger().info(f"{', '.join(sorted(model_keys))} take effect at the next configure")
        return result

    # -- worker -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            question, received = item
            if not self._active.is_set():
                error = self._inactive_error("the node was deactivated before this question ran")
                self._publish_result(self.core.error_result(question, error, received=received))
                continue
            self._set_state(self._lifecycle, "busy")
            result = self.core.answer(question, received=received, throttled=self._throttled, cancel=self._cancel)
            self._publish_result(result)
            self._set_state(self._lifecycle, "ready" if self._active.is_set() else "idle")

    def _inactive_error(self, message: str) -> SageError:
        if self._stopping.is_set():
            return SageError(errors.SHUTTING_DOWN, "the node is shutting down")
        return SageError(errors.NOT_ACTIVE, message)

    def _reject(self, error: SageError, question_id: str | None, received: float, question=None) -> None:
        self.get_logger().warning(f"question {question_id or '(no id)'} refused: {error.code}: {error.message}")
        self.core.stats.record(ok=False, total_s=0.0)
        self._publish_result(self.core.error_result(question, error, question_id=question_id, received=received))

    def _fail_pending(self, code: str, message: str) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put(_STOP)
                return
            question, received = item
            self._publish_result(self.core.error_result(question, SageError(code, message), received=received))

    def _publish_result(self, result: dict[str, Any]) -> None:
        if result["ok"]:
            self.pub_answer.publish(String(data=result["answer"]))
            self.pub_salience.publish(Float32(data=float(result["snarc"]["total"])))
            values = [float(result["snarc"][k]) for k in SNARC_LABEL.split(",")]
            array = Float32MultiArray(data=values)
            array.layout.dim = [MultiArrayDimension(label=SNARC_LABEL, size=len(values), stride=len(values))]
            self.pub_snarc.publish(array)
        else:
            self.get_logger().error(f"question {result['id']}: {result['error']['code']}: {result['error']['message']}")
        self.pub_result.publish(String(data=json.dumps(result, ensure_ascii=False)))

    # -- status -----------------------------------------------------------------------------------
    def _set_state(self, lifecycle: str, state: str) -> None:
        with self._status_lock:
            self._lifecycle, self._state = lifecycle, state
        self.publish_status()

    def status(self) -> dict[str, Any]:
        lm = self.core.lm
        stats = self.core.stats.snapshot()
        gpu_mb = None
        if lm is not None and lm.device.type == "cuda":
            import torch
            gpu_mb = round(torch.cuda.memory_allocated(lm.device) / 2**20, 1)
        return {
            "node": self.get_name(), "namespace": self.get_namespace(), "lifecycle": self._lifecycle,
            "state": self._state, "model": lm.model_id if lm else None,
            "device": str(lm.device) if lm else self.cfg.llm_irp.device,
            "precision": lm.precision if lm else self.cfg.llm_irp.precision,
            "packed_layers": lm.packed_layers if lm else None,
            "queue_depth": self._queue.qsize(), "queue_size": self.cfg.node.queue_size,
            "throttled": self._throttled, "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "gpu_mem_mb": gpu_mb, "model_mb": round(lm.footprint_mb, 1) if lm else None,
            "max_memory_mb": self.cfg.llm_irp.max_memory_mb, "error": self._load_error,
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
    except ConfigError as exc:
        print(f"[sage_irp] {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_nodes([node])


def init_ros(args: list[str]) -> None:
    """rclpy.init without rclpy's signal handlers: ``spin_nodes`` handles SIGINT/SIGTERM itself so
    pending questions still get their error results published before the context goes down."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def spin_nodes(nodes: list[Node], stop: threading.Event | None = None) -> int:
    """Spin nodes on a multi-threaded executor until SIGINT/SIGTERM (or ``stop``); then stop cleanly."""
    stop = stop or threading.Event()
    executor = MultiThreadedExecutor(num_threads=max(4, (os.cpu_count() or 2)))
    for node in nodes:
        executor.add_node(node)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        finally:
            stop.set()

    spinner = threading.Thread(target=spin, name="executor", daemon=True)
    spinner.start()
    stop.wait()
    for node in nodes:
        if isinstance(node, IrpNode):
            node.stop()
    executor.shutdown(timeout_sec=2.0)
    spinner.join(timeout=5.0)
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
