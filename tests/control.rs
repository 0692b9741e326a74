//! The control socket and `taptun status` (issue 13, "Status"), in the point-to-point modes:
//! what status shows of the one peer before and during a session (state, device, remote
//! address, counters that grow with traffic), the JSON document and its fields, who may ask
//! (the file's mode, the -U owner, SO_PEERCRED), what happens to a socket already at the path
//! (a live one is kept, a stale one replaced, a regular file kept), the directory rule, -S
//! with -i, the SIGUSR1 per-peer line, and the file's removal at exit.
//!
//! Real processes on TAP devices in network namespaces (see `common`); the client of another
//! uid runs through setpriv, with a copy of the binary in a directory anyone may enter.

mod common;

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use common::{DEADLINE, Pair, Proc, TAPTUN, log_lines, wait_for, wait_log};

const ESTABLISHED: &[&str] = &["session with", "established"];
const NOBODY: u32 = 65534;

/// A directory under the temporary directory with the given mode (and a copy of the binary
/// when asked, runnable by anyone), removed when dropped.
struct Dir {
    path: PathBuf,
}

impl Dir {
    fn new(mode: u32) -> Dir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "taptun-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        DirBuilder::new().mode(0o700).create(&path).unwrap();
        // DirBuilder's mode goes through the umask; this does not.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        Dir { path }
    }

    fn socket(&self) -> PathBuf {
        self.path.join("ctl")
    }

    /// A copy of taptun in this directory (which must be 755) that uid 65534 can run.
    fn public_binary(&self) -> PathBuf {
        let bin = self.path.join("taptun");
        fs::copy(TAPTUN, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        // A child another test forked while the copy was open for writing holds that
        // descriptor until it execs (ETXTBSY until then).
        let runs = || {
            !matches!(
                Command::new(&bin).arg("--version").output(),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY)
            )
        };
        assert!(wait_for(DEADLINE, runs), "{} stays busy", bin.display());
        bin
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `taptun status PATH [--json]` as root.
fn status(path: &Path, json: bool) -> Output {
    let mut cmd = Command::new(TAPTUN);
    cmd.arg("status").arg(path);
    if json {
        cmd.arg("--json");
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// The status line of the one peer; panics when `taptun status` fails.
fn status_line(path: &Path) -> String {
    let out = status(path, false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "taptun status failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one peer, one line: {text:?}");
    lines[0].to_owned()
}

/// The number after `what ` in a status line ("in 12 frames/..." -> 12 for "in").
fn count_after(line: &str, what: &str) -> u64 {
    let rest = line
        .split_once(&format!(", {what} "))
        .unwrap_or_else(|| panic!("no `{what}` in {line}"))
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after `{what}` in {line}"))
}

/// Runs `taptun status` through setpriv as uid and gid `uid`, with no groups.
fn status_as(uid: u32, bin: &Path, path: &Path) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(bin)
        .arg("status")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// What python3's json module makes of `text`: the version, the sorted field names of the
/// first peer and of its drops, and its state, device, remote and frames_in; panics when
/// `text` is not one valid JSON document.
fn parse_json(text: &[u8]) -> String {
    let script = "import json, sys\n\
                  d = json.load(sys.stdin)\n\
                  p = d['peers'][0]\n\
                  print(d['version'], len(d['peers']))\n\
                  print(' '.join(sorted(p)))\n\
                  print(' '.join(sorted(p['drops'])))\n\
                  print(p['state'], p['device'], p['remote'], p['frames_in'])\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid JSON with the documented fields: {}\n{}",
        String::from_utf8_lossy(text),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_shows_the_peer_idle_then_up_with_its_device_remote_and_growing_counters() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o700);
    let (server_ctl, client_ctl) = (dir.path.join("server"), dir.path.join("client"));
    let server = p.server(&format!("-S {}", server_ctl.display()));
    let line = status_line(&server_ctl);
    assert!(
        line.starts_with("peer: idle, remote -, device tt0, session -, handshake - ago, "),
        "before any client: {line}"
    );
    let mode = fs::metadata(&server_ctl).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "the socket's mode");

    let client = p.client(
        "client",
        &format!("-d tt0 -S {} {}", client_ctl.display(), p.client_secrets()),
    );
    assert!(wait_log(&server, ESTABLISHED, 1, DEADLINE), "no session");
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    let line = status_line(&server_ctl);
    let client_addr = format!("10.213.{}.2:", p.n);
    assert!(
        line.starts_with(&format!("peer: up, remote {client_addr}")),
        "server, session up: {line}"
    );
    assert!(line.contains(", device tt0, session "), "{line}");
    assert!(!line.contains("handshake - ago"), "{line}");
    let line = status_line(&client_ctl);
    assert!(
        line.starts_with(&format!(
            "peer: up, remote {}:{}, device tt0, ",
            p.server_addr(),
            p.port
        )),
        "client, session up: {line}"
    );

    let before = status_line(&server_ctl);
    p.address_tap();
    p.assert_tap_ping();
    let after = status_line(&server_ctl);
    for what in ["in", "out"] {
        assert!(
            count_after(&after, what) > count_after(&before, what),
            "`{what}` did not grow with the pings:\nbefore: {before}\nafter:  {after}"
        );
    }

    let json = status(&server_ctl, true);
    assert!(json.status.success(), "{json:?}");
    let parsed = parse_json(&json.stdout);
    let mut lines = parsed.lines();
    assert_eq!(lines.next(), Some("1 1"), "version and one peer: {parsed}");
    assert_eq!(
        lines.next(),
        Some(
            "bytes_in bytes_out device drops frames_in frames_out name remote \
             session_age_secs since_handshake_secs state"
        ),
        "{parsed}"
    );
    assert_eq!(
        lines.next(),
        Some("backlog device invalid no_session offload oversize"),
        "{parsed}"
    );
    let last = lines.next().unwrap_or_default();
    assert!(
        last.starts_with(&format!("up tt0 {client_addr}")),
        "state, device, remote: {parsed}"
    );
    let frames_in: u64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        frames_in >= count_after(&after, "in"),
        "{parsed} vs {after}"
    );
    drop(client);
    drop(server);
}

