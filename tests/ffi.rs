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

/// Every function the header declares is marked `SUBSPEC_API` (visibility/dllimport), and
/// the params structs have their init macros.
#[test]
fn every_function_is_subspec_api() {
    let header = std::fs::read_to_string(common::root().join("include/subspec.h")).unwrap();
    let decls: Vec<&str> = header
        .lines()
        .filter(|l| l.contains("subspec_") && l.ends_with(");") && !l.starts_with(' '))
        .filter(|l| !l.starts_with("typedef") && !l.starts_with('#'))
        .collect();
    assert!(decls.len() > 20, "{} declarations found", decls.len());
    for d in decls {
        assert!(d.starts_with("SUBSPEC_API "), "not SUBSPEC_API: {d}");
    }
    for m in [
        "#define SUBSPEC_LOAD_PARAMS_INIT(p)",
        "#define SUBSPEC_STEP_PARAMS_INIT(p)",
        "#define SUBSPEC_ENGINE_STEP_PARAMS_INIT(engine, p)",
        "define SUBSPEC_API __attribute__((visibility(\"default\")))",
    ] {
        assert!(header.contains(m), "header lacks `{m}`");
    }
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

// ---- The C ABI's growable structs and the draft options, called from Rust ----

use std::ffi::{c_char, CStr, CString};
use std::mem::size_of;
use std::sync::OnceLock;

use subspec::ffi::*;

/// A tiny random model for this binary's own tests.
fn tiny() -> &'static CString {
    static DIR: OnceLock<CString> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::temp_dir("ffi-structs");
        common::write_tiny_model(&dir, false);
        CString::new(dir.to_str().unwrap()).unwrap()
    })
}

