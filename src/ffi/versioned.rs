//! Size-versioned structs: how a struct that crosses the boundary grows without breaking
//! the callers compiled against an older header (or a newer one).
//!
//! Every such struct begins with `size_t struct_size`, the struct's size as the *caller*
//! was compiled (`sizeof`), and its layout only ever grows at the end. The rules, as
//! Linux's `copy_struct_from_user` (clone3, openat2) and Windows' `cbSize` have them:
//!
//! - **defaults** are never returned by value (a caller compiled against a smaller struct
//!   would get a larger one written into its return slot): `subspec_X_init(p, size)`
//!   zeroes all `size` bytes, writes the defaults of the first `min(size, known)` and sets
//!   `struct_size = size` ([`init`]);
//! - **inputs** ([`read`]): the library reads only `struct_size` bytes and defaults the
//!   fields beyond them; a `struct_size` of 0 or below the first published layout is
//!   `INVALID_ARGUMENT`; a larger one (a newer caller) is accepted only if every byte the
//!   library does not know is zero, since a set field it cannot honour must not be ignored;
//! - **outputs** ([`write()`]): the library writes only `min(struct_size, known)` bytes and
//!   stores that number in `struct_size`, so a newer caller sees which fields were filled;
//! - a field added later has zero as its default (an older library's `_init` leaves it
//!   zero); no struct has trailing padding (checked at compile time: a field added later
//!   could otherwise land in bytes an older library counts as known and ignores), so
//!   `reserved` bytes fill the gap where needed and must be zero like an unknown tail.

use super::{Failure, FfiResult};

/// Largest `struct_size` accepted, as Linux's `copy_struct_from_user` caps it at a page: a
/// garbage size (a struct never initialized) fails cleanly instead of reading far beyond it.
pub(crate) const MAX_STRUCT_SIZE: usize = 4096;

/// A struct that can grow.
///
/// # Safety
/// Implementors are `#[repr(C)]`, begin with `struct_size: usize` and have no trailing
/// padding ([`check_layout`]); every bit pattern a C caller can write into their fields
/// is a valid value (integers, floats, `bool`s written by C, raw and optional function
/// pointers), so copying caller bytes over a value is sound.
pub(crate) unsafe trait Versioned: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// The size of the first published layout (subspec 0.2.0): the smallest `struct_size`
    /// accepted. The header's `SUBSPEC_<NAME>_SIZE_0_2` macro is the same offset.
    const MIN_SIZE: usize;
    /// The defaults (`struct_size` is this library's size).
    fn defaults() -> Self;
}

/// `offset + size_of::<F>()`: where a field of type `F` at `offset` ends. The closure only
/// names the field's type.
pub(crate) const fn end_of<T, F>(offset: usize, _field: fn(&T) -> &F) -> usize {
    offset + std::mem::size_of::<F>()
}

/// Where field `$f` of struct `$t` ends (its offset plus its size), at compile time.
macro_rules! field_end {
    ($t:ty, $f:ident) => {
        $crate::ffi::versioned::end_of(std::mem::offset_of!($t, $f), |s: &$t| &s.$f)
    };
}
pub(crate) use field_end;

/// Compile-time check of a versioned struct's layout: `struct_size` first, and
/// `last_end` (where its last field ends) equal to its size: no trailing padding.
pub(crate) const fn check_layout<T>(struct_size_offset: usize, last_end: usize) {
    assert!(
        struct_size_offset == 0,
        "struct_size must be the first field"
    );
    assert!(
        last_end == std::mem::size_of::<T>(),
        "a versioned struct must not end in padding: add `reserved` bytes"
    );
}

fn invalid<T: Versioned>(what: String) -> Failure {
    Failure::invalid(format!("{}: {what}", T::NAME))
}

