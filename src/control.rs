//! The control socket: `-S PATH` serves the [`Report`] on a Unix stream
//! socket, and `taptun status PATH [--json]` asks it.
//!
//! The protocol is one request line from the client, `text` or `json`; the
//! server answers (one line per peer, or one JSON document, each ending in
//! a newline) and closes. What it shows is the [`Report`]: names,
//! addresses, ages and counters, never a key.
//!
//! Who may ask: the socket file has mode 0600 and belongs to the -U user if
//! there is one (it is made before privileges drop); on top of that every
//! connection's uid, as the kernel recorded it (SO_PEERCRED), must be the
//! process's own (after -U) or root, else it is closed unanswered. The
//! socket is only made in a directory that others cannot write or that has
//! the sticky bit, so nobody else can swap it for theirs; an existing PATH
//! is replaced only when it is a socket nobody answers on (a taptun that
//! was killed), never a live one nor another kind of file.
//!
//! Bounds: at most [`MAX_CLIENTS`] clients at once, each on a thread of its
//! own (the next is closed at once); each has [`CLIENT_TIME`] to send its
//! request and as long again to take the answer. Every wait also watches
//! the process's stops, so the server ends with the process, and the socket
//! file is removed when the [`ControlSocket`] is dropped.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::status::Report;
use crate::sys::{self, Stop, Wait};

/// Clients served at once; more are closed unanswered.
pub const MAX_CLIENTS: usize = 4;
/// How long a client has to send its request, and then to read the answer.
pub const CLIENT_TIME: Duration = Duration::from_secs(1);
/// The longest request line: "json\n" with room to spare.
const MAX_REQUEST: usize = 64;
/// How long `taptun status` waits for the answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer `taptun status` takes (a hub of 10,000 peers sends a
/// few MiB).
const MAX_ANSWER: u64 = 64 << 20;

/// The hint for a client that is refused by the server or the file's mode.
const HINT_USER: &str = "run `taptun status` as the user taptun runs as (its -U user) or as root";
/// The hint for a socket with nobody behind it.
const HINT_RUNNING: &str = "is taptun running with -S and this path?";

/// A listening control socket at its path; removes the file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file we made, so that the drop never removes
    /// a file someone put there since.
    made: (u64, u64),
}

fn control_err(path: &Path, what: impl Into<String>, source: Option<io::Error>) -> Error {
    Error::Control {
        path: path.to_owned(),
        what: what.into(),
        source,
        hint: "",
        misconfigured: false,
    }
}

