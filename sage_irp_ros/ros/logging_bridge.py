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

"""Route the core's Python ``logging`` records to a node's rclpy logger.

The ROS-free core (model loading, the IRP engine, the memory store, the probes) logs with Python's
``logging`` under the ``sage_irp_ros`` logger: OOM retries, store failures, over-budget warnings and
tracebacks. Without this they would reach neither ``/rosout`` (rqt_console) nor respect
``--ros-args --log-level``. :func:`route_to_node` installs one handler on that package logger that
hands every record to the node's logger, and sets the package logger's level from the node
logger's effective level, so records ROS would drop are not even formatted.
"""

from __future__ import annotations

import logging

from rclpy.impl.rcutils_logger import RcutilsLogger

PACKAGE_LOGGER = "sage_irp_ros"


class RclpyLogHandler(logging.Handler):
    """A ``logging.Handler`` that emits each record (with its traceback) on an rclpy logger."""

    def __init__(self, logger: RcutilsLogger):
        super().__init__()
        self.logger = logger
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # rclpy keys a log call site to one severity, so each severity has its own call below.
        try:
            message = self.format(record)
            if record.levelno >= logging.CRITICAL:
                self.logger.fatal(message)
            elif record.levelno >= logging.ERROR:
                self.logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.logger.warning(message)
            elif record.levelno >= logging.INFO:
                self.logger.info(message)
            else:
                self.logger.debug(message)
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)


def route_to_node(logger: RcutilsLogger) -> RclpyLogHandler:
    """Send the ``sage_irp_ros`` Python loggers to ``logger`` (replacing an earlier routing)."""
    package = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in package.handlers if isinstance(h, RclpyLogHandler)]:
        package.removeHandler(handler)
    handler = RclpyLogHandler(logger)
    package.addHandler(handler)
    package.propagate = False  # one handler: not printed a second time by the root logger
    level = int(logger.get_effective_level())
    package.setLevel(level if level > 0 else logging.INFO)
    return handler
