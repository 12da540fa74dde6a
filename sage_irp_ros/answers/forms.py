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

"""Answer forms: how a question's form shapes its decoding before, and picks its answer after.

A question is answered in one of four forms: free text, exactly one of its ``choices``, JSON valid
under its ``json_schema``, or one call of its ``tools``. Each form is a small object with two hooks the
serving core calls, so the core holds no branch per form and a new form is one more class here:

- :meth:`AnswerForm.prepare`: the text the model sees and the settings it decodes with (choices are
  short; JSON rows are constrained by the schema's grammar);
- :meth:`AnswerForm.finish`: the answer from the refined candidates, with its calibrated confidence
  (choices score their options in one batched forward; JSON keeps the valid candidate the others agree
  with most; a tool call takes the name most rows, decoded under the names' grammar, voted for, then
  decodes the arguments under that tool's schema in one more generation call).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Protocol, Sequence

from sage_irp_ros import errors
from sage_irp_ros.answers import choices, json_answers, tool_calls
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.confidence import shipped
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.irp.engine import IRPEngine, Refinement, temperature_schedule
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.irp.prompts import build_prompt_ids, clean_answer
from sage_irp_ros.questions import Question


@dataclasses.dataclass(frozen=True)
class Answered:
    """A question's answer in its form: the text the result carries, its confidence, and the form's fields."""

    answer: str
    confidence: float
    refinement: Refinement  # the refinement, with the form's scoring time added to its summary
    choice: str | None = None
    probabilities: dict[str, float] | None = None
    json: Any = None
    tool_call: dict | None = None  # {"name": ..., "arguments": {...}}; None for an answer in text


class AnswerForm(Protocol):
    """The two hooks of a form. ``needs_text``: a refinement without answer text has no answer."""

    needs_text: bool

    def prepare(self, engine: IRPEngine, q: Question, options: AnswerOptions) -> tuple[str, AnswerOptions]:
        """The text the model sees and the options it decodes with; SageError for a question that cannot run."""

    def finish(self, engine: IRPEngine, q: Question, history: Sequence[tuple[str, str]],
               refined: Refinement) -> Answered:
        """The answer picked from the refined candidates; SageError when there is none in this form."""


class FreeText:
    """A sentence: the IRP pick as it is, its confidence from the candidates' energies and agreement."""

    needs_text = True

    def prepare(self, engine: IRPEngine, q: Question, options: AnswerOptions) -> tuple[str, AnswerOptions]:
        return q.text, options

    def finish(self, engine: IRPEngine, q: Question, history: Sequence[tuple[str, str]],
               refined: Refinement) -> Answered:
        confidence = shipped().free_text_confidence(refined.candidates, refined.irp.energies, refined.best)
        return Answered(refined.answer, confidence, refined)


class Choices:
    """Exactly one of the question's options, scored in one batched forward with the candidates' votes."""

    needs_text = False

    def prepare(self, engine: IRPEngine, q: Question, options: AnswerOptions) -> tuple[str, AnswerOptions]:
        return choices.choice_prompt(q.text, q.choices), options.replace(
            max_tokens=min(options.max_tokens, choices.MAX_TOKENS))

    def finish(self, engine: IRPEngine, q: Question, history: Sequence[tuple[str, str]],
               refined: Refinement) -> Answered:
        begin = time.monotonic()
        used = list(history)[len(history) - refined.irp.history_used:] if refined.irp.history_used else []
        prompt_ids, neutral_ids = choices.score_prompts(engine.lm.tokenizer, q.text, q.choices, q.context, used,
                                                        engine.use_chat_template)
        scores = engine.generator.score_options(prompt_ids, neutral_ids, q.choices)
        calibration = shipped()
        picked = choices.choose(scores, [c.text for c in refined.candidates], q.choices, calibration.choice_weights)
        irp = dataclasses.replace(refined.irp, scoring_s=round(refined.irp.scoring_s + time.monotonic() - begin, 6))
        return Answered(picked.choice, calibration.choice_confidence(list(picked.probabilities.values())),
                        dataclasses.replace(refined, irp=irp), choice=picked.choice,
                        probabilities=picked.probabilities)