impl ControlSocket {
    /// Makes the socket at `path`, mode 0600, owned by `owner` (uid and
    /// gid, for -U) if given. Call it while still root.
    ///
    /// # Errors
    /// A parent directory writable by others without the sticky bit, a
    /// path that exists and is not a socket (both exit 2), a socket someone
    /// answers on, or any failure to make it.
    pub fn bind(
        path: &Path,
        owner: Option<(libc::uid_t, libc::gid_t)>,
    ) -> Result<ControlSocket, Error> {
        check_directory(path)?;
        replace_stale(path)?;
        let listener = listen(path, owner).inspect_err(|_| {
            // Only a file we made: replace_stale left nothing at `path`.
            let _ = std::fs::remove_file(path);
        })?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| control_err(path, "cannot read the new socket's metadata", Some(e)))?;
        ::log::info!("status on control socket {}", path.display());
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            made: (meta.dev(), meta.ino()),
        })
    }

    /// Answers clients with what `report` gives at the moment each asks,
    /// until one of `stops` is set; returns once every client thread ended.
    pub fn serve(&self, report: &(dyn Fn() -> Report + Sync), stops: &[&Stop]) {
        let active = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            loop {
                match sys::wait_readable(self.listener.as_raw_fd(), stops, None) {
                    Ok(Wait::Ready) => {}
                    Ok(_) => return,
                    Err(e) => {
                        ::log::error!("control socket {}: poll: {e}", self.path.display());
                        return;
                    }
                }
                let stream = match self.listener.accept() {
                    Ok((stream, _)) => stream,
                    // Gone before we took it, or out of descriptors: the
                    // next poll tells.
                    Err(e) => {
                        ::log::debug!("control socket: accept: {e}");
                        if e.kind() != io::ErrorKind::WouldBlock {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        continue;
                    }
                };
                if !self.admitted(&stream) {
                    continue;
                }
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    ::log::debug!(
                        "control socket: {MAX_CLIENTS} clients already, one more closed unanswered"
                    );
                    continue;
                }
                let active = &active;
                let client = std::thread::Builder::new()
                    .name("control client".into())
                    .spawn_scoped(scope, move || {
                        if let Err(e) = answer(stream, report, stops) {
                            ::log::debug!("control socket: client: {e}");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = client {
                    // The stream went with the closure: the client is closed.
                    ::log::warn!("control socket: cannot start a thread for a client: {e}");
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
    }

    /// Whether the client's uid (SO_PEERCRED) is ours or root's; logs why not.
    fn admitted(&self, stream: &UnixStream) -> bool {
        let ours = sys::effective_uid();
        match sys::peer_uid(stream.as_raw_fd()) {
            Ok(uid) if uid == ours || uid == 0 => true,
            Ok(uid) => {
                ::log::info!(
                    "control socket: refused a client of uid {uid} (only uid {ours} and root may ask)"
                );
                false
            }
            Err(e) => {
                ::log::info!("control socket: refused a client whose uid is unknown: {e}");
                false
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.made);
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            // With -U in a directory only root may write: the next start
            // finds it unanswered and replaces it.
            ::log::info!(
                "cannot remove the control socket {}: {e} (the next start replaces it)",
                self.path.display()
            );
        }
    }
}

/// Refuses a directory where others could remove our socket and put theirs
/// in its place: writable by others, without the sticky bit.
fn check_directory(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        control_err(
            path,
            format!("cannot use directory {}", dir.display()),
            Some(e),
        )
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::Control {
            path: path.to_owned(),
            what: format!(
                "its directory {} is writable by others without the sticky bit, so anyone could \
                 replace the socket",
                dir.display()
            ),
            source: None,
            hint: "put it in a directory only root or taptun's user can write, such as \
                   /run/taptun, or chmod +t the directory",
            misconfigured: true,
        });
    }
    Ok(())
}

/// Removes a socket at `path` that nobody answers on (a taptun killed
/// before it could remove it); refuses anything else that is there.
fn replace_stale(path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(control_err(path, "cannot check what is there", Some(e))),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Control {
            path: path.to_owned(),
            what: "exists and is not a socket".into(),
            source: None,
            hint: "give -S a path that does not exist, or remove the file if it is no longer needed",
            misconfigured: true,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::Control {
            path: path.to_owned(),
            what: "another process answers on it".into(),
            source: None,
            hint: "another taptun runs with this -S path: stop it, or give each taptun a path of \
                   its own",
            misconfigured: false,
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            ::log::info!(
                "replacing the stale control socket {} (nobody answers on it)",
                path.display()
            );
            std::fs::remove_file(path)
                .map_err(|e| control_err(path, "cannot remove the stale socket", Some(e)))
        }
        Err(e) => Err(control_err(
            path,
            "cannot tell whether another process answers on it",
            Some(e),
        )),
    }
}

/// Binds, sets mode and owner, and only then listens: until listen(2) a
/// connection is refused, so nobody can get in before the mode is 0600.
fn listen(path: &Path, owner: Option<(libc::uid_t, libc::gid_t)>) -> Result<UnixListener, Error> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let err = |what: &str| {
        let what = what.to_owned();
        move |e| control_err(path, what, Some(e))
    };
    let address = SockAddr::unix(path).map_err(err("not a usable socket path"))?;
    let socket =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err("cannot make a socket"))?;
    socket.bind(&address).map_err(err("cannot bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("cannot set mode 0600"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(err("cannot give it to the -U user"))?;
    }
    socket
        .listen(MAX_CLIENTS as i32)
        .map_err(err("cannot listen"))?;
    socket
        .set_nonblocking(true)
        .map_err(err("cannot make it non-blocking"))?;
    Ok(UnixListener::from(OwnedFd::from(socket)))
}

/// Serves one client: reads its request line, writes the answer, closes.
fn answer(mut stream: UnixStream, report: &dyn Fn() -> Report, stops: &[&Stop]) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let request = read_request(&mut stream, stops, Instant::now() + CLIENT_TIME)?;
    let text = match request.trim() {
        "text" => {
            let mut lines = report().lines().join("\n");
            lines.push('\n');
            lines
        }
        "json" => {
            let mut json = report().to_json();
            json.push('\n');
            json
        }
        other => {
            let shown: String = other.chars().filter(|c| !c.is_control()).take(20).collect();
            format!("error: unknown request `{shown}` (send `text` or `json`)\n")
        }
    };
    write_all(
        &mut stream,
        text.as_bytes(),
        stops,
        Instant::now() + CLIENT_TIME,
    )
}

