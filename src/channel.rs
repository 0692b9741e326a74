//! An established session's transport rules, with no I/O: a [`Sender`]
//! seals a device frame into a caller's buffer, a [`Receiver`] opens a
//! message into one and says what to do with it. The relay, the fuzz target
//! and the benchmark all run this same code; waiting, batching, threads and
//! counting stay with the caller.
//!
//! Nonces: both halves share one `snow::StatelessTransportState` (it takes
//! `&self` and an explicit nonce), so each half is owned by one thread and
//! no lock is on the per-frame path. On an ordered stream the nonce is the
//! message count in that direction. The sender takes the next nonce only
//! when it has sealed something, and a caller never drops a sealed message;
//! the receiver takes the next nonce for every message that decrypts,
//! including those it then refuses, so both ends stay in step.
//!
//! Framing: frames cross as the device gives them ([`Framing::Plain`],
//! [`Framing::Gso`], the virtio header then checked before the device sees
//! it), or with the header stripped on the way out and a zero header added
//! on the way in ([`Framing::Strip`]). An empty plaintext is a keepalive.
//!
//! A message shorter than its tag, or one that does not decrypt, is
//! [`Opened::Fatal`]: a stream cannot resynchronise, so nothing after it can
//! be trusted.

use std::fmt;
use std::sync::Arc;

use crate::device::MAX_FRAME;
use crate::frame::{self, HEADER_LEN};
use crate::handshake::{Established, TAG_LEN, Transport};
use crate::vnet::{self, Reject};

/// The room [`Receiver::open`] needs in its output: the largest plaintext
/// behind a virtio header.
pub const OPEN_ROOM: usize = vnet::HDR_LEN + frame::MAX_MESSAGE;

/// How frames and the device's virtio headers cross the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The device has no virtio headers: frames cross as they are.
    Plain,
    /// The device has them but the peer takes no GSO: the header is
    /// stripped on the way out (a partial checksum completed, a super-frame
    /// dropped) and a zero header added on the way in.
    Strip,
    /// Both ends announced GSO: the header crosses with the frame, and is
    /// checked before the device sees it.
    Gso,
}

impl Framing {
    /// Header bytes in a plaintext (not counted as frame bytes).
    fn overhead(self) -> usize {
        match self {
            Framing::Gso => vnet::HDR_LEN,
            Framing::Plain | Framing::Strip => 0,
        }
    }
}

/// An established session's two halves, ready to move to their threads.
pub struct Channel {
    pub sender: Sender,
    pub receiver: Receiver,
}

impl Channel {
    /// The halves of the session `established`; `kind` is what the device's
    /// virtio headers precede, for the checks of [`Framing::Gso`].
    pub fn new(established: Established, framing: Framing, kind: vnet::Kind) -> Channel {
        let (send, recv) = (established.send_nonce, established.recv_nonce);
        Channel::resume(Arc::new(established.transport), send, recv, framing, kind)
    }

    /// The halves of a session whose next nonces are `send` and `recv`.
    pub fn resume(
        transport: Arc<Transport>,
        send: u64,
        recv: u64,
        framing: Framing,
        kind: vnet::Kind,
    ) -> Channel {
        Channel {
            sender: Sender {
                transport: transport.clone(),
                nonce: send,
                framing,
            },
            receiver: Receiver {
                transport,
                nonce: recv,
                framing,
                kind,
            },
        }
    }
}

/// What [`Sender::seal`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// `used` bytes of the output hold the message behind its prefix; it
    /// carries `bytes` bytes of frame (its virtio header not counted).
    Message { used: usize, bytes: usize },
    /// Nothing was sealed and no nonce taken.
    Drop(Unsent),
}

/// Why a frame from the device was not sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsent {
    /// [`Framing::Strip`] cannot make it a plain frame (most often a
    /// super-frame queued before the offloads went off).
    Offload(Reject),
    /// Larger than [`MAX_FRAME`] (its virtio header not counted), or the
    /// output has no room for it.
    Oversize,
}

/// The sending half: seals frames with consecutive nonces.
pub struct Sender {
    transport: Arc<Transport>,
    /// The nonce of the next message sealed.
    nonce: u64,
    framing: Framing,
}

