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

"""Metrics of a confidence: AUROC, expected calibration error, accuracy of the most confident half,
bootstrap intervals, and the reliability diagram (confidence bins vs accuracy)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from sage_irp_ros.irp.confidence import expected_calibration_error

BOOTSTRAP, BINS = 2000, 10


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """Mean (in points, x100) with its 95 % percentile bootstrap interval over the items."""
    rng, n = random.Random(seed), len(values)
    if not n:
        return [0.0, 0.0, 0.0]
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return [round(100 * sum(values) / n, 1), round(100 * means[int(0.025 * resamples)], 1),
            round(100 * means[int(0.975 * resamples) - 1], 1)]


def auroc(scores: Sequence[float], right: Sequence[bool]) -> float | None:
    """Probability that a right answer scores above a wrong one (ties count half)."""
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def ece(scores: Sequence[float], right: Sequence[bool], bins: int = BINS) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins."""
    return expected_calibration_error(scores, right, bins)


def top_half_accuracy(scores: Sequence[float], right: Sequence[bool]) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:max(1, len(scores) // 2)]
    return sum(right[i] for i in order) / len(order)


def confidence_report(scores: Sequence[float], right: Sequence[bool]) -> dict:
    """AUROC, ECE, overall and top-50 % accuracy (points), mean confidence; AUROC with a bootstrap CI."""
    rng, n = random.Random(0), len(scores)
    boots = []
    for _ in range(500):
        idx = [rng.randrange(n) for _ in range(n)]
        value = auroc([scores[i] for i in idx], [right[i] for i in idx])
        if value is not None:
            boots.append(value)
    boots.sort()
    value = auroc(scores, right)
    return {"auroc": round(value, 3) if value is not None else None,
            "auroc_ci": [round(boots[int(0.025 * len(boots))], 3), round(boots[int(0.975 * len(boots)) - 1], 3)]
            if boots else None,
            "ece": round(ece(scores, right), 3), "accuracy": round(100 * sum(right) / n, 1),
            "top50_accuracy": round(100 * top_half_accuracy(scores, right), 1),
            "mean_confidence": round(sum(scores) / n, 3)}


def reliability_png(scores: Sequence[float], right: Sequence[bool], path: Path, title: str) -> Path:
    """The reliability diagram (``sage_irp plot --reliability`` draws the same)."""
    from sage_irp_ros.tools.plot import plot_reliability

    return plot_reliability(scores, right, path, title)
