#!/usr/bin/env bash
# bindings/llama.cpp against the pinned, real llama.cpp (scripts/llama-cpp.sh builds it
# once into target/llama.cpp):
#   test      bindings/llama.cpp/test.cpp, built with ASan + UBSan (LeakSanitizer at exit):
#             the vocabulary check, greedy against llama.cpp's own decoding of the same
#             F16 GGUF, speculative == plain for sampler chains and a JSON grammar, errors
#   simple    the `simple` example decodes a prompt through subspec
# Needs target/release/libsubspec.so (cargo build --release), the test models
# (scripts/fetch-models.sh, which also installs gguf-py), cmake and a C++17 compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp-env.sh

# The F16 GGUF both decode: gguf-py dequantizes SmolLM2's Q4_1 matrices and writes them
# as F16 (what `llama-quantize --allow-requantize ... F16` does); one token renamed in a
# copy, for the vocabulary check.
bash scripts/fetch-models.sh smollm2-135m-instruct --gguf F16
f16=models/.cache/derived/smollm2-135m-instruct-f16.gguf
renamed="$work/smollm2-renamed.gguf"
[[ -f "$renamed" ]] || python3 bindings/llama.cpp/rename_token.py "$f16" "$renamed" 1000 renamed-token

c++ "${adapter_flags[@]}" -I tests/c -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer bindings/llama.cpp/test.cpp "${adapter_libs[@]}" -o "$work/test"
c++ "${adapter_flags[@]}" -O2 bindings/llama.cpp/simple.cpp "${adapter_libs[@]}" -o "$work/simple"

echo "== llama.cpp adapter: test (ASan + UBSan)"
"$work/test" --f16 "$f16" --renamed "$renamed" \
    --other models/.cache/gguf/Qwen2.5-Coder-0.5B-Instruct.gguf \
    --other models/.cache/gguf/gemma-3-270m-Q4_K_M.gguf \
    --json-grammar "$llama_src/grammars/json.gbnf" 2>&1 | grep -v -E "^(llama_|gguf_init)"
echo "== llama.cpp adapter: simple"
out=$("$work/simple" -m "$f16" -n 24 "The three primary colours are")
echo "$out"
[[ "$out" == "The three primary colours are"?* ]] || { echo "simple: no continuation" >&2; exit 1; }
