//! The client (-c): where its streams come from ([`Connect`]: TCP or a
//! command), and the loop that hands each to the session owner and starts
//! again after any failure except a usage error or an authentication
//! failure it can prove (the server's key is not the expected one, another
//! layer or version: exit 3).
//!
//! Retries back off exponentially from 1 s to 30 s, with jitter, and the
//! backoff is reset only after a session that lasted 60 s, so two clients
//! that share keys and keep replacing each other slow down instead of
//! fighting. HOST is resolved again on every attempt and -x runs its
//! command afresh. Several -m are tried in turn, the next one once the
//! previous one failed or stayed silent for 2 s, and the addresses of one
//! host race as Happy Eyeballs (see [`transport::connect`]); a signal stops
//! a lookup or a connect at once. A -x command that exits before the
//! handshake, and a server that is not taptun (its first bytes are no
//! message 2), are retried too: ssh may fail for a moment, and a server may
//! be being replaced. With -o/--once there is one attempt and its status is
//! the process's. Every duration here is in protocol seconds, through the
//! owner's [`Timing`].

use std::time::{Duration, Instant};

use crate::config::Dial;
use crate::device::PacketDevice;
use crate::error::Error;
use crate::handshake::{self, INITIATOR_COMMAND_DEADLINE, INITIATOR_DEADLINE};
use crate::relay::End;
use crate::session::{self, Owner, Peer, Timing};
use crate::sys::{self, Stop, Wait};
use crate::transport::{self, Stream};

/// The first retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session at least this long resets the backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter, in the owner's [`Timing`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    timing: Timing,
}

impl Backoff {
    pub fn new(timing: Timing) -> Backoff {
        Backoff {
            next: timing.of(BACKOFF_MIN),
            timing,
        }
    }

    /// The delay before the next attempt: the current step with up to 25%
    /// taken off at random, so that clients restarted together spread out.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.timing.of(BACKOFF_MAX));
        let mut random = [0u8; 2];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX),
            Err(_) => 0.5,
        };
        step.mul_f64(1.0 - 0.25 * fraction)
    }

    pub fn reset(&mut self) {
        self.next = self.timing.of(BACKOFF_MIN);
    }
}

/// Where a client's streams come from: [`Dialer`], or a test's sockets.
pub trait Connect {
    /// One attempt at a stream, with the deadline of its handshake.
    /// `Ok(None)` when `shutdown` stopped it.
    ///
    /// # Errors
    /// Why no stream could be had (retried unless [`is_final`]).
    fn connect(&self, shutdown: &Stop, timing: Timing) -> Result<Option<(Stream, Instant)>, Error>;
}

/// How the client reaches the server: TCP (the -m hosts and their
/// addresses raced) or a command.
pub struct Dialer<'a> {
    pub dial: &'a Dial,
    pub socket: &'a transport::SocketOptions,
    pub proxy_auth: Option<&'a crate::proxy::Credentials>,
}

impl Connect for Dialer<'_> {
    fn connect(&self, shutdown: &Stop, timing: Timing) -> Result<Option<(Stream, Instant)>, Error> {
        match self.dial {
            Dial::Tcp { hosts, port, proxy } => {
                let deadline = Instant::now() + timing.of(INITIATOR_DEADLINE);
                let connected = match proxy {
                    Some(p) => crate::proxy::connect(
                        &p.proxy,
                        self.proxy_auth,
                        hosts,
                        *port,
                        self.socket,
                        deadline,
                        shutdown,
                    )?,
                    None => transport::connect(hosts, *port, self.socket, deadline, shutdown)?
                        .map(|(tcp, addr)| (tcp, addr.to_string())),
                };
                let Some((tcp, peer)) = connected else {
                    return Ok(None);
                };
                let stream = Stream::tcp(tcp, peer)?;
                Ok(Some((
                    stream,
                    Instant::now() + timing.of(INITIATOR_DEADLINE),
                )))
            }
            Dial::Command(command) => {
                log::debug!("running `{command}`");
                let stream = Stream::command(command)?;
                let deadline = Instant::now() + timing.of(INITIATOR_COMMAND_DEADLINE);
                Ok(Some((stream, deadline)))
            }
        }
    }
}

/// Whether an error ends the client instead of a retry.
pub fn is_final(e: &Error) -> bool {
    match e {
        Error::Handshake { cause, .. } => cause.is_provable(),
        Error::Proxy { denied, .. } => *denied,
        Error::Usage(_) | Error::Secret { .. } | Error::KeyFile { .. } => true,
        _ => false,
    }
}

/// Runs the client on `to` until a signal, a final error, or (with `once`)
/// the end of the first attempt.
///
/// # Errors
/// With `once`: the attempt's failure. Without: only final errors.
pub fn run<D: PacketDevice>(
    owner: &Owner,
    to: &Peer<D>,
    source: &dyn Connect,
    once: bool,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(owner.timing);
    std::thread::scope(|scope| {
        loop {
            let started = Instant::now();
            let attempt = source
                .connect(&owner.shutdown, owner.timing)
                .and_then(|stream| match stream {
                    Some((stream, deadline)) => owner.handshake(stream, |io| {
                        handshake::initiate(io, &to.identity, to.hello(), deadline)
                    }),
                    None => Ok(None),
                });
            match attempt {
                Ok(None) => return Ok(()),
                Ok(Some(session)) => {
                    let peer = session.peer.clone();
                    let end = owner.run(to, session, scope);
                    if once || matches!(end, End::Stopped) {
                        return session::outcome(&peer, end, to.endpoint.device().name());
                    }
                    if started.elapsed() >= owner.timing.of(STABLE_SESSION) {
                        backoff.reset();
                    }
                }
                Err(e) if once || is_final(&e) => return Err(e),
                Err(e) => log::error!("{e}"),
            }
            if owner.shutdown.is_set() {
                return Ok(());
            }
            let delay = backoff.next_delay();
            // In protocol seconds, as the backoff counts.
            let secs = delay.as_secs_f64() / owner.timing.second.as_secs_f64();
            log::info!("reconnecting in {secs:.1} s");
            match sys::wait_readable(
                owner.shutdown.raw_fd(),
                sys::NO_STOPS,
                Some(Instant::now() + delay),
            ) {
                Ok(Wait::TimedOut) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(Error::io("waiting to reconnect", e)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Timing::REAL);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let steps = [1, 2, 4, 8, 16, 30, 30, 30];
        for (delay, step) in delays.iter().zip(steps) {
            let step = Duration::from_secs(step);
            assert!(
                *delay <= step && *delay >= step.mul_f64(0.75),
                "{delay:?} for step {step:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }
}
