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

"""Harness for tests that drive the IRP node over real DDS from another process.

* :class:`NodeProcess` starts ``python -m sage_irp_ros.ros.irp_node`` in its own process (own ROS domain,
  localhost discovery, unique namespace), with ``-p key:=value`` parameters and an optional params file.
  Its stdout/stderr go to a log file (never a pipe that could fill up and block the node).
* :class:`RosTester` is the test side: its own rclpy Context on the same domain, an executor spinning
  in a thread, a :class:`~sage_irp_ros.ros.client.SageClient`, a collector that keeps *every* message of
  ``result``/``answer``/``salience``/``snarc``/``status`` (so duplicates are visible), and lifecycle and
  parameter service clients. All waiting is on conditions and futures with timeouts, never bare sleeps.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import rclpy
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32, Float32MultiArray, String
from std_srvs.srv import Trigger

from ros2_tooling import interrupt
from sage_irp_ros.ros.client import SageClient

# The collector keeps everything: a deep reader history so a burst is never overwritten before the
# executor takes it (the node's writer is what is under test, not this reader).
DEEP = QoSProfile(depth=5000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
               "shutdown_inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
               "shutdown_active": Transition.TRANSITION_ACTIVE_SHUTDOWN}
STATE_IDS = {State.PRIMARY_STATE_UNCONFIGURED: "unconfigured", State.PRIMARY_STATE_INACTIVE: "inactive",
             State.PRIMARY_STATE_ACTIVE: "active", State.PRIMARY_STATE_FINALIZED: "finalized",
             State.TRANSITION_STATE_CONFIGURING: "configuring", State.TRANSITION_STATE_CLEANINGUP: "cleaningup",
             State.TRANSITION_STATE_ACTIVATING: "activating", State.TRANSITION_STATE_DEACTIVATING: "deactivating",
             State.TRANSITION_STATE_SHUTTINGDOWN: "shuttingdown", State.TRANSITION_STATE_ERRORPROCESSING:
             "errorprocessing"}

# Defaults that keep every node fast on a 2-core CPU with the tiny model.
FAST_PARAMS: dict[str, Any] = {
    "llm_irp.max_tokens": 8,
    "llm_irp.min_available_memory_mb": 0,
    "model.power_mode": "efficiency",
    "model.device": "cpu",
    "node.status_period_s": 0.5,
    # every row to its end: node tests count rows and time answers; adaptive IRP is test_adaptive.py's
    "llm_irp.stopping": "off",
}
START_TIMEOUT = 90.0  # importing torch + transformers and loading on a busy 2-core machine


def ros_domain_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with a random ROS_DOMAIN_ID and localhost-only discovery."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 101))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def unique_namespace() -> str:
    """A namespace no other concurrently running test uses, even on a colliding domain id."""
    return f"/t_{uuid.uuid4().hex[:8]}"


def _param_arg(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return f"{key}:={text}"


class NodeProcess:
    """The IRP node in a child process."""

    def __init__(self, env: dict[str, str], log_path: Path, *, namespace: str | None = None,
                 params: dict[str, Any] | None = None, params_file: Path | None = None,
                 fast: bool = True, ros_args: list[str] | None = None):
        self.env = dict(env)
        self.namespace = namespace or unique_namespace()
        self.log_path = Path(log_path)
        merged = {**(FAST_PARAMS if fast else {}), **(params or {})}
        args = [sys.executable, "-m", "sage_irp_ros.ros.irp_node", "--ros-args", "-r", f"__ns:={self.namespace}"]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for key, value in merged.items():
            args += ["-p", _param_arg(key, value)]
        args += list(ros_args or [])  # more --ros-args, e.g. ["--log-level", "error"]
        self.args = args
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until the node's log holds ``text`` (the child writes it asynchronously); returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the node's log after {timeout:g} s:\n{log[-2000:]}")
            time.sleep(0.05)  # a file has no change notification here; poll it

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT, then SIGKILL if it does not exit in time; returns the exit code."""
        code = interrupt(self.proc, timeout)
        self._log.close()
        return code


