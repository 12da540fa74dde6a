"""Do the ``hf`` decode path (generate) and ``static`` (sage_irp_ros/decode.py) draw the same candidates?

    .venv/bin/python -m bench.decoder_agreement [QUESTIONS]    # first QUESTIONS held-out questions, default 30

Both decoders sample with the same arithmetic (softmax of logits / T, one multinomial draw per row and
step), so with the same seed they should produce token-identical candidates; this checks it on the
answer-quality set's held-out half (greedy row + 5 sampled rows, 32 tokens, seed 0) and counts correct
candidates under each. docs/performance.md quotes the result.
"""

from __future__ import annotations

import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.question_set import is_correct, load_questions
    from sage_irp_ros.config import SageConfig
    from sage_irp_ros.generation import sample_candidates
    from sage_irp_ros.model_loader import load_model
    from sage_irp_ros.prompts import build_prompt_ids, clean_answer

    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    questions = load_questions("heldout")[:int(argv[0]) if argv else 30]
    lms = {}
    loaded = load_model(SageConfig().model, lambda message: None)
    for decoder in ("hf", "static"):
        lms[decoder] = dataclasses.replace(loaded, decoder=decoder)
    rows = [0.0, 0.7, 0.66, 0.62, 0.58, 0.54]
    same = total = 0
    correct = {decoder: 0 for decoder in lms}
    for item in questions:
        prompt = build_prompt_ids(lms["hf"].tokenizer, item["q"])
        out = {}
        for decoder, lm in lms.items():
            torch.manual_seed(0)
            out[decoder] = sample_candidates(lm, prompt, rows, 32).candidates
            correct[decoder] += sum(is_correct(clean_answer(c.text), item["a"]) for c in out[decoder])
        for a, b in zip(out["hf"], out["static"]):
            total += 1
            same += a.token_ids == b.token_ids
    print(f"{len(questions)} held-out questions, {total} candidates: token-identical {same}/{total}; "
          f"correct candidates hf {correct['hf']}, static {correct['static']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
