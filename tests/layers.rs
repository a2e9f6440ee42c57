//! The crate's layers import only downward. Each top-level module of `src/` has a rank
//! (the order `src/lib.rs` documents); every `crate::X` a module's code names must be of
//! its own rank or lower. A new module must be given a rank here, so the layering stays
//! a decision, not an accident.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first. Modules in one entry share a rank and may not import each
/// other either way unless listed in the same entry on purpose.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["util"],
    &["checkpoint"],
    &["tokenizer", "sample"],
    &["quant"],
    &["synth"],
    &["backend"],
    &["plan"],
    &["model"],
    &["spec"],
    &["engine"],
    &["ffi"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate-level modules `code` names through `crate::NAME` or `crate::{NAME, ..}`,
/// outside `//` comments.
fn crate_refs(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(inner) = rest.strip_prefix('{') {
            // Top-level names of the group, up to its matching brace.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&inner[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&inner[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

/// The top-level module a source file belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first),
    }
}

#[test]
fn modules_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut unranked = BTreeMap::new();
    for f in &files {
        let Some(module) = module_of(&src, f) else {
            continue;
        };
        let Some(own) = rank(&module) else {
            unranked.insert(module, f.clone());
            continue;
        };
        let code = std::fs::read_to_string(f).unwrap();
        for name in crate_refs(&code) {
            match rank(&name) {
                // `crate::Engine` and the like: the root's re-exports hide which layer
                // they come from; name the module instead.
                None if name != "internals" => violations.push(format!(
                    "{}: `{module}` names `crate::{name}`: use the module path",
                    f.display()
                )),
                Some(r) if r > own => violations.push(format!(
                    "{}: `{module}` imports `crate::{name}`, which is above it",
                    f.display()
                )),
                // Same rank: only the module itself (layers of one rank are peers that
                // must not depend on each other).
                Some(r) if r == own && name != module => violations.push(format!(
                    "{}: `{module}` imports its peer `crate::{name}`",
                    f.display()
                )),
                _ => {}
            }
        }
    }
    assert!(
        unranked.is_empty(),
        "modules without a layer in tests/layers.rs: {unranked:?}"
    );
    assert!(
        violations.is_empty(),
        "imports going up the stack:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_imports() {
    let refs = crate_refs(
        "use crate::model::Model;\nuse crate::{plan, spec::{Tree, x}};\n// use crate::ffi;\nlet x = crate::engine::f();\nuse crate::{\n    quant,\n    util::human,\n};",
    );
    assert_eq!(refs, ["model", "plan", "spec", "engine", "quant", "util"]);
}

#[test]
fn lib_rs_documents_the_same_layers() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    // The block in lib.rs's documentation, one layer per line, bottom first.
    let block: Vec<Vec<String>> = lib
        .lines()
        .skip_while(|l| !l.contains("```text"))
        .skip(1)
        .take_while(|l| !l.contains("```"))
        .map(|l| {
            let names = l.trim_start_matches("//!").trim();
            let names = names.split("  ").next().unwrap_or("");
            names.split(',').map(|n| n.trim().to_string()).collect()
        })
        .collect();
    let want: Vec<Vec<String>> = LAYERS
        .iter()
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(
        block, want,
        "src/lib.rs's layer list and tests/layers.rs differ"
    );
}
