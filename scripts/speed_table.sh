#!/usr/bin/env bash
# Speed of lowbit's quantized runtime against llama-bench on the same GGUF files, 2
# threads, interleaved (lowbit, llama.cpp, lowbit, llama.cpp, … for each file), as the
# README's speed table reports it.
#
# Usage: scripts/speed_table.sh [ROUNDS] FILE.gguf…
#   LLAMA_BIN: folder holding llama-bench (default target/llama.cpp/build/bin, which
#   scripts/test.sh builds); LOWBIT: the binary (default target/release/lowbit).
# Prints a markdown table: pp512 and tg128 tokens/s of both (mean over rounds of each
# tool's own mean over 2 repetitions) and lowbit's ratio.
set -euo pipefail
rounds=3
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
llama_bin="${LLAMA_BIN:-$PWD/target/llama.cpp/build/bin}"
lowbit="${LOWBIT:-$PWD/target/release/lowbit}"
export LD_LIBRARY_PATH="$llama_bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "| file | lowbit pp512 | llama.cpp pp512 | ratio | lowbit tg128 | llama.cpp tg128 | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for f in "$@"; do
    lp=(); lt=(); cp=(); ct=()
    for _ in $(seq "$rounds"); do
        j=$("$lowbit" bench -m "$f" -t 2 -r 2 --json)
        lp+=("$(jq -r .pp <<<"$j")"); lt+=("$(jq -r .tg <<<"$j")")
        j=$("$llama_bin/llama-bench" -m "$f" -t 2 -p 512 -n 128 -r 2 -o json 2>/dev/null)
        cp+=("$(jq -r '.[] | select(.n_prompt > 0) | .avg_ts' <<<"$j")")
        ct+=("$(jq -r '.[] | select(.n_gen > 0) | .avg_ts' <<<"$j")")
    done
    python3 - "$(basename "$f")" "${lp[*]}" "${cp[*]}" "${lt[*]}" "${ct[*]}" <<'PY'
import sys
name, *cols = sys.argv[1:]
lp, cp, lt, ct = [[float(v) for v in c.split()] for c in cols]
m = lambda v: sum(v) / len(v)
print(f"| {name} | {m(lp):.1f} | {m(cp):.1f} | {m(lp)/m(cp):.2f}× | {m(lt):.1f} | {m(ct):.1f} | {m(lt)/m(ct):.2f}× |")
PY
done
