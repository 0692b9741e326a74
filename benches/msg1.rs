//! What one message 1 costs a hub (issue 13): `Candidates::find` on garbage
//! (the worst case: every listed peer is tried) at 1, 100, 1,000 and 10,000
//! peers, against snow's cost of one trial (a `Responder` built and
//! `read_message1` on the same garbage) measured in the same run, and what
//! `Candidates::new` takes (one X25519 per peer) at 1,000 and 10,000.
//!
//! `cargo bench --bench msg1`. Each figure is the median of [`RUNS`] runs;
//! each run repeats the operation for at least [`RUN_TIME`]. Not criterion:
//! a table for docs/PERFORMANCE.md, in a few seconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use taptun::{Candidates, Cipher, Hello, Identity, Layer, PrivateKey, PublicKey, Responder};

const RUNS: usize = 7;
const RUN_TIME: Duration = Duration::from_millis(100);
const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];

/// Median time per call of `f`, in µs.
fn per_call(mut f: impl FnMut()) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0u32;
            while calls == 0 || start.elapsed() < RUN_TIME {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes
}

fn key() -> PrivateKey {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    PrivateKey::from_bytes(bytes)
}

fn main() {
    let hub = key();
    let publics: Vec<PublicKey> = (0..SIZES[SIZES.len() - 1])
        .map(|_| key().public_key())
        .collect();
    let garbage = random_bytes(taptun::MESSAGE1_LEN);
    let long_garbage = random_bytes(1024);
    let hello = Hello::new(Layer::Tap, 1500);

    for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
        println!(
            "\n{} (message 1 of 48 bytes of garbage)\n",
            cipher.noise_name()
        );
        let identity = Identity::new(hub.clone(), publics[0], cipher).expect("a valid key");
        let snow = per_call(|| {
            let mut responder = Responder::new(&identity, hello).expect("valid settings");
            black_box(responder.read_message1(black_box(&garbage)).is_err());
        });
        println!("snow, one trial (Responder::new + read_message1): {snow:.2} µs");
        println!(
            "\n| peers | find() µs per message | µs per peer | snow at this many peers (µs) |"
        );
        println!("|---:|---:|---:|---:|");
        for n in SIZES {
            let candidates = Candidates::new(&hub, cipher, &publics[..n]).expect("valid keys");
            let t = per_call(|| {
                black_box(candidates.find(black_box(&garbage)));
            });
            println!(
                "| {n} | {t:.1} | {:.3} | {:.0} |",
                t / n as f64,
                snow * n as f64
            );
        }
        let candidates = Candidates::new(&hub, cipher, &publics[..1_000]).expect("valid keys");
        let t = per_call(|| {
            black_box(candidates.find(black_box(&long_garbage)));
        });
        println!(
            "\nfind() on 1,024 bytes of garbage (the longest message 1) at 1,000 peers: {t:.1} µs"
        );
    }

    println!("\nCandidates::new (one X25519 per peer, then the precomputation)\n");
    for n in [1_000, 10_000] {
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                black_box(
                    Candidates::new(&hub, Cipher::ChaChaPoly, &publics[..n]).expect("valid keys"),
                );
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "{n} peers: {:.1} ms ({:.1} µs per peer)",
            runs[1],
            runs[1] * 1e3 / n as f64
        );
    }
}
