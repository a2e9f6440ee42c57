#!/usr/bin/env bash
# The main job (README): fetch a small model, build, generate the same answer with and
# without speculation, and print the speedup. Output is identical by construction.
# The model is loaded straight from a GGUF file: the test model ships as Q4_K_M, which at
# 0.5B parameters leaves offloading almost nothing to stream, so fetch-models.sh writes
# its F16 form (every matrix dequantized by gguf-py and stored as F16, as
# `llama-quantize --allow-requantize ... F16` does), the form a user offloads.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
PROMPT="${PROMPT:-Write a Python function that checks whether a string is a palindrome.}"
N="${N:-64}"
# A budget below the model's 1.27 GB: most decoder layers are streamed from disk (O_DIRECT)
# on every target pass, as offloaded inference streams them over PCIe.
BUDGET="${BUDGET:-720MiB}"

bash scripts/fetch-models.sh "$MODEL" --gguf F16
GGUF="models/.cache/derived/$MODEL-f16.gguf"
cargo build --release --quiet
bin=./target/release/subspec
args=(--model "$GGUF" --budget "$BUDGET" --ctx-len 2048 --chat --prompt "$PROMPT" -n "$N")

echo "== SubSpec's placement (4-bit substitutes of every layer resident)"
"$bin" plan --model "$GGUF" --budget "$BUDGET" --ctx-len 2048 | tail -10
echo "== plain decoding's placement (no draft: the budget holds more full-precision layers)"
"$bin" plan --model "$GGUF" --budget "$BUDGET" --ctx-len 2048 --no-spec | tail -2

echo "== plain offloaded decoding (one streamed target pass per token)"
"$bin" generate "${args[@]}" --no-spec --json > /tmp/subspec-demo-plain.json
echo "== SubSpec: 4-bit substitute draft, one target pass verifies each draft"
"$bin" generate "${args[@]}" --spec --json > /tmp/subspec-demo-spec.json
python3 - /tmp/subspec-demo-plain.json /tmp/subspec-demo-spec.json <<'PY'
import json, sys
plain, spec = (json.load(open(p)) for p in sys.argv[1:3])
print(spec["text"])
print()
same = plain["generated_tokens"] == spec["generated_tokens"]
print(f"plain:    {plain['tokens_per_s']:.2f} tokens/s")
print(f"SubSpec:  {spec['tokens_per_s']:.2f} tokens/s, tau {spec['tau']:.2f} tokens per target pass")
print(f"speedup:  {spec['tokens_per_s'] / plain['tokens_per_s']:.2f}x; identical output: {same}")
sys.exit(0 if same else 1)
PY