impl Sender {
    /// Seals `packet`, as the device gave it, into `out` behind its prefix.
    /// [`Framing::Strip`] rewrites it in place (a completed checksum).
    pub fn seal(&mut self, packet: &mut [u8], out: &mut [u8]) -> Sealed {
        let plaintext = match self.framing {
            Framing::Plain | Framing::Gso => &*packet,
            Framing::Strip => match vnet::strip(packet) {
                Ok(frame) => frame,
                Err(why) => return Sealed::Drop(Unsent::Offload(why)),
            },
        };
        let bytes = plaintext.len().saturating_sub(self.framing.overhead());
        if bytes > MAX_FRAME {
            return Sealed::Drop(Unsent::Oversize);
        }
        match self.seal_plaintext(plaintext, out) {
            Some(used) => Sealed::Message { used, bytes },
            None => Sealed::Drop(Unsent::Oversize),
        }
    }

    /// Seals a keepalive (an empty message) into `out`; returns the bytes
    /// used, 0 when `out` has no room for one.
    pub fn keepalive(&mut self, out: &mut [u8]) -> usize {
        self.seal_plaintext(&[], out).unwrap_or(0)
    }

    fn seal_plaintext(&mut self, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        let room = plaintext.len() + TAG_LEN;
        if room > frame::MAX_MESSAGE || out.len() < HEADER_LEN + room {
            return None;
        }
        let used = frame::encode_with(out, |body| {
            self.transport
                .seal(self.nonce, plaintext, &mut body[..room])
        })
        .ok()?;
        self.nonce += 1;
        Some(used)
    }
}

/// What [`Receiver::open`] found in a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The output's first `len` bytes are a frame for the device (behind a
    /// zero virtio header with [`Framing::Strip`]), carrying `bytes` bytes
    /// of frame (its virtio header not counted).
    Frame { len: usize, bytes: usize },
    /// An empty message: the peer is alive.
    Keepalive,
    /// A frame the device must not see: its virtio header fails the checks.
    Drop(Reject),
    /// The session cannot go on.
    Fatal(Fatal),
}

/// Why a message ends the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// Shorter than its authentication tag: the length.
    Short(usize),
    /// It did not decrypt with the expected nonce: the nonce (tampered,
    /// replayed, reordered, or sealed with other keys).
    Undecryptable(u64),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Short(len) => write!(
                f,
                "a transport message of {len} bytes, shorter than its tag"
            ),
            Fatal::Undecryptable(nonce) => write!(f, "transport message {nonce} did not decrypt"),
        }
    }
}

/// The receiving half: opens messages with consecutive nonces.
pub struct Receiver {
    transport: Arc<Transport>,
    /// The nonce the next message must have been sealed with.
    nonce: u64,
    framing: Framing,
    /// What follows the device's virtio headers, for [`vnet::check`].
    kind: vnet::Kind,
}