/// Checks a caller's size for `T`: at least the first published layout, at most a page.
fn check_size<T: Versioned>(size: usize, field: &str) -> FfiResult<()> {
    if size == 0 {
        return Err(invalid::<T>(format!(
            "{field} is 0: initialize the struct first (its _INIT macro passes sizeof)"
        )));
    }
    if size < T::MIN_SIZE {
        return Err(invalid::<T>(format!(
            "{field} {size} is smaller than its first published layout ({} bytes, subspec \
             0.2.0)",
            T::MIN_SIZE
        )));
    }
    if size > MAX_STRUCT_SIZE {
        return Err(invalid::<T>(format!(
            "{field} {size} is implausibly large (over {MAX_STRUCT_SIZE}): the struct was \
             not initialized"
        )));
    }
    Ok(())
}

/// The caller's `struct_size`.
///
/// # Safety
/// `p` must be non-NULL and valid for reads of a `usize`.
unsafe fn struct_size<T>(p: *const T) -> usize {
    // SAFETY: the caller's guarantee; `struct_size` is the first field of every `T`.
    unsafe { p.cast::<usize>().read_unaligned() }
}

/// Initializes the caller's `size` bytes at `p` with `value` (zeros beyond the fields
/// this library knows) and sets `struct_size = size`.
///
/// # Safety
/// `p` must be NULL or valid for writes of `size` bytes.
pub(crate) unsafe fn init<T: Versioned>(p: *mut T, size: usize, value: T) -> FfiResult<()> {
    if p.is_null() {
        return Err(Failure::null(T::NAME));
    }
    check_size::<T>(size, "size")?;
    let n = size.min(std::mem::size_of::<T>());
    let bytes = p.cast::<u8>();
    // SAFETY: `p` is valid for `size >= n` bytes; `value` is `size_of::<T>() >= n` bytes.
    unsafe {
        bytes.write_bytes(0, size);
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), bytes, n);
        p.cast::<usize>().write_unaligned(size);
    }
    Ok(())
}

/// Reads the caller's input struct at `p` (argument `name`): the first `struct_size`
/// bytes over the defaults; a larger `struct_size` only with a zero tail.
///
/// # Safety
/// `p` must be NULL or valid for reads of its `struct_size` bytes.
pub(crate) unsafe fn read<T: Versioned>(p: *const T, name: &str) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: the caller's guarantee.
    let size = unsafe { struct_size(p) };
    check_size::<T>(size, &format!("{name}->struct_size"))?;
    let known = std::mem::size_of::<T>();
    let bytes = p.cast::<u8>();
    if size > known {
        // SAFETY: `p` is valid for `size` bytes.
        let tail = unsafe { std::slice::from_raw_parts(bytes.add(known), size - known) };
        if let Some(i) = tail.iter().position(|&b| b != 0) {
            return Err(invalid::<T>(format!(
                "byte {} of {size} is set, in a field unknown to this library version \
                 (subspec {}, which knows {known} bytes): the caller's header is newer than \
                 the library",
                known + i,
                env!("CARGO_PKG_VERSION"),
            )));
        }
    }
    let mut value = T::defaults();
    // SAFETY: `p` is valid for `size` bytes and `value` for `known`; every bit pattern the
    // caller wrote is valid for `T` (the trait's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes, (&mut value as *mut T).cast::<u8>(), size.min(known))
    };
    Ok(value)
}

