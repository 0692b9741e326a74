//! Local endpoints without a TAP device: a VM's or a VDE switch's Ethernet
//! over a byte stream of its own, carried by taptun as if it were a TAP.
//!
//! ```text
//! QEMU, passt:  +--------------------+-------------------------+
//!               | u32 BE frame len N | N bytes Ethernet frame  |   (QEMU accepts N <= 69,632)
//!               +--------------------+-------------------------+
//! VDE vde_plug: +--------------------+-------------------------+
//!               | u16 BE frame len N | N bytes Ethernet frame  |   (vde_plug reads 9,234 bytes at a time)
//!               +--------------------+-------------------------+
//! ```
//!
//! The relay and the endpoint's drain see an ordinary packet device: one
//! end of a SOCK_SEQPACKET socket pair (one frame per recv and send, as a
//! TAP). Two pump threads convert between the other end and the local
//! stream, so the relay's data path is the one a TAP has:
//!
//! - inbound (stream to pair) owns the stream's source: it accepts the VM on
//!   a listening Unix socket (`qemu:`), connects to one (`qemu-connect:`),
//!   or runs a command (`vde:`), and gets a new stream when the current one
//!   ends, with backoff for the last two. It reads through a large buffer and
//!   cuts frames with the pure [`Deframer`]; a length the format cannot have
//!   ends that local stream (logged), never the tunnel.
//! - outbound (pair to stream) writes each frame's length and bytes in one
//!   write; with no local stream, or a frame larger than the other side
//!   takes, it drops the frame and counts it.
//!
//! vde_plug reads its stdin 9,234 bytes at a time, drops a length over that
//! and loses a length split across two reads; so its stdin and stdout are a
//! SOCK_SEQPACKET socket, where each of our writes is one of its reads, and
//! no frame over [`VDE_MAX_FRAME`] is sent to it. GSO does not apply: the
//! streams carry plain frames. The pumps stop, the command is stopped and
//! the listening socket removed when the endpoint is dropped.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::child::{self, Child};
use crate::error::Error;
use crate::sys::{self, Interest, Stop, Wait, WaitAny};

/// The largest length QEMU takes on its stream (NET_BUFSIZE in net/net.h);
/// a larger one is not a frame but a stream out of sync.
pub const QEMU_MAX_LEN: usize = 65536 + 4096;
/// VDE's buffer (VDE_ETHBUFSIZE: MTU 9216 + Ethernet header + 802.1Q tag).
pub const VDE_BUFFER: usize = 9234;
/// The largest frame vde_plug can take from us: its read of [`VDE_BUFFER`]
/// bytes must hold the 2-byte length as well.
pub const VDE_MAX_FRAME: usize = VDE_BUFFER - 2;
/// The largest MTU of a `vde:` endpoint: a frame with an 802.1Q tag must fit
/// [`VDE_MAX_FRAME`].
pub const VDE_MAX_MTU: u32 = (VDE_MAX_FRAME - 18) as u32;
/// How much of the local stream one read takes.
const READ_BUFFER: usize = 256 * 1024;
/// The first wait before connecting or running the command again.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A local stream that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(2);

/// The framing of a local stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// u32 big-endian length: QEMU's `-netdev stream`/`socket`, passt.
    Qemu,
    /// u16 big-endian length: vde_plug's stdin and stdout.
    Vde,
}

impl Format {
    pub fn header_len(self) -> usize {
        match self {
            Format::Qemu => 4,
            Format::Vde => 2,
        }
    }

    /// The largest length that can be a frame; above it the stream is out
    /// of sync.
    pub fn max_len(self) -> usize {
        match self {
            Format::Qemu => QEMU_MAX_LEN,
            Format::Vde => usize::from(u16::MAX),
        }
    }

    /// The largest frame the other side takes from us.
    pub fn max_frame_out(self) -> usize {
        match self {
            Format::Qemu => QEMU_MAX_LEN,
            Format::Vde => VDE_MAX_FRAME,
        }
    }

    /// Writes the length header of a `len`-byte frame into the last
    /// `header_len` bytes of `room`; `len` must be within
    /// [`Format::max_frame_out`].
    fn put_header(self, room: &mut [u8; 4], len: usize) {
        match self {
            Format::Qemu => *room = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes(),
            Format::Vde => {
                room[2..].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes())
            }
        }
    }
}

