#!/usr/bin/env bash
# The main job (README): fetch a small model, build, generate, print the speed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
PROMPT="${PROMPT:-Write a Python function that checks whether a string is a palindrome.}"
N="${N:-96}"

bash scripts/fetch-models.sh "$MODEL"
cargo build --release --quiet
./target/release/subspec generate --model "models/$MODEL" --chat --prompt "$PROMPT" -n "$N"
