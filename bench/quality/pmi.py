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

"""Does penalising generic answers help? Pointwise mutual information between question and answer.

Mean NLL favours answers that are likely whatever the question ("I'm sorry, I can't ..."). Scoring
by how much more likely the answer is *given the question* than given a neutral prompt (domain-
conditional PMI, Holtzman et al. 2021, "Surface Form Competition") is a known remedy. It costs one
more forward pass over the candidates (batched, like a prefill), so it is measured here offline on the
dumps before anything goes into the package:

    python -m bench.quality.pmi --out bench/results --half tune    # adds 'ulp' to each candidate
    python -m bench.quality.pmi --out bench/results --half heldout

``ulp``: untempered log-probs of the candidate's tokens (and EOS when it finished) after the chat
prompt of the neutral question below. bench/quality/evaluate.py evaluates the PMI rules where present
(``python -m bench.quality.run_quality --from-dump`` reports them). Writes ``pmi.json`` (trials scored per
setting and their time, the machine, versions and git commit) into ``--out`` beside the dumps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.quality.run_quality import dump_path, read_dump, write_dump
from bench.record import RESULTS, run_info, write_result
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.weights.loader import load_model
from sage_irp_ros.irp.prompts import build_prompt_ids

NAME = "pmi"
NEUTRAL = "Answer the question."


@torch.inference_mode()
def answer_logprobs(lm, prompt_ids: list[int], answers: list[list[int]]) -> list[list[float]]:
    """log P(answer token | prompt, earlier answer tokens) for each answer, in one right-padded batch."""
    width = max(len(a) for a in answers)
    if width == 0:
        return [[] for _ in answers]
    pad = lm.tokenizer.pad_token_id or 0
    rows = [prompt_ids + a + [pad] * (width - len(a)) for a in answers]
    mask = [[1] * (len(prompt_ids) + len(a)) + [0] * (width - len(a)) for a in answers]
    logits = lm.model(input_ids=torch.tensor(rows), attention_mask=torch.tensor(mask)).logits.float()
    logp = torch.log_softmax(logits[:, len(prompt_ids) - 1:-1], dim=-1)
    out = []
    for i, a in enumerate(answers):
        picked = logp[i, torch.arange(len(a)), torch.tensor(a, dtype=torch.long)] if a else torch.zeros(0)
        out.append([round(float(x), 4) for x in picked])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder with quality_dump_<setting>.json.gz "
                        "(default bench/results); pmi.json goes there too")
    parser.add_argument("--setting", choices=("short", "edge", "both"), default="both")
    parser.add_argument("--half", choices=("tune", "heldout", "both"), default="tune")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = {"run": run_info(argv, f"bench.quality.{NAME}"), "half": args.half, "neutral_prompt": NEUTRAL,
              "settings": {}}
    torch.set_num_threads(args.threads)
    cfg = SageConfig.from_mapping({"model": {"device": "cpu", "precision": "fp32"}})  # as the dumps
    lm = load_model(cfg.model)
    eos = lm.tokenizer.eos_token_id
    neutral = build_prompt_ids(lm.tokenizer, NEUTRAL)
    for setting in (("short", "edge") if args.setting == "both" else (args.setting,)):
        path = dump_path(Path(args.out), setting)
        if not path.exists():
            continue
        dump, start, done = read_dump(path), time.monotonic(), 0
        for trial in dump["trials"]:
            if args.half != "both" and trial["half"] != args.half:
                continue
            cands = [c for c in trial["candidates"] if "ulp" not in c]
            if not cands:
                continue
            answers = [c["ids"] + ([eos] if c["finished"] else []) for c in cands]
            for c, ulp in zip(cands, answer_logprobs(lm, neutral, answers)):
                c["ulp"] = ulp
            done += 1
            if done % 50 == 0:
                print(f"[{setting}] {done} trials, {time.monotonic() - start:.0f} s", flush=True)
                write_dump(dump, path)
        write_dump(dump, path)
        result["settings"][setting] = {"dump": path.name, "trials_scored": done,
                                       "seconds": round(time.monotonic() - start, 1)}
        print(f"[{setting}] {done} trials scored in {time.monotonic() - start:.0f} s", flush=True)
    print(f"wrote {write_result(NAME, result, args.out)}")


if __name__ == "__main__":
    main()
