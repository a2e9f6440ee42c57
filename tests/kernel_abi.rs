//! The CUDA kernels' launch wrappers against the kernels themselves, on any machine (no GPU,
//! no NVRTC).
//!
//! The wrappers (`src/backend/cuda/kernels.rs`) are generated from `kernels/subspec.cu` by
//! `scripts/build-kernels.py`, and `KERNEL_ABI` lists their parameters as the Rust types
//! they pass. Here that table is compared with the committed PTX (the `.entry` of every
//! kernel: same kernels, same parameter count, each parameter's PTX type of the Rust type's
//! size and kind), with the .cu source (same kernels, parameter names and types), and the
//! generated file with what the script makes of the source now (`--check-rust`, where
//! python3 runs). A kernel signature edited in the .cu without regenerating fails the last
//! two; a regenerated table with stale PTX fails the first.

use std::path::Path;
use std::process::Command;

use subspec::internals::{KernelAbi, ParamKind, KERNELS_PTX, KERNEL_ABI};

/// Every `.entry NAME(.param .TYPE NAME_param_0, ...)` of a PTX text, in order, with each
/// parameter's type as written (`.u64`, `.f32`, ...; `.align 8 .b8 [16]` for an aggregate).
fn ptx_entries(ptx: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = ptx;
    while let Some(i) = rest.find(".entry ") {
        rest = &rest[i + ".entry ".len()..];
        let open = rest.find('(').expect("`(` after .entry");
        let name = rest[..open].trim().to_string();
        let close = rest.find(')').expect("`)` closing an .entry's parameters");
        let params = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let words: Vec<&str> = p.split_whitespace().collect();
                assert_eq!(words.first(), Some(&".param"), "{name}: parameter `{p}`");
                // Everything between `.param` and the parameter's name.
                let ty = words[1..words.len() - 1].join(" ");
                let last = words[words.len() - 1];
                match last.find('[') {
                    Some(b) => format!("{ty} {}", &last[b..]),
                    None => ty,
                }
            })
            .collect();
        out.push((name, params));
        rest = &rest[close..];
    }
    out
}

/// Whether a PTX parameter of type `ptx` receives a Rust value of `kind` and `size` bytes.
fn fits(ptx: &str, kind: ParamKind, size: usize) -> bool {
    let int = matches!(kind, ParamKind::Signed | ParamKind::Unsigned);
    let ptr = matches!(kind, ParamKind::ConstPtr | ParamKind::MutPtr);
    match ptx {
        // Pointers and 64-bit integers are both `.u64` in the PTX.
        ".u64" | ".b64" | ".s64" => (int || ptr) && size == 8,
        ".u32" | ".b32" | ".s32" => int && size == 4,
        ".u16" | ".b16" | ".s16" => int && size == 2,
        ".u8" | ".b8" | ".s8" => int && size == 1,
        ".f32" => kind == ParamKind::Float && size == 4,
        ".f64" => kind == ParamKind::Float && size == 8,
        _ => false,
    }
}

/// Every disagreement between PTX entries and a launch table.
fn mismatches(entries: &[(String, Vec<String>)], abi: &[KernelAbi]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, _) in entries {
        if !abi.iter().any(|k| k.name == name) {
            out.push(format!("{name}: in the PTX, not in the Rust table"));
        }
    }
    for k in abi {
        let Some((_, params)) = entries.iter().find(|(n, _)| n == k.name) else {
            out.push(format!("{}: in the Rust table, not in the PTX", k.name));
            continue;
        };
        if params.len() != k.params.len() {
            out.push(format!(
                "{}: {} parameters in the PTX, {} in the Rust table",
                k.name,
                params.len(),
                k.params.len()
            ));
            continue;
        }
        for (i, (ptx, p)) in params.iter().zip(k.params).enumerate() {
            if !fits(ptx, p.kind, p.size) {
                out.push(format!(
                    "{}: parameter {i} (`{}`) is `.param {ptx}` in the PTX but `{}` ({:?}, {} bytes) in the Rust table",
                    k.name, p.name, p.rust_type, p.kind, p.size
                ));
            }
        }
    }
    out
}

#[test]
fn the_launch_table_matches_the_ptx() {
    let entries = ptx_entries(KERNELS_PTX);
    assert!(!entries.is_empty(), "no .entry in the embedded PTX");
    let bad = mismatches(&entries, KERNEL_ABI);
    assert!(
        bad.is_empty(),
        "the Rust launch table and kernels/subspec.ptx disagree (run python3 scripts/build-kernels.py):\n{}",
        bad.join("\n")
    );
    // The embedded PTX is the committed file.
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/subspec.ptx"))
            .unwrap();
    assert!(
        committed == KERNELS_PTX,
        "the embedded PTX is not kernels/subspec.ptx"
    );
}

