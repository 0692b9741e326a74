//! Micro-benchmarks of the per-frame path, next to the bare AEAD it is built on.
//!
//! For each cipher (`chachapoly`, `aesgcm`) and frame size (64 B, 1500 B, and
//! 65509 B, the largest frame taptun sends: a 64 KiB frame does not fit one
//! Noise message), four measurements of one frame going one way and back to
//! plaintext:
//!
//! - `aead-ring`: the bare primitive from snow's ring resolver, the one taptun
//!   uses (`ring-accelerated`): encrypt, then decrypt, with a fixed key;
//! - `aead-rustcrypto`: the same through snow's default (pure Rust) resolver,
//!   what taptun would use without `ring-accelerated`;
//! - `transport`: `handshake::Transport::seal` then `open`, with keys from a
//!   real handshake run in memory (snow's `StatelessTransportState`);
//! - `path`: what the relay does per frame in user space: seal behind a
//!   2-byte prefix in an output buffer (`frame::encode_with`, as the relay
//!   does), then a `frame::FrameReader` reads the
//!   bytes back (one in-memory read, standing in for the kernel's copy),
//!   parses the prefix and hands out the message, which is opened.
//!
//! `path` minus `transport` is the cost of taptun's own code; `transport`
//! minus `aead-ring` is snow's. Everything the kernel does (device and socket
//! syscalls, wake-ups, copies) is outside these numbers: compare them with the
//! CPU-seconds per GB that `contrib/bench.sh` measures for whole processes.

use std::hint::black_box;
use std::io::{self, Read};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snow::params::CipherChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::Cipher as NoiseCipher;

use taptun::{
    Cipher, FrameReader, Hello, Identity, Initiator, Layer, MAX_FRAME, MAX_MESSAGE, MAX_WIRE,
    PrivateKey, Responder, TAG_LEN, Transport,
};

/// Frame sizes: a minimal frame, a full MTU-1500 IP packet, the largest frame.
const SIZES: [usize; 3] = [64, 1500, MAX_FRAME];

/// Two transports as after a real handshake: (initiator, responder).
fn transports(cipher: Cipher) -> (Transport, Transport) {
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let ia = Identity::new(a.clone(), b.public_key(), cipher).expect("valid keys");
    let ib = Identity::new(b, a.public_key(), cipher).expect("valid keys");
    let hello = Hello::new(Layer::Tap, 1500);
    let mut init = Initiator::new(&ia, hello).expect("initiator");
    let mut resp = Responder::new(&ib, hello).expect("responder");
    let mut buf = vec![0u8; 1024];
    // -> psk, e
    let n = init.write_message1(&mut buf).expect("message 1");
    resp.read_message1(&buf[..n]).expect("message 1 reads");
    // <- e, ee, s, es
    let n = resp.write_message2(&mut buf).expect("message 2");
    init.read_message2(&buf[..n]).expect("message 2 reads");
    // -> s, se
    let n = init.write_message3(&mut buf).expect("message 3");
    resp.read_message3(&buf[..n]).expect("message 3 reads");
    (
        init.into_transport().expect("initiator transport").0,
        resp.into_transport().expect("responder transport").0,
    )
}

/// A bare AEAD from one of snow's resolvers, keyed with a fixed key.
fn bare_cipher(resolver: &dyn CryptoResolver, cipher: Cipher) -> Box<dyn NoiseCipher> {
    let choice = match cipher {
        Cipher::ChaChaPoly => CipherChoice::ChaChaPoly,
        Cipher::AesGcm => CipherChoice::AESGCM,
    };
    let mut aead = resolver
        .resolve_cipher(&choice)
        .expect("the resolver offers both ciphers");
    aead.set(&[7u8; 32]);
    aead
}

/// The stream as the reader sees it: the bytes of the last sealed message,
/// handed out by `read` like a socket would (one copy).
struct Wire {
    bytes: Vec<u8>,
    len: usize,
    pos: usize,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn bench_cipher(c: &mut Criterion, cipher: Cipher) {
    let (sender, receiver) = transports(cipher);
    let ring = bare_cipher(&RingResolver, cipher);
    let rustcrypto = bare_cipher(&DefaultResolver, cipher);
    let mut group = c.benchmark_group(cipher.option_name());
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut sealed = vec![0u8; size + TAG_LEN];
        let mut plain = vec![0u8; MAX_MESSAGE];
        group.throughput(Throughput::Bytes(size as u64));

        for (name, aead) in [("aead-ring", &ring), ("aead-rustcrypto", &rustcrypto)] {
            let mut nonce = 0u64;
            group.bench_with_input(BenchmarkId::new(name, size), &frame, |b, frame| {
                b.iter(|| {
                    let n = aead.encrypt(nonce, &[], black_box(frame), &mut sealed);
                    let m = aead
                        .decrypt(nonce, &[], &sealed[..n], &mut plain)
                        .expect("decrypts");
                    nonce += 1;
                    black_box(&plain[..m]);
                });
            });
        }

        let mut nonce = 0u64;
        group.bench_with_input(BenchmarkId::new("transport", size), &frame, |b, frame| {
            b.iter(|| {
                let n = sender
                    .seal(nonce, black_box(frame), &mut sealed)
                    .expect("seals");
                let m = receiver
                    .open(nonce, &sealed[..n], &mut plain)
                    .expect("opens");
                nonce += 1;
                black_box(&plain[..m]);
            });
        });

        // The relay's buffers, allocated once as in relay.rs: an output
        // buffer with room for one full message, and a framed reader.
        let wire = Wire {
            bytes: vec![0u8; MAX_WIRE],
            len: 0,
            pos: 0,
        };
        let mut reader = FrameReader::new(wire);
        let mut nonce = 0u64;
        group.bench_with_input(BenchmarkId::new("path", size), &frame, |b, frame| {
            b.iter(|| {
                let wire = reader.get_mut();
                wire.len = taptun::encode_message_with(&mut wire.bytes, |body| {
                    sender.seal(nonce, black_box(frame), body)
                })
                .expect("seals");
                wire.pos = 0;
                let msg = reader
                    .next_message()
                    .expect("reads")
                    .expect("one whole message");
                let m = receiver.open(nonce, msg, &mut plain).expect("opens");
                nonce += 1;
                black_box(&plain[..m]);
            });
        });
    }
    group.finish();
}

fn frame_path(c: &mut Criterion) {
    bench_cipher(c, Cipher::ChaChaPoly);
    bench_cipher(c, Cipher::AesGcm);
}

criterion_group! {
    name = benches;
    // Short runs: the machines this runs on are small and often busy.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = frame_path
}
criterion_main!(benches);
