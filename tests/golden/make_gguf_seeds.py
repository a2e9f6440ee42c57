#!/usr/bin/env python3
"""Tiny GGUF files for the parser: the fuzz seed corpus and a split-file fixture.

Writes, with gguf-py's GGUFWriter (then byte patches for the malformed ones):
  fuzz/corpus/gguf/valid-*.gguf     well-formed files (every metadata value type,
                                    nested arrays, every supported tensor type,
                                    alignment 64, version 2); each < 4 KB
  fuzz/corpus/gguf/invalid-*.gguf   one malformation each (bad magic, version 1,
                                    truncated header and data, huge kv count,
                                    n_dims 9, unknown type 99, misaligned offset,
                                    duplicate tensor, string past the end)
  tests/golden/gguf/split/tiny-0000{1,2}-of-00002.gguf
                                    a split set as gguf-py writes it

The Rust tests (src/checkpoint/gguf/tests.rs) parse every seed: valid-* must parse and
dequantize, invalid-* must be refused with an error naming the file. A future
cargo-fuzz target over `checkpoint::gguf::parse_bytes` starts from this corpus.

Usage: python3 tests/golden/make_gguf_seeds.py   (gguf==0.17.1, numpy; deterministic)
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus" / "gguf"
SPLIT = ROOT / "tests" / "golden" / "gguf" / "split"


def write(path: Path, build, **kw) -> None:
    w = gguf.GGUFWriter(path, "llama", **kw)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def minimal(w) -> None:
    w.add_name("minimal")
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_norm.weight", np.arange(8, dtype=np.float32))


def all_values(w) -> None:
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63)
    w.add_float32("t.f32", 1e-5)
    w.add_float64("t.f64", -2.5e300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strs", ["a", "Ġb", ""])
    w.add_array("t.ints", [1, -3, 6])
    w.add_array("t.floats", [0.5, -1.0])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_array("t.nested_strs", [["x"], ["y", "z"]])
    w.add_tensor("v", np.zeros(4, dtype=np.float32))


def quant_types(w) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((2, 32)).astype(np.float32)
    for t in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16]:
        w.add_tensor(t.name.lower(), quantize(data, t), raw_dtype=t)
    w.add_tensor("f16", data.astype(np.float16))
    for t in [T.Q4_K, T.Q5_K, T.Q6_K]:
        _, size = GGML_QUANT_SIZES[t]
        raw = rng.integers(0, 256, size=(1, size), dtype=np.uint8)
        # finite f16 scales
        offs = [208] if t == T.Q6_K else [0, 2]
        for o in offs:
            raw[0, o:o + 2] = np.array([0x2E66], dtype="<u2").view(np.uint8)
        w.add_tensor(t.name.lower(), raw, raw_dtype=t)


def aligned64(w) -> None:
    w.data_alignment = 64
    w.add_custom_alignment(64)
    w.add_tensor("a", np.ones(3, dtype=np.float32))
    w.add_tensor("b", np.ones((2, 5), dtype=np.float32))


def split_set(w) -> None:
    w.add_name("split seed")
    w.add_tensor("a", np.arange(64, dtype=np.float32))
    w.add_tensor("b", np.ones((2, 32), dtype=np.float16))
    w.add_tensor("c", np.zeros(16, dtype=np.float32))


def tensor_info_pos(b: bytes, name: str) -> int:
    """Byte offset of the n_dims field of tensor `name`'s info."""
    enc = name.encode()
    key = struct.pack("<Q", len(enc)) + enc
    i = b.rindex(key)
    return i + len(key)


def patched(src: bytes, fn) -> bytes:
    b = bytearray(src)
    fn(b)
    return bytes(b)


def main() -> int:
    CORPUS.mkdir(parents=True, exist_ok=True)
    SPLIT.mkdir(parents=True, exist_ok=True)
    for p in list(CORPUS.glob("*.gguf")) + list(SPLIT.glob("*.gguf")):
        p.unlink()
    made = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in [("minimal", minimal), ("all-values", all_values),
                            ("quant-types", quant_types), ("align64", aligned64)]:
            p = Path(tmp) / f"{name}.gguf"
            write(p, build)
            made[name] = p.read_bytes()
    write(SPLIT / "tiny.gguf", split_set, split_max_tensors=2)

    seeds = {f"valid-{k}.gguf": v for k, v in made.items()}
    m = made["minimal"]
    seeds["valid-v2.gguf"] = patched(m, lambda b: b.__setitem__(slice(4, 8), struct.pack("<I", 2)))
    seeds["invalid-magic.gguf"] = b"GGML" + m[4:]
    seeds["invalid-version1.gguf"] = patched(m, lambda b: b.__setitem__(slice(4, 8), struct.pack("<I", 1)))
    seeds["invalid-truncated-header.gguf"] = m[:20]
    seeds["invalid-truncated-data.gguf"] = m[:-4]
    seeds["invalid-kv-count.gguf"] = patched(m, lambda b: b.__setitem__(slice(16, 24), struct.pack("<Q", 1 << 60)))
    seeds["invalid-tensor-count.gguf"] = patched(m, lambda b: b.__setitem__(slice(8, 16), struct.pack("<Q", 1 << 60)))
    nd = tensor_info_pos(m, "blk.0.attn_norm.weight")
    seeds["invalid-n-dims.gguf"] = patched(m, lambda b: b.__setitem__(slice(nd, nd + 4), struct.pack("<I", 9)))
    # n_dims = 1: [n_dims u32][ne0 u64][type u32][offset u64]
    seeds["invalid-type-99.gguf"] = patched(m, lambda b: b.__setitem__(slice(nd + 12, nd + 16), struct.pack("<I", 99)))
    seeds["invalid-type-q2k.gguf"] = patched(m, lambda b: b.__setitem__(slice(nd + 12, nd + 16), struct.pack("<I", 10)))
    seeds["invalid-misaligned.gguf"] = patched(m, lambda b: b.__setitem__(slice(nd + 16, nd + 24), struct.pack("<Q", 4)))
    seeds["invalid-offset-past-end.gguf"] = patched(m, lambda b: b.__setitem__(slice(nd + 16, nd + 24), struct.pack("<Q", 1 << 40)))
    a = made["align64"]
    seeds["invalid-duplicate-tensor.gguf"] = patched(a, lambda b: b.__setitem__(tensor_info_pos(a, "b") - 1, ord("a")))
    # the first key's length (general.architecture) made 2^40
    seeds["invalid-string-length.gguf"] = patched(m, lambda b: b.__setitem__(slice(24, 32), struct.pack("<Q", 1 << 40)))
    for name, data in sorted(seeds.items()):
        assert len(data) < 4096, (name, len(data))
        (CORPUS / name).write_bytes(data)
    sizes = sum(len(d) for d in seeds.values())
    print(f"wrote {len(seeds)} seeds ({sizes} bytes) to {CORPUS} and "
          f"{len(list(SPLIT.glob('*.gguf')))} split shards to {SPLIT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
