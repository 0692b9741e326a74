//! The standalone server (-s): accepts connections, runs their handshakes
//! concurrently, and keeps one session at a time.
//!
//! - At most [`MAX_PENDING`] handshakes run at once; when one more arrives,
//!   the oldest pending one is closed to make room, and the accept loop waits
//!   until its thread has exited, so there are never more than 64 handshake
//!   threads. Each is bounded by the handshake deadlines (3 s to message 1,
//!   10 s in all) and its buffers (a 64 KiB read buffer and a 64 KiB message
//!   buffer).
//! - A connection that fails its handshake never disturbs the current
//!   session; it logs one line with its address and the reason.
//! - A newly authenticated peer replaces the current session: the old one is
//!   stopped and joined before the new one starts reading the device. The
//!   new one relays at once; the old one's down hook and then the new one's
//!   up hook run alongside it.
//! - SIGINT or SIGTERM stops the accept loop and the current session.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use crate::error::Error;
use crate::handshake::ReplayCache;
use crate::relay::Drain;
use crate::session::{Ready, SessionHooks, Tunnel};
use crate::transport::{self, Stream};

/// Handshakes in progress at most.
pub const MAX_PENDING: usize = 64;

/// What the session manager hears about.
enum Event {
    /// A peer authenticated.
    Ready(Box<Ready>),
    /// The session numbered so ended by itself.
    Ended(u64),
    /// The accept loop stopped.
    Shutdown,
}

/// Handshakes in progress, oldest first, each with a handle to abort it.
#[derive(Default)]
struct Pending {
    list: Mutex<VecDeque<(u64, SocketAddr, TcpStream)>>,
    /// Handshake threads alive, the evicted ones that have not yet
    /// noticed included: the accept loop waits while there are too many.
    live: Mutex<usize>,
    freed: Condvar,
}

/// Counts a handshake thread while it lives.
struct Live<'a>(&'a Pending);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        let mut live = self.0.live.lock().unwrap_or_else(|p| p.into_inner());
        *live -= 1;
        self.0.freed.notify_one();
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, SocketAddr, TcpStream)>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a handshake; closes the oldest if there are too many.
    fn add(&self, id: u64, addr: SocketAddr, abort: TcpStream) {
        let mut list = self.lock();
        if list.len() >= MAX_PENDING {
            if let Some((_, old_addr, old)) = list.pop_front() {
                log::info!("{old_addr}: closed: {MAX_PENDING} handshakes already in progress");
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
        }
        list.push_back((id, addr, abort));
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _, _)| *i != id);
    }

    /// Waits until fewer than MAX_PENDING handshake threads live (evicted
    /// ones exit as soon as they see their socket shut), then counts one
    /// more. `None` when the server is stopping.
    fn room(&self, shutdown: &crate::sys::Stop) -> Option<Live<'_>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        while *live >= MAX_PENDING {
            if shutdown.is_set() {
                return None;
            }
            live = self
                .freed
                .wait_timeout(live, std::time::Duration::from_millis(100))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *live += 1;
        Some(Live(self))
    }
}

/// Serves until SIGINT or SIGTERM.
///
/// # Errors
/// Only a failing listening socket; handshake and session failures are
/// logged and the server goes on.
pub fn serve(tunnel: &Tunnel, listener: TcpListener) -> Result<(), Error> {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    log::info!("listening on {local}, device {}", tunnel.device.name());
    let replays = ReplayCache::default();
    let pending = Pending::default();
    let (events, inbox) = mpsc::channel::<Event>();
    thread::scope(|scope| {
        let manager_events = events.clone();
        scope.spawn(move || manage(tunnel, inbox, manager_events));
        let result = accept_loop(tunnel, &listener, &replays, &pending, &events, scope);
        // Wake any handshake still waiting; they all end within the deadline anyway.
        for (_, _, conn) in pending.lock().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        let _ = events.send(Event::Shutdown);
        result
    })
}