/// What [`Deframer::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole frame.
    Frame(&'a [u8]),
    /// A frame of this length is too large to carry: its bytes are skipped.
    Oversize(usize),
}

/// A length the format cannot have: the stream is out of sync.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub usize);

#[derive(Debug)]
enum State {
    /// `have` bytes of the length header are in `header`.
    Header { have: usize },
    /// `have` of a `len`-byte frame are in the buffer.
    Body { len: usize, have: usize },
    /// `left` bytes of an oversize frame are still to skip.
    Skip { left: usize },
}

/// Cuts a local stream into frames, with no I/O and one buffer allocated at
/// creation: memory stays bounded whatever lengths arrive.
pub struct Deframer {
    format: Format,
    header: [u8; 4],
    /// One frame, up to the largest we carry.
    frame: Box<[u8]>,
    state: State,
}

impl Deframer {
    /// Frames longer than `max_frame` are skipped and reported.
    pub fn new(format: Format, max_frame: usize) -> Deframer {
        Deframer {
            format,
            header: [0; 4],
            frame: vec![0; max_frame].into_boxed_slice(),
            state: State::Header { have: 0 },
        }
    }

    /// Takes bytes from the start of `input` until a frame (or an oversize
    /// one) is complete or `input` is used up. Returns how many bytes it
    /// took and what it found. Empty frames are skipped, as QEMU and VDE do.
    ///
    /// # Errors
    /// [`Malformed`] for a length above what the format allows; the
    /// deframer must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Event<'_>>), Malformed> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Header { have } => {
                    let need = self.format.header_len();
                    let take = (need - have).min(rest.len());
                    self.header[have..have + take].copy_from_slice(&rest[..take]);
                    used += take;
                    if have + take < need {
                        self.state = State::Header { have: have + take };
                        continue;
                    }
                    let len = match self.format {
                        Format::Qemu => u32::from_be_bytes(self.header) as usize,
                        Format::Vde => {
                            usize::from(u16::from_be_bytes([self.header[0], self.header[1]]))
                        }
                    };
                    if len > self.format.max_len() {
                        return Err(Malformed(len));
                    }
                    if len == 0 {
                        self.state = State::Header { have: 0 };
                    } else if len > self.frame.len() {
                        self.state = State::Skip { left: len };
                        return Ok((used, Some(Event::Oversize(len))));
                    } else {
                        self.state = State::Body { len, have: 0 };
                    }
                }
                State::Body { len, have } => {
                    let take = (len - have).min(rest.len());
                    self.frame[have..have + take].copy_from_slice(&rest[..take]);
                    used += take;
                    if have + take == len {
                        self.state = State::Header { have: 0 };
                        return Ok((used, Some(Event::Frame(&self.frame[..len]))));
                    }
                    self.state = State::Body {
                        len,
                        have: have + take,
                    };
                }
                State::Skip { left } => {
                    let take = left.min(rest.len());
                    used += take;
                    self.state = if take == left {
                        State::Header { have: 0 }
                    } else {
                        State::Skip { left: left - take }
                    };
                }
            }
        }
        Ok((used, None))
    }
}

/// Who may connect to a `qemu:` socket: mode 0600 unless told otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    pub mode: u32,
    /// The socket's group (libvirt runs QEMU as a user of its own).
    pub group: Option<String>,
}

impl Default for SocketAccess {
    fn default() -> SocketAccess {
        SocketAccess {
            mode: 0o600,
            group: None,
        }
    }
}

/// Where local streams come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `qemu:PATH`: listen on a Unix socket, one client at a time.
    Listen(PathBuf),
    /// `qemu-connect:PATH`: connect to a Unix socket.
    Connect(PathBuf),
    /// `vde:COMMAND`: run COMMAND with /bin/sh -c on a socket as its stdin and stdout.
    Command(String),
}

impl Source {
    fn format(&self) -> Format {
        match self {
            Source::Listen(_) | Source::Connect(_) => Format::Qemu,
            Source::Command(_) => Format::Vde,
        }
    }
}

/// What the pumps count (logged at each local stream's end and at exit).
#[derive(Default)]
struct Tally {
    /// Frames from the local stream given to the tunnel side.
    from_local: AtomicU64,
    /// Frames written to the local stream.
    to_local: AtomicU64,
    /// Frames too large for the other side, either way.
    oversize: AtomicU64,
    /// Frames from the tunnel while no local stream was there.
    no_stream: AtomicU64,
}

