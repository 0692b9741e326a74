//! The length-prefix codec: decode and FrameReader agree on any bytes.
//! The checks live in `taptun::fuzz::frame_decoder` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::frame_decoder(data));
