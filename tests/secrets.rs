//! What happens to secrets inside a running taptun (issue 10, items 1 and 8): the Argon2id work
//! area of a passphrase goes back to the system, so an idle session costs the same memory with
//! passphrases as with keys, and every command that handles a secret (`pubkey`, `genkey`,
//! `--check`, like the tunnel) is non-dumpable while it holds one.
//!
//! Real processes: idle sessions on TAP devices in network namespaces (see `common`), and
//! `pubkey`, `genkey` and `--check` run as nobody, held in a read, an open or a write while the
//! test looks at them in /proc. Without root these tests say they are skipped and pass, unless
//! TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{DEADLINE, Pair, Proc, Scratch, TAPTUN, wait_for};
use std::fs::{self, DirBuilder, File};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// How far above key mode an idle end in passphrase mode may be, in KiB (the target).
const SLACK_KIB: u64 = 1024;

/// The uid and gid of `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;

/// Like `Proc::start`, and also returns the pid (that of taptun itself: `ip netns exec` execs).
fn start_with_pid(name: &str, mut cmd: Command, scratch: &Scratch) -> (Proc, u32) {
    let log = scratch.path.join(format!("{name}.log"));
    let file = File::create(&log).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    (Proc::adopt(name, child, Some(log)), pid)
}

/// A field of /proc/PID/status given in kB, such as `VmRSS`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The memory of one end of an idle session, in KiB.
#[derive(Clone, Copy, Debug)]
struct Resident {
    vm_rss: u64,
    rss_anon: u64,
}

/// Starts a server and a client with the given secrets and EXTRA options in a new pair, waits
/// until a ping crosses the tunnel both ways, and returns what each end (server, client) then
/// holds resident.
fn idle_session(server_secrets: &str, client_secrets: &str, extra: &str) -> [Resident; 2] {
    let p = Pair::new();
    let server = p.a.taptun(&format!(
        "-s -p {} -v -d tt0 {server_secrets} {extra}",
        p.port
    ));
    let (mut server, server_pid) = start_with_pid("server", server, &p.scratch);
    assert!(
        wait_for(DEADLINE, || !server.running() || p.a.listening(p.port)) && server.running(),
        "taptun -s did not start listening"
    );
    let client = p.b.taptun(&format!(
        "-c -m {} -p {} -v -d tt0 {client_secrets} {extra}",
        p.server_addr(),
        p.port
    ));
    let (_client, client_pid) = start_with_pid("client", client, &p.scratch);
    p.address_tap();
    p.assert_tap_ping();
    [server_pid, client_pid].map(|pid| Resident {
        vm_rss: status_kib(pid, "VmRSS"),
        rss_anon: status_kib(pid, "RssAnon"),
    })
}

/// Idle memory with passphrases against idle memory with `genkey` keys, end by end.
fn passphrases_cost_no_more_than_keys(extra: &str) {
    let keys = {
        let scratch = Scratch::new();
        let (server, client) = (scratch.genkey("server"), scratch.genkey("client"));
        idle_session(
            &format!("-l {server} -r {client}"),
            &format!("-l {client} -r {server}"),
            extra,
        )
    };
    // The taptunnel style of the README and the demo.
    let passphrases = idle_session("-l one -r two", "-l two -r one", extra);
    for (end, (key, pass)) in ["server", "client"]
        .iter()
        .zip(keys.iter().zip(&passphrases))
    {
        eprintln!("{end} {extra}: keys {key:?}, passphrases {pass:?} (KiB)");
    }
    for (end, (key, pass)) in ["server", "client"]
        .iter()
        .zip(keys.iter().zip(&passphrases))
    {
        assert!(
            pass.vm_rss <= key.vm_rss + SLACK_KIB && pass.rss_anon <= key.rss_anon + SLACK_KIB,
            "idle {end} {extra}: {pass:?} with passphrases, {key:?} with keys (KiB): \
             the Argon2id memory was not given back"
        );
    }
}

#[test]
fn an_idle_session_with_passphrases_holds_no_more_than_one_with_keys() {
    if !common::require_root() {
        return;
    }
    passphrases_cost_no_more_than_keys("");
}

