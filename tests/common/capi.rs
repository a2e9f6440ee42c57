//! The C ABI from Rust test code: loading, sequences, steps, and a small seeded random
//! generator (shared by tests/stress.rs and tests/soak.rs).

use std::ffi::CString;
use std::path::Path;

use subspec::ffi::*;

/// A raw handle moved between threads; the C ABI documents engines as shareable and
/// sequences as usable from any one thread at a time.
pub struct Handle<T>(pub *mut T);
impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Handle<T> {}
// SAFETY: see the type's comment; the shared-sequence test relies on the ABI's own
// in-use check, which is what it tests.
unsafe impl<T> Send for Handle<T> {}
unsafe impl<T> Sync for Handle<T> {}

/// Loads `dir` through the C ABI with a context of `context`, a memory budget of `budget`
/// bytes (`0`: everything resident) and `threads` threads.
pub fn load(dir: &Path, context: u32, budget: u64, threads: u32) -> Handle<subspec_engine> {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut p = super::c_load_params();
    p.model_path = path.as_ptr();
    p.context_length = context;
    p.memory_budget = budget;
    p.threads = threads;
    let mut e = std::ptr::null_mut();
    // SAFETY: initialised params with a path string outliving the call; an out pointer to
    // a local.
    assert_eq!(unsafe { subspec_load(&p, &mut e) }, subspec_status::Ok);
    Handle(e)
}

pub fn create(e: Handle<subspec_engine>) -> Handle<subspec_sequence> {
    let mut s = std::ptr::null_mut();
    // SAFETY: a live engine and an out pointer to a local.
    assert_eq!(
        unsafe { subspec_sequence_create(e.0, &mut s) },
        subspec_status::Ok
    );
    Handle(s)
}

pub fn tokens(s: Handle<subspec_sequence>) -> Vec<i32> {
    let mut buf = vec![0i32; 4096];
    let mut n = 0;
    // SAFETY: a live sequence not used by another thread; `buf` holds 4096 ids.
    let st = unsafe { subspec_sequence_tokens(s.0, buf.as_mut_ptr(), buf.len(), &mut n) };
    assert_eq!(st, subspec_status::Ok);
    buf.truncate(n);
    buf
}

pub fn step_params(temperature: f32, seed: u64, speculate: bool) -> subspec_step_params {
    let mut sp = super::c_step_params();
    sp.temperature = temperature;
    sp.seed = seed;
    sp.speculate = speculate;
    if temperature > 0.0 {
        sp.top_k = 40;
        sp.top_p = 0.95;
    }
    sp
}

/// One `subspec_step`: its status and the tokens it returned.
pub fn step(
    s: Handle<subspec_sequence>,
    sp: &subspec_step_params,
    input: &[i32],
    cap: usize,
) -> (subspec_status, Vec<i32>) {
    let mut out = vec![-1i32; cap];
    let mut n = 0;
    // SAFETY: a live sequence; `input` and `out` valid for their lengths.
    let st = unsafe {
        subspec_step(
            s.0,
            sp,
            if input.is_empty() {
                std::ptr::null()
            } else {
                input.as_ptr()
            },
            input.len(),
            out.as_mut_ptr(),
            cap,
            &mut n,
        )
    };
    out.truncate(if st == subspec_status::Ok { n } else { 0 });
    (st, out)
}

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
