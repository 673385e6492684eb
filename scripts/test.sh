#!/usr/bin/env bash
# Runs lowbit's whole test suite on a fresh machine: fetches the zoo models the tests use,
# makes a throwaway Python venv with the reference `gguf` package (llama.cpp's own Python
# port, used to check bit-exact dequantization), then `cargo test`. Under CI
# (CI=true) a missing model or reference fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every phase prints how long it took (and the total at the end), so a slow step shows in
# every CI log.
phase_name="" phase_start=$SECONDS
phase() {
    [ -z "$phase_name" ] || echo "== $phase_name: $((SECONDS - phase_start)) s"
    phase_name="$1" phase_start=$SECONDS
    [ -z "$1" ] || echo "== $1 (free disk: $(df -h . | awk 'NR==2 {print $4}'))"
}
trap 'rc=$?; phase ""; echo "== total: $SECONDS s (exit $rc; free disk: $(df -h . | awk "NR==2 {print \$4}"))"' EXIT

# Every phase also prints the free disk: a full disk shows up as odd pip or linker failures.
# CI builds once from a clean clone: incremental caches would only cost disk (GBs).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

export LOWBIT_HOME="${LOWBIT_HOME:-$PWD/target/lowbit-home}"
venv="$PWD/target/ref-venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import gguf, numpy" 2>/dev/null; then
    phase "making the reference venv ($venv)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "gguf==0.19.0" "numpy>=1.26"
fi
export LOWBIT_REF_PYTHON="$venv/bin/python"

phase "building lowbit"
cargo build --release --bin lowbit
for m in smollm2-135m gemma3-270m minilm-l6; do
    phase "fetching $m"
    ./target/release/lowbit fetch "$m"
done

# llama.cpp's llama-perplexity and llama-tokenize, built once from the source that PyPI's
# llama-cpp-python sdist vendors (the version BENCHMARKS.md uses): the interop tests run
# lowbit's quantized files in llama.cpp itself and compare token ids.
llama_dir="$PWD/target/llama.cpp"
# The sdist is fetched with its build backend (scikit-build-core) and cmake installed as
# wheels first and `--no-build-isolation`: otherwise pip builds cmake from source just to
# read the sdist's metadata (35+ minutes on 2 cores with an empty pip cache; issue 21).
# ggml's AMX kernels crash on these machines (BENCHMARKS.md), so they are compiled out;
# AVX-512 and the rest of GGML_NATIVE stay.
jobs=$(nproc 2>/dev/null || echo 2)
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
llama_cmake() {
    if [ -x "$venv/bin/cmake" ]; then
        echo "$venv/bin/cmake"
    elif command -v cmake >/dev/null; then
        command -v cmake
    else
        "$venv/bin/python" -m pip install -q --disable-pip-version-check cmake >&2 || return 1
        echo "$venv/bin/cmake"
    fi
}
build_llama_cpp() {
    local tmp cmake_bin
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip install -q --disable-pip-version-check cmake "scikit-build-core>=0.9" || return 1
    "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-build-isolation \
        --no-binary=:all: "llama-cpp-python==0.3.36" -d "$tmp" || return 1
    tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" || return 1
    rm -rf "$llama_dir"
    mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$llama_dir" || return 1
    rm -rf "$tmp"
    cmake_bin=$(llama_cmake) || return 1
    "$cmake_bin" -S "$llama_dir" -B "$llama_dir/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON \
        -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" > "$llama_dir/cmake.log" 2>&1 &&
        "$cmake_bin" --build "$llama_dir/build" --target llama-perplexity llama-tokenize -j "$jobs" \
            > "$llama_dir/build.log" 2>&1 &&
        echo "$no_amx" > "$llama_dir/build/lowbit-no-amx"
}
# A build from before the AMX flags (no marker file) is rebuilt once.
if [ ! -x "$llama_dir/build/bin/llama-perplexity" ] || [ ! -f "$llama_dir/build/lowbit-no-amx" ]; then
    phase "building llama.cpp's llama-perplexity and llama-tokenize from the llama-cpp-python 0.3.36 sdist (once)"
    build_llama_cpp || echo "WARNING: could not build llama.cpp (see $llama_dir/*.log); the llama.cpp interop tests will be skipped"
elif [ ! -x "$llama_dir/build/bin/llama-tokenize" ]; then
    phase "building llama.cpp's llama-tokenize"
    cmake_bin=$(llama_cmake)
    "$cmake_bin" --build "$llama_dir/build" --target llama-tokenize -j "$jobs" > "$llama_dir/build-tokenize.log" 2>&1 ||
        echo "WARNING: could not build llama-tokenize (see $llama_dir/build-tokenize.log)"
fi
if [ -x "$llama_dir/build/bin/llama-perplexity" ]; then
    export LOWBIT_LLAMA_BIN="$llama_dir/build/bin"
fi

# Headless Chromium (Debian package) renders the sweep's report.html in a test.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    phase "installing chromium (Debian) to render report.html"
    mkdir -p target
    # Package lists may be missing on a fresh image: refresh them once if the first try fails.
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; } \
        > target/apt-chromium.log 2>&1 ||
        echo "WARNING: could not install chromium (see target/apt-chromium.log); the report rendering check is skipped"
fi

if [ "${CI:-}" = "true" ]; then
    export LOWBIT_REQUIRE_REF=1 LOWBIT_REQUIRE_MODELS=1
    if command -v chromium >/dev/null; then export LOWBIT_REQUIRE_CHROMIUM=1; fi
fi
phase "cargo test"
cargo test --workspace "$@"
