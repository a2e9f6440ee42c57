//! The C ABI: the only module with `extern "C"`. `include/subspec.h` is generated from it
//! by cbindgen (`cbindgen.toml`); `tests/ffi.rs` fails when the committed header is stale.
//!
//! The rules every export follows (rustls-ffi is the model):
//! - handles are opaque ([`subspec_engine`], [`subspec_sequence`]) and made, shared and
//!   freed only through `handle.rs`; `*_free(NULL)` is a no-op;
//! - every call runs inside a panic boundary and returns a [`subspec_status`]; a panic
//!   becomes [`subspec_status::Panic`], never an unwind across the C frame;
//! - every pointer is checked for NULL ([`subspec_status::NullPointer`]); out-of-range
//!   tokens, too-small buffers and bad parameters are errors, never undefined behaviour;
//! - every struct that crosses the boundary is size-versioned (`struct_size` first, see
//!   `versioned.rs`), so fields can be added without breaking callers;
//! - outputs are written last and only on success (the one exception: on
//!   [`subspec_status::BufferTooSmall`] the required size is written, so the caller can
//!   retry with a larger buffer);
//! - on failure the message is kept for [`subspec_last_error`], per thread and per engine.
//!
//! Status codes are listed once, in `status.rs`; build.rs generates their strings and the
//! mapping from [`ErrorKind`](crate::ErrorKind), [`status_of`], from that list.

mod engine;
pub(crate) mod fuzz;
mod handle;
mod sequence;
mod status;
mod versioned;

pub use engine::*;
pub use sequence::*;
pub use status::{status_of, subspec_status};

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::error::Error;

/// Library major version (matches Cargo.toml; checked at compile time).
pub const SUBSPEC_VERSION_MAJOR: u32 = 0;
/// Library minor version (matches Cargo.toml; checked at compile time).
pub const SUBSPEC_VERSION_MINOR: u32 = 2;
/// Library patch version (matches Cargo.toml; checked at compile time).
pub const SUBSPEC_VERSION_PATCH: u32 = 0;

/// Parses a decimal version component at compile time.
const fn parse_version(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

const _: () = assert!(
    SUBSPEC_VERSION_MAJOR == parse_version(env!("CARGO_PKG_VERSION_MAJOR"))
        && SUBSPEC_VERSION_MINOR == parse_version(env!("CARGO_PKG_VERSION_MINOR"))
        && SUBSPEC_VERSION_PATCH == parse_version(env!("CARGO_PKG_VERSION_PATCH")),
    "SUBSPEC_VERSION_* in src/ffi/mod.rs must match the version in Cargo.toml"
);

/// A failed call: its status and message.
#[derive(Debug)]
pub(crate) struct Failure {
    status: subspec_status,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: subspec_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A NULL `name` argument.
    pub(crate) fn null(name: &str) -> Self {
        Failure::new(
            subspec_status::NullPointer,
            format!("`{name}` must not be NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(subspec_status::InvalidArgument, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(status_of(e.kind()), e.message())
    }
}

pub(crate) type FfiResult<T> = Result<T, Failure>;

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` inside the panic boundary; on failure records the message for this thread
/// and, when given, for `slot` (an engine's last-error slot).
pub(crate) fn boundary(
    slot: Option<&Mutex<String>>,
    f: impl FnOnce() -> FfiResult<()>,
) -> subspec_status {
    boundary_in(slot.as_slice(), f)
}

/// [`boundary`], recording a failure in every slot of `slots` (a sequence's and its
/// engine's).
pub(crate) fn boundary_in(
    slots: &[&Mutex<String>],
    f: impl FnOnce() -> FfiResult<()>,
) -> subspec_status {
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return subspec_status::Ok,
        Ok(Err(failure)) => failure,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown payload".into());
            Failure::new(
                subspec_status::Panic,
                format!("internal panic (a bug in subspec): {what}"),
            )
        }
    };
    record_in(slots, &failure.message);
    failure.status
}

/// Stores `message` as the last error of this thread (and of `slot`).
pub(crate) fn record(slot: Option<&Mutex<String>>, message: &str) {
    record_in(slot.as_slice(), message)
}

/// Stores `message` as the last error of this thread and of every slot of `slots`.
pub(crate) fn record_in(slots: &[&Mutex<String>], message: &str) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        LAST_ERROR.with(|e| message.clone_into(&mut e.borrow_mut()));
        for slot in slots {
            keep(slot, message);
        }
    }));
}

/// Stores `message` in `slot` alone.
pub(crate) fn keep(slot: &Mutex<String>, message: &str) {
    message.clone_into(&mut slot.lock().unwrap_or_else(|p| p.into_inner()));
}

/// Checks that an output pointer is not NULL.
pub(crate) fn check_out<T>(p: *mut T, name: &str) -> FfiResult<()> {
    if p.is_null() {
        Err(Failure::null(name))
    } else {
        Ok(())
    }
}

/// The `n` elements at `p` (`p` may be NULL when `n` is 0).
///
/// # Safety
/// When `n > 0`, `p` must be NULL or valid for reads of `n` elements for `'a`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize, name: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::null(name));
    }
    if n.checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Failure::invalid(format!(
            "`{name}`: {n} elements is too many"
        )));
    }
    // SAFETY: non-NULL, size checked above, validity guaranteed by the caller.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a CStr> {
    if p.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's guarantee.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A NUL-terminated string argument that must be valid UTF-8.
