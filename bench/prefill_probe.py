"""Probe for a suggested engine change: prefill the prompt ONCE, then decode N rows from copies of its cache.

Today ``sample_candidates`` passes ``num_return_sequences=N``, so generate prefills N identical copies of
the prompt. With a conversation history in the prompt that dominates a question's cost on a CPU. This
probe times, on the embedded SmolLM2 and the same forced token count:

- the package's ``sample_candidates`` with N rows and with one row;
- a prototype that runs the prompt (minus its last token) once on one row, repeats the KV cache N times
  (``DynamicCache.batch_repeat_interleave``) and lets generate continue from it (same processor, same
  sampling, so the candidates follow the same distribution).

    .venv/bin/python -m bench.prefill_probe [--precision fp32|bf16] [--tokens 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch
    from transformers import DynamicCache, LogitsProcessorList

    from bench.models import DEMO_HISTORY, DEMO_QUESTIONS
    from sage_irp_ros.config import SageConfig
    from sage_irp_ros.generation import RowTemperature, sample_candidates
    from sage_irp_ros.model_loader import apply_power_mode, load_model
    from sage_irp_ros.prompts import seed_prompt

    apply_power_mode("balanced")
    cfg = SageConfig.from_mapping({"model": {"precision": args.precision}})
    lm = load_model(cfg.model, lambda message: None)
    tok, model, n, length = lm.tokenizer, lm.model, args.n, args.tokens
    temps = [0.7 - i * 0.16 / n for i in range(n)]

    @torch.inference_mode()
    def shared_prefill(ids):
        x = torch.tensor([ids], device=lm.device)
        cache = DynamicCache(config=model.config)
        model(input_ids=x[:, :-1], past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(n)
        rows = x.expand(n, -1)
        return model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), past_key_values=cache,
                              do_sample=True, temperature=1.0, top_k=None, top_p=None,
                              max_new_tokens=length, min_new_tokens=length, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id,
                              logits_processor=LogitsProcessorList([RowTemperature(temps, lm.device)]))

    variants = {
        f"sample_candidates N={n} (today)": lambda ids: sample_candidates(lm, ids, temps, length,
                                                                          min_new_tokens=length),
        f"shared prefill N={n} (prototype)": shared_prefill,
        "sample_candidates N=1": lambda ids: sample_candidates(lm, ids, temps[:1], length, min_new_tokens=length),
    }
    prompts = {"demo question": tok(seed_prompt(DEMO_QUESTIONS[4]))["input_ids"],
               "with 4-exchange history": tok(seed_prompt(DEMO_QUESTIONS[4], history=DEMO_HISTORY))["input_ids"]}
    result = {"precision": str(lm.dtype), "threads": torch.get_num_threads(), "tokens": length, "n": n}
    for label, ids in prompts.items():
        for fn in variants.values():
            fn(ids)  # warm-up
        times = {name: [] for name in variants}
        for rep in range(args.reps):
            for name, fn in variants.items():
                torch.manual_seed(rep)
                start = time.perf_counter()
                fn(ids)
                times[name].append(time.perf_counter() - start)
        result[label] = {"prompt_tokens": len(ids), **{k: round(statistics.median(v), 3) for k, v in times.items()}}
        print(label, json.dumps(result[label]), flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
