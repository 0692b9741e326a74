//! The hub (-s -A, -i -A): one server for every peer a peers file lists
//! ([`crate::peers`]), each with its own key, device, hooks, counters and
//! sessions.
//!
//! - Each listed peer is a [`Peer`] on its own device, made when the file is
//!   read (so addresses, routes and bridges can be set before anyone
//!   connects) and kept across that peer's reconnects, with its own
//!   [`Owner::keep`] thread: sessions of different peers run side by side on
//!   their own threads and queues, and a newer session of a peer replaces
//!   only that peer's.
//! - Message 1 is tried against every listed peer's psk outside snow
//!   ([`Candidates`]), within a CPU budget ([`Budget`]) beyond which new
//!   connections are closed unread; the peer it proves is the one the rest
//!   of the handshake requires, and its device, hello and hooks are used.
//! - SIGHUP re-reads the file ([`Hub::reload`]): a file with any error
//!   changes nothing; added peers are served at once; removed peers'
//!   sessions end and their devices are let go (the kernel removes a device
//!   taptun made); a peer whose key or device options (device=, bridge=,
//!   mtu=) changed is removed and added; one whose hooks or keepalive
//!   changed keeps its session, and its next session uses them.
//! - -i -A ([`inetd`]): one connection from any listed peer, whose device is
//!   opened once message 1 has named it.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::Scope;
use std::time::{Duration, Instant};

use crate::device::{Device, DeviceSpec, PacketDevice};
use crate::error::Error;
use crate::handshake::{self, Choose, HandshakeError, Hello, Identity};
use crate::keys::{PrivateKey, PublicKey};
use crate::local::SocketAccess;
use crate::peers::{self, PeerLine};
use crate::relay::Counters;
use crate::server::{self, Directory};
use crate::session::{self, Event, Owner, Peer};
use crate::sys::{self, Stop, Wait};
use crate::transport::Stream;
use crate::trial::{Budget, Candidates};
use crate::wire::{Cipher, Layer};

/// The CPU time per second that trials of message 1 may take, all
/// connections together: a flood of garbage costs the hub at most a quarter
/// of one core.
pub const TRIAL_BUDGET: Duration = Duration::from_millis(250);

/// How long a reload waits for a removed peer's session and down hook to
/// end before it makes a device of the same name again.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// The command line's settings for every peer, which a peer's line may
/// override.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub layer: Layer,
    pub cipher: Cipher,
    pub gso: bool,
    pub mtu: Option<u32>,
    pub keepalive: u8,
    pub up: Option<String>,
    pub down: Option<String>,
    /// --socket-mode and --socket-group, for a device=qemu: socket.
    pub socket: SocketAccess,
}

/// One listed peer: its line, its endpoint and its sessions' inbox.
pub struct Listed {
    /// The line in force: a reload that changes only the hooks or the
    /// keepalive updates it.
    line: Mutex<PeerLine>,
    pub peer: Peer<Device>,
    inbox: mpsc::Sender<Event>,
}

impl Listed {
    /// Makes the peer's device (and puts it in its bridge), its identity and
    /// its inbox, whose receiving end its keep thread takes.
    fn make(
        line: PeerLine,
        local: &PrivateKey,
        defaults: &Defaults,
        counters: Arc<Counters>,
    ) -> Result<(Arc<Listed>, mpsc::Receiver<Event>), Error> {
        let mtu = line.mtu.or(defaults.mtu);
        // The peers file checked the value: -d's forms, endpoints with an
        // absolute path.
        let spec = DeviceSpec::parse(&line.device)
            .map_err(|why| Error::Usage(format!("peer {}: device={why}", line.name)))?;
        let device = Device::open(&spec, defaults.layer, mtu, defaults.gso, &defaults.socket)?;
        if let Some(bridge) = &line.bridge {
            sys::set_master(device.name(), bridge).map_err(|source| Error::Device {
                name: device.name().to_owned(),
                what: "cannot put the device into its bridge= (is there a bridge of that name?)",
                source,
            })?;
        }
        let identity = Identity::new(local.clone(), line.key, defaults.cipher).map_err(|why| {
            Error::Secret {
                subject: format!("peer {}", line.name),
                why,
            }
        })?;
        let keepalive = line.keepalive.unwrap_or(defaults.keepalive);
        let mut peer = Peer::new(device, identity, keepalive, counters);
        peer.name = Some(line.name.clone());
        apply(&peer, &line, defaults);
        let (inbox, receiver) = mpsc::channel();
        let listed = Listed {
            line: Mutex::new(line),
            peer,
            inbox,
        };
        Ok((Arc::new(listed), receiver))
    }

