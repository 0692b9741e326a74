//! The one owner of sessions: the handshake in our role, then for each
//! authenticated session its start on a peer's endpoint, the hooks, the
//! relay with its keepalive rules, its replacement by a newer session, its
//! end and the log lines. The client loop, -i and the server's accept loop
//! bring the streams; everything after the stream happens here.
//!
//! - [`Owner`] is what every session of the process shares: the shutdown,
//!   the process's counters and the [`Timing`]. [`Peer`] is one local
//!   endpoint with what its sessions use (the identity they must prove, our
//!   hello, the hooks, its counters): one per process point to point, one
//!   per listed peer in a hub. Peers are generic over the [`PacketDevice`],
//!   so tests run them over datagram sockets.
//! - At most one session is attached to a peer's endpoint: [`Owner::keep`]
//!   stops and joins the current one before a newer one attaches. The new
//!   one relays at once; the old one's down hook and then the new one's up
//!   hook run on a thread alongside it.
//! - Every lifecycle duration is counted in protocol seconds through
//!   [`Timing`] (1 s in production, a few ms in tests): the keepalive
//!   interval from the hellos, dead after [`DEAD_AFTER_INTERVALS`], the
//!   client's backoff and stable session, the initiator's deadlines.
//!
//! Threads per session: the session's own (the caller's, for -c and -i),
//! one per relay direction, and one for the hooks while they run; while no
//! session is attached, the endpoint's drain.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use crate::device::PacketDevice;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::handshake::{Established, FLAG_GSO, HandshakeError, Hello, Identity};
use crate::hooks::{self, HOOK_LIMIT, HookEnv};
use crate::relay::{self, Channel, Counters, End, Framing};
use crate::sys::Stop;
use crate::transport::{Closer, Framed, Stream};

/// How many keepalive intervals of silence make a peer dead.
pub const DEAD_AFTER_INTERVALS: u32 = 3;

/// The length of one protocol second. Threads wait in poll(2) with real
/// deadlines, so tests shorten time by scaling it rather than faking it.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub second: Duration,
}

impl Timing {
    pub const REAL: Timing = Timing {
        second: Duration::from_secs(1),
    };

    /// `d` of protocol time, in this clock's time.
    pub fn of(self, d: Duration) -> Duration {
        self.second.mul_f64(d.as_secs_f64())
    }
}

/// What every session of the process shares.
pub struct Owner {
    /// Set by SIGINT or SIGTERM: every loop watches it.
    pub shutdown: Arc<Stop>,
    /// The process's counters: handshake failures, and everything else
    /// when the one peer shares them (point to point).
    pub counters: Arc<Counters>,
    pub timing: Timing,
}

/// What a peer's sessions use besides its device: each session takes a copy
/// when it starts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our hello, from the device's layer and MTU and our keepalive.
    pub hello: Hello,
    /// -u, or the peer's up= in a hub.
    pub up: Option<String>,
    /// -D, or the peer's down=.
    pub down: Option<String>,
}

/// One local endpoint and what its sessions use.
pub struct Peer<D: PacketDevice> {
    /// The hub's name for the peer (its peers-file line); `None` point to
    /// point.
    pub name: Option<String>,
    /// Our key and the peer's, which its sessions must prove.
    pub identity: Identity,
    /// What this peer's sessions count (the owner's own point to point).
    pub counters: Arc<Counters>,
    pub endpoint: Endpoint<D>,
    /// What its next session uses (a hub's reload may change it).
    settings: RwLock<Settings>,
    /// The up hook's latest failure, so that one repeated at every
    /// reconnect is logged as an error once.
    pub up_failures: hooks::Repeats,
}

impl<D: PacketDevice> Peer<D> {
    /// `device` as an endpoint (drained until a session attaches), with
    /// our hello for it; its sessions count in `counters`.
    pub fn new(device: D, identity: Identity, keepalive: u8, counters: Arc<Counters>) -> Peer<D> {
        let mut hello = Hello::new(device.layer(), device.mtu());
        hello.keepalive = keepalive;
        if device.vnet_hdr() {
            hello.flags |= FLAG_GSO;
        }
        Peer {
            name: None,
            identity,
            endpoint: Endpoint::new(device, counters.clone()),
            counters,
            settings: RwLock::new(Settings {
                hello,
                up: None,
                down: None,
            }),
            up_failures: Default::default(),
        }
    }

