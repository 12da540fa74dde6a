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

"""Offline evaluation of selection rules on a generation dump (see bench/quality/run_quality.py).

Every rule sees the same candidates. Pools: ``sampled`` (the schedule's rows only) and ``+greedy``
(the same rows plus the T = 0 row, as ``llm_irp.greedy_candidate`` makes the engine do). Accuracy is
the share of (question, seed) trials whose pick is correct; confidence intervals are paired bootstrap
95 % intervals over questions (seeds of a question averaged first, 2000 resamples, fixed RNG seed).

Weights of the combined rule are searched on the ``tune`` half only (both settings together); the
``heldout`` half is evaluated once, with the weights found there and with the package's default.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter, defaultdict
from typing import Callable, Sequence

from bench.quality.question_set import KINDS
from sage_irp_ros.irp.energy import ResponseEnergy, repetition, seed_energy
from sage_irp_ros.decoding.generator import Candidate
from sage_irp_ros.irp.selection import Consensus, agreement, best_index, mean_nll, overlap_f1

Rule = Callable[[Sequence[Candidate], float], list[float]]  # energies, lower is better
BOOTSTRAP = 2000


def candidates_of(trial: dict, pool: str) -> tuple[list[Candidate], list[bool]]:
    rows = [c for c in trial["candidates"] if pool == "+greedy" or c["t"] > 0]
    cands = [Candidate(c["text"], c["t"], c["ids"], c["lp"], c["finished"]) for c in rows]
    for cand, row in zip(cands, rows):
        if "ulp" in row:  # log-probs after a neutral prompt (bench/quality/pmi.py)
            cand.neutral_logprobs = row["ulp"]
    return cands, [c["correct"] for c in rows]


def _pmi_energy(weight: float) -> Rule:
    """Mean NLL given the question minus ``weight`` x mean NLL given a neutral prompt (lower is better)."""
    def rule(cs: Sequence[Candidate], t0: float) -> list[float]:
        out = []
        for c in cs:
            ulp = getattr(c, "neutral_logprobs", None)
            if ulp is None:
                raise KeyError("no neutral log-probs in this dump: run bench.quality.pmi first")
            out.append(_nll(c) - weight * (-sum(ulp) / len(ulp)) if ulp and c.text.split() else 99.0)
        return out
    return rule


def token_agreement(cands: Sequence[Candidate]) -> list[float]:
    bags = [Counter(c.token_ids) for c in cands]
    n = len(bags)
    if n < 2:
        return [0.0] * n
    return [sum(overlap_f1(bags[i], bags[j]) for j in range(n) if j != i) / (n - 1) for i in range(n)]


def _nll(c: Candidate) -> float:
    v = mean_nll(c)
    return v if math.isfinite(v) and c.text.split() else 99.0


RULES: dict[str, Rule] = {
    "lowest mean NLL": lambda cs, t0: [_nll(c) for c in cs],
    "lowest total NLL (not length-normalised)": lambda cs, t0: [
        -sum(c.token_logprobs) if c.token_logprobs else 1e9 for c in cs],
    "highest minimum token log-prob": lambda cs, t0: [
        -min(c.token_logprobs) if c.token_logprobs else 1e9 for c in cs],
    "finished first, then mean NLL": lambda cs, t0: [(0 if c.finished else 100) + _nll(c) for c in cs],
    "least repetition, then mean NLL": lambda cs, t0: [
        100 * repetition(c.token_ids) + _nll(c) for c in cs],
    "seed energy (research)": lambda cs, t0: [seed_energy(c, t0) for c in cs],
    "response energy (previous default)": lambda cs, t0: [ResponseEnergy()(c, t0) for c in cs],
    "agreement alone (words)": lambda cs, t0: [1 - a for a in agreement(cs)],
    "agreement alone (words, shared words kept)": lambda cs, t0: [1 - a for a in agreement(cs, False)],
    "agreement alone (tokens)": lambda cs, t0: [1 - a for a in token_agreement(cs)],
    "agreement (words), then mean NLL": lambda cs, t0: [
        round(1 - a, 6) * 100 + _nll(c) for a, c in zip(agreement(cs), cs)],
    "consensus (package default)": lambda cs, t0: Consensus().energies(cs, [], t0),
}


# -- features for the weight search (one pass over the dump, then plain arithmetic) -------------------
def features(cands: Sequence[Candidate]) -> list[tuple[float, float, float, float, bool, bool]]:
    """(1 - agreement, mean NLL, unfinished, repetition, empty, greedy row) per candidate."""
    agree = agreement(cands)
    return [(1 - a, mean_nll(c), 0.0 if c.finished else 1.0, repetition(c.token_ids),
             not c.text.split() or not c.token_logprobs, c.temperature == 0.0) for a, c in zip(agree, cands)]


def combined_energy(feats, weights: tuple[float, float, float, float], scale: float,
                    greedy_margin: float = 0.0) -> list[float]:
    """What :class:`Consensus` computes, from precomputed features (the search evaluates it ~10^5 times)."""
    wa, wc, wf, wr = weights
    out = []
    for dis, nll, unf, rep, empty, greedy in feats:
        if empty:
            out.append(1.0)
            continue
        value = (wa * dis + wc * (min(1.0, nll / scale) if math.isfinite(nll) else 1.0) + wf * unf + wr * rep
                 - (greedy_margin if greedy else 0.0))
        out.append(min(1.0, max(0.0, value)))
    return out


def weight_grid(step: float = 0.2):
    n = round(1 / step)
    for a, c, f in itertools.product(range(n + 1), repeat=3):
        r = n - a - c - f
        if r >= 0:
            yield (a / n, c / n, f / n, r / n)


PRIOR = ((0.6, 0.3, 0.0, 0.1), 2.0, 0.0)  # the weights the search starts from (ties go to the closest)
GREEDY_MARGINS = (0.0, 0.05, 0.1, 0.2)


def search_weights(dumps: dict[str, dict], pool: str = "+greedy") -> dict:
    """Best (weights, nll scale, greedy margin) by mean tune accuracy over the settings.

    A coarse grid (steps of 0.2, four margins) against overfitting a small tuning half; among equally
    good settings the one closest to ``PRIOR`` wins.
    """
    per_setting = {}
    for name, dump in dumps.items():
        rows = []
        for trial in dump["trials"]:
            if trial["half"] == "tune":
                cands, ok = candidates_of(trial, pool)
                rows.append((features(cands), ok))
        per_setting[name] = rows
    best = None
    for scale, margin, weights in itertools.product((1.0, 2.0, 4.0), GREEDY_MARGINS, weight_grid()):
        accs = []
        for rows in per_setting.values():
            hits = sum(ok[best_index(combined_energy(f, weights, scale, margin))] for f, ok in rows)
            accs.append(hits / max(1, len(rows)))
        score = sum(accs) / len(accs)
        distance = (sum(abs(x - y) for x, y in zip(weights, PRIOR[0])) + abs(scale - PRIOR[1]) / 4
                    + abs(margin - PRIOR[2]))
        key = (round(score, 9), -distance)
        if best is None or key > best["_key"]:
            best = {"weights": weights, "nll_scale": scale, "greedy_margin": margin, "tune_accuracy": score,
                    "_key": key}
    best.pop("_key")
    return best


# -- evaluation --------------------------------------------------------------------------------------
def picks(dump: dict, rule: Rule | None, pool: str, t0: float) -> list[tuple[dict, float]]:
    """(trial, score in [0, 1]) for each trial: 1/0 for a pick, the mean for 'one sample' etc."""
    out = []
    for trial in dump["trials"]:
        cands, ok = candidates_of(trial, pool)
        out.append((trial, float(ok[best_index(rule(cands, t0))])))
    return out


def baseline_scores(dump: dict) -> dict[str, list[tuple[dict, float]]]:
    base = defaultdict(list)
    for trial in dump["trials"]:
        sampled = [c["correct"] for c in trial["candidates"] if c["t"] > 0]
        greedy = [c["correct"] for c in trial["candidates"] if c["t"] == 0]
        base["greedy decoding (T = 0 row)"].append((trial, float(greedy[0])))
        base["one sample (mean over sampled rows)"].append((trial, sum(sampled) / len(sampled)))
        base["any of the sampled rows (ceiling)"].append((trial, float(any(sampled))))
        base["any of sampled + greedy (ceiling)"].append((trial, float(any(sampled) or greedy[0])))
    return base


def per_question(scores: list[tuple[dict, float]], half: str, kind: str | None = None) -> dict[str, float]:
    acc = defaultdict(list)
    for trial, s in scores:
        if trial["half"] == half and (kind is None or trial["kind"] == kind):
            acc[trial["q"]].append(s)
    return {q: sum(v) / len(v) for q, v in acc.items()}


def bootstrap_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, float]:
    """Mean of a - b over questions and its paired bootstrap 95 % interval."""
    qs = sorted(a)
    diffs = [a[q] - b[q] for q in qs]
    if not diffs:
        return 0.0, 0.0, 0.0
    rng = random.Random(12345)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(BOOTSTRAP))
    return sum(diffs) / len(diffs), means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else float("nan")


def agreement_cost(dump: dict) -> dict:
    """Time of the consensus rule per trial against the trial's generation time."""
    rule, spent, gen = Consensus(), 0.0, 0.0
    for trial in dump["trials"]:
        cands, _ = candidates_of(trial, "+greedy")
        start = time.perf_counter()
        rule.energies(cands, [], 0.7)
        spent += time.perf_counter() - start
        gen += trial["gen_s"]
    n = max(1, len(dump["trials"]))
    return {"scoring_ms_per_answer": round(1000 * spent / n, 3), "generation_s_per_answer": round(gen / n, 3),
            "share_percent": round(100 * spent / max(gen, 1e-9), 4)}


