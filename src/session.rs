//! One tunnel session from stream to end: the handshake in our role, the
//! relay with its keepalive rules and the up hook running alongside it, the
//! down hook, and the log lines. Used by the client loop, by -i, and by the
//! server for each authenticated connection.
//!
//! While no session relays, the device's carrier is off (the kernel then
//! sends nothing into it) and a [`Drain`] reads and drops (counting) what it
//! sent before, so nothing queues up for a peer that is not there; the
//! device itself stays open for the life of the process, so addresses and
//! routes set on it survive a reconnect. The [`Counters`] keep whether a
//! session is up, for SIGUSR1.

use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crate::device::{Device, PacketDevice};
use crate::error::Error;
use crate::handshake::{
    self, Established, FLAG_GSO, HandshakeError, Hello, Identity, Progress, Replays,
};
use crate::hooks::{self, HOOK_LIMIT, HookEnv};
use crate::relay::{self, Channel, Counters, Drain, End, Framing};
use crate::sys::Stop;
use crate::transport::{Closer, Framed, Stream};

/// How many keepalive intervals of silence make a peer dead.
pub const DEAD_AFTER_INTERVALS: u32 = 3;

/// What every session of the process shares.
pub struct Tunnel {
    pub device: Device,
    pub identity: Identity,
    /// Our hello, from the device's layer and MTU and our keepalive.
    pub hello: Hello,
    /// Set by SIGINT or SIGTERM: every loop watches it.
    pub shutdown: Arc<Stop>,
    /// The process's counters (SIGUSR1 logs them).
    pub counters: Counters,
    /// -u
    pub up: Option<String>,
    /// -D
    pub down: Option<String>,
    /// The up hook's latest failure, so that one repeated at every
    /// reconnect is logged as an error once.
    pub up_failures: hooks::Repeats,
}

/// The hooks of a session that no longer relays: its up hook may still be
/// running and its down hook is still to run ([`Tunnel::finish_hooks`]).
pub struct SessionHooks<'scope> {
    env: HookEnv,
    /// The hook thread; it says whether the down hook is to run.
    up: Option<ScopedJoinHandle<'scope, bool>>,
}

/// A session whose handshake succeeded, ready to relay.
pub struct Ready {
    pub peer: String,
    pub established: Established,
    pub framed: Framed,
    pub closer: Closer,
    /// This session's own stop (the reader and writer already watch it).
    pub stop: Arc<Stop>,
}

impl Tunnel {
    /// A new session stop, and the stream split so that both halves watch
    /// that stop and the process's shutdown.
    fn split(&self, stream: Stream) -> Result<(String, Framed, Closer, Arc<Stop>), Error> {
        let stop = Arc::new(Stop::new().map_err(|e| Error::io("cannot create an eventfd", e))?);
        let peer = stream.peer.clone();
        let (framed, closer) = stream
            .split(&[self.shutdown.clone(), stop.clone()])
            .map_err(|e| Error::io(format!("{peer}: cannot set up the stream"), e))?;
        Ok((peer, framed, closer, stop))
    }

    /// Runs the initiator's handshake on `stream`.
    ///
    /// # Errors
    /// `Error::Handshake` (exit 3, or 1 for a peer that is not taptun), or
    /// `Error::CommandExited` when a -x command ended first (exit 1).
    /// `Ok(None)` when a signal stopped it.
    pub fn initiate(&self, stream: Stream, deadline: Instant) -> Result<Option<Ready>, Error> {
        let (peer, mut framed, closer, stop) = self.split(stream)?;
        let result = handshake::initiate(&mut framed, &self.identity, self.hello, deadline);
        self.ready(result, peer, framed, closer, stop)
    }

