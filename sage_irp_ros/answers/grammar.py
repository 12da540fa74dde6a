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

"""Grammar-constrained decoding of JSON answers: a schema compiled once, one matcher per row.

The grammar library is llguidance (Microsoft's, Rust, no Python dependencies; wheels for Linux x86-64
and aarch64, so Jetson too; it reads Hugging Face fast tokenizers): chosen over xgrammar
(needs torch and tvm-ffi), outlines-core (builds an index per schema up front) and lm-format-enforcer
(pure Python, per-token cost in milliseconds) for its per-token cost, a bitmask in microseconds
(docs/performance.md, "JSON answers"). It is optional: a json_schema question without it installed gets
``invalid_input`` saying so.

:class:`JsonConstraint` is a :class:`~sage_irp_ros.decoding.generator.TokenConstraint`: the decode loop calls
``mask(generated, logits_row)`` for each unfinished row before sampling (outside any compiled step); the
matcher consumes the row's newest token and masks every token the grammar forbids. A row whose grammar
is complete may only end; a row whose grammar allows no token is ended by the decode loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

import torch

from sage_irp_ros.errors import INVALID_INPUT, SageError

_TOKENIZERS: dict[int, Any] = {}
_COMPILED: "OrderedDict[tuple[int, int, str], JsonGrammar]" = OrderedDict()
CACHED_GRAMMARS = 32


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def _ll_tokenizer(tokenizer, vocab: int):
    """llguidance's view of the HF tokenizer, built once per tokenizer (it walks the whole vocabulary)."""
    key = id(tokenizer)
    if key not in _TOKENIZERS:
        import llguidance.hf

        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    return _TOKENIZERS[key]


_LOCK = threading.Lock()


def compiled(schema: dict, tokenizer, vocab: int) -> "JsonGrammar":
    """The schema's grammar for this tokenizer, compiled once and kept among the last 32 used (a robot
    asks the same few schemas again and again; llguidance's lexer then starts warm)."""
    key = (id(tokenizer), vocab, json.dumps(schema, sort_keys=True))
    with _LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
    grammar = JsonGrammar(schema, tokenizer, vocab)
    with _LOCK:
        _COMPILED[key] = grammar
        while len(_COMPILED) > CACHED_GRAMMARS:
            _COMPILED.popitem(last=False)
    return grammar


class JsonGrammar:
    """A schema compiled for one tokenizer; :meth:`constraint` gives a fresh matcher per row."""

    def __init__(self, schema: dict, tokenizer, vocab: int):
        if not available():
            raise SageError(INVALID_INPUT, "field 'json_schema' needs the grammar library llguidance "
                                           "(pip install llguidance), which is not installed")
        import llguidance

        self.vocab = vocab
        self.tokenizer = _ll_tokenizer(tokenizer, vocab)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            closed(schema), defaults={"whitespace_flexible": False})
        ok, _, error = _validate(self.tokenizer, self.grammar)
        if not ok:
            raise SageError(INVALID_INPUT, f"field 'json_schema' cannot be compiled to a grammar: {error[:200]}")
        self.mask_s = 0.0  # time spent in masks, all rows (for the overhead measurement)
        self.masks = 0

    def constraint(self) -> "JsonConstraint":
        return JsonConstraint(self)


def closed(schema: dict) -> dict:
    """The schema with ``additionalProperties: false`` on every object: the grammar lets a row write only the
    properties the caller named (JSON Schema's default would let it invent more)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: closed(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = closed(out["items"])
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _validate(tokenizer, grammar: str) -> tuple[bool, list[str], str]:
    import llguidance

    try:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    except Exception as exc:  # a schema the compiler rejects outright
        return False, [], str(exc)
    return not is_error, list(messages), "; ".join(messages) if is_error else ""


class JsonConstraint:
    """One row's matcher: ``mask`` consumes the row's newest token and forbids what the grammar does."""

    def __init__(self, grammar: JsonGrammar):
        import llguidance
        import llguidance.torch

        self.grammar = grammar
        self.matcher = llguidance.LLMatcher(grammar.tokenizer, grammar.grammar)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, grammar.tokenizer.vocab_size)
        self.consumed = 0

    def mask(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        import llguidance.torch

        start = time.perf_counter()
        for token in generated[self.consumed:]:
            self.matcher.consume_token(int(token))
        self.consumed = len(generated)
        if self.matcher.is_error():
            out = torch.full_like(logits, float("-inf"))  # a dead end: the decode loop ends the row
        else:
            llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
            row = logits.float().cpu()[None]  # the decode loop hands a copy: masking in place is fine
            llguidance.torch.apply_token_bitmask_inplace(row, self.bitmask)
            out = row[0].to(device=logits.device, dtype=logits.dtype)
        self.grammar.mask_s += time.perf_counter() - start
        self.grammar.masks += 1
        return out
