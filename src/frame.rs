//! The length-prefix codec that carries every message on the stream.
//!
//! ```text
//!  0       1       2                              2+L
//! +-------+-------+------------- ... -------------+
//! |   L (u16, BE) |   L bytes: one Noise message  |
//! +-------+-------+------------- ... -------------+
//!          1 <= L <= 65535 (Noise's own message limit)
//! ```
//!
//! Handshake and transport messages alike travel this way. L = 0 is a
//! protocol error. The end of the stream at a message boundary is a clean
//! close; in the middle of a message it is an error. Reading goes through one
//! large buffer allocated once, so that a burst of messages costs one read.
//! Every writer of the prefix goes through [`encode`] or, to seal a frame in
//! place, [`encode_with`].

use std::fmt;
use std::io::{self, Read};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 2;
/// The largest message: Noise's limit, and the largest u16.
pub const MAX_MESSAGE: usize = 65535;
/// The largest message with its prefix.
pub const MAX_WIRE: usize = HEADER_LEN + MAX_MESSAGE;
/// Default size of the read buffer: room for several full-size messages.
pub const READ_BUFFER: usize = 4 * MAX_WIRE;

/// Why a byte sequence is not a valid run of messages.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix of 0.
    ZeroLength,
    /// The stream ended inside a message.
    Truncated { have: usize, need: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ZeroLength => f.write_str("a message with length 0"),
            FrameError::Truncated { have, need } => write!(
                f,
                "the stream ended inside a message ({have} of {need} bytes)"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks for one complete message at the start of `buf`.
///
/// Returns `Ok(Some((start, end)))`, the message's range in `buf` (the next
/// message begins at `end`), or `Ok(None)` when more bytes are needed.
///
/// # Errors
/// `ZeroLength` when the prefix is 0.
pub fn decode(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let end = HEADER_LEN + len;
    Ok((buf.len() >= end).then_some((HEADER_LEN, end)))
}

/// Appends one message to `out` as it goes on the wire: its prefix, then
/// its bytes (1..=65535 of them).
pub fn encode(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&header(msg.len()));
    out.extend_from_slice(msg);
}

/// Writes one message into `out` in place, behind its prefix: `body` writes
/// the message into `out[HEADER_LEN..]` and returns its length
/// (1..=65535), so that a frame is sealed straight into the output buffer
/// with no copy. Returns the bytes used, prefix included.
///
/// # Errors
/// `body`'s error; then the prefix is not written.
pub fn encode_with<E>(
    out: &mut [u8],
    body: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<usize, E> {
    let (prefix, rest) = out.split_at_mut(HEADER_LEN);
    let len = body(rest)?;
    prefix.copy_from_slice(&header(len));
    Ok(HEADER_LEN + len)
}

/// The prefix for a message of `len` bytes.
fn header(len: usize) -> [u8; HEADER_LEN] {
    debug_assert!((1..=MAX_MESSAGE).contains(&len));
    // The callers' buffers cap len at MAX_MESSAGE, so the cast cannot wrap.
    (len as u16).to_be_bytes()
}

/// Reads messages from a byte stream through one buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// End of the bytes read so far.
    end: usize,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader::with_capacity(inner, READ_BUFFER)
    }

    /// A reader with a buffer of `capacity` bytes (at least one full message).
    pub fn with_capacity(inner: R, capacity: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: vec![0u8; capacity.max(MAX_WIRE)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Enlarges the buffer to `capacity` bytes, keeping what it holds: a
    /// handshake needs little, an established session reads in bulk.
    pub fn grow(&mut self, capacity: usize) {
        if capacity <= self.buf.len() {
            return;
        }
        let mut buf = vec![0u8; capacity].into_boxed_slice();
        let held = self.end - self.start;
        buf[..held].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = buf;
        self.start = 0;
        self.end = held;
    }

    /// Whether it holds no bytes of a message.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The buffer, when it holds nothing, so that an idle session can give
    /// its pages back.
    pub fn idle_buffer(&mut self) -> Option<&mut [u8]> {
        if !self.is_empty() {
            return None;
        }
        (self.start, self.end) = (0, 0);
        Some(&mut self.buf)
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next message, or `None` when the stream ended cleanly between
    /// messages.
    ///
    /// # Errors
    /// The inner reader's errors, and `InvalidData` wrapping a [`FrameError`]
    /// for a zero length or a stream that ends inside a message.
    pub fn next_message(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            match decode(&self.buf[self.start..self.end]) {
                Ok(Some((from, to))) => {
                    let (from, to) = (self.start + from, self.start + to);
                    self.start = to;
                    return Ok(Some(&self.buf[from..to]));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.read_more()? == 0 {
                let have = self.end - self.start;
                if have == 0 {
                    return Ok(None);
                }
                let need = match self.buf.get(self.start..self.start + HEADER_LEN) {
                    Some(p) => HEADER_LEN + usize::from(u16::from_be_bytes([p[0], p[1]])),
                    None => HEADER_LEN,
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    FrameError::Truncated { have, need },
                ));
            }
        }
    }

    /// The bytes held of the next message, once its length prefix is in:
    /// at least [`HEADER_LEN`] bytes, fewer only when the stream ended first
    /// (then possibly none). Reads only while the prefix is incomplete and
    /// consumes nothing, so that a caller can judge a length before waiting
    /// for that many bytes.
    ///
    /// # Errors
    /// The inner reader's errors.
    pub fn fill_prefix(&mut self) -> io::Result<&[u8]> {
        while self.end - self.start < HEADER_LEN {
            if self.read_more()? == 0 {
                break;
            }
        }
        Ok(&self.buf[self.start..self.end])
    }

    /// One read into the buffer; 0 at the end of the stream.
    fn read_more(&mut self) -> io::Result<usize> {
        // Move a partial message to the front when it might not fit behind;
        // a full message always fits the buffer.
        if self.buf.len() - self.start < MAX_WIRE {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            encode(m, &mut out);
        }
        out
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn decodes_messages_split_at_every_byte() {
        let big = vec![0xabu8; MAX_MESSAGE];
        let wire = encode_all(&[b"a", &big, b"xyz", &big]);
        for step in [1, 2, 3, 1000, MAX_WIRE + 7] {
            let mut r = FrameReader::with_capacity(Trickle { data: &wire, step }, MAX_WIRE);
            assert_eq!(r.next_message().unwrap().unwrap(), b"a");
            assert_eq!(r.next_message().unwrap().unwrap().len(), MAX_MESSAGE);
            assert_eq!(r.next_message().unwrap().unwrap(), b"xyz");
            assert_eq!(r.next_message().unwrap().unwrap(), &big[..]);
            assert!(r.next_message().unwrap().is_none());
        }
    }

    #[test]
    fn growing_keeps_buffered_messages() {
        let wire = encode_all(&[b"one", b"two", b"three"]);
        let mut r = FrameReader::with_capacity(&wire[..], MAX_WIRE);
        assert_eq!(r.next_message().unwrap().unwrap(), b"one");
        r.grow(READ_BUFFER);
        assert_eq!(r.next_message().unwrap().unwrap(), b"two");
        assert_eq!(r.next_message().unwrap().unwrap(), b"three");
        assert!(r.next_message().unwrap().is_none());
    }

    #[test]
    fn rejects_zero_length_frame() {
        let wire = [0u8, 0, 1, 2];
        let mut r = FrameReader::new(&wire[..]);
        let err = r.next_message().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(decode(&wire), Err(FrameError::ZeroLength));
    }

    #[test]
    fn eof_inside_the_prefix_is_an_error() {
        let mut r = FrameReader::new(&[0u8][..]);
        assert_eq!(
            r.next_message().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn eof_inside_the_body_is_an_error() {
        let mut wire = encode_all(&[b"hello"]);
        wire.pop();
        let mut r = FrameReader::new(&wire[..]);
        let err = r.next_message().unwrap_err();
        assert!(err.to_string().contains("6 of 7"), "{err}");
    }

    #[test]
    fn eof_at_a_boundary_is_clean() {
        let mut r = FrameReader::new(&[][..]);
        assert!(r.next_message().unwrap().is_none());
    }

    #[test]
    fn fill_prefix_reads_only_until_the_prefix_is_in_and_consumes_nothing() {
        let wire = encode_all(&[b"hello", b"x"]);
        let mut r = FrameReader::with_capacity(
            Trickle {
                data: &wire,
                step: 1,
            },
            MAX_WIRE,
        );
        assert_eq!(r.fill_prefix().unwrap(), &wire[..HEADER_LEN]);
        assert_eq!(r.fill_prefix().unwrap(), &wire[..HEADER_LEN]);
        assert_eq!(r.next_message().unwrap().unwrap(), b"hello");
        assert_eq!(r.fill_prefix().unwrap(), &wire[7..9]);
        assert_eq!(r.next_message().unwrap().unwrap(), b"x");
        assert!(r.fill_prefix().unwrap().is_empty(), "the end of the stream");
        assert!(r.next_message().unwrap().is_none());

        let mut r = FrameReader::new(&[7u8][..]);
        assert_eq!(r.fill_prefix().unwrap(), &[7]);
        assert_eq!(
            r.next_message().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn encode_and_encode_with_write_the_same_bytes() {
        let mut appended = vec![9];
        encode(b"abc", &mut appended);
        assert_eq!(appended, [9, 0, 3, b'a', b'b', b'c']);
        let mut out = [0u8; 8];
        let used = encode_with(&mut out, |body| {
            body[..3].copy_from_slice(b"abc");
            Ok::<_, ()>(3)
        });
        assert_eq!(used, Ok(5));
        assert_eq!(out[..5], appended[1..]);
        let mut out = [7u8; 4];
        assert_eq!(encode_with(&mut out, |_| Err("no")), Err("no"));
        assert_eq!(out, [7; 4], "no prefix without a message");
    }

    #[test]
    fn largest_length_is_accepted() {
        assert_eq!(header(MAX_MESSAGE), [0xff, 0xff]);
        let mut wire = vec![0xff, 0xff];
        wire.resize(MAX_WIRE, 9);
        assert_eq!(decode(&wire), Ok(Some((2, MAX_WIRE))));
        assert_eq!(decode(&wire[..MAX_WIRE - 1]), Ok(None));
    }
}
