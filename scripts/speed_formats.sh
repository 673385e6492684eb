#!/usr/bin/env bash
# Generation speed of lowbit's own formats against llama.cpp's file of about the same
# size, as the README's second speed table reports it: for each PAIR "LOWBIT.gguf:LLAMA.gguf",
# `lowbit bench -p 0 -n 128` on the first and `llama-bench -p 0 -n 128` on the second,
# 2 threads, interleaved over ROUNDS rounds of 2 repetitions each.
#
# Usage: scripts/speed_formats.sh [ROUNDS] LOWBIT.gguf:LLAMA.gguf…
#   e.g. scripts/speed_formats.sh 2 smollm2-int4_g64.gguf:smollm2-Q4_0.gguf \
#        smollm2-vq4x256+128.gguf:smollm2-IQ2_XS.gguf
#   LLAMA_BIN: folder holding llama-bench (default target/llama.cpp/build/bin);
#   LOWBIT: the binary (default target/release/lowbit).
set -euo pipefail
rounds=2
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
llama_bin="${LLAMA_BIN:-$PWD/target/llama.cpp/build/bin}"
lowbit="${LOWBIT:-$PWD/target/release/lowbit}"
export LD_LIBRARY_PATH="$llama_bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "| file | lowbit tg128 | llama.cpp file | llama.cpp tg128 | ratio |"
echo "|---|---:|---|---:|---:|"
for pair in "$@"; do
    ours=${pair%%:*}; theirs=${pair#*:}
    lt=(); ct=()
    for _ in $(seq "$rounds"); do
        lt+=("$("$lowbit" bench -m "$ours" -t 2 -r 2 -p 0 -n 128 --json | jq -r .tg)")
        ct+=("$("$llama_bin/llama-bench" -m "$theirs" -t 2 -p 0 -n 128 -r 2 -o json 2>/dev/null | jq -r '.[0].avg_ts')")
    done
    python3 - "$(basename "$ours")" "$(basename "$theirs")" "${lt[*]}" "${ct[*]}" <<'PY'
import sys
ours, theirs, lt, ct = sys.argv[1:]
lt, ct = [[float(v) for v in c.split()] for c in (lt, ct)]
m = lambda v: sum(v) / len(v)
print(f"| {ours} | {m(lt):.1f} | {theirs} | {m(ct):.1f} | {m(lt)/m(ct):.2f}× |")
PY
done
