//! The status codes of the C ABI: the one list.
//!
//! [`subspec_status`] below is the only place a status code is written down. cbindgen turns
//! it into the C enum; `build.rs` reads this file and generates (into `OUT_DIR`, included
//! at the end of this module) the rest:
//! - `subspec_status::ALL`, `subspec_status::from_u32` and `subspec_status::description`
//!   (the strings `subspec_status_string` returns), from each variant's first doc line;
//! - [`status_of`], the `ErrorKind -> status` mapping: each engine status maps from the
//!   [`ErrorKind`] of the same name, as one exhaustive `match`, so an `ErrorKind` without a
//!   status, or a status naming an `ErrorKind` that does not exist, fails to compile.
//!
//! The form build.rs requires of each variant (it fails the build otherwise):
//!
//! ```text
//! /// "<string>": <what it means>              an engine status: from ErrorKind::<Name>
//! /// "<string>" (C layer): <what it means>    raised by the C layer itself (no ErrorKind)
//! <Name> = <number>,
//! ```
//!
//! Numbers are stable and explicit; a new code is only ever appended (a larger number
//! than every existing one); a retired code stays as a comment, its number never reused.

use crate::error::ErrorKind;

/// The result of every call. `0` is success; the numbers are stable (new codes are only
/// ever appended). Each code's first comment line is its `subspec_status_string()`; codes
/// marked "(C layer)" come from the C layer's own checks, the others from the engine.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum subspec_status {
    /// "ok" (C layer): success.
    Ok = 0,
    /// "I/O error": a file or directory could not be opened or read.
    Io = 1,
    /// "invalid model": a model file is malformed (corrupt safetensors, bad JSON, wrong size).
    InvalidModel = 2,
    /// "unsupported model": the model is well-formed but uses something this engine does
    /// not support.
    Unsupported = 3,
    /// "invalid argument": a parameter is out of range or inconsistent (the message names
    /// it), including a params struct whose `struct_size` this library cannot accept.
    InvalidArgument = 4,
    /// "invalid token": a token id is negative or outside the model's vocabulary.
    InvalidToken = 5,
    /// "context full": the sequence would exceed its context length.
    ContextFull = 6,
    /// "out of memory": the memory budget is too small (the message states the minimum).
    OutOfMemory = 7,
    /// "device unavailable": the requested device is not available (e.g. CUDA without a
    /// driver).
    DeviceUnavailable = 8,
    /// "tokenizer error": the tokenizer is missing or failed.
    Tokenizer = 9,
    /// "aborted": aborted by the caller (a load's progress or abort callback, or
    /// `subspec_sequence_abort` during a step, an iteration's begin or an eval).
    Aborted = 10,
    /// "internal error": a bug: an internal invariant was violated.
    Internal = 11,
    /// "null pointer" (C layer): a required pointer argument was NULL.
    NullPointer = 12,
    /// "buffer too small" (C layer): an output buffer is too small; the required size was
    /// written where documented.
    BufferTooSmall = 13,
    /// "panic" (C layer): the library panicked (a bug); the call had no effect other than
    /// what its documentation says about panics.
    Panic = 14,
    /// "invalid state": the call is not valid in the sequence's current state: a step,
    /// eval, truncate or reset while a host-sampled iteration is open, or an iteration call
    /// when none is open or it has ended. Nothing changed.
    InvalidState = 15,
}

include!(concat!(env!("OUT_DIR"), "/status_generated.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_numbered_in_order_with_distinct_strings() {
        let all = subspec_status::ALL;
        // The numbers published in 0.1/0.2 never change.
        assert_eq!(all.len(), 16);
        for (i, s) in all.iter().enumerate() {
            assert_eq!(*s as u32, i as u32, "{s:?}");
            assert_eq!(subspec_status::from_u32(i as u32), Some(*s));
        }
        assert_eq!(subspec_status::from_u32(all.len() as u32), None);
        let strings: std::collections::HashSet<&std::ffi::CStr> =
            all.iter().map(|s| s.description()).collect();
        assert_eq!(strings.len(), all.len());
        assert_eq!(subspec_status::Ok.description(), c"ok");
        assert_eq!(subspec_status::Io.description(), c"I/O error");
        assert_eq!(subspec_status::Panic.description(), c"panic");
    }

    #[test]
    fn every_kind_has_its_own_engine_status() {
        use ErrorKind::*;
        let kinds = [
            Io,
            InvalidModel,
            Unsupported,
            InvalidArgument,
            InvalidToken,
            ContextFull,
            OutOfMemory,
            DeviceUnavailable,
            Tokenizer,
            Aborted,
            Internal,
            InvalidState,
        ];
        let codes: std::collections::HashSet<u32> =
            kinds.iter().map(|&k| status_of(k) as u32).collect();
        assert_eq!(codes.len(), kinds.len());
        for c in [
            subspec_status::Ok,
            subspec_status::NullPointer,
            subspec_status::BufferTooSmall,
            subspec_status::Panic,
        ] {
            assert!(!codes.contains(&(c as u32)), "{c:?} is the C layer's own");
        }
        assert_eq!(status_of(InvalidToken), subspec_status::InvalidToken);
    }
}
