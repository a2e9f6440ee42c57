#!/usr/bin/env python3
"""Golden fixtures for the architectures beyond the two trained test models.

For each entry of ARCHS: a tiny random-weight model built by transformers from a
real-shaped config (the same keys a real checkpoint of that family has), saved with
`save_pretrained` (so config.json is exactly what current transformers writes, in its
`rope_parameters` form), weights rounded to float16, and the float32 CPU reference:
logits at every position of a fixed prompt and a 16-token greedy continuation.

    /work/refvenv/bin/python tests/golden/make_arch_fixtures.py     # see tests/golden/README.md

Writes tests/golden/arch/<name>/{config.json, model.safetensors, expected.json}.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

OUT = Path("tests/golden/arch")
VOCAB = 128
PROMPT_LEN = 40
N_GREEDY = 16

COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, hidden_act="silu",
)

ARCHS = {
    # Llama 3.1: llama3 rope scaling; original context short enough that the prompt's
    # positions are past the bounds where the scaling matters.
    "llama3.1": ("llama", dict(COMMON, rope_theta=500000.0, tie_word_embeddings=False,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 32})),
    # Llama 3.2: tied embeddings, llama3 scaling (factor 32 as in 3.2 1B).
    "llama3.2": ("llama", dict(COMMON, rope_theta=500000.0, tie_word_embeddings=True,
                               rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 32})),
    # Linear position interpolation.
    "llama-linear": ("llama", dict(COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                                   rope_scaling={"rope_type": "linear", "factor": 4.0})),
    # Qwen2 as transformers 5 saves it: rope_theta only inside rope_parameters (a loader
    # that ignored that key would use the default 10000 and compute wrong logits).
    "qwen2": ("qwen2", dict(COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
                            use_sliding_window=False)),
    # Qwen3: q/k norms, head_dim 32 with hidden 64 and 4 heads (q_proj is 128 wide).
    "qwen3": ("qwen3", dict(COMMON, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=True,
                            attention_bias=False, use_sliding_window=False)),
    # Mistral without a window, and with one shorter than the prompt.
    "mistral": ("mistral", dict(COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
                                sliding_window=None)),
    "mistral-window": ("mistral", dict(COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                                       sliding_window=8)),
}


def main() -> int:
    names = sys.argv[1:] or list(ARCHS)
    for name in names:
        model_type, kw = ARCHS[name]
        torch.manual_seed(1234)
        config = AutoConfig.for_model(model_type, **kw)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                # Larger than the default init so the logits are not all near zero.
                p.copy_(torch.randn_like(p) * 0.08 + (1.0 if p.dim() == 1 else 0.0))
        model = model.half()
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        for extra in ("generation_config.json",):
            (d / extra).unlink(missing_ok=True)
        ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        ref.eval()
        g = torch.Generator().manual_seed(99)
        prompt = torch.randint(2, VOCAB, (PROMPT_LEN,), generator=g).tolist()
        with torch.no_grad():
            logits = ref(torch.tensor([prompt])).logits[0].float()
            ids = list(prompt)
            greedy = []
            for _ in range(N_GREEDY):
                nxt = int(ref(torch.tensor([ids])).logits[0, -1].float().argmax())
                greedy.append(nxt)
                ids.append(nxt)
        expected = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "prompt": prompt,
            "logits": [[float(x) for x in row] for row in logits.tolist()],
            "greedy": greedy,
        }
        (d / "expected.json").write_text(json.dumps(expected) + "\n")
        print(f"{name}: {d} ({sum(f.stat().st_size for f in d.iterdir())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
