//! A tokenizer from a GGUF file's `tokenizer.ggml.*` metadata: the vocabulary, token
//! types and BPE merges become the `tokenizer.json` the `tokenizers` crate reads.
//!
//! - `gpt2` (byte-level BPE): the merges as given, with the pre-tokenizer named by
//!   `tokenizer.ggml.pre`.
//! - `llama` (SentencePiece BPE: Llama 2, Mistral, Gemma): no merges are stored, so they
//!   are derived from the vocabulary, every split of a normal piece into two pieces,
//!   ranked by the merged piece's score (SentencePiece merges the adjacent pair whose
//!   concatenation scores best); spaces become `▁` (with one in front of the text when
//!   `tokenizer.ggml.add_space_prefix` says so), characters outside the vocabulary fall
//!   back to `<0xXX>` byte pieces, and user-defined pieces are matched first: in the
//!   normalized text as SentencePiece does, or, with a dummy prefix, in the raw text as
//!   llama.cpp does (then text after such a piece gets a prefix of its own, as there).
//!
//! `scripts/fetch_models.py` makes the test models' `tokenizer.json` the same way, so both
//! paths give the same ids; tests/golden checks them against SentencePiece itself.

use serde_json::{json, Value};

use super::{ChatTemplate, Tokenizer};
use crate::checkpoint::gguf::{GgufFile, Metadata};
use crate::error::{Error, ErrorKind, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The `tokenizer.ggml.*` and `tokenizer.chat_template` metadata of a GGUF file.
#[derive(Debug, Clone, Default)]
pub(crate) struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer (`qwen2`, `smollm`, `llama-bpe`, `gpt2`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (same length as `tokens`, or empty).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"a b"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece: higher merges first).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's dummy prefix; default true).
    pub add_space_prefix: bool,
    /// `tokenizer.ggml.bos_token_id` and friends.
    pub bos_id: Option<u32>,
    /// End of sequence.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// The vocabulary metadata of `g`.
    pub(crate) fn read(g: &GgufFile) -> Result<GgufVocab> {
        Self::from_meta(g.meta())
    }

    /// The vocabulary metadata in `m`.
    pub(crate) fn from_meta(m: &Metadata) -> Result<GgufVocab> {
        let opt_strs = |k: &str| -> Result<Vec<String>> {
            Ok(match m.get(k) {
                None => Vec::new(),
                Some(_) => m.get_str_array(k)?.to_vec(),
            })
        };
        let token_types = match m.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => m
                .get_int_array("tokenizer.ggml.token_type")?
                .into_iter()
                .map(|t| t as i32)
                .collect(),
        };
        let scores = match m.get("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(_) => m.get_f32_array("tokenizer.ggml.scores")?,
        };
        Ok(GgufVocab {
            scores,
            unk_id: m.opt_u32("tokenizer.ggml.unknown_token_id")?,
            add_space_prefix: m
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true),
            model: m.get_str("tokenizer.ggml.model")?.to_string(),
            pre: m.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
            tokens: m.get_str_array("tokenizer.ggml.tokens")?.to_vec(),
            token_types,
            merges: opt_strs("tokenizer.ggml.merges")?,
            bos_id: m.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: m.opt_u32("tokenizer.ggml.eos_token_id")?,
            add_bos: m.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos: m.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            chat_template: m.opt_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }

    /// Checks that the token types, when given, cover the tokens.
    fn check_types(&self, bad: &dyn Fn(String) -> Error) -> Result<()> {
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            )));
        }
        Ok(())
    }

    /// The type of token `i` (normal when the file gives no types).
    fn token_type(&self, i: usize) -> i32 {
        self.token_types.get(i).copied().unwrap_or(TOKEN_NORMAL)
    }
}

/// The split regex of Qwen2 (and llama.cpp's `qwen2` pre-tokenizer).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of Llama 3 (`llama-bpe`): numbers in groups of up to three.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets, "use_regex": use_regex})
}

