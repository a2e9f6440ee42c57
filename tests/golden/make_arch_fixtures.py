#!/usr/bin/env python3
"""Golden fixtures for the architectures beyond the two trained test models.

For each entry of ARCHS: a tiny random-weight model built by transformers from a
real-shaped config (the same keys a real checkpoint of that family has), saved with
`save_pretrained` (so config.json is exactly what current transformers writes, in its
`rope_parameters` form), weights rounded to float16, and the float32 CPU reference:
logits at every position of a fixed prompt and a 16-token greedy continuation.

    /work/refvenv/bin/python tests/golden/make_arch_fixtures.py     # see tests/golden/README.md

Writes tests/golden/arch/<name>/{config.json, model.safetensors, expected.json} and, for
the architectures llama.cpp converts (not the windowed Mistral), the same float16 weights
as <name>/model.gguf, written with gguf-py the way llama.cpp's convert_hf_to_gguf.py does
(llama.cpp tensor names, q/k rows permuted for the llama architecture, Llama 3's scaling
as a `rope_freqs` tensor of per-frequency divisors).
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from safetensors.numpy import load_file

OUT = Path("tests/golden/arch")
VOCAB = 128
PROMPT_LEN = 40
N_GREEDY = 16

COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, hidden_act="silu",
)

# Gemma 3 text: what its configs set (no `hidden_act`: Gemma reads `hidden_activation`).
GEMMA = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=2,
    num_key_value_heads=1, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
    bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
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
    # Head dimension 32 (2 heads, 1 kv head), which the CUDA kernels need (multiples of
    # 32): the CUDA parity tests run these (tests/cuda.rs), with a quantized GGUF.
    "llama3.1-hd32": ("llama", dict(COMMON, num_attention_heads=2, num_key_value_heads=1,
                                    rope_theta=500000.0, tie_word_embeddings=False,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32})),
    "mistral-window-hd32": ("mistral", dict(COMMON, num_attention_heads=2, num_key_value_heads=1,
                                            rope_theta=10000.0, tie_word_embeddings=False,
                                            sliding_window=8)),
    # Gemma 3 as the 4B+ are: 6 layers (five local with a window shorter than the prompt,
    # then a global one: the default pattern), local RoPE base 10000, global base 1e6
    # with linear scaling 8, head_dim 32, tied embeddings; GeLU-tanh and (1 + w) norms
    # are the architecture's own.
    "gemma3": ("gemma3_text", dict(GEMMA, num_hidden_layers=6, sliding_window=8,
                                   query_pre_attn_scalar=32,
                                   rope_parameters={
                                       "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                          "rope_theta": 1000000.0},
                                       "sliding_attention": {"rope_type": "default",
                                                             "rope_theta": 10000.0}})),
    # query_pre_attn_scalar other than head_dim (as Gemma 3 27B), explicit layer types.
    # Directory only: llama.cpp derives the scalar from the model size.
    "gemma3-scalar": ("gemma3_text", dict(GEMMA, num_hidden_layers=2, sliding_window=12,
                                          query_pre_attn_scalar=48,
                                          layer_types=["sliding_attention", "full_attention"])),
}


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


# The block types gguf-py can quantize to, one per kind of tensor (for model-q.gguf).
QUANT = {
    "attn_q": gguf.GGMLQuantizationType.Q8_0, "attn_k": gguf.GGMLQuantizationType.Q8_0,
    "attn_v": gguf.GGMLQuantizationType.Q4_0, "attn_output": gguf.GGMLQuantizationType.Q4_1,
    "ffn_gate": gguf.GGMLQuantizationType.Q5_0, "ffn_up": gguf.GGMLQuantizationType.Q5_0,
    "ffn_down": gguf.GGMLQuantizationType.Q5_1, "token_embd": gguf.GGMLQuantizationType.Q8_0,
}


# Gemma 3's layer norms as llama.cpp names them (its `ffn_norm` is the MLP's input norm).
GEMMA3_NORMS = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}


def write_gguf(d: Path, model_type: str, config, quantized: bool = False) -> None:
    """The model as GGUF: model.gguf (f16 matrices), or with `quantized` model-q.gguf
    (matrices in the block types of QUANT, for the CUDA parity tests)."""
    arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
            "gemma3_text": "gemma3"}[model_type]
    names = dict(GGUF_NAMES, **GEMMA3_NORMS) if arch == "gemma3" else GGUF_NAMES
    w = gguf.GGUFWriter(str(d / ("model-q.gguf" if quantized else "model.gguf")), arch)
    c = config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters
    if arch == "gemma3":
        # As convert_hf_to_gguf.py Gemma3Model: the global layers' RoPE (llama.cpp fixes
        # the local base at 10000 and the pattern at every sixth layer global).
        rope = rope["full_attention"]
        assert c.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
        assert c.layer_types == ["sliding_attention" if (i + 1) % 6 else "full_attention"
                                 for i in range(c.num_hidden_layers)]
        w.add_sliding_window(c.sliding_window)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    tensors = load_file(str(d / "model.safetensors"))
    if rope.get("rope_type") == "llama3":
        # As convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: 1 / the scaling.
        base = rope["rope_theta"]
        freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        lo_w, hi_w = old / lo, old / hi
        factors = []
        for f in freqs:
            wl = 2 * np.pi / f
            if wl < hi_w:
                factors.append(1)
            elif wl > lo_w:
                factors.append(factor)
            else:
                smooth = (old / wl - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    for name, t in sorted(tensors.items()):
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            g = f"blk.{layer}.{names[module]}.{kind}"
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = permute(t, c.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            t = permute(t, c.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            # The converter stores Gemma's (1 + w) norm weights with the 1 added.
            t = t.astype(np.float32) + np.float32(1.0)
        # Norms as F32, matrices as F16 (what the converter writes for an f16 model).
        kind = g.split(".")[-2] if g.startswith("blk.") else g.split(".")[0]
        if t.ndim == 1:
            w.add_tensor(g, t.astype(np.float32))
        elif quantized and kind in QUANT:
            q = gguf.quants.quantize(t.astype(np.float32), QUANT[kind])
            w.add_tensor(g, q, raw_shape=q.shape, raw_dtype=QUANT[kind])
        else:
            w.add_tensor(g, t.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quantized_reference(d: Path, ref, prompt) -> None:
    """expected-q.json: float32 logits of the model whose weights are model-q.gguf's,
    dequantized by gguf-py (q/k un-permuted), so the quantized GGUF path has an exact
    reference too."""
    from gguf.quants import dequantize
    reader = gguf.GGUFReader(str(d / "model-q.gguf"))
    c = ref.config
    inv = {v: k for k, v in GGUF_NAMES.items()}
    state = ref.state_dict()
    with torch.no_grad():
        for t in reader.tensors:
            if t.name == "rope_freqs.weight":
                continue
            a = dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape.tolist())])
            if t.name == "token_embd.weight":
                hf = "model.embed_tokens.weight"
            elif t.name == "output_norm.weight":
                hf = "model.norm.weight"
            elif t.name == "output.weight":
                hf = "lm_head.weight"
            else:
                _, layer, what, kind = t.name.split(".")
                hf = f"model.layers.{layer}.{inv[what]}.{kind}"
                if what == "attn_q":
                    a = permute_back(a, c.num_attention_heads)
                elif what == "attn_k":
                    a = permute_back(a, c.num_key_value_heads)
            state[hf].copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
        logits = ref(torch.tensor([prompt])).logits[0].float()
    (d / "expected-q.json").write_text(json.dumps(
        {"prompt": prompt, "logits": [[float(x) for x in row] for row in logits.tolist()]}) + "\n")


def permute_back(w, n_head):
    """The inverse of `permute`."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


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
        if not name.startswith("mistral-window") and name != "gemma3-scalar":
            write_gguf(d, model_type, ref.config)
        if name in ("llama3.1", "llama3.1-hd32"):
            write_gguf(d, model_type, ref.config, quantized=True)
            write_quantized_reference(d, ref, prompt)
        print(f"{name}: {d} ({sum(f.stat().st_size for f in d.iterdir())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
