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

"""Adaptive IRP offline: the stopping rules of sage_irp_ros/irp/stopping.py replayed on a stored dump.

    python -m bench.quality.adaptive [--dump variants|edge|short] [--out bench/results/adaptive] [--update-docs]

No generation: every candidate's tokens and log-probs are in the dump. Each question is replayed step by
step through the very rule objects the engine calls: a row dropped at step k is not a candidate; when a
rule ends the question, the rows still running are cut at that step (their first k tokens, decoded with
the model's tokenizer and scored again) and the package's default selection rule picks among what
exists. The sequential form decodes the greedy row alone first and the sampled rows only when its gate
does not end the question. Per rule: accuracy on both halves (paired bootstrap 95 % intervals against
the greedy row alone and against today's default, all rows to the end), decode steps (latency proxy:
the steps until the question's last row leaves), row-steps (compute), an estimated CPU time (each step
weighted by its live rows, from the stored per-step costs) and which rule ended each question.

Thresholds are chosen on the TUNING half only: the cheapest setting (fewest decode steps for the
parallel form, fewest row-steps for the sequential one) whose tune accuracy is at least the default's;
held-out only reports. Writes ``adaptive.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from pathlib import Path

from bench.quality.evaluate import bootstrap_diff, mean
from bench.quality.question_set import is_correct, load_questions
from bench.record import RESULTS, add_update_docs_flag, run_info, update_docs, write_result
from sage_irp_ros.decoding.generator import Candidate
from sage_irp_ros.irp.prompts import clean_answer
from sage_irp_ros.irp.selection import Consensus, best_index
from sage_irp_ros.irp.stopping import (AgreementStop, ConfidencePrune, ConfidentGreedy, LengthCap, QuestionState,
                                       RowState, Sequential, StoppingRule, StoppingRules)

NAME, SECTION = "adaptive", "adaptive"
DUMPS = {"variants": "prompt_variants/quality_dump_variants_edge.json.gz", "edge": "quality_dump_edge.json.gz",
         "short": "quality_dump_short.json.gz"}
DEFAULT_ASSIGNMENT = 2  # llm_irp.sampled_prompts: "2", every sampled row under the bank's phrasing 2
# One decode step on this CPU by live rows, ms (bench/results/dense_copy/llama_cpp.json, int4 + bf16 copy, the
# default, 1 thread): one row 26.9, six rows 56.2; rows in between on the line through them.
STEP_MS_1, STEP_MS_6 = 26.9, 56.2
HALVES = ("tune", "heldout")


def step_cost(rows: int) -> float:
    """A decode step with ``rows`` live rows, in units of a one-row step."""
    return (STEP_MS_1 + (STEP_MS_6 - STEP_MS_1) * (max(rows, 1) - 1) / 5) / STEP_MS_1


def load_tokenizer():
    """The embedded model's tokenizer (the dumps' token ids), from the package's conversion cache."""
    from tokenizers import Tokenizer

    from sage_irp_ros.weights.embedded_model import converted_gguf, embedded_gguf

    return Tokenizer.from_file(str(converted_gguf(embedded_gguf()) / "tokenizer.json"))


def trials_of(dump: dict) -> list[dict]:
    """(question, half, kind, rows) per trial, rows in the engine's order: sampled rows, then the greedy row."""
    out = []
    for t in dump["trials"]:
        if "variants" in t:
            rows = [*t["variants"][DEFAULT_ASSIGNMENT][:len(dump["temperatures"])], t["variants"][0][-1]]
        else:
            rows = sorted(t["candidates"], key=lambda c: c["t"] == 0)
        out.append({"q": t["q"], "half": t["half"], "kind": t["kind"], "seed": t.get("seed", 0), "rows": rows})
    return out