/// The vocabulary as a `tokenizer.json` `vocab` object, and the added tokens (control
/// tokens as special ones, user-defined ones as plain ones, both matched on the raw text;
/// as scripts/fetch_models.py writes them).
fn vocab_and_added(v: &GgufVocab, bad: &dyn Fn(String) -> Error) -> Result<(Value, Vec<Value>)> {
    v.check_types(bad)?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(bad(format!("tokenizer.ggml.tokens lists `{t}` twice")));
        }
        let ty = v.token_type(i);
        if matches!(ty, TOKEN_CONTROL | TOKEN_USER_DEFINED) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_CONTROL}),
            );
        }
    }
    Ok((Value::Object(vocab), added))
}

/// SentencePiece's merges implied by a vocabulary with scores: every way of writing a
/// normal piece as two normal pieces, best-scoring piece first (ties: lower id, then the
/// shorter left part).
fn spm_merges(v: &GgufVocab) -> Vec<[&str; 2]> {
    let normal = |i: usize| v.token_type(i) == TOKEN_NORMAL;
    let ids: std::collections::HashMap<&str, usize> = v
        .tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| normal(i))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, [&str; 2])> = Vec::new();
    for (i, t) in v.tokens.iter().enumerate().filter(|&(i, _)| normal(i)) {
        for (cut, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(cut);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((v.scores[i], i, [a, b]));
            }
        }
    }
    // Stable: equal keys keep the order of their cuts.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    merges.into_iter().map(|(_, _, m)| m).collect()
}

