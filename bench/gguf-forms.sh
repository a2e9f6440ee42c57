#!/usr/bin/env bash
# Issue 16's comparison, in one run: Qwen2.5-Coder-0.5B as the f16 directory, its Q8_0
# form (scripts/requantize.py from the Q4_K_M file, as llama-quantize --allow-requantize)
# and the Q4_K_M GGUF as shipped, each at its minimum budget (the smallest device it runs
# on: about half of each form's bytes is below every minimum, because lm_head and the
# substitutes stay resident), plain and SubSpec, then load times without a draft.
#
#   bash bench/gguf-forms.sh [LIMIT] [MAX_NEW]      (docs/BENCHMARKS.md has the figures)
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT="${1:-3}"
MAX_NEW="${2:-64}"
Q4=models/.cache/gguf/Qwen2.5-Coder-0.5B-Instruct.gguf
Q8=models/.cache/derived/qwen2.5-coder-0.5b-instruct-q8_0.gguf
F16=models/qwen2.5-coder-0.5b-instruct
bash scripts/fetch-models.sh qwen2.5-coder-0.5b-instruct
bash scripts/fetch-models.sh qwen2.5-coder-0.5b-instruct --gguf Q8_0
cargo build --release --quiet -p subspec-cli
bin=./target/release/subspec
for m in "$F16" "$Q8" "$Q4"; do
    echo "== $m"
    "$bin" plan --model "$m" --budget min --ctx-len 2048 | grep -E '^(total|streamed)'
    "$bin" bench --model "$m" --budget min --ctx-len 2048 --limit "$LIMIT" --max-new "$MAX_NEW" --own-baseline | tail -7
done
echo "== load time, everything resident, no draft (best of 3: weights and tokenizer, one token)"
python3 - "$bin" "$F16" "$Q8" "$Q4" models/smollm2-135m-instruct \
    models/.cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m \
    models/.cache/gguf/gemma-3-270m-Q4_K_M.gguf <<'PY'
import subprocess, sys, time
bin, models = sys.argv[1], sys.argv[2:]
for m in models:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([bin, "generate", "--model", m, "--prompt", "Hi", "-n", "1", "--no-spec"],
                       check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    print(f"{m:<60} {best:.2f} s")
PY
