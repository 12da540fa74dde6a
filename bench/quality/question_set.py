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

"""The answer-quality question set: loading, the fixed tuning / held-out split, and scoring.

``bench/quality/questions.json`` holds short questions written for this package, each with a ``kind``
(fact, arithmetic, units, science, robot, instruction) and its accepted keywords ``a``.

Split. Each question goes to the ``tune`` or the ``heldout`` half by a fixed hash of its text
(SHA-256 of the stripped question with a fixed salt): the split never changes when questions are added,
reordered or edited elsewhere, and needs no stored list. Selection rules and their weights are chosen
on ``tune`` only; ``heldout`` only confirms them, and every report gives both halves.

Scoring rules. An answer is correct when at least one accepted keyword occurs in it:
  - case-insensitive; digits separated by thousands commas are joined first ("1,000" -> "1000") and
    subscript digits read as digits ("H₂O" -> "h2o");
  - a keyword matches whole words only: it may not be preceded or followed by a letter or digit, and a
    number may not be followed by a decimal part ("4" matches "is 4." but not "14", "40" or "4.5");
  - a keyword ending in ``*`` is a prefix: "charg*" matches "charge", "charging", "charger";
  - nothing else: no partial credit, the answer may say more (a keyword anywhere counts), and wrong
    extra content is not detected. The keyword lists are generous so that any correct phrasing the
    model uses is counted, while the questions avoid yes/no answers that any text would contain.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

QUESTIONS = Path(__file__).resolve().parent / "questions.json"
HALVES = ("tune", "heldout")
KINDS = ("fact", "arithmetic", "units", "science", "robot", "instruction")
_SALT = "sage_irp_ros answer-quality split v1"
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def half_of(question: str) -> str:
    """``tune`` or ``heldout``: a fixed hash of the question text, never its position in the file."""
    digest = hashlib.sha256(f"{_SALT}\n{question.strip()}".encode("utf-8")).digest()
    return HALVES[digest[0] & 1]


def load_questions(half: str = "both", path: Path = QUESTIONS) -> list[dict]:
    """Questions of one half (``tune``, ``heldout``) or ``both``, each with its ``half`` added."""
    if half not in (*HALVES, "both"):
        raise ValueError(f"half must be one of tune, heldout, both; got {half!r}")
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for item in items:
        item = {**item, "half": half_of(item["q"])}
        if half in ("both", item["half"]):
            out.append(item)
    return out


def normalise(text: str) -> str:
    """Lower case, subscript digits as digits, thousands commas removed."""
    return _THOUSANDS.sub("", text.translate(_SUBSCRIPTS).lower())


@lru_cache(maxsize=4096)
def _pattern(keyword: str) -> re.Pattern:
    prefix = keyword.endswith("*")
    body = re.escape(normalise(keyword.rstrip("*")))
    right = "" if prefix else (r"(?![a-z0-9])(?![.,]\d)" if keyword.rstrip("*")[-1:].isdigit() else r"(?![a-z0-9])")
    return re.compile(rf"(?<![a-z0-9]){body}{right}")


def is_correct(text: str, keywords: Iterable[str]) -> bool:
    """True when ``text`` contains one of the accepted keywords (rules in the module docstring)."""
    low = normalise(text)
    return any(_pattern(k).search(low) for k in keywords)
