# Sourced by the scripts that build against the pinned llama.cpp (scripts/test-llama-cpp.sh,
# bench/llama-cpp-adapter.sh): builds it (scripts/llama-cpp.sh, reused when built), then
# sets `llama_src`, `llama_bin`, `work` (target/llama-adapter) and the compiler arguments
# `adapter_flags` (include paths: subspec, its C++ binding, the adapter, llama.cpp, ggml,
# llama.cpp's vendored headers) and `adapter_libs` (libsubspec, libllama and ggml, with
# their rpaths). Expects the repository root as the working directory.
root="$PWD"
bash scripts/llama-cpp.sh
llama_src="$root/target/llama.cpp/src"
llama_bin="$root/target/llama.cpp/build/bin"
work="$root/target/llama-adapter"
mkdir -p "$work"
[[ -f target/release/libsubspec.so ]] || cargo build --release --lib
adapter_flags=(-std=c++17 -Wall -Wextra -Werror -I include -I bindings/cpp -I bindings/llama.cpp
               -I "$llama_src/include" -I "$llama_src/ggml/include" -I "$llama_src/vendor")
adapter_libs=(-L target/release -lsubspec -L "$llama_bin" -lllama -lggml -lggml-base
              "-Wl,-rpath,$root/target/release" "-Wl,-rpath,$llama_bin")