class Replay:
    """Replays trials under a rule set; cut rows' texts are decoded once and cached."""

    def __init__(self, trials: list[dict], keywords: dict[str, list[str]], tokenizer, t0: float):
        self.trials, self.keywords, self.tokenizer, self.t0 = trials, keywords, tokenizer, t0
        self.selection = Consensus()
        self._cut: dict[tuple[int, int, int], tuple[str, bool]] = {}

    def cut_text(self, n: int, r: int, k: int) -> tuple[str, bool]:
        key = (n, r, k)
        if key not in self._cut:
            row, trial = self.trials[n]["rows"][r], self.trials[n]
            text = clean_answer(self.tokenizer.decode(row["ids"][:k], skip_special_tokens=True))
            self._cut[key] = (text, is_correct(text, self.keywords[trial["q"]]))
        return self._cut[key]

    def run(self, n: int, rules: list[StoppingRule], sequential: Sequential | None,
            keep_cut: bool = False) -> dict:
        """One trial: {correct, steps, row_steps, cpu, ends, dropped}."""
        rows = self.trials[n]["rows"]
        state = QuestionState([RowState(r["t"]) for r in rows], 0, max(len(r["lp"]) for r in rows))
        g = next(i for i, r in enumerate(rows) if r["t"] == 0)
        check, ends, steps, cpu = StoppingRules(rules, keep_cut), None, 0, 0.0
        phases = [[g], [i for i in range(len(rows)) if i != g]] if sequential else [list(range(len(rows)))]
        for phase, members in enumerate(phases):
            if phase == 1 and not sequential.sampled_rows_needed(state.rows[g]):
                ends = "sequential:" + sequential.gate.name
                break
            k = 0
            while any(state.rows[i].running for i in members):
                k += 1
                live = [i for i in members if state.rows[i].running]
                for i in live:
                    row, data = state.rows[i], rows[i]
                    at = row.steps
                    row.push(data["lp"][at], data["ids"][at] if at < len(data["ids"]) else None)
                    if row.steps == len(data["lp"]):  # it ended here: finished, or at max_tokens
                        row.text = data["text"]
                        row.finished, row.cut = bool(data["finished"]), not data["finished"]
                cpu += step_cost(len(live))
                state.step = k
                decision = check.check(state)
                if decision.ends:
                    ends = decision.ends
                    break
            steps += k
            if ends:
                break
        return self._pick(n, state, rows, steps, cpu, ends)

    def _pick(self, n: int, state: QuestionState, rows: list[dict], steps: int, cpu: float, ends) -> dict:
        cands, ok = [], []
        for r, (row, data) in enumerate(zip(state.rows, rows)):
            if row.dropped is not None or row.steps == 0:
                continue
            if row.steps >= len(data["lp"]):
                text, right = data["text"], bool(data["correct"])
                ids, lp = data["ids"], data["lp"]
            else:
                text, right = self.cut_text(n, r, row.steps)
                ids, lp = data["ids"][:row.steps], data["lp"][:row.steps]
            cands.append(Candidate(text, data["t"], ids, lp, row.finished and row.steps >= len(data["lp"])))
            ok.append(right)
        best = best_index(self.selection.energies(cands, [], self.t0))
        dropped: dict[str, int] = {}
        for row in state.rows:
            if row.dropped:
                dropped[row.dropped] = dropped.get(row.dropped, 0) + 1
        return {"correct": float(ok[best]), "steps": steps, "row_steps": sum(r.steps for r in state.rows),
                "cpu": cpu, "ends": ends, "dropped": dropped}


