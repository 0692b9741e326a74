//! The standalone server (-s): accepts connections, runs their handshakes
//! concurrently, and hands each authenticated session to its peer: the one
//! peer of -r/-k, or in a hub ([`crate::hub`]) the listed peer whose psk
//! message 1 proved ([`Directory`]).
//!
//! - At most [`MAX_PENDING`] handshakes run at once; when one more arrives,
//!   the oldest pending one whose message 1 has not (yet) proved authentic is
//!   closed to make room, and the accept loop waits until its thread has
//!   exited, so there are never more than 64 handshake threads. A handshake
//!   whose message 1 was authentic (and fresh) is never closed to make room:
//!   keyless connections cannot starve a slow client, and when all 64 are
//!   authentic the newcomer is closed instead (each of them ends within 10 s).
//!   One peer holds at most [`MAX_AUTHENTIC_PER_PEER`] of them: a third
//!   closes its oldest, so that one key cannot hold every slot.
//!   Each handshake is bounded by the deadlines (3 s to message 1, 10 s in
//!   all) and its buffers (a 64 KiB read buffer and a 64 KiB message buffer).
//! - A handshake leaves the pending list, under its lock, before it sends key
//!   confirmation: one that succeeded cannot be closed to make room, and one
//!   closed to make room never sends confirmation nor replaces the session.
//! - A connection that fails its handshake never disturbs the current
//!   session; it logs one line with its address and the reason.
//! - A newly authenticated session replaces its peer's current one
//!   ([`Owner::keep`], on a thread of its own per peer).
//! - SIGINT or SIGTERM stops the accept loop and the current session.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Instant;

use crate::device::PacketDevice;
use crate::error::Error;
use crate::handshake::{self, Choose, HandshakeError, Hello, Identity, ReplayCache};
use crate::keys::PublicKey;
use crate::session::{Event, Owner, Peer, Session};
use crate::transport::{self, Stream};

/// Handshakes in progress at most.
pub const MAX_PENDING: usize = 64;
/// Handshakes in progress with an authentic message 1 from one peer.
pub const MAX_AUTHENTIC_PER_PEER: usize = 2;

/// Whom a server serves: the one peer of -r/-k ([`One`]), or a hub's
/// listed peers.
pub trait Directory: Choose<Choice: Send> + Sync {
    /// Whether to read a new connection at all (false: it is closed unread).
    fn admit(&self) -> bool {
        true
    }
    /// Hands an authenticated session to its peer's owner.
    fn deliver(&self, peer: Self::Choice, session: Session);
}

/// The one peer of a point-to-point server, whose sessions go to its
/// [`Owner::keep`].
pub struct One<'a, D: PacketDevice> {
    pub to: &'a Peer<D>,
    pub events: mpsc::Sender<Event>,
}

impl<'a, D: PacketDevice> Choose for One<'a, D> {
    type Choice = &'a Peer<D>;

    fn choose(&self, _: &[u8]) -> Result<&'a Peer<D>, HandshakeError> {
        Ok(self.to)
    }

    fn parts<'c>(&self, peer: &'c &'a Peer<D>) -> (&'c Identity, Hello) {
        (&peer.identity, peer.hello())
    }
}

impl<'a, D: PacketDevice> Directory for One<'a, D> {
    fn deliver(&self, _: &'a Peer<D>, session: Session) {
        let _ = self.events.send(Event::Ready(Box::new(session)));
    }
}

/// Handshakes in progress, oldest first, each with a handle to abort it.
#[derive(Default)]
struct Pending {
    list: Mutex<VecDeque<Entry>>,
    /// Handshake threads alive, the evicted ones that have not yet
    /// noticed included: the accept loop waits while there are too many.
    live: Mutex<usize>,
    freed: Condvar,
}

/// One handshake in progress.
struct Entry {
    id: u64,
    addr: SocketAddr,
    /// A clone of the connection, to shut it when it is evicted.
    abort: TcpStream,
    /// Its message 1 authenticated and was fresh (only the psk makes one),
    /// for the peer with this key.
    authentic: Option<PublicKey>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a handshake. When MAX_PENDING are in progress, closes the
    /// oldest whose message 1 has not proved authentic; when all have, the
    /// newcomer is refused instead (false).
    fn add(&self, id: u64, addr: SocketAddr, abort: TcpStream) -> bool {
        let mut list = self.lock();
        if list.len() >= MAX_PENDING {
            let Some(oldest) = list.iter().position(|e| e.authentic.is_none()) else {
                return false;
            };
            if let Some(old) = list.remove(oldest) {
                log::info!(
                    "{}: closed: {MAX_PENDING} handshakes already in progress",
                    old.addr
                );
                let _ = old.abort.shutdown(std::net::Shutdown::Both);
            }
        }
        list.push_back(Entry {
            id,
            addr,
            abort,
            authentic: None,
        });
        true
    }

