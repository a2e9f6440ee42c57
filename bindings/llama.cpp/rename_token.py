#!/usr/bin/env python3
"""Copies a GGUF file with one entry of `tokenizer.ggml.tokens` renamed, for the adapter's
vocabulary check (test.cpp): the same model and size, one token's string different.

    python3 rename_token.py IN.gguf OUT.gguf ID NEW_TEXT

Needs gguf (gguf-py) and numpy: scripts/fetch-models.sh installs them.
"""

import sys

import gguf


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, tid, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = f.contents()
        if f.name == "tokenizer.ggml.tokens":
            if not 0 <= tid < len(value):
                print(f"token id {tid} is outside the {len(value)} tokens", file=sys.stderr)
                return 1
            value[tid] = text
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, value, vtype, sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
