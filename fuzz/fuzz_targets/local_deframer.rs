//! The stream of a local endpoint (-d qemu:, qemu-connect:, vde:), cut into frames.
//! The checks live in `taptun::fuzz::local_deframer` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::local_deframer(data));
