#!/usr/bin/env python3
"""Prints the README's task and generation tables from scripts/task_table.sh's outputs.

Usage: python3 scripts/task_table.py [RESULTS_DIR]   (default docs/task-table)
Per model: HellaSwag acc_norm ± standard error for the source and each mix (llama.cpp +
imatrix vs lowbit GPTQ), the share of tasks where the quantized file picks the source's
ending, and the greedy-continuation similarity to the source (exact match, mean
first-divergence position, ROUGE-L, MiniLM cosine). Rows appear as their files exist.
"""
import json
import os
import sys

TYPES = ["Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XS"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def size_mb(out, name):
    """The file's size in MB: from the `.bytes` record task_table.sh keeps, else the GGUF."""
    rec, gguf = os.path.join(out, f"{name}.bytes"), os.path.join(out, f"{name}.gguf")
    if os.path.exists(rec):
        with open(rec) as f:
            return f"{int(f.read()) / 1e6:.1f}"
    return f"{os.path.getsize(gguf) / 1e6:.1f}" if os.path.exists(gguf) else "–"


def main(out):
    models = sorted({n.split("-source.hellaswag.json")[0] for n in os.listdir(out) if n.endswith("-source.hellaswag.json")})
    for model in models:
        src = load(os.path.join(out, f"{model}-source.hellaswag.json"))
        n = src["tasks"]
        print(f"\n{model}: HellaSwag acc_norm on {n} tasks (source {100 * src['acc_norm']['value']:.2f} ± {100 * src['acc_norm']['err']:.2f} %)\n")
        print("| mix | MB llama.cpp / lowbit | acc_norm llama.cpp + imatrix | acc_norm lowbit GPTQ | same choice as source llama.cpp / lowbit |")
        print("|---|---:|---:|---:|---:|")
        gen_rows = []
        for t in TYPES:
            cells, agree, mb = [], [], []
            for tool in ("llama", "lowbit"):
                h = load(os.path.join(out, f"{model}-{tool}-{t}.hellaswag.json"))
                g = load(os.path.join(out, f"{model}-{tool}-{t}.generate.json"))
                mb.append(size_mb(out, f"{model}-{tool}-{t}"))
                if h is None:
                    cells.append("–")
                    agree.append("–")
                else:
                    cells.append(f"{100 * h['acc_norm']['value']:.2f} ± {100 * h['acc_norm']['err']:.2f} %")
                    same = sum(a == b for a, b in zip(h["choices"], src["choices"]))
                    agree.append(f"{100 * same / len(src['choices']):.1f} %")
                if g is not None:
                    gen_rows.append((t, tool, g))
            print(f"| {t} | {' / '.join(mb)} | {cells[0]} | {cells[1]} | {' / '.join(agree)} |")
        if gen_rows:
            g0 = gen_rows[0][2]
            print(f"\n{model}: greedy continuations of {g0['prompts']} bundled prompts, {g0['max_tokens']} tokens, against the source's\n")
            print("| mix | tool | exact match | first divergence (mean / median tokens) | ROUGE-L | MiniLM cosine |")
            print("|---|---|---:|---:|---:|---:|")
            for t, tool, g in gen_rows:
                name = "llama.cpp + imatrix" if tool == "llama" else "lowbit GPTQ"
                print(
                    f"| {t} | {name} | {100 * g['exact_match']:.1f} % | {g['first_divergence_mean']:.1f} / {g['first_divergence_median']:.1f} "
                    f"| {g['rouge_l']:.3f} | {g['semantic_similarity']:.3f} |"
                )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/task-table")
