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

"""A warning logged once per process and key: a version difference is said once, never per token."""

from __future__ import annotations

import logging
import threading

_warned: set[str] = set()
_lock = threading.Lock()


def warn_once(logger: logging.Logger, key: str, message: str) -> bool:
    """Log ``message`` on ``logger`` as a warning the first time ``key`` is seen; True if logged."""
    with _lock:
        if key in _warned:
            return False
        _warned.add(key)
    logger.warning("%s", message)
    return True


def forget() -> None:
    """Forget every key (tests that check a warning is logged)."""
    with _lock:
        _warned.clear()
