//! One tunnel session from stream to end: the handshake in our role, then
//! the relay, then the log line and the outcome. Used directly by -c and -i,
//! and by the server for each authenticated connection.

use std::sync::Arc;
use std::time::Instant;

use crate::device::Device;
use crate::error::Error;
use crate::handshake::{self, Established, HandshakeError, Hello, Identity, ReplayCache};
use crate::relay::{self, Counters, End, Nonces};
use crate::sys::Stop;
use crate::transport::{Closer, Framed, Stream};

/// What every session of the process shares.
pub struct Tunnel {
    pub device: Device,
    pub identity: Identity,
    /// Our hello, from the device's layer and MTU.
    pub hello: Hello,
    /// Set by SIGINT or SIGTERM: every loop watches it.
    pub shutdown: Arc<Stop>,
}

/// A session whose handshake succeeded, ready to relay.
pub struct Ready {
    pub peer: String,
    pub established: Established,
    pub framed: Framed,
    pub closer: Closer,
    /// This session's own stop (the reader already watches it).
    pub stop: Arc<Stop>,
}

impl Tunnel {
    /// A new session stop, and the stream split so that its reader watches
    /// both that stop and the process's shutdown.
    ///
    /// # Errors
    /// When no eventfd can be had.
    pub fn split(&self, stream: Stream) -> Result<(String, Framed, Closer, Arc<Stop>), Error> {
        let stop = Arc::new(Stop::new().map_err(|e| Error::io("cannot create an eventfd", e))?);
        let peer = stream.peer.clone();
        let (framed, closer) = stream.split(&[self.shutdown.clone(), stop.clone()]);
        Ok((peer, framed, closer, stop))
    }

    /// Runs the initiator's handshake on `stream`.
    ///
    /// # Errors
    /// `Error::Handshake` (exit 3). `Ok(None)` when a signal stopped it.
    pub fn initiate(&self, stream: Stream, deadline: Instant) -> Result<Option<Ready>, Error> {
        let (peer, mut framed, closer, stop) = self.split(stream)?;
        let result = handshake::initiate(&mut framed, &self.identity, self.hello, deadline);
        ready(result, peer, framed, closer, stop)
    }

    /// Runs the responder's handshake on `stream`, accepted at `accepted`.
    ///
    /// # Errors
    /// `Error::Handshake` (exit 3). `Ok(None)` when a signal stopped it.
    pub fn respond(
        &self,
        stream: Stream,
        accepted: Instant,
        replays: &ReplayCache,
    ) -> Result<Option<Ready>, Error> {
        let (peer, mut framed, closer, stop) = self.split(stream)?;
        let result = handshake::respond(&mut framed, &self.identity, self.hello, accepted, replays);
        ready(result, peer, framed, closer, stop)
    }

    /// Relays an established session until it ends, and logs both ends.
    pub fn relay(&self, ready: Ready) -> End {
        let Ready {
            peer,
            established,
            framed,
            closer,
            stop,
        } = ready;
        let peer_hello = established.peer_hello;
        log::info!(
            "session with {peer} established on {} (peer key {})",
            self.device.name(),
            established.peer_key
        );
        if peer_hello.mtu != 0 && u32::from(peer_hello.mtu) != self.device.mtu() {
            log::warn!(
                "{peer}: the peer's device MTU is {}, ours ({}) is {}: frames larger than the smaller MTU will be dropped",
                peer_hello.mtu,
                self.device.name(),
                self.device.mtu()
            );
        }
        let counters = Counters::default();
        let nonces = Nonces {
            send: established.send_nonce,
            recv: established.recv_nonce,
        };
        let end = relay::relay(
            &self.device,
            framed,
            &closer,
            &established.transport,
            nonces,
            &stop,
            &counters,
        );
        closer.finish();
        log::info!("session with {peer} ended: {end} ({})", counters.summary());
        end
    }
}

/// A finished handshake: ready to relay, or closed with the reason.
fn ready(
    result: Result<Established, HandshakeError>,
    peer: String,
    framed: Framed,
    closer: Closer,
    stop: Arc<Stop>,
) -> Result<Option<Ready>, Error> {
    match result {
        Ok(established) => Ok(Some(Ready {
            peer,
            established,
            framed,
            closer,
            stop,
        })),
        Err(cause) => {
            closer.abort();
            closer.finish();
            match cause {
                HandshakeError::Stopped => Ok(None),
                cause => Err(Error::Handshake { peer, cause }),
            }
        }
    }
}

/// The process outcome of a session that was the only one (-c, -i).
///
/// # Errors
/// Stream, protocol and device failures (exit 1).
pub fn outcome(peer: &str, end: End, device: &Device) -> Result<(), Error> {
    match end {
        End::PeerClosed | End::Stopped => Ok(()),
        End::StreamError(e) => Err(Error::io(format!("{peer}: connection failed"), e)),
        End::Protocol(what) => Err(Error::Protocol {
            peer: peer.to_owned(),
            what,
        }),
        End::DeviceError(source) => Err(Error::Device {
            name: device.name().to_owned(),
            what: "read failed",
            source,
        }),
    }
}