    /// Runs the responder's handshake on `stream`, accepted at `accepted`;
    /// `progress` as in [`handshake::respond`].
    ///
    /// # Errors
    /// `Error::Handshake` (exit 3, or 1 for a peer that is not taptun).
    /// `Ok(None)` when a signal stopped it, or `progress` declined to
    /// confirm.
    pub fn respond(
        &self,
        stream: Stream,
        accepted: Instant,
        replays: &dyn Replays,
        progress: &dyn Progress,
    ) -> Result<Option<Ready>, Error> {
        let (peer, mut framed, closer, stop) = self.split(stream)?;
        let result = handshake::respond(
            &mut framed,
            &self.identity,
            self.hello,
            accepted,
            replays,
            progress,
        );
        self.ready(result, peer, framed, closer, stop)
    }

    /// A finished handshake: ready to relay, or closed with the reason. A
    /// stream that ended or failed is blamed on a -x command that exited
    /// (its status says more than a guess about the peer).
    fn ready(
        &self,
        result: Result<Established, HandshakeError>,
        peer: String,
        mut framed: Framed,
        mut closer: Closer,
        stop: Arc<Stop>,
    ) -> Result<Option<Ready>, Error> {
        match result {
            Ok(established) => {
                framed.reader.grow(crate::frame::READ_BUFFER);
                Ok(Some(Ready {
                    peer,
                    established,
                    framed,
                    closer,
                    stop,
                }))
            }
            Err(cause) => {
                let exited = match cause {
                    HandshakeError::Closed(_)
                    | HandshakeError::Io(_)
                    | HandshakeError::Timeout(_) => closer.command_exit(),
                    _ => None,
                };
                closer.abort();
                closer.finish();
                match (cause, exited) {
                    (HandshakeError::Stopped, _) => Ok(None),
                    (cause, Some(exited)) => {
                        Counters::add(&self.counters.handshake_failures, 1);
                        log::debug!("{peer}: handshake failed: {cause}");
                        Err(exited)
                    }
                    (cause, None) => {
                        Counters::add(&self.counters.handshake_failures, 1);
                        Err(Error::Handshake {
                            peer,
                            cause: Box::new(cause),
                        })
                    }
                }
            }
        }
    }

