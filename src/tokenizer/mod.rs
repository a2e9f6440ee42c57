//! Text <-> token ids through the `tokenizers` crate (`tokenizer.json`), the model's chat
//! template (`chat.rs`), and a streaming detokenizer that only emits complete UTF-8 text.

mod chat;
mod gguf;

use std::path::Path;

pub use chat::{ChatMessage, ChatTemplate};

use crate::error::{Error, ErrorKind, Result};

/// A Hugging Face fast tokenizer loaded from `tokenizer.json`, with the model's chat
/// template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: ChatTemplate,
    /// The file's own string for the ids whose piece the tokenizer holds spelled
    /// differently (a GGUF's whitespace pieces, written with spaces, are held with `▁`).
    spelled: std::collections::HashMap<u32, String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("chat_template", &self.chat.is_models_own())
            .finish()
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": "..."}`.
fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

/// The chat template of a model directory: `chat_template.jinja`, else `chat_template`
/// in tokenizer_config.json (a string, or a list of named templates: "default" is used),
/// else ChatML.
fn dir_chat_template(dir: &Path) -> Result<ChatTemplate> {
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        crate::checkpoint::read_json_object(&cfg_path)?
    } else {
        serde_json::Map::new()
    };
    let (bos, eos) = (
        token_string(cfg.get("bos_token")),
        token_string(cfg.get("eos_token")),
    );
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
    } else {
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    match source {
        Some(s) => ChatTemplate::new(&s, &bos, &eos)
            .map_err(|e| Error::new(e.kind(), format!("{}: {}", cfg_path.display(), e.message()))),
        None => Ok(ChatTemplate::chatml(&bos, &eos)),
    }
}

/// Checks a tokenizer.json's syntax, and reads its small parts (decoder, normalizer,
/// pre-tokenizer, post-processor) as JSON values, strictly (string escapes included),
/// skipping the rest (the vocabulary and merges).
struct StrictParts;

impl<'de> serde::de::Visitor<'de> for StrictParts {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tokenizer.json object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "decoder" | "normalizer" | "pre_tokenizer" | "post_processor" => {
                    map.next_value::<serde_json::Value>()?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Parses a `tokenizer.json` held in `bytes`; `name` names it in messages. The JSON is
/// checked first ([`StrictParts`]): the tokenizers crate panics (`expect("Helper")`) on
/// a malformed `decoder` (invalid JSON, or an escape that is no code point) instead of
/// returning its error (found by fuzzing; regressions in `fuzz/regressions/tokenizer/`).
/// Any other panic inside it is caught and reported as an error too.
pub(crate) fn parse_tokenizer_json(bytes: &[u8], name: &str) -> Result<tokenizers::Tokenizer> {
    let bad = |msg: String| Error::new(ErrorKind::Tokenizer, format!("{name}: {msg}"));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_map(&mut de, StrictParts)
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(_) => Err(bad(
            "the tokenizers library panicked reading it (a malformed field)".into(),
        )),
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, format!("tokenizer: {e}"))
}

/// Loads a tokenizer.json held in memory and round-trips a short text through it (the
/// fuzz target's body). Returns the vocabulary size.
pub(crate) fn fuzz_load(bytes: &[u8]) -> Result<usize> {
    let inner = parse_tokenizer_json(bytes, "fuzz/tokenizer.json")?;
    round_trip(&Tokenizer {
        inner,
        chat: ChatTemplate::chatml("", ""),
        spelled: Default::default(),
    })
}

/// Encodes and decodes a short text with `tok` (the fuzz entries' last step); returns
/// the vocabulary size.
fn round_trip(tok: &Tokenizer) -> Result<usize> {
    let ids = tok.encode("Hello, world! 123 \u{e9}\u{4e16}  <s>", true)?;
    tok.decode(&ids)?;
    Ok(tok.vocab_size())
}

/// Builds the tokenizer of a GGUF file's metadata and round-trips a short text through
/// it (part of the GGUF fuzz target's body). Returns the vocabulary size.
pub(crate) fn fuzz_gguf_vocab(m: &crate::checkpoint::gguf::Metadata) -> Result<usize> {
    round_trip(&Tokenizer::from_gguf_vocab(
        &gguf::GgufVocab::from_meta(m)?,
        "fuzz.gguf",
    )?)
}

impl Tokenizer {
    /// The tokenizer of a checkpoint: `tokenizer.json` (and the chat template) of a
    /// Hugging Face model directory, or a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        if path.is_dir() {
            Self::from_dir(path)
        } else {
            let g = crate::checkpoint::gguf::GgufFile::open(path)?;
            Self::from_gguf_vocab(&gguf::GgufVocab::read(&g)?, &path.display().to_string())
        }
    }

    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::new(
                ErrorKind::Tokenizer,
                format!("{}: not found", path.display()),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let inner = parse_tokenizer_json(&bytes, &path.display().to_string())?;
        Ok(Tokenizer {
            inner,
            chat: dir_chat_template(dir)?,
            spelled: Default::default(),
        })
    }

    /// The model's chat template (ChatML when the model ships none).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }

    /// `messages` rendered by the model's chat template; see [`ChatTemplate::render`].
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat.render(messages, add_generation_prompt)
    }

    /// Encodes text; `special` adds the model's special tokens (e.g. BOS) as configured.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Decodes ids to text, keeping special tokens visible.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// Number of tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary's own string for `id` (e.g. `"Ġthe"`, `"▁the"`, `"<0x0A>"`,
    /// `"<|im_end|>"`), not its decoded text; `None` outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match self.spelled.get(&id) {
            Some(s) => Some(s.clone()),
            None => self.inner.id_to_token(id),
        }
    }
}

/// Turns a stream of ids into a stream of text pieces, never splitting a UTF-8 character.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    /// A stream that starts empty.
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds ids and returns the new complete text (possibly empty).
    pub fn push(&mut self, ids: &[u32]) -> Result<String> {
        self.ids.extend_from_slice(ids);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }
}
