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

"""A circuit breaker with exponential backoff: stop sending requests to a server that keeps failing.

``closed``: requests go through; ``failures`` consecutive failures open it. ``open``: no request goes
through until the backoff has passed; then one request is let through as a trial (``half_open``). A
trial that succeeds closes the breaker (backoff back to its base); one that fails opens it again with
the backoff doubled, up to the maximum. So a dead server sees one request per backoff period, not one
per question, and answers resume within one period of its return. A failure that carries the
server's ``Retry-After`` (HTTP 429 or 503) opens the breaker at once, for at least that long.
"""

from __future__ import annotations

import datetime
import email.utils
import threading
import time
from typing import Any, Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BUSY_STATUSES = (408, 429)  # client errors that mean "busy, try later": they count as failures


def counts_as_failure(status: int | None) -> bool:
    """Does a failed request with HTTP ``status`` (None: no answer at all) count towards opening the breaker?

    Every failure does except a 4xx other than 408 and 429: the server is up and refused this one
    request (a bad key, a prompt over its context, a parameter it rejects); the next may be fine.
    """
    return status is None or not 400 <= status < 500 or status in BUSY_STATUSES


def retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now())


class CircuitBreaker:
    """Thread-safe; ``clock`` is a monotonic clock (tests pass a fake one)."""

    def __init__(self, failures: int = 3, backoff_s: float = 2.0, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failures_to_open = max(1, int(failures))
        self.base_s = float(backoff_s)
        self.max_s = max(float(max_backoff_s), self.base_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._backoff = self.base_s
        self._opened_at = 0.0
        self._hold = self.base_s  # how long the breaker stays open this time (backoff, or Retry-After)
        self._trial = False  # a half-open trial request is in flight
        self.opened = 0  # times the breaker opened (for the status)

    def allow(self) -> bool:
        """May a request go out now? In ``half_open`` only one trial at a time is allowed."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self._clock() - self._opened_at >= self._hold:
                self._state = HALF_OPEN
            if self._state == HALF_OPEN and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        """A request succeeded: the breaker closes and its backoff returns to the base."""
        with self._lock:
            self._state, self._failures, self._backoff, self._trial = CLOSED, 0, self.base_s, False

    def failure(self, retry_after_s: float | None = None) -> None:
        """A request failed: count it; open after ``failures`` in a row, or at once after a failed trial.

        ``retry_after_s``: the server asked not to come back before then (``Retry-After``): the breaker
        opens at once and stays open for the longer of that and its backoff.
        """
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN:
                self._backoff = min(self._backoff * 2.0, self.max_s)
                self._open(retry_after_s)
            elif retry_after_s is not None or (self._state == CLOSED and self._failures >= self.failures_to_open):
                self._open(retry_after_s)

    def release_trial(self) -> None:
        """A trial ended with neither success nor failure (cancelled): let the next request try."""
        with self._lock:
            self._trial = False

    def _open(self, retry_after_s: float | None = None) -> None:
        if self._state != OPEN:
            self.opened += 1
        self._state, self._opened_at, self._trial = OPEN, self._clock(), False
        self._hold = max(self._backoff, retry_after_s or 0.0)

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self._hold:
                return HALF_OPEN  # the next request will be the trial
            return self._state

    def retry_in_s(self) -> float | None:
        """Seconds until an open breaker lets its trial through (None when not open)."""
        with self._lock:
            if self._state != OPEN:
                return None
            return max(0.0, self._opened_at + self._hold - self._clock())

    def snapshot(self) -> dict[str, Any]:
        """The status' ``breaker`` object: state, consecutive failures, backoff, retry_in_s, times opened."""
        retry = self.retry_in_s()
        return {"state": self.state, "consecutive_failures": self._failures, "backoff_s": round(self._backoff, 3),
                "retry_in_s": None if retry is None else round(retry, 3), "opened": self.opened}