    pub fn line(&self) -> PeerLine {
        self.line.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The line's hooks and keepalive (or the defaults) for the peer's next
/// session.
fn apply(peer: &Peer<Device>, line: &PeerLine, defaults: &Defaults) {
    peer.set(
        line.up.clone().or_else(|| defaults.up.clone()),
        line.down.clone().or_else(|| defaults.down.clone()),
        line.keepalive.unwrap_or(defaults.keepalive),
    );
}

/// The peers in force and their message-1 candidates, index for index.
struct Roster {
    candidates: Candidates,
    peers: Vec<Arc<Listed>>,
}

impl Roster {
    fn new(local: &PrivateKey, cipher: Cipher, peers: Vec<Arc<Listed>>) -> Result<Roster, Error> {
        let keys: Vec<PublicKey> = peers.iter().map(|p| p.peer.identity.remote()).collect();
        let candidates = Candidates::new(local, cipher, &keys).map_err(|why| Error::Secret {
            subject: "a listed peer's key".into(),
            why,
        })?;
        Ok(Roster { candidates, peers })
    }
}

/// A hub: the peers file, our key, and the peers in force.
pub struct Hub {
    path: PathBuf,
    local: PrivateKey,
    defaults: Defaults,
    roster: RwLock<Arc<Roster>>,
    /// Peers made but whose keep thread has not started.
    unstarted: Mutex<Vec<(Arc<Listed>, mpsc::Receiver<Event>)>>,
    /// The trials' CPU budget; it counts the connections it refused.
    pub budget: Budget,
}

impl Hub {
    /// Reads the peers file and makes every listed peer's device.
    ///
    /// # Errors
    /// A peers file with any error (exit 2), or a device that cannot be
    /// made (exit 1): nothing is served then.
    pub fn load(path: &Path, local: PrivateKey, defaults: Defaults) -> Result<Hub, Error> {
        let lines = peers::read(path, &local.public_key(), defaults.layer, peers::MAX_PEERS)?;
        // About 8 descriptors per connected peer (device, connection, eventfds).
        match sys::raise_open_files_limit() {
            Ok(limit) if limit < 8 * lines.len() as u64 + 256 => log::warn!(
                "at most {limit} open files (ulimit -n): too few for {} peers' devices and sessions; \
                 raise the hard limit (LimitNOFILE= in a systemd unit)",
                lines.len()
            ),
            Ok(_) => {}
            Err(e) => log::warn!("cannot raise the limit on open files: {e}"),
        }
        let started = Instant::now();
        let mut made = Vec::with_capacity(lines.len());
        for line in lines {
            made.push(Listed::make(line, &local, &defaults, Arc::default())?);
        }
        let peers = made.iter().map(|(listed, _)| listed.clone()).collect();
        let roster = Roster::new(&local, defaults.cipher, peers)?;
        log::info!(
            "{}: {} peers, their devices made in {} ms",
            path.display(),
            made.len(),
            started.elapsed().as_millis()
        );
        Ok(Hub {
            path: path.to_owned(),
            local,
            defaults,
            roster: RwLock::new(Arc::new(roster)),
            unstarted: Mutex::new(made),
            budget: Budget::new(TRIAL_BUDGET, Instant::now()),
        })
    }

    fn roster(&self) -> Arc<Roster> {
        self.roster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The peers in force, in the file's order.
    pub fn peers(&self) -> Vec<Arc<Listed>> {
        self.roster().peers.clone()
    }

    /// Starts the keep thread of every peer made since the last call.
    fn start<'scope>(&self, owner: &'scope Owner, scope: &'scope Scope<'scope, '_>) {
        let unstarted =
            std::mem::take(&mut *self.unstarted.lock().unwrap_or_else(|p| p.into_inner()));
        for (listed, inbox) in unstarted {
            let events = listed.inbox.clone();
            scope.spawn(move || owner.keep(&listed.peer, inbox, events));
        }
    }

    /// Re-reads the peers file and applies the difference (see the module's
    /// contract). A file with any error changes nothing.
    pub fn reload(&self) {
        let own = self.local.public_key();
        let lines = match peers::read(&self.path, &own, self.defaults.layer, peers::MAX_PEERS) {
            Ok(lines) => lines,
            Err(e) => {
                log::error!(
                    "reload refused, the {} peers in force stay: {e}",
                    self.roster().peers.len()
                );
                return;
            }
        };
        let old = self.roster();
        let old_lines: Vec<PeerLine> = old.peers.iter().map(|p| p.line()).collect();
        let changes = peers::diff(&old_lines, &lines);
        // A new device for a peer whose device options changed: its session
        // ends like a removed peer's.
        // By name: a reload of 10,000 peers must not compare every pair.
        let old_by_name: HashMap<&str, &PeerLine> =
            old_lines.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut remade = Vec::new();
        let mut in_place = Vec::new();
        for line in changes.changed {
            let before = old_by_name.get(line.name.as_str());
            let device_changed = before.is_none_or(|b| {
                b.device != line.device || b.bridge != line.bridge || b.mtu != line.mtu
            });
            if device_changed {
                remade.push(line);
            } else {
                in_place.push(line);
            }
        }
        let leaving: HashSet<&str> = changes
            .removed
            .iter()
            .chain(&remade)
            .map(|l| l.name.as_str())
            .collect();
        let (going, staying): (Vec<Arc<Listed>>, Vec<Arc<Listed>>) = old
            .peers
            .iter()
            .cloned()
            .partition(|p| leaving.contains(p.line().name.as_str()));
        // The peers leaving stop serving at once: new handshakes no longer
        // find them, their sessions end and their down hooks run.
        let interim = Roster::new(&self.local, self.defaults.cipher, staying.clone());
        match interim {
            Ok(roster) => self.set_roster(roster),
            Err(e) => {
                log::error!("reload refused: {e}");
                return;
            }
        }
        for listed in &going {
            let _ = listed.inbox.send(Event::Shutdown);
        }
        // The old roster holds them too.
        drop(old);
        release(going);
        let staying_by_name: HashMap<String, &Arc<Listed>> =
            staying.iter().map(|p| (p.line().name, p)).collect();
        for line in &in_place {
            if let Some(listed) = staying_by_name.get(&line.name) {
                apply(&listed.peer, line, &self.defaults);
                *listed.line.lock().unwrap_or_else(|p| p.into_inner()) = line.clone();
                log::info!(
                    "{}: new hooks or keepalive, from its next session",
                    line.name
                );
            }
        }
        let mut added = 0;
        let mut failed = 0;
        let mut made = Vec::new();
        for line in changes.added.into_iter().chain(remade) {
            let name = line.name.clone();
            match Listed::make(line, &self.local, &self.defaults, Arc::default()) {
                Ok(listed) => {
                    added += 1;
                    made.push(listed);
                }
                Err(e) => {
                    failed += 1;
                    log::error!("{name}: not served: {e}");
                }
            }
        }
        // The file's order, for status and the logs.
        let mut peers = staying;
        peers.extend(made.iter().map(|(listed, _)| listed.clone()));
        let position: HashMap<&str, usize> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        peers.sort_by_cached_key(|p| position.get(p.line().name.as_str()).copied());
        match Roster::new(&self.local, self.defaults.cipher, peers) {
            Ok(roster) => self.set_roster(roster),
            Err(e) => log::error!("reload: the added peers are not served: {e}"),
        }
        self.unstarted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(made);
        log::info!(
            "{} reloaded: {} peers; {} removed, {added} added{}, {} with new hooks or keepalive",
            self.path.display(),
            self.roster().peers.len(),
            changes.removed.len(),
            if failed > 0 {
                format!(" ({failed} could not be made)")
            } else {
                String::new()
            },
            in_place.len()
        );
    }

    fn set_roster(&self, roster: Roster) {
        *self.roster.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roster);
    }
}

/// Drops the hub's hold on peers that were told to stop, once their keep
/// threads and handshakes have let go of them: the last one closes the
/// device (which the kernel then removes if taptun made it), so that a
/// device of the same name can be made again.
fn release(going: Vec<Arc<Listed>>) {
    let deadline = Instant::now() + RELEASE_WAIT;
    for listed in going {
        while Arc::strong_count(&listed) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Arc::strong_count(&listed) > 1 {
            log::warn!(
                "{}: its session has not ended after {} s; its device is let go later",
                listed.line().name,
                RELEASE_WAIT.as_secs()
            );
        }
    }
}

impl Choose for Hub {
    type Choice = Arc<Listed>;