#[test]
fn sigusr1_logs_the_per_peer_line() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("");
    let _client = p.good_client("client", "tt0");
    assert!(wait_log(&server, ESTABLISHED, 1, DEADLINE), "no session");
    let needle = &["peer: up, remote ", ", device tt0, session "];
    server.signal(libc::SIGUSR1);
    assert!(
        wait_log(&server, needle, 1, DEADLINE),
        "no per-peer line after SIGUSR1:\n{}",
        server.stderr()
    );
    let line = log_lines(&server, needle).pop().unwrap();
    assert!(
        line.contains(" drops 0 (no session 0, backlog 0, "),
        "{line}"
    );
}

#[test]
fn another_uid_is_refused_by_the_files_mode_and_by_its_credentials() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o755);
    let bin = dir.public_binary();
    let ctl = dir.socket();
    let server = p.server(&format!("-S {}", ctl.display()));
    assert_eq!(fs::metadata(&ctl).unwrap().uid(), 0, "owned by root");

    // Mode 0600: the kernel refuses the connection.
    let out = status_as(NOBODY, &bin, &ctl);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        err.contains("Permission denied") && err.contains("as the user taptun runs as"),
        "{err}"
    );

    // Opened by mistake: taptun itself refuses another uid.
    fs::set_permissions(&ctl, fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as(NOBODY, &bin, &ctl);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "another uid got an answer: {out:?}");
    assert!(err.contains("closed without answering"), "{err}");
    assert!(
        wait_log(&server, &["refused a client of uid 65534"], 1, DEADLINE),
        "the refusal is not logged"
    );
    // Root still may.
    assert!(status_line(&ctl).starts_with("peer: idle, "));
}

#[test]
fn with_u_the_socket_belongs_to_the_user_who_may_ask_as_root_may() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o755);
    let bin = dir.public_binary();
    let ctl = dir.socket();
    let server = p.server(&format!("-U nobody -S {}", ctl.display()));
    let meta = fs::metadata(&ctl).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (NOBODY, 0o600));
    let out = status_as(NOBODY, &bin, &ctl);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("peer: idle, remote -, device tt0, "),
        "{out:?}"
    );
    assert!(
        status_line(&ctl).starts_with("peer: idle, "),
        "root may ask"
    );
    let out = status_as(12345, &bin, &ctl);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    drop(server);
}

#[test]
fn a_live_socket_is_kept_a_stale_one_replaced_and_the_file_removed_at_exit() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o700);
    let ctl = dir.socket();
    // A socket nobody listens on any more: what a killed taptun leaves.
    drop(std::os::unix::net::UnixListener::bind(&ctl).unwrap());
    assert!(ctl.exists());
    let mut first = p.server(&format!("-S {}", ctl.display()));
    assert!(status_line(&ctl).starts_with("peer: idle, "));
    assert!(
        log_lines(&first, &["replacing the stale control socket"]).len() == 1,
        "{}",
        first.stderr()
    );

    // A second taptun (its own namespace pair, same path) must not take it over.
    let q = Pair::new();
    let args = format!(
        "-s -p {} -d tt0 {} -S {}",
        q.port,
        q.server_secrets(),
        ctl.display()
    );
    let mut second = Proc::start("second", q.a.taptun(&args), &q.scratch);
    let status_code = second.wait();
    assert_eq!(status_code.code(), Some(1), "{}", second.stderr());
    assert!(
        second.stderr().contains("another process answers on it"),
        "{}",
        second.stderr()
    );
    assert!(
        status_line(&ctl).starts_with("peer: idle, "),
        "the first taptun no longer serves"
    );

    assert!(first.terminate().success());
    assert!(!ctl.exists(), "the socket file outlived taptun");
}