# -- the rules compared: each family's grid, chosen on the tuning half ------------------------------------
def grid() -> dict[str, list[tuple[str, list[StoppingRule], Sequential | None]]]:
    """Per family: (label, rules, sequential gate or None) for every setting tried."""
    inf = float("inf")
    families: dict[str, list] = {"default": [("all rows to the end", [], None)]}
    families["confident greedy (mean NLL)"] = [
        (f"greedy NLL <= {x}", [ConfidentGreedy(max_nll=x)], None) for x in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)]
    families["confident greedy (calibrated)"] = [
        (f"greedy confidence >= {c}", [ConfidentGreedy(max_nll=inf, min_confidence=c)], None)
        for c in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    families["past the greedy row's length"] = [
        (f"cap {f} x greedy + {s}", [LengthCap(factor=f, slack=s)], None)
        for f, s in itertools.product((1.0, 1.5, 2.0, 3.0), (0, 8, 16))]
    families["low running confidence (DeepConf-like)"] = [
        (f"window {w}, margin {m}", [ConfidencePrune(margin=m, window=w)], None)
        for w, m in itertools.product((8, 32), (0.5, 1.0, 1.5, 2.0))]
    families["finished rows agree (ESC-like)"] = [
        (f"{n} finished, F1 >= {a}{', majority' if maj else ''}",
         [AgreementStop(min_finished=n, min_agreement=a, majority=maj)], None)
        for n, a, maj in itertools.product((2, 3), (0.5, 0.7, 0.9), (False, True)) if not (n == 3 and maj)]
    families["sequential (greedy first)"] = [
        *((f"gate NLL <= {x}", [], Sequential(ConfidentGreedy(max_nll=x))) for x in (0.4, 0.5, 0.6, 0.7, 0.8, 1.0)),
        *((f"gate confidence >= {c}", [], Sequential(ConfidentGreedy(max_nll=inf, min_confidence=c)))
          for c in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))]
    return families


SEQUENTIAL_FAMILIES = ("sequential (greedy first)",)


def evaluate(replay: Replay, rules: list[StoppingRule], sequential: Sequential | None,
             keep_cut: bool = False) -> list[dict]:
    """Every trial replayed (the rules hold no per-question state: one object serves every question)."""
    return [{**replay.run(n, rules, sequential, keep_cut), "q": t["q"], "half": t["half"]}
            for n, t in enumerate(replay.trials)]


def greedy_alone(replay: Replay) -> list[dict]:
    """The greedy row alone, to its end: the baseline of every ratio."""
    out = []
    for t in replay.trials:
        g = next(r for r in t["rows"] if r["t"] == 0)
        out.append({"correct": float(g["correct"]), "steps": len(g["lp"]), "row_steps": len(g["lp"]),
                    "cpu": float(len(g["lp"])), "ends": "greedy row alone", "dropped": {}, "q": t["q"],
                    "half": t["half"]})
    return out


def per_q(results: list[dict], half: str, key: str = "correct") -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in results:
        if r["half"] == half:
            acc.setdefault(r["q"], []).append(float(r[key]))
    return {q: sum(v) / len(v) for q, v in acc.items()}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def summary(results: list[dict], greedy: list[dict], default: list[dict]) -> dict:
    row: dict = {}
    for half in HALVES:
        mine = per_q(results, half)
        g_steps = mean(per_q(greedy, half, "steps"))
        ends: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for r in results:
            if r["half"] == half:
                ends[r["ends"] or "rows ran to the end"] = ends.get(r["ends"] or "rows ran to the end", 0) + 1
                for k, v in r["dropped"].items():
                    dropped[k] = dropped.get(k, 0) + v
        steps = [float(r["steps"]) for r in results if r["half"] == half]
        row[half] = {
            "accuracy": round(100 * mean(mine), 2),
            "vs_greedy": [round(100 * x, 2) for x in bootstrap_diff(mine, per_q(greedy, half))],
            "vs_default": [round(100 * x, 2) for x in bootstrap_diff(mine, per_q(default, half))],
            "steps": round(mean(per_q(results, half, "steps")), 1),
            "steps_x_greedy": round(mean(per_q(results, half, "steps")) / g_steps, 2),
            "steps_p95": p95(steps),
            "row_steps": round(mean(per_q(results, half, "row_steps")), 1),
            "row_steps_x_greedy": round(mean(per_q(results, half, "row_steps")) / g_steps, 2),
            "cpu_x_greedy": round(mean(per_q(results, half, "cpu")) / mean(per_q(greedy, half, "cpu")), 2),
            "ends": ends, "rows_dropped": dropped, "questions": len(mine)}
    return row


