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
//! - `path`: what the relay does per frame in user space, with the relay's
//!   own code: the session's channel seals the frame behind its 2-byte
//!   prefix in an output buffer, then a `frame::FrameReader` reads the bytes
//!   back (one in-memory read, standing in for the kernel's copy), parses
//!   the prefix and hands out the message, which the peer's channel opens.
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
    Channel, Cipher, Established, FrameReader, Framing, Hello, Identity, Initiator, Layer,
    MAX_FRAME, MAX_WIRE, OPEN_ROOM, Opened, PrivateKey, PublicKey, Responder, Sealed, TAG_LEN,
    Transport, VirtioKind,
};

/// Frame sizes: a minimal frame, a full MTU-1500 IP packet, the largest frame.
const SIZES: [usize; 3] = [64, 1500, MAX_FRAME];

/// Two transports as after a real handshake: (initiator, responder).
fn transports(cipher: Cipher) -> (Transport, Transport) {
    let ((ti, _), (tr, _)) = handshake(cipher);
    (ti, tr)
}

/// The initiator's channel and the responder's, as the relay gets them.
fn channels(cipher: Cipher) -> (Channel, Channel) {
    let ((ti, ki), (tr, kr)) = handshake(cipher);
    let channel = |transport, peer_key| {
        let established = Established {
            transport,
            peer_hello: Hello::new(Layer::Tap, 1500),
            peer_key,
            send_nonce: 0,
            recv_nonce: 0,
        };
        Channel::new(established, Framing::Plain, VirtioKind::Ethernet)
    };
    (channel(ti, ki), channel(tr, kr))
}

/// A real handshake in memory: each side's transport and peer key.
type Ends = ((Transport, PublicKey), (Transport, PublicKey));

fn handshake(cipher: Cipher) -> Ends {
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
        init.into_transport().expect("initiator transport"),
        resp.into_transport().expect("responder transport"),
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
    let (Channel { mut sender, .. }, Channel { mut receiver, .. }) = channels(cipher);
    let (seal_with, open_with) = transports(cipher);
    let ring = bare_cipher(&RingResolver, cipher);
    let rustcrypto = bare_cipher(&DefaultResolver, cipher);
    let mut group = c.benchmark_group(cipher.option_name());
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut sealed = vec![0u8; size + TAG_LEN];
        let mut plain = vec![0u8; OPEN_ROOM];
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
                let n = seal_with
                    .seal(nonce, black_box(frame), &mut sealed)
                    .expect("seals");
                let m = open_with
                    .open(nonce, &sealed[..n], &mut plain)
                    .expect("opens");
                nonce += 1;
                black_box(&plain[..m]);
            });
        });

        // The relay's buffers, allocated once as in relay.rs: a packet as
        // read from the device, an output buffer with room for one full
        // message, and a framed reader.
        let wire = Wire {
            bytes: vec![0u8; MAX_WIRE],
            len: 0,
            pos: 0,
        };
        let mut reader = FrameReader::new(wire);
        let mut packet = frame.clone();
        group.bench_function(BenchmarkId::new("path", size), |b| {
            b.iter(|| {
                let wire = reader.get_mut();
                let Sealed::Message { used, .. } =
                    sender.seal(black_box(&mut packet), &mut wire.bytes)
                else {
                    panic!("not sealed");
                };
                wire.len = used;
                wire.pos = 0;
                let msg = reader
                    .next_message()
                    .expect("reads")
                    .expect("one whole message");
                let Opened::Frame { len, .. } = receiver.open(msg, &mut plain) else {
                    panic!("not opened");
                };
                black_box(&plain[..len]);
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
