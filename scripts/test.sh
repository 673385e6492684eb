#!/usr/bin/env bash
# Runs lowbit's whole test suite on a fresh machine: fetches the zoo models the tests use,
# makes a throwaway Python venv with the reference `gguf` package (llama.cpp's own Python
# port, used to check bit-exact dequantization), then `cargo test`. Under CI
# (CI=true) a missing model or reference fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export LOWBIT_HOME="${LOWBIT_HOME:-$PWD/target/lowbit-home}"
venv="$PWD/target/ref-venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import gguf, numpy" 2>/dev/null; then
    echo "== making the reference venv ($venv)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "gguf==0.19.0" "numpy>=1.26"
fi
export LOWBIT_REF_PYTHON="$venv/bin/python"

echo "== building"
cargo build --release --bin lowbit
for m in smollm2-135m gemma3-270m minilm-l6; do
    echo "== fetching $m"
    ./target/release/lowbit fetch "$m"
done

if [ "${CI:-}" = "true" ]; then
    export LOWBIT_REQUIRE_REF=1 LOWBIT_REQUIRE_MODELS=1
fi
echo "== cargo test"
cargo test --workspace "$@"
