//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/`) and the seed
//! inputs of `taptun::fuzz::seeds` through the very functions the fuzz
//! targets call, so that CI checks every input the fuzzer found
//! interesting in seconds, without libFuzzer or a nightly compiler.
//!
//! `cargo test --test fuzz_corpus -- --ignored` (re)writes the seed inputs
//! into the corpus directories as `seed-NAME`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `fuzz` over every file of the target's corpus and over its seeds;
/// a panic names the input.
fn replay(target: &str, fuzz: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    let start = Instant::now();
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        run_one(&path.display().to_string(), &data, fuzz);
    }
    let seeds: Vec<_> = taptun::fuzz::seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == target)
        .collect();
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (_, name, data) in &seeds {
        run_one(&format!("seed {name}"), data, fuzz);
    }
    println!(
        "{target}: {} corpus files and {} seeds in {:?}",
        files.len(),
        seeds.len(),
        start.elapsed()
    );
}

fn run_one(what: &str, data: &[u8], fuzz: fn(&[u8])) {
    let result = std::panic::catch_unwind(|| fuzz(data));
    if let Err(panic) = result {
        eprintln!("input {what} ({} bytes) failed", data.len());
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", taptun::fuzz::frame_decoder);
}

#[test]
fn responder_handshake_corpus() {
    replay("responder_handshake", taptun::fuzz::responder_handshake);
}

#[test]
fn session_transport_corpus() {
    replay("session_transport", taptun::fuzz::session_transport);
}

#[test]
fn virtio_header_corpus() {
    replay("virtio_header", taptun::fuzz::virtio_header);
}

/// Writes the seed inputs into the corpus directories.
#[test]
#[ignore = "writes fuzz/corpus/: run on purpose to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, name, data) in taptun::fuzz::seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
