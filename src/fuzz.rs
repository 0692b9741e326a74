//! Entry points for the fuzz targets in `fuzz/` and for the tests at the end
//! of this file that replay their corpora under `cargo test`: one function
//! per target, so that the fuzzer and CI run exactly the same code. Built
//! only for those two (`cfg(fuzzing)`, which cargo-fuzz sets, or
//! `cfg(test)`): the shipped library carries none of it.
//!
//! Each function takes arbitrary bytes and must never panic, hang or grow
//! without bound; a panic here is a finding. Besides "does not crash", each
//! checks what taptun promises about hostile input:
//!
//! - [`frame_decoder`]: [`frame::decode`] and [`FrameReader`] (whole, in
//!   random-sized chunks with interrupted reads, with a small buffer grown
//!   half-way) agree on the same messages and the same ending, and every
//!   message has 1..=65535 bytes matching its prefix.
//! - [`responder_handshake`]: the first input byte picks the message the
//!   rest replaces in a handshake between two fixed identities with fixed
//!   ephemeral keys (see [`handshake_mode`] for the list). Nothing but the
//!   genuine message is ever accepted, a responder answers nothing to a
//!   message 1 that does not authenticate, a replayed message 1 gets no
//!   answer, and a hello is accepted exactly when its version and layer are.
//! - [`session_transport`]: an established session's receiving half (the
//!   relay's own [`Receiver`]) opens the messages of a stream made of a few
//!   genuinely sealed frames followed by the input, until one is fatal. The
//!   genuine prefix opens, nothing opens that was not sealed by the peer at
//!   its nonce, in order, and no genuine message is refused.
//! - [`virtio_header`]: a frame with its virtio_net_hdr, as a GSO peer or the
//!   device hands it over, read both as a TAP frame and as a TUN packet.
//!   [`vnet::check`] only passes headers whose every offset lies inside the
//!   frame, and super-frames only as TCP that the kernel can segment (the
//!   GSO type matching the IP version, the checksum at the TCP header's
//!   checksum field, a segment size of at least 48); [`vnet::strip`] either
//!   refuses or returns the frame with a checksum that verifies.
//!
//! - [`peers_file`]: the hub's peers file as [`peers::read`] parses it,
//!   for tap or tun and a limit of 0 to 127 peers (both from the first
//!   byte). A refusal names a line of the text; what passes keeps every
//!   rule on its own (names, keys that give a psk, unique devices, options
//!   in range), parses back to itself when written out again, and compares
//!   with itself and a part of itself as a reload would.
//! - [`local_deframer`]: the stream of a `qemu:`/`qemu-connect:` or `vde:`
//!   endpoint ([`Deframer`]), fed in pseudo-random pieces, gives exactly
//!   the frames, oversize lengths and the malformed length that a plain
//!   reading of the whole stream finds, and no frame above its limit.
//!
//! [`seeds`] makes the meaningful inputs of the committed seed corpus
//! (valid messages, truncated ones), so that they can be regenerated.

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::channel::{self, Channel, Framing, Opened};
use crate::device::Layer;
use crate::error::HandshakeCause;
use crate::frame::{self, FrameError, FrameReader};
use crate::handshake::{
    self, Cipher, HandshakeError, Hello, Identity, Initiator, MESSAGE1_LEN, MessageIo, ReplayCache,
    Responder, TAG_LEN, Transport,
};
use crate::keys::{KEY_LEN, PrivateKey, PublicKey};
use crate::local::{Deframer, Event, Format, Malformed};
use crate::peers::{self, PeerLine};
use crate::vnet;

// ---------------------------------------------------------------------------
// Target 1: the frame codec.

/// How a run of messages ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The bytes ended at a message boundary.
    Clean,
    /// A zero length prefix.
    ZeroLength,
    /// The bytes ended inside a message.
    Truncated,
}

/// Fuzz target: the length-prefix codec.
pub fn frame_decoder(data: &[u8]) {
    let (expected, ending) = decode_all(data);

    let mut whole = FrameReader::new(data);
    check_reader(&mut whole, &expected, &ending, None, "one read");

    let chunks = Chunks::new(data);
    let mut chunked = FrameReader::with_capacity(chunks, frame::MAX_WIRE);
    check_reader(&mut chunked, &expected, &ending, None, "chunked reads");

    // As a session does: a small buffer during the handshake, grown after.
    let chunks = Chunks::new(data);
    let mut grown = FrameReader::with_capacity(chunks, frame::MAX_WIRE);
    check_reader(&mut grown, &expected, &ending, Some(1), "grown buffer");
}

/// The reference: [`frame::decode`] over the bytes, message by message.
fn decode_all(data: &[u8]) -> (Vec<&[u8]>, Ending) {
    let mut messages = Vec::new();
    let mut rest = data;
    loop {
        match frame::decode(rest) {
            Ok(Some((start, end))) => {
                assert_eq!(
                    start,
                    frame::HEADER_LEN,
                    "a message starts after its prefix"
                );
                let (prefix, body) = (&rest[..start], &rest[start..end]);
                let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
                assert_eq!(body.len(), len, "a message is as long as its prefix says");
                assert!((1..=frame::MAX_MESSAGE).contains(&len));
                messages.push(body);
                rest = &rest[end..];
            }
            Ok(None) => {
                // Only when the bytes really are short of a whole message.
                if let [a, b, ..] = rest {
                    let need = frame::HEADER_LEN + usize::from(u16::from_be_bytes([*a, *b]));
                    assert!(rest.len() < need, "decode asked for more bytes than needed");
                }
                let ending = if rest.is_empty() {
                    Ending::Clean
                } else {
                    Ending::Truncated
                };
                return (messages, ending);
            }
            Err(FrameError::ZeroLength) => {
                assert!(
                    rest.starts_with(&[0, 0]),
                    "ZeroLength for a non-zero prefix"
                );
                return (messages, Ending::ZeroLength);
            }
            Err(other) => panic!("decode returned {other:?}"),
        }
    }
}

/// Reads every message from `reader` and compares with the reference;
/// grows the buffer after message `grow_after` when given.
fn check_reader<R: Read>(
    reader: &mut FrameReader<R>,
    expected: &[&[u8]],
    ending: &Ending,
    grow_after: Option<usize>,
    how: &str,
) {
    let mut index = 0;
    loop {
        if grow_after == Some(index) {
            reader.grow(frame::READ_BUFFER);
        }
        match reader.next_message() {
            Ok(Some(msg)) => {
                assert!(
                    (1..=frame::MAX_MESSAGE).contains(&msg.len()),
                    "{how}: a message of {} bytes",
                    msg.len()
                );
                assert!(
                    expected.get(index) == Some(&msg),
                    "{how}: message {index} differs from decode's"
                );
                index += 1;
            }
            Ok(None) => {
                assert_eq!(
                    *ending,
                    Ending::Clean,
                    "{how}: clean end, decode says otherwise"
                );
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{how}: {e}");
                let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
                let got = match inner {
                    Some(FrameError::ZeroLength) => Ending::ZeroLength,
                    Some(FrameError::Truncated { have, need }) => {
                        assert!(have < need, "{how}: truncated with {have} of {need}");
                        assert!(*need <= frame::MAX_WIRE, "{how}: need {need}");
                        Ending::Truncated
                    }
                    None => panic!("{how}: an InvalidData error without a FrameError: {e}"),
                };
                assert_eq!(*ending, got, "{how}: the ending differs from decode's");
                break;
            }
        }
    }
    assert_eq!(index, expected.len(), "{how}: message count");
}

