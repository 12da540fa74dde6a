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

"""The benchmark's baseline: a faithful re-implementation of the research system's LLM IRP loop.

This is what the research report ("Track 9") timed at 14.45 s per question: one sampled ``generate``
call per iteration, the ``seed`` energy, keep the best, cool the temperature, check the halting rules.
It lives in ``bench/speed/`` on purpose (it is the thing to beat, not part of the package) and does not
import the package's engine, prompts or energies; it gets its model from the caller (the benchmark
uses the package's model loader so both sides run the very same weights).

Faithful details (spec "IRP: Iterative Refinement Primitive for a language model"):
- prompt: ``"{context}\\n\\nQuestion: {q}\\n\\nAnswer:"`` or ``"Question: {q}\\n\\nAnswer:"``;
- ``step``: ``model.generate(do_sample=True, temperature=T, max_new_tokens=max_tokens,
  pad_token_id=eos)`` with transformers' other sampling defaults (so top-k 50 applies, as it did for
  the research code), decode the whole output and keep the text after the last ``Answer:``;
  energy at the temperature the response was sampled at; keep the lowest; ``iteration += 1``;
  ``temperature = max(T_min, T - dT)`` in plain floats (no rounding: 0.7 - 3 x 0.053 = 0.541 stays
  above 0.54, exactly as in the research code);
- ``halt``: best < threshold, or temperature <= T_min, or the last ``window`` energies within ``delta``;
- the caller loops ``step`` up to ``iterations`` times and stops when ``halt`` is true.

Benchmark-only additions, none of which changes what is sampled:
- ``min_new_tokens`` (0 = off) forces every candidate to the same length for timing runs;
- a passive logits processor records when prefill ended (it returns the scores unchanged), so the
  report can split prefill from decode;
- ``top_k`` can be overridden (``top_k=None`` samples from the full tempered distribution, the way
  the package's engine does) so a test can show that both loops draw identical token streams;
- ``energy_fn(text, temperature) -> float`` replaces the seed energy (tests feed a scripted energy).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import torch

CONVERGED, TEMPERATURE_FLOOR, PLATEAU, MAX_ITERATIONS = "converged", "temperature_floor", "plateau", \
    "max_iterations"
_DEFAULT = object()


def research_prompt(question: str, context: str | None = None) -> str:
    """The research system's prompt."""
    if context:
        return f"{context}\n\nQuestion: {question}\n\nAnswer:"
    return f"Question: {question}\n\nAnswer:"


def research_energy(text: str, temperature: float, initial_temperature: float) -> float:
    """The research energy: 0.4 T/T0 + 0.3 min(1, |words - 50| / 50) + 0.3 (0 if well formed else 0.3)."""
    words = len(text.split())
    well_formed = bool(re.search(r"[.!?]", text)) and bool(re.search(r"[A-Z]", text))
    return (0.4 * temperature / initial_temperature + 0.3 * min(1.0, abs(words - 50) / 50)
            + 0.3 * (0.0 if well_formed else 0.3))


class _PrefillClock:
    """Passive logits processor: notes the time of its first call (prefill done). Returns scores as is."""

    def __init__(self):
        self.first_call: float | None = None

    def __call__(self, input_ids, scores):
        if self.first_call is None:
            self.first_call = time.monotonic()
        return scores


