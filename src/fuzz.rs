//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus under `cargo test`: one function per target, so
//! the fuzzer and CI run exactly the same code.
