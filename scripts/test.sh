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

# llama.cpp's llama-perplexity and llama-tokenize, built once from the source that PyPI's
# llama-cpp-python sdist vendors (the version BENCHMARKS.md uses): the interop tests run
# lowbit's quantized files in llama.cpp itself and compare token ids.
llama_dir="$PWD/target/llama.cpp"
build_llama_cpp() {
    local tmp cmake_bin
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
        "llama-cpp-python==0.3.36" -d "$tmp" || return 1
    tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" || return 1
    rm -rf "$llama_dir"
    mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$llama_dir" || return 1
    rm -rf "$tmp"
    cmake_bin=$(command -v cmake || true)
    if [ -z "$cmake_bin" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check cmake || return 1
        cmake_bin="$venv/bin/cmake"
    fi
    "$cmake_bin" -S "$llama_dir" -B "$llama_dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$llama_dir/cmake.log" 2>&1 &&
        "$cmake_bin" --build "$llama_dir/build" --target llama-perplexity llama-tokenize -j 2 > "$llama_dir/build.log" 2>&1
}
if [ ! -x "$llama_dir/build/bin/llama-perplexity" ]; then
    echo "== building llama.cpp's llama-perplexity and llama-tokenize from the llama-cpp-python 0.3.36 sdist (once, ~6 min)"
    build_llama_cpp || echo "WARNING: could not build llama.cpp (see $llama_dir/*.log); the llama.cpp interop tests will be skipped"
elif [ ! -x "$llama_dir/build/bin/llama-tokenize" ]; then
    echo "== building llama.cpp's llama-tokenize"
    cmake_bin=$(command -v cmake || echo "$venv/bin/cmake")
    "$cmake_bin" --build "$llama_dir/build" --target llama-tokenize -j 2 > "$llama_dir/build-tokenize.log" 2>&1 ||
        echo "WARNING: could not build llama-tokenize (see $llama_dir/build-tokenize.log)"
fi
if [ -x "$llama_dir/build/bin/llama-perplexity" ]; then
    export LOWBIT_LLAMA_BIN="$llama_dir/build/bin"
fi

if [ "${CI:-}" = "true" ]; then
    export LOWBIT_REQUIRE_REF=1 LOWBIT_REQUIRE_MODELS=1
fi
echo "== cargo test"
cargo test --workspace "$@"