///
/// # Safety
/// As [`c_str`].
pub(crate) unsafe fn c_utf8<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    // SAFETY: the caller's guarantee.
    unsafe { c_str(p, name) }?
        .to_str()
        .map_err(|_| Failure::invalid(format!("`{name}` is not valid UTF-8")))
}

/// Token ids from C (`int32_t`) to the engine's `u32`, refusing negative ids.
pub(crate) fn token_ids(ids: &[i32]) -> FfiResult<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| {
                Failure::new(
                    subspec_status::InvalidToken,
                    format!("token id {t} is out of range: ids are non-negative"),
                )
            })
        })
        .collect()
}

/// Copies `items` into the caller's buffer `(out, cap)` and writes the count to `n_out`;
/// when `cap` is too small writes only the required count and fails.
///
/// # Safety
/// `out` must be NULL or valid for writes of `cap` elements; `n_out` valid for a write.
pub(crate) unsafe fn write_items<T: Copy>(
    items: &[T],
    out: *mut T,
    cap: usize,
    n_out: *mut usize,
    what: &str,
) -> FfiResult<()> {
    check_out(n_out, "n_out")?;
    if items.len() > cap {
        // SAFETY: checked non-NULL; the caller guarantees validity.
        unsafe { n_out.write(items.len()) };
        return Err(Failure::new(
            subspec_status::BufferTooSmall,
            format!(
                "{what}: the buffer holds {cap} but {} are needed",
                items.len()
            ),
        ));
    }
    if !items.is_empty() {
        check_out(out, "out")?;
        // SAFETY: `out` holds `cap >= items.len()` elements by the caller's guarantee.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len()) };
    }
    // SAFETY: as above.
    unsafe { n_out.write(items.len()) };
    Ok(())
}

