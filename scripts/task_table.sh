#!/usr/bin/env bash
# README's task-accuracy and generation tables: HellaSwag acc_norm (llama.cpp's draw of
# TASKS tasks) and greedy-continuation similarity to the source, for the source and for
# each mix made two ways — llama.cpp (llama-imatrix + llama-quantize --imatrix) and lowbit
# (GPTQ with `lowbit quantize --stats`), both calibrated on the same Austen text
# (BENCHMARKS.md: emma, persuasion, sense and sensibility; 64 chunks of 512 tokens).
# Every step writes its own file under OUT and is skipped when that file exists, and
# `lowbit eval --task hellaswag` journals finished tasks: rerun the same command after an
# interruption and it continues.
# Usage: LLAMA_BIN=path/to/llama.cpp/build/bin [LOWBIT_BIN=…] [OUT=dir] [TASKS=2000]
#        [PROMPTS=64] [GEN=64] scripts/task_table.sh MODEL [TYPES...]
# Then: python3 scripts/task_table.py [RESULTS]   (prints the markdown tables; default
# docs/task-table, where finished measurements are copied and committed)
set -euo pipefail
model=$1; shift
types=("$@"); [ ${#types[@]} -gt 0 ] || types=(Q8_0 Q4_K_M Q3_K_M Q2_K IQ2_XS)
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
tasks=${TASKS:-2000}; prompts=${PROMPTS:-64}; gen=${GEN:-64}
out=${OUT:-$root/target/task-table}; mkdir -p "$out"
# Finished measurements (small JSON files and file sizes) are also kept in RESULTS, which is
# committed: a later run on another machine starts from them.
results=${RESULTS:-$root/docs/task-table}; mkdir -p "$results"
cp -n "$results"/* "$out"/ 2>/dev/null || true
austen=("$root/data/austen/emma.txt" "$root/data/austen/persuasion.txt" "$root/data/austen/sense-and-sensibility.txt")
src=$("$lowbit" fetch "$model")
cat "${austen[@]}" > "$out/austen.txt"
imatrix="$out/$model-llama.imatrix"; stats="$out/$model-stats.safetensors"
[ -f "$imatrix" ] || "$LLAMA_BIN/llama-imatrix" -m "$src" -f "$out/austen.txt" -c 512 --chunks 64 -t 2 \
  -o "$imatrix" --output-format gguf >/dev/null 2>&1
[ -f "$stats" ] || "$lowbit" calibrate --model "$src" --text "${austen[@]}" --chunks 64 -o "$stats" >/dev/null 2>&1
measure() { # name file
  local j="$out/$model-$1.hellaswag.json" g="$out/$model-$1.generate.json"
  # The file's size is kept beside its results, so the tables can be printed (and the
  # results committed) without the GGUF files.
  stat -c %s "$2" > "$out/$model-$1.bytes"
  [ -f "$j" ] || { "$lowbit" eval --model "$2" --task hellaswag --tasks "$tasks" --json > "$j.part" && mv "$j.part" "$j"; }
  if [ "$1" != source ] && [ ! -f "$g" ]; then
    "$lowbit" eval --model "$2" --generate prompts --prompts "$prompts" -n "$gen" --reference "$src" --json > "$g.part"
    mv "$g.part" "$g"
  fi
  cp "$j" "$out/$model-$1.bytes" "$results"/
  if [ -f "$g" ]; then cp "$g" "$results"/; fi
  echo "$(date +%T) $model $1 done" >&2
}
measure source "$src"
for t in "${types[@]}"; do
  f="$out/$model-llama-$t.gguf"
  [ -f "$f" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize --imatrix "$imatrix" "$src" "$f" "$t" 2 >/dev/null 2>&1
  measure "llama-$t" "$f"
  f="$out/$model-lowbit-$t.gguf"
  [ -f "$f" ] || "$lowbit" quantize --model "$src" --type "$t" --stats "$stats" --method gptq -o "$f" >/dev/null
  measure "lowbit-$t" "$f"
done
