#!/usr/bin/env bash
# What each equivalent transform (`lowbit quantize --transform …`, issue 18) adds to an
# allocation at a size: every row quantizes MODEL with `--size SIZE --llama-cpp
# --transform T --calib <Austen ×3>` and evaluates the file against the *original* source
# on wiki.valid (CHUNKS chunks of 512; the source runs once, `--save-logits`).
# A TRANSFORM ending in `+lrR` also adds a rank-R low-rank branch (`--low-rank R`), one
# ending in `+inc` (before any `+lrR`) per-layer incoherence (`--incoherence`) — lowbit
# files only: use FLAGS="" — e.g. `none+lr16`, `awq+inc`, `none+inc+lr8`.
# Usage: [LOWBIT_BIN=lowbit] [OUT=dir] [FLAGS=--llama-cpp]
#        scripts/transform_table.sh MODEL CHUNKS SIZE[,SIZE…] TRANSFORM[,TRANSFORM…]
# Prints one TSV row per file: model, size, transform, bytes, seconds (quantize), PPL,
# KLD mean, p99, top-1 %, predicted KLD.
set -euo pipefail
model=$1; chunks=$2; IFS=, read -ra sizes <<< "$3"; IFS=, read -ra transforms <<< "$4"
root=$(cd "$(dirname "$0")/.." && pwd)
lowbit=${LOWBIT_BIN:-$root/target/release/lowbit}
flags=${FLAGS---llama-cpp}
text="$root/data/wikitext-2/wiki.valid.raw"
austen=("$root/data/austen/emma.txt" "$root/data/austen/persuasion.txt" "$root/data/austen/sense-and-sensibility.txt")
src=$("$lowbit" fetch "$model")
out=${OUT:-$root/target/allocation}
mkdir -p "$out"
ref="$out/$model-source-$chunks.logits"
[ -f "$ref" ] || "$lowbit" eval --model "$src" --text "$text" --chunks "$chunks" --save-logits "$ref" >/dev/null 2>&1
for size in "${sizes[@]}"; do
  for t in "${transforms[@]}"; do
    g="$out/$model-transform-$t-$size.gguf"
    lr=(); tr=$t
    if [[ $tr == *+lr* ]]; then lr=(--low-rank "${tr##*+lr}"); tr=${tr%+lr*}; fi
    if [[ $tr == *+inc ]]; then lr+=(--incoherence); tr=${tr%+inc}; fi
    s=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$lowbit" quantize --model "$src" --size "$size" $flags --transform "$tr" "${lr[@]}" --calib "${austen[@]}" \
      -o "$g" --report "$g.json" >/dev/null
    secs=$(echo "$(date +%s.%N) - $s" | bc)
    j=$("$lowbit" eval --model "$g" --reference "$ref" --text "$text" --chunks "$chunks" --json 2>/dev/null)
    python3 -c "
import json,sys,os
r=json.loads(sys.argv[1]); k=r['kld']; p=json.load(open('$g.json'))['recipe']['predicted_kld']
print('\t'.join(map(str,['$model','$size','$t',os.path.getsize('$g'),round($secs,1),round(r['ppl'],4),round(k['mean'],6),round(k['percentiles']['p99'],5),round(100*k['top1_agreement'],3),round(p,5)])))" "$j"
    rm -f "$g"
  done
done
