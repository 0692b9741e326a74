//! A virtio_net_hdr and frame, as a GSO peer or the device hands them over.
//! The checks live in `taptun::fuzz::virtio_header` (src/fuzz.rs), whose unit tests
//! replay this target's corpus under `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taptun::fuzz::virtio_header(data));
