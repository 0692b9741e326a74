//! The Noise_XXpsk0 handshake that proves both ends' identities and yields
//! the transport keys.
//!
//! # Design
//!
//! ```text
//! initiator (-c)                                  responder (-s, -i)
//!   -> psk, e             message 1, empty payload  (48 bytes)
//!   <- e, ee, s, es       message 2, hello          (102 bytes)
//!   -> s, se              message 3, hello          (70 bytes)
//!   <- keepalive          first transport message, nonce 0: key confirmation
//! ```
//!
//! Protocol `Noise_XXpsk0_25519_{ChaChaPoly|AESGCM}_BLAKE2s`, prologue
//! `taptun/1`. The psk is BLAKE2s-256(`taptun/1 psk` || X25519(local private,
//! expected remote public)), the same at both ends. Because the psk is mixed
//! in first, a responder can check message 1's tag without any public-key
//! operation and answers nothing to anyone who lacks it: a scanner learns
//! nothing, not even the responder's static key. Wrong secrets and a
//! different cipher both fail right there.
//!
//! Hello (messages 2 and 3): byte 0 version (1), byte 1 layer (0 tap, 1 tun),
//! byte 2 flags (bit 0: takes GSO super-frames; unknown bits ignored), byte 3
//! keepalive seconds (0 = none),
//! bytes 4-5 MTU big-endian. At least 2 bytes; absent bytes read as 0; extra
//! bytes are ignored.
//!
//! The initiator checks the responder's static key after message 2 and, if it
//! is not the expected one, closes without sending message 3, so an impostor
//! never learns who the initiator is. The responder checks after message 3.
//! On a layer mismatch the initiator still sends message 3, so both ends can
//! name the cause, and then closes.
//!
//! The first message from the peer (message 1 at a responder, message 2 at
//! an initiator) is judged by its length prefix as soon as that is in: below
//! [`MESSAGE1_LEN`] or [`MESSAGE2_MIN_LEN`], or above
//! [`FIRST_MESSAGE_MAX_LEN`], it is no taptun message (text such as a login
//! banner or an HTTP request starts with a prefix above 8191), and the
//! handshake fails at once, answering nothing, with the first bytes received
//! (escaped, at most [`EXCERPT_LEN`]) in the error.
//!
//! This module does no I/O of its own beyond the [`MessageIo`] the caller
//! hands in; the state machines below ([`Initiator`], [`Responder`]) only
//! transform buffers, so they can be driven from tests, fuzzers and test
//! vectors with fixed ephemeral keys.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::HandshakeCause;
use crate::keys::{self, KEY_LEN, PrivateKey, Psk, PublicKey};
use crate::stream_error::StreamEnd;
pub use crate::wire::{Cipher, Layer};

/// Mixed into the handshake hash by both ends, for every version.
pub const PROLOGUE: &[u8] = b"taptun/1";
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// The hello we send.
pub const HELLO_LEN: usize = 6;
/// Hello flags bit 0: this end takes GSO super-frames with virtio headers.
pub const FLAG_GSO: u8 = 1;
/// The shortest hello we accept.
pub const MIN_HELLO_LEN: usize = 2;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Length of message 1: e (32) and the tag of the empty payload.
pub const MESSAGE1_LEN: usize = KEY_LEN + TAG_LEN;
/// Length of message 2 with the shortest hello a receiver accepts: e, s and
/// its tag, the hello and its tag. Ours, with a 6-byte hello, is 102 bytes.
pub const MESSAGE2_MIN_LEN: usize = 2 * KEY_LEN + 2 * TAG_LEN + MIN_HELLO_LEN;
/// The longest message 1 or 2 taken for one. Ours are 48 and 102 bytes; this
/// leaves room for a payload or a longer hello, while text (a login banner,
/// an HTTP request or reply: a first byte of 0x20 or more makes a length
/// prefix above 8191) and TLS records (5123 and above) stay above it.
pub const FIRST_MESSAGE_MAX_LEN: usize = 1024;
/// How many of a stream's first bytes describe it when they are not a
/// taptun message: enough for `SSH-2.0-` or `HTTP/1.1`, little in the log.
pub const EXCERPT_LEN: usize = 8;
/// Responder: message 1 must arrive this soon after accept.
pub const RESPONDER_FIRST_MESSAGE: Duration = Duration::from_secs(3);
/// Responder: the whole handshake must finish this soon after accept.
pub const RESPONDER_DEADLINE: Duration = Duration::from_secs(10);
/// Initiator over TCP: from connect to key confirmation.
pub const INITIATOR_DEADLINE: Duration = Duration::from_secs(10);
/// Initiator over a command (-x): an ssh login can be slow.
pub const INITIATOR_COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How long a message 1 ephemeral key is remembered.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// The most ephemeral keys remembered; each needs the psk to get in.
pub const REPLAY_CAPACITY: usize = 65536;

/// What each end tells the other in messages 2 and 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub layer: Layer,
    pub flags: u8,
    pub keepalive: u8,
    pub mtu: u16,
}

impl Hello {
    pub fn new(layer: Layer, mtu: u32) -> Hello {
        Hello {
            version: VERSION,
            layer,
            flags: 0,
            keepalive: 0,
            mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
        }
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let [m0, m1] = self.mtu.to_be_bytes();
        let layer = self.layer.wire_value();
        [self.version, layer, self.flags, self.keepalive, m0, m1]
    }

    /// Parses a hello: at least 2 bytes, absent bytes read as 0, extra bytes
    /// ignored; the version must be 1 and the layer 0 or 1.
    ///
    /// # Errors
    /// A hello that is too short, of another version, or of an unknown layer.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        if bytes.len() < MIN_HELLO_LEN {
            return Err(HandshakeError::Malformed(format!(
                "the hello has {} bytes, at least {MIN_HELLO_LEN} are needed",
                bytes.len()
            )));
        }
        let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
        if byte(0) != VERSION {
            return Err(HandshakeError::Version(byte(0)));
        }
        let layer = Layer::from_wire(byte(1)).ok_or(HandshakeError::UnknownLayer(byte(1)))?;
        Ok(Hello {
            version: VERSION,
            layer,
            flags: byte(2),
            keepalive: byte(3),
            mtu: u16::from_be_bytes([byte(4), byte(5)]),
        })
    }
}

