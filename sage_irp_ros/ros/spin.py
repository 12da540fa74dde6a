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

"""Running nodes in a process: rclpy.init without rclpy's signal handlers, and a clean stop.

``irp_node``, ``diagnostics_node`` and ``sage_irp run`` spin their nodes here: on SIGINT/SIGTERM each
node that has a ``stop()`` (the IRP node: every pending question gets its error result) is stopped
before the executor and the context go down, so nothing waiting on a result is left in silence.
``run_main`` is a node executable's whole ``main``: an invalid parameter exits 2 with one message.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

import rclpy
import rclpy.logging
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from sage_irp_ros.config.settings import ConfigError

EXIT_INVALID_PARAMETERS = 2


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
        stop_node = getattr(node, "stop", None)  # IrpNode: fail pending questions, join the worker
        if callable(stop_node):
            stop_node()
    executor.shutdown(timeout_sec=2.0)
    spinner.join(timeout=1.0)
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_main(make_node: Callable[[], Node], logger_name: str, args: list[str] | None = None) -> int:
    """A node executable's ``main``: init, build the node, spin until SIGINT/SIGTERM; the exit code.

    A node whose parameters are invalid raises ConfigError (or rclpy's ParameterException) from its
    constructor: the message goes to the ROS logger, the exit code is 2, no traceback.
    """
    init_ros(sys.argv if args is None else args)
    try:
        node = make_node()
    except (ConfigError, ParameterException) as exc:
        message = str(exc)
    else:
        return spin_nodes([node])
    # Outside the except block: the traceback (and with it the half-built node) is gone, so the
    # context's shutdown does not destroy a node whose constructor never finished.
    rclpy.logging.get_logger(logger_name).error(message)
    rclpy.try_shutdown()
    return EXIT_INVALID_PARAMETERS