    fn choose(&self, msg1: &[u8]) -> Result<Arc<Listed>, HandshakeError> {
        let roster = self.roster();
        let found = self.budget.find(&roster.candidates, msg1, Instant::now());
        found
            .and_then(|i| roster.peers.get(i).cloned())
            .ok_or(HandshakeError::Message1NotAuthentic)
    }

    fn parts<'c>(&self, listed: &'c Arc<Listed>) -> (&'c Identity, Hello) {
        (&listed.peer.identity, listed.peer.hello())
    }
}

impl Directory for Hub {
    fn admit(&self) -> bool {
        self.budget.admit(Instant::now())
    }

    fn deliver(&self, listed: Arc<Listed>, session: session::Session) {
        // A peer removed meanwhile has no keep thread: the session is
        // dropped, which closes it.
        let _ = listed.inbox.send(Event::Ready(Box::new(session)));
    }
}

/// Serves the hub's peers until SIGINT or SIGTERM; `hangup` (SIGHUP)
/// reloads the peers file.
///
/// # Errors
/// Only a failing listening socket.
pub fn serve(owner: &Owner, hub: &Hub, listener: TcpListener, hangup: &Stop) -> Result<(), Error> {
    let done = Stop::new().map_err(|e| Error::io("cannot create an eventfd", e))?;
    std::thread::scope(|scope| {
        hub.start(owner, scope);
        let done = &done;
        scope.spawn(move || {
            loop {
                match sys::wait_readable(hangup.raw_fd(), &[&*owner.shutdown, done], None) {
                    Ok(Wait::Ready) => {
                        hangup.take_signal();
                        log::info!("SIGHUP: reading {} again", hub.path.display());
                        hub.reload();
                        hub.start(owner, scope);
                    }
                    Ok(_) | Err(_) => return,
                }
            }
        });
        let what = format!("hub of {} peers", hub.roster().peers.len());
        let result = server::serve_directory(owner, hub, listener, &what);
        done.trigger();
        for listed in hub.peers() {
            let _ = listed.inbox.send(Event::Shutdown);
        }
        result
    })
}