/// Which end of the handshake we are, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// Why a handshake failed. Each message names the likely cause.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer's static key is not the expected one.
    WrongPeerKey { peer_role: Role, got: PublicKey },
    /// The peer's static key is our own: both ends were given the same
    /// local secret, the sign of -l and -r swapped at one end.
    OwnKey { peer_role: Role },
    /// The ends run different layers (we, they).
    LayerMismatch { ours: Layer, theirs: Layer },
    /// The peer speaks another protocol version.
    Version(u8),
    /// The peer announced a layer we do not know.
    UnknownLayer(u8),
    /// Responder: message 1's tag did not check.
    Message1NotAuthentic,
    /// A message after message 1 did not decrypt.
    NotAuthentic(&'static str),
    /// Responder: message 1's ephemeral key was seen before.
    Replay,
    /// The stream ended before key confirmation (seen by `Role`).
    Closed(Role),
    /// The length prefix of the first message from the peer (message 1 for
    /// a responder, message 2 for an initiator, by our `role`) is one no
    /// taptun peer sends; `first` holds up to [`EXCERPT_LEN`] of the bytes
    /// already received.
    NotTaptun { role: Role, first: Vec<u8> },
    /// A deadline passed.
    Timeout(&'static str),
    /// We were asked to stop (SIGINT, SIGTERM, or a server closing the
    /// connection to make room) before the handshake finished.
    Stopped,
    /// A message of the wrong shape.
    Malformed(String),
    /// The stream failed.
    Io(io::Error),
    /// Noise refused an operation on our own side (a bug or bad key).
    Noise(snow::Error),
}

impl HandshakeCause for HandshakeError {
    /// Whether the failure proves the peer is not who we expect or cannot
    /// talk to us (as opposed to a network hiccup or a busy server).
    fn is_provable(&self) -> bool {
        matches!(
            self,
            HandshakeError::WrongPeerKey { .. }
                | HandshakeError::OwnKey { .. }
                | HandshakeError::LayerMismatch { .. }
                | HandshakeError::Version(_)
                | HandshakeError::UnknownLayer(_)
        )
    }

    /// Whether the failure counts as one of authentication (exit status 3):
    /// all do but a stream that is not taptun's at all, such as a login
    /// banner or another service's port.
    fn is_authentication(&self) -> bool {
        !matches!(self, HandshakeError::NotTaptun { .. })
    }
}

/// The first bytes of a stream for a message: at most [`EXCERPT_LEN`] of
/// them between backquotes, each control, non-ASCII, quote or backslash
/// byte escaped (`\r`, `\x16`), so that nothing from the peer can forge or
/// break a log line.
pub fn describe_bytes(bytes: &[u8]) -> String {
    let excerpt = bytes.get(..EXCERPT_LEN).unwrap_or(bytes);
    format!("`{}`", excerpt.escape_ascii())
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::WrongPeerKey { peer_role, got } => {
                let who = match peer_role {
                    Role::Responder => "server",
                    Role::Initiator => "client",
                };
                write!(
                    f,
                    "the {who}'s key is not the one given with -r/-k (it has public key {got})"
                )
            }
            HandshakeError::OwnKey { peer_role } => {
                let who = match peer_role {
                    Role::Responder => "server",
                    Role::Initiator => "client",
                };
                write!(
                    f,
                    "the {who} has this end's own key (the public key of our -l): -l and -r \
                     look swapped at one of the two ends, which then hold the same secret \
                     (the server runs -l S1 -r S2, the client -l S2 -r S1)"
                )
            }
            HandshakeError::LayerMismatch { ours, theirs } => {
                write!(f, "the peer runs {theirs}, we run {ours} (check -t at both ends)")
            }
            HandshakeError::Version(v) => {
                write!(f, "the peer speaks protocol version {v}, we speak {VERSION}")
            }
            HandshakeError::UnknownLayer(l) => write!(f, "the peer announced unknown layer {l}"),
            HandshakeError::Message1NotAuthentic => f.write_str(
                "message 1 did not authenticate: wrong secrets, a different -e, or not a taptun client",
            ),
            HandshakeError::NotAuthentic(which) => write!(
                f,
                "{which} did not authenticate: wrong secrets, a different -e, or a tampered stream"
            ),
            HandshakeError::Replay => f.write_str(
                "message 1 is a replay of one seen in the last 10 minutes (refused without an answer)",
            ),
            HandshakeError::Closed(Role::Initiator) => f.write_str(
                "the server closed the connection during the handshake: wrong secrets, a different -e, \
                 or not a taptun server (or a server busy with another client, or limited by inetd)",
            ),
            HandshakeError::Closed(Role::Responder) => {
                f.write_str("the client closed the connection during the handshake")
            }
            HandshakeError::NotTaptun {
                role: Role::Initiator,
                first,
            } => write!(
                f,
                "the stream starts with {} instead of message 2: a login banner, a shell \
                 startup file's output, another service (SSH, HTTP), or not a taptun server?",
                describe_bytes(first)
            ),
            HandshakeError::NotTaptun {
                role: Role::Responder,
                first,
            } => write!(
                f,
                "the stream starts with {} instead of message 1: an HTTP or SSH client, a \
                 scanner, or not a taptun client?",
                describe_bytes(first)
            ),
            HandshakeError::Timeout(phase) => write!(f, "timed out waiting for {phase}"),
            HandshakeError::Stopped => f.write_str("stopped before the handshake finished"),
            HandshakeError::Malformed(what) => write!(f, "malformed handshake: {what}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Noise(e) => write!(f, "noise: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Who we are and whom we expect: fixed for the life of the process.
pub struct Identity {
    local: PrivateKey,
    remote: PublicKey,
    psk: Psk,
    cipher: Cipher,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("local", &"<redacted>")
            .field("remote", &self.remote)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl Identity {
    /// # Errors
    /// When the remote key is a low-order point.
    pub fn new(local: PrivateKey, remote: PublicKey, cipher: Cipher) -> Result<Identity, String> {
        let psk = keys::derive_psk(&local, &remote)?;
        Ok(Identity {
            local,
            remote,
            psk,
            cipher,
        })
    }

    /// The peer's key, which its sessions must prove.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// As `new`, with the psk already derived: the hub's trial of message 1
    /// (src/trial.rs) derived every listed peer's once, and the handshake
    /// then needs no second X25519.
    pub fn with_psk(local: PrivateKey, remote: PublicKey, psk: Psk, cipher: Cipher) -> Identity {
        Identity {
            local,
            remote,
            psk,
            cipher,
        }
    }

    pub fn local_public(&self) -> PublicKey {
        self.local.public_key()
    }

    fn builder<'a>(&'a self, fixed_ephemeral: Option<&'a [u8; KEY_LEN]>) -> snow::Builder<'a> {
        let params: snow::params::NoiseParams = self
            .cipher
            .noise_name()
            .parse()
            .expect("the two protocol names are valid");
        let mut builder = snow::Builder::with_resolver(params, crate::resolver::resolver())
            .prologue(PROLOGUE)
            .and_then(|b| b.local_private_key(self.local.as_bytes()))
            .and_then(|b| b.psk(0, &self.psk))
            .expect("a fresh builder takes each setting once");
        if let Some(e) = fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        builder
    }
}

/// The keys of an established session. Both directions share it: each
/// message carries its nonce explicitly, so no lock is needed.
pub struct Transport {
    state: snow::StatelessTransportState,
}

impl Transport {
    /// Encrypts `plaintext` with `nonce` into `out`; returns the length.
    ///
    /// # Errors
    /// When `out` is too small (a bug in the caller).
    pub fn seal(&self, nonce: u64, plaintext: &[u8], out: &mut [u8]) -> Result<usize, snow::Error> {
        self.state.write_message(nonce, plaintext, out)
    }

    /// Decrypts `ciphertext` with `nonce` into `out`; returns the length.
    ///
    /// # Errors
    /// When the message does not authenticate.
    pub fn open(
        &self,
        nonce: u64,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        self.state.read_message(nonce, ciphertext, out)
    }
}

/// The outcome of a successful handshake.
pub struct Established {
    pub transport: Transport,
    pub peer_hello: Hello,
    pub peer_key: PublicKey,
    /// The next nonce we send with.
    pub send_nonce: u64,
    /// The next nonce we expect.
    pub recv_nonce: u64,
}

fn peer_static(hs: &snow::HandshakeState) -> Result<PublicKey, HandshakeError> {
    let bytes = hs
        .get_remote_static()
        .ok_or_else(|| HandshakeError::Malformed("no static key received".into()))?;
    let key: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| HandshakeError::Malformed("static key of the wrong length".into()))?;
    Ok(PublicKey(key))
}

/// What both roles hold during the handshake.
struct Party<'a> {
    hs: snow::HandshakeState,
    identity: &'a Identity,
    hello: Hello,
}

impl<'a> Party<'a> {
    fn new(
        identity: &'a Identity,
        hello: Hello,
        ephemeral: Option<&'a [u8; KEY_LEN]>,
        role: Role,
    ) -> Result<Party<'a>, HandshakeError> {
        let builder = identity.builder(ephemeral);
        let hs = match role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .map_err(HandshakeError::Noise)?;
        Ok(Party {
            hs,
            identity,
            hello,
        })
    }

    /// Writes the next message, carrying `payload`.
    fn write(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, HandshakeError> {
        self.hs
            .write_message(payload, out)
            .map_err(HandshakeError::Noise)
    }

    /// Reads message `which` (2 or 3, carrying a hello) and checks that the
    /// static key it revealed is the expected one.
    fn read_hello(
        &mut self,
        msg: &[u8],
        which: &'static str,
        peer_role: Role,
    ) -> Result<Hello, HandshakeError> {
        // A payload is never longer than its message.
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::NotAuthentic(which))?;
        let got = peer_static(&self.hs)?;
        if got != self.identity.remote {
            // Cheap to tell apart, and a newcomer's usual mistake: with -l
            // and -r swapped at one end, both ends hold the same key pair
            // (so the psk matches) and the server presents the client's
            // own public key.
            if got == self.identity.local_public() {
                return Err(HandshakeError::OwnKey { peer_role });
            }
            return Err(HandshakeError::WrongPeerKey { peer_role, got });
        }
        Hello::decode(&payload[..n])
    }

    fn check_layer(&self, peer: &Hello) -> Result<(), HandshakeError> {
        let (ours, theirs) = (self.hello.layer, peer.layer);
        if ours == theirs {
            Ok(())
        } else {
            Err(HandshakeError::LayerMismatch { ours, theirs })
        }
    }

    fn into_transport(self) -> Result<(Transport, PublicKey), HandshakeError> {
        let key = peer_static(&self.hs)?;
        let state = self
            .hs
            .into_stateless_transport_mode()
            .map_err(HandshakeError::Noise)?;
        Ok((Transport { state }, key))
    }
}

/// The initiator's side as a state machine over buffers.
pub struct Initiator<'a>(Party<'a>);

