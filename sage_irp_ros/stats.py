"""Serving statistics: counts, the last result's timing and latency percentiles over a window."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Any


class ServingStats:
    """Thread-safe counters for the status topic and the diagnostics node."""

    def __init__(self, window: int = 200):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.served = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.last: dict[str, Any] | None = None

    def record(self, ok: bool, total_s: float, inference_s: float = 0.0, tokens: int = 0) -> None:
        with self._lock:
            self.served += 1
            if ok:
                self.consecutive_errors = 0
                self._latencies.append(total_s)
            else:
                self.errors += 1
                self.consecutive_errors += 1
            self.last = {"ok": ok, "total_s": round(total_s, 6), "inference_s": round(inference_s, 6),
                         "tokens": tokens,
                         "tokens_per_s": round(tokens / inference_s, 3) if inference_s > 0 else 0.0}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values = sorted(self._latencies)
            return {"served": self.served, "errors": self.errors,
                    "consecutive_errors": self.consecutive_errors, "last": self.last,
                    "latency": {"p50_s": _quantile(values, 0.5), "p95_s": _quantile(values, 0.95),
                                "count": len(values)}}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 6)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 6)