class JsonAnswer:
    """JSON valid under the question's schema: rows decoded under its grammar, the best-agreeing valid one."""

    needs_text = True

    def prepare(self, engine: IRPEngine, q: Question, options: AnswerOptions) -> tuple[str, AnswerOptions]:
        return json_answers.json_prompt(q.text, q.json_schema), options.replace(
            constraint=_grammar(engine, q.json_schema).constraint)

    def finish(self, engine: IRPEngine, q: Question, history: Sequence[tuple[str, str]],
               refined: Refinement) -> Answered:
        parsed = [json_answers.parse_valid(c.text, q.json_schema) for c in refined.candidates]
        best = json_answers.pick([v for v, _ in parsed], [ok for _, ok in parsed], refined.irp.energies)
        if best is None:
            raise SageError(errors.INFERENCE_FAILED, f"none of {len(parsed)} candidates completed JSON valid under "
                                                     "the schema within max_tokens (raise llm_irp.max_tokens)")
        value = parsed[best][0]
        confidence = shipped().free_text_confidence(refined.candidates, refined.irp.energies, best)
        return Answered(json.dumps(value, ensure_ascii=False), confidence, refined, json=value)


class ToolCall:
    """One call of the question's tools: the name voted by the IRP rows, each decoded under the grammar of
    the names, then its arguments decoded under the tool's schema with the grammar (:mod:`.tool_calls`)."""

    def __init__(self) -> None:
        self.options: AnswerOptions | None = None  # the question's own options (prepare narrows the rows')
        self.needs_text = True  # a row names a tool; not with a named tool (nothing to vote on)

    def prepare(self, engine: IRPEngine, q: Question, options: AnswerOptions) -> tuple[str, AnswerOptions]:
        if engine.lm is None:
            raise SageError(errors.BACKEND_UNSUPPORTED, "tool calls need the on-board model (remote.fallback: "
                                                        "local): their names are scored and arguments constrained")
        tools = q.tools or []
        for tool in tools:  # every schema compiled up front: one the grammar cannot take is invalid input now
            if tool_calls.takes_arguments(tool):
                _grammar(engine, tool.parameters)
        self.options = options
        auto = q.tool_choice == tool_calls.AUTO
        text = tool_calls.name_prompt(q.text, tools, auto)
        names = tool_calls.options_of(tools, q.tool_choice)
        if len(names) == 1:  # the name is given: no votes needed
            self.needs_text = False
            return text, options.replace(candidates=0, greedy=True, max_tokens=1)
        return text, options.replace(max_tokens=min(options.max_tokens, choices.MAX_TOKENS),
                                     constraint=_grammar(engine, {"enum": names}).constraint)

    def finish(self, engine: IRPEngine, q: Question, history: Sequence[tuple[str, str]],
               refined: Refinement) -> Answered:
        begin = time.monotonic()
        options = self.options or AnswerOptions.resolve(engine.cfg, q)
        tools = q.tools or []
        used = list(history)[len(history) - refined.irp.history_used:] if refined.irp.history_used else []
        names = tool_calls.options_of(tools, q.tool_choice)
        if len(names) > 1:
            name, probabilities = tool_calls.vote(refined.candidates, names)
            confidence = shipped().choice_confidence(list(probabilities.values()))
        else:
            name, probabilities, confidence = names[0], {names[0]: 1.0}, None
        if name == tool_calls.NONE:
            answer, tokens, call = self._text(engine, q, used, options), 0, None
        else:
            tool = tool_calls.tool_named(tools, name)
            arguments, tokens, agreement = self._arguments(engine, q, tool, used, options)
            answer, call = tool_calls.call_text(name, arguments), {"name": name, "arguments": arguments}
            confidence = agreement if confidence is None else confidence
        irp = dataclasses.replace(refined.irp, scoring_s=round(refined.irp.scoring_s + time.monotonic() - begin, 6))
        return Answered(answer, confidence, dataclasses.replace(refined, irp=irp, tokens=refined.tokens + tokens),
                        probabilities=probabilities, tool_call=call)

    def _arguments(self, engine: IRPEngine, q: Question, tool: "tool_calls.Tool", used,
                   options: AnswerOptions) -> tuple[dict, int, float]:
        """The chosen tool's arguments: a greedy row and a few sampled ones under its schema's grammar, the
        valid one the others agree with most; (arguments, tokens generated, calibrated confidence)."""
        if not tool_calls.takes_arguments(tool):
            return {}, 0, shipped().choice_confidence([1.0])
        chat = engine.use_chat_template
        listed = not (chat and tool_calls.template_renders_tools(engine.lm.tokenizer))
        ids = tool_calls.prompt_ids(engine.lm.tokenizer, tool_calls.arguments_prompt(q.text, tool, listed), [tool],
                                    q.context, used, chat)
        temperatures = [0.0, *temperature_schedule(engine.cfg, min(options.candidates, tool_calls.ARGUMENT_SAMPLES))]
        grammar = _grammar(engine, tool.parameters)
        batch = engine.generator.generate(GenerationRequest(
            ids, temperatures, options.max_tokens, deadline=options.deadline, cancel=options.cancel,
            constraints=[grammar.constraint() for _ in temperatures]))
        parsed = [json_answers.parse_valid(c.text, tool.parameters) for c in batch.candidates]
        energies = [-sum(c.token_logprobs) / max(1, c.n_tokens) for c in batch.candidates]
        best = json_answers.pick([v for v, _ in parsed], [ok for _, ok in parsed], energies)
        if best is None:
            if batch.stopped_early:
                raise _stopped(options, "the arguments were complete")
            raise SageError(errors.INFERENCE_FAILED, f"none of {len(parsed)} rows completed arguments of "
                                                     f"{tool.name} valid under its schema within max_tokens "
                                                     "(raise llm_irp.max_tokens)")
        confidence = shipped().free_text_confidence(batch.candidates, energies, best)
        return parsed[best][0], batch.tokens, confidence

    def _text(self, engine: IRPEngine, q: Question, used, options: AnswerOptions) -> str:
        """tool_choice auto and no tool fits: the greedy answer to the question itself."""
        ids = build_prompt_ids(engine.lm.tokenizer, q.text, q.context, used, engine.use_chat_template)
        batch = engine.generator.generate(GenerationRequest(ids, [0.0], options.max_tokens, min_new_tokens=1,
                                                            deadline=options.deadline, cancel=options.cancel))
        text = clean_answer(batch.candidates[0].text) if batch.candidates else ""
        if not text:
            if batch.stopped_early:
                raise _stopped(options, "any answer text")
            raise SageError(errors.INFERENCE_FAILED, "the model produced no answer text")
        return text


def _stopped(options: AnswerOptions, what: str) -> SageError:
    """Why a tool call's second generation stopped early: the deadline, or the question was cancelled."""
    if options.cancel is not None and options.cancel.is_set():
        reason = getattr(options.cancel, "reason", None)
        if isinstance(reason, SageError):
            return SageError(reason.code, reason.message)
        return SageError(errors.SHUTTING_DOWN, "generation cancelled: the node is stopping")
    return SageError(errors.DEADLINE, f"deadline of {options.deadline_s or 0:g} s passed before {what}")


def form_of(q: Question) -> AnswerForm:
    """The form a question asks for: a tool call, choices, JSON under a schema, else free text."""
    if q.tools:
        return ToolCall()
    if q.choices:
        return Choices()
    if q.json_schema is not None:
        return JsonAnswer()
    return FreeText()


def _grammar(engine: IRPEngine, schema: dict):
    """The schema compiled for the resident tokenizer (SageError invalid_input when it cannot be)."""
    from sage_irp_ros.answers.grammar import compiled

    vocab = int(getattr(engine.lm.model.config, "vocab_size", 0) or len(engine.lm.tokenizer))
    return compiled(schema, engine.lm.tokenizer, vocab)