/// What -i -A picks from message 1: a listed peer, whose device is opened
/// then (a second connection of a peer whose device another process holds
/// fails there).
struct OneOfMany<'a> {
    lines: Vec<PeerLine>,
    candidates: Candidates,
    local: &'a PrivateKey,
    defaults: &'a Defaults,
    counters: Arc<Counters>,
    /// Why the picked peer could not be served, for the process's status.
    failure: Mutex<Option<Error>>,
}

impl Choose for OneOfMany<'_> {
    type Choice = Arc<Listed>;

    fn choose(&self, msg1: &[u8]) -> Result<Arc<Listed>, HandshakeError> {
        let index = self
            .candidates
            .find(msg1)
            .ok_or(HandshakeError::Message1NotAuthentic)?;
        let line = self
            .lines
            .get(index)
            .cloned()
            .ok_or(HandshakeError::Message1NotAuthentic)?;
        let name = line.name.clone();
        // One connection per process: the process's counters are the peer's.
        match Listed::make(line, self.local, self.defaults, self.counters.clone()) {
            Ok((listed, _)) => Ok(listed),
            Err(e) => {
                log::debug!("{name}: cannot serve: {e}");
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                // Ends the handshake unanswered; `inetd` reports the failure.
                Err(HandshakeError::Stopped)
            }
        }
    }

    fn parts<'c>(&self, listed: &'c Arc<Listed>) -> (&'c Identity, Hello) {
        (&listed.peer.identity, listed.peer.hello())
    }
}

/// -i -A: one handshake from any listed peer and at most one session, on
/// that peer's device.
///
/// # Errors
/// A peers file with any error or more than [`peers::MAX_INETD_PEERS`]
/// peers (exit 2), a failed handshake, a device that cannot be had (in use
/// by another connection of the same peer: exit 1), the session's end.
pub fn inetd(
    owner: &Owner,
    path: &Path,
    local: &PrivateKey,
    defaults: &Defaults,
    stream: Stream,
) -> Result<(), Error> {
    let lines = peers::read(
        path,
        &local.public_key(),
        defaults.layer,
        peers::MAX_INETD_PEERS,
    )?;
    let keys: Vec<PublicKey> = lines.iter().map(|l| l.key).collect();
    let candidates =
        Candidates::new(local, defaults.cipher, &keys).map_err(|why| Error::Secret {
            subject: "a listed peer's key".into(),
            why,
        })?;
    let chooser = OneOfMany {
        lines,
        candidates,
        local,
        defaults,
        counters: owner.counters.clone(),
        failure: Mutex::new(None),
    };
    let replays = crate::replay::InetdReplays::open(&|v| std::env::var(v).ok());
    let mut picked = None;
    let session = owner.handshake(stream, |io| {
        let (keys, listed) = handshake::respond_with(io, &chooser, Instant::now(), &replays, &())?;
        picked = Some(listed);
        Ok(keys)
    })?;
    if let Some(failure) = chooser
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(failure);
    }
    let (Some(session), Some(listed)) = (session, picked) else {
        return Ok(());
    };
    let name = session.peer.clone();
    let end = std::thread::scope(|scope| owner.run(&listed.peer, session, scope));
    session::outcome(&name, end, listed.peer.endpoint.device().name())
}