/// This thread's last error message.
fn last_error() -> String {
    let mut buf = [0 as c_char; 1024];
    unsafe {
        subspec_last_error(
            std::ptr::null(),
            buf.as_mut_ptr(),
            buf.len(),
            std::ptr::null_mut(),
        )
    };
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn load_params() -> subspec_load_params {
    let mut p = common::c_load_params();
    p.model_path = tiny().as_ptr();
    p.context_length = 64;
    p
}

fn minimum_budget(p: *const subspec_load_params) -> Result<u64, (subspec_status, String)> {
    let mut min = 0u64;
    match unsafe { subspec_minimum_budget(p, &mut min) } {
        subspec_status::Ok => Ok(min),
        st => Err((st, last_error())),
    }
}

struct Loaded(*mut subspec_engine);

impl Drop for Loaded {
    fn drop(&mut self) {
        unsafe { subspec_free(self.0) };
    }
}

fn load(p: &subspec_load_params) -> Result<Loaded, (subspec_status, String)> {
    let mut e = std::ptr::null_mut();
    match unsafe { subspec_load(p, &mut e) } {
        subspec_status::Ok => Ok(Loaded(e)),
        st => Err((st, last_error())),
    }
}

fn info(e: &Loaded) -> subspec_model_info {
    let mut i = std::mem::MaybeUninit::<subspec_model_info>::zeroed();
    unsafe { (*i.as_mut_ptr()).struct_size = size_of::<subspec_model_info>() };
    assert_eq!(
        unsafe { subspec_get_model_info(e.0, i.as_mut_ptr()) },
        subspec_status::Ok
    );
    unsafe { i.assume_init() }
}

/// Greedy continuation of a fixed prompt, `n` tokens, with `sp`.
fn generate(e: &Loaded, sp: &subspec_step_params, n: usize) -> Result<Vec<i32>, String> {
    let mut s = std::ptr::null_mut();
    assert_eq!(
        unsafe { subspec_sequence_create(e.0, &mut s) },
        subspec_status::Ok
    );
    let prompt = [0i32, 5, 17, 42, 99, 3];
    let mut input: &[i32] = &prompt;
    let mut out = vec![0i32; n];
    let mut total = 0;
    let mut result = Ok(());
    while total < n {
        let mut got = 0usize;
        let st = unsafe {
            subspec_step(
                s,
                sp,
                input.as_ptr(),
                input.len(),
                out[total..].as_mut_ptr(),
                n - total,
                &mut got,
            )
        };
        if st != subspec_status::Ok {
            result = Err(last_error());
            break;
        }
        input = &[];
        total += got;
    }
    unsafe { subspec_sequence_free(s) };
    result.map(|()| out)
}

/// A caller compiled against a newer header: our struct plus a field we do not know.
#[repr(C)]
#[derive(Clone, Copy)]
struct Newer<T> {
    known: T,
    unknown: u64,
}

#[test]
fn a_struct_size_of_zero_or_below_the_first_layout_is_refused_by_name() {
    let mut p = load_params();
    // The 0.2.0 layout ended with `substitute_all_layers`, where `reserved` now starts.
    let first_layout = std::mem::offset_of!(subspec_load_params, reserved);
    for size in [0, 8, first_layout - 1] {
        p.struct_size = size;
        let (st, msg) = minimum_budget(&p).unwrap_err();
        assert_eq!(st, subspec_status::InvalidArgument, "{msg}");
        assert!(
            msg.contains("subspec_load_params: params->struct_size"),
            "{msg}"
        );
        let mut q = std::mem::MaybeUninit::<subspec_load_params>::uninit();
        let st = unsafe { subspec_load_params_init(q.as_mut_ptr(), size) };
        assert_eq!(st, subspec_status::InvalidArgument);
        assert!(
            last_error().contains("subspec_load_params: size"),
            "{}",
            last_error()
        );
    }
    assert!(minimum_budget(&load_params()).is_ok());

    let e = load(&load_params()).unwrap();
    let mut sp = common::c_step_params();
    sp.struct_size = 0;
    let msg = generate(&e, &sp, 4).unwrap_err();
    assert!(
        msg.contains("subspec_step_params: params->struct_size is 0"),
        "{msg}"
    );
    let mut i: subspec_model_info = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { subspec_get_model_info(e.0, &mut i) },
        subspec_status::InvalidArgument
    );
    assert!(
        last_error().contains("subspec_model_info: out->struct_size is 0"),
        "{}",
        last_error()
    );
    assert_eq!(i.vocab_size, 0, "written on failure");
    let mut s = std::ptr::null_mut();
    assert_eq!(
        unsafe { subspec_sequence_create(e.0, &mut s) },
        subspec_status::Ok
    );
    let mut stats = subspec_sequence_stats {
        struct_size: 16,
        ..Default::default()
    };
    assert_eq!(
        unsafe { subspec_sequence_get_stats(s, &mut stats) },
        subspec_status::InvalidArgument
    );
    assert!(
        last_error().contains("subspec_sequence_stats: out->struct_size 16"),
        "{}",
        last_error()
    );
    unsafe { subspec_sequence_free(s) };
}

#[test]
fn a_newer_callers_struct_is_accepted_only_with_a_zero_tail() {
    let mut p = Newer {
        known: load_params(),
        unknown: 0,
    };
    let n =
        unsafe { subspec_load_params_init(&mut p.known, size_of::<Newer<subspec_load_params>>()) };
    assert_eq!(n, subspec_status::Ok);
    assert_eq!(p.known.struct_size, size_of::<Newer<subspec_load_params>>());
    assert!(
        p.known.build_draft && p.unknown == 0,
        "init zeroes the unknown tail"
    );
    p.known.model_path = tiny().as_ptr();
    p.known.context_length = 64;
    let plain = minimum_budget(&load_params()).unwrap();
    assert_eq!(minimum_budget(&p.known), Ok(plain));
    p.unknown = 1;
    let (st, msg) = minimum_budget(&p.known).unwrap_err();
    assert_eq!(st, subspec_status::InvalidArgument);
    assert!(
        msg.contains("subspec_load_params: byte")
            && msg.contains("unknown to this library version"),
        "{msg}"
    );

    // Step params too, and the reserved bytes count as unknown.
    let e = load(&load_params()).unwrap();
    let mut sp = Newer {
        known: common::c_step_params(),
        unknown: 0,
    };
    sp.known.struct_size = size_of::<Newer<subspec_step_params>>();
    let want = generate(&e, &common::c_step_params(), 8).unwrap();
    assert_eq!(generate(&e, &sp.known, 8).unwrap(), want);
    sp.unknown = 1 << 40;
    assert!(generate(&e, &sp.known, 8)
        .unwrap_err()
        .contains("unknown to this library version"));
    let mut r = common::c_step_params();
    r.reserved[0] = 1;
    assert!(generate(&e, &r, 8)
        .unwrap_err()
        .contains("`reserved` is not zero"));

    // An output struct larger than ours: our bytes written, the tail untouched.
    let mut i = Newer {
        known: unsafe { std::mem::zeroed::<subspec_model_info>() },
        unknown: 7,
    };
    i.known.struct_size = size_of::<Newer<subspec_model_info>>();
    assert_eq!(
        unsafe { subspec_get_model_info(e.0, &mut i.known) },
        subspec_status::Ok
    );
    assert_eq!(
        (i.known.struct_size, i.known.vocab_size, i.unknown),
        (size_of::<subspec_model_info>(), 128, 7)
    );
}

