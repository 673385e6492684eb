#!/usr/bin/env bash
# Side-by-side: lowbit quantize vs llama-quantize (no imatrix) on the same source, both
# files evaluated by `lowbit eval` against the source on wiki.valid (BENCHMARKS.md). The
# source runs once (`--save-logits`); every file is compared with its saved distributions.
# Usage: LLAMA_BIN=path/to/llama.cpp/build/bin [LOWBIT_BIN=lowbit] scripts/compare_llama_quantize.sh MODEL [CHUNKS] [TYPES...]
# Prints one TSV row per type: model, type, tool, bytes, quantize seconds, PPL, KLD mean, p99, top-1.
set -euo pipefail
model=$1; chunks=${2:-40}; shift 2 || true
types=("$@"); [ ${#types[@]} -gt 0 ] || types=(Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K Q8_0 Q4_0 IQ4_NL IQ4_XS)
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
text="$root/data/wikitext-2/wiki.valid.raw"
src=$("$lowbit" fetch "$model")
out=${OUT:-$(mktemp -d)}
ref="$out/$model-source.logits"
"$lowbit" eval --model "$src" --text "$text" --chunks "$chunks" --save-logits "$ref" >/dev/null 2>&1
for t in "${types[@]}"; do
  for tool in lowbit llama; do
    f="$out/$model-$tool-$t.gguf"
    s=$(date +%s.%N)
    if [ $tool = lowbit ]; then "$lowbit" quantize --model "$src" --type "$t" -o "$f" >/dev/null
    else "$LLAMA_BIN/llama-quantize" --allow-requantize "$src" "$f" "$t" 2 >/dev/null 2>&1; fi
    secs=$(echo "$(date +%s.%N) - $s" | bc)
    j=$("$lowbit" eval --model "$f" --reference "$ref" --text "$text" --chunks "$chunks" --json 2>/dev/null)
    python3 -c "
import json,sys,os
r=json.loads(sys.argv[1]); k=r['kld']
print('\t'.join(map(str,['$model','$t','$tool',os.path.getsize('$f'),round($secs,2),round(r['ppl'],4),round(k['mean'],6),round(k['p99'],5),round(100*k['top1_agreement'],3)])))" "$j"
    rm -f "$f"
  done
done
rm -f "$ref"