impl<'a> Initiator<'a> {
    /// # Errors
    /// Only if Noise refuses our own settings.
    pub fn new(identity: &'a Identity, hello: Hello) -> Result<Initiator<'a>, HandshakeError> {
        Self::with_ephemeral(identity, hello, None)
    }

    /// As `new`, with a fixed ephemeral key: for test vectors only.
    ///
    /// # Errors
    /// Only if Noise refuses our own settings.
    pub fn with_ephemeral(
        identity: &'a Identity,
        hello: Hello,
        ephemeral: Option<&'a [u8; KEY_LEN]>,
    ) -> Result<Initiator<'a>, HandshakeError> {
        Party::new(identity, hello, ephemeral, Role::Initiator).map(Initiator)
    }

    /// `-> psk, e` with an empty payload.
    ///
    /// # Errors
    /// Only on an internal Noise failure.
    pub fn write_message1(&mut self, out: &mut [u8]) -> Result<usize, HandshakeError> {
        self.0.write(&[], out)
    }

    /// `<- e, ee, s, es`: checks the responder's key and hello.
    ///
    /// # Errors
    /// A message that does not decrypt, a wrong responder key, a bad hello.
    /// A layer mismatch is *not* an error here: see [`Initiator::check_layer`].
    pub fn read_message2(&mut self, msg: &[u8]) -> Result<Hello, HandshakeError> {
        self.0.read_hello(msg, "message 2", Role::Responder)
    }

    /// Whether the responder's layer matches ours; on a mismatch, send
    /// message 3 anyway and then fail with this error.
    ///
    /// # Errors
    /// The layer mismatch.
    pub fn check_layer(&self, peer: &Hello) -> Result<(), HandshakeError> {
        self.0.check_layer(peer)
    }

    /// `-> s, se` with our hello.
    ///
    /// # Errors
    /// Only on an internal Noise failure.
    pub fn write_message3(&mut self, out: &mut [u8]) -> Result<usize, HandshakeError> {
        let hello = self.0.hello.encode();
        self.0.write(&hello, out)
    }

    /// The transport keys, once message 3 is written.
    ///
    /// # Errors
    /// If the handshake is not finished.
    pub fn into_transport(self) -> Result<(Transport, PublicKey), HandshakeError> {
        self.0.into_transport()
    }
}

/// The responder's side as a state machine over buffers.
pub struct Responder<'a>(Party<'a>);

impl<'a> Responder<'a> {
    /// # Errors
    /// Only if Noise refuses our own settings.
    pub fn new(identity: &'a Identity, hello: Hello) -> Result<Responder<'a>, HandshakeError> {
        Self::with_ephemeral(identity, hello, None)
    }

    /// As `new`, with a fixed ephemeral key: for test vectors only.
    ///
    /// # Errors
    /// Only if Noise refuses our own settings.
    pub fn with_ephemeral(
        identity: &'a Identity,
        hello: Hello,
        ephemeral: Option<&'a [u8; KEY_LEN]>,
    ) -> Result<Responder<'a>, HandshakeError> {
        Party::new(identity, hello, ephemeral, Role::Responder).map(Responder)
    }