#[test]
fn an_idle_session_with_passphrases_and_plain_frames_holds_no_more_than_one_with_keys() {
    if !common::require_root() {
        return;
    }
    passphrases_cost_no_more_than_keys("-n");
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A new directory under the temporary directory that every user may enter (mode 755), with a
/// copy of the taptun binary in it: a process running as nobody can run it and reach files there
/// even when the build directory is private (as under /root). Returns the guard and the binary.
fn public_binary() -> (RemoveOnDrop, PathBuf) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "taptun-secrets-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    DirBuilder::new().mode(0o755).create(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let guard = RemoveOnDrop(dir);
    let bin = guard.0.join("taptun");
    fs::copy(TAPTUN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    // A child another test forked while the copy was open for writing holds
    // that descriptor until it execs, and until then running the copy fails
    // with ETXTBSY: wait for that moment to pass (later forks cannot have it).
    let runs = || {
        !matches!(
            Command::new(&bin).arg("--version").output(),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY)
        )
    };
    assert!(wait_for(DEADLINE, runs), "{} stays busy", bin.display());
    (guard, bin)
}

/// `bin ARGS` as nobody:nogroup (std drops root's supplementary groups with the uid).
fn as_nobody(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The hard limit on core files of process `pid`, from /proc/PID/limits ("0", "unlimited"...).
fn core_limit_hard(pid: u32) -> String {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max core file size"))
        .and_then(|values| values.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until process `pid`, running taptun as nobody, has made itself non-dumpable: the kernel
/// then hands the files in /proc/PID to root, which is how that flag shows from outside (the
/// directory itself keeps its owner). A dumpable process's files stay owned by its own uid,
/// nobody. Checks that core files are forbidden too (hard limit 0). `what` says what the
/// process is waiting for meanwhile.
fn assert_non_dumpable_while_running(pid: u32, what: &str) {
    let owner = || {
        fs::metadata(format!("/proc/{pid}/status"))
            .map(|m| m.uid())
            .ok()
    };
    // Between fork and exec the child is the test itself, still root: wait for taptun.
    let taptun_as_nobody = || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "taptun")
            && fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status.lines().any(|line| {
                    line.split_whitespace()
                        .eq(["Uid:", "65534", "65534", "65534", "65534"])
                })
            })
    };
    assert!(
        wait_for(DEADLINE, taptun_as_nobody),
        "{what}: taptun did not start as nobody"
    );
    assert!(
        wait_for(DEADLINE, || owner() == Some(0)),
        "{what}: /proc/{pid}/status is owned by uid {:?}: the process is still dumpable",
        owner()
    );
    assert_eq!(
        core_limit_hard(pid),
        "0",
        "{what}: the hard core-file limit"
    );
}

/// A child run as nobody, in a `Proc` (stopped if the test fails), with its output pipes.
struct Watched {
    proc: Proc,
    pid: u32,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Watched {
    fn spawn(name: &str, mut cmd: Command) -> (Watched, Option<ChildStdin>) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let pid = child.id();
        let proc = Proc::adopt(name, child, None);
        let watched = Watched {
            proc,
            pid,
            stdout,
            stderr,
        };
        (watched, stdin)
    }

    /// Waits for the exit; returns the status, stdout and stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = self.proc.wait();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        self.stdout.read_to_string(&mut stdout).unwrap();
        self.stderr.read_to_string(&mut stderr).unwrap();
        (status, stdout, stderr)
    }
}

#[test]
fn pubkey_is_non_dumpable_while_it_waits_for_the_secret() {
    if !common::require_root() {
        return;
    }
    let (_dir, bin) = public_binary();
    let mut cmd = as_nobody(&bin, &["pubkey"]);
    cmd.stdin(Stdio::piped());
    // The pipe stays open and empty: pubkey waits in its read of the secret.
    let (pubkey, stdin) = Watched::spawn("pubkey", cmd);
    let mut stdin = stdin.unwrap();
    assert_non_dumpable_while_running(pubkey.pid, "taptun pubkey reading its standard input");
    stdin
        .write_all(b"dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n")
        .unwrap();
    drop(stdin);
    let (status, stdout, stderr) = pubkey.finish();
    assert!(status.success(), "taptun pubkey: {stderr}");
    // RFC 7748's Alice.
    assert_eq!(stdout, "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n");
}

