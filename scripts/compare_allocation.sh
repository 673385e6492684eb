#!/usr/bin/env bash
# lowbit's allocation to a size (`lowbit quantize --size <bytes> --llama-cpp --calib …`)
# against llama.cpp + imatrix at the size of each llama.cpp mix (issue 18's protocol):
# both calibrated on the Austen text (BENCHMARKS.md: emma, persuasion, sense and sensibility,
# 64 chunks of 512 tokens), every file evaluated by `lowbit eval` against the source on
# wiki.valid (CHUNKS chunks of 512). The source runs once (`--save-logits`); llama.cpp's
# files are made once and kept in OUT.
# Usage: LLAMA_BIN=path/to/llama.cpp/build/bin [LOWBIT_BIN=lowbit] [OUT=dir] [NATIVE=1]
#        scripts/compare_allocation.sh MODEL [CHUNKS] [MIXES...]
# NATIVE=1 adds a row per mix for the allocation over all of lowbit's formats (no
# `--llama-cpp`: lowbit-native group formats are candidates too).
# Prints one TSV row per file: model, mix, tool, bytes, seconds (quantize), PPL, KLD mean,
# p99, top-1 %, and for lowbit the predicted KLD of its allocation.
set -euo pipefail
model=$1; chunks=${2:-40}; shift 2 || true
mixes=("$@"); [ ${#mixes[@]} -gt 0 ] || mixes=(Q2_K Q3_K_S Q3_K_M Q4_K_S Q4_K_M IQ2_XS IQ3_XXS IQ4_XS)
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
text="$root/data/wikitext-2/wiki.valid.raw"
austen=("$root/data/austen/emma.txt" "$root/data/austen/persuasion.txt" "$root/data/austen/sense-and-sensibility.txt")
src=$("$lowbit" fetch "$model")
out=${OUT:-$root/target/allocation}
mkdir -p "$out"
cat "${austen[@]}" > "$out/austen.txt"
ref="$out/$model-source-$chunks.logits"
[ -f "$ref" ] || "$lowbit" eval --model "$src" --text "$text" --chunks "$chunks" --save-logits "$ref" >/dev/null 2>&1
[ -f "$out/$model-llama.imatrix" ] || "$LLAMA_BIN/llama-imatrix" -m "$src" -f "$out/austen.txt" -c 512 --chunks 64 -t 2 \
  -o "$out/$model-llama.imatrix" --output-format gguf >/dev/null 2>&1
row() { # mix tool file seconds predicted
  local j
  j=$("$lowbit" eval --model "$3" --reference "$ref" --text "$text" --chunks "$chunks" --json 2>/dev/null)
  python3 -c "
import json,sys,os
r=json.loads(sys.argv[1]); k=r['kld']
print('\t'.join(map(str,['$model','$1','$2',os.path.getsize('$3'),round($4,1),round(r['ppl'],4),round(k['mean'],6),round(k['percentiles']['p99'],5),round(100*k['top1_agreement'],3),'$5'])))" "$j"
}
for m in "${mixes[@]}"; do
  f="$out/$model-llama-$m.gguf"
  s=$(date +%s.%N)
  [ -f "$f" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize --imatrix "$out/$model-llama.imatrix" "$src" "$f" "$m" 2 >/dev/null 2>&1
  row "$m" llama+imatrix "$f" "$(echo "$(date +%s.%N) - $s" | bc)" ""
  size=$(stat -c %s "$f")
  g="$out/$model-lowbit-size-$m.gguf"
  s=$(date +%s.%N)
  "$lowbit" quantize --model "$src" --size "$size" --llama-cpp --calib "${austen[@]}" -o "$g" \
    --report "$g.json" --save-recipe "$g.recipe" >/dev/null
  predicted=$(python3 -c "import json; print(round(json.load(open('$g.json'))['recipe']['predicted_kld'],5))")
  row "$m" lowbit-size "$g" "$(echo "$(date +%s.%N) - $s" | bc)" "$predicted"
  rm -f "$g"
  if [ "${NATIVE:-0}" = 1 ]; then
    g="$out/$model-lowbit-native-$m.gguf"
    s=$(date +%s.%N)
    "$lowbit" quantize --model "$src" --size "$size" --calib "${austen[@]}" -o "$g" \
      --report "$g.json" --save-recipe "$g.recipe" >/dev/null
    predicted=$(python3 -c "import json; print(round(json.load(open('$g.json'))['recipe']['predicted_kld'],5))")
    row "$m" lowbit-native "$g" "$(echo "$(date +%s.%N) - $s" | bc)" "$predicted"
    rm -f "$g"
  fi
done
