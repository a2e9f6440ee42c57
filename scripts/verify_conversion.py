#!/usr/bin/env python3
"""Cross-check scripts/fetch_models.py output against transformers' own GGUF loader.

Run with a Python that has torch + transformers + gguf, e.g.
    /tmp/refvenv/bin/python scripts/verify_conversion.py [--root models] [MODEL...]

For each model it loads (a) the converted HF directory and (b) the original GGUF
(models/.cache/gguf/*.gguf) through `from_pretrained(..., gguf_file=...)`, both in
float32 with eager attention, and compares logits on a few prompts and the token
ids of our tokenizer.json vs transformers' GGUF tokenizer on a set of strings.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

GGUF = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder-0.5B-Instruct.gguf",
}

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village near the mountains, there lived",
    "1, 2, 3, 5, 8, 13, 21,",
]

TOK_STRINGS = [
    "Hello world",
    " Hello world",
    "  leading spaces and trailing  ",
    "The quick brown fox jumps over the lazy dog.",
    "def foo(x):\n    return x * 2\n\n\nclass Bar:\n\tpass\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i]; }",
    "1234567890 3.14159 1e-5 0x1F 2024-05-01",
    "héllo wörld, naïve café — “quotes” ‘single’ … ©®™",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Emoji: 🤗🚀👍🏽 and 🇫🇷",
    "Ελληνικά και русский текст",
    "\n\nnewlines\r\nand\ttabs\n",
    "I'm you're we've they'll he'd IT'S",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|im_end|>",
    "   ",
    "a\u00a0b\u200bc",
    "e\u0301 vs \u00e9 (NFC)",
    "https://example.com/path?q=1&r=two#frag",
    "x" * 50 + " " + "ab" * 20,
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "[PAD151665] <|fim_prefix|>def<|fim_suffix|><|fim_middle|>",
    "<jupyter_code>print(1)<file_sep>",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(GGUF))
    ap.add_argument("--root", default="models")
    ap.add_argument("--gguf-dir", default="models/.cache/gguf")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__} transformers {transformers.__version__}")
    ok = True
    for key in args.models:
        d = Path(args.root) / key
        dtype = json.loads((d / "config.json").read_text()).get("torch_dtype")
        print(f"=== {key} ({d}, stored {dtype})")
        ours = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        ref = AutoModelForCausalLM.from_pretrained(args.gguf_dir, gguf_file=GGUF[key], dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        tok_ours = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
        tok_auto = AutoTokenizer.from_pretrained(d)
        tok_ref = AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=GGUF[key])
        print(f"ref tokenizer: {type(tok_ref).__name__}, ours via AutoTokenizer: {type(tok_auto).__name__}")

        worst = 0.0
        for p in PROMPTS:
            ids = tok_ref(p, add_special_tokens=False, return_tensors="pt").input_ids
            a = ours(ids).logits[0]
            b = ref(ids).logits[0]
            diff = (a - b).abs().max().item()
            scale = b.abs().max().item()
            same_top = bool((a.argmax(-1) == b.argmax(-1)).all())
            worst = max(worst, diff)
            print(f"  logits {p[:30]!r:34} n={ids.shape[1]:3d} max|diff|={diff:.3e} (max|logit|={scale:.1f}) "
                  f"argmax-equal={same_top}")
        print(f"  worst max|diff| = {worst:.3e}")

        n_bad = 0
        for s in TOK_STRINGS:
            a = tok_ours(s, add_special_tokens=True).input_ids
            a2 = tok_auto(s, add_special_tokens=True).input_ids
            b = tok_ref(s, add_special_tokens=True).input_ids
            dec = tok_ours.decode(a)
            if a != b or a2 != a:
                n_bad += 1
                print(f"  TOKEN MISMATCH {s!r}:\n    ours {a}\n    auto {a2}\n    ref  {b}")
            if dec != s:
                print(f"  (decode(encode) differs: {s!r} -> {dec!r})")
        # chat template, both ways
        msgs = [{"role": "user", "content": "Write a haiku about Rust."}]
        ca = tok_auto.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        cb = tok_ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        if ca != cb:
            n_bad += 1
            print(f"  CHAT TEMPLATE MISMATCH:\n{ca!r}\n{cb!r}")
        ia = tok_ours(ca, add_special_tokens=False).input_ids
        ib = tok_ref(cb, add_special_tokens=False).input_ids
        if ia != ib:
            n_bad += 1
            print(f"  CHAT TOKEN MISMATCH\n    ours {ia}\n    ref  {ib}")
        total = len(TOK_STRINGS) + 2
        print(f"  tokenizer: {total - n_bad}/{total} agree")
        ok = ok and n_bad == 0
        del ours, ref
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