fn accept_loop<'scope>(
    tunnel: &'scope Tunnel,
    listener: &TcpListener,
    replays: &'scope ReplayCache,
    pending: &'scope Pending,
    events: &mpsc::Sender<Event>,
    scope: &'scope thread::Scope<'scope, '_>,
) -> Result<(), Error> {
    let mut next_id: u64 = 0;
    loop {
        let (conn, addr) = match transport::accept(listener, &[&tunnel.shutdown]) {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return Ok(()),
            // Out of descriptors or memory, or the peer gave up already:
            // refuse this one and go on.
            Err(e) if is_transient(&e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(Error::io("accept failed", e)),
        };
        let accepted = Instant::now();
        // The dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        next_id += 1;
        let id = next_id;
        let Ok(abort) = conn.try_clone() else {
            log::warn!("{addr}: cannot duplicate the connection; closed");
            continue;
        };
        pending.add(id, addr, abort);
        let Some(live) = pending.room(&tunnel.shutdown) else {
            return Ok(());
        };
        let events = events.clone();
        scope.spawn(move || {
            let _live = live;
            let peer = addr.to_string();
            let outcome = Stream::tcp(conn, peer.clone())
                .and_then(|stream| tunnel.respond(stream, accepted, replays));
            pending.remove(id);
            match outcome {
                Ok(Some(ready)) => {
                    let _ = events.send(Event::Ready(Box::new(ready)));
                }
                Ok(None) => {}
                Err(e) => log::info!("{e}"),
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EPERM
                | libc::EPROTO
        )
    )
}

/// The current session, run in its own thread, which hands the device's
/// drain and the session's hooks back when it ends.
struct Current<'scope> {
    id: u64,
    peer: String,
    stop: Arc<crate::sys::Stop>,
    thread: thread::ScopedJoinHandle<'scope, Ended<'scope>>,
}

/// What a session thread hands back.
type Ended<'scope> = (Option<Drain<'scope>>, Option<SessionHooks<'scope>>);

impl<'scope> Current<'scope> {
    /// Triggering the stop ends the reader and the writer; the relay joins
    /// both. The session's hooks are left to the caller.
    fn stop_and_join(self) -> Ended<'scope> {
        self.stop.trigger();
        self.thread.join().unwrap_or((None, None))
    }
}

/// Keeps one session at a time: a new one replaces the current one. While
/// none is up, the device is drained. The hooks run on threads of their own,
/// in order (a session's down hook before the next one's up hook), while
/// the sessions relay.
fn manage(tunnel: &Tunnel, inbox: mpsc::Receiver<Event>, events: mpsc::Sender<Event>) {
    thread::scope(|scope| {
        let mut drain = tunnel.drain(scope);
        let mut current: Option<Current> = None;
        // The hooks of the latest session that ended, until the next one
        // takes them to wait for.
        let mut finishing: Option<thread::ScopedJoinHandle<()>> = None;
        let mut next_id: u64 = 0;
        for event in inbox.iter() {
            match event {
                Event::Ready(ready) => {
                    if let Some(old) = current.take() {
                        log::info!("{} replaces {} as the peer", ready.peer, old.peer);
                        let (old_drain, hooks) = old.stop_and_join();
                        drain = old_drain;
                        finishing = finish(tunnel, scope, hooks);
                    }
                    next_id += 1;
                    let (id, peer, stop) = (next_id, ready.peer.clone(), ready.stop.clone());
                    let events = events.clone();
                    let mut session_drain = drain.take();
                    let before = finishing.take();
                    let thread = scope.spawn(move || {
                        let (_, hooks) =
                            tunnel.run_session(*ready, &mut session_drain, scope, before);
                        let _ = events.send(Event::Ended(id));
                        (session_drain, Some(hooks))
                    });
                    current = Some(Current {
                        id,
                        peer,
                        stop,
                        thread,
                    });
                }
                Event::Ended(id) => {
                    if current.as_ref().is_some_and(|c| c.id == id) {
                        if let Some(done) = current.take() {
                            let (done_drain, hooks) = done.thread.join().unwrap_or((None, None));
                            drain = done_drain;
                            finishing = finish(tunnel, scope, hooks);
                        }
                    }
                }
                Event::Shutdown => break,
            }
        }
        if let Some(old) = current.take() {
            let (old_drain, hooks) = old.stop_and_join();
            drain = old_drain;
            finishing = finish(tunnel, scope, hooks);
        }
        if let Some(finishing) = finishing {
            let _ = finishing.join();
        }
        if let Some(drain) = drain {
            drain.finish();
        }
    });
}

/// Runs a session's remaining hooks on a thread of their own.
fn finish<'scope>(
    tunnel: &'scope Tunnel,
    scope: &'scope thread::Scope<'scope, '_>,
    hooks: Option<SessionHooks<'scope>>,
) -> Option<thread::ScopedJoinHandle<'scope, ()>> {
    hooks.map(|hooks| scope.spawn(move || tunnel.finish_hooks(hooks)))
}