    /// Marks a handshake whose message 1 proved authentic for `peer`; when
    /// that peer has more than [`MAX_AUTHENTIC_PER_PEER`] such handshakes,
    /// closes its oldest.
    fn authentic(&self, id: u64, peer: &PublicKey) {
        let mut list = self.lock();
        if let Some(entry) = list.iter_mut().find(|e| e.id == id) {
            entry.authentic = Some(*peer);
        }
        let of_peer = |e: &Entry| e.authentic.as_ref() == Some(peer);
        if list.iter().filter(|e| of_peer(e)).count() > MAX_AUTHENTIC_PER_PEER {
            if let Some(oldest) = list.iter().position(of_peer) {
                if let Some(old) = list.remove(oldest) {
                    log::info!(
                        "{}: closed: {MAX_AUTHENTIC_PER_PEER} newer handshakes of the same peer in progress",
                        old.addr
                    );
                    let _ = old.abort.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }

    /// Takes a handshake off the list for good, so that nothing can evict it
    /// any more; false when it was evicted already.
    fn claim(&self, id: u64) -> bool {
        let mut list = self.lock();
        let before = list.len();
        list.retain(|e| e.id != id);
        list.len() < before
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

/// Serves the one peer `to` until SIGINT or SIGTERM.
///
/// # Errors
/// Only a failing listening socket; handshake and session failures are
/// logged and the server goes on.
pub fn serve<D: PacketDevice>(
    owner: &Owner,
    to: &Peer<D>,
    listener: TcpListener,
) -> Result<(), Error> {
    let name = to.endpoint.device().name();
    let (events, inbox) = mpsc::channel::<Event>();
    thread::scope(|scope| {
        let manager_events = events.clone();
        scope.spawn(move || owner.keep(to, inbox, manager_events));
        let one = One {
            to,
            events: events.clone(),
        };
        let result = serve_directory(owner, &one, listener, name);
        let _ = events.send(Event::Shutdown);
        result
    })
}

/// Serves the peers of `directory` until SIGINT or SIGTERM; `what` is
/// what the start line says is ready.
///
/// # Errors
/// Only a failing listening socket; handshake and session failures are
/// logged and the server goes on.
pub fn serve_directory<R: Directory>(
    owner: &Owner,
    directory: &R,
    listener: TcpListener,
    what: &str,
) -> Result<(), Error> {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    log::info!("{what} ready; listening on {local}");
    let replays = ReplayCache::default();
    let pending = Pending::default();
    thread::scope(|scope| {
        let result = accept_loop(owner, directory, &listener, &replays, &pending, scope);
        // Wake any handshake still waiting; they all end within the deadline anyway.
        for entry in pending.lock().drain(..) {
            let _ = entry.abort.shutdown(std::net::Shutdown::Both);
        }
        result
    })
}

fn accept_loop<'scope, R: Directory>(
    owner: &'scope Owner,
    directory: &'scope R,
    listener: &TcpListener,
    replays: &'scope ReplayCache,
    pending: &'scope Pending,
    scope: &'scope thread::Scope<'scope, '_>,
) -> Result<(), Error> {
    let mut next_id: u64 = 0;
    loop {
        let (conn, addr) = match transport::accept(listener, &[&owner.shutdown]) {
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
        if !directory.admit() {
            log::debug!("{addr}: closed unread: over the budget for message-1 trials");
            continue;
        }
        log::debug!("{addr}: connection accepted");
        next_id += 1;
        let id = next_id;
        let Ok(abort) = conn.try_clone() else {
            log::warn!("{addr}: cannot duplicate the connection; closed");
            continue;
        };
        if !pending.add(id, addr, abort) {
            log::info!(
                "{addr}: closed: {MAX_PENDING} handshakes with an authentic message 1 already in progress"
            );
            continue;
        }
        let Some(live) = pending.room(&owner.shutdown) else {
            return Ok(());
        };
        scope.spawn(move || {
            let _live = live;
            let peer = addr.to_string();
            let slot = Slot { pending, id };
            let mut picked = None;
            let outcome = Stream::tcp(conn, peer.clone()).and_then(|stream| {
                owner.handshake(stream, |io| {
                    let (keys, to) =
                        handshake::respond_with(io, directory, accepted, replays, &slot)?;
                    picked = Some(to);
                    Ok(keys)
                })
            });
            pending.claim(id);
            match (outcome, picked) {
                (Ok(Some(session)), Some(to)) => directory.deliver(to, session),
                (Ok(_), _) => {}
                (Err(e), _) => log::info!("{e}"),
            }
        });
    }
}

/// A handshake's place in the pending list, told how the handshake goes.
struct Slot<'a> {
    pending: &'a Pending,
    id: u64,
}

impl handshake::Progress for Slot<'_> {
    fn authentic(&self, peer: &PublicKey) {
        self.pending.authentic(self.id, peer);
    }

    fn confirm(&self) -> bool {
        self.pending.claim(self.id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A loopback connection: the server's end (for the list) and the
    /// client's end (to see whether the server's was shut).
    fn connection(listener: &TcpListener) -> (TcpStream, TcpStream, SocketAddr) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, addr) = listener.accept().unwrap();
        (server, client, addr)
    }

    /// Whether the server's end of `client` was shut: on loopback the FIN
    /// is there before shutdown() returns, so a short wait is enough.
    fn was_shut(client: &mut TcpStream) -> bool {
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        match client.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// Fills the list with `count` handshakes numbered from `first`; returns
    /// the client ends, each with the server's end that its handshake
    /// thread would hold.
    fn fill(
        pending: &Pending,
        listener: &TcpListener,
        first: u64,
        count: usize,
    ) -> Vec<(TcpStream, TcpStream)> {
        (0..count)
            .map(|i| {
                let (server, client, addr) = connection(listener);
                let abort = server.try_clone().unwrap();
                assert!(pending.add(first + i as u64, addr, abort));
                (client, server)
            })
            .collect()
    }

    /// Peer `n`'s public key.
    fn key(n: u8) -> PublicKey {
        PublicKey([n; crate::keys::KEY_LEN])
    }

    fn ids(pending: &Pending) -> Vec<u64> {
        pending.lock().iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_claimed_handshake_cannot_be_evicted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::default();
        let mut clients = fill(&pending, &listener, 1, MAX_PENDING);
        // Handshake 1 succeeded: it claims its entry before confirming.
        assert!(pending.claim(1));
        // The flood goes on: every newcomer makes room, never by closing 1.
        clients.extend(fill(&pending, &listener, 100, MAX_PENDING + 1));
        assert!(!ids(&pending).contains(&1));
        assert!(
            !was_shut(&mut clients[0].0),
            "the succeeded handshake was shut"
        );
        assert!(was_shut(&mut clients[1].0));
    }

    #[test]
    fn an_evicted_handshake_cannot_claim_its_success() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::default();
        let mut clients = fill(&pending, &listener, 1, MAX_PENDING + 1);
        assert!(was_shut(&mut clients[0].0));
        // Its message 3 checked just as it was closed: no confirmation, no
        // session to replace the current one.
        assert!(!pending.claim(1));
    }

    #[test]
    fn eviction_spares_authentic_handshakes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::default();
        let mut clients = fill(&pending, &listener, 1, MAX_PENDING);
        pending.authentic(1, &key(1));
        pending.authentic(3, &key(3));
        let _more = fill(&pending, &listener, 100, 2 * MAX_PENDING);
        let left = ids(&pending);
        assert_eq!(left.len(), MAX_PENDING);
        assert_eq!(left[..2], [1, 3]);
        assert!(!was_shut(&mut clients[0].0));
        assert!(!was_shut(&mut clients[2].0));
        assert!(was_shut(&mut clients[1].0));
    }

    #[test]
    fn a_newcomer_is_refused_when_every_handshake_is_authentic() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::default();
        let mut clients = fill(&pending, &listener, 1, MAX_PENDING);
        for id in 1..=MAX_PENDING as u64 {
            pending.authentic(id, &key(id as u8));
        }
        let (server, _client, addr) = connection(&listener);
        assert!(!pending.add(999, addr, server));
        assert_eq!(ids(&pending), (1..=MAX_PENDING as u64).collect::<Vec<_>>());
        assert!(clients.iter_mut().take(4).all(|(c, _)| !was_shut(c)));
    }

    #[test]
    fn one_peer_holds_at_most_two_authentic_handshakes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::default();
        let mut clients = fill(&pending, &listener, 1, 5);
        // Peer 7 proves message 1 on handshakes 1, 2 and 4; peer 8 on 3.
        pending.authentic(1, &key(7));
        pending.authentic(2, &key(7));
        pending.authentic(3, &key(8));
        assert_eq!(ids(&pending), [1, 2, 3, 4, 5]);
        pending.authentic(4, &key(7));
        // Its oldest went; the other peer's and the unproven ones stay.
        assert_eq!(ids(&pending), [2, 3, 4, 5]);
        assert!(was_shut(&mut clients[0].0));
        assert!(clients[1..].iter_mut().all(|(c, _)| !was_shut(c)));
        // So a flood of one key's handshakes never fills the list: the
        // unproven newcomers keep finding room.
        for id in 100..100 + MAX_PENDING as u64 {
            let (server, _client, addr) = connection(&listener);
            assert!(pending.add(id, addr, server));
            pending.authentic(id, &key(7));
        }
        let of_7 = pending
            .lock()
            .iter()
            .filter(|e| e.authentic == Some(key(7)))
            .count();
        assert_eq!(of_7, MAX_AUTHENTIC_PER_PEER);
    }
}
