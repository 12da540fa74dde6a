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

"""Turn a question, optional context and conversation history into prompt token ids.

Instruct models with a chat template get real chat messages; other models get the research
system's "seed" prompt (``{context}\\n\\nQuestion: {q}\\n\\nAnswer:``) with its history block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

History = Sequence[tuple[str, str]]

# Phrasings of the task that sampled candidates use (``llm_irp.sampled_prompts``, in turn): a small
# model's errors under one phrasing agree with each other, under different phrasings less so. The first
# is the plain prompt (the model's own default system prompt, if its template has one); the greedy row
# always uses it.
PROMPT_BANK: tuple[str | None, ...] = (
    None,
    "You are a helpful assistant. Answer the question correctly and concisely.",
    "Think about what is being asked, then give a short, factual answer.",
    "You are an expert. Reply with the correct answer in one or two sentences.",
)


def seed_history_block(history: History) -> str:
    """The research system's rendering of earlier exchanges as context."""
    if not history:
        return ""
    lines = ["CONVERSATION HISTORY:"]
    for i, (question, answer) in enumerate(history, start=1):
        lines += [f"[Turn {i}]", f"User: {question}", f"Assistant: {answer}", ""]
    lines += ["---", "Current turn:"]
    return "\n".join(lines)


def seed_prompt(question: str, context: str = "", history: History = ()) -> str:
    """``{context}\\n\\nQuestion: {q}\\n\\nAnswer:`` with the history block leading the context."""
    parts = [p for p in (seed_history_block(history), context) if p]
    if parts:
        return "\n\n".join(parts) + f"\n\nQuestion: {question}\n\nAnswer:"
    return f"Question: {question}\n\nAnswer:"


def chat_messages(question: str, context: str = "", history: History = (),
                  system: str | None = None) -> list[dict[str, str]]:
    """Chat messages: a system message if given, earlier turns as user/assistant pairs, context in front
    of the question."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    content = f"{context}\n\n{question}" if context else question
    messages.append({"role": "user", "content": content})
    return messages


@dataclass(frozen=True)
class Prompt:
    """A prompt three ways: token ids for the resident model, the chat messages (None for the seed
    prompt) and the rendered text, for a backend with its own tokenizer and template."""

    ids: list[int]
    messages: list[dict[str, str]] | None
    text: str


def render_prompt(tokenizer, question: str, context: str = "", history: History = (),
                  use_chat_template: bool = True, system: str | None = None) -> Prompt:
    """The full prompt, ready for generation; ``tokenizer`` None (no resident model): messages and the
    seed text only, no ids. ``system``: a system message (chat models) or a first line (the seed prompt)
    that phrases the task differently (:data:`PROMPT_BANK`).

    User-supplied text cannot carry the tokenizer's special tokens (``<|im_end|>`` and the like):
    they are removed first, so a question cannot forge chat roles or end the prompt early.
    """
    if tokenizer is None:
        messages = chat_messages(question, context, history, system) if use_chat_template else None
        return Prompt([], messages, _with_system(seed_prompt(question, context, history), system))
    specials = sorted({t for t in [*getattr(tokenizer, "all_special_tokens", []),
                                   *(tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special)]
                       if t}, key=len, reverse=True)
    question, context = strip_special_tokens(question, specials), strip_special_tokens(context, specials)
    history = [(strip_special_tokens(q, specials), strip_special_tokens(a, specials)) for q, a in history]
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = chat_messages(question, context, history, system)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return Prompt(tokenizer(text, add_special_tokens=False)["input_ids"], messages, text)
    text = _with_system(seed_prompt(question, context, history), system)
    return Prompt(tokenizer(text)["input_ids"], None, text)


def _with_system(text: str, system: str | None) -> str:
    return f"{system}\n\n{text}" if system else text


def bank_indices(text: str) -> tuple[int, ...]:
    """``llm_irp.sampled_prompts`` ("2", "0,1,2") as indices into :data:`PROMPT_BANK`; ValueError if bad."""
    try:
        indices = tuple(int(part) for part in str(text).replace(" ", "").split(",") if part != "")
    except ValueError:
        raise ValueError(f"sampled_prompts must be comma-separated integers, not {text!r}") from None
    if not indices or any(not 0 <= i < len(PROMPT_BANK) for i in indices):
        raise ValueError(f"sampled_prompts {text!r}: each index must be 0..{len(PROMPT_BANK) - 1}")
    return indices


def build_prompt_ids(tokenizer, question: str, context: str = "", history: History = (),
                     use_chat_template: bool = True) -> list[int]:
    """Token ids of the full prompt (:func:`render_prompt`'s ``ids``)."""
    return render_prompt(tokenizer, question, context, history, use_chat_template).ids


def strip_special_tokens(text: str, specials: Sequence[str]) -> str:
    for token in specials:
        text = text.replace(token, "")
    return text


def clean_answer(text: str) -> str:
    """The answer part of a generated text: after the last ``Answer:``, before an echoed next question."""
    if "Answer:" in text:
        text = text.rsplit("Answer:", 1)[1]
    text = text.split("\nQuestion:", 1)[0]
    return text.replace("\x00", "").strip()  # a NUL would cut the answer short on a ROS string topic
