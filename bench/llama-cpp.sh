#!/usr/bin/env bash
# subspec's kernels against llama.cpp's, side by side in one run (issue 14): the pinned
# llama.cpp (scripts/llama-cpp.sh, with llama-bench) and `subspec bench --kernels` on the
# same F16 GGUF of each test model (gguf-py writes them from the test models' GGUFs),
# the same threads:
#   decode   llama-bench tg32 against subspec's plain decode step (after a 16-token prompt)
#   pp16     llama-bench pp16 (16 tokens in one batch, empty context, the last token's
#            logits) against subspec's forward of 16 prompt tokens on top of a 16-token
#            prompt (the last row's logits)
#   pp64     the same with 64 tokens
# and subspec's forward of 16 and 64 tree tokens, every row's logits (what verifying a
# tree costs; llama-bench has no such figure).
# Ratios are subspec / llama.cpp in speed (above 1: subspec is faster).
#
#   bash bench/llama-cpp.sh [THREADS]      # default 2
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
bash scripts/llama-cpp.sh llama-bench
[[ -x target/release/subspec ]] || cargo build --release -p subspec-cli
mkdir -p target/llama-adapter
out=target/llama-adapter/kernels.jsonl
: >"$out"
for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct; do
    bash scripts/fetch-models.sh "$m" --gguf F16 >&2
    f16=models/.cache/derived/$m-f16.gguf
    echo "== $m: llama-bench" >&2
    lb=$(target/llama.cpp/build/bin/llama-bench -m "$f16" -t "$threads" -p 16,64 -n 32 -r 5 -o json 2>/dev/null)
    echo "== $m: subspec bench --kernels" >&2
    s16=$(target/release/subspec bench --model "$f16" --threads "$threads" --ctx-len 2048 --kernels --json \
        --tree-tokens 16 --decode-tokens 32 --reps 5)
    s64=$(target/release/subspec bench --model "$f16" --threads "$threads" --ctx-len 2048 --kernels --json \
        --tree-tokens 64 --decode-tokens 32 --reps 5)
    python3 - "$m" "$lb" "$s16" "$s64" >>"$out" <<'EOF'
import json, sys
m, lb, s16, s64 = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
row = {"model": m}
for t in lb:
    if t["n_gen"] > 0:
        row["llama_decode_tps"] = t["avg_ts"]
    else:
        row[f"llama_pp{t['n_prompt']}_ms"] = t["n_prompt"] / t["avg_ts"] * 1e3
row["subspec_decode_tps"] = (s16["decode_tokens_per_s"] + s64["decode_tokens_per_s"]) / 2
for p, s in ((16, s16), (64, s64)):
    row[f"subspec_pp{p}_ms"] = s["forward_prompt_ms"]
    row[f"subspec_tree{p}_ms"] = s["forward_tree_ms"]
print(json.dumps(row))
EOF
done
python3 - "$out" "$threads" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{sys.argv[2]} threads; ratio = subspec speed / llama.cpp speed\n")
print("| model | | llama.cpp | subspec | ratio |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['model']} | decode | {r['llama_decode_tps']:.1f} tok/s | {r['subspec_decode_tps']:.1f} tok/s "
          f"| {r['subspec_decode_tps'] / r['llama_decode_tps']:.2f}x |")
    for p in (16, 64):
        l, s = r[f"llama_pp{p}_ms"], r[f"subspec_pp{p}_ms"]
        print(f"| {r['model']} | {p} prompt tokens in one forward | {l:.1f} ms | {s:.1f} ms | {l / s:.2f}x |")
    for p in (16, 64):
        print(f"| {r['model']} | {p} tree tokens, every row's logits | | {r[f'subspec_tree{p}_ms']:.1f} ms | |")
EOF