    /// Checks message 1 (`-> psk, e`); returns its ephemeral key for the
    /// replay check. The payload is ignored.
    ///
    /// # Errors
    /// `Message1NotAuthentic` when the tag does not check.
    pub fn read_message1(&mut self, msg: &[u8]) -> Result<[u8; KEY_LEN], HandshakeError> {
        let ephemeral: [u8; KEY_LEN] = msg
            .get(..KEY_LEN)
            .and_then(|e| e.try_into().ok())
            .ok_or(HandshakeError::Message1NotAuthentic)?;
        // A payload is never longer than its message.
        let mut payload = vec![0u8; msg.len()];
        self.0
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Message1NotAuthentic)?;
        Ok(ephemeral)
    }

    /// `<- e, ee, s, es` with our hello.
    ///
    /// # Errors
    /// Only on an internal Noise failure.
    pub fn write_message2(&mut self, out: &mut [u8]) -> Result<usize, HandshakeError> {
        let hello = self.0.hello.encode();
        self.0.write(&hello, out)
    }

    /// `-> s, se`: checks the initiator's key, hello and layer.
    ///
    /// # Errors
    /// A message that does not decrypt, a wrong initiator key, a bad hello,
    /// a layer mismatch.
    pub fn read_message3(&mut self, msg: &[u8]) -> Result<Hello, HandshakeError> {
        let hello = self.0.read_hello(msg, "message 3", Role::Initiator)?;
        self.0.check_layer(&hello)?;
        Ok(hello)
    }

    /// The transport keys, once message 3 is read.
    ///
    /// # Errors
    /// If the handshake is not finished.
    pub fn into_transport(self) -> Result<(Transport, PublicKey), HandshakeError> {
        self.0.into_transport()
    }
}

/// A message stream for the handshake: the framed stream in real use, an
/// in-memory pipe in tests.
pub trait MessageIo {
    /// Sends one message (with its length prefix).
    ///
    /// # Errors
    /// The stream's write errors.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Receives one message; `None` when the stream ended cleanly.
    ///
    /// # Errors
    /// The stream's read errors; `TimedOut` past the deadline.
    fn recv(&mut self) -> io::Result<Option<&[u8]>>;
    /// Reads after this instant fail with `TimedOut`.
    fn set_deadline(&mut self, deadline: Option<Instant>);
    /// The bytes received of the next message so far, once its length
    /// prefix is in (fewer than 2 only when the stream ended first); nothing
    /// is consumed. The default, for a stream that cannot look ahead, holds
    /// nothing: the first message is then judged only once it is whole.
    ///
    /// # Errors
    /// As [`MessageIo::recv`].
    fn peek(&mut self) -> io::Result<&[u8]> {
        Ok(&[])
    }
    /// Who is at the other end, for the debug log.
    fn peer(&self) -> &str {
        "peer"
    }
}

/// The handshake's name for a failed read or write; `waiting_for` names
/// the phase for a deadline.
fn stream_error(e: io::Error, role: Role, waiting_for: &'static str) -> HandshakeError {
    match StreamEnd::from(e) {
        StreamEnd::Stopped => HandshakeError::Stopped,
        StreamEnd::Closed => HandshakeError::Closed(role),
        StreamEnd::TimedOut(_) => HandshakeError::Timeout(waiting_for),
        StreamEnd::Malformed(e) | StreamEnd::Other(e) => HandshakeError::Io(e),
    }
}

fn recv_or<'a, M: MessageIo>(
    io: &'a mut M,
    role: Role,
    waiting_for: &'static str,
) -> Result<&'a [u8], HandshakeError> {
    match io.recv() {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(HandshakeError::Closed(role)),
        Err(e) => Err(stream_error(e, role, waiting_for)),
    }
}

/// Whether a length prefix can be that of the first message from the peer
/// of `role`: message 1 for a responder, message 2 for an initiator.
pub fn plausible_first_length(role: Role, len: usize) -> bool {
    let shortest = match role {
        Role::Responder => MESSAGE1_LEN,
        Role::Initiator => MESSAGE2_MIN_LEN,
    };
    (shortest..=FIRST_MESSAGE_MAX_LEN).contains(&len)
}

/// As [`recv_or`] for the first message from the peer, refused as soon as
/// its length prefix is in when no taptun peer would send that length (a
/// login banner, another service), without waiting for that many bytes.
fn recv_first<'a, M: MessageIo>(
    io: &'a mut M,
    role: Role,
    waiting_for: &'static str,
) -> Result<&'a [u8], HandshakeError> {
    let held = io.peek().map_err(|e| stream_error(e, role, waiting_for))?;
    if let Some(&[high, low]) = held.get(..crate::frame::HEADER_LEN) {
        if !plausible_first_length(role, usize::from(u16::from_be_bytes([high, low]))) {
            let first = held.get(..EXCERPT_LEN).unwrap_or(held).to_vec();
            return Err(HandshakeError::NotTaptun { role, first });
        }
    }
    recv_or(io, role, waiting_for)
}

/// Sends `msg`; `waiting_for` names it for a deadline that passes while
/// the peer takes nothing.
fn send<M: MessageIo>(
    io: &mut M,
    role: Role,
    msg: &[u8],
    waiting_for: &'static str,
) -> Result<(), HandshakeError> {
    io.send(msg).map_err(|e| stream_error(e, role, waiting_for))
}

/// Runs the initiator's handshake up to key confirmation.
///
/// `deadline` covers everything up to confirmation; afterwards reads have no
/// deadline.
///
/// # Errors
/// Any [`HandshakeError`]; nothing has been relayed.
pub fn initiate<M: MessageIo>(
    io: &mut M,
    identity: &Identity,
    hello: Hello,
    deadline: Instant,
) -> Result<Established, HandshakeError> {
    io.set_deadline(Some(deadline));
    let mut init = Initiator::new(identity, hello)?;
    let mut buf = vec![0u8; crate::frame::MAX_MESSAGE];

    // -> psk, e
    let n = init.write_message1(&mut buf)?;
    send(io, Role::Initiator, &buf[..n], "room to send message 1")?;
    log::debug!("{}: handshake: message 1 sent", io.peer());

    // <- e, ee, s, es
    let msg = recv_first(io, Role::Initiator, "message 2")?;
    let peer_hello = init.read_message2(msg)?;
    log::debug!(
        "{}: handshake: message 2 received, the responder's key checks",
        io.peer()
    );
    let layer_check = init.check_layer(&peer_hello);

    // -> s, se (sent on a layer mismatch too, so that both ends can name it)
    let n = init.write_message3(&mut buf)?;
    send(io, Role::Initiator, &buf[..n], "room to send message 3")?;
    log::debug!("{}: handshake: message 3 sent", io.peer());
    layer_check?;
    let (transport, peer_key) = init.into_transport()?;

    // <- keepalive: the responder accepted message 3.
    let msg = recv_or(io, Role::Initiator, "key confirmation")?;
    if msg.len() < TAG_LEN {
        return Err(HandshakeError::Malformed(
            "key confirmation shorter than a tag".into(),
        ));
    }
    let n = transport
        .open(0, msg, &mut buf)
        .map_err(|_| HandshakeError::NotAuthentic("key confirmation"))?;
    if n != 0 {
        return Err(HandshakeError::Malformed(
            "the first transport message is not a keepalive".into(),
        ));
    }
    log::debug!(
        "{}: handshake: key confirmation received, the responder accepted us",
        io.peer()
    );
    io.set_deadline(None);
    Ok(Established {
        transport,
        peer_hello,
        peer_key,
        send_nonce: 0,
        recv_nonce: 1,
    })
}

