#!/usr/bin/env bash
# Runs both fuzz targets for SECONDS each (default 600) on stable Rust via RUSTC_BOOTSTRAP.
# Any single allocation over 1 GiB or RSS over 2 GiB counts as a crash.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
for t in gguf_reader safetensors_header; do
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536
done
