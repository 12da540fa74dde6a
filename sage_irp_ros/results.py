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

"""The result of one question, typed: what the ``result`` topic carries, built in one place.

A :class:`Result` is produced by the core for every question (answered or refused) and read back by
every consumer (client, behaviours, CLI, monitor, memory store), so no one builds or parses the
result JSON by hand. Its JSON is the documented one (docs/interface.md, "Result JSON"): the same keys,
in the same order. :meth:`Result.from_dict` ignores keys it does not know and gives missing ones
their defaults, so a client and a node of neighbouring versions still understand each other.

No torch and no rclpy here: the torch-free installs and the ROS front ends share this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, TypeVar

from sage_irp_ros.salience.snarc import SnarcScores

_T = TypeVar("_T")


def _known(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls`` built from the keys of ``data`` that are its fields (the others are ignored)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _optional(value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or None when absent (results of older nodes carry no such key)."""
    return None if value is None else kind(value)


def _call(value: Any) -> dict[str, Any] | None:
    """A tool call as the result carries it (a copy, name first), or None for anything else."""
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments")
    return {"name": value["name"], "arguments": dict(arguments) if isinstance(arguments, Mapping) else {}}


class _Record:
    """``to_dict``/``from_dict`` of a flat dataclass part of the result (unknown keys ignored)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        return _known(cls, data)


@dataclass(frozen=True)
class ResultError:
    """Why a question has no answer: a stable code (:mod:`sage_irp_ros.errors`) and a message."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResultError":
        return cls(code=str(data.get("code", "")), message=str(data.get("message", "")))


@dataclass(frozen=True)
class Timing(_Record):
    """Where the question's time went; ``tokens`` counts every generated token of every candidate."""

    queued_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    tokens_per_s: float = 0.0

    @classmethod
    def measure(cls, *, received: float, start: float, now: float, inference_s: float,
                tokens: int) -> "Timing":
        """Timing from monotonic instants: received (queued), start (inference began) and now."""
        return cls(queued_s=round(start - received, 6), inference_s=round(inference_s, 6),
                   total_s=round(now - received, 6), tokens=tokens,
                   tokens_per_s=round(tokens / inference_s, 3) if inference_s > 0 else 0.0)


@dataclass(frozen=True)
class IRPSummary(_Record):
    """The result's ``irp`` object: how the answer was chosen among the candidates.

    ``candidates`` counts the sampled candidates (``llm_irp.candidates`` or the question's own);
    ``energies`` and ``temperatures`` have one entry per scored answer, the greedy row (temperature 0.0)
    included when one was decoded.
    """

    candidates: int = 0
    rounds: int = 0
    best_energy: float | None = None
    energies: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    halt_reason: str | None = None
    converged: bool = False
    finished: bool = False
    throttled: bool = False
    history_used: int = 0
    batch: int = 1  # questions decoded together with this one, itself included (node.batch_size)
    step: str = "eager"  # "compiled": every decoding step of its candidates ran through the compiled step
    stopping: str = "off"  # the schedule that stopped rows early: parallel, sequential or off
    dropped: dict[str, int] = field(default_factory=dict)  # rows a stopping rule dropped, by rule
    prefill_s: float = 0.0
    decode_s: float = 0.0
    scoring_s: float = 0.0


@dataclass(frozen=True)
class Result:
    """One question's result, ok or not (then ``answer`` is empty and ``snarc``/``irp`` are None)."""

    id: str
    conversation: str | None = None
    question: str = ""
    ok: bool = False
    answer: str = ""
    # a choices question: the chosen option (also the answer) and every option's probability
    choice: str | None = None
    probabilities: dict[str, float] | None = None
    json: Any = None  # a json_schema question: the answer parsed (it validates against the schema)
    # a tools question: the call, {"name": ..., "arguments": {...}} (arguments valid under the tool's
    # parameters schema); None with tool_choice auto when the model answered in text
    tool_call: dict[str, Any] | None = None
    # every ok result: the calibrated probability that the answer is right; ``confident`` is
    # confidence >= min_confidence (true when min_confidence is 0); None on an error result
    confidence: float | None = None
    confident: bool | None = None
    error: ResultError | None = None
    snarc: SnarcScores | None = None
    irp: IRPSummary | None = None
    timing: Timing = field(default_factory=Timing)
    model: str | None = None
    # who generated the candidates: local (on board), remote (a generation server) or local_fallback
    # (on board because the server was unreachable); None on an error result and from older nodes
    backend: str | None = None
    warnings: list[str] = field(default_factory=list)
    stamp: float = 0.0

    # -- what behaviour trees branch on ----------------------------------------------------------
    @property
    def salience(self) -> float | None:
        """Total SNARC salience of an answer; None for an error result."""
        return self.snarc.total if self.snarc is not None else None

    @property
    def error_code(self) -> str | None:
        return self.error.code if self.error is not None else None

    @property
    def error_message(self) -> str | None:
        return self.error.message if self.error is not None else None

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The result JSON as a dict, keys in the documented order."""
        return {"id": self.id, "conversation": self.conversation, "question": self.question, "ok": self.ok,
                "answer": self.answer, "choice": self.choice,
                "probabilities": dict(self.probabilities) if self.probabilities is not None else None,
                "json": self.json, "tool_call": _call(self.tool_call), "confidence": self.confidence,
                "confident": self.confident,
                "error": self.error.to_dict() if self.error is not None else None,
                "snarc": self.snarc.as_dict() if self.snarc is not None else None,
                "irp": self.irp.to_dict() if self.irp is not None else None,
                "timing": self.timing.to_dict(), "model": self.model, "backend": self.backend,
                "warnings": list(self.warnings),
                "stamp": self.stamp}

    def to_json(self, indent: int | None = None) -> str:
        """The ``result`` message text (UTF-8 kept as is)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Result":
        """A Result from a decoded result message; raises TypeError/ValueError on a malformed one."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a result must be a JSON object, got {type(data).__name__}")
        error, snarc, irp = data.get("error"), data.get("snarc"), data.get("irp")
        return cls(id=str(data.get("id") or ""), conversation=data.get("conversation"),
                   question=str(data.get("question") or ""), ok=bool(data.get("ok")),
                   answer=str(data.get("answer") or ""),
                   choice=_optional(data.get("choice"), str),
                   probabilities=({str(k): float(v) for k, v in data["probabilities"].items()}
                                  if isinstance(data.get("probabilities"), Mapping) else None),
                   json=data.get("json"), tool_call=_call(data.get("tool_call")),
                   confidence=_optional(data.get("confidence"), float),
                   confident=_optional(data.get("confident"), bool),
                   error=ResultError.from_dict(error) if error else None,
                   snarc=_known(SnarcScores, snarc) if snarc else None,
                   irp=IRPSummary.from_dict(irp) if irp else None,
                   timing=Timing.from_dict(data.get("timing") or {}), model=data.get("model"),
                   backend=_optional(data.get("backend"), str),
                   warnings=list(data.get("warnings") or []), stamp=float(data.get("stamp") or 0.0))

    @classmethod
    def from_json(cls, text: str) -> "Result":
        """A Result from a ``result`` message; raises ValueError (or TypeError) on a malformed one."""
        return cls.from_dict(json.loads(text))
