//! Stopping a sequence's running call from another thread: a server whose client went
//! away, a Go `context.Context` cancelled, a user's Ctrl-C.
//!
//! An [`AbortHandle`] is a flag shared by a sequence and whoever may want to stop it. The
//! forward passes poll it before every decoder layer (a streamed target pass is one
//! layer's transfer from stopping) and so between draft steps; the call then fails with
//! [`ErrorKind::Aborted`] and, as after any failure, the sequence is exactly as before it.
//! A request is consumed by the call it stops; one made while no call runs stops the next
//! call at its first boundary, unless [`AbortHandle::clear`]ed first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// A request to stop one sequence's running (or next) call; clone it to hand it to
/// another thread. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct AbortHandle(Arc<AtomicBool>);

impl AbortHandle {
    /// Asks the sequence's running call, or its next one, to stop at its next boundary.
    /// Any thread, any time; cheap.
    pub fn abort(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Withdraws a request no call has taken yet (e.g. one made just after the call it was
    /// meant for had returned).
    pub fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether a request is waiting.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Takes a waiting request: an `Aborted` error naming where (`at()`) if there was
    /// one. One relaxed load when there is none.
    pub(crate) fn check(&self, at: impl FnOnce() -> String) -> Result<()> {
        if self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::Aborted,
                format!(
                    "aborted by request {}; the sequence is as before the call",
                    at()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once() {
        let h = AbortHandle::default();
        assert!(h.check(|| "here".into()).is_ok());
        let other = h.clone();
        other.abort();
        assert!(h.is_requested());
        let e = h.check(|| "before layer 3".into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Aborted);
        assert!(e.message().contains("before layer 3"), "{e}");
        assert!(h.check(|| "again".into()).is_ok() && !other.is_requested());
        other.abort();
        other.clear();
        assert!(h.check(|| "after a clear".into()).is_ok());
    }
}
