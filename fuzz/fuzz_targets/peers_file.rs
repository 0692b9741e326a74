//! The hub's peers file: every refusal names a line, everything accepted
//! keeps the file's rules and reads back the same.
//! The checks live in `taptun::fuzz::peers_file` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::peers_file(data));
