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

"""The speed benchmark's report: the targets, the markdown tables and the plot.

Works only on the results dictionary that ``bench.speed.run_bench`` builds (and writes to
``run_bench.json``), so the report can be read and changed without the timing code. matplotlib is imported
inside ``plot``. The markdown is what ``run_bench --update-docs`` puts into docs/performance.md.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.speed.cells import MAIN_N, SWEEP_NS, paired_ratio


def find(table: dict[str, dict], kind: str, n: int | None = None) -> dict | None:
    for row in table.values():
        if row["kind"] == kind and (n is None or row["n"] == n):
            return row
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    smol = results["models"].get("smollm2")
    if not smol:
        return []
    main, lora, bf16 = smol["tables"]["main"], smol["tables"]["lora"], smol["tables"]["bf16"]
    base, batched, single = find(main, "baseline"), find(main, "batched", MAIN_N), find(main, "single")
    rows = []

    def add(name, value, goal, ok, note=""):
        rows.append({"target": name, "measured": value, "goal": goal, "met": None if ok is None else bool(ok),
                     "note": note})

    speedup = base["median_s"] / batched["median_s"]
    add(f"Batched N={MAIN_N} vs baseline loop N={MAIN_N}, equal tokens (fp32 both)", f"{speedup:.2f}x",
        ">= 4x", speedup >= 4.0, f"paired per-rep median {1 / paired_ratio(batched, base):.2f}x; engine as "
        "the package loads the model (weights packed for oneDNN), loop on plain weights as the research "
        "code loaded them")
    unpacked, unpacked_one = find(main, "batched, not packed"), find(main, "single, not packed")
    sequential = find(main, "sequential", MAIN_N)
    if unpacked and unpacked_one:
        add("  engine batched, weights not packed, vs baseline loop", f"{base['median_s'] / unpacked['median_s']:.2f}x",
            "(info)", None, f"batching alone; batched / single without packing: "
            f"{unpacked['median_s'] / unpacked_one['median_s']:.2f}x; packing alone (sequential engine, "
            f"packed, vs loop): {base['median_s'] / sequential['median_s']:.2f}x")
    b16_base, b16_batched = find(bf16, "baseline"), find(bf16, "batched", MAIN_N)
    s16 = b16_base["median_s"] / b16_batched["median_s"]
    add(f"  same, bf16 both (CPU with native bf16: {results['machine']['cpu_bf16']})", f"{s16:.2f}x", ">= 4x",
        s16 >= 4.0, "precision option")
    s_mixed = base["median_s"] / b16_batched["median_s"]
    add("  engine batched bf16 vs baseline loop fp32", f"{s_mixed:.2f}x", "(info)", None,
        "best CPU option vs the loop as it runs by default here")
    cost = batched["median_s"] / single["median_s"]
    add(f"Batched N={MAIN_N} / one single-candidate generation", f"{cost:.2f}x", "<= 1.5x", cost <= 1.5)
    c16 = b16_batched["median_s"] / find(bf16, "single")["median_s"]
    add("  same, bf16", f"{c16:.2f}x", "<= 1.5x", c16 <= 1.5, "precision option")
    for name, table in smol["tables"].items():
        if name.endswith(" threads"):
            rows_ = list(table.values())
            for prec in ("fp32", "bf16"):
                pair = [r for r in rows_ if r["precision"] == prec]
                bat = next(r for r in pair if r["kind"] == "batched")
                one = next(r for r in pair if r["kind"] == "single")
                loop = next((r for r in pair if r["kind"] == "baseline"), None)
                speed = f"; vs baseline loop ({prec}, same threads): {loop['median_s'] / bat['median_s']:.2f}x" \
                    if loop else ""
                add(f"  batched / single, {prec}, {name}", f"{bat['median_s'] / one['median_s']:.2f}x", "(info)",
                    None, f"all cores instead of the package default (cores - 1){speed}")
    ctx = smol["tables"].get("conversation context")
    if ctx:
        c_base, c_bat, c_one = find(ctx, "baseline"), find(ctx, "batched", MAIN_N), find(ctx, "single")
        add(f"  with a {smol['context_prompt_tokens']}-token conversation prompt: batched vs baseline",
            f"{c_base['median_s'] / c_bat['median_s']:.2f}x", "(info)", None,
            f"batched / single: {c_bat['median_s'] / c_one['median_s']:.2f}x (N prompt rows are prefilled)")
    plain = lora["plain base model, batched 5 x 1"]["median_s"]
    merged = lora["LoRA merged, batched 5 x 1"]["median_s"]
    unmerged = lora["LoRA unmerged (peft), batched 5 x 1"]["median_s"]
    paired = paired_ratio(lora["LoRA merged, batched 5 x 1"], lora["plain base model, batched 5 x 1"])
    paired_un = paired_ratio(lora["LoRA unmerged (peft), batched 5 x 1"], lora["plain base model, batched 5 x 1"])
    add("LoRA merged vs plain base model (median of per-rep paired ratios)", f"{100 * (paired - 1):+.1f} %",
        "within 5 %", paired <= 1.05, f"ratio of medians {100 * (merged / plain - 1):+.1f} %; unmerged: "
        f"{100 * (paired_un - 1):+.1f} % paired, {100 * (unmerged / plain - 1):+.1f} % of medians")
    serving = smol["serving"]
    answers = [a["answer_s"] for a in serving["answers"]]
    first, steady = answers[0], statistics.median(answers[1:])
    add("First answer after ready / steady-state median", f"{first / steady:.2f}x", "<= 1.2x",
        first <= 1.2 * steady, f"first {first:.2f} s, steady {steady:.2f} s")
    warm = statistics.median([w["ready_s"] for w in smol["warm_loads"] + [serving]])
    add("Warm start: SageCore.load() (load + warm-up) with the conversion cache", f"{warm:.2f} s", "< 5 s",
        warm < 5.0, "process start to ready incl. imports: "
        f"{statistics.median([w['process_to_ready_s'] for w in smol['warm_loads'] + [serving]]):.2f} s")
    over = [(a["answer_s"] - a["refine_s"] + a["parse_s"] + a["serialize_s"]) / a["answer_s"]
            for a in serving["answers"]]
    share = 100 * statistics.median(over)
    add("SNARC + bookkeeping + message parse/serialise, share of a question", f"{share:.3f} %", "< 1 %",
        share < 1.0, f"SNARC alone {smol['snarc_score_us']:.0f} us per exchange")
    for key, what in (("packed_answers", "Packed (oneDNN) vs plain fp32 weights"), ("bf16_answers", "bf16")):
        agree = smol.get(key)
        if agree:
            add(f"{what}: effect on answers (greedy, 5 demo questions)",
                f"{agree['identical']}/{agree['questions']} identical, "
                f"{100 * agree['mean_shared_prefix_fraction']:.0f} % shared prefix", "(report)", None)
    return rows


def fmt_table(table: dict[str, dict], baseline: dict | None) -> list[str]:
    lines = ["| contender | prec. | thr. | N | tok/cand | reps | s/question (median) | min-max | vs baseline | "
             "decode ms/step | decode ms/token | prefill ms/call | candidates x tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.values():
        ratio = f"{baseline['median_s'] / row['median_s']:.2f}x" if baseline else "-"
        lines.append(
            f"| {row['name']} | {row['precision']} | {row['threads']} | {row['n']} | "
            f"{row['tokens_per_candidate']} | {row['reps']} | "
            f"{row['median_s']:.3f} | {row['min_s']:.2f}-{row['max_s']:.2f} | {ratio} | "
            f"{row['decode_ms_per_step']:.1f} | {row['decode_ms_per_token']:.1f} | "
            f"{row['prefill_ms_per_call']:.0f} | {row['candidates'][0]} x "
            f"{row['tokens'][0] // max(1, row['candidates'][0])} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, torch {m['torch']}, "
             f"transformers {m['transformers']}, {m['threads']} torch thread(s) (power_mode {m['power_mode']}"
             f"{', overridden' if results['settings'].get('threads') else ''}); load average "
             f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end. "
             f"Run {results['started']} ({'quick' if results['quick'] else 'default'} settings), "
             f"{results['duration_s']:.0f} s in all.", ""]
    if results.get("targets"):
        lines += ["### Targets (SmolLM2-135M, measured side by side in this run)", "",
                  "| target | measured | goal | met | note |", "|---|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | "
                         f"{'-' if t['met'] is None else 'yes' if t['met'] else '**no**'} | {t['note']} |")
        lines.append("")
    for key, model in results["models"].items():
        title = {"smollm2": "SmolLM2-135M-Instruct (embedded; fp32 and packed weights = the CPU defaults)",
                 "qwen05b-shape": "Qwen2.5-0.5B-Instruct architecture, random weights"}[key]
        lines += [f"### {title}", ""]
        tables = model["tables"]
        main_base = find(tables["main"], "baseline")
        for name, table in tables.items():
            base = find(table, "baseline") or (main_base if name in ("sweep", "lora") else None)
            if name == "lora":
                base = None
                lines.append("LoRA (rank 8, q_proj/v_proj), batched N=5; ratio column = plain / row:")
                plain = table["plain base model, batched 5 x 1"]
                lines += fmt_table(table, plain)
            else:
                if name == "conversation context":
                    lines.append(f"conversation context (the 5th demo question after the first four exchanges, "
                                 f"{model['context_prompt_tokens']}-token seed prompt):")
                else:
                    lines.append(f"{name}:" if name != "main" else "main (equal tokens, equal candidates):")
                lines += fmt_table(table, base)
            lines.append("")
        if key == "smollm2":
            serving = model["serving"]
            answers = [a["answer_s"] for a in serving["answers"]]
            lines += [
                "Loading and serving (fresh processes; SageCore with the default energy, batched N=5):", "",
                "| measure | value |", "|---|---|"]
            if "cold_load" in model:
                c = model["cold_load"]
                lines.append(f"| cold load (GGUF -> safetensors conversion + load) | {c['load_model_s']:.2f} s; "
                             f"ready (with warm-up) {c['ready_s']:.2f} s |")
            warm = model["warm_loads"] + [serving]
            lines += [
                f"| warm load_model (conversion cache present), median of {len(warm)} | "
                f"{statistics.median(w['load_model_s'] for w in warm):.2f} s |",
                f"| warm ready = load + warm-up generation | {statistics.median(w['ready_s'] for w in warm):.2f} s |",
                f"| python imports (torch, transformers, package) | "
                f"{statistics.median(w['import_s'] for w in warm):.2f} s |",
                f"| process start to ready | {statistics.median(w['process_to_ready_s'] for w in warm):.2f} s |",
                f"| first answer after ready | {answers[0]:.2f} s |",
                f"| steady-state answer (median of {len(answers) - 1}) | {statistics.median(answers[1:]):.2f} s |",
                f"| SNARC + history + result + store per answer (median) | "
                f"{1e3 * statistics.median(a['answer_s'] - a['refine_s'] for a in serving['answers']):.2f} ms |",
                f"| message parse + result JSON per answer (median) | "
                f"{1e3 * statistics.median(a['parse_s'] + a['serialize_s'] for a in serving['answers']):.2f} ms |",
                f"| SNARC score alone | {model['snarc_score_us']:.1f} us |",
                f"| peak RSS of the serving process | {serving['peak_rss_mb']:.0f} MB |",
                f"| peak GPU memory | "
                f"{serving['peak_gpu_mb'] if serving['peak_gpu_mb'] is not None else 'n/a (CPU)'} |",
                f"| model weights (fp32) | {model['model']['footprint_mb']:.0f} MB packed "
                f"({model['model'].get('packed_layers', 0)} Linear layers; the tied head's packed copy is "
                f"the extra), {model['model'].get('footprint_mb_not_packed', 0):.0f} MB plain |", ""]
            agree = model["bf16_answers"]
            lines += [f"bf16 vs fp32 greedy answers ({model['tokens_per_candidate']} tokens, seed prompt): "
                      f"{agree['identical']}/{agree['questions']} identical; mean shared prefix "
                      f"{100 * agree['mean_shared_prefix_fraction']:.0f} %.", ""]
        lines.append(f"Peak RSS of the benchmark process so far: {model['peak_rss_mb_in_process']:.0f} MB.")
        lines.append("")
    run = results.get("run")
    if run:
        git = run["git"]
        lines += [f"Stored in `bench/results/run_bench.json`: `{run['command']}` at commit "
                  f"{(git['commit'] or 'unknown')[:12]}{' (tracked files modified)' if git['dirty'] else ''}.", ""]
    lines += ["Static cache + torch.compile: CUDA only; see `bench/speed/gpu_check.py` (GPU section of "
              "docs/performance.md).", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, (key, model) in zip(axes[0], models):
        tables = model["tables"]
        rows = list(tables["main"].values()) + list(tables["sweep"].values())
        prec = find(tables["main"], "batched", MAIN_N)["precision"]
        single = find(tables["main"], "single")
        for kind, style in (("sequential", "o-"), ("batched", "s-")):
            pts = {1: single["median_s"]}
            pts.update({r["n"]: r["median_s"] for r in rows if r["kind"] == kind})
            ns = sorted(pts)
            label = "sequential 1 x N (one generate per candidate)" if kind == "sequential" else \
                "batched N x 1 (one generate call)"
            ax.plot(ns, [pts[n] for n in ns], style, label=label)
        base = find(tables["main"], "baseline")
        ax.plot([base["n"]], [base["median_s"]], "k*", markersize=12, label="research loop (baseline)")
        ax.set_xlabel("candidates per question (N)")
        ax.set_ylabel("seconds per question (median)")
        ax.set_title(f"{key} ({prec}, {model['tokens_per_candidate']} tokens/candidate, "
                     f"{find(tables['main'], 'batched', MAIN_N)['threads']} thread(s))")
        ax.set_xticks(list(SWEEP_NS))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Time per question vs candidate count — {results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