impl Receiver {
    /// Opens one message from the stream into `out`, which needs
    /// [`OPEN_ROOM`] bytes.
    pub fn open(&mut self, message: &[u8], out: &mut [u8]) -> Opened {
        if message.len() < TAG_LEN {
            return Opened::Fatal(Fatal::Short(message.len()));
        }
        let header = match self.framing {
            Framing::Strip => vnet::HDR_LEN,
            Framing::Plain | Framing::Gso => 0,
        };
        let Some(body) = out.get_mut(header..) else {
            return Opened::Fatal(Fatal::Undecryptable(self.nonce));
        };
        let Ok(n) = self.transport.open(self.nonce, message, body) else {
            return Opened::Fatal(Fatal::Undecryptable(self.nonce));
        };
        self.nonce += 1;
        if n == 0 {
            return Opened::Keepalive;
        }
        match self.framing {
            Framing::Strip => out[..header].fill(0),
            Framing::Gso => {
                if let Err(why) = vnet::check(&out[..n], self.kind) {
                    return Opened::Drop(why);
                }
            }
            Framing::Plain => {}
        }
        Opened::Frame {
            len: header + n,
            bytes: n - self.framing.overhead(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Layer;
    use crate::handshake::{Cipher, Hello};

    /// Both ends of a session after a real handshake in memory (initiator,
    /// responder), before the responder's key confirmation ([`confirm`]).
    fn channels(cipher: Cipher, ours: Framing, theirs: Framing) -> (Channel, Channel) {
        let ((ti, ki), (tr, kr)) = crate::handshake::in_memory(cipher);
        let hello = Hello::new(Layer::Tap, 1500);
        let established = |transport, peer_key, send_nonce, recv_nonce| Established {
            transport,
            peer_hello: hello,
            peer_key,
            send_nonce,
            recv_nonce,
        };
        (
            Channel::new(established(ti, ki, 0, 0), ours, vnet::Kind::Ethernet),
            Channel::new(established(tr, kr, 1, 0), theirs, vnet::Kind::Ethernet),
        )
    }

    /// Seals `packet` and returns the message without its prefix.
    fn seal(sender: &mut Sender, packet: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; frame::MAX_WIRE];
        match sender.seal(&mut packet.to_vec(), &mut out) {
            Sealed::Message { used, .. } => {
                assert_eq!(frame::decode(&out[..used]), Ok(Some((HEADER_LEN, used))));
                out[HEADER_LEN..used].to_vec()
            }
            Sealed::Drop(why) => panic!("not sealed: {why:?}"),
        }
    }

    /// Opens `message`; for a frame, returns it too.
    fn open(receiver: &mut Receiver, message: &[u8]) -> (Opened, Vec<u8>) {
        let mut out = vec![0xeeu8; OPEN_ROOM];
        let opened = receiver.open(message, &mut out);
        let frame = match opened {
            Opened::Frame { len, .. } => out[..len].to_vec(),
            _ => Vec::new(),
        };
        (opened, frame)
    }

    /// The responder's key confirmation (a keepalive at its nonce 0), as
    /// after a handshake.
    fn confirm(init: &mut Channel, resp: &mut Channel) {
        let mut out = [0u8; 64];
        let transport = resp.sender.transport.clone();
        let mut sender =
            Channel::resume(transport, 0, 0, Framing::Plain, vnet::Kind::Ethernet).sender;
        let used = sender.keepalive(&mut out);
        let (opened, _) = open(&mut init.receiver, &out[HEADER_LEN..used]);
        assert_eq!(opened, Opened::Keepalive);
    }

    #[test]
    fn frames_cross_both_ways_with_every_framing_and_cipher() {
        let header = vnet::Header::default().encode();
        for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
            for framing in [Framing::Plain, Framing::Gso] {
                let (mut a, mut b) = channels(cipher, framing, framing);
                confirm(&mut a, &mut b);
                for size in [1, 60, 1514, MAX_FRAME] {
                    let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
                    let packet = match framing {
                        Framing::Gso => [&header[..], &body].concat(),
                        _ => body,
                    };
                    for a_to_b in [true, false] {
                        let (from, to) = if a_to_b {
                            (&mut a.sender, &mut b.receiver)
                        } else {
                            (&mut b.sender, &mut a.receiver)
                        };
                        let message = seal(from, &packet);
                        let (opened, got) = open(to, &message);
                        assert_eq!(
                            opened,
                            Opened::Frame {
                                len: packet.len(),
                                bytes: size
                            },
                            "{cipher:?} {framing:?} {size}"
                        );
                        assert_eq!(got, packet);
                    }
                }
            }
        }
    }

    #[test]
    fn strip_removes_the_header_on_the_way_out_and_adds_a_zero_one_on_the_way_in() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Strip, Framing::Plain);
        confirm(&mut a, &mut b);
        let (partial, full) = vnet::udp_frame(b"checksum me");
        let h = vnet::Header {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..vnet::Header::default()
        };
        let message = seal(&mut a.sender, &[&h.encode()[..], &partial].concat());
        let (opened, got) = open(&mut b.receiver, &message);
        assert_eq!(
            opened,
            Opened::Frame {
                len: full.len(),
                bytes: full.len()
            }
        );
        assert_eq!(got, full, "the checksum completed, the header gone");

