//! The length-prefix codec: decode and FrameReader agree on any bytes.
//! The checks live in `taptun::fuzz::frame_decoder`, which `tests/fuzz_corpus.rs`
//! also runs over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::frame_decoder(data));
