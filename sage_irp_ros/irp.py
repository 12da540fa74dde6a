"""The IRP engine for a language model: init_state / step / energy / halt / get_result.

Candidates are sampled along the research system's annealed temperature schedule, in rounds of
``candidates_per_round`` rows per generate call; halting is checked between rounds. With one
candidate per round this is exactly the research loop (sample, score, keep the best, cool, check
halt); with all candidates in one round it is one batched call, several times faster.

Temperature floor: temperatures are kept rounded to 1e-9, so 0.7 - 4 x 0.04 reaches 0.54 exactly and
halts there (as intended), while the edge schedule 0.7 -> 0.647 -> 0.594 -> 0.541 never reaches 0.54
and its 3-candidate budget ends the loop instead (halt reason ``max_iterations``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .config import IRPConfig
from .energy import EnergyFn
from .errors import TOO_LONG, SageError
from .generation import Candidate, sample_candidates, score_text
from .model_loader import LoadedModel
from .prompts import build_prompt_ids, clean_answer
from .selection import PerCandidate, SelectionRule, best_index, selection_rule

CONVERGED, TEMPERATURE_FLOOR, PLATEAU = "converged", "temperature_floor", "plateau"
MAX_ITERATIONS, DEADLINE, CANCELLED = "max_iterations", "deadline", "cancelled"
_EPS = 1e-9


def temperature_schedule(cfg: IRPConfig, iterations: int) -> list[float]:
    """Temperatures the research loop samples at: it stops after the step that reaches the floor."""
    temps, t = [], cfg.initial_temperature
    for _ in range(iterations):
        temps.append(t)
        t = round(max(cfg.min_temperature, t - cfg.temp_reduction), 9)
        if t <= cfg.min_temperature + _EPS:
            break
    return temps


@dataclass
class IRPState:
    """Everything one question's refinement knows; the protocol's verbs read and update it."""

    question: str
    context: str
    prompt_ids: list[int]
    schedule: list[float]
    max_tokens: int
    round_size: int
    deadline: float | None = None
    cancel: threading.Event | None = None
    min_new_tokens: int = 0
    iteration: int = 0
    temperature: float = 0.0
    best_response: str = ""
    best_energy: float = float("inf")
    best_finished: bool = False
    greedy_pending: bool = False  # the greedy (T = 0) row is still to be added to the next round
    candidates: list[Candidate] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    tokens: int = 0
    rounds: int = 0
    halt_reason: str | None = None
    history_used: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {
        "prefill_s": 0.0, "decode_s": 0.0, "scoring_s": 0.0})


class IRPEngine:
    """Iterative refinement over one resident model."""

    def __init__(self, lm: LoadedModel, cfg: IRPConfig, energy: EnergyFn | SelectionRule | None = None,
                 use_chat_template: bool = True):
        """``energy``: a per-candidate energy or a selection rule; default: ``cfg.energy``'s rule."""
        self.lm, self.cfg = lm, cfg
        if energy is None:
            self.rule: SelectionRule = selection_rule(cfg.energy)
        else:
            self.rule = energy if hasattr(energy, "energies") else PerCandidate(energy)
        self.use_chat_template = use_chat_template

    # -- protocol ---------------------------------------------------------------------------------
    def init_state(self, question: str, context: str = "", history: Sequence[tuple[str, str]] = (), *,
                   max_iterations: int | None = None, max_tokens: int | None = None,
                   candidates_per_round: int | None = None, deadline: float | None = None,
                   cancel: threading.Event | None = None, min_new_tokens: int = 0,
                   greedy_candidate: bool | None = None) -> IRPState:
        """Build the prompt (dropping the oldest history if it would not fit) and the schedule.

        ``greedy_candidate`` overrides ``llm_irp.greedy_candidate`` for this question (the core turns
        the greedy row off while throttled and when retrying after running out of memory).
        """
        max_tokens = max_tokens or self.cfg.max_tokens
        history = list(history)
        while True:
            prompt_ids = build_prompt_ids(self.lm.tokenizer, question, context, history,
                                          self.use_chat_template)
            if len(prompt_ids) + max_tokens <= self.lm.context_window:
                break
            if not history:
                raise SageError(TOO_LONG, (
                    f"prompt is {len(prompt_ids)} tokens; with max_tokens {max_tokens} it exceeds the "
                    f"model's context window of {self.lm.context_window} tokens"))
            history.pop(0)
        schedule = temperature_schedule(self.cfg, max_iterations or self.cfg.candidates)
        per_round = candidates_per_round if candidates_per_round is not None else self.cfg.candidates_per_round
        return IRPState(question=question, context=context, prompt_ids=prompt_ids, schedule=schedule,
                        max_tokens=max_tokens, round_size=per_round or len(schedule),
                        deadline=deadline, cancel=cancel, min_new_tokens=min_new_tokens,
                        temperature=self.cfg.initial_temperature, history_used=len(history),
                        greedy_pending=self.cfg.greedy_candidate if greedy_candidate is None
                        else greedy_candidate)

    def step(self, state: IRPState) -> list[Candidate]:
        """Sample one round of candidates at the next temperatures, score them all, keep the best.

        With ``greedy_candidate`` the first round carries one more row at temperature 0: the greedy
        continuation, decoded in the same batched call (it is not one of the schedule's iterations).
        """
        temps = state.schedule[state.iteration:state.iteration + state.round_size]
        if not temps:
            return []
        rows = [*temps, 0.0] if state.greedy_pending else temps
        state.greedy_pending = False
        batch = sample_candidates(self.lm, state.prompt_ids, rows, state.max_tokens,
                                  min_new_tokens=state.min_new_tokens, deadline=state.deadline,
                                  cancel=state.cancel)
        state.timings["prefill_s"] += batch.prefill_s
        state.timings["decode_s"] += batch.decode_s
        start = time.monotonic()
        for candidate in batch.candidates:
            candidate.text = clean_answer(candidate.text)
            state.candidates.append(candidate)
            state.responses.append(candidate.text)
            state.temperatures.append(candidate.temperature)
        state.energies = self.rule.energies(state.candidates, state.energies, self.cfg.initial_temperature)
        best = best_index(state.energies)
        state.best_response, state.best_energy = state.candidates[best].text, state.energies[best]
        state.best_finished = state.candidates[best].finished
        state.timings["scoring_s"] += time.monotonic() - start
        state.tokens += batch.tokens
        state.iteration += len(temps)
        state.rounds += 1
        state.temperature = round(max(self.cfg.min_temperature, temps[-1] - self.cfg.temp_reduction), 9)
        if batch.stopped_early:
            state.halt_reason = CANCELLED if state.cancel is not None and state.cancel.is_set() else DEADLINE
        return batch.candidates

    def energy(self, state: IRPState, response: str) -> float:
        """Energy of an arbitrary response to this state's prompt (scores it with one forward pass)."""
        candidate = score_text(self.lm, state.prompt_ids, response)
        candidate.temperature = state.temperature
        return float(self.rule.energies([*state.candidates, candidate], state.energies,
                                        self.cfg.initial_temperature)[-1])

    def halt(self, state: IRPState) -> bool:
        """True when refinement should stop; records why in ``state.halt_reason``."""
        if state.halt_reason is None:
            state.halt_reason = self._halt_reason(state)
        return state.halt_reason is not None

    def get_result(self, state: IRPState) -> tuple[str, dict[str, Any]]:
        """(best_response, info) with the research keys plus candidates, halt reason and timings."""
        return state.best_response, {
            "iterations": state.iteration,
            "final_energy": state.best_energy if state.energies else None,
            "final_temperature": state.temperature,
            "converged": bool(state.energies) and state.best_energy < self.cfg.energy_convergence_threshold,
            "all_energies": list(state.energies),
            "response_count": len(state.responses),
            "candidates": len(state.responses),
            "rounds": state.rounds,
            "temperatures": list(state.temperatures),
            "halt_reason": state.halt_reason,
            "tokens": state.tokens,
            "history_used": state.history_used,
            "finished": state.best_finished,
            **{k: round(v, 6) for k, v in state.timings.items()},
        }

    # -- conveniences -----------------------------------------------------------------------------
    def refine(self, question: str, context: str = "", history: Sequence[tuple[str, str]] = (),
               **options) -> tuple[str, dict[str, Any]]:
        """Run the protocol to the end: init_state, then step until halt, then get_result."""
        state = self.init_state(question, context, history, **options)
        if self.cfg.seed >= 0:
            torch.manual_seed(self.cfg.seed)
        while not self.halt(state):
            self.step(state)
        return self.get_result(state)

    def warm_up(self) -> float:
        """One short generation with the real batch shape, so the first question is not slower."""
        start = time.monotonic()
        state = self.init_state("Hello.", max_tokens=8)
        self.step(state)
        return time.monotonic() - start

    def _halt_reason(self, state: IRPState) -> str | None:
        cfg = self.cfg
        if state.cancel is not None and state.cancel.is_set():
            return CANCELLED
        if state.energies and state.best_energy < cfg.energy_convergence_threshold:
            return CONVERGED
        if state.iteration and state.temperature <= cfg.min_temperature + _EPS:
            return TEMPERATURE_FLOOR
        window = state.energies[-cfg.energy_plateau_window:]
        if len(window) == cfg.energy_plateau_window and max(window) - min(window) < cfg.energy_plateau_delta:
            return PLATEAU
        if state.iteration >= len(state.schedule):
            return MAX_ITERATIONS
        if state.deadline is not None and time.monotonic() >= state.deadline:
            return DEADLINE
        return None
