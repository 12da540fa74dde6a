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

"""Fit the shipped choice model and confidence calibration on the TUNING halves only.

    python -m bench.quality.calibrate [--out bench/results] [--write]   # --write: sage_irp_ros/data/calibration.json

Reads the choices dump (``python -m bench.quality.choices --collect``) and the free-text candidate
dumps of bench/quality/run_quality.py (``quality_dump_<setting>.json.gz``), keeps their tuning halves,
and fits by maximum likelihood (Newton's method, a small L2 penalty):

1. the choice model, a conditional logit over option features (sage_irp_ros.answers.choices.FEATURES): each
   feature alone and the combinations below are compared by 5-fold cross-validated accuracy (then
   log-loss) on the tuning half; the best is refitted on the whole tuning half;
2. the choice confidence, Platt scaling of the chosen option's probability (its logit; a negative slope
   is replaced by the base rate: a confidence must not fall as the probability rises), fitted on
   out-of-fold probabilities (so it learns how far to trust probabilities on unseen questions);
3. the free-text confidence, a logistic model over the chosen candidate's features
   (sage_irp_ros.irp.confidence.FREE_TEXT_FEATURES) under the package's consensus rule, candidates plus
   the greedy row, both settings; and one for a lone greedy candidate (a throttled answer).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import numpy as np

from bench.record import RESULTS, run_info, write_result

CALIBRATION = Path(__file__).resolve().parents[2] / "sage_irp_ros" / "data" / "calibration.json"
SUBSETS = (("ll_sum",), ("ll_mean",), ("pmi_sum",), ("pmi_mean",), ("vote",), ("ll_mean", "vote"),
           ("pmi_mean", "vote"), ("ll_mean", "pmi_mean"), ("ll_mean", "pmi_mean", "vote"),
           ("ll_sum", "pmi_sum", "vote"), ("ll_sum", "ll_mean", "pmi_sum", "pmi_mean", "vote"))
L2 = 1e-2
FOLDS = 5


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression (Newton's method; the bias is not penalised)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -50, 50)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def fit_clogit(groups: list[tuple[np.ndarray, int]], l2: float = L2, steps: int = 50) -> np.ndarray:
    """Weights of a conditional logit: P(option j) = softmax_j(F_j . w), one group per question."""
    k = groups[0][0].shape[1]
    w = np.zeros(k)
    for _ in range(steps):
        grad, hess = l2 * w, l2 * np.eye(k)
        for f, right in groups:
            z = f @ w
            p = np.exp(z - z.max())
            p /= p.sum()
            mean = p @ f
            grad += mean - f[right]
            hess += (f * p[:, None]).T @ f - np.outer(mean, mean)
        step = np.linalg.solve(hess + 1e-9 * np.eye(k), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def choice_groups(trials: list[dict], subset: tuple[str, ...]) -> list[tuple[np.ndarray, int]]:
    from sage_irp_ros.answers import choices

    out = []
    for t in trials:
        scores = [choices.OptionScore(**s) for s in t["scores"]]
        feats = choices.features(scores, choices.vote_shares([c["text"] for c in t["candidates"]], t["choices"]))
        out.append((np.array([[f[name] for name in subset] for f in feats]), t["choices"].index(t["a"])))
    return out


def _probs(f: np.ndarray, w: np.ndarray) -> np.ndarray:
    z = f @ w
    p = np.exp(z - z.max())
    return p / p.sum()


def cross_validated(groups: list[tuple[np.ndarray, int]], seed: int = 0) -> list[np.ndarray]:
    """Out-of-fold option probabilities of every question (5 folds, fixed shuffle)."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    probs: list[np.ndarray] = [np.zeros(0)] * len(groups)
    for fold in range(FOLDS):
        test = set(order[fold::FOLDS])
        w = fit_clogit([g for i, g in enumerate(groups) if i not in test])
        for i in test:
            probs[i] = _probs(groups[i][0], w)
    return probs


def fit_choices(trials: list[dict]) -> tuple[dict, dict, dict]:
    """(choice weights, confidence calibrator, the comparison table) from tuning trials."""
    from sage_irp_ros.irp.confidence import CHOICE_FEATURES, choice_features

    table, best = {}, None
    for subset in SUBSETS:
        groups = choice_groups(trials, subset)
        probs = cross_validated(groups)
        acc = float(np.mean([p.argmax() == right for p, (_, right) in zip(probs, groups)]))
        loss = float(np.mean([-np.log(max(p[right], 1e-12)) for p, (_, right) in zip(probs, groups)]))
        table["+".join(subset)] = {"cv_accuracy": round(100 * acc, 1), "cv_log_loss": round(loss, 4)}
        if best is None or (acc, -loss) > best[0]:
            best = ((acc, -loss), subset, groups, probs)
    _, subset, groups, probs = best
    weights = {name: round(float(v), 6) for name, v in zip(subset, fit_clogit(groups))}
    feats = [choice_features(list(p)) for p in probs]
    x = np.array([[f[name] for name in CHOICE_FEATURES] for f in feats])
    y = np.array([float(p.argmax() == right) for p, (_, right) in zip(probs, groups)])
    w, b = fit_logistic(x, y)
    if w[0] < 0:  # a confidence that falls as the option's probability rises is noise: keep the base rate
        w, b = np.zeros_like(w), float(np.log(y.mean() / (1 - y.mean())))
    calibrator = {"weights": {n: round(float(v), 6) for n, v in zip(CHOICE_FEATURES, w)}, "bias": round(b, 6)}
    return weights, calibrator, table


