//! Fault injection on the slow tier's reads, for tests (`subspec::internals::faults`):
//! make the next reads of a model file fail with EIO, come back short, or block for a
//! while, at a chosen point of a streamed pass. Every read of
//! `checkpoint::direct::read_group` (one per tensor: the streamer's, and the
//! load's of resident weights) asks `take` first; with nothing armed that is one atomic
//! load.
//!
//! The plan is process-wide: a test binary that injects faults must not run other
//! engines' reads concurrently (tests/faults.rs serialises its tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What a faulty read does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The read fails with EIO.
    Eio,
    /// The read returns half of what was asked, then end of file.
    ShortRead,
    /// The read blocks this long, then succeeds.
    Stall(Duration),
}

struct Plan {
    /// Reads to let through before the first faulty one.
    skip: u64,
    fault: Fault,
    /// Faulty reads left.
    times: u64,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static PLAN: Mutex<Option<Plan>> = Mutex::new(None);

/// Arms `fault` for `times` reads, after letting `skip` reads through. Replaces any plan.
pub fn inject(fault: Fault, skip: u64, times: u64) {
    let mut p = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    *p = Some(Plan { skip, fault, times });
    ARMED.store(times > 0, Ordering::SeqCst);
}

/// Disarms any plan.
pub fn clear() {
    let mut p = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    *p = None;
    ARMED.store(false, Ordering::SeqCst);
}

/// Faulty reads still armed (`0`: the plan is spent or there is none).
pub fn pending() -> u64 {
    PLAN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |p| p.times)
}

/// Called before every read: the fault this read must suffer, if any.
pub(crate) fn take() -> Option<Fault> {
    if !ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let mut guard = PLAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = guard.as_mut()?;
    if p.skip > 0 {
        p.skip -= 1;
        return None;
    }
    p.times -= 1;
    let f = p.fault;
    if p.times == 0 {
        *guard = None;
        ARMED.store(false, Ordering::SeqCst);
    }
    Some(f)
}