#[test]
fn the_ptx_comparison_sees_a_changed_signature() {
    let entries = ptx_entries(KERNELS_PTX);
    let (name, params) = entries
        .iter()
        .find(|(_, p)| p.iter().any(|t| t == ".f32"))
        .expect("a kernel with a float parameter");
    // A float parameter turned into an int, one parameter more, one kernel fewer.
    let mut retyped = entries.clone();
    let k = retyped.iter_mut().find(|(n, _)| n == name).unwrap();
    let f = params.iter().position(|t| t == ".f32").unwrap();
    k.1[f] = ".u32".into();
    assert_eq!(
        mismatches(&retyped, KERNEL_ABI).len(),
        1,
        "{name}: .f32 -> .u32"
    );
    let mut longer = entries.clone();
    longer[0].1.push(".u32".into());
    assert_eq!(mismatches(&longer, KERNEL_ABI).len(), 1);
    let fewer = entries[1..].to_vec();
    assert_eq!(mismatches(&fewer, KERNEL_ABI).len(), 1);
    assert_eq!(
        ptx_entries(".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .align 8 .b8 k_param_1[16]\n)\n{\n}\n"),
        vec![("k".to_string(), vec![".u64".to_string(), ".align 8 .b8 [16]".to_string()])]
    );
}

/// `(name, [(parameter name, expected Rust type)])` of every `extern "C" __global__`
/// kernel of a .cu text: a small reimplementation of the generator's parse, so a stale
/// table is caught without python3 too.
fn cu_kernels(cu: &str) -> Vec<(String, Vec<(String, String)>)> {
    // Comments out (line by line: the kernels' declarations have no block comments).
    let code: String = cu
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let element = |c: &str| match c {
        "float" => "f32",
        "__half" => "f16",
        "__nv_bfloat16" => "bf16",
        "unsigned" | "unsigned int" => "u32",
        "int" => "i32",
        "unsigned char" => "u8",
        other => panic!("no Rust element type for `{other}`"),
    };
    let scalar = |c: &str| match c {
        "int" => "i32",
        "unsigned" | "unsigned int" => "u32",
        "long long" | "long long int" => "i64",
        "unsigned long long" => "u64",
        "float" => "f32",
        other => panic!("no Rust type for `{other}`"),
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    let marker = "extern \"C\" __global__ void ";
    while let Some(i) = rest.find(marker) {
        rest = &rest[i + marker.len()..];
        let open = rest.find('(').unwrap();
        let close = rest.find(')').unwrap();
        let name = rest[..open].trim().to_string();
        let params = rest[open + 1..close]
            .split(',')
            .filter(|p| !p.trim().is_empty() && p.trim() != "void")
            .map(|p| {
                let p = p.replace("__restrict__", " ").replace('*', " * ");
                let words: Vec<&str> = p.split_whitespace().collect();
                let (pname, ty) = words.split_last().unwrap();
                let ty = match ty.iter().position(|w| *w == "*") {
                    Some(star) => {
                        let pointee = &ty[..star];
                        let base: Vec<&str> =
                            pointee.iter().copied().filter(|w| *w != "const").collect();
                        let elem = element(&base.join(" "));
                        if pointee.contains(&"const") {
                            format!("DevPtr<{elem}>")
                        } else {
                            format!("DevPtrMut<{elem}>")
                        }
                    }
                    None => {
                        let base: Vec<&str> =
                            ty.iter().copied().filter(|w| *w != "const").collect();
                        scalar(&base.join(" ")).to_string()
                    }
                };
                (pname.to_string(), ty)
            })
            .collect();
        out.push((name, params));
        rest = &rest[close..];
    }
    out
}

#[test]
fn the_launch_table_matches_the_cu_source() {
    let cu =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/subspec.cu"))
            .unwrap();
    let want = cu_kernels(&cu);
    let have: Vec<(String, Vec<(String, String)>)> = KERNEL_ABI
        .iter()
        .map(|k| {
            let params = k
                .params
                .iter()
                .map(|p| {
                    let name = p.name.trim_end_matches('_').to_string();
                    (name, p.rust_type.replace(' ', ""))
                })
                .collect();
            (k.name.to_string(), params)
        })
        .collect();
    assert!(!want.is_empty(), "no kernels found in kernels/subspec.cu");
    assert!(
        have == want,
        "src/backend/cuda/kernels.rs is stale: run python3 scripts/build-kernels.py\n\
         in kernels/subspec.cu: {want:#?}\nin the Rust table: {have:#?}"
    );
}

#[test]
fn the_generated_table_is_what_the_script_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("python3")
        .arg(root.join("scripts/build-kernels.py"))
        .arg("--check-rust")
        .current_dir(root)
        .output();
    let out = match run {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP the_generated_table_is_what_the_script_writes: no python3 ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "python3 scripts/build-kernels.py --check-rust failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
