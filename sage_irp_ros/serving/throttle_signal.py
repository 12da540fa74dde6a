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

"""The IRP node's view of the ``throttled`` topic: the last value, its age, and when it goes stale.

ROS-free so it can be reasoned about on its own. A value older than ``timeout_s`` is *stale* and
reads as not throttled, so a dead publisher (a crashed diagnostics node whose last word was
``true``) cannot keep the node throttled forever; ``timeout_s`` 0 never goes stale.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, NamedTuple

NONE, FRESH, STALE = "none", "fresh", "stale"


class ThrottleState(NamedTuple):
    throttled: bool      # what the node acts on
    signal: str          # none (never heard), fresh, stale
    age_s: float | None  # seconds since the last message


class ThrottleSignal:
    """Thread-safe last ``throttled`` value with staleness; :meth:`changed` reports transitions once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._value: bool | None = None
        self._at = 0.0
        self._seen = ThrottleState(False, NONE, None)

    def update(self, value: bool) -> None:
        with self._lock:
            self._value, self._at = bool(value), self._clock()

    def state(self, timeout_s: float) -> ThrottleState:
        with self._lock:
            value, at = self._value, self._at
        if value is None:
            return ThrottleState(False, NONE, None)
        age = self._clock() - at
        if timeout_s and age > timeout_s:
            return ThrottleState(False, STALE, age)
        return ThrottleState(value, FRESH, age)

    def changed(self, timeout_s: float) -> tuple[ThrottleState, ThrottleState] | None:
        """(before, now) when the effective (throttled, signal) pair changed since the last call."""
        now = self.state(timeout_s)
        with self._lock:
            before = self._seen
            if (before.throttled, before.signal) == (now.throttled, now.signal):
                return None
            self._seen = now
        return before, now