/// A reader that hands out the bytes in pseudo-random pieces (mostly small,
/// sometimes large) and now and then fails with `Interrupted`, as a socket
/// read interrupted by a signal does. The pieces derive from the data, so a
/// finding reproduces.
struct Chunks<'a> {
    data: &'a [u8],
    state: u64,
    interrupted: u8,
}

impl<'a> Chunks<'a> {
    fn new(data: &'a [u8]) -> Chunks<'a> {
        // FNV-1a of the data seeds the piece sizes.
        let mut state: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Chunks {
            data,
            state: state | 1,
            interrupted: 0,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.next_random();
        if r % 16 == 0 && self.interrupted < 2 {
            self.interrupted += 1;
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        self.interrupted = 0;
        let limit = match (r >> 8) % 4 {
            0 => 1,
            1 => 1 + (r >> 16) % 7,
            2 => 1 + (r >> 16) % 300,
            _ => 1 + (r >> 16) % 70_000,
        };
        let n = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(buf.len())
            .min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf[..n].copy_from_slice(now);
        self.data = later;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Fixed identities and a complete handshake between them.

/// The responder's (server's) fixed private key.
const SERVER_KEY: [u8; KEY_LEN] = [0x53; KEY_LEN];
/// The initiator's (client's) fixed private key.
const CLIENT_KEY: [u8; KEY_LEN] = [0x43; KEY_LEN];
/// Fixed ephemeral keys, so that the whole transcript is the same every run
/// and a seed holding a valid message can be mutated meaningfully.
const SERVER_EPHEMERAL: [u8; KEY_LEN] = [0x65; KEY_LEN];
const CLIENT_EPHEMERAL: [u8; KEY_LEN] = [0x63; KEY_LEN];
/// Both ends run tap with this MTU.
const FUZZ_MTU: u32 = 1500;

fn hello() -> Hello {
    Hello::new(Layer::Tap, FUZZ_MTU)
}

/// The two identities and the bytes of one complete handshake between them.
struct Transcript {
    server: Identity,
    client: Identity,
    message1: Vec<u8>,
    message2: Vec<u8>,
    message3: Vec<u8>,
    /// The responder's first transport message: the keepalive at nonce 0.
    confirmation: Vec<u8>,
    /// The responder's transport (receives the client's frames).
    server_transport: Arc<Transport>,
    /// The initiator's transport (seals the frames the server receives).
    client_transport: Transport,
}

fn transcript(cipher: Cipher) -> &'static Transcript {
    static CHACHA: OnceLock<Transcript> = OnceLock::new();
    static AESGCM: OnceLock<Transcript> = OnceLock::new();
    let cell = match cipher {
        Cipher::ChaChaPoly => &CHACHA,
        Cipher::AesGcm => &AESGCM,
    };
    cell.get_or_init(|| make_transcript(cipher))
}

fn identities(cipher: Cipher) -> (Identity, Identity) {
    let server = PrivateKey::from_bytes(SERVER_KEY);
    let client = PrivateKey::from_bytes(CLIENT_KEY);
    let (server_public, client_public) = (server.public_key(), client.public_key());
    (
        Identity::new(server, client_public, cipher).expect("fixed keys are valid"),
        Identity::new(client, server_public, cipher).expect("fixed keys are valid"),
    )
}

fn make_transcript(cipher: Cipher) -> Transcript {
    let (server, client) = identities(cipher);
    let mut buf = vec![0u8; frame::MAX_MESSAGE];
    let mut init =
        Initiator::with_ephemeral(&client, hello(), Some(&CLIENT_EPHEMERAL)).expect("initiator");
    let mut resp =
        Responder::with_ephemeral(&server, hello(), Some(&SERVER_EPHEMERAL)).expect("responder");
    let n = init.write_message1(&mut buf).expect("message 1");
    let message1 = buf[..n].to_vec();
    resp.read_message1(&message1).expect("read message 1");
    let n = resp.write_message2(&mut buf).expect("message 2");
    let message2 = buf[..n].to_vec();
    init.read_message2(&message2).expect("read message 2");
    let n = init.write_message3(&mut buf).expect("message 3");
    let message3 = buf[..n].to_vec();
    resp.read_message3(&message3).expect("read message 3");
    let (server_transport, _) = resp.into_transport().expect("responder transport");
    let (client_transport, _) = init.into_transport().expect("initiator transport");
    let n = server_transport
        .seal(0, &[], &mut buf)
        .expect("key confirmation");
    let confirmation = buf[..n].to_vec();
    Transcript {
        server,
        client,
        message1,
        message2,
        message3,
        confirmation,
        server_transport: Arc::new(server_transport),
        client_transport,
    }
}

// ---------------------------------------------------------------------------
// Target 2: the handshake.

/// What the input of [`responder_handshake`] replaces, chosen by its first
/// byte (`byte & 0x7f` modulo 6; bit 7 picks AES-GCM over ChaCha20-Poly1305).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandshakeMode {
    /// The rest is the whole stream a server reads, through the frame codec
    /// and the real [`handshake::respond`]; run twice on one replay cache.
    Stream,
    /// The rest is message 1, for the responder.
    Message1,
    /// A valid message 1; the rest is message 3, for the responder.
    Message3,
    /// A valid message 3 whose 6-byte hello is taken from the rest (and the
    /// rest goes through [`Hello::decode`] as it is).
    Hello,
    /// The rest is message 2, for the initiator (a hostile server).
    Message2,
    /// A valid message 2 and 3; the rest is the key confirmation.
    Confirmation,
}

const MODES: [HandshakeMode; 6] = [
    HandshakeMode::Stream,
    HandshakeMode::Message1,
    HandshakeMode::Message3,
    HandshakeMode::Hello,
    HandshakeMode::Message2,
    HandshakeMode::Confirmation,
];

/// The mode and cipher an input of [`responder_handshake`] selects.
fn handshake_mode(data: &[u8]) -> Option<(HandshakeMode, Cipher)> {
    let (&first, _) = data.split_first()?;
    let mode = MODES[usize::from(first & 0x7f) % MODES.len()];
    let cipher = if first & 0x80 == 0 {
        Cipher::ChaChaPoly
    } else {
        Cipher::AesGcm
    };
    Some((mode, cipher))
}

/// Fuzz target: a responder (and, in two modes, an initiator) fed hostile
/// handshake bytes. See [`HandshakeMode`].
pub fn responder_handshake(data: &[u8]) {
    let Some((mode, cipher)) = handshake_mode(data) else {
        return;
    };
    let rest = &data[1..];
    let t = transcript(cipher);
    match mode {
        HandshakeMode::Stream => respond_stream(t, rest),
        HandshakeMode::Message1 => {
            let mut resp = Responder::with_ephemeral(&t.server, hello(), Some(&SERVER_EPHEMERAL))
                .expect("responder");
            match resp.read_message1(rest) {
                Ok(ephemeral) => {
                    assert_eq!(rest, &t.message1[..], "a forged message 1 was accepted");
                    assert_eq!(ephemeral[..], rest[..KEY_LEN]);
                }
                Err(e) => assert_ne!(rest, &t.message1[..], "message 1 refused: {e}"),
            }
        }
        HandshakeMode::Message3 => {
            let mut resp = responder_after_message2(t);
            match resp.read_message3(rest) {
                Ok(_) => {
                    assert_eq!(rest, &t.message3[..], "a forged message 3 was accepted");
                    check_transport_works(resp.into_transport(), t);
                }
                Err(e) => assert_ne!(rest, &t.message3[..], "message 3 refused: {e}"),
            }
        }
        HandshakeMode::Hello => {
            fuzz_hello(t, rest);
        }
        HandshakeMode::Message2 => {
            let mut init = Initiator::with_ephemeral(&t.client, hello(), Some(&CLIENT_EPHEMERAL))
                .expect("initiator");
            let mut buf = [0u8; MESSAGE1_LEN];
            init.write_message1(&mut buf).expect("message 1");
            match init.read_message2(rest) {
                Ok(_) => assert_eq!(rest, &t.message2[..], "a forged message 2 was accepted"),
                Err(e) => assert_ne!(rest, &t.message2[..], "message 2 refused: {e}"),
            }
        }
        HandshakeMode::Confirmation => {
            let mut init = Initiator::with_ephemeral(&t.client, hello(), Some(&CLIENT_EPHEMERAL))
                .expect("initiator");
            let mut buf = vec![0u8; frame::MAX_MESSAGE];
            init.write_message1(&mut buf).expect("message 1");
            init.read_message2(&t.message2).expect("message 2");
            init.write_message3(&mut buf).expect("message 3");
            let (transport, _) = init.into_transport().expect("transport");
            // As handshake::initiate checks it: at least a tag, decrypts at
            // nonce 0, and is empty.
            let opened = if rest.len() >= TAG_LEN {
                transport.open(0, rest, &mut buf).ok()
            } else {
                None
            };
            match opened {
                Some(n) => {
                    assert_eq!(rest, &t.confirmation[..], "a forged confirmation decrypted");
                    assert_eq!(n, 0);
                }
                None => assert_ne!(rest, &t.confirmation[..], "the confirmation was refused"),
            }
        }
    }
}

/// A responder that has read the valid message 1 and written message 2.
fn responder_after_message2(t: &Transcript) -> Responder<'_> {
    let mut resp =
        Responder::with_ephemeral(&t.server, hello(), Some(&SERVER_EPHEMERAL)).expect("responder");
    resp.read_message1(&t.message1).expect("message 1");
    let mut buf = vec![0u8; frame::MAX_MESSAGE];
    let n = resp.write_message2(&mut buf).expect("message 2");
    assert_eq!(
        buf[..n],
        t.message2[..],
        "fixed ephemeral keys, fixed message 2"
    );
    resp
}

/// After a successful handshake, a frame sealed by the client opens at the
/// server.
fn check_transport_works(
    result: Result<(Transport, crate::keys::PublicKey), HandshakeError>,
    t: &Transcript,
) {
    let (transport, peer) = result.expect("transport after message 3");
    assert_eq!(peer, t.client.local_public());
    let mut sealed = [0u8; 64];
    let mut opened = [0u8; 64];
    let n = t
        .client_transport
        .seal(0, b"frame", &mut sealed)
        .expect("seal");
    let m = transport.open(0, &sealed[..n], &mut opened).expect("open");
    assert_eq!(&opened[..m], b"frame");
}

/// The input's first bytes as a hello: decoded exactly when version and
/// layer are right; then, in a valid message 3, accepted exactly when the
/// layer is ours too. A hello with an unknown layer cannot be sent: it is
/// refused by `Hello::decode`, which message 3 goes through.
fn fuzz_hello(t: &Transcript, rest: &[u8]) {
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    let decoded = Hello::decode(rest);
    let wellformed = rest.len() >= 2 && byte(0) == handshake::VERSION && byte(1) <= 1;
    assert_eq!(decoded.is_ok(), wellformed, "{decoded:?}");
    if let (Err(e), true) = (&decoded, rest.len() >= 2) {
        assert!(e.is_provable(), "a bad hello is named as such: {e}");
    }
    let Some(layer) = Layer::from_wire(byte(1)) else {
        return;
    };
    let theirs = Hello {
        version: byte(0),
        layer,
        flags: byte(2),
        keepalive: byte(3),
        mtu: u16::from_be_bytes([byte(4), byte(5)]),
    };
    let mut init =
        Initiator::with_ephemeral(&t.client, theirs, Some(&CLIENT_EPHEMERAL)).expect("initiator");
    let mut resp =
        Responder::with_ephemeral(&t.server, hello(), Some(&SERVER_EPHEMERAL)).expect("responder");
    let mut buf = vec![0u8; frame::MAX_MESSAGE];
    let n = init.write_message1(&mut buf).expect("message 1");
    resp.read_message1(&buf[..n]).expect("message 1 reads");
    let n = resp.write_message2(&mut buf).expect("message 2");
    init.read_message2(&buf[..n]).expect("message 2 reads");
    let n = init.write_message3(&mut buf).expect("message 3");
    let result = resp.read_message3(&buf[..n]);
    let acceptable = theirs.version == handshake::VERSION && theirs.layer == hello().layer;
    match result {
        Ok(got) => {
            assert!(acceptable, "hello {theirs:?} was accepted");
            assert_eq!(got, theirs);
        }
        Err(e) => {
            assert!(!acceptable, "hello {theirs:?} was refused: {e}");
            assert!(e.is_provable(), "a bad hello is named as such: {e}");
        }
    }
}

/// The in-memory stream of the `Stream` mode: reads from the input through
/// the frame codec, records what the responder sends.
struct MemoryIo<'a> {
    reader: FrameReader<&'a [u8]>,
    sent: Vec<Vec<u8>>,
}

impl MessageIo for MemoryIo<'_> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        assert!((1..=frame::MAX_MESSAGE).contains(&msg.len()));
        self.sent.push(msg.to_vec());
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        self.reader.next_message()
    }

    fn peek(&mut self) -> io::Result<&[u8]> {
        self.reader.fill_prefix()
    }

    fn set_deadline(&mut self, _deadline: Option<Instant>) {}
}