    /// What the next session uses.
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Our hello for the next session.
    pub fn hello(&self) -> Hello {
        self.settings().hello
    }

    /// Sets the hooks and our keepalive for the sessions that start from now.
    pub fn set(&self, up: Option<String>, down: Option<String>, keepalive: u8) {
        let mut settings = self.settings.write().unwrap_or_else(|p| p.into_inner());
        settings.up = up;
        settings.down = down;
        settings.hello.keepalive = keepalive;
    }
}

/// An authenticated stream that has not relayed yet: the handshake's keys
/// ([`Established`]) with the stream they belong to.
pub struct Session {
    pub peer: String,
    pub keys: Established,
    pub framed: Framed,
    pub closer: Closer,
    /// This session's own stop (the reader and writer already watch it).
    pub stop: Arc<Stop>,
}

/// The hooks of a session that no longer relays: its up hook may still be
/// running and its down hook is still to run ([`Owner::finish_hooks`]).
pub struct SessionHooks<'scope> {
    env: HookEnv,
    down: Option<String>,
    /// The hook thread; it says whether the down hook is to run.
    up: Option<ScopedJoinHandle<'scope, bool>>,
}

/// What [`Owner::keep`] hears about.
pub enum Event {
    /// A peer authenticated.
    Ready(Box<Session>),
    /// The session numbered so ended by itself.
    Ended(u64),
    /// The stream source stopped.
    Shutdown,
}

impl Owner {
    /// Runs our side of the handshake on `stream`: `role` is
    /// [`crate::handshake::initiate`] or [`crate::handshake::respond`] with their
    /// arguments, given the stream split (both halves watching the session's
    /// stop and the process's shutdown).
    ///
    /// # Errors
    /// `Error::Handshake` (exit 3, or 1 for a peer that is not taptun), or
    /// `Error::CommandExited` when a -x command ended first (exit 1).
    /// `Ok(None)` when a signal stopped it, or a responder's `progress`
    /// declined to confirm.
    pub fn handshake(
        &self,
        stream: Stream,
        role: impl FnOnce(&mut Framed) -> Result<Established, HandshakeError>,
    ) -> Result<Option<Session>, Error> {
        let stop = Arc::new(Stop::new().map_err(|e| Error::io("cannot create an eventfd", e))?);
        let peer = stream.peer.clone();
        let (mut framed, mut closer) = stream
            .split(&[self.shutdown.clone(), stop.clone()])
            .map_err(|e| Error::io(format!("{peer}: cannot set up the stream"), e))?;
        // A stream that ended or failed is blamed on a -x command that
        // exited (its status says more than a guess about the peer).
        let cause = match role(&mut framed) {
            Ok(keys) => {
                framed.reader.grow(crate::frame::READ_BUFFER);
                return Ok(Some(Session {
                    peer,
                    keys,
                    framed,
                    closer,
                    stop,
                }));
            }
            Err(cause) => cause,
        };
        let exited = match cause {
            HandshakeError::Closed(_) | HandshakeError::Io(_) | HandshakeError::Timeout(_) => {
                closer.command_exit()
            }
            _ => None,
        };
        closer.abort();
        closer.finish();
        if let HandshakeError::Stopped = cause {
            return Ok(None);
        }
        Counters::add(&self.counters.handshake_failures, 1);
        match exited {
            Some(exited) => {
                log::debug!("{peer}: handshake failed: {cause}");
                Err(exited)
            }
            None => Err(Error::Handshake {
                peer,
                cause: Box::new(cause),
            }),
        }
    }