impl Tally {
    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} frames in, {} out; dropped {} too large, {} with no local stream",
            get(&self.from_local),
            get(&self.to_local),
            get(&self.oversize),
            get(&self.no_stream)
        )
    }
}

/// What both pumps share.
struct Shared {
    name: String,
    format: Format,
    /// The largest frame carried, either way.
    max_frame: usize,
    stop: Stop,
    /// The current local stream, for outbound; `None` while there is none.
    writer: Mutex<Option<UnixStream>>,
    tally: Tally,
}

/// A listening socket we made, to remove at exit if it is still ours.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// An open local endpoint: the device half of the socket pair and the pumps.
pub struct Local {
    /// The relay's end: one frame per recv and send.
    device: Socket,
    shared: Arc<Shared>,
    mtu: u32,
    pumps: Vec<JoinHandle<()>>,
    /// Dropped after the pumps are joined.
    _socket: Option<SocketFile>,
}

impl Local {
    /// Opens the endpoint named `name` with frames of an `mtu` device, and
    /// none over `max_frame` bytes (larger ones are dropped, counted):
    /// binds the listening socket (`qemu:`) at once, so that errors show at
    /// start-up; connecting and running the command happen in the pump.
    ///
    /// # Errors
    /// `Error::Local`: a socket path or directory that cannot be used, or a
    /// socket pair or thread that cannot be had.
    pub fn open(
        name: &str,
        source: Source,
        mtu: u32,
        max_frame: usize,
        access: &SocketAccess,
    ) -> Result<Local, Error> {
        let err = |what: &str, source: io::Error| Error::Local {
            endpoint: name.to_owned(),
            what: what.to_owned(),
            source: Some(source),
        };
        let (listener, socket) = match &source {
            Source::Listen(path) => {
                let (listener, file) = listen(name, path, access)?;
                (Some(listener), Some(file))
            }
            _ => (None, None),
        };
        let (device, pump) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)
            .map_err(|e| err("cannot create a socket pair", e))?;
        device
            .set_nonblocking(true)
            .and_then(|()| pump.set_nonblocking(true))
            .map_err(|e| err("cannot make the socket pair non-blocking", e))?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            format: source.format(),
            max_frame,
            stop: Stop::new().map_err(|e| err("cannot create an eventfd", e))?,
            writer: Mutex::new(None),
            tally: Tally::default(),
        });
        let pump = Arc::new(pump);
        let mut pumps = Vec::new();
        let mut spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("taptun-{what}"))
                .spawn(f)
                .map(|h| pumps.push(h))
                .map_err(|e| err("cannot start a thread", e))
        };
        let started = {
            let (shared, pump) = (shared.clone(), pump.clone());
            spawn(
                "inbound",
                Box::new(move || inbound(&shared, &pump, source, listener)),
            )
        }
        .and_then(|()| {
            let (shared, pump) = (shared.clone(), pump.clone());
            spawn("outbound", Box::new(move || outbound(&shared, &pump)))
        });
        let local = Local {
            device,
            shared,
            mtu,
            pumps,
            _socket: socket,
        };
        started.map(|()| local)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What the pumps counted, for SIGUSR1's report.
    pub fn counts(&self) -> String {
        self.shared.tally.line()
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }

    /// Reads one frame.
    ///
    /// # Errors
    /// `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.device).read(buf)
    }

    /// Hands one frame to the outbound pump.
    ///
    /// # Errors
    /// `WouldBlock` when the pump is backed up: the relay counts and drops
    /// the frame, as a TAP device's full queue does.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.device).write(frame)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.shared.stop.trigger();
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
        log::info!("{}: {}", self.shared.name, self.shared.tally.line());
    }
}

