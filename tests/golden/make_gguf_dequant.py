#!/usr/bin/env python3
"""Golden fixtures for the GGUF reference dequantizers (src/checkpoint/gguf/ggml.rs).

Writes tests/golden/gguf/: index.json and, per case, `<case>.bin` (the raw block
bytes) and `<case>.f32` (what gguf-py's `gguf.quants.dequantize` makes of them,
float32 little-endian). The Rust test `checkpoint::gguf::golden` dequantizes the same
bytes and compares bit for bit.

It also writes checksums.json: for every tensor of both test files, a 64-bit
polynomial hash of the bits of the whole tensor dequantized by gguf-py (row-major,
h = sum_i (bits_i + 1) * M^(i+1) mod 2^64, M = 0x9E3779B97F4A7C15), so the Rust
test checks every weight of both models bit for bit without storing them.

Two kinds of case:
  - "file": rows of one tensor of every type present in the two test GGUFs under
    models/.cache/gguf/ (the Rust test also checks that the rows it reads from the
    file are these bytes, so it covers the parser's offsets too);
  - "synthetic": for every supported type, random blocks (random bytes with every f16
    scale/minimum field set to a random *finite* f16, subnormals and zeros included;
    F16/BF16/F32: any bits, NaNs included) and, where gguf-py can quantize the type,
    blocks quantized from random normal data.

Usage: python3 tests/golden/make_gguf_dequant.py   (gguf==0.17.1, numpy; deterministic)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "gguf"
GGUF_DIR = ROOT / "models" / ".cache" / "gguf"

FILES = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", {
        "Q4_1": "blk.0.attn_q.weight",
        "Q8_0": "token_embd.weight",
        "F32": "blk.0.attn_norm.weight",
    }),
    "qwen2": ("Qwen2.5-Coder-0.5B-Instruct.gguf", {
        "Q5_0": "blk.0.attn_q.weight",
        "Q8_0": "output.weight",
        "Q6_K": "blk.0.ffn_down.weight",
        "Q4_K": None,  # the first Q4_K tensor in the file
        "F32": "blk.0.attn_q.bias",
    }),
}

SUPPORTED = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]

# Byte offsets of the f16 scale/minimum fields inside one block.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_case(cases: list, case: dict, raw: np.ndarray, deq: np.ndarray) -> None:
    name = case["case"]
    (OUT / f"{name}.bin").write_bytes(np.ascontiguousarray(raw).tobytes())
    (OUT / f"{name}.f32").write_bytes(np.ascontiguousarray(deq, dtype="<f4").tobytes())
    case["elements"] = int(deq.size)
    cases.append(case)


def file_cases(cases: list) -> None:
    for key, (fname, picks) in FILES.items():
        path = GGUF_DIR / fname
        if not path.exists():
            sys.exit(f"error: {path} is missing (run scripts/fetch-models.sh)")
        reader = gguf.GGUFReader(str(path))
        for tname, tensor in picks.items():
            if tensor is None:
                tensor = next(t.name for t in reader.tensors if t.tensor_type.name == tname)
            t = next(t for t in reader.tensors if t.name == tensor)
            assert t.tensor_type.name == tname, (tensor, t.tensor_type.name)
            cols = int(t.shape[0])  # ggml ne[0]
            data = t.data.reshape((-1, t.data.shape[-1]))
            n_rows = data.shape[0]
            rows = [0] if n_rows == 1 else ([0, n_rows - 1] if cols > 2048 else [0, 1, n_rows - 1])
            raw = data[rows]
            deq = dequantize(raw, t.tensor_type).astype(np.float32, copy=False)
            assert deq.shape == (len(rows), cols), deq.shape
            write_case(cases, {
                "case": f"{key}.{tname.lower()}",
                "kind": "file",
                "source": fname,
                "source_sha256": sha256(path),
                "tensor": tensor,
                "type": tname,
                "rows": rows,
                "cols": cols,
            }, raw, deq)


HASH_M = np.uint64(0x9E3779B97F4A7C15)


def bits_hash(a: np.ndarray) -> int:
    bits = np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64) + np.uint64(1)
    acc, pw = np.uint64(0), np.uint64(1)
    with np.errstate(over="ignore"):
        for s in range(0, bits.size, 1 << 20):
            c = bits[s:s + (1 << 20)]
            p = np.cumprod(np.full(c.size, HASH_M, dtype=np.uint64)) * pw
            acc = acc + np.sum(c * p, dtype=np.uint64)
            pw = p[-1]
    return int(acc)


def checksums() -> dict:
    out = {}
    for key, (fname, _) in FILES.items():
        reader = gguf.GGUFReader(str(GGUF_DIR / fname))
        out[fname] = {
            t.name: {
                "type": t.tensor_type.name,
                "shape": [int(x) for x in reversed(t.shape.tolist())],
                "hash": f"{bits_hash(dequantize(t.data, t.tensor_type)):016x}",
            }
            for t in reader.tensors
        }
    return out


def random_finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (bits & 0x7C00) == 0x7C00
    while bad.any():
        bits[bad] = rng.integers(0, 1 << 16, size=int(bad.sum()), dtype=np.uint16)
        bad = (bits & 0x7C00) == 0x7C00
    return bits


def synthetic_cases(cases: list) -> None:
    rng = np.random.default_rng(20240611)
    for tname in SUPPORTED:
        qt = T[tname]
        block, size = GGML_QUANT_SIZES[qt]
        n_blocks = 1024 if block == 1 else (32 if block == 32 else 8)
        if tname in F16_FIELDS:
            raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
            for off in F16_FIELDS[tname]:
                raw[:, off:off + 2] = random_finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
            # a few special scales: +0, -0, smallest subnormal, largest finite
            for i, h in enumerate([0x0000, 0x8000, 0x0001, 0x7BFF]):
                for off in F16_FIELDS[tname]:
                    raw[i, off:off + 2] = np.array([h], dtype="<u2").view(np.uint8)
        else:
            raw = rng.integers(0, 256, size=(n_blocks * size,), dtype=np.uint8).reshape(1, -1)
        row = raw.reshape(1, -1)
        deq = dequantize(row, qt).astype(np.float32, copy=False)
        write_case(cases, {"case": f"synthetic.{tname.lower()}.random", "kind": "synthetic",
                           "type": tname, "variant": "random bytes, finite f16 scales"}, row, deq)

        data = (rng.standard_normal((4, 256)) * rng.choice([1e-3, 0.05, 1.0, 300.0], size=(4, 1))).astype(np.float32)
        try:
            q = quantize(data, qt)
        except NotImplementedError:
            continue
        q = np.ascontiguousarray(q).view(np.uint8).reshape(4, -1)
        deq = dequantize(q, qt).astype(np.float32, copy=False)
        write_case(cases, {"case": f"synthetic.{tname.lower()}.quantized", "kind": "synthetic",
                           "type": tname, "variant": "gguf.quants.quantize of random normal rows"}, q, deq)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.glob("*.bin"):
        p.unlink()
    for p in OUT.glob("*.f32"):
        p.unlink()
    cases: list = []
    file_cases(cases)
    synthetic_cases(cases)
    index = {
        "generator": "tests/golden/make_gguf_dequant.py",
        "gguf_py": gguf.__version__ if hasattr(gguf, "__version__") else "0.17.1",
        "numpy": np.__version__,
        "cases": cases,
    }
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    (OUT / "checksums.json").write_text(json.dumps(checksums(), indent=0) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"wrote {len(cases)} cases, {total} bytes, to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