def free_text_rows(dumps: list[Path], half: str = "tune") -> tuple[list[dict], list[dict]]:
    """Per tuning trial: the consensus pick's features and right/wrong, for all rows and the greedy row alone."""
    from sage_irp_ros.decoding.generator import Candidate
    from sage_irp_ros.irp.confidence import free_text_features
    from sage_irp_ros.irp.selection import Consensus, best_index

    rule, many, single = Consensus(), [], []
    for path in dumps:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            dump = json.load(f)
        for trial in dump["trials"]:
            if trial["half"] != half:
                continue
            cands = [Candidate(c["text"], c["t"], c["ids"], c["lp"], c["finished"]) for c in trial["candidates"]]
            right = [c["correct"] for c in trial["candidates"]]
            energies = rule.energies(cands, [], 0.7)
            best = best_index(energies)
            many.append({**free_text_features(cands, energies, best), "right": right[best], "q": trial["q"]})
            g = next(i for i, c in enumerate(cands) if c.temperature == 0.0)
            e = rule.energies([cands[g]], [], 0.7)
            single.append({**free_text_features([cands[g]], e, 0), "right": right[g], "q": trial["q"]})
    return many, single


def fit_free_text(rows: list[dict]) -> dict:
    from sage_irp_ros.irp.confidence import FREE_TEXT_FEATURES

    x = np.array([[r[name] for name in FREE_TEXT_FEATURES] for r in rows])
    y = np.array([float(r["right"]) for r in rows])
    w, b = fit_logistic(x, y)
    return {"weights": {n: round(float(v), 6) for n, v in zip(FREE_TEXT_FEATURES, w)}, "bias": round(b, 6)}


def report_free_text(quality: Path, half: str, out: Path) -> dict:
    """AUROC, ECE, top-50 % accuracy of the shipped free-text confidence on one half, and its diagram."""
    from bench.quality.metrics import confidence_report, reliability_png
    from sage_irp_ros.irp.confidence import shipped

    cal, result = shipped(), {"half": half}
    many, single = free_text_rows(sorted(quality.glob("quality_dump_*.json.gz")), half)
    for name, rows, model in (("candidates+greedy", many, cal.free_text),
                              ("greedy alone", single, cal.free_text_single)):
        scores, right = [model(r) for r in rows], [bool(r["right"]) for r in rows]
        result[name] = {"trials": len(rows), **confidence_report(scores, right)}
    rows = many
    png = out / f"reliability_free_text_{half}.png"
    result["reliability_png"] = str(reliability_png([cal.free_text(r) for r in rows], [bool(r["right"]) for r in rows],
                                                    png, f"free text, {half} half"))
    write_result(f"confidence_free_text_{half}", {"run": run_info(None, "bench.quality.calibrate"), **result}, out)
    return result


def main(argv: list[str] | None = None) -> None:
    from bench.quality.choices import read_dump

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder with the dumps (default bench/results)")
    parser.add_argument("--quality", default=str(RESULTS), help="folder with quality_dump_<setting>.json.gz")
    parser.add_argument("--write", action="store_true", help="write sage_irp_ros/data/calibration.json")
    parser.add_argument("--report-free-text", choices=("tune", "heldout"),
                        help="instead of fitting: the shipped free-text confidence on this half")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_free_text:
        print(json.dumps(report_free_text(Path(args.quality), args.report_free_text, out), indent=1))
        return
    tune = [t for t in read_dump(out)["trials"] if t["half"] == "tune"]
    weights, choice_cal, table = fit_choices(tune)
    dumps = sorted(Path(args.quality).glob("quality_dump_*.json.gz"))
    many, single = free_text_rows(dumps)
    calibration = {"fitted_by": "python -m bench.quality.calibrate --write (tuning halves only)",
                   "choice_weights": weights, "choices": choice_cal,
                   "free_text": fit_free_text(many), "free_text_single": fit_free_text(single)}
    print(json.dumps({"choice_models_tuning_cv": table, **calibration}, indent=1))
    if args.write:
        CALIBRATION.write_text(json.dumps(calibration, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {CALIBRATION}")
    write_result("calibrate", {"run": run_info(argv, "bench.quality.calibrate"), "choice_models_tuning_cv": table,
                               "tuning_trials": {"choices": len(tune), "free_text": len(many)}, **calibration}, out)


if __name__ == "__main__":
    main()