/// Binds `path` for `qemu:`: in a directory no one else can swap it in,
/// replacing only a dead socket, with `access`'s mode and group.
fn listen(
    name: &str,
    path: &Path,
    access: &SocketAccess,
) -> Result<(UnixListener, SocketFile), Error> {
    let refuse = |what: String| Error::Local {
        endpoint: name.to_owned(),
        what,
        source: None,
    };
    let err = |what: String, source: io::Error| Error::Local {
        endpoint: name.to_owned(),
        what,
        source: Some(source),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir)
        .map_err(|e| err(format!("cannot use directory {}", dir.display()), e))?;
    check_directory(dir, &meta).map_err(refuse)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(refuse(format!(
                "{} exists and is not a socket: remove it or give another path",
                path.display()
            )));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(refuse(format!(
                    "another process listens on {}: stop it or give another path",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("{name}: replacing the dead socket {}", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| err(format!("cannot remove {}", path.display()), e))?;
            }
            Err(e) => {
                return Err(err(
                    format!("cannot tell whether {} is in use", path.display()),
                    e,
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot check {}", path.display()), e)),
    }
    let bind_err = |e| err(format!("cannot listen on {}", path.display()), e);
    let listener = sys::bind_unix_private(path).map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(group) = &access.group {
        let gid = sys::lookup_group(group).map_err(|e| err(format!("group {group}"), e))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            err(
                format!("cannot give {} to group {group}", path.display()),
                e,
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode)).map_err(|e| {
        err(
            format!("cannot set mode {:o} on {}", access.mode, path.display()),
            e,
        )
    })?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok((listener, file))
}

/// A directory where nobody else can replace our socket: owned by us or
/// root, and sticky if others may write to it.
fn check_directory(dir: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    let uid = sys::effective_uid();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "directory {} belongs to uid {}, not to us ({uid}) or root: another user could \
             replace the socket; use a directory of your own (e.g. $XDG_RUNTIME_DIR)",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(format!(
            "directory {} is writable by others (mode {:o}) without the sticky bit: another \
             user could replace the socket; use a directory of your own",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The inbound pump: gets local streams one after another and hands their
/// frames to the device half, until the endpoint stops.
fn inbound(shared: &Shared, pair: &Socket, source: Source, listener: Option<UnixListener>) {
    let mut input = vec![0u8; READ_BUFFER];
    let mut retry = FIRST_RETRY;
    let mut child: Option<Child> = None;
    let mut failures = 0u32;
    loop {
        let conn = match (&source, &listener) {
            (Source::Listen(_), Some(listener)) => accept(shared, listener),
            (Source::Connect(path), _) => match UnixStream::connect(path) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    failures += 1;
                    let level = if failures == 1 {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "{}: cannot connect ({e}); trying again every few seconds",
                        shared.name
                    );
                    None
                }
            },
            (Source::Command(command), _) => match run_command(command) {
                Ok((conn, started)) => {
                    child = Some(started);
                    Some(conn)
                }
                Err(e) => {
                    log::warn!("{}: cannot run the command: {e}", shared.name);
                    None
                }
            },
            (Source::Listen(_), None) => return,
        };
        if shared.stop.is_set() {
            break;
        }
        let started = Instant::now();
        if let Some(conn) = conn {
            if failures > 1 {
                log::info!("{}: connected after {failures} attempts", shared.name);
            }
            failures = 0;
            log::info!("{}: local stream up", shared.name);
            let why = carry(shared, pair, conn, listener.as_ref(), &mut input);
            log::info!(
                "{}: local stream down ({why}); {}",
                shared.name,
                shared.tally.line()
            );
        }
        if let Some(mut c) = child.take() {
            if let Some(status) = c.stop() {
                log::info!("{}: the command ended ({status})", shared.name);
            }
        }
        if shared.stop.is_set() {
            break;
        }
        if matches!(source, Source::Listen(_)) {
            // The next VM is waited for in accept.
            continue;
        }
        // 0.25 s after a stream that lasted, then twice as long after each
        // failure in a row, up to 5 s.
        let wait = if started.elapsed() >= STABLE {
            FIRST_RETRY
        } else {
            retry
        };
        retry = (wait * 2).min(MAX_RETRY);
        let deadline = Instant::now() + wait;
        if let Ok(Wait::Stopped) =
            sys::wait_readable(shared.stop.raw_fd(), &[&shared.stop], Some(deadline))
        {
            break;
        }
    }
    if let Some(mut c) = child {
        c.stop();
    }
}

/// Waits for a client on `listener`; `None` when stopped.
fn accept(shared: &Shared, listener: &UnixListener) -> Option<UnixStream> {
    loop {
        match sys::wait_readable(listener.as_raw_fd(), &[&shared.stop], None) {
            Ok(Wait::Ready) => {}
            Ok(_) => return None,
            Err(e) => {
                log::error!("{}: cannot wait for a client: {e}", shared.name);
                return None;
            }
        }
        match listener.accept() {
            Ok((conn, _)) => return Some(conn),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("{}: cannot accept: {e}", shared.name);
                // EMFILE and the like: do not spin on them.
                let pause = Instant::now() + FIRST_RETRY;
                if let Ok(Wait::Stopped) =
                    sys::wait_readable(shared.stop.raw_fd(), &[&shared.stop], Some(pause))
                {
                    return None;
                }
            }
        }
    }
}

/// Runs `command` with a SOCK_SEQPACKET socket as its stdin and stdout, in
/// a process group of its own (stopped with it).
fn run_command(command: &str) -> io::Result<(UnixStream, Child)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
    let theirs = OwnedFd::from(theirs);
    let mut cmd = child::shell(command);
    cmd.stdin(Stdio::from(theirs.try_clone()?))
        .stdout(Stdio::from(theirs));
    let started = Child::spawn(cmd, true)?;
    Ok((UnixStream::from(OwnedFd::from(ours)), started))
}

/// Carries one local stream until it ends or the endpoint stops; says why
/// it ended.
fn carry(
    shared: &Shared,
    pair: &Socket,
    conn: UnixStream,
    listener: Option<&UnixListener>,
    input: &mut [u8],
) -> String {
    if let Err(e) = conn.set_nonblocking(true) {
        return format!("cannot make it non-blocking: {e}");
    }
    match conn.try_clone() {
        Ok(writer) => *lock(&shared.writer) = Some(writer),
        Err(e) => return format!("cannot share it: {e}"),
    }
    let why = read_frames(shared, pair, &conn, listener, input);
    // Unblocks outbound if it is waiting to write to it.
    let _ = conn.shutdown(Shutdown::Both);
    *lock(&shared.writer) = None;
    why
}

fn read_frames(
    shared: &Shared,
    pair: &Socket,
    mut conn: &UnixStream,
    listener: Option<&UnixListener>,
    input: &mut [u8],
) -> String {
    let mut deframer = Deframer::new(shared.format, shared.max_frame);
    let mut watch = vec![(conn.as_raw_fd(), Interest::Read)];
    if let Some(l) = listener {
        watch.push((l.as_raw_fd(), Interest::Read));
    }
    loop {
        let ready = match sys::wait_any(&watch, &[&shared.stop], None) {
            Ok(WaitAny::Ready(ready)) => ready,
            Ok(_) => return "stopping".into(),
            Err(e) => return format!("poll failed: {e}"),
        };
        // What the stream holds comes first, its end included: a VM that
        // restarts at once must find its predecessor gone, not be refused.
        loop {
            let n = match conn.read(input) {
                Ok(0) => return "end of stream".into(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return format!("read failed: {e}"),
            };
            if let Err(why) = deliver(shared, pair, &mut deframer, &input[..n]) {
                return why;
            }
        }
        if let (true, Some(l)) = (ready & 2 != 0, listener) {
            refuse_second_client(shared, l);
        }
    }
}

/// Cuts `bytes` into frames and gives them to the device half; says why
/// the stream must end, if it must.
fn deliver(
    shared: &Shared,
    pair: &Socket,
    deframer: &mut Deframer,
    bytes: &[u8],
) -> Result<(), String> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let (used, event) = match deframer.feed(rest) {
            Ok(found) => found,
            Err(Malformed(len)) => {
                log::warn!(
                    "{}: a frame length of {len} bytes cannot be: the local stream is out \
                     of sync or not {} framing; closing it",
                    shared.name,
                    match shared.format {
                        Format::Qemu => "QEMU's",
                        Format::Vde => "VDE's",
                    }
                );
                return Err(format!("malformed length {len}"));
            }
        };
        rest = &rest[used..];
        match event {
            Some(Event::Frame(frame)) if !give(shared, pair, frame) => {
                return Err("stopping".into());
            }
            Some(Event::Oversize(len)) => {
                bump(&shared.tally.oversize);
                log::debug!(
                    "{}: dropped a frame of {len} bytes (too large)",
                    shared.name
                );
            }
            Some(Event::Frame(_)) | None => {}
        }
    }
    Ok(())
}

/// Accepts and closes a client that came while one is connected.
fn refuse_second_client(shared: &Shared, listener: &UnixListener) {
    if let Ok((conn, _)) = listener.accept() {
        let _ = conn.shutdown(Shutdown::Both);
        log::warn!(
            "{}: refused a second client: one is connected already",
            shared.name
        );
    }
}

/// Gives one frame to the device half, waiting while it is full (the
/// stream then waits too, as a VM's queue does); false when stopped.
fn give(shared: &Shared, pair: &Socket, frame: &[u8]) -> bool {
    loop {
        match (&*pair).write(frame) {
            Ok(_) => {
                bump(&shared.tally.from_local);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match sys::wait_writable(pair.as_raw_fd(), &[&shared.stop], None) {
                    Ok(Wait::Ready) => {}
                    _ => return false,
                }
            }
            Err(e) => {
                log::debug!("{}: the device half refused a frame: {e}", shared.name);
                return true;
            }
        }
    }
}

/// The outbound pump: frames from the device half to the local stream.
fn outbound(shared: &Shared, pair: &Socket) {
    let header = shared.format.header_len();
    // The frame goes after 4 bytes of room, where its header is written.
    let mut buf = vec![0u8; 4 + shared.max_frame + 1];
    loop {
        match sys::wait_readable(pair.as_raw_fd(), &[&shared.stop], None) {
            Ok(Wait::Ready) => {}
            _ => return,
        }
        let len = match (&*pair).read(&mut buf[4..]) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::error!("{}: the socket pair failed: {e}", shared.name);
                return;
            }
        };
        let writer = lock(&shared.writer);
        let Some(conn) = writer.as_ref() else {
            bump(&shared.tally.no_stream);
            continue;
        };
        if len == 0 {
            continue;
        }
        if len > shared.format.max_frame_out().min(shared.max_frame) {
            bump(&shared.tally.oversize);
            log::debug!("{}: dropped a frame of {len} bytes", shared.name);
            continue;
        }
        let mut room = [0u8; 4];
        shared.format.put_header(&mut room, len);
        buf[..4].copy_from_slice(&room);
        match write_all(shared, conn, &buf[4 - header..4 + len]) {
            Ok(true) => bump(&shared.tally.to_local),
            Ok(false) => return,
            Err(e) => {
                log::debug!("{}: cannot write to the local stream: {e}", shared.name);
                // Inbound sees the end and gets the next stream.
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Writes all of `bytes` with as few writes as the socket allows; false
/// when stopped.
fn write_all(shared: &Shared, mut conn: &UnixStream, mut bytes: &[u8]) -> io::Result<bool> {
    while !bytes.is_empty() {
        match conn.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match sys::wait_writable(conn.as_raw_fd(), &[&shared.stop], None)? {
                    Wait::Ready => {}
                    _ => return Ok(false),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; the frames and oversize
    /// lengths found, in order.
    fn cut(
        format: Format,
        max: usize,
        input: &[u8],
        step: usize,
    ) -> Result<Vec<Vec<u8>>, Malformed> {
        let mut d = Deframer::new(format, max);
        let mut found = Vec::new();
        for chunk in input.chunks(step) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (used, event) = d.feed(rest)?;
                rest = &rest[used..];
                match event {
                    Some(Event::Frame(f)) => found.push(f.to_vec()),
                    Some(Event::Oversize(len)) => found.push(format!("oversize {len}").into()),
                    None => {}
                }
            }
        }
        Ok(found)
    }

    fn qemu(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    fn vde(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn cuts_frames_whatever_the_reads() {
        let frames: Vec<Vec<u8>> = [60usize, 1514, 1, 9000]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        for (format, wrap) in [
            (Format::Qemu, qemu as fn(&[u8]) -> Vec<u8>),
            (Format::Vde, vde),
        ] {
            let stream: Vec<u8> = frames.iter().flat_map(|f| wrap(f)).collect();
            for step in [1, 2, 3, 7, 1500, stream.len()] {
                assert_eq!(
                    cut(format, 65509, &stream, step).unwrap(),
                    frames,
                    "{format:?} {step}"
                );
            }
        }
    }

    #[test]
    fn skips_empty_frames() {
        let mut stream = qemu(b"");
        stream.extend(qemu(b"abc"));
        assert_eq!(
            cut(Format::Qemu, 100, &stream, 1).unwrap(),
            vec![b"abc".to_vec()]
        );
        let mut stream = vde(b"");
        stream.extend(vde(b"xy"));
        assert_eq!(
            cut(Format::Vde, 100, &stream, 5).unwrap(),
            vec![b"xy".to_vec()]
        );
    }

    #[test]
    fn skips_an_oversize_frame_and_stays_in_sync() {
        let mut stream = qemu(&[9u8; 200]);
        stream.extend(qemu(b"after"));
        for step in [1, 13, 1000] {
            assert_eq!(
                cut(Format::Qemu, 100, &stream, step).unwrap(),
                vec![b"oversize 200".to_vec(), b"after".to_vec()]
            );
        }
    }

    #[test]
    fn rejects_a_length_qemu_cannot_have() {
        let mut stream = u32::MAX.to_be_bytes().to_vec();
        stream.extend([0u8; 100]);
        assert_eq!(
            cut(Format::Qemu, 65509, &stream, 3),
            Err(Malformed(u32::MAX as usize))
        );
        let just_over = (QEMU_MAX_LEN as u32 + 1).to_be_bytes();
        assert_eq!(
            cut(Format::Qemu, 65509, &just_over, 4),
            Err(Malformed(QEMU_MAX_LEN + 1))
        );
        // QEMU's own limit is a frame, if too large for us.
        let limit = (QEMU_MAX_LEN as u32).to_be_bytes();
        assert_eq!(
            cut(Format::Qemu, 65509, &limit, 4).unwrap(),
            vec![format!("oversize {QEMU_MAX_LEN}").into_bytes()]
        );
    }

    #[test]
    fn headers_are_big_endian() {
        let mut room = [0u8; 4];
        Format::Qemu.put_header(&mut room, 0x0102_0304);
        assert_eq!(room, [1, 2, 3, 4]);
        let mut room = [0u8; 4];
        Format::Vde.put_header(&mut room, 0x0506);
        assert_eq!(room[2..], [5, 6]);
    }

    #[test]
    fn vde_frames_fit_vde_plugs_read_with_their_length() {
        assert_eq!(Format::Vde.max_frame_out() + 2, VDE_BUFFER);
        assert_eq!(VDE_MAX_MTU, 9214);
    }

    #[test]
    fn a_world_writable_directory_needs_the_sticky_bit() {
        let tmp = std::fs::metadata("/tmp").unwrap();
        assert!(check_directory(Path::new("/tmp"), &tmp).is_ok());
        let dir = std::env::temp_dir().join(format!("taptun-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        let verdict = check_directory(&dir, &meta);
        std::fs::remove_dir(&dir).unwrap();
        assert!(verdict.unwrap_err().contains("without the sticky bit"));
    }

    /// A private temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::AtomicU32;
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("taptun-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// The next frame the endpoint's device half gives the relay.
    #[track_caller]
    fn device_recv(local: &Local) -> Vec<u8> {
        let mut buf = vec![0u8; 70000];
        let deadline = Instant::now() + WAIT;
        loop {
            match local.recv(&mut buf) {
                Ok(n) => return buf[..n].to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let waited = sys::wait_readable(local.raw_fd(), sys::NO_STOPS, Some(deadline));
                    assert_eq!(waited.unwrap(), Wait::Ready, "no frame within {WAIT:?}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn connect(path: &Path) -> UnixStream {
        let deadline = Instant::now() + WAIT;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    return s;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }

    fn qemu_frame(stream: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut frame).unwrap();
        frame
    }

    /// Sends `frame` to the device half until the outbound pump takes it to
    /// a stream (it drops frames while none is connected yet).
    fn send_until_read(local: &Local, frame: &[u8], stream: &mut UnixStream) -> Vec<u8> {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut len = [0u8; 4];
        loop {
            local.send(frame).unwrap();
            match stream.read_exact(&mut len) {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {}
                Err(e) => panic!("nothing from the endpoint: {e}"),
            }
        }
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn a_qemu_socket_carries_frames_both_ways_one_client_at_a_time() {
        let dir = TempDir::new("qemu");
        let path = dir.0.join("vm.sock");
        let source = Source::Listen(path.clone());
        let local =
            Local::open("qemu:test", source, 1500, 65509, &SocketAccess::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut vm = connect(&path);
        vm.write_all(&[0, 0, 0, 3, b'a', b'b', b'c']).unwrap();
        assert_eq!(device_recv(&local), b"abc");
        assert_eq!(send_until_read(&local, b"hello", &mut vm), b"hello");
        // A second client is closed at once; the first keeps its stream.
        let mut second = connect(&path);
        assert_eq!(second.read(&mut [0u8; 8]).unwrap(), 0);
        local.send(b"still").unwrap();
        assert_eq!(qemu_frame(&mut vm), b"still");
        // The VM goes; the next one is served. (Waiting for the endpoint to
        // see the end: a test running `cat` at the same time may hold a
        // forked copy of `vm` until its exec.)
        drop(vm);
        let deadline = Instant::now() + WAIT;
        while lock(&local.shared.writer).is_some() {
            assert!(
                Instant::now() < deadline,
                "the end of the stream went unseen"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut next = connect(&path);
        next.write_all(&[0, 0, 0, 1, b'z']).unwrap();
        assert_eq!(device_recv(&local), b"z");
        drop(local);
        assert!(!path.exists(), "the socket outlived the endpoint");
    }

    #[test]
    fn qemu_connect_connects_again_when_its_stream_ends() {
        let dir = TempDir::new("connect");
        let path = dir.0.join("passt.sock");
        let source = Source::Connect(path.clone());
        // Nothing listens yet: the endpoint keeps trying.
        let local = Local::open(
            "qemu-connect:test",
            source,
            1500,
            65509,
            &SocketAccess::default(),
        )
        .unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        for round in 0..2u8 {
            let (mut far, _) = listener.accept().unwrap();
            far.write_all(&[0, 0, 0, 1, round]).unwrap();
            assert_eq!(device_recv(&local), [round]);
            drop(far);
        }
    }

    #[test]
    fn a_vde_command_gets_one_record_per_frame_and_nothing_it_cannot_take() {
        // `cat` sends each record back as it came: length and frame.
        let source = Source::Command("exec cat".into());
        let local = Local::open("vde:cat", source, 1500, 65509, &SocketAccess::default()).unwrap();
        let largest = vec![7u8; VDE_MAX_FRAME];
        let deadline = Instant::now() + WAIT;
        // Until cat runs, frames are dropped with no local stream.
        let echoed = loop {
            local.send(b"ping").unwrap();
            let mut buf = [0u8; 16];
            if sys::wait_readable(
                local.raw_fd(),
                sys::NO_STOPS,
                Some(Instant::now() + Duration::from_millis(100)),
            )
            .unwrap()
                == Wait::Ready
            {
                let n = local.recv(&mut buf).unwrap();
                break buf[..n].to_vec();
            }
            assert!(Instant::now() < deadline, "cat never answered");
        };
        assert_eq!(echoed, b"ping");
        local.send(&largest).unwrap();
        assert_eq!(device_recv(&local), largest);
        // One byte more than vde_plug can read with its length: dropped, counted.
        let too_large = vec![8u8; VDE_MAX_FRAME + 1];
        local.send(&too_large).unwrap();
        local.send(b"after").unwrap();
        assert_eq!(device_recv(&local), b"after");
        assert_eq!(local.shared.tally.oversize.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_vm_that_reconnects_before_its_end_is_read_is_not_refused() {
        let dir = TempDir::new("restart");
        let path = dir.0.join("vm.sock");
        let source = Source::Listen(path.clone());
        let local = Local::open(
            "qemu:restart",
            source,
            1500,
            65509,
            &SocketAccess::default(),
        )
        .unwrap();
        // The old VM sends more than the device half holds and goes: the
        // inbound pump waits for room, its end still unread...
        let mut old = connect(&path);
        let frame = [0x11u8; 1000];
        let mut burst = Vec::new();
        for _ in 0..200 {
            burst.extend_from_slice(&1000u32.to_be_bytes());
            burst.extend_from_slice(&frame);
        }
        old.write_all(&burst).unwrap();
        drop(old);
        // ...when the new one connects and speaks.
        let mut new = connect(&path);
        new.write_all(&[0, 0, 0, 1, b'n']).unwrap();
        for i in 0..200 {
            assert_eq!(device_recv(&local), frame, "frame {i} of the old VM");
        }
        assert_eq!(device_recv(&local), b"n", "the new VM's frame");
    }
}