/// The post-processor: `post` (`null`: none), followed by a template adding BOS and EOS
/// where the file says to.
fn bos_eos_template(v: &GgufVocab, post: Value, bad: &dyn Fn(String) -> Error) -> Result<Value> {
    let name = |id: Option<u32>, what: &str| -> Result<String> {
        let id = id.ok_or_else(|| bad(format!("tokenizer.ggml.add_{what}_token is set but tokenizer.ggml.{what}_token_id is missing")))?;
        v.tokens.get(id as usize).cloned().ok_or_else(|| {
            bad(format!(
                "tokenizer.ggml.{what}_token_id {id} is not a token"
            ))
        })
    };
    Ok(if v.add_bos || v.add_eos {
        let mut single = Vec::new();
        let mut special = serde_json::Map::new();
        if v.add_bos {
            let b = name(v.bos_id, "bos")?;
            single.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
            special.insert(
                b.clone(),
                json!({"id": b, "ids": [v.bos_id], "tokens": [b]}),
            );
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if v.add_eos {
            let e = name(v.eos_id, "eos")?;
            single.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
            special.insert(
                e.clone(),
                json!({"id": e, "ids": [v.eos_id], "tokens": [e]}),
            );
        }
        let mut pair = single.clone();
        pair.extend(single.iter().map(|s| {
            let mut s = s.clone();
            if let Some(seq) = s.get_mut("Sequence") {
                seq["id"] = json!("B");
            }
            for k in ["Sequence", "SpecialToken"] {
                if let Some(x) = s.get_mut(k) {
                    x["type_id"] = json!(1);
                }
            }
            s
        }));
        let template = json!({"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": special});
        match post {
            Value::Null => template,
            post => json!({"type": "Sequence", "processors": [post, template]}),
        }
    } else {
        post
    })
}

/// A part of a tokenizer (pre-tokenizer, decoder, post-processor) from its JSON form.
fn part<T: serde::de::DeserializeOwned>(j: Value) -> Result<T> {
    serde_json::from_value(j).map_err(|e| Error::internal(format!("tokenizer part: {e}")))
}

/// The tokenizer of a SentencePiece BPE vocabulary (`tokenizer.ggml.model` = `llama`),
/// built through the `tokenizers` API (a `tokenizer.json` of Gemma's 262k pieces and 514k
/// merges would take a second to write and another to parse).
fn spm_tokenizer(v: &GgufVocab, bad: &dyn Fn(String) -> Error) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};
    if v.scores.len() != v.tokens.len() {
        return Err(bad(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            v.scores.len(),
            v.tokens.len()
        )));
    }
    v.check_types(bad)?;
    // Without a dummy prefix, user-defined pieces are matched in the normalized text,
    // where spaces are `▁`, as SentencePiece matches them: llama.cpp's converter wrote
    // Gemma's whitespace pieces with spaces, so spell them back. With the prefix they are
    // matched in the raw text, as llama.cpp does (the tokenizers crate would run the
    // prefix normalizer over the pieces themselves).
    let user_normalized = !v.add_space_prefix;
    let piece = |i: usize| -> String {
        match v.token_type(i) {
            TOKEN_USER_DEFINED if user_normalized => v.tokens[i].replace(' ', "\u{2581}"),
            _ => v.tokens[i].clone(),
        }
    };
    let mut vocab = Vocab::with_capacity(v.tokens.len());
    for i in 0..v.tokens.len() {
        let t = piece(i);
        if vocab.contains_key(&t) {
            return Err(bad(format!("tokenizer.ggml.tokens lists `{t}` twice")));
        }
        vocab.insert(t, i as u32);
    }
    let merges = spm_merges(v)
        .into_iter()
        .map(|[a, b]| (a.to_string(), b.to_string()))
        .collect();
    let mut model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(id) = v.unk_id {
        let unk = v.tokens.get(id as usize).ok_or_else(|| {
            bad(format!(
                "tokenizer.ggml.unknown_token_id {id} is not a token"
            ))
        })?;
        model = model.unk_token(unk.clone());
    }
    let model = model
        .build()
        .map_err(|e| bad(format!("SentencePiece vocabulary: {e}")))?;
    // Spaces become `▁`, with one in front of the text when the vocabulary has
    // SentencePiece's dummy prefix (and, as in llama.cpp, in front of any text that
    // follows a control or user-defined token).
    let mut norms =
        vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
    if v.add_space_prefix {
        norms.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    let normalizer: NormalizerWrapper = part(json!({"type": "Sequence", "normalizers": norms}))?;
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if v.add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder: DecoderWrapper = part(json!({"type": "Sequence", "decoders": decoders}))?;
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_normalizer(Some(normalizer));
    t.with_decoder(Some(decoder));
    match bos_eos_template(v, Value::Null, bad)? {
        Value::Null => {}
        post => {
            t.with_post_processor(Some(part::<PostProcessorWrapper>(post)?));
        }
    }
    // Control and unknown pieces as special tokens matched on the raw text, user-defined
    // ones as plain tokens (their ids are their vocabulary ids).
    let added = |special: bool| -> Vec<AddedToken> {
        (0..v.tokens.len())
            .filter(|&i| match v.token_type(i) {
                TOKEN_UNKNOWN | TOKEN_CONTROL => special,
                TOKEN_USER_DEFINED => !special,
                _ => false,
            })
            .map(|i| AddedToken::from(piece(i), special).normalized(!special && user_normalized))
            .collect()
    };
    t.add_special_tokens(&added(true));
    t.add_tokens(&added(false));
    Ok(t)
}

/// `tokenizer.json` for a byte-level BPE vocabulary (`tokenizer.ggml.model` = `gpt2`).
fn gpt2_tokenizer_json(v: &GgufVocab, bad: &dyn Fn(String) -> Error) -> Result<Value> {
    let (vocab, added) = vocab_and_added(v, bad)?;
    let pre = v.pre.as_deref().unwrap_or("default");
    let (normalizer, pre_tokenizer, decoder, post) = match pre {
        "qwen2" | "llama-bpe" | "llama3" => {
            let regex = if pre == "qwen2" {
                QWEN2_REGEX
            } else {
                LLAMA3_REGEX
            };
            let normalizer = if pre == "qwen2" {
                json!({"type": "NFC"})
            } else {
                Value::Null
            };
            let pre_tok = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level(false, false, false),
            ]});
            (
                normalizer,
                pre_tok,
                byte_level(false, false, false),
                byte_level(false, false, false),
            )
        }
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(false, true, true),
            ]}),
            byte_level(true, true, true),
            byte_level(true, false, true),
        ),
        "gpt2" | "default" => (
            Value::Null,
            byte_level(false, true, true),
            byte_level(false, true, true),
            byte_level(false, true, true),
        ),
        other => {
            return Err(bad(format!(
                "tokenizer.ggml.pre is `{other}`; supported: qwen2, smollm, llama-bpe, gpt2"
            )))
        }
    };
    let post = bos_eos_template(v, post, bad)?;
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": v.merges},
    }))
}

