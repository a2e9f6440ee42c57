//! Where a pass spends its device time, kernel by kernel: set `SUBSPEC_CUDA_PROFILE=1` and
//! every kernel launch, cuBLAS product and host copy of the backend is bracketed by two
//! events on its stream and waited for, its time added to the entry of (phase, name).
//! [`phase`] prints the table of the phase that ends to stderr and starts the next; `subspec
//! passes` names its phases (plain, verify, draft). Waiting after every launch takes away
//! the overlap of host and device, so a phase's wall time grows; each entry's device time
//! stays what that launch costs. Off (one relaxed load per launch) unless the variable is
//! set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use cudarc::driver::{result as cu, sys};

use crate::error::Result;

/// 0 unread, 1 off, 2 on.
static STATE: AtomicU8 = AtomicU8::new(0);

struct Table {
    phase: String,
    /// name -> (calls, seconds)
    entries: BTreeMap<&'static str, (u64, f64)>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    phase: String::new(),
    entries: BTreeMap::new(),
});

/// Whether profiling is on (`SUBSPEC_CUDA_PROFILE` set to anything but empty or 0).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("SUBSPEC_CUDA_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Ends the current phase (its table to stderr, when profiling and it recorded anything)
/// and starts `next`.
pub fn phase(next: &str) {
    if !enabled() {
        return;
    }
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    if !t.entries.is_empty() {
        let total: f64 = t.entries.values().map(|e| e.1).sum();
        let mut rows: Vec<_> = t.entries.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "profile {}: {:.3} ms of device time in {} calls\n",
            if t.phase.is_empty() { "-" } else { &t.phase },
            total * 1e3,
            t.entries.values().map(|e| e.0).sum::<u64>()
        );
        for (name, (n, secs)) in rows {
            s += &format!(
                "  {name:24} {n:8} calls {:10.3} ms {:9.2} us/call {:5.1}%\n",
                secs * 1e3,
                secs * 1e6 / *n as f64,
                100.0 * secs / total.max(1e-12)
            );
        }
        eprint!("{s}");
    }
    t.entries.clear();
    t.phase = next.to_string();
}

/// Runs `f` (which queues work on `stream`) and, when profiling, waits for that work and
/// adds its device time to `name`.
pub(crate) fn around<T>(
    stream: sys::CUstream,
    name: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !enabled() {
        return f();
    }
    let ev = || cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).ok();
    let (Some(a), Some(b)) = (ev(), ev()) else {
        return f();
    };
    // SAFETY: events created above on the current context, recorded on the caller's
    // stream, waited for and destroyed here.
    let (out, ms) = unsafe {
        let _ = cu::event::record(a, stream);
        let out = f();
        let _ = cu::event::record(b, stream);
        let _ = cu::event::synchronize(b);
        let ms = cu::event::elapsed(a, b).unwrap_or(0.0);
        let _ = cu::event::destroy(a);
        let _ = cu::event::destroy(b);
        (out, ms)
    };
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let e = t.entries.entry(name).or_insert((0, 0.0));
    e.0 += 1;
    e.1 += ms as f64 / 1e3;
    out
}