/// The request: up to the first newline, or to EOF.
fn read_request(stream: &mut UnixStream, stops: &[&Stop], deadline: Instant) -> io::Result<String> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if buf[..len].contains(&b'\n') || len == buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(sys::wait_readable(
                    stream.as_raw_fd(),
                    stops,
                    Some(deadline),
                )?)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let line = buf[..len].split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).into_owned())
}

fn write_all(
    stream: &mut UnixStream,
    mut data: &[u8],
    stops: &[&Stop],
    deadline: Instant,
) -> io::Result<()> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(sys::wait_writable(
                    stream.as_raw_fd(),
                    stops,
                    Some(deadline),
                )?)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A wait's outcome as an error when it is not "ready".
fn wait(outcome: Wait) -> io::Result<()> {
    match outcome {
        Wait::Ready => Ok(()),
        Wait::TimedOut => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("too slow (more than {CLIENT_TIME:?})"),
        )),
        Wait::Stopped => Err(io::Error::other("taptun is stopping")),
    }
}

/// `taptun status PATH [--json]`: asks the control socket at `path` and
/// copies the answer to `out`.
///
/// # Errors
/// No socket, nobody answering, a refusal (by the file's mode or by the
/// server's uid check), or a failing output; all exit 1.
pub fn query(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let fail = |what: &str, source: Option<io::Error>, hint: &'static str| Error::Control {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
        hint,
        misconfigured: false,
    };
    let mut stream = UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => HINT_USER,
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => HINT_RUNNING,
            _ => "",
        };
        fail("cannot connect", Some(e), hint)
    })?;
    let io_err = |e| fail("no answer", Some(e), "");
    stream
        .set_read_timeout(Some(QUERY_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(QUERY_TIMEOUT))
        .map_err(io_err)?;
    let request: &[u8] = if json { b"json\n" } else { b"text\n" };
    // A server that refused us may have closed before our request arrived:
    // the empty answer below says so better than EPIPE.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let read = (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer);
    // A server that refuses us closes with our request unread, which the
    // kernel reports as a reset.
    let refused = |e: &io::Error| e.kind() == io::ErrorKind::ConnectionReset;
    match read {
        Ok(_) if !answer.is_empty() => {}
        Ok(_) => return Err(fail("closed without answering", None, HINT_USER)),
        Err(e) if answer.is_empty() && refused(&e) => {
            return Err(fail("closed without answering", None, HINT_USER));
        }
        Err(e) => return Err(fail("no complete answer", Some(e), "")),
    }
    out.write_all(&answer)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write the status", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PeerReport, Report};

    /// A scratch directory of mode 0700 for the sockets, removed at drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            use std::os::unix::fs::DirBuilderExt;
            let path =
                std::env::temp_dir().join(format!("taptun-control-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn report() -> Report {
        let counters = crate::relay::Counters::default();
        Report::new(vec![PeerReport::from_counters(
            "peer",
            "tt0",
            &counters,
            Instant::now(),
        )])
    }

    /// Triggers its stop when dropped, also while a failing test unwinds:
    /// the scope that joins the server thread must not wait for ever.
    struct StopOnDrop<'a>(&'a Stop);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.trigger();
        }
    }

    /// Serves a control socket in a new directory named `name` while `test`
    /// runs with its path; checks that the file is gone afterwards.
    fn with_server(name: &str, test: impl FnOnce(&Path)) {
        let dir = Dir::new(name);
        let path = dir.0.join("ctl");
        let control = ControlSocket::bind(&path, None).unwrap();
        let stop = Stop::new().unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| control.serve(&report, &[&stop]));
            let _stop = StopOnDrop(&stop);
            test(&path);
        });
        drop(control);
        assert!(!path.exists(), "the socket file outlived the server");
    }

    /// Sends `request` and reads to EOF; a reset before any answer (the
    /// server closed with our request unread) reads as nothing.
    fn ask(path: &Path, request: &[u8]) -> Vec<u8> {
        let mut stream = UnixStream::connect(path).unwrap();
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && answer.is_empty() => {}
            Err(e) => panic!("reading the answer: {e}"),
        }
        answer
    }

    #[test]
    fn answers_text_and_json_with_mode_600_and_removes_the_socket() {
        with_server("serve", |path| {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o600);
            let text = String::from_utf8(ask(path, b"text\n")).unwrap();
            assert!(
                text.starts_with("peer: idle, remote -, device tt0, "),
                "{text}"
            );
            assert!(text.ends_with('\n'));
            let json = String::from_utf8(ask(path, b"json\n")).unwrap();
            assert!(
                json.starts_with("{\"version\":1,\"peers\":[{\"name\":\"peer\""),
                "{json}"
            );
            let other = String::from_utf8(ask(path, b"keys\n")).unwrap();
            assert!(
                other.starts_with("error: unknown request `keys`"),
                "{other}"
            );
            let mut out = Vec::new();
            query(path, true, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), json);
        });
    }

    #[test]
    fn a_fifth_client_is_closed_at_once_while_four_hold_their_slots() {
        with_server("limit", |path| {
            // Four that send nothing hold every slot (for CLIENT_TIME).
            let silent: Vec<UnixStream> = (0..MAX_CLIENTS)
                .map(|_| UnixStream::connect(path).unwrap())
                .collect();
            // Let the server take them before the fifth.
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            let answer = ask(path, b"text\n");
            assert!(answer.is_empty(), "the fifth client got {answer:?}");
            assert!(started.elapsed() < CLIENT_TIME / 2, "not closed at once");
            drop(silent);
        });
    }

    #[test]
    fn a_silent_client_is_dropped_after_its_time() {
        with_server("silent", |path| {
            let mut silent = UnixStream::connect(path).unwrap();
            silent.set_read_timeout(Some(CLIENT_TIME * 5)).unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 16];
            assert_eq!(silent.read(&mut buf).unwrap(), 0);
            let took = started.elapsed();
            assert!(
                took >= CLIENT_TIME / 2 && took < CLIENT_TIME * 4,
                "{took:?}"
            );
        });
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = Dir::new("file");
        let path = dir.0.join("ctl");
        std::fs::write(&path, "data").unwrap();
        let e = ControlSocket::bind(&path, None)
            .err()
            .expect("a file was replaced");
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[test]
    fn query_names_what_to_do_when_nobody_serves() {
        let dir = Dir::new("query");
        let e = query(&dir.0.join("none"), false, &mut Vec::new()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("cannot connect"), "{text}");
        assert!(text.contains(HINT_RUNNING), "{text}");
        assert_eq!(e.exit_code(), crate::error::EXIT_FAILURE);
    }
}