    /// Runs a session on `to` to its end: the relay, with the up hook
    /// alongside, then the down hook.
    pub fn run<'s, D: PacketDevice>(
        &'s self,
        to: &'s Peer<D>,
        session: Session,
        scope: &'s Scope<'s, '_>,
    ) -> End {
        let (end, hooks) = self.run_session(to, session, scope, None);
        self.finish_hooks(hooks);
        end
    }

    /// Relays a session on `to` until it ends while its hooks run on a
    /// thread alongside: first `before` is waited for (the down hook of the
    /// session this one replaced), then the up hook. The relay starts at
    /// once, so that a slow hook holds up neither the peer's frames nor our
    /// keepalives (frames may reach the device before the up hook is done);
    /// an up hook that fails stops the session. The hooks are left running
    /// or to run: hand them to [`Owner::finish_hooks`].
    pub fn run_session<'s, D: PacketDevice>(
        &'s self,
        to: &'s Peer<D>,
        session: Session,
        scope: &'s Scope<'s, '_>,
        before: Option<ScopedJoinHandle<'s, ()>>,
    ) -> (End, SessionHooks<'s>) {
        let device = to.endpoint.device();
        let settings = to.settings();
        let env = HookEnv {
            device: device.name().to_owned(),
            layer: device.layer(),
            mtu: device.mtu(),
            peer: session.peer.clone(),
            peer_key: session.keys.peer_key,
            peer_name: to.name.clone(),
        };
        // Held while the relay runs: the carrier is on and the drain stopped
        // before the up hook and the relay start, and back after the relay
        // stopped.
        let attached = to.endpoint.attach();
        to.counters.session_up(&session.peer);
        let failure = Arc::new(Mutex::new(None));
        let up = (before.is_some() || settings.up.is_some()).then(|| {
            let (env, stop, failure) = (env.clone(), session.stop.clone(), failure.clone());
            let hook = settings.up.clone();
            scope.spawn(move || self.up_hook(to, hook, before, &env, &stop, &failure))
        });
        let mut end = self.relay(to, &settings.hello, session);
        drop(attached);
        let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (End::Stopped, Some(why)) = (&end, failed) {
            end = End::HookFailed(why);
        }
        to.counters.session_down(&end);
        let down = settings.down;
        (end, SessionHooks { env, down, up })
    }

    /// The hook thread of a session: waits for `before`, runs the up hook,
    /// and stops the session when it fails. Says whether the down hook is to
    /// run: not after a failed up hook, nor for a session that was replaced
    /// before its up hook could start.
    fn up_hook<D: PacketDevice>(
        &self,
        to: &Peer<D>,
        up: Option<String>,
        before: Option<ScopedJoinHandle<'_, ()>>,
        env: &HookEnv,
        stop: &Stop,
        failure: &Mutex<Option<String>>,
    ) -> bool {
        if let Some(before) = before {
            let _ = before.join();
        }
        let Some(up) = &up else {
            return true;
        };
        if stop.is_set() {
            return false;
        }
        let echo = to.up_failures.echo_level();
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
                let failures = to.up_failures.succeeded();
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
                let (level, what) = match to.up_failures.failed(&why) {
                    hooks::Failure::New { previous: 0 } => (log::Level::Error, why.clone()),
                    hooks::Failure::New { previous } => (
                        log::Level::Error,
                        format!("{why} (the failure before failed {previous} times in a row)"),
                    ),
                    hooks::Failure::Repeat { count, remind } => (
                        if remind {
                            log::Level::Warn
                        } else {
                            log::Level::Debug
                        },
                        format!("the same failure, {count} times in a row: {why}"),
                    ),
                };
                log::log!(level, "{}: closing the session: {what}", env.peer);
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
        if let (true, Some(down)) = (down_due, &hooks.down) {
            let ran = hooks::run(
                "down",
                down,
                &hooks.env,
                HOOK_LIMIT,
                &self.shutdown,
                hooks::DOWN_LIMIT_ON_STOP,
                log::Level::Info,
            );
            if let Err(why) = ran {
                log::error!("{why}");
            }
        }
    }

    /// Relays a session until it ends, and logs both ends.
    fn relay<D: PacketDevice>(&self, to: &Peer<D>, ours: &Hello, session: Session) -> End {
        let Session {
            peer,
            keys,
            mut framed,
            closer,
            stop,
        } = session;
        let device = to.endpoint.device();
        let peer_hello = keys.peer_hello;
        let framing = framing(to, ours, &peer, &peer_hello);
        Counters::add(&to.counters.sessions, 1);
        log::info!(
            "session with {peer} established on {} (peer key {}, peer keepalive {} s, {})",
            device.name(),
            keys.peer_key,
            peer_hello.keepalive,
            match framing {
                Framing::Gso => "GSO super-frames",
                Framing::Plain | Framing::Strip => "plain frames",
            }
        );
        if peer_hello.mtu != 0 && u32::from(peer_hello.mtu) != device.mtu() {
            log::warn!(
                "{peer}: the peer's device MTU is {}, ours ({}) is {}: frames larger than the smaller MTU will be dropped",
                peer_hello.mtu,
                device.name(),
                device.mtu()
            );
        }
        // Dead when nothing arrives for 3 x the peer's interval (never if it
        // announced none), or nothing can be written for 3 x ours.
        let interval = |secs: u8| (secs > 0).then(|| self.timing.second * u32::from(secs));
        let ours = interval(ours.keepalive);
        framed
            .reader
            .get_mut()
            .set_idle_limit(interval(peer_hello.keepalive).map(|d| d * DEAD_AFTER_INTERVALS));
        framed
            .writer
            .set_stall_limit(ours.map(|d| d * DEAD_AFTER_INTERVALS));
        let channel = Channel::new(keys, framing, device.vnet_kind());
        let before = to.counters.snapshot();
        let end = relay::relay(device, framed, &closer, channel, ours, &stop, &to.counters);
        closer.finish();
        if framing == Framing::Gso {
            // Until the next session says otherwise: the device is drained
            // meanwhile, and may outlive us if we are killed.
            if let Err(e) = device.set_offloads(false) {
                log::warn!("cannot turn the offloads of {} off: {e}", device.name());
            }
        }
        let traffic = to.counters.snapshot().since(&before);
        match &end {
            End::Dead(_) | End::StreamError(_) | End::Protocol(_) | End::DeviceError(_) => {
                log::warn!("session with {peer} ended: {end} ({traffic})")
            }
            _ => log::info!("session with {peer} ended: {end} ({traffic})"),
        }
        end
    }

    /// Keeps one session at a time on `to`: a [`Event::Ready`] session
    /// replaces the current one, which is stopped and joined first. The
    /// hooks run on threads of their own, in order (a session's down hook
    /// before the next one's up hook), while the sessions relay. Returns on
    /// [`Event::Shutdown`] once the last session and its hooks are done.
    pub fn keep<D: PacketDevice>(
        &self,
        to: &Peer<D>,
        inbox: mpsc::Receiver<Event>,
        events: mpsc::Sender<Event>,
    ) {
        /// The current session, run in its own thread, which hands the
        /// session's hooks back when it ends.
        struct Current<'scope> {
            id: u64,
            peer: String,
            stop: Arc<Stop>,
            thread: ScopedJoinHandle<'scope, SessionHooks<'scope>>,
        }
        impl<'scope> Current<'scope> {
            /// Joins the session (stopping it first when `stop`), and runs
            /// its remaining hooks on a thread of their own.
            fn end(
                self,
                stop: bool,
                owner: &'scope Owner,
                scope: &'scope Scope<'scope, '_>,
            ) -> Option<ScopedJoinHandle<'scope, ()>> {
                if stop {
                    self.stop.trigger();
                }
                let hooks = self.thread.join().ok()?;
                Some(scope.spawn(move || owner.finish_hooks(hooks)))
            }
        }
        std::thread::scope(|scope| {
            let mut current: Option<Current> = None;
            // The hooks of the latest session that ended, until the next
            // one takes them to wait for.
            let mut finishing: Option<ScopedJoinHandle<()>> = None;
            let mut next_id: u64 = 0;
            for event in inbox.iter() {
                match event {
                    Event::Ready(session) => {
                        if let Some(old) = current.take() {
                            log::info!("{} replaces {} as the peer", session.peer, old.peer);
                            finishing = old.end(true, self, scope);
                        }
                        next_id += 1;
                        let (id, peer, stop) =
                            (next_id, session.peer.clone(), session.stop.clone());
                        let events = events.clone();
                        let before = finishing.take();
                        let thread = scope.spawn(move || {
                            let (_, hooks) = self.run_session(to, *session, scope, before);
                            let _ = events.send(Event::Ended(id));
                            hooks
                        });
                        current = Some(Current {
                            id,
                            peer,
                            stop,
                            thread,
                        });
                    }
                    Event::Ended(id) => {
                        if let Some(done) = current.take_if(|c| c.id == id) {
                            finishing = done.end(false, self, scope);
                        }
                    }
                    Event::Shutdown => break,
                }
            }
            if let Some(old) = current.take() {
                finishing = old.end(true, self, scope);
            }
            if let Some(finishing) = finishing {
                let _ = finishing.join();
            }
        });
    }
}

