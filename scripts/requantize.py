#!/usr/bin/env python3
"""Writes a GGUF file with every matrix re-quantized to one type, the way llama.cpp's
`llama-quantize --allow-requantize IN OUT TYPE` does: each 2-D weight is dequantized by
gguf-py and quantized again to TYPE (Q8_0, Q5_0, Q4_0, F16, ...); vectors stay F32;
every metadata key is copied (general.file_type set to match).

    python3 scripts/requantize.py IN.gguf OUT.gguf Q8_0

For benchmarks of the same model in several forms (docs/BENCHMARKS.md); needs gguf and
numpy (scripts/fetch-models.sh installs them).
"""

import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

# llama_ftype of a file whose matrices are all of one type.
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
             "BF16": 32}


def requantize(src: str, dst: str, name: str) -> int:
    """Writes `dst`: `src` with every matrix as `name` (a FILE_TYPE key); returns the
    number of tensors. Writes to a temporary name first, so an interrupted run leaves no
    `dst` behind."""
    qtype = gguf.GGMLQuantizationType[name]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    tmp = dst + ".partial"
    w = gguf.GGUFWriter(tmp, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    w.add_file_type(FILE_TYPE[name])
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]
        a = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if a.ndim == 1:
            w.add_tensor(t.name, a)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(t.name, a.astype(np.float16))
        elif qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(t.name, a)
        else:
            q = quantize(a, qtype)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)
    return len(r.tensors)


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[3] not in FILE_TYPE:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, name = sys.argv[1:]
    n = requantize(src, dst, name)
    print(f"wrote {dst}: {n} tensors, matrices as {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
