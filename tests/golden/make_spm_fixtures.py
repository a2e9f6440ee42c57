#!/usr/bin/env python3
"""Fixtures for SentencePiece tokenizers built from GGUF metadata (`tokenizer.ggml.model`
= `llama`), with SentencePiece itself as the reference.

    /work/refvenv/bin/python tests/golden/make_spm_fixtures.py   # see tests/golden/README.md

1. Gemma 3 270M (its GGUF under models/.cache/gguf/, from scripts/fetch-models.sh): the
   GGUF's pieces, scores and types are put back into a SentencePiece ModelProto (BPE,
   byte fallback, no dummy prefix, spaces escaped, user-defined pieces with their spaces
   as U+2581 again, as Gemma's tokenizer.model has them), and `spm.encode` of every text
   is the expected ids; transformers' own GGUF tokenizer must agree on each (and is the
   reference for texts holding control tokens such as <start_of_turn>, which
   SentencePiece does not parse). Writes tests/golden/spm/gemma3-270m.json.
2. A tiny SentencePiece BPE model trained here with a dummy prefix (as Llama 2 and
   Mistral have), written as a vocabulary-only GGUF the way llama.cpp's converter writes
   one (tests/golden/spm/prefix.gguf), with its expected ids (prefix.json).
3. fuzz/corpus/gguf/valid-spm-vocab.gguf, a hand-made vocabulary as a fuzz seed.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

OUT = Path("tests/golden/spm")
GEMMA = Path("models/.cache/gguf/gemma-3-270m-Q4_K_M.gguf")
PPL = Path("tests/golden/ppl.txt")

# Emoji (with joiners and flags), CJK, code, numbers, runs of spaces, tabs and newlines,
# HTML-like user-defined pieces, control characters, a literal U+2581, empty text.
TEXTS = [
    "Hello world",
    "The old lighthouse keeper climbed the narrow stairs every evening, and",
    "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n",
    "a  b   c    d\t\te\n\n\nf",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "emoji \U0001F93D\u200d\u2640\ufe0f and \U0001F1EB\U0001F1F7 flags, \U0001F600!",
    "CJK 日本語のテキストと中文文本, 한국어 텍스트",
    "numbers 1234567 3.14159 -42 1e10 0x1F 2,000,000",
    "ünïcödé ñ e\u0301 \u00e9",
    "<b>bold</b> <table><tr><td>x</td></tr></table>",
    "x\u0000y\u0007z",
    "\u2581 literal block",
    "",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot",
]
# Texts with control tokens: transformers is the reference (SentencePiece does not parse
# them from text; llama.cpp and transformers do).
SPECIAL_TEXTS = [
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>twice<eos> and <pad>",
]

TYPES = {1: pb.ModelProto.SentencePiece.NORMAL, 2: pb.ModelProto.SentencePiece.UNKNOWN,
         3: pb.ModelProto.SentencePiece.CONTROL, 4: pb.ModelProto.SentencePiece.USER_DEFINED,
         5: pb.ModelProto.SentencePiece.UNUSED, 6: pb.ModelProto.SentencePiece.BYTE}


def field(r, k):
    f = r.fields.get(k)
    return None if f is None else f.contents()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gemma() -> None:
    from transformers import AutoTokenizer

    r = gguf.GGUFReader(str(GEMMA))
    toks = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    scores = field(r, "tokenizer.ggml.scores")
    unk = field(r, "tokenizer.ggml.unknown_token_id")
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(toks)
    m.trainer_spec.unk_id = unk
    m.trainer_spec.bos_id = field(r, "tokenizer.ggml.bos_token_id")
    m.trainer_spec.eos_id = field(r, "tokenizer.ggml.eos_token_id")
    m.trainer_spec.pad_id = field(r, "tokenizer.ggml.padding_token_id")
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(field(r, "tokenizer.ggml.add_space_prefix"))
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (t, ty, s) in enumerate(zip(toks, types, scores)):
        p = m.pieces.add()
        # llama.cpp's converter writes user-defined pieces with U+2581 turned into spaces.
        p.piece = t.replace(" ", "\u2581") if ty == 4 else t
        p.score = s
        p.type = pb.ModelProto.SentencePiece.UNKNOWN if i == unk else TYPES[ty]
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    hf = AutoTokenizer.from_pretrained(str(GEMMA.parent), gguf_file=GEMMA.name)
    cases = []
    for text in TEXTS + [PPL.read_text(encoding="utf-8")]:
        ids = sp.encode(text)
        got = hf(text, add_special_tokens=False).input_ids
        if got != ids:
            raise SystemExit(f"transformers and SentencePiece disagree on {text[:40]!r}")
        cases.append({"text": text, "ids": ids, "reference": "sentencepiece"})
    for text in SPECIAL_TEXTS:
        cases.append({"text": text, "ids": hf(text, add_special_tokens=False).input_ids,
                      "reference": "transformers"})
    with_bos = hf(TEXTS[0], add_special_tokens=True).input_ids
    assert with_bos == [m.trainer_spec.bos_id] + cases[0]["ids"], with_bos
    (OUT / "gemma3-270m.json").write_text(json.dumps(
        {"gguf": str(GEMMA), "gguf_sha256": sha256(GEMMA), "bos_id": m.trainer_spec.bos_id,
         "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    print(f"gemma3-270m: {len(cases)} cases")


def prefix() -> None:
    """A tiny Llama-2-style model: BPE, byte fallback, dummy prefix."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(PPL.read_text(encoding="utf-8") + "\n" + "\n".join(TEXTS[:12]),
                          encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "tiny"), model_type="bpe",
            vocab_size=600, byte_fallback=True, add_dummy_prefix=True,
            remove_extra_whitespaces=False, normalization_rule_name="identity",
            character_coverage=1.0, user_defined_symbols=["<tool>"], bos_id=1, eos_id=2,
            unk_id=0, pad_id=-1, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "tiny.model"))
    # The vocabulary as llama.cpp's converter writes it (_create_vocab_sentencepiece).
    toks, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        toks.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     5 if sp.is_unused(i) else 6 if sp.is_byte(i) else
                     4 if toks[-1] == "<tool>" else 1)
    w = gguf.GGUFWriter(str(OUT / "prefix.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Texts not starting with a user-defined piece: there SentencePiece puts its dummy
    # prefix before the piece, llama.cpp and transformers after it.
    cases = [{"text": t, "ids": sp.encode(t), "reference": "sentencepiece"}
             for t in TEXTS if not t.startswith("<")]
    (OUT / "prefix.json").write_text(json.dumps(
        {"gguf": str(OUT / "prefix.gguf"), "bos_id": 1, "cases": cases}, ensure_ascii=False,
        indent=1) + "\n")
    print(f"prefix: {len(toks)} pieces, {len(cases)} cases")


def fuzz_seed() -> None:
    """fuzz/corpus/gguf/valid-spm-vocab.gguf: a hand-made SentencePiece vocabulary (every
    token type, a user-defined whitespace piece, a byte piece) small enough for the GGUF
    fuzz target's seeds, whose body builds the tokenizer of a vocabulary."""
    toks = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "<0x41>",
            "<tool>", "  ", "<unused>"]
    types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 4, 4, 5]
    w = gguf.GGUFWriter("fuzz/corpus/gguf/valid-spm-vocab.gguf", "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 0.0, 0.0, 0.0, 0.0])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    fuzz_seed()
    prefix()
    gemma()
    return 0


if __name__ == "__main__":
    sys.exit(main())