# -- report ------------------------------------------------------------------------------------------
GREEDY, ONE = "greedy decoding (T = 0 row)", "one sample (mean over sampled rows)"
SAMPLED_POOL_RULES = ("lowest mean NLL", "seed energy (research)", "response energy (previous default)",
                      "consensus (package default)")


PMI_WEIGHTS = (0.25, 0.5, 1.0)


def all_scores(dump: dict, searched: dict | None) -> dict[str, list[tuple[dict, float]]]:
    t0 = dump["temperatures"][0]
    scores = dict(baseline_scores(dump))
    for name in SAMPLED_POOL_RULES:
        scores[f"{name} [sampled only]"] = picks(dump, RULES[name], "sampled", t0)
    for name, rule in RULES.items():
        scores[f"{name} [+greedy]"] = picks(dump, rule, "+greedy", t0)
    scored = [t for t in dump["trials"] if all("ulp" in c for c in t["candidates"])]
    if scored:  # PMI rules on the trials that bench.quality.pmi scored (possibly one half only)
        for w in PMI_WEIGHTS:
            scores[f"mean NLL - {w} x neutral-prompt NLL (PMI) [+greedy]"] = picks(
                {**dump, "trials": scored}, _pmi_energy(w), "+greedy", t0)
    if searched:
        w, scale, margin = tuple(searched["weights"]), searched["nll_scale"], searched.get("greedy_margin", 0.0)

        def tuned(cs, t0_, w=w, scale=scale, margin=margin):
            return combined_energy(features(cs), w, scale, margin)
        scores["combined, weights searched on tune [+greedy]"] = picks(dump, tuned, "+greedy", t0)
    return scores


