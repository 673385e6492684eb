#!/usr/bin/env bash
# Guards refactors that must not change what lowbit writes (issue 15): quantizes a fixed
# list of (model, setting) pairs with the given binary and compares each file's sha256
# with the values recorded in scripts/identical_outputs.sha256 by the binary from before
# the change. Calibration uses the first 8 chunks of emma.txt, to keep the run short.
#
#   scripts/identical_outputs.sh [BINARY] [--record]
#
# Floating-point results can depend on the CPU's vector width (gemm picks AVX2 or
# AVX-512 at run time), so the recorded values hold for the machine kind they were taken
# on: record on the same machine before and check after.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/lowbit}"
record="${2:-}"
sums=scripts/identical_outputs.sha256
export LOWBIT_HOME="${LOWBIT_HOME:-$PWD/target/lowbit-home}"
calib=(--calib data/austen/emma.txt --calib-chunks 8 --no-sequential)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # name, then quantize arguments
    local name=$1
    shift
    "$bin" quantize "$@" -o "$out/$name.gguf" > "$out/$name.log" 2>&1 || { cat "$out/$name.log"; exit 1; }
    (cd "$out" && sha256sum "$name.gguf")
}

{
    run smollm2-Q4_K_M --model smollm2-135m --type Q4_K_M
    run smollm2-IQ4_XS --model smollm2-135m --type IQ4_XS
    run smollm2-int4_g64 --model smollm2-135m --type int4_g64
    run smollm2-IQ2_XS-gptq --model smollm2-135m --type IQ2_XS "${calib[@]}"
    run smollm2-vq4x256+128-gptq --model smollm2-135m --type vq4x256+128 "${calib[@]}"
    run smollm2-Q4_K_M-sequential --model smollm2-135m --type Q4_K_M --calib data/austen/emma.txt --calib-chunks 4 --sequential
    run gemma3-Q3_K_M-gptq --model gemma3-270m --type Q3_K_M "${calib[@]}"
} > "$out/sums"

if [ "$record" = "--record" ]; then
    cp "$out/sums" "$sums"
    cat "$sums"
    echo "recorded $sums"
else
    if diff "$sums" "$out/sums"; then
        echo "all $(wc -l < "$sums") files byte-identical"
    else
        echo "FILES DIFFER (< recorded, > now)"
        exit 1
    fi
fi
