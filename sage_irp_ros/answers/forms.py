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

A question is answered in one of three forms: free text, exactly one of its ``choices``, or JSON valid
under its ``json_schema``. Each form is a small object with two hooks the serving core calls, so the core
holds no branch per form and a new form (a tool call, say) is one more class here:

- :meth:`AnswerForm.prepare`: the text the model sees and the settings it decodes with (choices are
  short; JSON rows are constrained by the schema's grammar);
- :meth:`AnswerForm.finish`: the answer from the refined candidates, with its calibrated confidence
  (choices score their options in one batched forward; JSON keeps the valid candidate the others agree
  with most).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Protocol, Sequence

from sage_irp_ros import errors
from sage_irp_ros.answers import choices, json_answers
from sage_irp_ros.errors import SageError
from sage_irp_ros.irp.confidence import shipped
from sage_irp_ros.irp.engine import IRPEngine, Refinement
from sage_irp_ros.irp.options import AnswerOptions
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


def form_of(q: Question) -> AnswerForm:
    """The form a question asks for: choices, JSON under a schema, else free text."""
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