#[test]
fn an_old_caller_passing_the_first_layout_size_gets_the_defaults() {
    // In 0.2.0 the first published layout is the whole struct; a caller passing exactly
    // that size reads and writes nothing beyond it (the C suite checks it under valgrind
    // with structs allocated at exactly that size).
    let mut p = load_params();
    p.struct_size = size_of::<subspec_load_params>();
    assert!(load(&p).is_ok());
    let sp = common::c_step_params();
    assert_eq!(sp.struct_size, size_of::<subspec_step_params>());
    assert!(sp.speculate && !sp.adaptive_depth && sp.tree_width == 1 && sp.tree_depth == 8);
}

#[test]
fn quantize_lm_head_costs_memory_and_is_reported() {
    let shared = load_params();
    let mut own = load_params();
    own.quantize_lm_head = true;
    let (min_shared, min_own) = (
        minimum_budget(&shared).unwrap(),
        minimum_budget(&own).unwrap(),
    );
    assert!(
        min_own > min_shared,
        "quantized lm_head: minimum {min_own} vs {min_shared}"
    );
    let (a, b) = (info(&load(&shared).unwrap()), info(&load(&own).unwrap()));
    assert_eq!(a.draft_lm_head_bytes, 0);
    assert!(b.draft_lm_head_bytes > 0 && b.draft_bytes == a.draft_bytes + b.draft_lm_head_bytes);
    assert!(a.has_draft && a.n_substitute_layers == 2 && a.draft_bytes > 0);
    let mut none = load_params();
    none.build_draft = false;
    let c = info(&load(&none).unwrap());
    assert!(!c.has_draft && c.draft_bytes == 0 && c.n_substitute_layers == 0);
}

#[test]
fn draft_vocab_limits_the_drafts_head_and_is_checked() {
    let full = info(&load(&load_params()).unwrap());
    let vocab = full.vocab_size;
    let mut p = load_params();
    p.draft_vocab = vocab / 2;
    // a view of the target's head: no bytes, the same minimum
    assert_eq!(
        minimum_budget(&p).unwrap(),
        minimum_budget(&load_params()).unwrap()
    );
    assert_eq!(info(&load(&p).unwrap()).draft_lm_head_bytes, 0);
    // quantized: half the full quantized head's bytes
    p.quantize_lm_head = true;
    let half = info(&load(&p).unwrap()).draft_lm_head_bytes;
    p.draft_vocab = 0;
    let whole = info(&load(&p).unwrap()).draft_lm_head_bytes;
    assert!(half > 0 && 2 * half == whole, "{half} vs {whole}");
    p.draft_vocab = vocab + 1;
    let (st, msg) = load(&p).err().unwrap();
    assert_eq!(st, subspec_status::InvalidArgument, "{msg}");
    assert!(msg.contains(&format!("draft_vocab {}", vocab + 1)), "{msg}");
}

