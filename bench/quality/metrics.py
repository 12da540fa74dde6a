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
    total, n = 0.0, len(scores)
    for b in range(bins):
        idx = [i for i, s in enumerate(scores) if min(int(s * bins), bins - 1) == b]
        if idx:
            total += len(idx) / n * abs(sum(scores[i] for i in idx) / len(idx) - sum(right[i] for i in idx) / len(idx))
    return total


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


def reliability_bins(scores: Sequence[float], right: Sequence[bool], bins: int = BINS) -> list[dict]:
    """Per confidence bin: its range, count, mean confidence and accuracy (empty bins left out)."""
    out = []
    for b in range(bins):
        idx = [i for i, s in enumerate(scores) if min(int(s * bins), bins - 1) == b]
        if idx:
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": len(idx),
                        "confidence": sum(scores[i] for i in idx) / len(idx),
                        "accuracy": sum(right[i] for i in idx) / len(idx)})
    return out


def reliability_png(scores: Sequence[float], right: Sequence[bool], path: Path, title: str) -> Path:
    """The reliability diagram: accuracy per confidence bin against the diagonal, counts as bar labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = reliability_bins(scores, right)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=1 / BINS, align="edge",
           alpha=0.6, edgecolor="black", label="accuracy per bin")
    for b in bins:
        ax.text(b["lo"] + 0.5 / BINS, b["accuracy"] + 0.02, str(b["n"]), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence", ylabel="accuracy",
           title=f"{title}: ECE {ece(scores, right):.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
