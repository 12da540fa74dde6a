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

"""The serving core's status, typed: the resident model, the serving counts, the store and the backend.

The IRP node publishes it (with its own lifecycle and queue keys) as the ``status`` JSON; the keys and
their meaning are in docs/interface.md ("Status JSON"). :meth:`CoreStatus.to_dict` gives that JSON's
core part, flat as it has always been.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class StoreStatus:
    """The salient-exchange store: healthy or its last error, where it is and how big."""

    ok: bool = True
    error: str | None = None
    path: str | None = None  # None: not opened yet, or storage disabled (memory.db_path: none)
    size_mb: float | None = None
    pruned: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.path is None:
            out.pop("pruned")
        return out


@dataclasses.dataclass(frozen=True)
class CoreStatus:
    """What a front end's status needs from the core. Without a model, device and precision are the
    configured ones and the model's sizes are None."""

    model: str | None
    device: str
    precision: str
    packed_layers: int | None
    weights: str
    forward: str  # what computes the logits: torch or llama_cpp (model.forward)
    stopping: str  # the early-stopping schedule questions run under now (llm_irp.stopping resolved)
    row_cost: float | None  # a 4-row decoding step's time over a 1-row step's, measured at warm-up
    quantized_layers: int | None
    model_mb: float | None
    gpu_mem_mb: float | None
    max_memory_mb: int
    serving: dict[str, Any]  # ServingStats.snapshot(): served, errors, refused, consecutive_errors, last, latency
    memory_store: StoreStatus
    generation: dict[str, Any]  # where candidates come from: on board, or the remote backend's status

    def to_dict(self) -> dict[str, Any]:
        """The status JSON's core keys (the serving counts at the top level)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(out.pop("serving"))
        out["memory_store"] = self.memory_store.to_dict()
        return out
