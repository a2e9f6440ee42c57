#!/usr/bin/env bash
# Builds the pinned llama.cpp: the source that the llama-cpp-python sdist on PyPI vendors
# (version and sha256 below), configured with CMake into target/llama.cpp/build. Only
# libllama and ggml (what bindings/llama.cpp needs) unless more targets are named:
#
#   bash scripts/llama-cpp.sh                 # libllama + ggml
#   bash scripts/llama-cpp.sh llama-bench     # and the benchmark tool
#
# Reuses the source and the build when they are there (CMake rebuilds only what changed).
# Logs go to target/llama.cpp/{cmake,build}.log (shown on failure); the tree is target/llama.cpp/src, the
# libraries are in target/llama.cpp/build/bin. Needs python3 with pip, cmake and a C++17
# compiler (scripts/test-bindings.sh installs them on a fresh Debian machine).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dir="$PWD/target/llama.cpp"
src="$dir/src"
mkdir -p "$dir"

if [[ ! -f "$src/.subspec-$VERSION" ]]; then
    sdist="$dir/llama_cpp_python-$VERSION.tar.gz"
    if [[ ! -f "$sdist" ]] || ! echo "$SHA256  $sdist" | sha256sum -c --status; then
        echo "== downloading llama-cpp-python $VERSION (sdist) from PyPI"
        python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$dir"
    fi
    if ! echo "$SHA256  $sdist" | sha256sum -c --status; then
        echo "llama-cpp.sh: $sdist: sha256 $(sha256sum "$sdist" | cut -d' ' -f1), expected $SHA256" >&2
        exit 1
    fi
    rm -rf "$src" "$dir/unpack"
    mkdir -p "$dir/unpack"
    tar -xzf "$sdist" -C "$dir/unpack" "llama_cpp_python-$VERSION/vendor/llama.cpp"
    mv "$dir/unpack/llama_cpp_python-$VERSION/vendor/llama.cpp" "$src"
    rm -rf "$dir/unpack"
    touch "$src/.subspec-$VERSION"
fi

if [[ ! -f "$dir/build/CMakeCache.txt" ]]; then
    cmake -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >"$dir/cmake.log" 2>&1 ||
        { cat "$dir/cmake.log" >&2; exit 1; }
fi
targets=(llama "$@")
if [[ " $* " == *" llama-bench "* ]]; then
    # llama-bench is a tool: configure with the tools (and the common library they need).
    cmake "$dir/build" -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON >>"$dir/cmake.log" 2>&1
fi
cmake --build "$dir/build" -j "$(nproc)" --target "${targets[@]}" >"$dir/build.log" 2>&1 ||
    { tail -40 "$dir/build.log" >&2; echo "llama-cpp.sh: the build failed ($dir/build.log)" >&2; exit 1; }
[[ -f "$dir/build/bin/libllama.so" ]] || { echo "llama-cpp.sh: libllama.so was not built" >&2; exit 1; }
