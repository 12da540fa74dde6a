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

"""Tool calls: does the package's call (names scored, arguments under the grammar) beat asking for JSON?

``bench/quality/tool_calls.json`` holds robot skill-selection tasks written for this package: one skill
library (navigate_to, pick, place, say, set_speed_limit, dock, stop; OpenAI function format) and requests
with the expected call ("Go to the kitchen." -> ``navigate_to {"place": "kitchen"}``), some with
``tool_choice: auto`` where no tool fits (expected ``none``). Halves by the fixed hash of the request
(:func:`bench.quality.question_set.half_of`); nothing is tuned on them. Per task:

- ``package``: what the node answers (``SageCore.answer`` with ``tools``, at the defaults); the call is
  the result's ``answer`` (the call's compact JSON) and its ``confidence``;
- ``greedy``: the greedy row without any constraint, after the same tool list with each tool's schema
  and ``Answer with JSON only: {"name": <tool>, "arguments": {...}}`` (``{"name": "none"}`` allowed with
  auto); its first ``{...}`` is parsed.

Reported for each: ``valid`` (one call with a name among the tools and arguments valid under its
schema, or ``none`` where auto allows it), ``right_tool``, ``right_call`` (right tool and every expected
argument right: numbers to 1e-6, enums exactly, free strings when the expected words are among the
answer's, lower-cased, ``the`` dropped) and, for the package, the confidence split: the right-tool rate of
the most confident half against all (``confidence_right_tool``, with AUROC).

    python -m bench.quality.tool_calls --half tune [--out bench/results]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.quality.metrics import bootstrap_ci, confidence_report
from bench.quality.question_set import half_of
from bench.quality.extraction import first_object
from bench.record import main_by_half

NAME = "tool_calls"
TASKS = Path(__file__).resolve().parent / "tool_calls.json"
MAX_TOKENS = 64
_WORDS = re.compile(r"[a-z0-9.]+")


def load_tasks(half: str = "both", path: Path = TASKS) -> tuple[list[dict], list[dict]]:
    """(the skill library, the tasks of ``half`` with their ``half`` added)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    tasks = [{**t, "half": half_of(t["q"])} for t in data["tasks"]]
    return data["tools"], [t for t in tasks if half in ("both", t["half"])]


def _words(value: str) -> list[str]:
    return [w for w in _WORDS.findall(value.lower()) if w != "the"]


def argument_right(got, want) -> bool:
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) < 1e-6
    if isinstance(want, str) and isinstance(got, str):
        return set(_words(want)) <= set(_words(got)) and bool(_words(got))
    return got == want


def score(call, expected: dict, schemas: dict, auto: bool) -> dict:
    """valid / right_tool / right_call of one answer (``call`` a dict, ``"none"`` or None: no call), and
    right_name: it parsed and names the expected tool, whether or not its arguments are valid."""
    import jsonschema

    if call == "none":
        valid = auto
        name, arguments = "none", {}
    elif isinstance(call, dict) and call.get("name") in schemas and isinstance(call.get("arguments", {}), dict):
        name, arguments = call["name"], call.get("arguments", {})
        try:
            jsonschema.validate(arguments, schemas[name])
            valid = True
        except jsonschema.ValidationError:
            valid = False
    else:
        named = isinstance(call, dict) and call.get("name") == expected["name"]
        return {"valid": False, "right_tool": False, "right_call": False, "right_name": named}
    right_tool = valid and name == expected["name"]
    right_call = right_tool and all(argument_right(arguments.get(k), v) for k, v in expected["arguments"].items())
    return {"valid": valid, "right_tool": right_tool, "right_call": right_call, "right_name": name == expected["name"]}


def baseline_prompt(question: str, tools: list[dict], auto: bool) -> str:
    lines = [f"- {t['function']['name']}: {t['function']['description']} Arguments (JSON Schema): "
             f"{json.dumps(t['function']['parameters'])}" for t in tools]
    none = ' If no tool fits, answer {"name": "none"}.' if auto else ""
    return ("Tools:\n" + "\n".join(lines) + f"\nRequest: {question}\nChoose the tool to call. Answer with JSON only: "
            '{"name": <tool name>, "arguments": {...}}.' + none)


def _package_call(result):
    """The call of an ok result: its ``tool_call``, else the call's JSON its ``answer`` carries; ``"none"`` for
    an answer in text."""
    if not result.ok:
        return None
    call = result.tool_call
    if call is None:
        parsed = first_object(result.answer) if result.answer.startswith("{") else None
        call = parsed if isinstance(parsed, dict) and "arguments" in parsed else None
    return call if call is not None else "none"


def run(half: str, threads: int = 1, log=print) -> dict:
    import torch

    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.decoding.generator import GenerationRequest
    from sage_irp_ros.irp.prompts import build_prompt_ids
    from sage_irp_ros.questions import parse_question
    from sage_irp_ros.serving.core import SageCore

    torch.set_num_threads(threads)
    tools, tasks = load_tasks(half)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    cfg = SageConfig.from_mapping({"model": {"device": "cpu"}, "memory": {"db_path": "none"},
                                   "llm_irp": {"max_tokens": MAX_TOKENS, "seed": 1234}})
    core = SageCore(cfg)
    core.load()
    rows = []
    for n, task in enumerate(tasks, start=1):
        auto = task["tool_choice"] == "auto"
        message = {"question": task["q"], "tools": tools, "tool_choice": task["tool_choice"]}
        result = core.answer(parse_question(json.dumps(message), 20000))
        call = _package_call(result)
        torch.manual_seed(1234)
        prompt = build_prompt_ids(core.lm.tokenizer, baseline_prompt(task["q"], tools, auto))
        greedy = core.engine.generator.generate(GenerationRequest(prompt, [0.0], MAX_TOKENS)).candidates[0]
        parsed = first_object(greedy.text)
        greedy_call = "none" if isinstance(parsed, dict) and parsed.get("name") == "none" else parsed
        rows.append({"q": task["q"], "tool_choice": task["tool_choice"], "expected": task["expected"],
                     "ok": result.ok, "error": result.error_code, "call": call,
                     "probabilities": result.probabilities, "confidence": result.confidence or 0.0,
                     "package": score(call, task["expected"], schemas, auto), "greedy_text": greedy.text,
                     "greedy": score(greedy_call, task["expected"], schemas, auto),
                     "total_s": result.timing.total_s})
        if n % 10 == 0:
            log(f"{n} tasks")
    core.release()

    def rate(method: str, key: str) -> list[float]:
        return bootstrap_ci([float(r[method][key]) for r in rows])

    right = [r["package"]["right_tool"] for r in rows]
    return {"half": half, "tasks": len(rows), "max_tokens": MAX_TOKENS,
            **{key: {"package": rate("package", key), "greedy": rate("greedy", key)}
               for key in ("valid", "right_tool", "right_call")},
            "greedy_right_and_parseable": rate("greedy", "right_name"),
            "right_tool_minus_greedy_right_and_parseable_points": bootstrap_ci(
                [float(r["package"]["right_tool"]) - float(r["greedy"]["right_name"]) for r in rows]),
            "confidence_right_tool": confidence_report([r["confidence"] for r in rows], right),
            "confidence_right_call": confidence_report([r["confidence"] for r in rows],
                                                       [r["package"]["right_call"] for r in rows]),
            "mean_total_s": round(sum(r["total_s"] for r in rows) / max(1, len(rows)), 3),
            "rows": rows}


def main(argv: list[str] | None = None) -> None:
    main_by_half(NAME, __doc__, run, argv)


if __name__ == "__main__":
    main()
