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

"""Serving statistics: counts, the last answer's timing and latency percentiles over a window.

Only inference-side outcomes count as served: an answer (ok) or an inference failure
(``inference_failed``, ``out_of_memory``, ``model_not_loaded``). Client errors and refusals
(:data:`sage_irp_ros.errors.CLIENT_ERRORS`: invalid input, queue full, not active, ...) are counted
as ``refused`` only, so a misbehaving client cannot make a healthy node look failed, and latency
comes from answered questions alone.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Any, Sequence

from sage_irp_ros.errors import CLIENT_ERRORS


class ServingStats:
    """Thread-safe counters for the status topic and the diagnostics node."""

    def __init__(self, window: int = 200):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.served = 0
        self.errors = 0
        self.refused = 0
        self.consecutive_errors = 0
        self.last: dict[str, Any] | None = None

    def record(self, ok: bool, total_s: float = 0.0, inference_s: float = 0.0, tokens: int = 0,
               code: str | None = None) -> None:
        """Count one result; ``code`` is the error code of a failed one."""
        with self._lock:
            if not ok and code in CLIENT_ERRORS:
                self.refused += 1
                return
            self.served += 1
            if not ok:
                self.errors += 1
                self.consecutive_errors += 1
                return
            self.consecutive_errors = 0
            self._latencies.append(total_s)
            self.last = {"ok": True, "total_s": round(total_s, 6), "inference_s": round(inference_s, 6),
                         "tokens": tokens,
                         "tokens_per_s": round(tokens / inference_s, 3) if inference_s > 0 else 0.0}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"served": self.served, "errors": self.errors, "refused": self.refused,
                    "consecutive_errors": self.consecutive_errors, "last": self.last,
                    "latency": latency_summary(self._latencies)}


def latency_summary(values: Sequence[float], digits: int = 6) -> dict[str, Any]:
    """``{"p50_s", "p95_s", "count"}`` of latencies (None without any), as the status JSON gives them."""
    ordered = sorted(values)
    return {"p50_s": _quantile(ordered, 0.5, digits), "p95_s": _quantile(ordered, 0.95, digits),
            "count": len(ordered)}


def _quantile(values: list[float], q: float, digits: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], digits)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], digits)
