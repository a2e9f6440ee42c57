//! The C ABI from Rust's side: the committed header is what cbindgen generates from
//! src/ffi/, the version macros match Cargo.toml, and the fixtures the C, C++, Go and Node
//! tests compare against (scripts/test-bindings.sh) come from the Rust engine itself.

mod common;

use std::path::PathBuf;

use subspec::{EngineOptions, SamplingParams, StepOptions};

/// Regenerates the header; fails if it differs from include/subspec.h
/// (`SUBSPEC_BLESS=1` rewrites it instead).
#[test]
fn header_is_up_to_date() {
    let root = common::root();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    // Only src/ffi/ (and the modules it declares): nothing else of the crate is C API.
    cbindgen::Builder::new()
        .with_src(root.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = root.join("include/subspec.h");
    if std::env::var_os("SUBSPEC_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/subspec.h is stale: run `SUBSPEC_BLESS=1 cargo test --release --test ffi` \
         and commit the result"
    );
}

/// The header's version macros are Cargo.toml's version.
#[test]
fn version_macros_match_cargo() {
    let header = std::fs::read_to_string(common::root().join("include/subspec.h")).unwrap();
    for (name, value) in [
        ("MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        let line = format!("#define SUBSPEC_VERSION_{name} {value}\n");
        assert!(header.contains(&line), "header lacks `{}`", line.trim());
    }
    let v = unsafe { std::ffi::CStr::from_ptr(subspec::ffi::subspec_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

/// Where the binding tests find their fixtures: `target/tmp/bindings`.
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bindings")
}

fn ids(v: &[u32]) -> String {
    v.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the binding tests' fixtures: a tiny random model (for valgrind) and, for it and
/// SmolLM2, a prompt and the Rust engine's greedy and seeded-sampling continuations, one
/// `key: ids` line each in `<model>.expected`.
#[test]
fn binding_fixtures() {
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = dir.join("tiny");
    common::write_tiny_model(&tiny, false);
    let cases = [
        ("tiny", tiny.clone(), vec![0u32, 5, 17, 42, 99, 3]),
        (
            "smollm2",
            common::model_dir(common::SMOLLM2),
            // "The three primary colours are" in SmolLM2's tokenizer.
            vec![504, 1296, 3003, 14797, 359],
        ),
    ];
    for (name, model, prompt) in cases {
        let mut o = EngineOptions::new(&model);
        o.require_tokenizer = false;
        o.max_context = 256;
        let engine = subspec::Engine::load(&o).unwrap();
        if let Ok(tok) = engine.tokenizer() {
            let want = tok.encode("The three primary colours are", false).unwrap();
            assert_eq!(want, prompt, "the fixture prompt is not the tokenizer's");
        }
        let sampled = SamplingParams::new(0.8, 40, 0.95, 7);
        let mut lines = format!("model: {}\nprompt: {}\n", model.display(), ids(&prompt));
        for (key, opts) in [
            ("greedy", StepOptions::plain(SamplingParams::greedy())),
            ("sampled", StepOptions::plain(sampled)),
        ] {
            let mut seq = engine.new_sequence().unwrap();
            seq.append(&prompt).unwrap();
            let out = seq.generate(&opts, 32, |_| true).unwrap();
            lines += &format!("{key}: {}\n", ids(&out));
        }
        std::fs::write(dir.join(format!("{name}.expected")), lines).unwrap();
    }
}