/// Copies `s` with a terminating NUL into `(buf, cap)`; the size needed (NUL included) is
/// written to `needed` when not NULL, on success and on `BufferTooSmall`.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `cap` bytes; `needed` NULL or valid.
pub(crate) unsafe fn write_string(
    s: &str,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> FfiResult<()> {
    let bytes = s.as_bytes();
    let n = bytes.len() + 1;
    if !needed.is_null() {
        // SAFETY: non-NULL, valid by the caller's guarantee.
        unsafe { needed.write(n) };
    }
    if cap < n {
        return Err(Failure::new(
            subspec_status::BufferTooSmall,
            format!("the buffer holds {cap} bytes but {n} are needed"),
        ));
    }
    check_out(buf, "buf")?;
    // SAFETY: `buf` holds `cap >= n` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// The library version, e.g. `"0.2.0"`: a static NUL-terminated string (never free it).
#[no_mangle]
pub extern "C" fn subspec_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A short static description of a status code (`"ok"`, `"I/O error"`, ...: the first
/// comment line of each code in [`subspec_status`]; `"unknown status"` for a value not in
/// it). Never NULL; never free it.
#[no_mangle]
pub extern "C" fn subspec_status_string(status: u32) -> *const c_char {
    subspec_status::from_u32(status)
        .map_or(c"unknown status", subspec_status::description)
        .as_ptr()
}

/// Copies the message of the last failed call into `buf` (NUL-terminated, UTF-8).
///
/// With `engine` NULL: the last failure on the calling thread (any engine or none). With an
/// engine: the last failure of a call on that engine or on one of its sequences, from any
/// thread. Successful calls do not clear it; with no failure yet the message is empty.
/// `*needed` (when `needed` is not NULL) receives the size including the NUL, also when
/// the buffer is too small; `buf` may be NULL when `cap` is 0 (a size query).
///
/// Returns `OK`, or `BUFFER_TOO_SMALL` (nothing written to `buf`). This call does not
/// itself change the last error.
///
/// # Safety
/// `engine` must be NULL or a live engine handle; `buf` NULL or valid for `cap` bytes;
/// `needed` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn subspec_last_error(
    engine: *const subspec_engine,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    // SAFETY: the caller guarantees `engine` is NULL or live.
    let slot = unsafe { engine.as_ref() }.map(|e| &e.last_error);
    // SAFETY: buffer validity is the caller's guarantee.
    unsafe { copy_last_error(slot, buf, cap, needed) }
}

/// Copies the message in `slot` (the thread's last error when `None`) as
/// [`subspec_last_error`] does, without changing any last error.
///
/// # Safety
/// `buf` NULL or valid for `cap` bytes; `needed` NULL or valid for a write.
pub(crate) unsafe fn copy_last_error(
    slot: Option<&Mutex<String>>,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> subspec_status {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let message = match slot {
            Some(s) => s.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            None => LAST_ERROR.with(|e| e.borrow().clone()),
        };
        // SAFETY: buffer validity is the caller's guarantee.
        unsafe { write_string(&message, buf, cap, needed) }
    }));
    match r {
        Ok(Ok(())) => subspec_status::Ok,
        Ok(Err(f)) => f.status,
        Err(_) => subspec_status::Panic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        LAST_ERROR.with(|e| e.borrow().clone())
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let slot = Mutex::new(String::new());
        let st = boundary(Some(&slot), || panic!("boom {}", 42));
        assert_eq!(st, subspec_status::Panic);
        assert!(last().contains("boom 42"), "{}", last());
        assert!(slot.lock().unwrap().contains("boom 42"));
        // Success leaves the last error as it was.
        assert_eq!(boundary(None, || Ok(())), subspec_status::Ok);
        assert!(last().contains("boom 42"));
    }

    #[test]
    fn buffers_too_small_report_the_size_needed() {
        let mut n = 0usize;
        let mut out = [0i32; 2];
        let f = unsafe { write_items(&[1, 2, 3], out.as_mut_ptr(), 2, &mut n, "ids") };
        assert_eq!(f.unwrap_err().status, subspec_status::BufferTooSmall);
        assert_eq!((n, out), (3, [0, 0]));
        let mut buf = [7 as c_char; 4];
        let f = unsafe { write_string("abcd", buf.as_mut_ptr(), 4, &mut n) };
        assert_eq!(f.unwrap_err().status, subspec_status::BufferTooSmall);
        assert_eq!((n, buf[0]), (5, 7));
        unsafe { write_string("abc", buf.as_mut_ptr(), 4, &mut n) }.unwrap();
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }, c"abc");
    }
}