/// Runs the responder's handshake, including sending key confirmation.
///
/// `accepted` is when the connection was accepted: message 1 must arrive
/// within 3 s of it and the handshake finish within 10 s. `progress` hears
/// when message 1 proved authentic and fresh, and decides whether to send
/// key confirmation once message 3 checked.
///
/// # Errors
/// Any [`HandshakeError`]; `Stopped` when `progress` declined to confirm;
/// nothing has been relayed.
pub fn respond<M: MessageIo>(
    io: &mut M,
    identity: &Identity,
    hello: Hello,
    accepted: Instant,
    replays: &dyn Replays,
    progress: &dyn Progress,
) -> Result<Established, HandshakeError> {
    let one = One { identity, hello };
    respond_with(io, &one, accepted, replays, progress).map(|(keys, _)| keys)
}

/// Whom a responder may be talking to, told by message 1: the one peer
/// point to point, the listed peer whose psk authenticates it in a hub.
pub trait Choose {
    /// A handle on one peer.
    type Choice;
    /// The peer whose psk authenticates message 1.
    ///
    /// # Errors
    /// `Message1NotAuthentic` when none does, or why the peer cannot be served.
    fn choose(&self, msg1: &[u8]) -> Result<Self::Choice, HandshakeError>;
    /// The peer's identity, and our hello for it.
    fn parts<'c>(&self, choice: &'c Self::Choice) -> (&'c Identity, Hello);
}

/// The one peer of [`respond`].
struct One<'a> {
    identity: &'a Identity,
    hello: Hello,
}

impl<'a> Choose for One<'a> {
    type Choice = &'a Identity;

    fn choose(&self, _: &[u8]) -> Result<&'a Identity, HandshakeError> {
        Ok(self.identity)
    }

    fn parts<'c>(&self, choice: &'c &'a Identity) -> (&'c Identity, Hello) {
        (choice, self.hello)
    }
}

/// [`respond`] for a responder that serves several peers (a hub):
/// `chooser` names the peer from message 1, whose identity the rest of the
/// handshake then requires. Returns the keys with the choice.
///
/// # Errors
/// As [`respond`], and what the chooser returns.
pub fn respond_with<M: MessageIo, C: Choose + ?Sized>(
    io: &mut M,
    chooser: &C,
    accepted: Instant,
    replays: &dyn Replays,
    progress: &dyn Progress,
) -> Result<(Established, C::Choice), HandshakeError> {
    let mut buf = vec![0u8; crate::frame::MAX_MESSAGE];

    // -> psk, e
    io.set_deadline(Some(accepted + RESPONDER_FIRST_MESSAGE));
    let msg = recv_first(io, Role::Responder, "message 1")?;
    let picked = chooser.choose(msg)?;
    let (identity, hello) = chooser.parts(&picked);
    let mut resp = Responder::new(identity, hello)?;
    let ephemeral = resp.read_message1(msg)?;
    if !replays.first_sight(ephemeral) {
        return Err(HandshakeError::Replay);
    }
    log::debug!(
        "{}: handshake: message 1 received, authentic and fresh",
        io.peer()
    );
    progress.authentic(&identity.remote);

    // <- e, ee, s, es
    io.set_deadline(Some(accepted + RESPONDER_DEADLINE));
    let n = resp.write_message2(&mut buf)?;
    send(io, Role::Responder, &buf[..n], "room to send message 2")?;
    log::debug!("{}: handshake: message 2 sent", io.peer());

    // -> s, se
    let msg = recv_or(io, Role::Responder, "message 3")?;
    let peer_hello = resp.read_message3(msg)?;
    let (transport, peer_key) = resp.into_transport()?;
    log::debug!(
        "{}: handshake: message 3 received, the initiator's key checks",
        io.peer()
    );
    if !progress.confirm() {
        return Err(HandshakeError::Stopped);
    }

    // <- keepalive (nonce 0): key confirmation.
    let n = transport
        .seal(0, &[], &mut buf)
        .map_err(HandshakeError::Noise)?;
    send(io, Role::Responder, &buf[..n], "room for key confirmation")?;
    log::debug!("{}: handshake: key confirmation sent", io.peer());
    io.set_deadline(None);
    let keys = Established {
        transport,
        peer_hello,
        peer_key,
        send_nonce: 1,
        recv_nonce: 0,
    };
    Ok((keys, picked))
}

/// Where a responder remembers message 1's ephemeral keys: this process's
/// [`ReplayCache`] (-s), or one shared by the processes of one user
/// ([`crate::replay::InetdReplays`], -i).
pub trait Replays: Sync {
    /// Records `key` as seen now; false when it was seen within the window
    /// (a replay, to be refused without an answer).
    fn first_sight(&self, key: [u8; KEY_LEN]) -> bool;
}

/// What a responder tells its caller on the way, so that a server can rank
/// its pending handshakes. `()` listens to nothing and always confirms.
pub trait Progress {
    /// Message 1 authenticated and is not a replay: the peer whose key is
    /// `peer` holds the psk (that peer has yet to prove its key).
    fn authentic(&self, _peer: &PublicKey) {}
    /// Message 3 authenticated; the handshake succeeds once key
    /// confirmation is sent. False when the caller has given up on this
    /// connection (it was closed to make room): then nothing is sent.
    fn confirm(&self) -> bool {
        true
    }
}

impl Progress for () {}

/// Message-1 ephemeral keys seen in the last 10 minutes.
///
/// Only keys from messages whose tag checked are inserted, so filling the
/// cache needs the psk. Bounded at [`REPLAY_CAPACITY`] entries (about 3 MiB);
/// when full, the oldest entry goes first.
pub struct ReplayCache {
    inner: Mutex<ReplayInner>,
}

struct ReplayInner {
    seen: HashMap<[u8; KEY_LEN], Instant>,
    order: VecDeque<([u8; KEY_LEN], Instant)>,
    window: Duration,
    capacity: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(REPLAY_WINDOW, REPLAY_CAPACITY)
    }
}

impl ReplayCache {
    pub fn new(window: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(ReplayInner {
                seen: HashMap::new(),
                order: VecDeque::new(),
                window,
                capacity: capacity.max(1),
            }),
        }
    }

    /// Records `key` seen at `now`; false when it was seen within the window.
    pub fn insert(&self, key: [u8; KEY_LEN], now: Instant) -> bool {
        let mut inner = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let window = inner.window;
        while let Some(&(old, at)) = inner.order.front() {
            if now.saturating_duration_since(at) < window && inner.order.len() < inner.capacity {
                break;
            }
            inner.order.pop_front();
            if inner.seen.get(&old) == Some(&at) {
                inner.seen.remove(&old);
            }
        }
        if inner.seen.contains_key(&key) {
            return false;
        }
        inner.seen.insert(key, now);
        inner.order.push_back((key, now));
        true
    }
}

impl Replays for ReplayCache {
    fn first_sight(&self, key: [u8; KEY_LEN]) -> bool {
        self.insert(key, Instant::now())
    }
}

