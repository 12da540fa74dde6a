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

"""``sage_irp monitor``: a live terminal view of the IRP node, for robots and machines without rqt.

What it shows, refreshed as messages arrive:

* the node's ``status`` (lifecycle, state, model, device, queue, served/errors, RSS, throttled, latency
  percentiles as the node computes them over its recent answers);
* the last answers seen on ``result`` with their salience and latency (and the percentiles of those);
* every ``/diagnostics`` status, its level coloured (OK green, WARN yellow, ERROR red, STALE grey).

It only listens (no question publisher), so running it never changes what the node does. The state and
the rendering are plain Python (:class:`MonitorState`, :func:`render`) so they are testable without ROS;
``--once`` renders a single frame as soon as the status arrives (or ``--timeout`` passes) and exits 0,
for tests, CI logs and ``watch``. Needs ``rich`` (the ``monitor`` extra).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any, Optional, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sage_irp_ros.results import Result

LEVELS = {0: ("OK", "green"), 1: ("WARN", "yellow"), 2: ("ERROR", "red"), 3: ("STALE", "bright_black")}
LIFECYCLE_STYLE = {"active": "green", "inactive": "yellow", "configuring": "yellow", "unconfigured": "red",
                   "finalized": "red"}
STATE_STYLE = {"ready": "green", "busy": "cyan", "loading": "yellow", "idle": "yellow", "error": "red"}
DIAGNOSTICS_GRACE_S = 3.0  # --once: how long after the status to wait for a first /diagnostics message


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (None for no values)."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, min(len(data), int(round(q / 100 * len(data) + 0.5))))
    return data[rank - 1]


class MonitorState:
    """What the monitor has seen; updated from executor callbacks, read by the render loop."""

    def __init__(self, namespace: str = "sage", keep: int = 8):
        self.namespace = namespace
        self.status: Optional[dict[str, Any]] = None
        self.status_received = 0.0
        self.results: deque[Result] = deque(maxlen=keep)
        self.latencies: deque[float] = deque(maxlen=200)
        self.diagnostics: dict[str, tuple[int, str]] = {}
        self.throttled: Optional[bool] = None
        self.lock = threading.Lock()
        self.changed = threading.Event()

    def on_status(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.status, self.status_received = data, time.monotonic()
        self.changed.set()

    def on_result(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)
            if result.ok:
                self.latencies.append(float(result.timing.total_s))
        self.changed.set()

    def on_diagnostics(self, statuses: Sequence[tuple[str, int, str]]) -> None:
        with self.lock:
            for name, level, message in statuses:
                self.diagnostics[name] = (int(level), message)
        self.changed.set()

    def on_throttled(self, value: bool) -> None:
        with self.lock:
            self.throttled = bool(value)
        self.changed.set()


def _styled(value: Any, styles: dict[str, str]) -> Text:
    return Text(str(value), style=styles.get(str(value), ""))


def _num(value: Any, fmt: str = "{:.2f}", unit: str = "") -> str:
    return fmt.format(value) + unit if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _status_table(state: MonitorState) -> Table:
    s = state.status or {}
    table = Table(title=f"IRP node {s.get('namespace') or state.namespace}/{s.get('node') or 'sage_irp'}",
                  show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    if not s:
        table.add_row("status", Text(f"waiting for {state.namespace}/status ...", style="yellow"))
        return table
    lat, last, store = s.get("latency") or {}, s.get("last") or {}, s.get("memory_store") or {}
    throttled = s.get("throttled") if state.throttled is None else state.throttled
    table.add_row("lifecycle", _styled(s.get("lifecycle"), LIFECYCLE_STYLE))
    table.add_row("state", _styled(s.get("state"), STATE_STYLE))
    table.add_row("model", str(s.get("model")))
    table.add_row("device", f"{s.get('device')} {s.get('precision') or ''}".strip())
    table.add_row("queue", f"{s.get('queue_depth', '-')} / {s.get('queue_size', '-')}")
    table.add_row("served / errors", f"{s.get('served', '-')} / {s.get('errors', '-')} "
                                     f"({s.get('consecutive_errors', 0)} in a row)")
    table.add_row("RSS", _num(s.get("rss_mb"), "{:.0f}", " MB") + "   model " + _num(s.get("model_mb"), "{:.0f}", " MB")
                  + "   GPU " + _num(s.get("gpu_mem_mb"), "{:.0f}", " MB"))
    table.add_row("throttled", Text("yes", style="red") if throttled else Text("no", style="green"))
    table.add_row("latency p50 / p95", f"{_num(lat.get('p50_s'), unit=' s')} / {_num(lat.get('p95_s'), unit=' s')}"
                                       f"  (node, {lat.get('count', 0)} answers)")
    if last and not last.get("ok", True):
        table.add_row("last question", Text("error result", style="red"))
    elif last:
        table.add_row("last answer", f"{_num(last.get('total_s'), unit=' s')}, "
                                     f"{_num(last.get('tokens_per_s'), '{:.1f}', ' tok/s')}")
    if store and not store.get("ok", True):
        table.add_row("memory store", Text(str(store.get("error")), style="red"))
    if s.get("error"):
        table.add_row("error", Text(str(s["error"]), style="red"))
    table.add_row("status age", f"{time.monotonic() - state.status_received:.1f} s")
    return table


def _answers_table(state: MonitorState) -> Table:
    lats = list(state.latencies)
    p50, p95 = percentile(lats, 50), percentile(lats, 95)
    table = Table(title=f"results since the monitor started (p50 {_num(p50, unit=' s')}, p95 {_num(p95, unit=' s')}, "
                        f"{len(lats)} answers)", title_justify="left")
    for name, justify in (("id", "left"), ("salience", "right"), ("latency", "right"), ("answer", "left")):
        table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=name != "answer")
    for r in reversed(state.results):
        if r.ok:
            salient = r.snarc is not None and r.snarc.salient
            sal = Text(_num(r.salience, "{:.3f}"), style="bold magenta" if salient else "")
            text = Text(" ".join(r.answer.split())[:120])
        else:
            sal, text = Text("-"), Text(f"error {r.error_code}", style="red")
        table.add_row(r.id, sal, _num(r.timing.total_s, unit=" s"), text)
    if not state.results:
        table.add_row("-", "", "", Text("no results seen yet", style="bright_black"))
    return table


def _diagnostics_table(state: MonitorState) -> Table:
    table = Table(title="/diagnostics", title_justify="left")
    table.add_column("level")
    table.add_column("name", no_wrap=True)
    table.add_column("message")
    for name, (level, message) in sorted(state.diagnostics.items()):
        word, style = LEVELS.get(level, (str(level), ""))
        table.add_row(Text(word, style=style), Text(name, style=style), message)
    if not state.diagnostics:
        hint = Text("no /diagnostics received (is the diagnostics node running?)", style="bright_black")
        table.add_row("-", hint, "")
    return table


def render(state: MonitorState) -> Group:
    """One frame: status, last answers, diagnostics."""
    with state.lock:
        return Group(_status_table(state), _answers_table(state), _diagnostics_table(state))


class _RosMonitor:
    """Subscriptions that feed a MonitorState (status, result, throttled, /diagnostics)."""

    def __init__(self, node: Any, state: MonitorState):
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Bool, String

        from sage_irp_ros.ros.client import LATCHED, RESULTS, topic

        def parsed(callback, parse=json.loads):
            def on_msg(msg: String) -> None:
                try:
                    value = parse(msg.data)
                except (TypeError, ValueError):  # not what this topic carries: nothing to show
                    return
                callback(value)
            return on_msg

        ns = state.namespace
        node.create_subscription(String, topic(ns, "status"), parsed(state.on_status), LATCHED)
        node.create_subscription(String, topic(ns, "result"), parsed(state.on_result, Result.from_json), RESULTS)
        node.create_subscription(Bool, topic(ns, "throttled"), lambda m: state.on_throttled(m.data), LATCHED)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: state.on_diagnostics(
            [(s.name, s.level if isinstance(s.level, int) else ord(s.level), s.message) for s in m.status]), 10)


def run_monitor(namespace: str = "sage", once: bool = False, timeout: float = 10.0,
                ros_args: Sequence[str] = (), console: Optional[Console] = None) -> int:
    """Show the live view until Ctrl-C (or one frame with ``once``); returns the exit code (0)."""
    import rclpy

    from sage_irp_ros.ros.client import spinning

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=140)
    state = MonitorState(namespace)
    from rclpy.signals import SignalHandlerOptions

    # Python's own SIGINT handling: Ctrl-C raises KeyboardInterrupt here and the view closes cleanly
    # (rclpy's handler would only shut the context down under the spinning thread).
    rclpy.init(args=["sage_irp_monitor", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"sage_irp_monitor_{uuid.uuid4().hex[:6]}")
    try:
        _RosMonitor(node, state)
        with spinning(node):
            if once:
                _wait_once(state, timeout)
                console.print(render(state))
                if state.status is None:
                    print(f"sage_irp monitor: no status on {namespace}/status within {timeout:g} s",
                          file=sys.stderr)
                return 0
            with Live(render(state), console=console, refresh_per_second=4) as live:
                while node.context.ok():
                    state.changed.wait(0.5)  # also re-render periodically: the status age keeps counting
                    state.changed.clear()
                    live.update(render(state))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _wait_once(state: MonitorState, timeout: float) -> None:
    """Until the status arrived, then up to DIAGNOSTICS_GRACE_S for /diagnostics (all within timeout)."""
    deadline = time.monotonic() + timeout
    grace_end: Optional[float] = None
    while True:
        now = time.monotonic()
        with state.lock:
            have_status, have_diag = state.status is not None, bool(state.diagnostics)
        if have_status and grace_end is None:
            grace_end = now + DIAGNOSTICS_GRACE_S
        if now >= deadline or (have_status and (have_diag or now >= grace_end)):
            return
        state.changed.wait(min(deadline, grace_end or deadline) - now)
        state.changed.clear()
