//! Small shared utilities with no model knowledge: byte sizes for people, the CPU's SIMD
//! features (detected once, used by the CPU kernels and the quantizer) and the one order
//! their 16-lane sums take, handing freed heap memory back to the system, and the flag that
//! stops a sequence's call mid-way.

mod abort;
pub(crate) mod bytes;
pub(crate) mod isa;
pub(crate) mod lanes;

pub use abort::AbortHandle;
pub use bytes::{human, parse_bytes};

/// Hands the heap's free memory back to the system (glibc's `malloc_trim`; elsewhere
/// nothing). Loading frees a lot in large pieces (tokenizer construction, quantization
/// scratch) that glibc would otherwise keep resident: 30-180 MiB for the test models'
/// tokenizers alone (docs/RELIABILITY.md, "The budget is a promise").
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