#[test]
fn check_is_non_dumpable_while_it_reads_a_secret_file() {
    if !common::require_root() {
        return;
    }
    let (dir, bin) = public_binary();
    // A FIFO as the secret file: --check waits in its open until we write the key.
    let fifo = dir.0.join("local.key");
    common::run(Command::new("mkfifo").args(["-m", "600"]).arg(&fifo));
    std::os::unix::fs::chown(&fifo, Some(NOBODY), Some(NOBODY)).unwrap();
    let local = format!("@{}", fifo.display());
    let peer = Scratch::new();
    let peer_public = common::pubkey(&peer.genkey("peer"));
    let cmd = as_nobody(
        &bin,
        &[
            "-s",
            "-C",
            "-d",
            "ttsecrets0",
            "-l",
            &local,
            "-k",
            &peer_public,
        ],
    );
    let (check, _) = Watched::spawn("--check", cmd);
    assert_non_dumpable_while_running(check.pid, "taptun --check opening its secret file");
    let key = common::run(Command::new(TAPTUN).arg("genkey"));
    let mut writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(key.as_bytes()).unwrap();
    drop(writer);
    let (status, stdout, stderr) = check.finish();
    assert!(status.success(), "taptun --check: {stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn genkey_is_non_dumpable_while_it_writes_the_key() {
    if !common::require_root() {
        return;
    }
    let (_dir, bin) = public_binary();
    // Its stdout a socket whose buffer is already full: genkey waits in its write of the key.
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let chunk = [b'x'; 4096];
    let mut filled = 0;
    for size in [chunk.len(), 1] {
        loop {
            match (&theirs).write(&chunk[..size]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the socket: {e}"),
            }
        }
    }
    theirs.set_nonblocking(false).unwrap();
    let mut cmd = as_nobody(&bin, &["genkey"]);
    cmd.stdout(OwnedFd::from(theirs));
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    // The command holds a copy of the socket: drop it, so that EOF comes when genkey exits.
    drop(cmd);
    let mut stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let mut genkey = Proc::adopt("genkey", child, None);
    assert_non_dumpable_while_running(pid, "taptun genkey writing the key");
    let mut output = Vec::new();
    ours.set_read_timeout(Some(DEADLINE)).unwrap();
    (&ours).read_to_end(&mut output).unwrap();
    assert!(genkey.wait().success(), "taptun genkey: {}", {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let key = String::from_utf8(output[filled..].to_vec()).unwrap();
    assert!(
        key.len() == 45 && key.ends_with("=\n"),
        "genkey printed {key:?}"
    );
}

/// Secrets given in TAPTUN_LOCAL and TAPTUN_REMOTE are wiped from the process's environment once
/// read: /proc/PID/environ shows them to root and to the same uid for as long as taptun runs.
#[test]
fn secrets_from_the_environment_are_wiped_from_it() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let key_text = |secret: &str| {
        let path = secret.strip_prefix('@').expect("a key file");
        fs::read_to_string(path).unwrap().trim().to_owned()
    };
    let (local, remote) = (key_text(&p.server_key), key_text(&p.client_key));
    let args = format!("-s -p {} -v -d tt0", p.port);
    let mut cmd = p.a.taptun(&args);
    cmd.env("TAPTUN_LOCAL", &local)
        .env("TAPTUN_REMOTE", &remote);
    let (mut server, pid) = start_with_pid("server", cmd, &p.scratch);
    let listening = wait_for(DEADLINE, || !server.running() || p.a.listening(p.port));
    assert!(listening && server.running(), "the server did not start");
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let shows = |secret: &str| {
        environ
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    };
    assert!(
        !shows(&local),
        "TAPTUN_LOCAL's key is still in /proc/{pid}/environ"
    );
    assert!(
        !shows(&remote),
        "TAPTUN_REMOTE's key is still in /proc/{pid}/environ"
    );
    // And the secrets were used: a client with the matching keys gets a session.
    let client = p.good_client("client", "tt0");
    assert!(
        common::wait_log(&client, &["session with", " established"], 1, DEADLINE),
        "no session with the server's secrets from its environment"
    );
}
