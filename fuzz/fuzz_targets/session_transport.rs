//! An established session's receiving side (the real relay) reading a hostile stream.
//! The checks live in `taptun::fuzz::session_transport`, which `tests/fuzz_corpus.rs`
//! also runs over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::session_transport(data));