#[test]
fn a_regular_file_at_the_path_is_kept() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o700);
    let ctl = dir.socket();
    fs::write(&ctl, "keep me").unwrap();
    let args = format!(
        "-s -p {} -d tt0 {} -S {}",
        p.port,
        p.server_secrets(),
        ctl.display()
    );
    let mut server = Proc::start("server", p.a.taptun(&args), &p.scratch);
    assert_eq!(server.wait().code(), Some(2), "{}", server.stderr());
    assert!(
        server.stderr().contains("exists and is not a socket"),
        "{}",
        server.stderr()
    );
    assert_eq!(fs::read_to_string(&ctl).unwrap(), "keep me");
}

#[test]
fn a_directory_others_may_write_without_the_sticky_bit_is_refused() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let open = Dir::new(0o777);
    let ctl = open.socket();
    let args = format!(
        "-s -p {} -d tt0 {} -S {}",
        p.port,
        p.server_secrets(),
        ctl.display()
    );
    let mut server = Proc::start("server", p.a.taptun(&args), &p.scratch);
    assert_eq!(server.wait().code(), Some(2), "{}", server.stderr());
    assert!(
        server
            .stderr()
            .contains("writable by others without the sticky bit"),
        "{}",
        server.stderr()
    );
    assert!(!ctl.exists());

    // The same with the sticky bit (as /tmp has it) is fine.
    let sticky = Dir::new(0o1777);
    let server = p.server(&format!("-S {}", sticky.socket().display()));
    assert!(status_line(&sticky.socket()).starts_with("peer: idle, "));
    drop(server);
}

#[test]
fn control_with_inetd_is_a_usage_error() {
    let out = Command::new(TAPTUN)
        .args([
            "-i",
            "-S",
            "/tmp/taptun-never-made",
            "-l",
            "@/k1",
            "-r",
            "@/k2",
        ])
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(2));
    assert!(!Path::new("/tmp/taptun-never-made").exists());
}

#[test]
fn status_without_a_server_says_what_to_do() {
    let dir = Dir::new(0o700);
    let out = status(&dir.socket(), false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("taptun: error: control socket ")
            && err.contains("is taptun running with -S and this path?"),
        "{err}"
    );
}

#[test]
fn a_hub_shows_every_listed_peer_in_file_order_with_its_own_state_and_device() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dir = Dir::new(0o700);
    let ctl = dir.socket();
    // "idle" is listed first and never connects; "alpha" is the Pair's client.
    let other = p.scratch.genkey("other");
    let peers = p.scratch.path.join("peers");
    let text = format!(
        "idle {} device=tti{n}\nalpha {} device=tta{n}\n",
        common::pubkey(&other),
        common::pubkey(&p.client_key),
        n = p.n
    );
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&peers)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
    let args = format!(
        "-s -p {} -v -l {} -A {} -S {}",
        p.port,
        p.server_key,
        peers.display(),
        ctl.display()
    );
    let hub = Proc::start("hub", p.a.taptun(&args), &p.scratch);
    assert!(
        wait_for(DEADLINE, || p.a.listening(p.port)),
        "the hub did not start listening"
    );
    let before = String::from_utf8(status(&ctl, false).stdout).unwrap();
    let lines: Vec<&str> = before.lines().collect();
    assert_eq!(lines.len(), 2, "{before}");
    assert!(
        lines[0].starts_with(&format!("idle: idle, remote -, device tti{}, ", p.n)),
        "{before}"
    );
    assert!(
        lines[1].starts_with(&format!("alpha: idle, remote -, device tta{}, ", p.n)),
        "{before}"
    );

    let _client = p.good_client("client", "tt0");
    assert!(wait_log(&hub, ESTABLISHED, 1, DEADLINE), "no session");
    let after = String::from_utf8(status(&ctl, false).stdout).unwrap();
    let lines: Vec<&str> = after.lines().collect();
    assert_eq!(lines.len(), 2, "{after}");
    assert!(lines[0].starts_with("idle: idle, remote -, "), "{after}");
    assert!(
        lines[1].starts_with(&format!("alpha: up, remote 10.213.{}.2:", p.n)),
        "{after}"
    );
    let json = status(&ctl, true);
    let script = "import json, sys\n\
                  d = json.load(sys.stdin)\n\
                  print(' '.join(p['name'] + '=' + p['state'] for p in d['peers']))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&json.stdout).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{json:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "idle=idle alpha=up"
    );

    // SIGUSR1: the same per-peer lines.
    hub.signal(libc::SIGUSR1);
    assert!(
        wait_log(&hub, &["alpha: up, remote "], 1, DEADLINE),
        "no per-peer line after SIGUSR1:\n{}",
        hub.stderr()
    );
    assert!(wait_log(&hub, &["idle: idle, remote -"], 1, DEADLINE));
}
