"""Selection accuracy: does the energy pick right answers? Measured, not assumed.

For each question of ``bench/quality_questions.json`` (short questions with checkable answers) the
embedded SmolLM2-135M samples 5 candidates at 0.70..0.54 in one batched call; then each selector picks
one and we check it. Selectors: one random sample (the mean over candidates), greedy decoding, lowest
mean NLL, the research ``seed`` energy, the package's ``response`` energy, and the oracle "any of the 5".

    .venv/bin/python -m bench.quality [--tokens 32] [--seeds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sage_irp_ros.config import SageConfig
from sage_irp_ros.energy import ResponseEnergy, repetition, seed_energy
from sage_irp_ros.generation import sample_candidates
from sage_irp_ros.model_loader import load_model
from sage_irp_ros.prompts import build_prompt_ids

HERE = Path(__file__).resolve().parent
TEMPERATURES = [0.70, 0.66, 0.62, 0.58, 0.54]


def correct(text: str, answers: list[str]) -> bool:
    low = f" {text.lower()} "
    return any(a in low for a in answers)


def mean_nll(c) -> float:
    return -sum(c.token_logprobs) / max(1, len(c.token_logprobs))


def run(tokens: int, seeds: int) -> dict:
    cfg = SageConfig.from_mapping({"llm_irp": {"device": "cpu"}})
    lm = load_model(cfg.model, cfg.llm_irp)
    questions = json.loads((HERE / "quality_questions.json").read_text())
    response = ResponseEnergy()
    selectors = {
        "random sample (mean)": None,
        "greedy": None,
        "lowest mean NLL": lambda c: mean_nll(c),
        "seed energy": lambda c: seed_energy(c, TEMPERATURES[0]),
        "response energy (default)": lambda c: response(c, TEMPERATURES[0]),
        "oracle: any of 5": None,
    }
    hits = {name: 0.0 for name in selectors}
    dump: list[list[dict]] = []
    trials = 0
    start = time.monotonic()
    for item in questions:
        prompt = build_prompt_ids(lm.tokenizer, item["q"])
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            greedy_ids = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=tokens, pad_token_id=lm.tokenizer.pad_token_id)
        greedy = lm.tokenizer.decode(greedy_ids[0, len(prompt):], skip_special_tokens=True)
        for seed in range(seeds):
            torch.manual_seed(seed)
            cands = sample_candidates(lm, prompt, TEMPERATURES, tokens).candidates
            ok = [correct(c.text, item["a"]) for c in cands]
            dump.append([{"nll": mean_nll(c), "finished": c.finished, "repetition": repetition(c.token_ids),
                          "words": len(c.text.split()), "correct": k, "text": c.text[:200]}
                         for c, k in zip(cands, ok)])
            trials += 1
            hits["random sample (mean)"] += sum(ok) / len(ok)
            hits["greedy"] += correct(greedy, item["a"])
            hits["oracle: any of 5"] += any(ok)
            for name, key in selectors.items():
                if key is not None:
                    hits[name] += ok[min(range(len(cands)), key=lambda i: key(cands[i]))]
    return {"questions": len(questions), "seeds": seeds, "tokens": tokens, "trials": trials,
            "accuracy": {k: round(v / trials, 3) for k, v in hits.items()},
            "seconds": round(time.monotonic() - start, 1), "candidates": dump}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    report = run(args.tokens, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Selection accuracy, SmolLM2-135M-Instruct, {report['questions']} questions x {report['seeds']} "
             f"seeds, 5 candidates at 0.70..0.54, {report['tokens']} new tokens:", "",
             "| selector | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in report["accuracy"].items()]
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