def summarise(scores: dict[str, list[tuple[dict, float]]]) -> dict:
    out = {}
    for name, sc in scores.items():
        row = {}
        for half in ("tune", "heldout"):
            pq = per_question(sc, half)
            g, o = per_question(scores[GREEDY], half), per_question(scores[ONE], half)
            row[half] = {
                "accuracy": round(mean(pq), 4), "questions": len(pq),
                "vs_greedy": [round(x, 4) for x in bootstrap_diff(pq, g)],
                "vs_one_sample": [round(x, 4) for x in bootstrap_diff(pq, o)],
                "kinds": {k: round(mean(per_question(sc, half, k)), 4) for k in KINDS},
                "robot_vs_greedy": [round(x, 4) for x in bootstrap_diff(
                    per_question(sc, half, "robot"), per_question(scores[GREEDY], half, "robot"))],
            }
        out[name] = row
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(d: list[float]) -> str:
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"


def report(dumps: dict[str, dict]) -> tuple[dict, str]:
    """(summary JSON, markdown) for the dumps of the settings present."""
    searched = search_weights(dumps) if dumps else None
    summary: dict = {"weight_search": searched, "settings": {}}
    md = ["# Answer quality: selection accuracy", "",
          "SmolLM2-135M-Instruct, each question on its own; `python -m bench.quality.run_quality` "
          "(stored result: `bench/results/run_quality.json`).",
          "Accuracy in % of (question, seed) trials; Δ = paired difference in points with its bootstrap "
          "95 % CI over questions. Rules choose among `[sampled only]` rows or `[+greedy]` (with the T = 0 row).",
          ""]
    if searched:
        md += [f"Weight search (tune half only, both settings): agreement, confidence, finish, repetition = "
               f"{searched['weights']}, NLL scale {searched['nll_scale']}, greedy margin "
               f"{searched['greedy_margin']}: tune accuracy "
               f"{_pct(searched['tune_accuracy'])} %.", ""]
    for setting, dump in dumps.items():
        dump = {**dump, "seeds": len({t["seed"] for t in dump["trials"]})}  # a run cut short: seeds done
        scores = all_scores(dump, searched)
        summ = summarise(scores)
        cost = agreement_cost(dump)
        trials = dump["trials"]
        summary["settings"][setting] = {
            "temperatures": dump["temperatures"], "max_tokens": dump["max_tokens"], "seeds": dump["seeds"],
            "trials": len(trials), "questions": len({t["q"] for t in trials}), "precision": dump.get("precision"),
            "overrides": dump.get("overrides", []), "generation_seconds": dump["seconds"],
            "consensus_cost": cost, "selectors": summ}
        n_tune = summ[GREEDY]["tune"]["questions"]
        n_held = summ[GREEDY]["heldout"]["questions"]
        md += [f"## {setting}: rows at {dump['temperatures']} (0.0 = greedy row), {dump['max_tokens']} new "
               f"tokens, {dump['seeds']} seed(s); {n_tune} tune + {n_held} held-out questions", "",
               f"Consensus scoring: {cost['scoring_ms_per_answer']} ms per answer = "
               f"{cost['share_percent']:.3f} % of the answer's generation time "
               f"({cost['generation_s_per_answer']} s on this shared 2-core CPU).", "",
               "| selection | tune | held-out | held-out Δ vs greedy | held-out Δ vs one sample | "
               "held-out robot | robot Δ vs greedy |", "|---|---|---|---|---|---|---|"]
        for name, row in summ.items():
            t, h = row["tune"], row["heldout"]
            md.append(f"| {name} | {_pct(t['accuracy'])} | {_pct(h['accuracy'])} | {_ci(h['vs_greedy'])} | "
                      f"{_ci(h['vs_one_sample'])} | {_pct(h['kinds']['robot'])} | {_ci(h['robot_vs_greedy'])} |")
        md += ["", "Per kind (tune / held-out):", "",
               "| selection | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
        for name in (GREEDY, ONE, "lowest mean NLL [+greedy]", "seed energy (research) [sampled only]",
                     "response energy (previous default) [sampled only]", "consensus (package default) [+greedy]",
                     "any of sampled + greedy (ceiling)"):
            row = summ[name]
            md.append(f"| {name} | " + " | ".join(
                f"{_pct(row['tune']['kinds'][k])} / {_pct(row['heldout']['kinds'][k])}" for k in KINDS) + " |")
        md.append("")
    return summary, "\n".join(md) + "\n"


# -- a configuration against the reference (e.g. bf16 or int8 against fp32), paired by question ------
def compare(reference: dict, other: dict, label: str) -> str:
    """Markdown: held-out accuracy of greedy, one sample and the default pick, ``other`` minus ``reference``.

    Only the (question, seed) trials present in both dumps count, so a run cut short compares fairly.
    """
    common = {(t["q"], t["seed"]) for t in reference["trials"]} & {(t["q"], t["seed"]) for t in other["trials"]}

    def kept(dump: dict) -> dict:
        return {**dump, "trials": [t for t in dump["trials"] if (t["q"], t["seed"]) in common]}

    ref, oth = kept(reference), kept(other)
    t0 = ref["temperatures"][0]
    rows = ["| selection (held-out) | reference | " + label + " | Δ [95 % CI] |", "|---|---|---|---|"]
    for name in (GREEDY, ONE, "consensus (package default) [+greedy]"):
        if name == "consensus (package default) [+greedy]":
            a, b = picks(ref, RULES["consensus (package default)"], "+greedy", t0), \
                picks(oth, RULES["consensus (package default)"], "+greedy", t0)
        else:
            a, b = baseline_scores(ref)[name], baseline_scores(oth)[name]
        pa, pb = per_question(a, "heldout"), per_question(b, "heldout")
        rows.append(f"| {name} | {_pct(mean(pa))} | {_pct(mean(pb))} | {_ci(list(bootstrap_diff(pb, pa)))} |")
    n_q = len({t["q"] for t in ref["trials"] if t["half"] == "heldout"})
    return (f"{label} against the reference: {len(common)} common trials, {n_q} held-out questions\n\n"
            + "\n".join(rows) + "\n")
