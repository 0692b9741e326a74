//! The client (-c): dial or run the command, handshake, relay, and start
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
//! the process's.

use std::thread::Scope;
use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::error::Error;
use crate::handshake::{INITIATOR_COMMAND_DEADLINE, INITIATOR_DEADLINE};
use crate::relay::End;
use crate::session::{self, Ready, Tunnel};
use crate::sys::{self, Wait};
use crate::transport::{self, Stream};

/// The first retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session at least this long resets the backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before the next attempt: the current step with up to 25%
    /// taken off at random, so that clients restarted together spread out.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let mut random = [0u8; 2];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX),
            Err(_) => 0.5,
        };
        step.mul_f64(1.0 - 0.25 * fraction)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// How the client reaches the server.
pub struct Dialer<'a> {
    pub mode: &'a Mode,
    pub socket: &'a transport::SocketOptions,
    pub proxy_auth: Option<&'a crate::proxy::Credentials>,
}

impl Dialer<'_> {
    /// One attempt: connect (the -m hosts and their addresses raced) or
    /// start the command, then run the handshake. `Ok(None)` when a signal
    /// stopped it.
    fn attempt(&self, tunnel: &Tunnel) -> Result<Option<Ready>, Error> {
        match self.mode {
            Mode::Client { hosts, port, proxy } => {
                let deadline = Instant::now() + INITIATOR_DEADLINE;
                let stop = &tunnel.shutdown;
                let connected = match proxy {
                    Some(p) => crate::proxy::connect(
                        &p.proxy,
                        self.proxy_auth,
                        hosts,
                        *port,
                        self.socket,
                        deadline,
                        stop,
                    )?,
                    None => transport::connect(hosts, *port, self.socket, deadline, stop)?
                        .map(|(tcp, addr)| (tcp, addr.to_string())),
                };
                let Some((tcp, peer)) = connected else {
                    return Ok(None);
                };
                let stream = Stream::tcp(tcp, peer)?;
                tunnel.initiate(stream, Instant::now() + INITIATOR_DEADLINE)
            }
            Mode::Command { command } => {
                log::debug!("running `{command}`");
                let stream = Stream::command(command)?;
                tunnel.initiate(stream, Instant::now() + INITIATOR_COMMAND_DEADLINE)
            }
            Mode::Server { .. } | Mode::Inetd => {
                Err(Error::Usage("the client needs -m or -x".into()))
            }
        }
    }
}

/// Whether an error ends the client instead of a retry.
fn is_final(e: &Error) -> bool {
    match e {
        Error::Handshake { cause, .. } => cause.is_provable(),
        Error::Proxy { denied, .. } => *denied,
        Error::Usage(_) | Error::Secret { .. } | Error::KeyFile { .. } => true,
        _ => false,
    }
}

/// Runs the client until a signal, a final error, or (with `once`) the end
/// of the first attempt.
///
/// # Errors
/// With `once`: the attempt's failure. Without: only final errors.
pub fn run<'scope>(
    tunnel: &'scope Tunnel,
    dialer: &Dialer<'_>,
    once: bool,
    scope: &'scope Scope<'scope, '_>,
) -> Result<(), Error> {
    let mut drain = tunnel.drain(scope);
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match dialer.attempt(tunnel) {
            Ok(None) => return Ok(()),
            Ok(Some(ready)) => {
                let peer = ready.peer.clone();
                let end = tunnel.run(ready, &mut drain, scope);
                if once || matches!(end, End::Stopped) {
                    return session::outcome(&peer, end, &tunnel.device);
                }
                if started.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                }
            }
            Err(e) if once || is_final(&e) => return Err(e),
            Err(e) => log::error!("{e}"),
        }
        if tunnel.shutdown.is_set() {
            return Ok(());
        }
        let delay = backoff.next_delay();
        log::info!("reconnecting in {:.1} s", delay.as_secs_f64());
        match sys::wait_readable(
            tunnel.shutdown.raw_fd(),
            sys::NO_STOPS,
            Some(Instant::now() + delay),
        ) {
            Ok(Wait::TimedOut) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(Error::io("waiting to reconnect", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
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