#[test]
fn draft_shortlist_and_head_bits_shape_a_ranking_head_and_are_checked() {
    // The tiny model's 128 tokens are too few for a ranking head by default.
    let head = |p: &subspec_load_params| info(&load(p).unwrap()).draft_lm_head_bytes;
    assert_eq!(head(&load_params()), 0);
    let mut p = load_params();
    p.draft_shortlist = 32;
    let (two, min_two) = (head(&p), minimum_budget(&p).unwrap());
    assert!(two > 0 && min_two > minimum_budget(&load_params()).unwrap());
    p.draft_head_bits = 4;
    assert!(head(&p) > two && minimum_budget(&p).unwrap() > min_two);
    // none: with quantize_lm_head, the head whose logits are the draft's (4-bit, as the
    // substitutes); it steps like any draft
    let mut raw = load_params();
    raw.quantize_lm_head = true;
    let own = head(&raw);
    raw.draft_shortlist = SUBSPEC_SHORTLIST_NONE;
    assert_eq!(head(&raw), own);
    raw.draft_head_bits = 2;
    assert_eq!(head(&raw), two);
    for (field, value, says) in [
        (0, 129, "shortlist of 129 tokens exceeds"),
        (1, 5, "draft_head_bits"),
        (1, 300, "draft_head_bits 300 is out of range"),
    ] {
        let mut q = load_params();
        match field {
            0 => q.draft_shortlist = value,
            _ => q.draft_head_bits = value,
        }
        let (st, msg) = load(&q).err().unwrap();
        assert_eq!(st, subspec_status::InvalidArgument, "{msg}");
        assert!(msg.contains(says), "{msg}");
    }
}

/// The statistics count the draft steps run while target passes waited for a streamed
/// layer: the tiny model at its minimum budget (every layer streamed), every read slowed
/// so that passes wait.
#[test]
fn stats_count_draft_steps_run_during_passes() {
    use std::time::Duration;
    use subspec::internals::faults::{self, Fault};
    let mut p = load_params();
    p.memory_budget = minimum_budget(&p).unwrap();
    let e = load(&p).unwrap();
    assert!(info(&e).n_offloaded_layers > 0);
    let mut sp = common::c_step_params();
    sp.tree_depth = 4;
    let mut s = std::ptr::null_mut();
    assert_eq!(
        unsafe { subspec_sequence_create(e.0, &mut s) },
        subspec_status::Ok
    );
    faults::inject(Fault::Stall(Duration::from_millis(1)), 0, u64::MAX);
    let prompt = [0i32, 5, 17, 42, 99, 3];
    let (mut input, mut out, mut total) = (&prompt[..], [0i32; 8], 0);
    while total < 24 {
        let mut got = 0usize;
        let st = unsafe {
            subspec_step(
                s,
                &sp,
                input.as_ptr(),
                input.len(),
                out.as_mut_ptr(),
                8,
                &mut got,
            )
        };
        assert_eq!(st, subspec_status::Ok, "{}", last_error());
        (input, total) = (&[], total + got);
    }
    faults::clear();
    let mut stats = subspec_sequence_stats {
        struct_size: size_of::<subspec_sequence_stats>(),
        ..Default::default()
    };
    assert_eq!(
        unsafe { subspec_sequence_get_stats(s, &mut stats) },
        subspec_status::Ok
    );
    unsafe { subspec_sequence_free(s) };
    assert!(
        stats.overlapped_steps > 0 && stats.overlapped_steps <= stats.draft_steps,
        "{stats:?}"
    );
    assert!(stats.reused_trees <= stats.iterations, "{stats:?}");
}

#[test]
fn kv_dtype_sizes_the_planned_cache_and_is_checked() {
    let mut p = load_params();
    p.context_length = 256;
    let min = |d| {
        let mut q = p;
        q.kv_dtype = d;
        minimum_budget(&q).unwrap()
    };
    // the default is f16 on the CPU; f32 costs twice its KV bytes, bf16 the same
    assert_eq!(min(SUBSPEC_KV_DEFAULT), min(SUBSPEC_KV_F16));
    assert_eq!(min(SUBSPEC_KV_BF16), min(SUBSPEC_KV_F16));
    assert!(min(SUBSPEC_KV_F32) > min(SUBSPEC_KV_F16));
    for d in [SUBSPEC_KV_F32, SUBSPEC_KV_F16, SUBSPEC_KV_BF16] {
        p.kv_dtype = d;
        assert!(load(&p).is_ok(), "kv_dtype {d}");
    }
    p.kv_dtype = 4;
    let (st, msg) = load(&p).err().unwrap();
    assert_eq!(st, subspec_status::InvalidArgument, "{msg}");
    assert!(msg.contains("kv_dtype 4 is none of"), "{msg}");
    // a two-byte cache on CUDA is refused before any device is opened
    p.kv_dtype = SUBSPEC_KV_F16;
    p.device = 0;
    let (st, msg) = load(&p).err().unwrap();
    assert_eq!(st, subspec_status::Unsupported, "{msg}");
    assert!(msg.contains("kv_dtype f16"), "{msg}");
}

