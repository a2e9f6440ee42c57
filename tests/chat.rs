//! Chat templates: each test model's own template, rendered by our MiniJinja setup, gives
//! exactly what transformers' `apply_chat_template` gives (tests/golden/chat_templates.json,
//! made by tests/golden/make_chat_fixtures.py), and the golden fixtures' chat prompt.

mod common;

use serde_json::Value;
use subspec::{ChatMessage, Tokenizer};

fn fixtures() -> Value {
    let p = common::root().join("tests/golden/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn templates_render_what_transformers_renders() {
    let fx = fixtures();
    for (model, cases) in fx["models"].as_object().unwrap() {
        let tok = Tokenizer::from_dir(&common::model_dir(model)).unwrap();
        assert!(
            tok.chat_template().is_models_own(),
            "{model}: no template found"
        );
        for case in cases.as_array().unwrap() {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let got = tok.apply_chat_template(&messages, gen).unwrap();
            assert_eq!(
                got,
                case["text"].as_str().unwrap(),
                "{model}: {messages:?} (generation prompt {gen})"
            );
        }
    }
}

#[test]
fn the_golden_chat_prompt_is_the_templates_output() {
    for model in [common::SMOLLM2, common::QWEN2] {
        let fx: Value = serde_json::from_str(
            &std::fs::read_to_string(
                common::root()
                    .join("tests/golden")
                    .join(model)
                    .join("fixture.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let chat = fx["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["template"] == true)
            .unwrap();
        let tok = Tokenizer::from_dir(&common::model_dir(model)).unwrap();
        let question = "What is the capital of France? Answer in one short sentence.";
        let text = tok
            .apply_chat_template(&[ChatMessage::new("user", question)], true)
            .unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap(), "{model}");
    }
}
