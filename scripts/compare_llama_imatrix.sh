#!/usr/bin/env bash
# Side-by-side with calibration: lowbit (round-to-nearest, search, importance-weighted
# search, GPTQ) vs llama.cpp with its importance matrix (llama-imatrix + llama-quantize),
# both calibrated on the same Austen text (BENCHMARKS.md: emma, persuasion, sense and
# sensibility, 64 chunks of 512 tokens) and evaluated by `lowbit eval` against the source
# on wiki.valid. The source runs once (`--save-logits`).
# Usage: LLAMA_BIN=path/to/llama.cpp/build/bin [LOWBIT_BIN=lowbit] [METHODS="rtn search importance gptq"]
#        scripts/compare_llama_imatrix.sh MODEL [CHUNKS] [TYPES...]
# Prints one TSV row per file: model, type, tool/method, bytes, seconds (quantize; for
# gptq/importance plus the shared calibration), PPL, KLD mean, p99, top-1 %.
set -euo pipefail
model=$1; chunks=${2:-40}; shift 2 || true
types=("$@"); [ ${#types[@]} -gt 0 ] || types=(Q4_K_M Q3_K_M Q3_K_S Q2_K IQ4_XS)
methods=${METHODS:-rtn search importance gptq}
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
text="$root/data/wikitext-2/wiki.valid.raw"
austen=("$root/data/austen/emma.txt" "$root/data/austen/persuasion.txt" "$root/data/austen/sense-and-sensibility.txt")
src=$("$lowbit" fetch "$model")
out=${OUT:-$(mktemp -d)}
cat "${austen[@]}" > "$out/austen.txt"
ref="$out/$model-source.logits"
[ -f "$ref" ] || "$lowbit" eval --model "$src" --text "$text" --chunks "$chunks" --save-logits "$ref" >/dev/null 2>&1
s=$(date +%s.%N)
[ -f "$out/$model-llama.imatrix" ] || "$LLAMA_BIN/llama-imatrix" -m "$src" -f "$out/austen.txt" -c 512 --chunks 64 -t 2 \
  -o "$out/$model-llama.imatrix" --output-format gguf >/dev/null 2>&1
llama_cal=$(echo "$(date +%s.%N) - $s" | bc)
s=$(date +%s.%N)
[ -f "$out/$model-stats.safetensors" ] || "$lowbit" calibrate --model "$src" --text "${austen[@]}" --chunks 64 \
  -o "$out/$model-stats.safetensors" >/dev/null 2>&1
lowbit_cal=$(echo "$(date +%s.%N) - $s" | bc)
echo -e "# calibration seconds: llama-imatrix $llama_cal, lowbit calibrate (with Hessians) $lowbit_cal" >&2
row() { # type tool file seconds
  j=$("$lowbit" eval --model "$3" --reference "$ref" --text "$text" --chunks "$chunks" --json 2>/dev/null)
  python3 -c "
import json,sys,os
r=json.loads(sys.argv[1]); k=r['kld']
print('\t'.join(map(str,['$model','$1','$2',os.path.getsize('$3'),round($4,2),round(r['ppl'],4),round(k['mean'],6),round(k['percentiles']['p99'],5),round(100*k['top1_agreement'],3)])))" "$j"
  rm -f "$3"
}
for t in "${types[@]}"; do
  f="$out/$model-llama-$t.gguf"; s=$(date +%s.%N)
  "$LLAMA_BIN/llama-quantize" --allow-requantize --imatrix "$out/$model-llama.imatrix" "$src" "$f" "$t" 2 >/dev/null 2>&1
  row "$t" llama+imatrix "$f" "$(echo "$(date +%s.%N) - $s" | bc)"
  for m in $methods; do
    f="$out/$model-lowbit-$m-$t.gguf"; s=$(date +%s.%N)
    case $m in
      rtn|search) "$lowbit" quantize --model "$src" --type "$t" --method "$m" -o "$f" >/dev/null ;;
      *) "$lowbit" quantize --model "$src" --type "$t" --stats "$out/$model-stats.safetensors" --method "$m" -o "$f" >/dev/null ;;
    esac
    row "$t" "lowbit-$m" "$f" "$(echo "$(date +%s.%N) - $s" | bc)"
  done
done