class ResearchIRP:
    """The research loop, verb for verb: init_state / step / energy / halt / get_result (+ refine)."""

    def __init__(self, model, tokenizer, *, iterations: int = 3, initial_temperature: float = 0.7,
                 min_temperature: float = 0.54, temp_reduction: float = 0.053, max_tokens: int = 150,
                 convergence_threshold: float = 0.1, plateau_window: int = 3, plateau_delta: float = 0.05,
                 min_new_tokens: int = 0, energy_fn: Callable[[str, float], float] | None = None,
                 top_k: Any = _DEFAULT, seed: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.iterations = iterations
        self.initial_temperature, self.min_temperature = initial_temperature, min_temperature
        self.temp_reduction, self.max_tokens = temp_reduction, max_tokens
        self.convergence_threshold = convergence_threshold
        self.plateau_window, self.plateau_delta = plateau_window, plateau_delta
        self.min_new_tokens = min_new_tokens
        self.energy_fn = energy_fn
        self.top_k = top_k
        self.seed = seed
        self.device = next(model.parameters()).device

    # -- protocol ---------------------------------------------------------------------------------
    def init_state(self, question: str, context: str | None = None) -> dict[str, Any]:
        return {"question": question, "context": context, "prompt": research_prompt(question, context),
                "iteration": 0, "temperature": self.initial_temperature, "best_response": "",
                "best_energy": float("inf"), "responses": [], "energies": [], "temperatures": [],
                "tokens": 0, "prefill_s": 0.0, "decode_s": 0.0}

    @torch.inference_mode()
    def step(self, state: dict[str, Any]) -> dict[str, Any]:
        inputs = self.tokenizer(state["prompt"], return_tensors="pt", return_token_type_ids=False).to(self.device)
        temperature = state["temperature"]
        extra: dict[str, Any] = {}
        if self.min_new_tokens:
            extra["min_new_tokens"] = self.min_new_tokens
        if self.top_k is not _DEFAULT:
            extra["top_k"] = self.top_k
        clock = _PrefillClock()
        start = time.monotonic()
        outputs = self.model.generate(**inputs, max_new_tokens=self.max_tokens, temperature=temperature,
                                      do_sample=True, pad_token_id=self.tokenizer.eos_token_id,
                                      logits_processor=[clock], **extra)
        end = time.monotonic()
        first = clock.first_call or end
        state["prefill_s"] += first - start
        state["decode_s"] += end - first
        state["tokens"] += int(outputs.shape[1] - inputs["input_ids"].shape[1])
        full = self.tokenizer.decode(outputs[0], skip_special_tokens=True)
        response = full.split("Answer:")[-1].strip()
        energy = self.energy(state, response)
        state["responses"].append(response)
        state["energies"].append(energy)
        state["temperatures"].append(temperature)
        if energy < state["best_energy"]:
            state["best_energy"], state["best_response"] = energy, response
        state["iteration"] += 1
        state["temperature"] = max(self.min_temperature, temperature - self.temp_reduction)
        return state

    def energy(self, state: dict[str, Any], response: str) -> float:
        """Energy of ``response`` sampled at the state's current temperature."""
        if self.energy_fn is not None:
            return float(self.energy_fn(response, state["temperature"]))
        return research_energy(response, state["temperature"], self.initial_temperature)

    def halt_reason(self, state: dict[str, Any]) -> str | None:
        if state["best_energy"] < self.convergence_threshold:
            return CONVERGED
        if state["temperature"] <= self.min_temperature:
            return TEMPERATURE_FLOOR
        recent = state["energies"][-self.plateau_window:]
        if len(recent) >= self.plateau_window and max(recent) - min(recent) < self.plateau_delta:
            return PLATEAU
        return None

    def halt(self, state: dict[str, Any]) -> bool:
        return self.halt_reason(state) is not None

    def get_result(self, state: dict[str, Any], halt_reason: str | None = None) -> tuple[str, dict[str, Any]]:
        return state["best_response"], {
            "iterations": state["iteration"], "final_energy": state["best_energy"],
            "final_temperature": state["temperature"],
            "converged": state["best_energy"] < self.convergence_threshold,
            "all_energies": list(state["energies"]), "response_count": len(state["responses"]),
            "temperatures": list(state["temperatures"]), "responses": list(state["responses"]),
            "halt_reason": halt_reason, "tokens": state["tokens"],
            "prefill_s": state["prefill_s"], "decode_s": state["decode_s"]}

    # -- the caller's loop ----------------------------------------------------------------------
    def refine(self, question: str, context: str | None = None) -> tuple[str, dict[str, Any]]:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        state = self.init_state(question, context)
        reason = MAX_ITERATIONS
        for _ in range(self.iterations):
            state = self.step(state)
            if self.halt(state):
                reason = self.halt_reason(state)
                break
        return self.get_result(state, reason)