def choose(rows: dict[str, dict], bar: float, cost: str) -> str:
    """The cheapest setting (by ``cost`` on tune) whose tune accuracy is >= ``bar`` (else the most accurate);
    settings within 2 % of the cheapest count as ties, won by the fewest rules, then the cost."""
    ok = [k for k, r in rows.items() if r["tune"]["accuracy"] >= bar - 1e-9]
    if not ok:
        return max(rows, key=lambda k: (rows[k]["tune"]["accuracy"], -rows[k]["tune"][cost]))
    cheapest = min(rows[k]["tune"][cost] for k in ok)
    near = [k for k in ok if rows[k]["tune"][cost] <= 1.02 * cheapest]
    return min(near, key=lambda k: (k.count(" + ") + k.count("; "), rows[k]["tune"][cost],
                                    -rows[k]["tune"]["accuracy"]))


def combos(chosen: dict[str, tuple], families: list[str],
           sequential: bool) -> list[tuple[str, list, Sequential | None]]:
    """Every combination of two or more families' chosen settings (with the chosen gate when sequential)."""
    out = []
    for size in range(1 if sequential else 2, len(families) + 1):
        for group in itertools.combinations(families, size):
            label = " + ".join(chosen[f][0] for f in group)
            rules = [rule for f in group for rule in chosen[f][1]]
            if sequential:
                gate = chosen[SEQUENTIAL_FAMILIES[0]]
                out.append((f"{gate[0]}; {label}", rules, gate[2]))
            else:
                out.append((label, rules, None))
    return out


def run(dump: dict, log=print) -> dict:
    keywords = {q["q"]: q["a"] for q in load_questions("both")}
    replay = Replay(trials_of(dump), keywords, load_tokenizer(), dump["temperatures"][0])
    greedy = greedy_alone(replay)
    default = evaluate(replay, [], None)
    out: dict = {"greedy": summary(greedy, greedy, default), "default": summary(default, greedy, default),
                 "families": {}, "chosen": {}}
    bar = out["default"]["tune"]["accuracy"]
    specs: dict[str, tuple] = {}
    chosen: dict[str, tuple] = {}
    for family, settings in grid().items():
        if family == "default":
            continue
        rows = {}
        for label, rules, seq in settings:
            rows[label] = summary(evaluate(replay, rules, seq), greedy, default)
            specs[label] = (label, rules, seq)
        pick = choose(rows, bar, "row_steps" if family in SEQUENTIAL_FAMILIES else "steps")
        out["families"][family] = {"settings": rows, "chosen_on_tune": pick}
        chosen[family] = specs[pick]
        log(f"{family}: {pick} (tune {rows[pick]['tune']['accuracy']} %)")
    parallel = [f for f in out["families"] if f not in SEQUENTIAL_FAMILIES]
    together = {}
    for label, rules, seq in [*combos(chosen, parallel, False),
                              *combos(chosen, [f for f in parallel if "confident greedy" not in f], True)]:
        together[label] = summary(evaluate(replay, rules, seq), greedy, default)
    everything = {**together, **{s["chosen_on_tune"]: s["settings"][s["chosen_on_tune"]]
                                 for s in out["families"].values()}}
    out["combinations"] = together
    out["chosen"] = {"latency (extra rows nearly free: a GPU)": choose(everything, bar, "steps"),
                     "CPU time (a 6-row step = 2.1 one-row steps)": choose(everything, bar, "cpu_x_greedy"),
                     "compute (row-steps)": choose(everything, bar, "row_steps")}
    out["chosen_rows"] = {k: everything[v] for k, v in out["chosen"].items()}
    # The other way to end a question: the rows still running stay as candidates, cut at that step.
    out["cut_rows_as_candidates"] = {
        chosen[f][0]: {"left out": out["families"][f]["settings"][chosen[f][0]]["tune"]["accuracy"],
                       "kept, cut": summary(evaluate(replay, chosen[f][1], None, True), greedy,
                                            default)["tune"]["accuracy"]}
        for f in ("confident greedy (mean NLL)", "confident greedy (calibrated)", "finished rows agree (ESC-like)")}
    out["default_tune_accuracy"] = bar
    return out


