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

"""The IRP engine for a language model: init_state / step / energy / halt / get_result.

Candidates are sampled along the research system's annealed temperature schedule, in rounds of
``candidates_per_round`` rows per generation call; halting is checked between rounds. With one
candidate per round this is exactly the research loop (sample, score, keep the best, cool, check
halt); with all candidates in one round it is one batched call, several times faster.

Temperature floor: temperatures are kept rounded to 1e-9, so 0.7 - 4 x 0.04 reaches 0.54 exactly and
halts there (as intended), while the edge schedule 0.7 -> 0.647 -> 0.594 -> 0.541 never reaches 0.54
and its 3-candidate budget ends the loop instead (halt reason ``max_iterations``).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from sage_irp_ros.decoding import compiled_step
from sage_irp_ros.config.settings import IRPConfig
from sage_irp_ros.irp.energy import EnergyFn
from sage_irp_ros.errors import TOO_LONG, SageError
from sage_irp_ros.decoding.generator import Batch, Candidate, GenerationRequest, Generator, generate_all
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.weights.loader import LoadedModel
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.irp.prompts import PROMPT_BANK, clean_answer, render_prompt
from sage_irp_ros.results import IRPSummary
from sage_irp_ros.irp.state import IRPState, RefineJob, Refinement
from sage_irp_ros.irp.refiner import Refiner
from sage_irp_ros.irp.adaptive import choose_schedule, greedy_is_confident, kept, measure_row_cost, rules_from
from sage_irp_ros.irp.stopping import CONFIDENT_GREEDY, QuestionWatch
from sage_irp_ros.irp.selection import PerCandidate, SelectionRule, best_index, selection_rule

CONVERGED, TEMPERATURE_FLOOR, PLATEAU = "converged", "temperature_floor", "plateau"
MAX_ITERATIONS, DEADLINE, CANCELLED = "max_iterations", "deadline", "cancelled"
_EPS = 1e-9


def local_generator(lm: LoadedModel, cfg: IRPConfig) -> Generator:
    """The on-board generator for ``lm``: llama.cpp's forward (``model.forward``), else the torch decode
    loop with the compiled step where ``llm_irp.compile`` asks for it."""
    if lm.forward == "llama_cpp":
        from sage_irp_ros.decoding.llama_cpp_generator import LlamaCppGenerator

        return LlamaCppGenerator(lm)
    return TorchGenerator(lm, step_fn=compiled_step.for_model(lm, cfg.compile, expect_rows=IRPEngine.usual_rows(cfg),
                                                              expect_tokens=cfg.max_tokens))


def temperature_schedule(cfg: IRPConfig, candidates: int) -> list[float]:
    """Temperatures the research loop samples at: it stops after the step that reaches the floor."""
    temps, t = [], cfg.initial_temperature
    for _ in range(candidates):
        temps.append(t)
        t = round(max(cfg.min_temperature, t - cfg.temp_reduction), 9)
        if t <= cfg.min_temperature + _EPS:
            break
    return temps


class IRPEngine:
    """Iterative refinement over one resident model."""

    def __init__(self, lm: LoadedModel | None, cfg: IRPConfig, energy: EnergyFn | SelectionRule | None = None,
                 use_chat_template: bool = True, generator: Generator | None = None):
        """``energy``: a per-candidate energy or a selection rule; default: ``cfg.energy``'s rule.
        ``generator``: where candidates come from; default: :func:`local_generator` over ``lm`` (``lm`` None:
        no resident model, prompts are messages and text only, ``generator`` is required)."""
        self.lm, self.cfg = lm, cfg
        if lm is None and generator is None:
            raise ValueError("an engine without a resident model needs a generator")
        self.generator: Generator = generator if generator is not None else local_generator(lm, cfg)
        if energy is None:
            self.rule: SelectionRule = selection_rule(cfg.energy)
        else:
            self.rule = energy if hasattr(energy, "energies") else PerCandidate(energy)
        self.use_chat_template = use_chat_template
        self.rules = rules_from(cfg)

    # -- protocol ---------------------------------------------------------------------------------
    def init_state(self, question: str, context: str = "", history: Sequence[tuple[str, str]] = (),
                   options: AnswerOptions | None = None) -> IRPState:
        """Build the prompt (dropping the oldest history if it would not fit) and the schedule.

        ``options``: this question's resolved settings; default: :meth:`AnswerOptions.resolve` of the
        engine's config (no deadline, not throttled).
        """
        options = options if options is not None else AnswerOptions.resolve(self.cfg)
        max_tokens = options.max_tokens
        history = list(history)
        tokenizer = self.lm.tokenizer if self.lm is not None else None
        while True:
            prompt = render_prompt(tokenizer, question, context, history, self.use_chat_template)
            if self.lm is None or len(prompt.ids) + max_tokens <= self.lm.context_window:
                break
            if not history:
                raise SageError(TOO_LONG, (
                    f"prompt is {len(prompt.ids)} tokens; with max_tokens {max_tokens} it exceeds the "
                    f"model's context window of {self.lm.context_window} tokens"))
            history.pop(0)
        schedule = temperature_schedule(self.cfg, options.candidates)
        variants, sampled = {}, list(options.sampled_prompts) if schedule else [0]
        for index in sorted(set(sampled) - {0}):
            variant = render_prompt(tokenizer, question, context, history, self.use_chat_template,
                                    system=PROMPT_BANK[index])
            if self.lm is None or len(variant.ids) + max_tokens <= self.lm.context_window:
                variants[index] = variant
        sampled = [i if i == 0 or i in variants else 0 for i in sampled]  # a phrasing too long: the plain one
        stopping = choose_schedule(options.stopping, getattr(self.lm, "row_cost", None),
                                   isinstance(self.generator, TorchGenerator))
        return IRPState(question=question, context=context, prompt_ids=prompt.ids, schedule=schedule,
                        max_tokens=max_tokens, round_size=options.candidates_per_round or len(schedule),
                        deadline=options.deadline, cancel=options.cancel, min_new_tokens=options.min_new_tokens,
                        temperature=self.cfg.initial_temperature, history_used=len(history),
                        greedy_pending=options.greedy, throttled=options.throttled,
                        constraint=options.constraint, messages=prompt.messages, prompt_text=prompt.text,
                        variants=variants, sampled_prompts=tuple(sampled), stopping=stopping,
                        greedy_first=stopping == "sequential" and options.greedy and bool(schedule))

    def step(self, state: IRPState) -> list[Candidate]:
        """Sample one round of candidates at the next temperatures, score them all, keep the best.

        With ``greedy_candidate`` the first round carries one more row at temperature 0: the greedy
        continuation, decoded in the same batched call (it is not one of the schedule's candidates);
        with an empty schedule (throttled) that row is the whole round.
        """
        requests = self.round_requests(state)
        return self.absorb(state, generate_all(self.generator, requests)) if requests else []

    def round_requests(self, state: IRPState) -> list[GenerationRequest]:
        """The next round's row groups: one request per prompt the round's rows use (the greedy row and
        the plain prompt's sampled rows share one; each prompt variant gets its own). Empty when none."""
        temps = [] if state.greedy_first else state.schedule[state.iteration:state.iteration + state.round_size]
        prompts = {0: (state.prompt_ids, state.messages, state.prompt_text)}
        prompts.update({i: (v.ids, v.messages, v.text) for i, v in state.variants.items()})
        turn = state.sampled_prompts
        rows: dict[int, list[float]] = {}
        for offset, temperature in enumerate(temps):  # sampled rows: the phrasings in turn
            rows.setdefault(turn[(state.iteration + offset) % len(turn)], []).append(temperature)
        if state.greedy_pending:
            rows.setdefault(0, []).append(0.0)
        watched = state.stopping != "off" and sum(len(t) for t in rows.values()) > 1
        state.watch = QuestionWatch(self.rules, self._detokenize) if watched else None
        state.round = [GenerationRequest(
            prompts[p][0], t, state.max_tokens, min_new_tokens=state.min_new_tokens, deadline=state.deadline,
            cancel=state.cancel, messages=prompts[p][1], prompt_text=prompts[p][2],
            constraints=[state.constraint() for _ in t] if state.constraint is not None else None,
            watch=state.watch) for p, t in sorted(rows.items())]
        return state.round

    def absorb(self, state: IRPState, batches: Sequence[Batch]) -> list[Candidate]:
        """Take the round's batches (one per request of :meth:`round_requests`), score every candidate so
        far and keep the best."""
        temps = [] if state.greedy_first else state.schedule[state.iteration:state.iteration + state.round_size]
        state.greedy_pending = False
        # in row order whatever the grouping by prompt: the schedule's temperatures (falling), the greedy row last;
        # rows a stopping rule dropped are no candidates
        candidates = sorted(kept(state.round, batches, state.watch), key=lambda c: -c.temperature)
        for batch in batches:
            state.timings["prefill_s"] += batch.prefill_s
            state.steps.append(getattr(batch, "step", "eager"))
        state.timings["decode_s"] += max(batch.decode_s for batch in batches)
        start = time.monotonic()
        for candidate in candidates:
            candidate.text = clean_answer(candidate.text)
            state.candidates.append(candidate)
            state.responses.append(candidate.text)
            state.temperatures.append(candidate.temperature)
        state.energies = self.rule.energies(state.candidates, state.energies, self.cfg.initial_temperature)
        best = best_index(state.energies)
        state.best_response, state.best_energy = state.candidates[best].text, state.energies[best]
        state.best_finished = state.candidates[best].finished
        state.timings["scoring_s"] += time.monotonic() - start
        state.tokens += sum(batch.tokens for batch in batches)
        state.iteration += len(temps)
        state.rounds += 1
        if temps:
            state.temperature = round(max(self.cfg.min_temperature, temps[-1] - self.cfg.temp_reduction), 9)
        if state.watch is not None:
            for name, count in state.watch.counts.items():
                state.dropped[name] = state.dropped.get(name, 0) + count
            state.halt_reason = state.watch.ended or state.halt_reason
        if state.greedy_first:  # sequential: the sampled rows run only when the greedy row is not confident
            state.greedy_first = False
            greedy = next((c for c in candidates if c.temperature == 0.0), None)
            if greedy is not None and greedy_is_confident(self.rules, greedy):
                state.halt_reason = CONFIDENT_GREEDY
        if any(batch.stopped_early for batch in batches):
            state.halt_reason = CANCELLED if state.cancel is not None and state.cancel.is_set() else DEADLINE
        return candidates

    def _detokenize(self, ids: list[int]) -> str:
        return clean_answer(self.lm.tokenizer.decode(ids, skip_special_tokens=True)) if self.lm is not None else ""

    def energy(self, state: IRPState, response: str) -> float:
        """Energy of an arbitrary response to this state's prompt (scores it with one forward pass)."""
        candidate = self.generator.score(state.prompt_ids, response)
        candidate.temperature = state.temperature
        return float(self.rule.energies([*state.candidates, candidate], state.energies,
                                        self.cfg.initial_temperature)[-1])

    def halt(self, state: IRPState) -> bool:
        """True when refinement should stop; records why in ``state.halt_reason``."""
        if state.halt_reason is None:
            state.halt_reason = self._halt_reason(state)
        return state.halt_reason is not None

    def get_result(self, state: IRPState) -> Refinement:
        """The best response with the result's ``irp`` summary, the tokens and the final temperature."""
        summary = IRPSummary(
            candidates=state.iteration, rounds=state.rounds,
            best_energy=state.best_energy if state.energies else None,
            energies=[round(e, 6) for e in state.energies], temperatures=list(state.temperatures),
            halt_reason=state.halt_reason,
            converged=bool(state.energies) and state.best_energy < self.cfg.energy_convergence_threshold,
            finished=state.best_finished, throttled=state.throttled, history_used=state.history_used,
            batch=state.batch, step=state.steps[0] if state.steps and len(set(state.steps)) == 1 else "eager",
            stopping=state.stopping, dropped=dict(state.dropped),
            **{k: round(v, 6) for k, v in state.timings.items()})
        return Refinement(answer=state.best_response, irp=summary, tokens=state.tokens,
                          final_temperature=state.temperature, candidates=tuple(state.candidates),
                          best=best_index(state.energies) if state.energies else 0)

    # -- conveniences -----------------------------------------------------------------------------
    def refine(self, question: str, context: str = "", history: Sequence[tuple[str, str]] = (),
               options: AnswerOptions | None = None) -> Refinement:
        """Run the protocol to the end: init_state, then step until halt, then get_result."""
        refined = self.refine_many([RefineJob(question, context, history, options)])[0]
        if isinstance(refined, Exception):
            raise refined
        return refined

    def refine_many(self, jobs: Sequence["RefineJob"],
                    on_done: Callable[[int, "Refinement | SageError"], None] | None = None,
                    ) -> list[Refinement | SageError]:
        """Several questions refined together over one decode session (:class:`~sage_irp_ros.irp.refiner.
        Refiner`): each question goes round by round on its own, its rows decoded in the same steps as the
        others'; it is handed to ``on_done(index, refinement)`` as soon as it halts (while the others may
        still decode). A question whose prompt cannot be built gets its :class:`SageError` in its place; an
        exception of the session itself propagates (the caller retries alone)."""
        if self.cfg.seed >= 0:
            torch.manual_seed(self.cfg.seed)
        refiner = Refiner(self, max_rows=sum(self.rows_of(job.options) for job in jobs))
        outcomes: dict[int, Refinement | SageError] = {}

        def report(done) -> None:
            for index, outcome in done:
                outcomes[index] = outcome
                if on_done is not None:
                    on_done(index, outcome)

        for index, job in enumerate(jobs):
            report(refiner.add(index, job))
        while refiner.busy:
            report(refiner.step())
        return [outcomes[index] for index in range(len(jobs))]

    def spent(self, state: IRPState) -> None:
        """A question with nothing left to sample: its halt reason, when no rule gave one."""
        if state.halt_reason is None:
            state.halt_reason = MAX_ITERATIONS

    def warm_up(self) -> float:
        """One short generation with the real batch shape, so the first question is not slower; on board,
        the first time for a model, what an extra row costs (``LoadedModel.row_cost``, ``stopping: auto``)."""
        start = time.monotonic()
        state = self.init_state("Hello.", options=AnswerOptions.resolve(self.cfg).replace(max_tokens=8))
        self.step(state)
        if self.lm is not None and self.lm.row_cost is None and isinstance(self.generator, TorchGenerator):
            self.lm.row_cost = round(measure_row_cost(self.generator, state.prompt_ids), 3)
        return time.monotonic() - start

    def default_options(self) -> AnswerOptions:
        """The options of a question that sets none: the engine's config, no deadline, not throttled."""
        return AnswerOptions.resolve(self.cfg)

    def rows_of(self, options: AnswerOptions | None) -> int:
        """The most rows a question with these options decodes at once (the default options: the usual)."""
        return options.rows if options is not None else self.usual_rows(self.cfg)

    @staticmethod
    def usual_rows(cfg: IRPConfig) -> int:
        """Rows of the first decode call of a question with the default options (what to compile first)."""
        sampled = len(temperature_schedule(cfg, cfg.candidates))
        return min(sampled, cfg.candidates_per_round or sampled) + (1 if cfg.greedy_candidate else 0)

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
        if state.iteration >= len(state.schedule) and not state.greedy_pending:
            return MAX_ITERATIONS
        if state.deadline is not None and time.monotonic() >= state.deadline:
            return DEADLINE
        return None