#[test]
fn substitute_layers_and_substitute_all_layers_choose_the_drafts_layers() {
    let mut p = load_params();
    p.memory_budget = minimum_budget(&p).unwrap();
    let all = info(&load(&p).unwrap());
    assert!(all.n_offloaded_layers >= 1 && all.n_substitute_layers == 2);
    p.substitute_all_layers = false;
    p.memory_budget = minimum_budget(&p).unwrap();
    let offloaded = info(&load(&p).unwrap());
    assert_eq!(offloaded.n_substitute_layers, offloaded.n_offloaded_layers);

    let mut p = load_params();
    let layers = [1u32];
    p.substitute_layers = layers.as_ptr();
    p.n_substitute_layers = 1;
    assert_eq!(info(&load(&p).unwrap()).n_substitute_layers, 1);
    let twice = [1u32, 1];
    p.substitute_layers = twice.as_ptr();
    p.n_substitute_layers = 2;
    let (st, msg) = load(&p).err().unwrap();
    assert!(
        st == subspec_status::InvalidArgument && msg.contains("layer 1 twice"),
        "{msg}"
    );
    let bad = [5u32];
    p.substitute_layers = bad.as_ptr();
    p.n_substitute_layers = 1;
    let (st, msg) = load(&p).err().unwrap();
    assert!(
        st == subspec_status::InvalidArgument && msg.contains("layer 5"),
        "{msg}"
    );
    p.substitute_layers = std::ptr::null();
    let (st, msg) = load(&p).err().unwrap();
    assert!(
        st == subspec_status::NullPointer && msg.contains("substitute_layers"),
        "{msg}"
    );
}

/// Every draft option and adaptive depth leave the output exactly plain decoding's.
#[test]
fn the_new_options_are_lossless() {
    let base = load_params();
    let plain_engine = load(&base).unwrap();
    let mut plain = common::c_step_params();
    plain.speculate = false;
    let want = generate(&plain_engine, &plain, 24).unwrap();
    let layers = [0u32];
    for variant in 0..4 {
        let mut p = load_params();
        match variant {
            0 => p.quantize_lm_head = true,
            1 => {
                p.substitute_all_layers = false;
                p.memory_budget = minimum_budget(&p).unwrap();
            }
            2 => {
                p.substitute_layers = layers.as_ptr();
                p.n_substitute_layers = 1;
            }
            _ => {
                p.quantize_lm_head = true;
                p.memory_budget = minimum_budget(&p).unwrap();
            }
        }
        let e = load(&p).unwrap();
        for adaptive in [false, true] {
            let mut sp = std::mem::MaybeUninit::<subspec_step_params>::uninit();
            let st = unsafe {
                subspec_engine_step_params_init(
                    e.0,
                    sp.as_mut_ptr(),
                    size_of::<subspec_step_params>(),
                )
            };
            assert_eq!(st, subspec_status::Ok);
            let mut sp = unsafe { sp.assume_init() };
            sp.adaptive_depth = adaptive;
            let got = generate(&e, &sp, 24).unwrap();
            assert_eq!(got, want, "variant {variant}, adaptive {adaptive}");
        }
    }
}

