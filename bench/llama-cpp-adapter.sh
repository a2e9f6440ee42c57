#!/usr/bin/env bash
# The llama.cpp adapter's speed (docs/BENCHMARKS.md): bindings/llama.cpp/bench.cpp on the
# F16 GGUF of Qwen2.5-Coder-0.5B (gguf-py dequantizes the Q4_K_M test model and writes F16,
# as `llama-quantize --allow-requantize ... F16` would), llama.cpp's own decoding and the
# adapter resident and offloaded, greedy and a top-p/temperature chain, in one run.
#
#   bash bench/llama-cpp-adapter.sh [bench args: -n 64 --requests 4 --budget 720 --threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama-cpp-env.sh
bash scripts/fetch-models.sh qwen2.5-coder-0.5b-instruct --gguf F16
f16=models/.cache/derived/qwen2.5-coder-0.5b-instruct-f16.gguf
c++ "${adapter_flags[@]}" -O2 bindings/llama.cpp/bench.cpp "${adapter_libs[@]}" -o "$work/bench"
"$work/bench" -m "$f16" --prompts bench/prompts.jsonl "$@"