class RosTester:
    """The test side of the conversation: a node in its own Context, spun in a background thread."""

    def __init__(self, env: dict[str, str], namespace: str, node_name: str = "sage_irp"):
        self.namespace = namespace
        self.target = f"{namespace}/{node_name}"
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node(f"tester_{uuid.uuid4().hex[:6]}", context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.executor.add_node(self.node)
        self.client = SageClient(self.node, namespace=namespace)
        self._cond = threading.Condition()
        self.results: list[dict[str, Any]] = []
        self.answers: list[str] = []
        self.saliences: list[float] = []
        self.snarcs: list[Float32MultiArray] = []
        self.statuses: list[dict[str, Any]] = []
        ns = namespace.rstrip("/")
        self.node.create_subscription(String, f"{ns}/result", self._on_result, DEEP)
        self.node.create_subscription(String, f"{ns}/answer", self._keep(self.answers, lambda m: m.data), DEEP)
        self.node.create_subscription(Float32, f"{ns}/salience", self._keep(self.saliences, lambda m: m.data), DEEP)
        self.node.create_subscription(Float32MultiArray, f"{ns}/snarc", self._keep(self.snarcs, lambda m: m), DEEP)
        self.node.create_subscription(String, f"{ns}/status", self._keep(self.statuses, lambda m: json.loads(m.data)),
                                      LATCHED)
        self.question_pub = self.node.create_publisher(String, f"{ns}/question", RELIABLE)
        self.change_state_cli = self.node.create_client(ChangeState, f"{self.target}/change_state")
        self.get_state_cli = self.node.create_client(GetState, f"{self.target}/get_state")
        self.reset_cli = self.node.create_client(Trigger, f"{self.target}/reset_history")
        self._param_client = None
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context shut down under the executor at teardown
            pass

    def _keep(self, bucket: list, convert: Callable[[Any], Any]) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self._cond:
                bucket.append(convert(msg))
                self._cond.notify_all()
        return callback

    def _on_result(self, msg: String) -> None:
        data = json.loads(msg.data)
        with self._cond:
            self.results.append(data)
            self._cond.notify_all()

    # -- waiting ----------------------------------------------------------------------------------
    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        """Block until ``condition()`` (evaluated under the collector lock) holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(min(left, 0.1))  # graph/other state changes have no event: re-check often

    def wait_ready(self, timeout: float = START_TIMEOUT, proc: NodeProcess | None = None) -> dict[str, Any]:
        """Wait until the node's status says active and the question/result topics are matched."""
        def ready() -> bool:
            if proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"node exited with {proc.proc.returncode}:\n{proc.log()[-3000:]}")
            return (bool(self.statuses) and self.statuses[-1].get("lifecycle") == "active"
                    and self.question_pub.get_subscription_count() > 0
                    and self.client._pub.get_subscription_count() > 0)
        self.wait_for(ready, timeout, "the node to become active")
        return self.statuses[-1]

    def status_mark(self) -> int:
        """A position in the status history; ``wait_status(since=mark)`` looks only at later ones."""
        with self._cond:
            return len(self.statuses)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                    what: str = "status", since: int = 0) -> dict[str, Any]:
        """Wait for a status message (received at or after ``since``) that satisfies ``predicate``."""
        self.wait_for(lambda: any(predicate(s) for s in self.statuses[since:]), timeout, what)
        with self._cond:
            return next(s for s in reversed(self.statuses[since:]) if predicate(s))

    def assert_no_duplicates(self) -> None:
        """Every question got at most one result (exactly one is checked where questions are counted)."""
        from collections import Counter
        counts = Counter(r["id"] for r in self.results)
        assert not [i for i, n in counts.items() if n > 1], f"duplicate results: {counts.most_common(3)}"

    def results_for(self, qid: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.results if r.get("id") == qid]

    def wait_results(self, ids: Iterable[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """Wait for a result for every id; returns {id: first result}."""
        wanted = list(ids)

        def have_all() -> bool:
            got = {r.get("id") for r in self.results}
            return all(i in got for i in wanted)
        self.wait_for(have_all, timeout, f"results for {len(wanted)} questions")
        with self._cond:
            first: dict[str, dict[str, Any]] = {}
            for r in self.results:
                first.setdefault(r.get("id"), r)
            return {i: first[i] for i in wanted}

    def wait_count(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` result messages arrived; returns a copy of all results."""
        self.wait_for(lambda: len(self.results) >= n, timeout, f"{n} results")
        with self._cond:
            return list(self.results)

    # -- asking -----------------------------------------------------------------------------------
    def send_raw(self, data: str) -> None:
        self.question_pub.publish(String(data=data))

    def send(self, question: str, qid: str | None = None, **fields: Any) -> str:
        """Publish a JSON question; returns its id."""
        qid = qid or uuid.uuid4().hex[:12]
        self.send_raw(json.dumps({"id": qid, "question": question, **fields}))
        return qid

    def exchange_raw(self, data: str, timeout: float = 30.0) -> dict[str, Any]:
        """Publish a raw message and return the next result (for tests that ask one at a time)."""
        with self._cond:
            before = len(self.results)
        self.send_raw(data)
        self.wait_for(lambda: len(self.results) > before, timeout, "the result of a raw message")
        with self._cond:
            assert len(self.results) == before + 1, self.results[before:]
            return self.results[before]

    def ask(self, question: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        qid = self.send(question, **fields)
        return self.wait_results([qid], timeout)[qid]

    # -- services ---------------------------------------------------------------------------------
    def _call(self, client, request, timeout: float):
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {client.srv_name} not available within {timeout:g} s")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise AssertionError(f"service {client.srv_name} did not answer within {timeout:g} s")
        return future.result()

    def change_state_async(self, transition: str, timeout: float = 10.0):
        if not self.change_state_cli.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {self.change_state_cli.srv_name} not available")
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return self.change_state_cli.call_async(request)

    def change_state(self, transition: str, timeout: float = 60.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return bool(self._call(self.change_state_cli, request, timeout).success)

    def get_state(self, timeout: float = 10.0) -> str:
        state = self._call(self.get_state_cli, GetState.Request(), timeout).current_state
        return STATE_IDS.get(state.id, state.label)

    def reset_history(self, timeout: float = 10.0) -> Trigger.Response:
        return self._call(self.reset_cli, Trigger.Request(), timeout)

    def set_parameters(self, values: dict[str, Any], timeout: float = 10.0):
        """Set parameters on the node with rclpy's parameter client; returns the SetParametersResult list."""
        from rclpy.parameter_client import AsyncParameterClient

        if self._param_client is None:
            self._param_client = AsyncParameterClient(self.node, self.target)
        client = self._param_client
        if not client.wait_for_services(timeout_sec=timeout):
            raise AssertionError(f"parameter services of {self.target} not available")
        future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise AssertionError(f"set_parameters on {self.target} did not answer within {timeout:g} s")
        return list(future.result().results)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        self._thread.join(5.0)


class RunningNode:
    """A node process plus a tester on its domain; ``close()`` stops both."""

    def __init__(self, tmp_path: Path, *, env: dict[str, str] | None = None, wait: bool = True,
                 name: str = "node", **kwargs: Any):
        self.env = env or ros_domain_env()
        self.proc = NodeProcess(self.env, Path(tmp_path) / f"{name}.log", **kwargs)
        self.tester = RosTester(self.env, self.proc.namespace)
        if wait:
            try:
                self.tester.wait_ready(proc=self.proc)
            except BaseException:
                self.close()
                raise

    def close(self) -> int | None:
        try:
            self.tester.close()
        finally:
            return self.proc.stop()


def percentiles(values: list[float], qs: Iterable[float] = (50, 90, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, for printing load figures."""
    data = sorted(values)
    if not data:
        return {}
    out = {}
    for q in qs:
        rank = max(1, min(len(data), int(round(q / 100 * len(data) + 0.5))))
        out[f"p{int(q)}"] = round(data[rank - 1], 4)
    out["max"] = round(data[-1], 4)
    return out