/// Writes `value` into the caller's output struct at `p` (argument `name`): the first
/// `min(struct_size, known)` bytes, with `struct_size` set to that number.
///
/// # Safety
/// `p` must be NULL or valid for reads and writes of its `struct_size` bytes.
pub(crate) unsafe fn write<T: Versioned>(p: *mut T, name: &str, value: T) -> FfiResult<()> {
    if p.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: the caller's guarantee.
    let size = unsafe { struct_size(p) };
    check_size::<T>(size, &format!("{name}->struct_size"))?;
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `p` is valid for `size >= n` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), p.cast::<u8>(), n);
        p.cast::<usize>().write_unaligned(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::subspec_status;
    use super::*;

    /// A struct that grew: `b` was added after the first published layout.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Grown {
        struct_size: usize,
        a: u32,
        b: u32,
    }

    // SAFETY: repr(C), struct_size first, no padding, plain integers.
    unsafe impl Versioned for Grown {
        const NAME: &'static str = "grown";
        const MIN_SIZE: usize = field_end!(Grown, a);
        fn defaults() -> Self {
            Grown {
                struct_size: std::mem::size_of::<Grown>(),
                a: 1,
                b: 2,
            }
        }
    }
    const _: () = check_layout::<Grown>(
        std::mem::offset_of!(Grown, struct_size),
        field_end!(Grown, b),
    );

    fn message(f: Failure) -> String {
        assert_eq!(f.status, subspec_status::InvalidArgument, "{}", f.message);
        f.message
    }

    #[test]
    fn an_old_caller_gets_defaults_for_the_fields_it_lacks() {
        // The old caller's struct ends after `a`; the bytes after it are not its own.
        let mut buf = [0xABu8; 24];
        buf[..8].copy_from_slice(&12usize.to_ne_bytes());
        buf[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let g = unsafe { read(buf.as_ptr().cast::<Grown>(), "g") }.unwrap();
        assert_eq!((g.a, g.b), (7, 2));
        // init writes only the old caller's 12 bytes.
        let mut buf = [0xABu8; 24];
        unsafe { init(buf.as_mut_ptr().cast::<Grown>(), 12, Grown::defaults()) }.unwrap();
        assert_eq!(buf[..8], 12usize.to_ne_bytes());
        assert_eq!(buf[8..12], 1u32.to_ne_bytes());
        assert!(buf[12..].iter().all(|&b| b == 0xAB));
        // An output: only 12 bytes written, and struct_size says so.
        let mut buf = [0xABu8; 24];
        buf[..8].copy_from_slice(&12usize.to_ne_bytes());
        let v = Grown {
            struct_size: 0,
            a: 5,
            b: 6,
        };
        unsafe { write(buf.as_mut_ptr().cast::<Grown>(), "out", v) }.unwrap();
        assert_eq!(buf[..8], 12usize.to_ne_bytes());
        assert_eq!(buf[8..12], 5u32.to_ne_bytes());
        assert!(buf[12..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn zero_or_too_small_sizes_are_refused_by_name() {
        let mut g = Grown::defaults();
        for size in [0, 11, MAX_STRUCT_SIZE + 1] {
            g.struct_size = size;
            let m = message(unsafe { read(&g, "params") }.unwrap_err());
            assert!(m.contains("grown: params->struct_size"), "{m}");
            let m = message(unsafe { write(&mut g, "out", Grown::defaults()) }.unwrap_err());
            assert!(m.contains("grown: out->struct_size"), "{m}");
        }
        let m = message(unsafe { init(&mut g, 0, Grown::defaults()) }.unwrap_err());
        assert!(m.contains("grown: size is 0"), "{m}");
        let f = unsafe { read::<Grown>(std::ptr::null(), "params") }.unwrap_err();
        assert_eq!(f.status, subspec_status::NullPointer);
    }

    #[test]
    fn a_newer_caller_is_accepted_only_with_a_zero_tail() {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Newer {
            old: Grown,
            c: u64,
        }
        let mut n = Newer {
            old: Grown::defaults(),
            c: 0,
        };
        unsafe { init(&mut n.old, std::mem::size_of::<Newer>(), Grown::defaults()) }.unwrap();
        assert_eq!(n.old.struct_size, 24);
        n.old.a = 9;
        let g = unsafe { read(&n.old, "params") }.unwrap();
        assert_eq!((g.a, g.b), (9, 2));
        n.c = 1;
        let m = message(unsafe { read(&n.old, "params") }.unwrap_err());
        assert!(
            m.contains("grown: byte 16 of 24 is set") && m.contains("unknown to this library"),
            "{m}"
        );
        // An output to a newer caller: its tail untouched, struct_size the bytes written.
        unsafe { write(&mut n.old, "out", Grown::defaults()) }.unwrap();
        assert_eq!((n.old.struct_size, n.c), (16, 1));
    }
}