impl Tokenizer {
    /// The tokenizer and chat template of a GGUF file's metadata; `file` names it in
    /// messages.
    pub(crate) fn from_gguf_vocab(v: &GgufVocab, file: &str) -> Result<Tokenizer> {
        let bad = |msg: String| Error::new(ErrorKind::Tokenizer, format!("{file}: {msg}"));
        let inner = match v.model.as_str() {
            "llama" => spm_tokenizer(v, &bad)?,
            "gpt2" => {
                let j = gpt2_tokenizer_json(v, &bad)?;
                let bytes = serde_json::to_vec(&j).map_err(|e| Error::internal(e.to_string()))?;
                super::parse_tokenizer_json(&bytes, file)?
            }
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.model is `{other}`; supported: `gpt2` (byte-level BPE), `llama` (SentencePiece BPE)"
                )))
            }
        };
        let token = |id: Option<u32>| {
            id.and_then(|i| v.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let (bos, eos) = (token(v.bos_id), token(v.eos_id));
        let chat = match &v.chat_template {
            Some(t) => ChatTemplate::new(t, &bos, &eos).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("{file}: tokenizer.chat_template: {}", e.message()),
                )
            })?,
            None => ChatTemplate::chatml(&bos, &eos),
        };
        let spelled = (0..v.tokens.len() as u32)
            .filter_map(|i| {
                let own = &v.tokens[i as usize];
                (inner.id_to_token(i).as_ref() != Some(own)).then(|| (i, own.clone()))
            })
            .collect();
        Ok(Tokenizer {
            inner,
            chat,
            spelled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GgufVocab {
        let tokens: Vec<String> = ["a", "b", "ab", "Ġ", "<|end|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            token_types: vec![1, 1, 1, 1, TOKEN_CONTROL],
            merges: vec!["a b".into()],
            tokens,
            eos_id: Some(4),
            ..GgufVocab::default()
        }
    }

    #[test]
    fn merges_and_special_tokens_apply() {
        let t = Tokenizer::from_gguf_vocab(&tiny(), "t.gguf").unwrap();
        assert_eq!(t.encode("ab", false).unwrap(), vec![2]);
        assert_eq!(t.encode("ba<|end|>", false).unwrap(), vec![1, 0, 4]);
        assert_eq!(t.decode(&[2, 4]).unwrap(), "ab<|end|>");
        assert!(!t.chat_template().is_models_own());
    }

    #[test]
    fn unsupported_models_and_bad_metadata_are_named() {
        let mut v = tiny();
        v.model = "bert".into();
        let e = Tokenizer::from_gguf_vocab(&v, "t.gguf").unwrap_err();
        assert!(e.message().contains("tokenizer.ggml.model") && e.message().contains("t.gguf"));
        let mut v = tiny();
        v.pre = Some("falcon".into());
        assert!(Tokenizer::from_gguf_vocab(&v, "t.gguf")
            .unwrap_err()
            .message()
            .contains("tokenizer.ggml.pre"));
        let mut v = tiny();
        v.tokens.push("a".into());
        v.token_types.push(1);
        assert!(Tokenizer::from_gguf_vocab(&v, "t.gguf")
            .unwrap_err()
            .message()
            .contains("twice"));
        let mut v = tiny();
        v.add_bos = true;
        assert!(Tokenizer::from_gguf_vocab(&v, "t.gguf")
            .unwrap_err()
            .message()
            .contains("bos_token_id"));
    }
}