/// GSO super-frames when both hellos offer them; the device's offloads
/// follow, so that a peer without GSO only gets complete frames (the few
/// queued before the switch are handled by [`Framing::Strip`]).
fn framing<D: PacketDevice>(to: &Peer<D>, ours: &Hello, peer: &str, peer_hello: &Hello) -> Framing {
    let device = to.endpoint.device();
    if !device.vnet_hdr() {
        return Framing::Plain;
    }
    let gso = ours.flags & peer_hello.flags & FLAG_GSO != 0;
    if let Err(e) = device.set_offloads(gso) {
        // Super-frames from the peer still work; ours stay plain (or, when
        // the offloads stay on, Strip drops the super-frames, counted).
        log::warn!(
            "{peer}: cannot turn the offloads of {} {}: {e}",
            device.name(),
            if gso { "on" } else { "off" }
        );
    }
    if gso { Framing::Gso } else { Framing::Strip }
}

/// The process outcome of a session's end, for -c --once and -i.
///
/// # Errors
/// Stream, protocol, hook and device failures (exit 1).
pub fn outcome(peer: &str, end: End, device: &str) -> Result<(), Error> {
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
            name: device.to_owned(),
            what: "read failed",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    //! The owner without root: datagram sockets as devices, Unix stream
    //! pairs as streams, the far end driven by the real handshake and relay,
    //! and a scaled [`Timing`].
    use super::*;
    use std::time::Instant;

    use crate::handshake;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use crate::client::{self, Connect};
    use crate::handshake::{Cipher, ReplayCache};
    use crate::keys::PrivateKey;

    /// A datagram socket as a device, whose carrier is a flag.
    struct FakeDevice {
        socket: UnixDatagram,
        carrier: Arc<AtomicBool>,
    }

    impl PacketDevice for FakeDevice {
        fn raw_fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
        fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.socket.recv(buf)
        }
        fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
            self.socket.send(packet)
        }
        fn set_carrier(&self, on: bool) {
            self.carrier.store(on, Ordering::SeqCst);
        }
    }

    /// A fake device, the kernel's side of it, and its carrier.
    fn device() -> (FakeDevice, UnixDatagram, Arc<AtomicBool>) {
        let (socket, outside) = UnixDatagram::pair().unwrap();
        socket.set_nonblocking(true).unwrap();
        outside
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let carrier = Arc::new(AtomicBool::new(false));
        let device = FakeDevice {
            socket,
            carrier: carrier.clone(),
        };
        (device, outside, carrier)
    }

    fn key(byte: u8) -> PrivateKey {
        PrivateKey::from_bytes([byte; 32])
    }

    /// Our end's owner (key 1, the far end has key 2) with one protocol
    /// second lasting `second`.
    fn owner(second: Duration) -> Owner {
        Owner {
            shutdown: Arc::new(Stop::new().unwrap()),
            counters: Default::default(),
            timing: Timing { second },
        }
    }

    /// Our peer on a fake device, sending keepalives every `keepalive`
    /// protocol seconds; the device's outside and carrier.
    fn peer(owner: &Owner, keepalive: u8) -> (Peer<FakeDevice>, UnixDatagram, Arc<AtomicBool>) {
        let (device, outside, carrier) = device();
        let identity = Identity::new(key(1), key(2).public_key(), Cipher::ChaChaPoly).unwrap();
        let counters = owner.counters.clone();
        (
            Peer::new(device, identity, keepalive, counters),
            outside,
            carrier,
        )
    }

    /// How the far end behaves after its handshake.
    #[derive(Clone, Copy)]
    enum After {
        /// Relays over its own fake device, without keepalives.
        Relay,
        /// Sends nothing and reads nothing until stopped.
        Silent,
        /// Closes the stream after this long.
        Closes(Duration),
    }

    /// The other end of one stream: its device's outside, its counters, and
    /// its stop; the thread returns when it ended.
    struct Far {
        outside: UnixDatagram,
        counters: Arc<Counters>,
        stop: Arc<Stop>,
        thread: JoinHandle<Instant>,
    }

    /// A stream pair: ours, and the far end (key 2) running the real
    /// handshake in the other role (`initiates`) and then `after`, with
    /// `keepalive` in its hello.
    fn far_end(initiates: bool, keepalive: u8, after: After) -> (Stream, Far) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (device, outside, _) = device();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(Stop::new().unwrap());
        let (thread_counters, thread_stop) = (counters.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let identity = Identity::new(key(2), key(1).public_key(), Cipher::ChaChaPoly).unwrap();
            let mut hello = Hello::new(device.layer(), device.mtu());
            hello.keepalive = keepalive;
            let stream = Stream::socket(theirs.into(), "far".into()).unwrap();
            let (mut framed, closer) = stream.split(std::slice::from_ref(&thread_stop)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let keys = match initiates {
                true => handshake::initiate(&mut framed, &identity, hello, deadline),
                false => handshake::respond(
                    &mut framed,
                    &identity,
                    hello,
                    Instant::now(),
                    &ReplayCache::default(),
                    &(),
                ),
            };
            let Ok(keys) = keys else {
                return Instant::now();
            };
            match after {
                After::Relay => {
                    let channel = Channel::new(keys, Framing::Plain, device.vnet_kind());
                    relay::relay(
                        &device,
                        framed,
                        &closer,
                        channel,
                        None,
                        &thread_stop,
                        &thread_counters,
                    );
                }
                After::Silent => {
                    let _ =
                        crate::sys::wait_readable(thread_stop.raw_fd(), crate::sys::NO_STOPS, None);
                }
                After::Closes(after) => {
                    let _ = crate::sys::wait_readable(
                        thread_stop.raw_fd(),
                        crate::sys::NO_STOPS,
                        Some(Instant::now() + after),
                    );
                    closer.abort();
                }
            }
            Instant::now()
        });
        let stream = Stream::socket(ours.into(), "far".into()).unwrap();
        (
            stream,
            Far {
                outside,
                counters,
                stop,
                thread,
            },
        )
    }

    /// A handshake deadline no test should reach.
    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// Polls `done` until it holds or 5 s have passed.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Ends whatever a failed assertion leaves running, so that the scope
    /// can join its threads and the test fails instead of hanging.
    struct StopOnDrop<'a>(&'a Stop, Option<mpsc::Sender<Event>>);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.trigger();
            if let Some(events) = &self.1 {
                let _ = events.send(Event::Shutdown);
            }
        }
    }

    /// A file the hooks append lines to, removed on drop.
    struct HookLog(PathBuf);

    impl HookLog {
        fn new(name: &str) -> HookLog {
            let path = std::env::temp_dir().join(format!("taptun-{name}-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            HookLog(path)
        }
        /// Hooks that append "up PEER" and "down PEER".
        fn hooks<D: PacketDevice>(&self, peer: &mut Peer<D>) {
            let path = self.0.display();
            let up = Some(format!("echo up $TAPTUN_PEER >> {path}"));
            let down = Some(format!("echo down $TAPTUN_PEER >> {path}"));
            peer.set(up, down, peer.hello().keepalive);
        }
        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.0)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl Drop for HookLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn frames_are_drained_and_counted_while_no_session_is_attached() {
        let counters = Arc::new(Counters::default());
        let (device, outside, carrier) = device();
        let endpoint = Endpoint::new(device, counters.clone());
        let dropped = || counters.dropped_no_session.load(Ordering::Relaxed);
        for _ in 0..3 {
            outside.send(b"early").unwrap();
        }
        wait_for("3 drained frames", || dropped() == 3);
        let attached = endpoint.attach();
        assert!(carrier.load(Ordering::SeqCst), "carrier off while attached");
        // Attached: the session's, not the drain's.
        outside.send(b"for the session").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(dropped(), 3);
        let mut buf = [0u8; 64];
        let n = endpoint.device().recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"for the session");
        drop(attached);
        assert!(
            !carrier.load(Ordering::SeqCst),
            "carrier on after detaching"
        );
        outside.send(b"late").unwrap();
        wait_for("a frame drained after detaching", || dropped() == 4);
    }

    #[test]
    fn keepalives_are_sent_while_idle() {
        let owner = owner(Duration::from_millis(10));
        let (peer, _outside, _) = peer(&owner, 1);
        let (stream, far) = far_end(false, 0, After::Relay);
        std::thread::scope(|scope| {
            let started = Instant::now();
            let session = owner
                .handshake(stream, |io| {
                    handshake::initiate(io, &peer.identity, peer.hello(), deadline())
                })
                .unwrap()
                .unwrap();
            let _stop = StopOnDrop(&owner.shutdown, None);
            let relay = scope.spawn(|| owner.run(&peer, session, scope));
            let received = || far.counters.keepalives_in.load(Ordering::Relaxed);
            wait_for("3 keepalives", || received() >= 3);
            // No earlier than one interval apart.
            assert!(started.elapsed() >= Duration::from_millis(30));
            owner.shutdown.trigger();
            assert!(matches!(relay.join().unwrap(), End::Stopped));
        });
        assert!(owner.counters.keepalives_out.load(Ordering::Relaxed) >= 3);
        far.thread.join().unwrap();
    }

    #[test]
    fn a_silent_peer_is_dead_after_three_of_its_intervals() {
        let owner = owner(Duration::from_millis(20));
        let (peer, _outside, _) = peer(&owner, 0);
        let (stream, far) = far_end(false, 1, After::Silent);
        let session = owner
            .handshake(stream, |io| {
                handshake::initiate(io, &peer.identity, peer.hello(), deadline())
            })
            .unwrap()
            .unwrap();
        let started = Instant::now();
        let end = std::thread::scope(|scope| owner.run(&peer, session, scope));
        let took = started.elapsed();
        assert!(matches!(end, End::Dead(_)), "{end}");
        assert!(took >= Duration::from_millis(60), "dead after {took:?}");
        assert!(
            took < Duration::from_millis(600),
            "dead only after {took:?}"
        );
        far.stop.trigger();
        far.thread.join().unwrap();
    }

    /// Fails `failures` times, then connects to a far end that keeps the
    /// session for `hold`, then fails once more, then stops the client.
    struct Flaky<'a> {
        owner: &'a Owner,
        failures: usize,
        hold: Duration,
        attempts: Mutex<Vec<Instant>>,
        far: Mutex<Option<Far>>,
    }

    impl Connect for Flaky<'_> {
        fn connect(&self, _: &Stop, _: Timing) -> Result<Option<(Stream, Instant)>, Error> {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(Instant::now());
            let refused = || Error::io("test", std::io::ErrorKind::ConnectionRefused.into());
            match attempts.len() {
                n if n <= self.failures || n == self.failures + 2 => Err(refused()),
                n if n == self.failures + 1 => {
                    let (stream, far) = far_end(false, 0, After::Closes(self.hold));
                    *self.far.lock().unwrap() = Some(far);
                    Ok(Some((stream, Instant::now() + Duration::from_secs(5))))
                }
                _ => {
                    self.owner.shutdown.trigger();
                    Ok(None)
                }
            }
        }
    }

    #[test]
    fn the_client_backs_off_and_resets_after_a_stable_session() {
        // 10 ms: the reset's bound (15 protocol seconds) must absorb the
        // scheduling delays of a loaded machine (4 ms once saw 78 ms).
        let second = Duration::from_millis(10);
        let owner = owner(second);
        let (peer, _outside, _) = peer(&owner, 0);
        let dialer = Flaky {
            owner: &owner,
            failures: 5,
            // 60 protocol seconds are stable.
            hold: second * 75,
            attempts: Mutex::default(),
            far: Mutex::default(),
        };
        client::run(&owner, &peer, &dialer, false).unwrap();
        let attempts = dialer.attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 8);
        // 1, 2, 4, 8, 16 protocol seconds, less up to 25% of jitter.
        for (i, step) in [1, 2, 4, 8, 16].into_iter().enumerate() {
            let gap = attempts[i + 1] - attempts[i];
            assert!(gap >= second * step * 3 / 4, "gap {i} is {gap:?}");
        }
        let far = dialer.far.lock().unwrap().take().unwrap();
        let closed = far.thread.join().unwrap();
        // Reset: 1 protocol second, where the next step was 30 (at least
        // 22.5 with jitter).
        let after = attempts[6] - closed;
        assert!(after < second * 15, "{after:?} after a stable session");
        let gap = attempts[7] - attempts[6];
        assert!(gap >= second * 2 * 3 / 4, "then {gap:?}");
    }

    /// Connects to a far end that never answers.
    struct Mute(Mutex<Option<UnixStream>>);

    impl Connect for Mute {
        fn connect(&self, _: &Stop, timing: Timing) -> Result<Option<(Stream, Instant)>, Error> {
            let (ours, theirs) = UnixStream::pair().unwrap();
            *self.0.lock().unwrap() = Some(theirs);
            let stream = Stream::socket(ours.into(), "mute".into()).unwrap();
            Ok(Some((
                stream,
                Instant::now() + timing.of(Duration::from_secs(10)),
            )))
        }
    }

    #[test]
    fn shutdown_ends_a_handshake_at_once() {
        let owner = owner(Duration::from_secs(1));
        let (peer, _outside, _) = peer(&owner, 0);
        let mute = Mute(Mutex::default());
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                owner.shutdown.trigger();
            });
            client::run(&owner, &peer, &mute, false).unwrap();
        });
        // The handshake's deadline is 10 s away.
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(mute.0.lock().unwrap().is_some());
    }

    #[test]
    fn shutdown_ends_a_relay_at_once_and_runs_the_down_hook() {
        let owner = owner(Duration::from_secs(1));
        let (mut peer, _outside, carrier) = peer(&owner, 0);
        let log = HookLog::new("shutdown-relay");
        log.hooks(&mut peer);
        let dialer = Flaky {
            owner: &owner,
            failures: 0,
            hold: Duration::from_secs(60),
            attempts: Mutex::default(),
            far: Mutex::default(),
        };
        std::thread::scope(|scope| {
            let _stop = StopOnDrop(&owner.shutdown, None);
            let client = scope.spawn(|| client::run(&owner, &peer, &dialer, false));
            wait_for("the up hook", || log.lines() == ["up far"]);
            assert!(carrier.load(Ordering::SeqCst));
            let stopped = Instant::now();
            owner.shutdown.trigger();
            client.join().unwrap().unwrap();
            assert!(stopped.elapsed() < Duration::from_secs(2));
        });
        assert_eq!(log.lines(), ["up far", "down far"]);
        assert!(!carrier.load(Ordering::SeqCst));
        let far = dialer.far.lock().unwrap().take().unwrap();
        far.stop.trigger();
        far.thread.join().unwrap();
    }

    /// A session from a far end that initiates, as the server gets it.
    fn accepted(owner: &Owner, peer: &Peer<FakeDevice>, name: &str) -> (Session, Far) {
        let (mut stream, far) = far_end(true, 0, After::Relay);
        stream.peer = name.into();
        let replays = ReplayCache::default();
        let session = owner
            .handshake(stream, |io| {
                handshake::respond(
                    io,
                    &peer.identity,
                    peer.hello(),
                    Instant::now(),
                    &replays,
                    &(),
                )
            })
            .unwrap()
            .unwrap();
        (session, far)
    }

    #[test]
    fn a_newer_session_replaces_the_current_one_and_hooks_run_in_order() {
        let owner = owner(Duration::from_secs(1));
        let (mut peer, outside, carrier) = peer(&owner, 0);
        let log = HookLog::new("replace");
        log.hooks(&mut peer);
        let (events, inbox) = mpsc::channel();
        std::thread::scope(|scope| {
            let keeper_events = events.clone();
            let _stop = StopOnDrop(&owner.shutdown, Some(events.clone()));
            let keeper = scope.spawn(|| owner.keep(&peer, inbox, keeper_events));
            let (first, far_a) = accepted(&owner, &peer, "a");
            events.send(Event::Ready(Box::new(first))).unwrap();
            wait_for("a's up hook", || log.lines() == ["up a"]);
            let (second, far_b) = accepted(&owner, &peer, "b");
            events.send(Event::Ready(Box::new(second))).unwrap();
            wait_for("b's up hook", || log.lines().len() == 3);
            assert_eq!(log.lines(), ["up a", "down a", "up b"]);
            assert!(carrier.load(Ordering::SeqCst));
            // The old far end saw its stream close; frames go to the new one.
            far_a.thread.join().unwrap();
            outside.send(b"to b").unwrap();
            let mut buf = [0u8; 64];
            let n = far_b.outside.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"to b");
            events.send(Event::Shutdown).unwrap();
            keeper.join().unwrap();
            far_b.stop.trigger();
            far_b.thread.join().unwrap();
        });
        assert_eq!(log.lines(), ["up a", "down a", "up b", "down b"]);
        assert!(!carrier.load(Ordering::SeqCst));
        assert_eq!(owner.counters.sessions.load(Ordering::Relaxed), 2);
    }
}
