#!/usr/bin/env python3
"""Generate golden fixtures for subspec's Rust tests with Hugging Face transformers.

Run from the repository root, after scripts/fetch-models.sh, with a Python that has
torch + transformers + tokenizers (see tests/golden/README.md):

    python tests/golden/make_golden.py [MODEL_DIR_NAME...]

For each converted model under models/ (f16 weights, loaded as float32 on CPU,
eager attention) it writes tests/golden/<model-dir-name>/fixture.json plus one
raw little-endian float32 file of full-vocabulary logits per prompt.
"""

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]
# Models whose reference is the f32 conversion (models/f32/, written by
# `scripts/fetch-models.sh --dtype f32 --out models/f32`, the GGUF dequantized by gguf-py)
# and whose Rust tests load the GGUF itself (bit-identical to that conversion: tests/gguf.rs).
# Gemma 3 has no chat template: its turn markers go in as text (control tokens).
F32_GGUF = {"gemma-3-270m": "models/.cache/gguf/gemma-3-270m-Q4_K_M.gguf"}
GEMMA_TURNS = ("<start_of_turn>user\nWhat is the capital of France? Answer in one short "
               "sentence.<end_of_turn>\n<start_of_turn>model\n")
N_TOP = 20
N_GREEDY = 48

PROMPTS = [
    ("english", "The old lighthouse keeper climbed the narrow stairs every evening, and", False),
    ("code", "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n", False),
    ("chat", "What is the capital of France? Answer in one short sentence.", True),
]

PPL_FILE = "tests/golden/ppl.txt"


def f32(x) -> float:
    """Shortest decimal that round-trips to the same float32."""
    return float(str(np.float32(x)))


def top_k(logits: np.ndarray, k: int):
    # descending logit, ties -> lowest id
    order = np.lexsort((np.arange(logits.shape[0]), -logits.astype(np.float64)))[:k]
    return {"ids": [int(i) for i in order], "logits": [f32(logits[i]) for i in order]}


def forward(model, ids):
    out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).numpy()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def make(name: str, models_root: Path, out_root: Path) -> None:
    gguf_file = F32_GGUF.get(name)
    model_dir = (models_root / "f32" if gguf_file else models_root) / name
    print(f"=== {name} ({model_dir})", flush=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if gguf_file:
        # The reference tokenizer is transformers' own reading of the GGUF (which
        # tests/golden/make_spm_fixtures.py checks against SentencePiece).
        g = Path(gguf_file)
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = json.loads((model_dir / "config.json").read_text())
    vocab_size = int(model.config.vocab_size)
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)

    def encode(text, add_special_tokens):
        ids = tok(text, add_special_tokens=add_special_tokens).input_ids
        ids2 = raw.encode(text, add_special_tokens=add_special_tokens).ids
        if ids != ids2:
            raise SystemExit(f"error: transformers tokenizer and tokenizer.json disagree on {text!r}")
        return ids

    prompts = []
    model_prompts = PROMPTS if not gguf_file else PROMPTS[:2] + [("turns", GEMMA_TURNS, False)]
    for pname, text, template in model_prompts:
        if template:
            text = tok.apply_chat_template([{"role": "user", "content": text}],
                                           add_generation_prompt=True, tokenize=False)
            ids = encode(text, add_special_tokens=False)
        else:
            ids = encode(text, add_special_tokens=True)
        logits = forward(model, ids)
        assert logits.shape == (len(ids), vocab_size), logits.shape
        top = [top_k(logits[i], N_TOP) for i in range(len(ids))]
        last_file = f"{pname}.last.f32"
        logits[-1].astype("<f4").tofile(out_dir / last_file)

        # manual greedy loop, full recompute each step, ties -> lowest id, no EOS stop
        seq = list(ids)
        greedy, margins = [], []
        step_logits = logits[-1]
        for step in range(N_GREEDY):
            nxt = int(np.argmax(step_logits))  # first max = lowest id
            s = np.sort(step_logits.astype(np.float64))
            margins.append(float(s[-1] - s[-2]))
            greedy.append(nxt)
            seq.append(nxt)
            if step + 1 < N_GREEDY:
                step_logits = forward(model, seq)[-1]
        entry = {"name": pname, "text": text}
        if template:
            entry["template"] = True
        entry.update({
            "ids": ids,
            "top": top,
            "last_logits_file": last_file,
            "greedy": greedy,
            "greedy_text": tok.decode(greedy),
            "argmax_margin_min": round(min(margins), 6),
            "argmax_margin_min_step": int(np.argmin(margins)),
            "argmax_margins": [round(m, 6) for m in margins],
        })
        print(f"  {pname}: {len(ids)} tokens, margin_min={min(margins):.4f}, "
              f"greedy={tok.decode(greedy)!r}", flush=True)
        prompts.append(entry)

    text = Path(PPL_FILE).read_text(encoding="utf-8")
    ids = encode(text, add_special_tokens=True)
    logits = forward(model, ids).astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    mean_nll = float(nll.mean())
    ppl = math.exp(mean_nll)
    print(f"  perplexity: n_tokens={len(ids)} mean_nll={mean_nll:.6f} ppl={ppl:.4f}", flush=True)

    if gguf_file:
        # The f32 conversion is the GGUF exactly: transformers' own GGUF loader agrees.
        g = Path(gguf_file)
        direct = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name,
                                                      dtype=torch.float32,
                                                      attn_implementation="eager").eval()
        ids0 = prompts[0]["ids"]
        d = np.abs(forward(direct, ids0) - forward(model, ids0)).max()
        print(f"  transformers on the GGUF vs on the f32 conversion: max |diff| {d}", flush=True)
        assert d == 0, d

    fixture = {
        "model_dir": str(model_dir),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "weights_dtype": cfg.get("torch_dtype"),
        "compute_dtype": "float32",
        "model_safetensors_sha256": sha256_file(model_dir / "model.safetensors"),
        **({"engine_path": gguf_file, "gguf_sha256": sha256_file(Path(gguf_file))}
           if gguf_file else {}),
        "vocab_size": vocab_size,
        "n_top": N_TOP,
        "n_greedy": N_GREEDY,
        "prompts": prompts,
        "perplexity": {
            "text_file": PPL_FILE,
            "ids": ids,
            "n_tokens": len(ids),
            "mean_nll": mean_nll,
            "ppl": ppl,
        },
    }
    with open(out_dir / "fixture.json", "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"  wrote {out_dir / 'fixture.json'}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--models-root", default="models")
    ap.add_argument("--out", default="tests/golden")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    for m in args.models:
        make(m, Path(args.models_root), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
