#!/usr/bin/env bash
# KV-cache table: the KL divergence each KV-cache storage costs against an f32 cache (same
# model file, same text), and its bytes per position — lowbit's modes next to llama.cpp's
# own `-ctk/-ctv` cache types (llama-perplexity --kl-divergence against its own f32-cache
# base; V-cache quantization needs flash attention there, so both of its runs use -fa on).
# Usage: LLAMA_BIN=path/to/llama.cpp/build/bin [LOWBIT_BIN=…] [OUT=dir]
#        scripts/kv_table.sh MODEL CTX CHUNKS [MODES...]
# Prints TSV: model, ctx, tool, mode, bytes/position, PPL, mean KLD, KLD p99, top-1 %.
set -euo pipefail
model=$1; ctx=$2; chunks=$3; shift 3
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(f16 q8_0 q4_0 kvq4 kvq4o kvq3o kvq2o)
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
text=${TEXT:-$root/data/wikitext-2/wiki.valid.raw}
out=${OUT:-$(mktemp -d)}; mkdir -p "$out"
src=$("$lowbit" fetch "$model")
ref="$out/$model-$ctx-$(basename "$text")-f32.logits"
[ -f "$ref" ] || "$lowbit" eval --model "$src" --text "$text" --ctx "$ctx" --chunks "$chunks" --save-logits "$ref" >/dev/null 2>&1
for m in "${modes[@]}"; do
  "$lowbit" eval --model "$src" --reference "$ref" --text "$text" --kv-type "$m" --fresh --json 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); k=r['kld']
open('$out/$model-$ctx-$m.bytes','w').write(str(round(r['kv_cache']['bytes_per_position'])))
print('\t'.join(map(str,['$model',$ctx,'lowbit','$m',round(r['kv_cache']['bytes_per_position']),round(r['ppl'],4),round(k['mean'],6),round(k['percentiles']['p99'],5),round(100*k['top1_agreement'],2)])))"
done
if [ -n "${LLAMA_BIN:-}" ]; then
  base="$out/$model-$ctx-llama-f32.kld"
  [ -f "$base" ] || "$LLAMA_BIN/llama-perplexity" -m "$src" -f "$text" -c "$ctx" --chunks "$chunks" -t 2 -fa on \
    -ctk f32 -ctv f32 --kl-divergence-base "$base" >/dev/null 2>&1
  for m in "${modes[@]}"; do
    case $m in kvq*) continue ;; esac
    log="$out/$model-$ctx-llama-$m.log"
    "$LLAMA_BIN/llama-perplexity" -m "$src" -c "$ctx" -t 2 -fa on -ctk "$m" -ctv "$m" --kl-divergence-base "$base" \
      --kl-divergence > "$log" 2>&1
    python3 - "$log" "$model" "$ctx" "$m" <<'EOF'
import re, sys
log, model, ctx, m = sys.argv[1:]
t = open(log).read()
g = lambda pat: re.search(pat, t).group(1)  # noqa: E731
# Bytes per position: the same ggml rows as lowbit's run of this type stores.
per = open(log.replace("-llama-" + m + ".log", "-" + m + ".bytes")).read()
print("\t".join(map(str, [model, ctx, "llama.cpp", m, per, g(r"Mean PPL\(Q\)\s*:\s*([\d.]+)"),
      g(r"Mean\s+KLD:\s*(-?[\d.]+)"), g(r"99\.0%\s+KLD:\s*([\d.]+)"), g(r"Same top p:\s*([\d.]+)")])))
EOF
  done
fi
