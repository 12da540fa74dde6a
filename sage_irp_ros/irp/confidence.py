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

"""Confidence: the calibrated probability that an answer is right, on every ok result.

A free-text answer's confidence is a logistic model over what IRP measured of the chosen candidate
(its energy, its agreement with the other candidates, the model's mean NLL, whether it finished, its
repetition, its length); an answer that is a lone candidate (throttled: the greedy row alone) has no
agreement, so it has its own model. A choices answer's confidence is a monotone logistic model (Platt
scaling) of the chosen option's probability: never lower for a more probable option. Every model was
fitted on the TUNING half of the package's question sets and is shipped in ``data/calibration.json``;
``python -m bench.quality.calibrate --write`` reproduces that file (docs/interface.md, "Confidence").

Torch-free: only arithmetic on numbers the engine already has.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

from sage_irp_ros.decoding.generator import Candidate
from sage_irp_ros.irp.energy import repetition
from sage_irp_ros.irp.selection import agreement, mean_nll

FREE_TEXT_FEATURES = ("energy", "agreement", "nll", "finished", "repetition", "log_words")
CHOICE_FEATURES = ("top_logit",)
CALIBRATION_FILE = "calibration.json"


def free_text_features(candidates: Sequence[Candidate], energies: Sequence[float], best: int) -> dict[str, float]:
    """What the free-text confidence model reads of the chosen candidate among all candidates."""
    chosen = candidates[best]
    nll = mean_nll(chosen)
    return {"energy": float(energies[best]) if energies else 1.0,
            "agreement": agreement(candidates)[best] if len(candidates) > 1 else 0.0,
            "nll": min(nll, 10.0) if math.isfinite(nll) else 10.0,
            "finished": 1.0 if chosen.finished else 0.0,
            "repetition": repetition(chosen.token_ids),
            "log_words": math.log1p(len(chosen.text.split()))}


def choice_features(probabilities: Sequence[float]) -> dict[str, float]:
    """The chosen option's probability (as a logit) and its margin over the runner-up."""
    ordered = sorted(probabilities, reverse=True)
    top = min(max(ordered[0], 1e-6), 1 - 1e-6)
    return {"top_logit": math.log(top / (1 - top)), "margin": ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0)}


@dataclass(frozen=True)
class Calibrator:
    """sigmoid(bias + sum_k weight_k * feature_k); features missing from the input count as 0."""

    weights: Mapping[str, float]
    bias: float = 0.0

    def __call__(self, feats: Mapping[str, float]) -> float:
        z = self.bias + sum(w * float(feats.get(name, 0.0)) for name, w in self.weights.items())
        z = max(-50.0, min(50.0, z))
        return 1.0 / (1.0 + math.exp(-z))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibrator":
        return cls({str(k): float(v) for k, v in data["weights"].items()}, float(data.get("bias", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "bias": self.bias}


@dataclass(frozen=True)
class Calibration:
    """The shipped models: choice-option weights, and the confidence calibrators."""

    choice_weights: Mapping[str, float]
    free_text: Calibrator
    free_text_single: Calibrator
    choices: Calibrator

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        return cls(choice_weights={str(k): float(v) for k, v in data["choice_weights"].items()},
                   free_text=Calibrator.from_dict(data["free_text"]),
                   free_text_single=Calibrator.from_dict(data["free_text_single"]),
                   choices=Calibrator.from_dict(data["choices"]))

    def free_text_confidence(self, candidates: Sequence[Candidate], energies: Sequence[float], best: int) -> float:
        feats = free_text_features(candidates, energies, best)
        model = self.free_text if len(candidates) > 1 else self.free_text_single
        return round(model(feats), 4)

    def choice_confidence(self, probabilities: Sequence[float]) -> float:
        return round(self.choices(choice_features(probabilities)), 4)


@lru_cache(maxsize=1)
def shipped() -> Calibration:
    """The calibration shipped in the package (``sage_irp_ros/data/calibration.json``)."""
    text = resources.files("sage_irp_ros").joinpath("data", CALIBRATION_FILE).read_text(encoding="utf-8")
    return Calibration.from_dict(json.loads(text))


def reliability_bins(confidence: Sequence[float], right: Sequence[bool], bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its range, count, mean confidence and accuracy (empty bins left out)."""
    out = []
    for b in range(bins):
        idx = [i for i, c in enumerate(confidence) if min(int(c * bins), bins - 1) == b]
        if idx:
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "n": len(idx),
                        "confidence": sum(confidence[i] for i in idx) / len(idx),
                        "accuracy": sum(bool(right[i]) for i in idx) / len(idx)})
    return out


def expected_calibration_error(confidence: Sequence[float], right: Sequence[bool], bins: int = 10) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins."""
    n = len(confidence)
    return sum(b["n"] / n * abs(b["confidence"] - b["accuracy"]) for b in reliability_bins(confidence, right, bins))


def is_confident(confidence: float, min_confidence: float) -> bool:
    """``confident``: the confidence reaches ``min_confidence`` (always true when it is 0: off)."""
    return min_confidence <= 0.0 or confidence >= min_confidence
