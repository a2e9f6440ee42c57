//! Handles: how an opaque C pointer is made from a Rust value, borrowed, shared and freed,
//! written once (rustls-ffi's `Castable`) instead of `Arc::from_raw` by hand in each export.
//!
//! A handle type says how it is owned ([`Castable::Ownership`]): an engine is an `Arc`
//! (its sequences hold counts on it), a sequence a `Box`. The functions below only accept
//! the right ownership, so an `Arc` handle cannot be freed as a `Box` or the reverse.

use std::sync::Arc;

use super::{Failure, FfiResult};

/// Owned through an `Arc`: [`arc_into_handle`], [`clone_arc`], [`free_arc`].
pub(crate) struct OwnershipArc;
/// Owned through a `Box`: [`box_into_handle`], [`free_box`].
pub(crate) struct OwnershipBox;

/// A type whose values cross the boundary as opaque pointers.
pub(crate) trait Castable: Sized {
    /// [`OwnershipArc`] or [`OwnershipBox`].
    type Ownership;
    /// The argument name used in NULL-pointer messages (`"engine"`, `"seq"`).
    const ARG: &'static str;
}

/// A new handle owning one count of `v`; give it back with [`free_arc`].
pub(crate) fn arc_into_handle<T: Castable<Ownership = OwnershipArc>>(v: T) -> *mut T {
    Arc::into_raw(Arc::new(v)).cast_mut()
}

/// A new `Arc` sharing the value behind the live handle `h` (one more count).
///
/// # Safety
/// `h` must be NULL or a live handle from [`arc_into_handle`].
pub(crate) unsafe fn clone_arc<T: Castable<Ownership = OwnershipArc>>(
    h: *const T,
) -> FfiResult<Arc<T>> {
    if h.is_null() {
        return Err(Failure::null(T::ARG));
    }
    // SAFETY: a live handle from `Arc::into_raw`: add a count for the new `Arc`.
    unsafe {
        Arc::increment_strong_count(h);
        Ok(Arc::from_raw(h))
    }
}

/// Releases the count `h` owns; NULL is a no-op.
///
/// # Safety
/// `h` must be NULL or a live handle from [`arc_into_handle`], released only once.
pub(crate) unsafe fn free_arc<T: Castable<Ownership = OwnershipArc>>(h: *mut T) {
    if !h.is_null() {
        // SAFETY: the caller's guarantee.
        drop(unsafe { Arc::from_raw(h.cast_const()) });
    }
}

/// A new handle owning `v`; give it back with [`free_box`].
pub(crate) fn box_into_handle<T: Castable<Ownership = OwnershipBox>>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// Frees the value `h` owns; NULL is a no-op.
///
/// # Safety
/// `h` must be NULL or a live handle from [`box_into_handle`], freed only once.
pub(crate) unsafe fn free_box<T: Castable<Ownership = OwnershipBox>>(h: *mut T) {
    if !h.is_null() {
        // SAFETY: the caller's guarantee.
        drop(unsafe { Box::from_raw(h) });
    }
}

/// Borrows the value behind a live handle, of either ownership.
///
/// # Safety
/// `h` must be NULL or a live handle, and stay live for `'a`.
pub(crate) unsafe fn borrow<'a, T: Castable>(h: *const T) -> FfiResult<&'a T> {
    // SAFETY: the caller's guarantee.
    unsafe { h.as_ref() }.ok_or_else(|| Failure::null(T::ARG))
}
