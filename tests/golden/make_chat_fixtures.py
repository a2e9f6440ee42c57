#!/usr/bin/env python3
"""Chat-template fixtures: what transformers' `apply_chat_template` renders for a few
conversations with each test model's own template (tokenizer_config.json written by
scripts/fetch-models.sh), so tests/chat.rs can check our MiniJinja rendering.

    /work/refvenv/bin/python tests/golden/make_chat_fixtures.py
"""

import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in French."},
     {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4."},
     {"role": "user", "content": "  And 3+3?  \n"}],
    [{"role": "user", "content": "Unicode: ünïcødé 你好 🙂 and <|im_start|> inside text"}],
]


def main() -> int:
    out = {"transformers": transformers.__version__, "models": {}}
    for m in MODELS:
        tok = AutoTokenizer.from_pretrained(f"models/{m}")
        cases = []
        for conv in CONVERSATIONS:
            for gen in (True, False):
                text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                cases.append({"messages": conv, "add_generation_prompt": gen, "text": text})
        out["models"][m] = cases
    Path("tests/golden/chat_templates.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