/// Both ends of a handshake between two fixed keys, run in memory: each
/// side's transport with the peer key it saw, the initiator's first. For the
/// tests of the modules that take an established session.
#[cfg(test)]
pub(crate) fn in_memory(cipher: Cipher) -> ((Transport, PublicKey), (Transport, PublicKey)) {
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let ia = Identity::new(a.clone(), b.public_key(), cipher).unwrap();
    let ib = Identity::new(b, a.public_key(), cipher).unwrap();
    let hello = Hello::new(Layer::Tap, 1500);
    let mut init = Initiator::new(&ia, hello).unwrap();
    let mut resp = Responder::new(&ib, hello).unwrap();
    let mut buf = vec![0u8; 1024];
    let n = init.write_message1(&mut buf).unwrap();
    resp.read_message1(&buf[..n]).unwrap();
    let n = resp.write_message2(&mut buf).unwrap();
    init.read_message2(&buf[..n]).unwrap();
    let n = init.write_message3(&mut buf).unwrap();
    resp.read_message3(&buf[..n]).unwrap();
    (
        init.into_transport().unwrap(),
        resp.into_transport().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use crate::frame::FrameReader;

    /// A framed Unix socket: the in-memory pipe of the handshake tests.
    struct Pipe {
        reader: FrameReader<UnixStream>,
        writer: UnixStream,
    }

    impl Pipe {
        fn pair() -> (Pipe, Pipe) {
            let (a, b) = UnixStream::pair().unwrap();
            let pipe = |s: UnixStream| Pipe {
                writer: s.try_clone().unwrap(),
                reader: FrameReader::new(s),
            };
            (pipe(a), pipe(b))
        }
    }

    impl MessageIo for Pipe {
        fn send(&mut self, msg: &[u8]) -> io::Result<()> {
            let mut wire = Vec::new();
            crate::frame::encode(msg, &mut wire);
            self.writer.write_all(&wire)
        }
        fn recv(&mut self) -> io::Result<Option<&[u8]>> {
            self.reader.next_message().map_err(deadline_passed)
        }
        fn peek(&mut self) -> io::Result<&[u8]> {
            self.reader.fill_prefix().map_err(deadline_passed)
        }
        fn set_deadline(&mut self, deadline: Option<Instant>) {
            let timeout = deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            });
            self.reader.get_ref().set_read_timeout(timeout).unwrap();
        }
    }

    /// A socket's read timeout says `WouldBlock`; the real stream says
    /// `TimedOut` when its deadline passes.
    fn deadline_passed(e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
        } else {
            e
        }
    }

    /// A stream that takes nothing: each send times out, as the real one
    /// does once the peer stops reading and the deadline passes.
    struct Full;

    impl MessageIo for Full {
        fn send(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing could be written for 0 s",
            ))
        }
        fn recv(&mut self) -> io::Result<Option<&[u8]>> {
            Ok(None)
        }
        fn set_deadline(&mut self, _: Option<Instant>) {}
    }

    #[test]
    fn a_send_past_the_deadline_is_a_timeout_as_a_receive_is() {
        let (_, client) = pair(1, 2);
        let r = initiate(
            &mut Full,
            &client,
            Hello::new(Layer::Tap, 1500),
            Instant::now(),
        );
        let e = r.err().expect("nothing was sent");
        assert!(matches!(e, HandshakeError::Timeout(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "timed out waiting for room to send message 1"
        );
    }

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes([seed; 32])
    }

    fn pair(server: u8, client: u8) -> (Identity, Identity) {
        let s = Identity::new(key(server), key(client).public_key(), Cipher::ChaChaPoly).unwrap();
        let c = Identity::new(key(client), key(server).public_key(), Cipher::ChaChaPoly).unwrap();
        (s, c)
    }

    type Outcome = (
        Result<Established, HandshakeError>,
        Result<Established, HandshakeError>,
    );

    fn run(server: Identity, client: Identity, s_layer: Layer, c_layer: Layer) -> Outcome {
        let (mut sp, mut cp) = Pipe::pair();
        let replays = ReplayCache::default();
        std::thread::scope(|scope| {
            let srv = scope.spawn(|| {
                let r = respond(
                    &mut sp,
                    &server,
                    Hello::new(s_layer, 1500),
                    Instant::now(),
                    &replays,
                    &(),
                );
                drop(sp); // the responder closes on failure
                r
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            let c = initiate(&mut cp, &client, Hello::new(c_layer, 1400), deadline);
            drop(cp);
            (srv.join().unwrap(), c)
        })
    }

    #[test]
    fn handshake_succeeds_and_keys_match() {
        let (s, c) = pair(1, 2);
        let (sr, cr) = run(s, c, Layer::Tap, Layer::Tap);
        let (s, c) = (sr.unwrap(), cr.unwrap());
        assert_eq!(s.peer_key, key(2).public_key());
        assert_eq!(c.peer_key, key(1).public_key());
        assert_eq!(c.peer_hello.mtu, 1500);
        assert_eq!(s.peer_hello.mtu, 1400);
        let mut ct = [0u8; 64];
        let mut pt = [0u8; 64];
        let n = c.transport.seal(c.send_nonce, b"frame", &mut ct).unwrap();
        let m = s.transport.open(s.recv_nonce, &ct[..n], &mut pt).unwrap();
        assert_eq!(&pt[..m], b"frame");
    }

    #[test]
    fn wrong_remote_key_fails_handshake() {
        // The client expects key 3 but the server has key 1: the psks differ,
        // so the server refuses message 1 and the client sees the close.
        let server = Identity::new(key(1), key(2).public_key(), Cipher::ChaChaPoly).unwrap();
        let client = Identity::new(key(2), key(3).public_key(), Cipher::ChaChaPoly).unwrap();
        let (sr, cr) = run(server, client, Layer::Tap, Layer::Tap);
        assert!(matches!(sr, Err(HandshakeError::Message1NotAuthentic)));
        assert!(matches!(cr, Err(HandshakeError::Closed(Role::Initiator))));
    }

    #[test]
    fn a_server_with_the_clients_own_key_means_swapped_secrets() {
        // The client swapped -l and -r: it holds the server's pair, so the
        // psk matches and the server presents the client's own public key.
        let (server, _) = pair(1, 2);
        let (swapped, _) = pair(1, 2);
        let (sr, cr) = run(server, swapped, Layer::Tap, Layer::Tap);
        let Err(err) = cr else {
            panic!("the swapped client completed the handshake")
        };
        assert!(
            matches!(
                err,
                HandshakeError::OwnKey {
                    peer_role: Role::Responder
                }
            ),
            "{err:?}"
        );
        assert!(err.is_provable());
        assert!(err.to_string().contains("-l and -r look swapped"), "{err}");
        assert!(matches!(sr, Err(HandshakeError::Closed(Role::Responder))));
    }

    #[test]
    fn responder_with_right_psk_but_wrong_key_is_caught_by_initiator() {
        // An impostor that somehow has the psk but another static key is
        // caught by the static-key check before message 3 is sent.
        let (_, client) = pair(1, 2);
        let mut impostor = Identity::new(key(9), key(2).public_key(), Cipher::ChaChaPoly).unwrap();
        impostor.psk = client.psk.clone();
        let (sr, cr) = run(impostor, client, Layer::Tap, Layer::Tap);
        assert!(matches!(
            cr,
            Err(HandshakeError::WrongPeerKey {
                peer_role: Role::Responder,
                ..
            })
        ));
        assert!(matches!(sr, Err(HandshakeError::Closed(Role::Responder))));
    }

    #[test]
    fn layer_mismatch_is_named_at_both_ends() {
        let (s, c) = pair(1, 2);
        let (sr, cr) = run(s, c, Layer::Tun, Layer::Tap);
        assert!(matches!(
            cr,
            Err(HandshakeError::LayerMismatch {
                ours: Layer::Tap,
                theirs: Layer::Tun
            })
        ));
        assert!(matches!(
            sr,
            Err(HandshakeError::LayerMismatch {
                ours: Layer::Tun,
                theirs: Layer::Tap
            })
        ));
    }

    #[test]
    fn cipher_mismatch_fails_at_message_1() {
        let server = Identity::new(key(1), key(2).public_key(), Cipher::AesGcm).unwrap();
        let client = Identity::new(key(2), key(1).public_key(), Cipher::ChaChaPoly).unwrap();
        let (sr, cr) = run(server, client, Layer::Tap, Layer::Tap);
        assert!(matches!(sr, Err(HandshakeError::Message1NotAuthentic)));
        assert!(matches!(cr, Err(HandshakeError::Closed(Role::Initiator))));
    }

    #[test]
    fn aesgcm_handshake_succeeds() {
        let server = Identity::new(key(1), key(2).public_key(), Cipher::AesGcm).unwrap();
        let client = Identity::new(key(2), key(1).public_key(), Cipher::AesGcm).unwrap();
        let (sr, cr) = run(server, client, Layer::Tun, Layer::Tun);
        assert!(sr.is_ok() && cr.is_ok());
    }

    #[test]
    fn replayed_message_1_is_refused() {
        let (server, client) = pair(1, 2);
        let mut init = Initiator::new(&client, Hello::new(Layer::Tap, 1500)).unwrap();
        let mut m1 = [0u8; 128];
        let n = init.write_message1(&mut m1).unwrap();
        assert_eq!(n, MESSAGE1_LEN);
        let replays = ReplayCache::default();
        let now = Instant::now();
        let mut first = Responder::new(&server, Hello::new(Layer::Tap, 1500)).unwrap();
        let e = first.read_message1(&m1[..n]).unwrap();
        assert!(replays.insert(e, now));
        let mut second = Responder::new(&server, Hello::new(Layer::Tap, 1500)).unwrap();
        let e2 = second.read_message1(&m1[..n]).unwrap();
        assert!(!replays.insert(e2, now + Duration::from_secs(1)));
        // Forgotten after the window.
        assert!(replays.insert(e2, now + REPLAY_WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn replayed_message_1_over_the_stream_gets_no_answer() {
        let (server, client) = pair(1, 2);
        let mut init = Initiator::new(&client, Hello::new(Layer::Tap, 1500)).unwrap();
        let mut m1 = [0u8; 128];
        let n = init.write_message1(&mut m1).unwrap();
        let replays = ReplayCache::default();
        for attempt in 0..2 {
            let (mut sp, mut cp) = Pipe::pair();
            cp.send(&m1[..n]).unwrap();
            cp.writer.shutdown(std::net::Shutdown::Write).unwrap();
            let hello = Hello::new(Layer::Tap, 1500);
            let r = respond(&mut sp, &server, hello, Instant::now(), &replays, &());
            drop(sp);
            if attempt == 0 {
                // The first gets message 2, then sees the close.
                assert!(matches!(r, Err(HandshakeError::Closed(Role::Responder))));
                assert!(cp.recv().unwrap().is_some());
            } else {
                assert!(matches!(r, Err(HandshakeError::Replay)));
                assert!(cp.recv().unwrap().is_none(), "a replay must get no answer");
            }
        }
    }

    /// Counts what the responder reports, and declines to confirm.
    #[derive(Default)]
    struct Evicted {
        authentic: std::cell::Cell<u32>,
    }

    impl Progress for Evicted {
        fn authentic(&self, _peer: &PublicKey) {
            self.authentic.set(self.authentic.get() + 1);
        }
        fn confirm(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_handshake_closed_to_make_room_sends_no_key_confirmation() {
        let (server, client) = pair(1, 2);
        let (mut sp, mut cp) = Pipe::pair();
        let replays = ReplayCache::default();
        let progress = Evicted::default();
        std::thread::scope(|scope| {
            let c = scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                initiate(&mut cp, &client, Hello::new(Layer::Tap, 1500), deadline)
            });
            let hello = Hello::new(Layer::Tap, 1500);
            let r = respond(&mut sp, &server, hello, Instant::now(), &replays, &progress);
            drop(sp);
            assert!(matches!(r, Err(HandshakeError::Stopped)));
            assert_eq!(progress.authentic.get(), 1);
            assert!(matches!(
                c.join().unwrap(),
                Err(HandshakeError::Closed(Role::Initiator))
            ));
        });
    }

    #[test]
    fn a_replay_is_not_reported_authentic() {
        let (server, client) = pair(1, 2);
        let mut init = Initiator::new(&client, Hello::new(Layer::Tap, 1500)).unwrap();
        let mut m1 = [0u8; 128];
        let n = init.write_message1(&mut m1).unwrap();
        let replays = ReplayCache::default();
        let progress = Evicted::default();
        for _ in 0..2 {
            let (mut sp, mut cp) = Pipe::pair();
            cp.send(&m1[..n]).unwrap();
            cp.writer.shutdown(std::net::Shutdown::Write).unwrap();
            let hello = Hello::new(Layer::Tap, 1500);
            let _ = respond(&mut sp, &server, hello, Instant::now(), &replays, &progress);
        }
        assert_eq!(progress.authentic.get(), 1);
    }

    #[test]
    fn replay_cache_is_bounded() {
        let cache = ReplayCache::new(REPLAY_WINDOW, 4);
        let now = Instant::now();
        for i in 0..10u8 {
            assert!(cache.insert([i; 32], now));
        }
        assert!(cache.inner.lock().unwrap().seen.len() <= 4);
    }

    #[test]
    fn describe_bytes_shows_at_most_8_bytes_escaped() {
        assert_eq!(describe_bytes(b"SSH-2.0-OpenSSH_9.2\r\n"), "`SSH-2.0-`");
        assert_eq!(describe_bytes(b"hi\r\n"), r"`hi\r\n`");
        assert_eq!(
            describe_bytes(&[0x16, 0x03, 0x01, 0x00, 0xa5]),
            r"`\x16\x03\x01\x00\xa5`"
        );
        assert_eq!(describe_bytes(b""), "``");
        // Nothing from the peer reaches the log unescaped: no control byte,
        // no line break, nothing beyond ASCII, and at most 4 characters a byte.
        let hostile: Vec<u8> = (0..=255u8).rev().collect();
        for window in hostile.windows(EXCERPT_LEN) {
            let text = describe_bytes(window);
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text}");
            assert!(text.len() <= 2 + 4 * EXCERPT_LEN, "{text}");
        }
    }

    #[test]
    fn first_message_lengths_of_both_ciphers_are_plausible_and_text_is_not() {
        for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
            let server = Identity::new(key(1), key(2).public_key(), cipher).unwrap();
            let client = Identity::new(key(2), key(1).public_key(), cipher).unwrap();
            let hello = Hello::new(Layer::Tap, 1500);
            let mut init = Initiator::new(&client, hello).unwrap();
            let mut resp = Responder::new(&server, hello).unwrap();
            let mut m1 = [0u8; 128];
            let mut m2 = [0u8; 128];
            let n1 = init.write_message1(&mut m1).unwrap();
            resp.read_message1(&m1[..n1]).unwrap();
            let n2 = resp.write_message2(&mut m2).unwrap();
            assert_eq!((n1, n2), (48, 102), "{cipher:?}");
            assert!(plausible_first_length(Role::Responder, n1));
            assert!(plausible_first_length(Role::Initiator, n2));
        }
        assert!(!plausible_first_length(Role::Responder, MESSAGE1_LEN - 1));
        assert!(!plausible_first_length(
            Role::Initiator,
            MESSAGE2_MIN_LEN - 1
        ));
        assert!(plausible_first_length(
            Role::Initiator,
            FIRST_MESSAGE_MAX_LEN
        ));
        assert!(!plausible_first_length(
            Role::Responder,
            FIRST_MESSAGE_MAX_LEN + 1
        ));
        // Any text starts with a byte of 0x20 or more; TLS with 0x15 to 0x17.
        for start in [
            &b"SSH-"[..],
            b"HTTP",
            b"GET ",
            b"220 ",
            b"\t\t",
            b"\x15\x03",
        ] {
            let len = usize::from(u16::from_be_bytes([start[0], start[1]]));
            assert!(!plausible_first_length(Role::Responder, len), "{start:?}");
            assert!(!plausible_first_length(Role::Initiator, len), "{start:?}");
        }
    }

    #[test]
    fn responder_refuses_an_http_request_at_once_without_answer() {
        let (server, _) = pair(1, 2);
        let (mut sp, mut cp) = Pipe::pair();
        // The client keeps the stream open: only the prefix can end it early.
        cp.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let hello = Hello::new(Layer::Tap, 1500);
        let replays = ReplayCache::default();
        let r = respond(&mut sp, &server, hello, Instant::now(), &replays, &());
        let Err(e @ HandshakeError::NotTaptun { .. }) = r else {
            panic!("expected NotTaptun, got {:?}", r.err());
        };
        assert!(!e.is_authentication() && !e.is_provable());
        assert_eq!(
            e.to_string(),
            "the stream starts with `GET / HT` instead of message 1: an HTTP or SSH client, a \
             scanner, or not a taptun client?"
        );
        drop(sp);
        assert!(cp.recv().unwrap().is_none(), "the request got an answer");
    }

    #[test]
    fn initiator_refuses_a_login_banner_at_once() {
        let (_, client) = pair(1, 2);
        let (mut sp, mut cp) = Pipe::pair();
        sp.writer.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        // Not closed either: without the check this waits for the deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = initiate(&mut cp, &client, Hello::new(Layer::Tap, 1500), deadline);
        let Err(e @ HandshakeError::NotTaptun { .. }) = r else {
            panic!("expected NotTaptun, got {:?}", r.err());
        };
        assert!(!e.is_authentication() && !e.is_provable());
        assert!(
            e.to_string().starts_with(
                "the stream starts with `SSH-2.0-` instead of message 2: a login banner"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_short_first_message_is_refused_before_its_body() {
        // A length of 10 with only part of the body: refused as soon as the
        // prefix is in, not once 10 bytes arrive.
        let (server, _) = pair(1, 2);
        let (mut sp, mut cp) = Pipe::pair();
        cp.writer.write_all(&[0, 10, 1, 2, 3]).unwrap();
        let replays = ReplayCache::default();
        let hello = Hello::new(Layer::Tap, 1500);
        let r = respond(&mut sp, &server, hello, Instant::now(), &replays, &());
        assert!(
            matches!(&r, Err(HandshakeError::NotTaptun { role: Role::Responder, first }) if first == &[0, 10, 1, 2, 3]),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn a_plausible_first_message_that_stalls_still_meets_the_deadline() {
        let (server, _) = pair(1, 2);
        let (mut sp, mut cp) = Pipe::pair();
        cp.writer
            .write_all(&[0, MESSAGE1_LEN as u8, 1, 2, 3])
            .unwrap();
        let replays = ReplayCache::default();
        let hello = Hello::new(Layer::Tap, 1500);
        // Accepted long enough ago that the message-1 deadline is 100 ms away.
        let accepted = Instant::now() - RESPONDER_FIRST_MESSAGE + Duration::from_millis(100);
        let r = respond(&mut sp, &server, hello, accepted, &replays, &());
        assert!(
            matches!(r, Err(HandshakeError::Timeout("message 1"))),
            "{:?}",
            r.err()
        );
    }

    #[test]
    fn only_a_stream_that_is_not_taptun_is_no_authentication_failure() {
        use crate::error::{EXIT_AUTH, EXIT_FAILURE, Error};
        let handshake = |cause: HandshakeError| Error::Handshake {
            peer: "exec".into(),
            cause: Box::new(cause),
        };
        let not_taptun = HandshakeError::NotTaptun {
            role: Role::Initiator,
            first: b"hello ba".to_vec(),
        };
        assert_eq!(handshake(not_taptun).exit_code(), EXIT_FAILURE);
        for cause in [
            HandshakeError::Closed(Role::Initiator),
            HandshakeError::Message1NotAuthentic,
            HandshakeError::Timeout("message 2"),
        ] {
            assert_eq!(handshake(cause).exit_code(), EXIT_AUTH);
        }
    }

    #[test]
    fn hello_rules() {
        assert_eq!(
            Hello::decode(&[1, 1]).unwrap(),
            Hello {
                version: 1,
                layer: Layer::Tun,
                flags: 0,
                keepalive: 0,
                mtu: 0
            }
        );
        let long = [1, 0, 0xff, 7, 0x05, 0xdc, 99, 99];
        let h = Hello::decode(&long).unwrap();
        assert_eq!((h.flags, h.keepalive, h.mtu), (0xff, 7, 1500));
        assert!(matches!(
            Hello::decode(&[1]),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            Hello::decode(&[2, 0]),
            Err(HandshakeError::Version(2))
        ));
        assert!(matches!(
            Hello::decode(&[1, 2]),
            Err(HandshakeError::UnknownLayer(2))
        ));
    }
}
