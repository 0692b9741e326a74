//! The handshake fed hostile messages: a mode byte picks which message the rest replaces.
//! The checks live in `taptun::fuzz::responder_handshake` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::responder_handshake(data));