        let message = seal(&mut b.sender, b"plain frame");
        let (opened, got) = open(&mut a.receiver, &message);
        assert_eq!(
            opened,
            Opened::Frame {
                len: vnet::HDR_LEN + 11,
                bytes: 11
            }
        );
        assert_eq!(got[..vnet::HDR_LEN], [0u8; vnet::HDR_LEN]);
        assert_eq!(&got[vnet::HDR_LEN..], b"plain frame");
    }

    #[test]
    fn strip_drops_a_super_frame_without_taking_a_nonce() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Strip, Framing::Plain);
        confirm(&mut a, &mut b);
        let mut big = vnet::tcp_super_frame(vnet::Kind::Ethernet, false, 0, 20000);
        let mut out = vec![0u8; frame::MAX_WIRE];
        assert_eq!(
            a.sender.seal(&mut big, &mut out),
            Sealed::Drop(Unsent::Offload(Reject::SuperFrame))
        );
        let mut short = [0u8; 4];
        assert_eq!(
            a.sender.seal(&mut short, &mut out),
            Sealed::Drop(Unsent::Offload(Reject::Short))
        );
        let message = seal(
            &mut a.sender,
            &[&[0u8; vnet::HDR_LEN][..], b"next"].concat(),
        );
        assert_eq!(open(&mut b.receiver, &message).1, b"next");
    }

    #[test]
    fn a_frame_that_does_not_fit_is_dropped_without_taking_a_nonce() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Plain, Framing::Plain);
        confirm(&mut a, &mut b);
        let mut out = vec![0u8; frame::MAX_WIRE];
        let mut huge = vec![1u8; MAX_FRAME + vnet::HDR_LEN + 1];
        assert_eq!(
            a.sender.seal(&mut huge, &mut out),
            Sealed::Drop(Unsent::Oversize)
        );
        let mut small = out.clone();
        assert_eq!(
            a.sender.seal(&mut [1u8; 100], &mut small[..100]),
            Sealed::Drop(Unsent::Oversize),
            "no room in the output"
        );
        assert_eq!(a.sender.keepalive(&mut out[..HEADER_LEN + TAG_LEN - 1]), 0);
        let message = seal(&mut a.sender, b"next");
        assert_eq!(open(&mut b.receiver, &message).1, b"next");
    }

    #[test]
    fn keepalive_is_an_empty_message_and_takes_a_nonce() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Gso, Framing::Gso);
        confirm(&mut a, &mut b);
        let mut out = [0u8; 64];
        let used = a.sender.keepalive(&mut out);
        assert_eq!(used, HEADER_LEN + TAG_LEN);
        assert_eq!(out[..HEADER_LEN], [0, TAG_LEN as u8]);
        let (opened, _) = open(&mut b.receiver, &out[HEADER_LEN..used]);
        assert_eq!(opened, Opened::Keepalive);
        let message = seal(&mut a.sender, &[0u8; vnet::HDR_LEN + 1]);
        assert!(matches!(
            open(&mut b.receiver, &message).0,
            Opened::Frame { len: 11, bytes: 1 }
        ));
    }

    #[test]
    fn tampered_short_and_replayed_messages_are_fatal() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Plain, Framing::Plain);
        confirm(&mut a, &mut b);
        let first = seal(&mut a.sender, b"first");
        assert_eq!(open(&mut b.receiver, &first).1, b"first");
        assert_eq!(
            open(&mut b.receiver, &first).0,
            Opened::Fatal(Fatal::Undecryptable(1)),
            "replayed"
        );
        let mut second = seal(&mut a.sender, b"second");
        second[3] ^= 1;
        assert_eq!(
            open(&mut b.receiver, &second).0,
            Opened::Fatal(Fatal::Undecryptable(1)),
            "tampered"
        );
        assert_eq!(
            open(&mut b.receiver, &second[..TAG_LEN - 1]).0,
            Opened::Fatal(Fatal::Short(TAG_LEN - 1))
        );
        let skipped = seal(&mut a.sender, b"third");
        assert_eq!(
            open(&mut b.receiver, &skipped).0,
            Opened::Fatal(Fatal::Undecryptable(1)),
            "out of order"
        );
        let mut out = [0u8; 100];
        assert_eq!(
            b.receiver.open(&first, &mut out[..3]),
            Opened::Fatal(Fatal::Undecryptable(1)),
            "no room"
        );
    }

    #[test]
    fn invalid_virtio_header_is_dropped_and_the_next_frame_still_opens() {
        let (mut a, mut b) = channels(Cipher::ChaChaPoly, Framing::Gso, Framing::Gso);
        confirm(&mut a, &mut b);
        let mut bad = vnet::tcp_super_frame(vnet::Kind::Ethernet, false, 0, 3000);
        bad[1] = 3;
        let message = seal(&mut a.sender, &bad);
        assert!(matches!(
            open(&mut b.receiver, &message).0,
            Opened::Drop(Reject::Invalid(_))
        ));
        let good = vnet::tcp_super_frame(vnet::Kind::Ethernet, false, 0, 3000);
        let message = seal(&mut a.sender, &good);
        assert_eq!(open(&mut b.receiver, &message).1, good);
    }
}