def _ci(d: list[float]) -> str:
    return f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]"


def table(result: dict, dump: dict, name: str) -> str:
    lines = [f"Dump `{DUMPS[name]}` ({len(dump['temperatures'])} sampled rows + the greedy row, "
             f"{dump['max_tokens']} tokens, weights {dump.get('weights', 'fp32')}); thresholds chosen on the tuning"
             f" half (the cheapest setting with tune accuracy >= the default's "
             f"{result['default_tune_accuracy']:.1f} %); "
             "held-out reported once. Steps: decode steps until the question's last row leaves (latency); "
             "row-steps: compute; CPU time: steps weighted by live rows (a 6-row step = 2.1 one-row steps).", "",
             "| rule (setting chosen on tune) | tune | held-out | vs greedy | vs default | steps (x greedy) | "
             "p95 steps | row-steps (x greedy) | CPU time x greedy | what ended the held-out questions |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def line(label: str, row: dict) -> str:
        t, h = row["tune"], row["heldout"]
        ends = ", ".join(f"{k} {v}" for k, v in sorted(h["ends"].items(), key=lambda kv: -kv[1]))
        drops = ", ".join(f"{k} {v}" for k, v in h["rows_dropped"].items())
        return (f"| {label} | {t['accuracy']:.1f} | {h['accuracy']:.1f} | {_ci(h['vs_greedy'])} | "
                f"{_ci(h['vs_default'])} | {h['steps']:.1f} ({h['steps_x_greedy']:.2f}x) | {h['steps_p95']:.0f} | "
                f"{h['row_steps']:.1f} ({h['row_steps_x_greedy']:.2f}x) | {h['cpu_x_greedy']:.2f}x | {ends}"
                + (f"; rows dropped: {drops}" if drops else "") + " |")
    lines.append(line("greedy row alone", result["greedy"]))
    lines.append(line("default today (all rows to the end)", result["default"]))
    for family, f in result["families"].items():
        lines.append(line(f"{family}: {f['chosen_on_tune']}", f["settings"][f["chosen_on_tune"]]))
    for schedule, label in result["chosen"].items():
        lines.append(line(f"**chosen for {schedule}: {label}**", result["chosen_rows"][schedule]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", choices=tuple(DUMPS), default="variants",
                        help="variants: today's default (sampled rows under phrasing 2, int4); edge / short: "
                             "the one-prompt fp32 dumps")
    parser.add_argument("--out", default=str(RESULTS / "adaptive"))
    add_update_docs_flag(parser, SECTION)
    args = parser.parse_args(argv)
    with gzip.open(RESULTS / DUMPS[args.dump], "rt", encoding="utf-8") as f:
        dump = json.load(f)
    result = run(dump)
    text = table(result, dump, args.dump)
    print(text)
    name = NAME if args.dump == "variants" else f"{NAME}_{args.dump}"
    write_result(name, {"run": run_info(argv, f"bench.quality.{NAME}"), "dump": DUMPS[args.dump],
                        "step_ms": {"1 row": STEP_MS_1, "6 rows": STEP_MS_6}, **result}, Path(args.out))
    if args.update_docs and not update_docs(SECTION, text):
        print(f"docs/performance.md has no '{SECTION}' markers: not updated")


if __name__ == "__main__":
    main()