    /// Reads and drops device frames until [`Drain::finish`]; `None` (with a
    /// warning) when no eventfd can be had: the kernel's queue then drops.
    pub fn drain<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>) -> Option<Drain<'scope>> {
        Drain::start(scope, &self.device, &self.counters)
            .inspect_err(|e| log::warn!("cannot drain the device while no session is up: {e}"))
            .ok()
    }

    /// Runs an established session to its end: the relay, with the up hook
    /// alongside, then the down hook. `drain` is taken while the session
    /// relays and restarted afterwards.
    pub fn run<'scope>(
        &'scope self,
        ready: Ready,
        drain: &mut Option<Drain<'scope>>,
        scope: &'scope Scope<'scope, '_>,
    ) -> End {
        let (end, hooks) = self.run_session(ready, drain, scope, None);
        self.finish_hooks(hooks);
        end
    }

    /// Relays an established session until it ends while its hooks run on a
    /// thread alongside: first `before` is waited for (the down hook of the
    /// session this one replaced), then the up hook. The relay starts at
    /// once, so that a slow hook holds up neither the peer's frames nor our
    /// keepalives (frames may reach the device before the up hook is done);
    /// an up hook that fails stops the session. The hooks are left running
    /// or to run: hand them to [`Tunnel::finish_hooks`].
    pub fn run_session<'scope>(
        &'scope self,
        ready: Ready,
        drain: &mut Option<Drain<'scope>>,
        scope: &'scope Scope<'scope, '_>,
        before: Option<ScopedJoinHandle<'scope, ()>>,
    ) -> (End, SessionHooks<'scope>) {
        let env = HookEnv {
            device: self.device.name().to_owned(),
            layer: self.device.layer(),
            mtu: self.device.mtu(),
            peer: ready.peer.clone(),
            peer_key: ready.established.peer_key,
        };
        if let Some(drain) = drain.take() {
            drain.finish();
        }
        // Before the up hook and the relay start, after the relay stopped:
        // the hook sees the link up, and the kernel only sends into the
        // device while a session reads it.
        self.device.set_carrier(true);
        self.counters.session_up(&ready.peer);
        let failure = Arc::new(Mutex::new(None));
        let up = (before.is_some() || self.up.is_some()).then(|| {
            let (env, stop, failure) = (env.clone(), ready.stop.clone(), failure.clone());
            scope.spawn(move || self.up_hook(before, &env, &stop, &failure))
        });
        let mut end = self.relay(ready);
        self.device.set_carrier(false);
        *drain = self.drain(scope);
        let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (End::Stopped, Some(why)) = (&end, failed) {
            end = End::HookFailed(why);
        }
        self.counters.session_down(&end);
        (end, SessionHooks { env, up })
    }

    /// The hook thread of a session: waits for `before`, runs the up hook,
    /// and stops the session when it fails. Says whether the down hook is to
    /// run: not after a failed up hook, nor for a session that was replaced
    /// before its up hook could start.
    fn up_hook(
        &self,
        before: Option<ScopedJoinHandle<'_, ()>>,
        env: &HookEnv,
        stop: &Stop,
        failure: &Mutex<Option<String>>,
    ) -> bool {
        if let Some(before) = before {
            let _ = before.join();
        }
        let Some(up) = &self.up else {
            return true;
        };
        if stop.is_set() {
            return false;
        }
        let echo = self.up_failures.echo_level();
        let ran = hooks::run(
            "up",
            up,
            env,
            HOOK_LIMIT,
            &self.shutdown,
            Duration::ZERO,
            echo,
        );
        match ran {
            Ok(()) => {
                let failures = self.up_failures.succeeded();
                if failures > 0 {
                    log::info!("up hook succeeded after {failures} failures in a row");
                }
                true
            }
            // SIGINT or SIGTERM: the down hook still runs.
            Err(why) if self.shutdown.is_set() => {
                log::info!("{why}");
                true
            }
            Err(why) => {
                let peer = &env.peer;
                match self.up_failures.failed(&why) {
                    hooks::Failure::New { previous: 0 } => {
                        log::error!("{peer}: closing the session: {why}");
                    }
                    hooks::Failure::New { previous } => log::error!(
                        "{peer}: closing the session: {why} (the failure before failed {previous} times in a row)"
                    ),
                    hooks::Failure::Repeat { count, remind } => log::log!(
                        if remind {
                            log::Level::Warn
                        } else {
                            log::Level::Debug
                        },
                        "{peer}: closing the session: the same failure, {count} times in a row: {why}"
                    ),
                }
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                stop.trigger();
                false
            }
        }
    }

    /// Waits for a session's up hook, then runs its down hook (within
    /// [`hooks::DOWN_LIMIT_ON_STOP`] once SIGINT or SIGTERM has arrived).
    pub fn finish_hooks(&self, hooks: SessionHooks<'_>) {
        let down_due = match hooks.up {
            Some(up) => up.join().unwrap_or(false),
            None => true,
        };
        if let (true, Some(down)) = (down_due, &self.down) {
            let after_stop = hooks::DOWN_LIMIT_ON_STOP;
            let ran = hooks::run(
                "down",
                down,
                &hooks.env,
                HOOK_LIMIT,
                &self.shutdown,
                after_stop,
                log::Level::Info,
            );
            if let Err(why) = ran {
                log::error!("{why}");
            }
        }
    }

    /// Relays an established session until it ends, and logs both ends.
    fn relay(&self, ready: Ready) -> End {
        let Ready {
            peer,
            established,
            mut framed,
            closer,
            stop,
        } = ready;
        let peer_hello = established.peer_hello;
        let framing = self.framing(&peer, &peer_hello);
        Counters::add(&self.counters.sessions, 1);
        log::info!(
            "session with {peer} established on {} (peer key {}, peer keepalive {} s, {})",
            self.device.name(),
            established.peer_key,
            peer_hello.keepalive,
            match framing {
                Framing::Gso => "GSO super-frames",
                Framing::Plain | Framing::Strip => "plain frames",
            }
        );
        if peer_hello.mtu != 0 && u32::from(peer_hello.mtu) != self.device.mtu() {
            log::warn!(
                "{peer}: the peer's device MTU is {}, ours ({}) is {}: frames larger than the smaller MTU will be dropped",
                peer_hello.mtu,
                self.device.name(),
                self.device.mtu()
            );
        }
        // Dead when nothing arrives for 3 x the peer's interval (never if it
        // announced none), or nothing can be written for 3 x ours.
        let interval = |secs: u8| (secs > 0).then(|| Duration::from_secs(u64::from(secs)));
        let ours = interval(self.hello.keepalive);
        framed
            .reader
            .get_mut()
            .set_idle_limit(interval(peer_hello.keepalive).map(|d| d * DEAD_AFTER_INTERVALS));
        framed
            .writer
            .set_stall_limit(ours.map(|d| d * DEAD_AFTER_INTERVALS));
        let channel = Channel::new(established, framing, self.device.vnet_kind());
        let before = self.counters.snapshot();
        let end = relay::relay(
            &self.device,
            framed,
            &closer,
            channel,
            ours,
            &stop,
            &self.counters,
        );
        closer.finish();
        if framing == Framing::Gso {
            // Until the next session says otherwise: the device is drained
            // meanwhile, and may outlive us if we are killed.
            if let Err(e) = self.device.set_offloads(false) {
                log::warn!(
                    "cannot turn the offloads of {} off: {e}",
                    self.device.name()
                );
            }
        }
        let traffic = self.counters.snapshot().since(&before);
        match &end {
            End::Dead(_) | End::StreamError(_) | End::Protocol(_) | End::DeviceError(_) => {
                log::warn!("session with {peer} ended: {end} ({traffic})")
            }
            _ => log::info!("session with {peer} ended: {end} ({traffic})"),
        }
        end
    }

    /// GSO super-frames when both hellos offer them; the device's offloads
    /// follow, so that a peer without GSO only gets complete frames (the few
    /// queued before the switch are handled by [`Framing::Strip`]).
    fn framing(&self, peer: &str, peer_hello: &Hello) -> Framing {
        if !self.device.gso() {
            return Framing::Plain;
        }
        let gso = self.hello.flags & peer_hello.flags & FLAG_GSO != 0;
        if let Err(e) = self.device.set_offloads(gso) {
            // Super-frames from the peer still work; ours stay plain (or, when
            // the offloads stay on, Strip drops the super-frames, counted).
            log::warn!(
                "{peer}: cannot turn the offloads of {} {}: {e}",
                self.device.name(),
                if gso { "on" } else { "off" }
            );
        }
        if gso { Framing::Gso } else { Framing::Strip }
    }
}

/// The process outcome of a session's end, for -c --once and -i.
///
/// # Errors
/// Stream, protocol, hook and device failures (exit 1).
pub fn outcome(peer: &str, end: End, device: &Device) -> Result<(), Error> {
    match end {
        End::PeerClosed | End::Stopped => Ok(()),
        End::StreamError(e) => Err(Error::io(format!("{peer}: connection failed"), e)),
        End::Protocol(what) => Err(Error::Protocol {
            peer: peer.to_owned(),
            what,
        }),
        End::Dead(why) => Err(Error::Protocol {
            peer: peer.to_owned(),
            what: format!("the peer is dead: {why}"),
        }),
        End::HookFailed(why) => Err(Error::Hook(why)),
        End::DeviceError(source) => Err(Error::Device {
            name: device.name().to_owned(),
            what: "read failed",
            source,
        }),
    }
}
