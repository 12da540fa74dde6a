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

"""Error codes that reach users on the ``result`` topic, and the exception that carries them.

Every failure a question can meet maps to one stable code, so behaviour trees can branch on it
without parsing messages. docs/interface.md lists them.
"""

from __future__ import annotations

INVALID_INPUT = "invalid_input"      # not parseable, wrong field types, empty question
TOO_LONG = "too_long"                # question over max_question_chars, or prompt over the context window
QUEUE_FULL = "queue_full"            # the bounded inference queue is full
NOT_ACTIVE = "not_active"            # the node is not in the active lifecycle state
DEADLINE = "deadline"                # the deadline passed before any candidate was produced
INFERENCE_FAILED = "inference_failed"  # generation raised
OUT_OF_MEMORY = "out_of_memory"      # OOM during generation, or available RAM under the floor
MODEL_NOT_LOADED = "model_not_loaded"  # no model is configured (unconfigured node, failed load)
SHUTTING_DOWN = "shutting_down"      # the process is stopping; the question was not answered
BACKEND_UNAVAILABLE = "backend_unavailable"  # the generation server failed or is unreachable, no fallback
BACKEND_UNSUPPORTED = "backend_unsupported"  # choices / json_schema on a node without an on-board model

ALL_CODES = (INVALID_INPUT, TOO_LONG, QUEUE_FULL, NOT_ACTIVE, DEADLINE, INFERENCE_FAILED,
             OUT_OF_MEMORY, MODEL_NOT_LOADED, SHUTTING_DOWN, BACKEND_UNAVAILABLE, BACKEND_UNSUPPORTED)
# Refusals caused by the client or by the node's state, not by inference: they are counted as
# ``refused``, never as failures, and logged at WARN (throttled) rather than ERROR.
CLIENT_ERRORS = frozenset({INVALID_INPUT, TOO_LONG, QUEUE_FULL, NOT_ACTIVE, DEADLINE, SHUTTING_DOWN,
                           BACKEND_UNSUPPORTED})


class SageError(Exception):
    """A failure with a stable ``code`` (one of ALL_CODES) and a message for humans."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ModelLoadError(RuntimeError):
    """A model could not be loaded: the message says which path and why, never a bare traceback."""
