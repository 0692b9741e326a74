//! An established session's receiving half (the relay's own channel) opening a hostile stream.
//! The checks live in `taptun::fuzz::session_transport` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::session_transport(data));
