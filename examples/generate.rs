//! The library API in a few lines: load an engine (the target plus its 4-bit substitute
//! draft), feed a prompt to a sequence, step it speculatively, print text and tau.
//!
//!     cargo run --release --example generate -- models/smollm2-135m-instruct "The sun is"

use subspec::{Engine, EngineOptions, SamplingParams, StepOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: generate MODEL_DIR [PROMPT]")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "The three primary colours are".into());

    let engine = Engine::load(&EngineOptions::new(dir))?;
    let tok = engine.tokenizer()?;
    let mut seq = engine.new_sequence()?;
    seq.append(&tok.encode(&prompt, true)?)?;

    let opts = StepOptions::speculative(SamplingParams::greedy());
    let out = seq.generate(&opts, 48, |_| true)?;
    println!("{prompt}{}", tok.decode(&out)?);
    let st = seq.stats();
    println!(
        "[{} tokens in {} target passes: tau {:.2}]",
        out.len(),
        st.iterations,
        st.tau()
    );
    Ok(())
}
