//! Why a read or a write on the stream failed, in the few terms the
//! handshake and the relay act on. One classification for both, so that a
//! stop, a peer that left and a deadline mean the same before and after key
//! confirmation. Depends on nothing else in the crate.

use std::io;

/// The error a stream's read or write carries when one of its stops is set.
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

impl Stopped {
    /// The `io::Error` a stopped read or write returns.
    pub fn error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, Stopped)
    }
}

/// How a stream read or write failed. A clean end between messages is no
/// error (`Ok(None)` from the frame reader): callers treat it as `Closed`.
pub enum StreamEnd {
    /// One of our stops was set: not the peer's doing.
    Stopped,
    /// The peer closed or reset the connection, or the pipe broke.
    Closed,
    /// A deadline, or the idle or stall limit, passed: the error says which.
    TimedOut(io::Error),
    /// The framing broke: a zero length, or the end inside a message.
    Malformed(io::Error),
    /// Anything else.
    Other(io::Error),
}

impl From<io::Error> for StreamEnd {
    fn from(e: io::Error) -> StreamEnd {
        // First: a stop carries ConnectionAborted, which is also a disconnect.
        if e.get_ref().is_some_and(|inner| inner.is::<Stopped>()) {
            return StreamEnd::Stopped;
        }
        match e.kind() {
            io::ErrorKind::TimedOut => StreamEnd::TimedOut(e),
            io::ErrorKind::InvalidData => StreamEnd::Malformed(e),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => StreamEnd::Closed,
            _ => StreamEnd::Other(e),
        }
    }
}