#[test]
fn status_strings_come_from_the_list() {
    let s = |n: u32| {
        unsafe { CStr::from_ptr(subspec_status_string(n)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(s(0), "ok");
    assert_eq!(
        s(subspec_status::InvalidArgument as u32),
        "invalid argument"
    );
    assert_eq!(s(14), "panic");
    assert_eq!(s(15), "invalid state");
    assert_eq!(s(16), "unknown status");
    assert_eq!(s(u32::MAX), "unknown status");
    assert_eq!(
        status_of(subspec::ErrorKind::ContextFull),
        subspec_status::ContextFull
    );
}

/// `subspec_step_batch`: three sequences stepped together give what each gives alone
/// through `subspec_step`; a bad input fails only its sequence, which is left unchanged;
/// malformed calls are refused whole.
#[test]
fn step_batch_through_the_c_abi_equals_solo_steps() {
    let p = load_params();
    let e = load(&p).unwrap();
    let mut greedy = common::c_step_params();
    greedy.speculate = true;
    let mut sampled = common::c_step_params();
    sampled.temperature = 0.8;
    sampled.seed = 3;
    let plain = common::c_step_params();
    let params = [greedy, sampled, plain];
    let want: Vec<Vec<i32>> = params
        .iter()
        .map(|sp| generate(&e, sp, 12).unwrap())
        .collect();

    let mut seqs: Vec<*mut subspec_sequence> = Vec::new();
    for _ in 0..4 {
        let mut s = std::ptr::null_mut();
        assert_eq!(
            unsafe { subspec_sequence_create(e.0, &mut s) },
            subspec_status::Ok
        );
        seqs.push(s);
    }
    let prompt = [0i32, 5, 17, 42, 99, 3];
    let bad = [0i32, -4];
    let cap = 16;
    let mut got: Vec<Vec<i32>> = vec![Vec::new(); 3];
    let mut first = true;
    while got.iter().any(|g| g.len() < 12) {
        let ps: Vec<*const subspec_step_params> = params.iter().map(|p| p as *const _).collect();
        let mut ps4 = ps.clone();
        ps4.push(&plain);
        let (inputs, n_inputs): (Vec<*const i32>, Vec<usize>) = if first {
            (
                vec![
                    prompt.as_ptr(),
                    prompt.as_ptr(),
                    prompt.as_ptr(),
                    bad.as_ptr(),
                ],
                vec![6, 6, 6, 2],
            )
        } else {
            (vec![std::ptr::null(); 4], vec![0; 4])
        };
        let n = if first { 4 } else { 3 };
        let mut out = vec![-1i32; n * cap];
        let mut n_out = vec![99usize; n];
        let mut statuses = vec![subspec_status::Internal; n];
        let st = unsafe {
            subspec_step_batch(
                e.0,
                seqs.as_ptr(),
                n,
                ps4.as_ptr(),
                inputs.as_ptr(),
                n_inputs.as_ptr(),
                out.as_mut_ptr(),
                cap,
                n_out.as_mut_ptr(),
                statuses.as_mut_ptr(),
            )
        };
        assert_eq!(st, subspec_status::Ok, "{}", last_error());
        for i in 0..3 {
            assert_eq!(statuses[i], subspec_status::Ok);
            got[i].extend_from_slice(&out[i * cap..i * cap + n_out[i]]);
        }
        if first {
            assert_eq!(statuses[3], subspec_status::InvalidToken);
            assert_eq!(n_out[3], 0);
            assert!(last_error().contains("seqs[3]"), "{}", last_error());
            let mut len = 7usize;
            assert_eq!(
                unsafe { subspec_sequence_tokens(seqs[3], std::ptr::null_mut(), 0, &mut len) },
                subspec_status::Ok
            );
            assert_eq!(len, 0, "the failed sequence appended nothing");
        }
        first = false;
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g[..12], w[..12], "sequence {i}");
    }
    // Two sequences fail in one batch: each keeps its own message; the engine's and the
    // thread's last error is the last one's, prefixed.
    let seq_error = |s: *const subspec_sequence| -> String {
        let mut buf = [0 as c_char; 512];
        let mut needed = 0usize;
        let st = unsafe { subspec_sequence_last_error(s, buf.as_mut_ptr(), 512, &mut needed) };
        assert_eq!(st, subspec_status::Ok);
        let m = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        assert_eq!(needed, m.len() + 1);
        m
    };
    let huge = [i32::MAX];
    let (inputs, n_inputs) = ([bad.as_ptr(), huge.as_ptr()], [2usize, 1]);
    let two = [seqs[3], seqs[2]];
    let ps2 = [&plain as *const subspec_step_params; 2];
    let (mut out, mut n_out, mut statuses) = ([0i32; 8], [0usize; 2], [subspec_status::Ok; 2]);
    let st = unsafe {
        subspec_step_batch(
            e.0,
            two.as_ptr(),
            2,
            ps2.as_ptr(),
            inputs.as_ptr(),
            n_inputs.as_ptr(),
            out.as_mut_ptr(),
            4,
            n_out.as_mut_ptr(),
            statuses.as_mut_ptr(),
        )
    };
    assert_eq!(st, subspec_status::Ok);
    assert_eq!(statuses, [subspec_status::InvalidToken; 2]);
    let (m3, m2) = (seq_error(seqs[3]), seq_error(seqs[2]));
    assert!(m3.contains("-4") && !m3.starts_with("seqs["), "{m3}");
    assert!(
        m2.contains(&i32::MAX.to_string()) && !m2.contains("-4"),
        "{m2}"
    );
    assert_eq!(last_error(), format!("seqs[1]: {m2}"));
    assert_eq!(seq_error(seqs[0]), "", "a sequence that never failed");
    // A failed call on the sequence itself replaces its message; a size query and a
    // buffer too small write nothing; NULL is refused.
    assert_eq!(
        unsafe { subspec_sequence_truncate(seqs[3], 1000) },
        subspec_status::InvalidArgument
    );
    let m = seq_error(seqs[3]);
    assert!(m.contains("1000"), "{m}");
    let (mut small, mut needed) = ([7 as c_char; 4], 0usize);
    assert_eq!(
        unsafe { subspec_sequence_last_error(seqs[3], small.as_mut_ptr(), 4, &mut needed) },
        subspec_status::BufferTooSmall
    );
    assert_eq!((small, needed), ([7 as c_char; 4], m.len() + 1));
    assert_eq!(
        unsafe {
            subspec_sequence_last_error(std::ptr::null(), small.as_mut_ptr(), 4, &mut needed)
        },
        subspec_status::NullPointer
    );
    // Refused whole: NULL arrays, a sequence twice, another engine's sequence.
    let mut out = [0i32; 8];
    let mut n_out = [0usize; 2];
    let mut statuses = [subspec_status::Ok; 2];
    let ps = [&plain as *const subspec_step_params; 2];
    let call = |s: &[*mut subspec_sequence], ps: *const *const subspec_step_params| unsafe {
        let (o, n, st) = (
            out.as_ptr() as *mut i32,
            n_out.as_ptr() as *mut usize,
            statuses.as_ptr() as *mut subspec_status,
        );
        subspec_step_batch(
            e.0,
            s.as_ptr(),
            s.len(),
            ps,
            std::ptr::null(),
            std::ptr::null(),
            o,
            4,
            n,
            st,
        )
    };
    assert_eq!(
        call(&seqs[..2], std::ptr::null()),
        subspec_status::NullPointer
    );
    assert_eq!(
        call(&[seqs[0], seqs[0]], ps.as_ptr()),
        subspec_status::InvalidArgument
    );
    assert!(last_error().contains("twice"), "{}", last_error());
    let other = load(&p).unwrap();
    let mut o = std::ptr::null_mut();
    assert_eq!(
        unsafe { subspec_sequence_create(other.0, &mut o) },
        subspec_status::Ok
    );
    assert_eq!(
        call(&[seqs[0], o], ps.as_ptr()),
        subspec_status::InvalidArgument
    );
    assert!(last_error().contains("another engine"), "{}", last_error());
    let st = unsafe {
        subspec_step_batch(
            std::ptr::null(),
            seqs.as_ptr(),
            1,
            ps.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            out.as_mut_ptr(),
            4,
            n_out.as_mut_ptr(),
            statuses.as_mut_ptr(),
        )
    };
    assert_eq!(st, subspec_status::NullPointer);
    unsafe { subspec_sequence_free(o) };
    for s in seqs {
        unsafe { subspec_sequence_free(s) };
    }
}
