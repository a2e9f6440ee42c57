//! SentencePiece tokenizers built from GGUF metadata (`tokenizer.ggml.model` = `llama`)
//! against SentencePiece itself (`tests/golden/make_spm_fixtures.py`): Gemma 3's 262k
//! pieces (no dummy prefix, user-defined whitespace pieces, byte fallback) and a tiny
//! Llama-2-style model with a dummy prefix. Every text gives SentencePiece's ids, with
//! BOS in front when special tokens are asked for, and decodes back to itself. (Where
//! SentencePiece and llama.cpp differ, a user-defined piece in a vocabulary with a dummy
//! prefix, we follow llama.cpp; the hand-made vocabulary pins that down.)

mod common;

use serde_json::Value;
use subspec::Tokenizer;

fn check(fixture: &str) {
    let root = common::root();
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/golden/spm").join(fixture)).unwrap(),
    )
    .unwrap();
    let path = root.join(fx["gguf"].as_str().unwrap());
    assert!(
        path.is_file(),
        "{} is missing: run `bash scripts/fetch-models.sh` first (the README's test command does)",
        path.display()
    );
    let tok = Tokenizer::load(&path).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    let bos = fx["bos_id"].as_u64().unwrap() as u32;
    let cases = fx["cases"].as_array().unwrap();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let short: String = text.chars().take(40).collect();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            want,
            "{fixture}: {short:?} (reference: {})",
            c["reference"]
        );
        let with_bos: Vec<u32> = std::iter::once(bos).chain(want.iter().copied()).collect();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            with_bos,
            "{fixture}: {short:?}"
        );
        // A literal U+2581 is a space to SentencePiece, so only it does not round-trip.
        if !text.contains('\u{2581}') {
            assert_eq!(
                tok.decode(&want).unwrap(),
                text,
                "{fixture}: decoding {short:?}"
            );
        }
    }
    eprintln!("{fixture}: {} texts", cases.len());
}

#[test]
fn gemma3_tokenizer_from_gguf_matches_sentencepiece() {
    check("gemma3-270m.json");
}

/// `token_text` is the file's own string, as llama.cpp's `llama_vocab_get_text` gives it
/// (the llama.cpp adapter compares vocabularies with it): Gemma's 30 user-defined
/// whitespace pieces are written with spaces (ids 138..), which the tokenizer holds as `▁`.
#[test]
fn token_text_is_the_gguf_files_own_string() {
    let path = common::root().join("models/.cache/gguf/gemma-3-270m-Q4_K_M.gguf");
    let tok = Tokenizer::load(&path).unwrap();
    assert_eq!(tok.token_text(138).as_deref(), Some("  "));
    assert_eq!(tok.token_text(140).as_deref(), Some("    "));
    assert_eq!(tok.token_text(506).as_deref(), Some("\u{2581}the"));
    assert_eq!(tok.token_to_id("\u{2581}the"), Some(506));
    assert_eq!(tok.token_text(262_144), None);
}

#[test]
fn a_dummy_prefix_vocabulary_matches_sentencepiece() {
    check("prefix.json");
}

#[test]
fn a_hand_made_vocabulary_tokenizes_as_worked_out_by_hand() {
    // fuzz/corpus/gguf/valid-spm-vocab.gguf: <unk> <s> </s> ▁ a b ▁a ab ▁ab <0x41>
    // <tool> "  " <unused>, scores falling from ▁ (-1) to ▁ab (-6), a dummy prefix.
    let path = common::root().join("fuzz/corpus/gguf/valid-spm-vocab.gguf");
    let tok = Tokenizer::load(&path).unwrap();
    // "▁ab▁a": ▁a merges first (best score), then ▁a + b into ▁ab.
    assert_eq!(tok.encode("ab a", true).unwrap(), vec![1, 8, 6]);
    // "A" is not a piece: its byte; "x" has no byte piece either: <unk>.
    assert_eq!(tok.encode("A", false).unwrap(), vec![3, 9]);
    assert_eq!(tok.encode("x", false).unwrap(), vec![3, 0]);
    // With a dummy prefix, user-defined pieces are matched in the raw text and the text
    // after one gets a prefix of its own, as llama.cpp tokenizes ("▁a", "  ", "▁b").
    assert_eq!(tok.encode("a  b", false).unwrap(), vec![6, 11, 3, 5]);
    assert_eq!(tok.decode(&[6, 11, 5]).unwrap(), "a  b");
    assert_eq!(tok.encode("<tool>", false).unwrap(), vec![10]);
    assert_eq!(tok.encode("<tool>a", false).unwrap(), vec![10, 6]);
    assert_eq!(
        subspec::internals::fuzz::gguf(&std::fs::read(&path).unwrap()).unwrap(),
        0
    );
}
