//! `cargo fuzz run config`: `subspec::internals::fuzz::config` on every input (errors are fine,
//! a panic or a crash is a finding).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = subspec::internals::fuzz::config(data);
});