/// The whole responder over the input as a stream, twice on one replay
/// cache: the second run of an authenticated message 1 is a replay.
fn respond_stream(t: &Transcript, stream: &[u8]) {
    let replays = ReplayCache::default();
    let mut first_authentic = false;
    for attempt in 0..2 {
        let mut io = MemoryIo {
            reader: FrameReader::with_capacity(stream, frame::MAX_WIRE),
            sent: Vec::new(),
        };
        let result = handshake::respond(&mut io, &t.server, hello(), Instant::now(), &replays, &());
        let first_message = frame::decode(stream)
            .ok()
            .flatten()
            .map(|(start, end)| &stream[start..end]);
        let authentic = first_message == Some(&t.message1[..]);
        match &result {
            // Message 3 answers a message 2 made with a random ephemeral
            // key: no input can hold a valid one.
            Ok(_) => panic!("a handshake completed against a random ephemeral key"),
            Err(HandshakeError::Replay) => {
                assert!(attempt == 1 && first_authentic, "Replay without a replay");
                assert!(io.sent.is_empty(), "a replay got an answer");
            }
            Err(e) => {
                if !authentic {
                    assert!(io.sent.is_empty(), "an answer to a forged message 1: {e}");
                } else {
                    assert_eq!(attempt, 0, "a replayed message 1 was not refused: {e}");
                    // Message 2, and nothing more without a valid message 3.
                    assert_eq!(io.sent.len(), 1, "{e}");
                    assert_eq!(io.sent[0].len(), t.message2.len());
                    first_authentic = true;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Target 3: an established session's receiving side.

/// The plaintext the peer seals at `nonce` in [`session_transport`]'s
/// streams: any frame that reaches the device must be one of these, at its
/// own nonce. Every fourth is a keepalive.
fn genuine_frame(nonce: u64) -> Vec<u8> {
    let len = match nonce % 4 {
        0 => 1 + nonce % 61,
        1 => 1514,
        2 => 60,
        _ => 0,
    };
    (0..len)
        .map(|i| (nonce.wrapping_mul(7) ^ i) as u8)
        .collect()
}

/// `count` genuine frames, sealed by the client from nonce `from`, each with
/// its length prefix: what an honest client sends.
fn sealed_frames(cipher: Cipher, from: u64, count: u64) -> Vec<u8> {
    let t = transcript(cipher);
    let mut out = Vec::new();
    let mut buf = vec![0u8; frame::MAX_MESSAGE];
    for nonce in from..from + count {
        let n = t
            .client_transport
            .seal(nonce, &genuine_frame(nonce), &mut buf)
            .expect("seal");
        frame::encode(&buf[..n], &mut out);
    }
    out
}

/// How many genuine frames an input of [`session_transport`] puts first
/// (its first byte, modulo 4).
fn genuine_prefix(data: &[u8]) -> u64 {
    data.first().map_or(0, |b| u64::from(b % 4))
}

/// Fuzz target: the receiving side of an established session. The stream
/// is `genuine_prefix(data)` sealed frames, then `data[1..]`, then its end.
pub fn session_transport(data: &[u8]) {
    let Some((_, rest)) = data.split_first() else {
        return;
    };
    let prefix_frames = genuine_prefix(data);
    let t = transcript(Cipher::ChaChaPoly);
    let mut stream = sealed_frames(Cipher::ChaChaPoly, 0, prefix_frames);
    stream.extend_from_slice(rest);
    let mut reader = FrameReader::new(&stream[..]);
    let kind = vnet::Kind::Ethernet;
    let transport = t.server_transport.clone();
    let mut receiver = Channel::resume(transport, 1, 0, Framing::Plain, kind).receiver;
    let mut plain = vec![0u8; channel::OPEN_ROOM];
    // Messages opened so far: the nonce of the next one.
    let mut opened = 0u64;
    // As the relay does: stop at the stream's end or at the first message
    // that ends the session.
    let end = loop {
        let msg = match reader.next_message() {
            Ok(Some(msg)) => msg,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        };
        let genuine = genuine_frame(opened);
        match receiver.open(msg, &mut plain) {
            Opened::Frame { len, bytes } => {
                assert!(
                    !genuine.is_empty() && plain[..len] == genuine[..],
                    "message {opened} ({len} bytes) opened to a frame the peer did not seal at that nonce"
                );
                assert_eq!(bytes, len, "a plain frame counts whole");
            }
            Opened::Keepalive => assert!(
                genuine.is_empty(),
                "message {opened} opened as a keepalive, the peer sealed a frame"
            ),
            Opened::Drop(why) => panic!("plain framing refused message {opened}: {why}"),
            Opened::Fatal(why) => {
                let genuine = sealed_frames(Cipher::ChaChaPoly, opened, 1);
                assert!(
                    genuine.get(frame::HEADER_LEN..) != Some(msg),
                    "the genuine message {opened} was refused: {why}"
                );
                break Some(why.to_string());
            }
        }
        opened += 1;
    };
    assert!(
        opened >= prefix_frames,
        "{opened} of {prefix_frames} genuine messages opened ({end:?})"
    );
    if rest.is_empty() {
        assert_eq!(end, None, "an honest stream ended");
    }
}

// ---------------------------------------------------------------------------
// Target 4: virtio headers.

/// Fuzz target: [`vnet::check`] (for a TAP and for a TUN device) and
/// [`vnet::strip`] on one header and frame.
pub fn virtio_header(data: &[u8]) {
    for kind in [vnet::Kind::Ethernet, vnet::Kind::Ip] {
        check_virtio_header(data, kind);
    }
    let mut copy = data.to_vec();
    if let Ok(frame) = vnet::strip(&mut copy) {
        assert_eq!(frame.len(), data.len() - vnet::HDR_LEN);
        let h = vnet::Header::parse(data).expect("strip passed a short packet");
        assert!(!h.is_gso(), "strip passed a super-frame");
        let start = usize::from(h.csum_start);
        let field = start + usize::from(h.csum_offset);
        if h.flags & vnet::F_NEEDS_CSUM == 0 {
            assert_eq!(
                frame,
                &data[vnet::HDR_LEN..],
                "a complete frame was changed"
            );
        } else if (field - start) % 2 == 0 {
            // The completed checksum verifies: the sum from csum_start on,
            // plus the pseudo-header sum the field held before (which the
            // receiver adds from the IP header), is all ones. (At an odd
            // offset a 16-bit field cannot be summed as one word: garbage in.)
            let sum_of = |bytes: &[u8]| {
                let mut sum = 0u64;
                for chunk in bytes.chunks(2) {
                    let word = [chunk[0], chunk.get(1).copied().unwrap_or(0)];
                    sum += u64::from(u16::from_be_bytes(word));
                }
                sum
            };
            let before = &data[vnet::HDR_LEN + field..vnet::HDR_LEN + field + 2];
            let mut sum = sum_of(&frame[start..]) + sum_of(before);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "the completed checksum does not verify");
        }
    }
}

/// What [`vnet::check`] promises about a header it passes, checked on its
/// own: every offset inside the frame, and a super-frame that the kernel
/// can segment as TCP.
fn check_virtio_header(data: &[u8], kind: vnet::Kind) {
    let checked = vnet::check(data, kind);
    let Some(h) = vnet::Header::parse(data) else {
        assert!(checked.is_err(), "a packet shorter than its header passed");
        return;
    };
    if checked.is_err() {
        return;
    }
    let frame = &data[vnet::HDR_LEN..];
    assert!(usize::from(h.hdr_len) <= frame.len());
    if h.flags & vnet::F_NEEDS_CSUM != 0 {
        let field = usize::from(h.csum_start) + usize::from(h.csum_offset);
        assert!(field + 2 <= frame.len(), "checksum field outside the frame");
    }
    if h.gso_type & vnet::GSO_ECN != 0 {
        assert!(h.is_gso(), "ECN without GSO passed");
    }
    if h.is_gso() {
        assert!(h.flags & vnet::F_NEEDS_CSUM != 0);
        assert!(h.gso_size >= vnet::MIN_GSO_SIZE && usize::from(h.gso_size) <= frame.len());
        assert_eq!(h.csum_offset, 16, "not TCP's checksum field");
        let (gso_type, tcp) = tcp_header_of(frame, kind)
            .unwrap_or_else(|| panic!("a super-frame that is not TCP passed ({kind:?})"));
        assert_eq!(
            h.gso_type & !vnet::GSO_ECN,
            gso_type,
            "GSO type and IP version"
        );
        assert_eq!(
            usize::from(h.csum_start),
            tcp,
            "csum_start is not the TCP header"
        );
        assert!(tcp + 20 <= frame.len(), "TCP header beyond the frame");
    }
}

/// The fuzz target's own reading of a TCP packet: the GSO type its IP
/// version needs and the offset of its TCP header, skipping 802.1Q/QinQ
/// tags after the MAC addresses.
fn tcp_header_of(frame: &[u8], kind: vnet::Kind) -> Option<(u8, usize)> {
    let (mut ip, mut version) = (0, None);
    if kind == vnet::Kind::Ethernet {
        ip = 12;
        while version.is_none() {
            let ethertype = frame.get(ip..ip + 2)?;
            ip += 2;
            match ethertype {
                [0x81, 0x00] | [0x88, 0xa8] => ip += 2,
                [0x08, 0x00] => version = Some(4),
                [0x86, 0xdd] => version = Some(6),
                _ => return None,
            }
        }
    }
    let first = *frame.get(ip)?;
    if version.is_some_and(|v| v != first >> 4) {
        return None;
    }
    match (first >> 4, usize::from(first & 0x0f)) {
        (4, ihl) if ihl >= 5 && *frame.get(ip + 9)? == 6 => Some((vnet::GSO_TCPV4, ip + ihl * 4)),
        (6, _) if *frame.get(ip + 6)? == 6 => Some((vnet::GSO_TCPV6, ip + 40)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Target 5: the peers file.

/// The hub's fixed private key for [`peers_file`]; seeds list its public
/// key to be refused.
const HUB_KEY: [u8; KEY_LEN] = [0x48; KEY_LEN];

fn hub() -> &'static (PrivateKey, PublicKey) {
    static HUB: OnceLock<(PrivateKey, PublicKey)> = OnceLock::new();
    HUB.get_or_init(|| {
        let key = PrivateKey::from_bytes(HUB_KEY);
        let public = key.public_key();
        (key, public)
    })
}

/// The layer and peer limit an input's first byte picks: bit 0 tun, the
/// rest the limit.
fn peers_mode(first: u8) -> (Layer, usize) {
    let layer = if first & 1 == 0 {
        Layer::Tap
    } else {
        Layer::Tun
    };
    (layer, usize::from(first >> 1))
}

/// Fuzz target: the peers file.
pub fn peers_file(data: &[u8]) {
    let Some((&first, text)) = data.split_first() else {
        return;
    };
    let (layer, max) = peers_mode(first);
    let (hub_key, own) = hub();
    // An upper bound: a final line without its newline counts too.
    let lines = text.split(|&b| b == b'\n').count();
    let peers = match peers::parse_bytes(text, own, layer, max) {
        Ok(peers) => peers,
        Err((line, why)) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {why}");
            assert!(!why.is_empty(), "an error without a reason");
            return;
        }
    };
    assert!(
        peers.len() <= max,
        "{} peers over the limit {max}",
        peers.len()
    );
    let mut previous = 0;
    for peer in &peers {
        assert!(
            peer.line > previous && peer.line <= lines,
            "line {}",
            peer.line
        );
        previous = peer.line;
        check_peer(peer, &peers, hub_key, own, layer);
    }
    // Written out again, the peers read back the same.
    let written: Vec<String> = peers.iter().map(peer_line_text).collect();
    let again = peers::parse(&written.join("\n"), own, layer, max)
        .unwrap_or_else(|(line, why)| panic!("written out, line {line} is refused: {why}"));
    for (index, (was, now)) in peers.iter().zip(&again).enumerate() {
        assert_eq!(now.line, index + 1);
        let now = PeerLine {
            line: was.line,
            ..now.clone()
        };
        assert_eq!(was, &now, "written out as `{}`", written[index]);
    }
    assert_eq!(again.len(), peers.len());
    // A reload to the same peers changes nothing; one without the first
    // removes just that one.
    let same = peers::diff(&peers, &peers);
    let all: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(same.unchanged, all);
    assert!(same.added.is_empty() && same.removed.is_empty() && same.changed.is_empty());
    if let Some((gone, rest)) = peers.split_first() {
        let fewer = peers::diff(&peers, rest);
        assert_eq!(fewer.removed, std::slice::from_ref(gone));
        assert_eq!(fewer.unchanged, all[1..]);
        assert!(fewer.added.is_empty() && fewer.changed.is_empty());
    }
}

/// The rules of one accepted peer, checked on their own.
fn check_peer(
    peer: &PeerLine,
    peers: &[PeerLine],
    hub_key: &PrivateKey,
    own: &PublicKey,
    layer: Layer,
) {
    let name_ok = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    assert!((1..=peers::MAX_NAME).contains(&peer.name.len()));
    assert!(peer.name.bytes().all(name_ok), "name {:?}", peer.name);
    assert_ne!(peer.key, *own, "the hub's own key");
    assert!(peer.key.0[31] & 0x80 == 0, "bit 255 set");
    // The hub derives each listed peer's psk when it reads the file.
    assert!(
        crate::keys::derive_psk(hub_key, &peer.key).is_ok(),
        "{} gives no psk",
        peer.key
    );
    let others = peers.iter().filter(|p| p.line != peer.line);
    for other in others {
        assert_ne!(other.name, peer.name, "a name twice");
        assert_ne!(other.key, peer.key, "a key twice");
        assert_ne!(other.device, peer.device, "a device twice");
        assert_ne!(
            peer.bridge.as_ref(),
            Some(&other.device),
            "a bridge that is a device"
        );
    }
    if !peer.device_given {
        assert_eq!(
            peer.device,
            format!("{}{}", peers::DEVICE_PREFIX, peer.name)
        );
    }
    if peer.device_is_endpoint() {
        assert_eq!(layer, Layer::Tap, "an endpoint with tun");
        assert!(peer.bridge.is_none(), "a bridge for an endpoint");
        assert!(peer.device.contains(":/"), "endpoint {:?}", peer.device);
    } else {
        assert!(
            (1..=15).contains(&peer.device.len()),
            "device {:?}",
            peer.device
        );
        assert!(
            !peer.device.contains(['/', ':', '%']),
            "device {:?}",
            peer.device
        );
    }
    if peer.bridge.is_some() {
        assert_eq!(layer, Layer::Tap, "a bridge with tun");
    }
    if let Some(mtu) = peer.mtu {
        assert!((crate::device::MIN_MTU..=layer.max_mtu()).contains(&mtu));
    }
    for hook in [&peer.up, &peer.down].into_iter().flatten() {
        assert!(hook.starts_with('/'), "hook {hook:?}");
        assert!(!hook.contains(|c: char| c.is_whitespace() || ";$`|&<>()\\'\"*?[]#~".contains(c)));
    }
}

/// A peer as a line of a peers file, every option spelt out.
fn peer_line_text(peer: &PeerLine) -> String {
    use std::fmt::Write;
    let mut line = format!("{} {}", peer.name, peer.key);
    if peer.device_given {
        let _ = write!(line, " device={}", peer.device);
    }
    let options = [
        ("bridge", peer.bridge.clone()),
        ("mtu", peer.mtu.map(|n| n.to_string())),
        ("up", peer.up.clone()),
        ("down", peer.down.clone()),
        ("keepalive", peer.keepalive.map(|n| n.to_string())),
    ];
    for (option, value) in options {
        if let Some(value) = value {
            let _ = write!(line, " {option}={value}");
        }
    }
    line
}

// ---------------------------------------------------------------------------
// Target 6: a local endpoint's stream (QEMU's u32 and VDE's u16 framing).

/// What a local stream held, read as a whole.
#[derive(Debug, PartialEq, Eq)]
enum LocalEvent {
    Frame(Vec<u8>),
    Oversize(usize),
    Malformed(usize),
}

/// The frames of `stream` by a plain reading, up to a malformed length or
/// an incomplete frame at the end (whose oversize length is still told, as
/// the deframer tells it once the length is read).
fn local_reference(format: Format, max: usize, stream: &[u8]) -> Vec<LocalEvent> {
    let header = format.header_len();
    let mut events = Vec::new();
    let mut at = 0;
    while let Some(prefix) = stream.get(at..at + header) {
        let len = prefix.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
        at += header;
        if len > format.max_len() {
            events.push(LocalEvent::Malformed(len));
            break;
        }
        if len > max {
            events.push(LocalEvent::Oversize(len));
            at += len;
        } else if let Some(frame) = stream.get(at..at + len) {
            if len > 0 {
                events.push(LocalEvent::Frame(frame.to_vec()));
            }
            at += len;
        } else {
            break;
        }
    }
    events
}

/// Byte 0 picks the format, byte 1 the largest frame (1-256 bytes, so that
/// oversize frames are common), byte 2 seeds the sizes of the pieces; the
/// rest is the stream.
pub fn local_deframer(data: &[u8]) {
    let [pick, max, seed, stream @ ..] = data else {
        return;
    };
    let format = if pick & 1 == 0 {
        Format::Qemu
    } else {
        Format::Vde
    };
    let max = usize::from(*max) + 1;
    let mut deframer = Deframer::new(format, max);
    let mut events = Vec::new();
    let mut state = u32::from(*seed) | 1;
    let mut rest = stream;
    'feed: while !rest.is_empty() {
        // xorshift: pieces of 1-64 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let piece = (state % 64 + 1) as usize;
        let (mut chunk, after) = rest.split_at(piece.min(rest.len()));
        rest = after;
        while !chunk.is_empty() {
            match deframer.feed(chunk) {
                Ok((used, event)) => {
                    assert!(
                        used > 0 && used <= chunk.len(),
                        "used {used} of {}",
                        chunk.len()
                    );
                    chunk = &chunk[used..];
                    match event {
                        Some(Event::Frame(frame)) => {
                            assert!(!frame.is_empty() && frame.len() <= max);
                            events.push(LocalEvent::Frame(frame.to_vec()));
                        }
                        Some(Event::Oversize(len)) => events.push(LocalEvent::Oversize(len)),
                        None => assert!(chunk.is_empty(), "stopped early with nothing to tell"),
                    }
                }
                Err(Malformed(len)) => {
                    events.push(LocalEvent::Malformed(len));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(events, local_reference(format, max, stream));
}

#[cfg(test)]
mod tests {
    //! Replays the committed corpora (`fuzz/corpus/TARGET/`) and the seeds
    //! through the functions above, so that plain `cargo test` checks every
    //! input the fuzzer found interesting, in seconds, without libFuzzer or a
    //! nightly compiler. `cargo test --lib fuzz:: -- --ignored` (re)writes the
    //! seeds into the corpus directories as `seed-NAME`.

    use super::*;
    // The seed corpus: built only for these tests, which write it on request.

    /// The meaningful seed inputs of each target, by target name and file name:
    /// valid messages, truncated and altered ones. The tests below write
    /// them to `fuzz/corpus/TARGET/` on request and replay them always.
    fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut seeds = Vec::new();
        let t = transcript(Cipher::ChaChaPoly);
        let framed = |messages: &[&[u8]]| {
            let mut out = Vec::new();
            for m in messages {
                frame::encode(m, &mut out);
            }
            out
        };

        // frame_decoder
        let mut add =
            |name: &str, bytes: Vec<u8>| seeds.push(("frame_decoder", name.to_owned(), bytes));
        add("empty", Vec::new());
        add("one-byte-prefix", vec![0x01]);
        add("zero-length", vec![0, 0, 1, 2]);
        add("one-message", framed(&[b"hello"]));
        add(
            "handshake-messages",
            framed(&[&t.message1, &t.message2, &t.message3, &t.confirmation]),
        );
        let mut truncated = framed(&[&t.message1, &t.message2]);
        truncated.pop();
        add("truncated-body", truncated);
        let mut max = vec![0xff, 0xff];
        max.resize(frame::MAX_WIRE, 0xa5);
        max.extend_from_slice(&framed(&[b"x"]));
        add("largest-then-small", max);
        add("max-prefix-trickle", vec![0xff, 0xff, 1, 2, 3]);
        add(
            "zero-after-message",
            [framed(&[b"ok"]), vec![0, 0]].concat(),
        );

        // virtio_header
        let header = |flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16| {
            vnet::Header {
                flags,
                gso_type: gso,
                hdr_len,
                gso_size,
                csum_start: start,
                csum_offset: offset,
            }
            .encode()
            .to_vec()
        };
        let (partial_udp, _) = vnet::udp_frame(b"odd payload");
        let tcp4 = header(vnet::F_NEEDS_CSUM, vnet::GSO_TCPV4, 66, 1448, 34, 16);
        let mut add =
            |name: &str, bytes: Vec<u8>| seeds.push(("virtio_header", name.to_owned(), bytes));
        add(
            "plain",
            [header(0, 0, 0, 0, 0, 0), b"frame".to_vec()].concat(),
        );
        add(
            "udp-needs-csum",
            [header(vnet::F_NEEDS_CSUM, 0, 0, 0, 34, 6), partial_udp].concat(),
        );
        add("tcp4-super-frame", [tcp4, vec![0x45; 3000]].concat());
        add(
            "csum-at-the-end",
            [header(vnet::F_NEEDS_CSUM, 0, 0, 0, 10, 8), vec![1; 20]].concat(),
        );
        add("short", vec![1, 4, 0, 0]);
        // One seed per rule for super-frames: each valid kind, then each way to
        // break one (see vnet::check). The fuzz target reads every input both as
        // a TAP frame and as a TUN packet.
        use vnet::Kind::{Ethernet, Ip};
        let valid = [
            ("tcp4-tap", vnet::tcp_super_frame(Ethernet, false, 0, 3000)),
            ("tcp6-tap", vnet::tcp_super_frame(Ethernet, true, 0, 3000)),
            ("tcp4-vlan", vnet::tcp_super_frame(Ethernet, false, 1, 3000)),
            ("tcp6-qinq", vnet::tcp_super_frame(Ethernet, true, 2, 3000)),
            ("tcp4-tun", vnet::tcp_super_frame(Ip, false, 0, 3000)),
            ("tcp6-tun", vnet::tcp_super_frame(Ip, true, 0, 3000)),
        ];
        let tcp4_tap = valid[0].1.clone();
        for (name, packet) in valid {
            add(name, packet);
        }
        let altered = |at: usize, bytes: &[u8]| {
            let mut p = tcp4_tap.clone();
            p[at..at + bytes.len()].copy_from_slice(bytes);
            p
        };
        let h = vnet::HDR_LEN;
        add("gso-size-1", altered(4, &1u16.to_le_bytes()));
        add("gso-size-47", altered(4, &47u16.to_le_bytes()));
        add("gso-size-max", altered(4, &u16::MAX.to_le_bytes()));
        add("csum-offset-6", altered(8, &6u16.to_le_bytes()));
        add("csum-start-ip", altered(6, &14u16.to_le_bytes()));
        add("tcpv6-on-ipv4", altered(1, &[vnet::GSO_TCPV6]));
        add("gso-udp", altered(1, &[3]));
        add("gso-udp-l4", altered(1, &[5]));
        add("ecn-without-gso", altered(1, &[vnet::GSO_ECN]));
        add("tcp4-ecn", altered(1, &[vnet::GSO_TCPV4 | vnet::GSO_ECN]));
        add("hdr-len-hint-0", altered(2, &[0, 0]));
        add("ip-options", altered(h + 14, &[0x46]));
        add("udp-super-frame", altered(h + 14 + 9, &[17]));
        add("arp-ethertype", altered(h + 12, &[0x08, 0x06]));
        add("ipv6-in-ipv4-ethertype", altered(h + 14, &[0x65]));
        let mut extension = vnet::tcp_super_frame(Ethernet, true, 0, 3000);
        extension[h + 14 + 6] = 0;
        add("ipv6-hop-by-hop", extension);
        let mut truncated = tcp4_tap.clone();
        truncated.truncate(h + 14 + 20 + 19);
        truncated[2..6].copy_from_slice(&[0, 0, 48, 0]);
        add("tcp-header-cut", truncated);
        let mut tags = tcp4_tap[..h + 12].to_vec();
        tags.extend_from_slice(&[0x81, 0, 0, 7].repeat(12));
        add("vlan-tags-to-the-end", tags);

        // responder_handshake
        let byte = handshake_mode_byte;
        let mut add = |name: &str, mode: HandshakeMode, cipher: Cipher, rest: &[u8]| {
            let mut input = vec![byte(mode, cipher)];
            input.extend_from_slice(rest);
            seeds.push(("responder_handshake", name.to_owned(), input));
        };
        for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
            let t = transcript(cipher);
            let c = cipher.option_name();
            add(
                &format!("{c}-stream-valid-m1"),
                HandshakeMode::Stream,
                cipher,
                &framed(&[&t.message1]),
            );
            add(
                &format!("{c}-stream-m1-m3"),
                HandshakeMode::Stream,
                cipher,
                &framed(&[&t.message1, &t.message3]),
            );
            add(
                &format!("{c}-message1"),
                HandshakeMode::Message1,
                cipher,
                &t.message1,
            );
            add(
                &format!("{c}-message3"),
                HandshakeMode::Message3,
                cipher,
                &t.message3,
            );
            add(
                &format!("{c}-message2"),
                HandshakeMode::Message2,
                cipher,
                &t.message2,
            );
            add(
                &format!("{c}-confirmation"),
                HandshakeMode::Confirmation,
                cipher,
                &t.confirmation,
            );
            add(
                &format!("{c}-hello"),
                HandshakeMode::Hello,
                cipher,
                &hello().encode(),
            );
        }
        add(
            "stream-truncated-m1",
            HandshakeMode::Stream,
            Cipher::ChaChaPoly,
            &framed(&[&t.message1])[..20],
        );
        add(
            "message1-short",
            HandshakeMode::Message1,
            Cipher::ChaChaPoly,
            &t.message1[..KEY_LEN - 1],
        );
        let mut flipped = t.message3.clone();
        flipped[40] ^= 0x10;
        add(
            "message3-flipped",
            HandshakeMode::Message3,
            Cipher::ChaChaPoly,
            &flipped,
        );
        add(
            "hello-tun-version2",
            HandshakeMode::Hello,
            Cipher::ChaChaPoly,
            &[2, 1, 0xff, 9, 0x05, 0xdc],
        );

        // session_transport
        let mut add = |name: &str, prefix: u8, rest: Vec<u8>| {
            let mut input = vec![prefix];
            input.extend_from_slice(&rest);
            seeds.push(("session_transport", name.to_owned(), input));
        };
        add("nothing", 0, Vec::new());
        add("three-genuine", 3, Vec::new());
        add(
            "genuine-continued",
            2,
            sealed_frames(Cipher::ChaChaPoly, 2, 4),
        );
        add("all-in-body", 0, sealed_frames(Cipher::ChaChaPoly, 0, 5));
        let mut replay = sealed_frames(Cipher::ChaChaPoly, 0, 1);
        replay.extend_from_slice(&replay.clone());
        add("replayed-frame", 0, replay);
        let mut flipped = sealed_frames(Cipher::ChaChaPoly, 1, 1);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        add("flipped-tag", 1, flipped);
        add("short-message", 1, vec![0, 3, 1, 2, 3]);
        add("zero-length", 1, vec![0, 0]);
        let mut cut = sealed_frames(Cipher::ChaChaPoly, 1, 1);
        cut.truncate(cut.len() / 2);
        add("truncated", 1, cut);
        add("max-prefix-trickle", 0, vec![0xff, 0xff, 0, 0, 0, 0]);

        // local_deframer: format (0 QEMU, 1 VDE), largest frame - 1, seed, stream.
        let mut add = |name: &str, head: [u8; 3], stream: &[&[u8]]| {
            let mut bytes = head.to_vec();
            for part in stream {
                bytes.extend_from_slice(part);
            }
            seeds.push(("local_deframer", name.to_owned(), bytes));
        };
        add(
            "qemu-two-frames",
            [0, 255, 7],
            &[&[0, 0, 0, 3], b"abc", &[0, 0, 0, 1], b"d"],
        );
        add(
            "vde-two-frames",
            [1, 255, 9],
            &[&[0, 3], b"abc", &[0, 1], b"d"],
        );
        add(
            "qemu-empty-frames",
            [0, 255, 1],
            &[&[0; 12], &[0, 0, 0, 2], b"ok"],
        );
        add(
            "qemu-oversize-then-frame",
            [0, 3, 3],
            &[&[0, 0, 0, 6], b"123456", &[0, 0, 0, 2], b"ok"],
        );
        add(
            "vde-oversize-then-frame",
            [1, 3, 5],
            &[&[0, 6], b"123456", &[0, 2], b"ok"],
        );
        add(
            "qemu-malformed",
            [0, 255, 2],
            &[&[0xff, 0xff, 0xff, 0xff], b"junk"],
        );
        add(
            "qemu-largest-length",
            [0, 255, 4],
            &[&[0, 1, 0x10, 0], &[0xa5; 300]],
        );
        add("qemu-just-over", [0, 255, 4], &[&[0, 1, 0x10, 1], b"x"]);
        add("vde-truncated", [1, 255, 6], &[&[0, 9], b"1234"]);

        // peers_file: the first byte is the limit (times 2) plus 1 for tun.
        let key = |n: u8| PrivateKey::from_bytes([n; KEY_LEN]).public_key();
        let (_, own) = hub();
        let mut add = |name: &str, layer: Layer, max: u8, text: String| {
            let first = max << 1 | u8::from(layer == Layer::Tun);
            let mut input = vec![first];
            input.extend_from_slice(text.as_bytes());
            seeds.push(("peers_file", name.to_owned(), input));
        };
        let valid = format!(
            "# NAME KEY OPTIONS\n\
             branch1\t{}\tbridge=br0   # the office\n\
             \n\
             laptop {} device=tap-laptop up=/etc/taptun/up down=/etc/taptun/down mtu=1400 keepalive=0\r\n\
             vm {} device=qemu:/run/taptun/vm.sock keepalive=255\n\
             sw {} device=vde:/usr/local/bin/plug-sw\n\
             nas {} device=qemu-connect:/run/passt.sock mtu=65491",
            key(2),
            key(3),
            key(4),
            key(5),
            key(6)
        );
        add("valid-tap", Layer::Tap, 127, valid.clone());
        add("limit-4-of-5", Layer::Tap, 4, valid);
        add(
            "valid-tun",
            Layer::Tun,
            127,
            format!(
                "a {} mtu=65509\nb.c-d_e {} device=tun7 keepalive=3\n",
                key(2),
                key(3)
            ),
        );
        let mut bit255 = key(2).0;
        bit255[31] |= 0x80;
        let mut p_plus_one = [0xff; KEY_LEN];
        p_plus_one[0] = 0xee;
        p_plus_one[31] = 0x7f;
        let refused = [
            ("own-key", format!("a {}\nhub {own}\n", key(2))),
            ("not-canonical", format!("a {}\n", PublicKey(bit255))),
            ("p-plus-one", format!("a {}\n", PublicKey(p_plus_one))),
            ("same-name", format!("a {}\na {}\n", key(2), key(3))),
            ("same-key", format!("a {}\nb {}\n", key(2), key(2))),
            (
                "default-device-taken",
                format!("a {} device=tt-b\nb {}\n", key(2), key(3)),
            ),
            (
                "bridge-is-device",
                format!("a {} bridge=tt-b\nb {}\n", key(2), key(3)),
            ),
            ("option-twice", format!("a {} mtu=1400 mtu=1500\n", key(2))),
            ("unknown-option", format!("a {} colour=red\n", key(2))),
            ("empty-value", format!("a {} device=\n", key(2))),
            ("hook-shell", format!("a {} up=/bin/x;reboot\n", key(2))),
            ("hook-relative", format!("a {} down=down.sh\n", key(2))),
            ("device-percent", format!("a {} device=tap%d\n", key(2))),
            ("name-too-long", format!("abcdefghijklm {}\n", key(2))),
            ("key-first", format!("{} a\n", key(2))),
            ("no-key", "a\n".to_owned()),
            (
                "endpoint-relative",
                format!("a {} device=qemu:vm.sock\n", key(2)),
            ),
        ];
        for (name, text) in refused {
            add(name, Layer::Tap, 127, text);
        }
        for (index, point) in peers::LOW_ORDER.iter().enumerate() {
            let text = format!("a {}\nb {}\n", key(2), PublicKey(*point));
            add(&format!("low-order-{index}"), Layer::Tap, 127, text);
        }
        add(
            "endpoint-on-tun",
            Layer::Tun,
            127,
            format!("a {} device=qemu:/run/vm.sock\n", key(2)),
        );
        add(
            "bridge-on-tun",
            Layer::Tun,
            127,
            format!("a {} bridge=br0\n", key(2)),
        );
        add(
            "one-too-many",
            Layer::Tap,
            1,
            format!("a {}\n# b\nb {}\n", key(2), key(3)),
        );
        let mut not_utf8 = format!("a {}\n# caf", key(2)).into_bytes();
        not_utf8.extend_from_slice(b"\xe9\n");
        seeds.push((
            "peers_file",
            "not-utf8".to_owned(),
            [&[0xfe][..], &not_utf8].concat(),
        ));
        seeds
    }

    /// The first byte of an input for `mode` and `cipher`.
    fn handshake_mode_byte(mode: HandshakeMode, cipher: Cipher) -> u8 {
        // The variants are declared in the order of MODES.
        mode as u8 | if cipher == Cipher::AesGcm { 0x80 } else { 0 }
    }

    use std::fs;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    fn corpus_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus")
            .join(target)
    }

    /// Runs `fuzz` over every file of the target's corpus and over its
    /// seeds; a panic names the input.
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
        let seeds: Vec<_> = seeds()
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
        replay("frame_decoder", super::frame_decoder);
    }

    #[test]
    fn responder_handshake_corpus() {
        replay("responder_handshake", super::responder_handshake);
    }

    #[test]
    fn session_transport_corpus() {
        replay("session_transport", super::session_transport);
    }

    #[test]
    fn virtio_header_corpus() {
        replay("virtio_header", super::virtio_header);
    }

    #[test]
    fn local_deframer_corpus() {
        replay("local_deframer", super::local_deframer);
    }

    #[test]
    fn peers_file_corpus() {
        replay("peers_file", super::peers_file);
    }

    /// The seeds that must be refused are refused (else they would not
    /// reach the checks they are for), on the line they are about.
    #[test]
    fn peers_file_seeds_are_what_their_names_say() {
        for (target, name, data) in seeds() {
            if target != "peers_file" {
                continue;
            }
            let (layer, max) = peers_mode(data[0]);
            let result = crate::peers::parse_bytes(&data[1..], &hub().1, layer, max);
            match (name.starts_with("valid"), result) {
                (true, Ok(peers)) => assert!(!peers.is_empty(), "{name}"),
                (false, Err((line, why))) => assert!(line >= 1, "{name}: line {line}: {why}"),
                (true, Err((line, why))) => panic!("{name}: line {line}: {why}"),
                (false, Ok(peers)) => panic!("{name} was accepted: {peers:?}"),
            }
        }
    }

    /// Writes the seed inputs into the corpus directories.
    #[test]
    #[ignore = "writes fuzz/corpus/: run on purpose to regenerate the seeds"]
    fn write_seed_corpus() {
        for (target, name, data) in seeds() {
            let dir = corpus_dir(target);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let path = dir.join(format!("seed-{name}"));
            fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
