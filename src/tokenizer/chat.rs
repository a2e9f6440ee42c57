//! Chat templates: a model's own Jinja template (`chat_template` in tokenizer_config.json
//! or `chat_template.jinja` beside it, `tokenizer.chat_template` in a GGUF file) rendered
//! with MiniJinja the way transformers' `apply_chat_template` renders it (trim_blocks and
//! lstrip_blocks on, Python string methods, `raise_exception`, `tojson`, `strftime_now`).
//! A model without a template falls back to ChatML.

use minijinja::{Environment, Value};
use serde_json::json;

use crate::error::{Error, ErrorKind, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (templates may accept others).
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The ChatML template, for models that ship none.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether this is the model's own template (`false`: the ChatML fallback).
    own: bool,
    bos_token: String,
    eos_token: String,
}

fn template_err(what: &str, e: minijinja::Error) -> Error {
    let mut msg = format!("chat template: {what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::new(ErrorKind::Tokenizer, msg)
}

/// `strftime_now(format)`: the current UTC time formatted like Python's `strftime` (Llama
/// 3.x templates print today's date with it).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let fmt = std::ffi::CString::new(format).map_err(|_| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "strftime_now: NUL in the format",
        )
    })?;
    // SAFETY: time(NULL) and gmtime_r on a local struct are plain libc calls; strftime
    // writes at most `buf.len()` bytes into `buf` and returns how many it wrote.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        let mut buf = [0u8; 256];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm);
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja template as transformers renders it); `bos_token` and
    /// `eos_token` are the strings the template sees under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        Self::build(source, bos_token, eos_token, true)
    }

    /// The ChatML fallback.
    pub fn chatml(bos_token: &str, eos_token: &str) -> ChatTemplate {
        Self::build(CHATML, bos_token, eos_token, false).expect("the ChatML template compiles")
    }

    fn build(source: &str, bos: &str, eos: &str, own: bool) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // transformers renders chat templates with trim_blocks and lstrip_blocks on.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_err("syntax", e))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| template_err("does not compile", e))?;
        Ok(ChatTemplate {
            env,
            own,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        })
    }

    /// Whether this is the model's own template (`false`: the ChatML fallback).
    pub fn is_models_own(&self) -> bool {
        self.own
    }

    /// The conversation `messages` as the model's prompt text; with
    /// `add_generation_prompt` it ends where the assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let ctx = json!({
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": null,
            "documents": null,
        });
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| template_err("missing", e))?;
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| template_err("rendering failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::chatml("", "<|im_end|>");
        let m = [ChatMessage::new("user", "hi")];
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t.is_models_own());
    }

    #[test]
    fn python_methods_blocks_and_exceptions_work_as_in_transformers() {
        let src = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n  {{ m.content.strip().upper() }}|{% endfor %}{{ bos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        // trim_blocks drops the newline after a block, lstrip_blocks the indent before one.
        assert_eq!(
            t.render(&[ChatMessage::new("user", " a ")], false).unwrap(),
            "  A|<s>"
        );
        let e = t
            .render(&[ChatMessage::new("robot", "x")], false)
            .unwrap_err();
        assert!(e.message().contains("bad role robot"), "{e}");
        let e = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tokenizer);
        let d = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        assert_eq!(d.render(&[], false).unwrap().len(), 4);
    }
}
