//! Replays every committed fuzz seed (`fuzz/corpus/<target>/`) and crash regression
//! (`fuzz/regressions/<target>/`) through the entry functions the cargo-fuzz targets call
//! (`subspec::internals::fuzz`), on the stable toolchain. Seeds named `valid-*` must
//! parse; `invalid-*` must fail with an error naming the file; regressions must not panic.
//! The `capi` target's inputs are scripts of C-ABI calls, all `valid-*`.

use std::path::{Path, PathBuf};

use subspec::internals::fuzz;

type Entry = fn(&[u8]) -> Result<(), subspec::Error>;

fn targets() -> [(&'static str, Entry, &'static str); 5] {
    [
        (
            "config",
            |b| fuzz::config(b).map(|_| ()),
            "fuzz/config.json",
        ),
        (
            "safetensors",
            |b| fuzz::safetensors(b).map(|_| ()),
            "fuzz/model.safetensors",
        ),
        ("gguf", |b| fuzz::gguf(b).map(|_| ()), "fuzz.gguf"),
        (
            "tokenizer",
            |b| fuzz::tokenizer(b).map(|_| ()),
            "fuzz/tokenizer.json",
        ),
        // Scripts of C-ABI calls: every one is `valid-*` (no input is an error; a bug
        // panics).
        ("capi", |b| fuzz::capi(b).map(|_| ()), "fuzz/capi"),
    ]
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_seed_parses_or_fails_as_its_name_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, entry, file) in targets() {
        let seeds = files(&root.join("fuzz/corpus").join(name));
        let (mut valid, mut invalid) = (0, 0);
        for p in &seeds {
            let seed = p.file_name().unwrap().to_str().unwrap();
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.len() < 16 * 1024, "{name}/{seed}: seeds stay small");
            let r = entry(&bytes);
            if seed.starts_with("valid-") {
                r.unwrap_or_else(|e| panic!("{name}/{seed}: {e}"));
                valid += 1;
            } else {
                assert!(
                    seed.starts_with("invalid-"),
                    "{name}/{seed}: valid-* or invalid-*"
                );
                let e = r.expect_err(seed);
                assert!(e.message().contains(file), "{name}/{seed}: {e}");
                invalid += 1;
            }
        }
        assert!(
            valid >= 1 && (invalid >= 2 || name == "capi"),
            "{name}: {valid} valid, {invalid} invalid seeds"
        );
    }
}

#[test]
fn crash_regressions_return_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, entry, _) in targets() {
        for p in files(&root.join("fuzz/regressions").join(name)) {
            let bytes = std::fs::read(&p).unwrap();
            // Either outcome is fine; the regression is that this used to panic.
            let _ = entry(&bytes);
        }
    }
}
