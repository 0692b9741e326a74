//! Harness for the end-to-end tests on real TAP/TUN devices: throwaway network namespaces joined by
//! a veth pair, taptun processes that are always stopped, keys in a private temporary directory, and
//! polling helpers with deadlines instead of fixed sleeps.
//!
//! Every guard cleans up in `Drop`, so a failing test leaves no namespace, process or file behind;
//! when a test panics, each `Proc` prints its stderr so the failure message says what taptun saw.
//! The addresses used (10.213.N.0/24 on the veth, 10.214.N.0/24 and 10.215.N.0/24 in the tunnel)
//! exist only inside the namespaces made here.

// Each test file uses its own subset of the harness.
#![allow(dead_code)]

pub mod hub;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const TAPTUN: &str = env!("CARGO_BIN_EXE_taptun");

/// How long anything a test waits for may take: generous, so a slow machine does not fail a test,
/// and still far below the 30 s a test may last.
pub const DEADLINE: Duration = Duration::from_secs(10);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process: names of namespaces and temporary directories carry
/// it with the process id, so parallel tests (and parallel `cargo test` runs) never collide.
fn unique_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// True when the namespace tests can run. Otherwise prints why and returns false (the test then
/// returns early), or panics when TAPTUN_REQUIRE_NETNS=1 says that skipping is a failure.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ip_netns = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = if !root {
        "not root"
    } else if !ip_netns {
        "`ip netns list` does not work (install iproute2)"
    } else if fs::metadata("/dev/net/tun").is_err() {
        "no /dev/net/tun"
    } else {
        return true;
    };
    if std::env::var("TAPTUN_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("TAPTUN_REQUIRE_NETNS=1 but the namespace tests cannot run: {missing}");
    }
    // Straight to fd 2: the test harness captures eprintln! of passing tests,
    // and a skip should be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: needs root and ip netns ({missing})"
    );
    false
}

/// Runs a command to completion and returns its stdout; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `done` every 20 ms until it returns true (then true) or `deadline` has passed (false).
pub fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace made for one test, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Makes a namespace named `tt{pid}n{id}{role}` with `lo` up.
    pub fn new(id: u32, role: char) -> Netns {
        let name = format!("tt{}n{id}{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NAME ARGS`, the arguments split at whitespace; panics if it fails.
    pub fn ip(&self, args: &str) -> String {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// A command that runs `program` inside this namespace (`ip netns exec` execs it, so the
    /// child's pid is the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `taptun ARGS` inside this namespace, the arguments split at whitespace, with no secret
    /// inherited from the environment of the test.
    pub fn taptun(&self, args: &str) -> Command {
        let mut cmd = self.command(TAPTUN);
        cmd.args(args.split_whitespace())
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE");
        cmd
    }

    /// Whether device `dev` exists here and is administratively up.
    pub fn device_up(&self, dev: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", "dev", dev])
            .stderr(Stdio::null())
            .output();
        // "5: tt0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 ..."
        out.is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && text
                    .split(['<', '>'])
                    .nth(1)
                    .is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
        })
    }

    /// Waits until taptun has made device `dev` here and set its link up; panics otherwise.
    pub fn wait_for_device(&self, dev: &str) {
        assert!(
            wait_for(DEADLINE, || self.device_up(dev)),
            "device {dev} did not come up in {} within {DEADLINE:?}",
            self.name
        );
    }

    /// Whether something listens on TCP `port` in this namespace (IPv4 or IPv6), read from the
    /// kernel's socket table as seen from inside the namespace.
    pub fn listening(&self, port: u16) -> bool {
        in_netns(self, move || {
            let local = format!(":{port:04X}");
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .filter_map(|table| fs::read_to_string(table).ok())
                .any(|table| {
                    table.lines().skip(1).any(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        // fields[1] is "ADDR:PORT" in hex, fields[3] the state; 0A is LISTEN.
                        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
                    })
                })
        })
    }

    /// One `ping -c 1 -W 1 ADDR` from this namespace, retried until it succeeds or DEADLINE passes.
    pub fn ping(&self, addr: &str) -> bool {
        wait_for(DEADLINE, || {
            self.command("ping")
                .args(["-c", "1", "-W", "1", addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Also deletes the veth end and any device left in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a new thread that has entered namespace `ns` (only that thread: the rest of the test
/// stays where it is) and returns its result. A socket keeps the namespace it was made in, so
/// listeners and connections made here can be used from any thread afterwards; a process spawned
/// here starts in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", ns.name);
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: `file` stays open across the call; CLONE_NEWNET moves only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Accepts one connection on `listener`, or panics when none arrives within DEADLINE.
pub fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    let ok = wait_for(DEADLINE, || match listener.accept() {
        Ok((stream, _)) => {
            accepted = Some(stream);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    });
    assert!(ok, "no connection within {DEADLINE:?}");
    let stream = accepted.unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// A private temporary directory (mode 700) for keys and logs, removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "taptun-test-{}-{}",
            std::process::id(),
            unique_id()
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Scratch { path }
    }

    /// Writes a new `taptun genkey` key to NAME.key (mode 600) and returns "@PATH", a SECRET.
    pub fn genkey(&self, name: &str) -> String {
        let key = run(Command::new(TAPTUN).arg("genkey"));
        assert_eq!(key.trim().len(), 44, "genkey printed {key:?}");
        let path = self.path.join(format!("{name}.key"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(key.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        format!("@{}", path.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The public key (`taptun pubkey`) of a SECRET given as "@PATH".
pub fn pubkey(secret: &str) -> String {
    let path = secret
        .strip_prefix('@')
        .expect("a secret of the form @PATH");
    let key = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    run(Command::new(TAPTUN).arg("pubkey").stdin(key))
        .trim()
        .to_owned()
}

/// A spawned process, stopped (SIGTERM, then SIGKILL) and reaped when dropped. When the test is
/// failing, dropping it prints its stderr.
pub struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stderr into `name`.log in `scratch`.
    pub fn start(name: &str, mut cmd: Command, scratch: &Scratch) -> Proc {
        let log = scratch.path.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc::adopt(name, child, Some(log))
    }

    /// Takes charge of a child spawned elsewhere; `log` is where its stderr goes, if anywhere.
    pub fn adopt(name: &str, child: Child, log: Option<PathBuf>) -> Proc {
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn stderr(&self) -> String {
        match &self.log {
            Some(log) => fs::read_to_string(log).unwrap_or_else(|e| format!("({e})")),
            None => "(not captured)".to_owned(),
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself; panics when it is still running after DEADLINE.
    pub fn wait(&mut self) -> ExitStatus {
        let mut status = None;
        wait_for(DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("{} still running after {DEADLINE:?}", self.name))
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our unreaped child, so it is not reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            if !wait_for(Duration::from_secs(3), || !self.running()) {
                let _ = self.child.kill();
            }
        }
        let status = match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        };
        if thread::panicking() {
            eprintln!("--- {} ({status}) stderr ---\n{}", self.name, self.stderr());
        }
    }
}

/// The usual arrangement: namespace `a` (the server's side) and `b` (the client's), joined by a
/// veth pair with 10.213.N.1/24 in `a` and 10.213.N.2/24 in `b`, plus two `genkey` keys.
pub struct Pair {
    pub n: u32,
    pub a: Netns,
    pub b: Netns,
    pub scratch: Scratch,
    /// SECRET of the server (`@PATH` of a genkey file).
    pub server_key: String,
    /// SECRET of the client.
    pub client_key: String,
    /// The TCP port of this pair's server: per namespace anyway, but unique to read logs easily.
    pub port: u16,
}

impl Pair {
    pub fn new() -> Pair {
        let id = unique_id();
        let n = id % 250 + 1;
        let (a, b) = (Netns::new(id, 'a'), Netns::new(id, 'b'));
        // Interface names are the namespace names: unique, and at most 15 bytes.
        run(Command::new("ip").args([
            "link", "add", &a.name, "netns", &a.name, "type", "veth", "peer", "name", &b.name,
            "netns", &b.name,
        ]));
        for (ns, host) in [(&a, 1), (&b, 2)] {
            ns.ip(&format!("addr add 10.213.{n}.{host}/24 dev {}", ns.name));
            ns.ip(&format!("link set {} up", ns.name));
        }
        let scratch = Scratch::new();
        let server_key = scratch.genkey("server");
        let client_key = scratch.genkey("client");
        Pair {
            n,
            a,
            b,
            scratch,
            server_key,
            client_key,
            port: 20000 + n as u16,
        }
    }

    /// The veth address of namespace `a`, where the server listens.
    pub fn server_addr(&self) -> String {
        format!("10.213.{}.1", self.n)
    }

    /// `-l SERVER -r CLIENT`: the server's side of the swapped secrets.
    pub fn server_secrets(&self) -> String {
        format!("-l {} -r {}", self.server_key, self.client_key)
    }

    /// `-l CLIENT -r SERVER`: the client's side.
    pub fn client_secrets(&self) -> String {
        format!("-l {} -r {}", self.client_key, self.server_key)
    }

    /// Starts `taptun -s -p PORT -v -d tt0 SERVER_SECRETS EXTRA` in `a` and waits until it listens.
    pub fn server(&self, extra: &str) -> Proc {
        let args = format!(
            "-s -p {} -v -d tt0 {} {extra}",
            self.port,
            self.server_secrets()
        );
        let mut server = Proc::start("server", self.a.taptun(&args), &self.scratch);
        let listening = wait_for(DEADLINE, || {
            !server.running() || self.a.listening(self.port)
        });
        assert!(
            listening && server.running(),
            "taptun -s did not start listening"
        );
        server
    }

    /// Starts `taptun -c -m SERVER_ADDR -p PORT -v ARGS` in `b`; its stderr goes to NAME.log.
    pub fn client(&self, name: &str, args: &str) -> Proc {
        let args = format!("-c -m {} -p {} -v {args}", self.server_addr(), self.port);
        Proc::start(name, self.b.taptun(&args), &self.scratch)
    }

    /// Starts a one-session client (`--once`): it exits when its session ends.
    pub fn client_once(&self, name: &str, args: &str) -> Proc {
        self.client(name, &format!("--once {args}"))
    }

    /// Starts a one-session client on device `dev` with the right secrets.
    pub fn good_client_once(&self, name: &str, dev: &str) -> Proc {
        self.client_once(name, &format!("-d {dev} {}", self.client_secrets()))
    }

    /// Starts a client on device `dev` with the right secrets.
    pub fn good_client(&self, name: &str, dev: &str) -> Proc {
        self.client(name, &format!("-d {dev} {}", self.client_secrets()))
    }

    /// Waits for the TAP devices `tt0` in `a` and `b`, then gives them 10.214.N.1/24 and
    /// 10.214.N.2/24.
    pub fn address_tap(&self) {
        self.a.wait_for_device("tt0");
        self.a
            .ip(&format!("addr add {}/24 dev tt0", self.tap_addr(1)));
        self.address_client_tap("tt0");
    }

    /// Waits for the client's TAP device `dev` in `b`, then gives it 10.214.N.2/24.
    pub fn address_client_tap(&self, dev: &str) {
        self.b.wait_for_device(dev);
        self.b
            .ip(&format!("addr add {}/24 dev {dev}", self.tap_addr(2)));
    }

    /// 10.214.N.HOST, the tunnel address of `a` (1) or `b` (2) in tap mode.
    pub fn tap_addr(&self, host: u8) -> String {
        format!("10.214.{}.{host}", self.n)
    }

    /// Pings across the tap tunnel both ways (see `assert_ping_both_ways`).
    pub fn assert_tap_ping(&self) {
        self.assert_ping_both_ways(&self.tap_addr(1), &self.tap_addr(2));
    }

    /// Pings across the tunnel both ways, from `b` first: its ARP request also refreshes what `a`
    /// remembers of `b`'s MAC address, which changes when a new client replaces the old one.
    pub fn assert_ping_both_ways(&self, addr_a: &str, addr_b: &str) {
        assert!(self.b.ping(addr_a), "ping from b to {addr_a} failed");
        assert!(self.a.ping(addr_b), "ping from a to {addr_b} failed");
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so a failing transfer can be reproduced.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Reads from `stream` until the peer closes it (EOF or reset): true if that happens within
/// DEADLINE with no byte received, false if the peer sent anything or kept it open.
pub fn closed_without_answer(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    let mut answered = false;
    let closed = wait_for(DEADLINE, || match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => {
            answered = true;
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true, // reset: the server closed while our garbage was still unread
    });
    closed && !answered
}

/// How long one read or write of an echo transfer may wait for the other end: generous, since
/// the machine may be busy, and it bounds only a stall, never the speed of the transfer.
pub const STALL: Duration = Duration::from_secs(60);

/// Echoes `len` pseudo-random bytes over TCP from `p.b` to an echo server in `p.a` listening on
/// `addr_a` (an address in the tunnel), so that the bytes cross the tunnel in both directions,
/// and checks every byte that comes back against those sent, as it arrives.
pub fn echo_across_the_tunnel(p: &Pair, addr_a: &str, len: usize, seed: u64) {
    echo_between(
        &p.a,
        &p.b,
        &format!("{addr_a}:{}", p.port + 1000),
        len,
        seed,
    );
}

/// As [`echo_across_the_tunnel`], from namespace `b` to an echo server in `a` listening on
/// `addr` (ADDRESS:PORT).
pub fn echo_between(a: &Netns, b: &Netns, addr: &str, len: usize, seed: u64) {
    let addr = addr.to_owned();
    let bind_addr = addr.clone();
    let listener = in_netns(a, move || TcpListener::bind(bind_addr).unwrap());
    let echo = thread::spawn(move || -> io::Result<u64> {
        let stream = accept_within(&listener);
        stream.set_read_timeout(Some(STALL))?;
        stream.set_write_timeout(Some(STALL))?;
        let copied = io::copy(&mut &stream, &mut &stream)?;
        stream.shutdown(Shutdown::Write)?;
        Ok(copied)
    });

    let stream = in_netns(b, move || TcpStream::connect(addr).unwrap());
    stream.set_read_timeout(Some(STALL)).unwrap();
    stream.set_write_timeout(Some(STALL)).unwrap();
    let sent = Arc::new(pseudo_random_bytes(len, seed));
    let writer = {
        let (mut stream, sent) = (stream.try_clone().unwrap(), Arc::clone(&sent));
        thread::spawn(move || -> io::Result<()> {
            stream.write_all(&sent)?;
            stream.shutdown(Shutdown::Write)
        })
    };

    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0;
    loop {
        let n = match (&stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the echo after {received} of {len} bytes: {e}"),
        };
        let end = received + n;
        assert!(end <= len, "{end} bytes echoed back, {len} sent");
        if buf[..n] != sent[received..end] {
            let at = buf[..n]
                .iter()
                .zip(&sent[received..end])
                .position(|(a, b)| a != b)
                .unwrap();
            panic!("echoed byte {} differs from the one sent", received + at);
        }
        received = end;
    }
    writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("sending {len} bytes: {e}"));
    let copied = echo
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the echo server: {e}"));
    assert_eq!(copied, len as u64, "bytes the echo server received");
    assert_eq!(received, len, "bytes echoed back");
}

/// An iperf3 transfer of `bytes` (iperf3's -n syntax: "16M") between a client in `from` and a
/// one-off server in `to` listening on `addr:port`, client to server unless `extra` has "-R".
/// Returns the receiver's rate in Mbit/s, or why it failed; a transfer without a result within
/// `limit` (a stall) is killed and is a failure.
#[allow(clippy::too_many_arguments)]
pub fn iperf3(
    to: &Netns,
    from: &Netns,
    addr: &str,
    port: u16,
    bytes: &str,
    extra: &[&str],
    limit: Duration,
    scratch: &Scratch,
) -> Result<f64, String> {
    let port_arg = port.to_string();
    let mut server_cmd = to.command("iperf3");
    server_cmd.args(["-s", "-1", "-B", addr, "-p", &port_arg]);
    let mut server = Proc::start(&format!("iperf3-server-{port}"), server_cmd, scratch);
    let listening = wait_for(DEADLINE, || !server.running() || to.listening(port));
    if !listening || !server.running() {
        return Err(format!("iperf3 -s did not start: {}", server.stderr()));
    }
    let out_path = scratch.path.join(format!("iperf3-client-{port}.out"));
    let out = File::create(&out_path).unwrap();
    let mut client = from
        .command("iperf3")
        .args(["-c", addr, "-p", &port_arg, "-n", bytes, "-f", "m"])
        .args(["--connect-timeout", "3000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 -c: {e}"));
    let mut status = None;
    wait_for(limit, || {
        status = client.try_wait().unwrap();
        status.is_some()
    });
    let output = || fs::read_to_string(&out_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = client.kill();
        let _ = client.wait();
        return Err(format!(
            "no result within {limit:?} (stalled):\n{}",
            output()
        ));
    };
    if !status.success() {
        return Err(format!("iperf3 -c failed ({status}):\n{}", output()));
    }
    // "[  5]   0.00-1.02  sec  16.0 MBytes   131 Mbits/sec                  receiver"
    output()
        .lines()
        .filter(|line| line.trim_end().ends_with("receiver"))
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "Mbits/sec")?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        })
        .ok_or_else(|| format!("no receiver rate in the iperf3 output:\n{}", output()))
}

/// Loads nftables table `inet TABLE` in `ns`, dropping on input every packet that matches one of
/// `matches` (each an nft match such as `ip daddr 10.213.1.3` or `iifname "veth"`), with no answer:
/// a firewall that drops, not one that refuses. Remove it with [`nft_delete_table`].
pub fn nft_drop_input(ns: &Netns, table: &str, matches: &[String]) {
    let rules: String = matches.iter().map(|m| format!("\t\t{m} drop\n")).collect();
    let ruleset = format!(
        "table inet {table} {{\n\
         \tchain in {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         {rules}\
         \t}}\n\
         }}\n"
    );
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    let mut nft = nft.spawn().expect("nft (install nftables)");
    nft.stdin
        .take()
        .expect("nft's stdin")
        .write_all(ruleset.as_bytes())
        .expect("write the ruleset to nft");
    assert!(nft.wait().expect("nft").success(), "nft -f -: {ruleset}");
}

pub fn nft_delete_table(ns: &Netns, table: &str) {
    run(ns.command("nft").args(["delete", "table", "inet", table]));
}

/// The nft match for packets to `addr` (IPv4 or IPv6).
pub fn daddr(addr: &str) -> String {
    let family = if addr.contains(':') { "ip6" } else { "ip" };
    format!("{family} daddr {addr}")
}

/// 10.213.N.3 on the server's veth, where nothing answers (table `taptunblackhole`): neither a
/// TCP connect nor a DNS query gets a reply.
pub fn blackholed_address(p: &Pair) -> String {
    let addr = format!("10.213.{}.3", p.n);
    p.a.ip(&format!("addr add {addr}/24 dev {}", p.a.name));
    nft_drop_input(&p.a, "taptunblackhole", &[daddr(&addr)]);
    addr
}

/// /etc/netns/NS/FILE, which `ip netns exec NS` mounts over /etc/FILE; removed when dropped.
pub struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    pub fn new(ns: &Netns, file: &str, text: &str) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        let guard = NetnsEtc { dir };
        fs::write(guard.dir.join(file), text).expect("write /etc/netns/NS/FILE");
        guard
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The private key in a SECRET of the form "@PATH", for tests that drive the library's handshake.
pub fn private_key(secret: &str) -> taptun::PrivateKey {
    let path = secret
        .strip_prefix('@')
        .expect("a secret of the form @PATH");
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    taptun::SecretText::parse(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .private_key()
}

/// `message` behind its length prefix, as it goes on the wire.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    taptun::encode_message(message, &mut out);
    out
}

/// A TCP stream as the handshake's message I/O, for tests that drive the library's handshake
/// against a real taptun.
pub struct TcpMessages {
    reader: taptun::FrameReader<TcpStream>,
    writer: TcpStream,
}

impl TcpMessages {
    pub fn new(stream: &TcpStream) -> TcpMessages {
        TcpMessages {
            reader: taptun::FrameReader::with_capacity(
                stream.try_clone().expect("clone the stream"),
                taptun::MAX_WIRE,
            ),
            writer: stream.try_clone().expect("clone the stream"),
        }
    }
}

impl taptun::MessageIo for TcpMessages {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.writer.write_all(&framed(msg))
    }

    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        self.reader.next_message()
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        let timeout = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        let _ = self.reader.get_ref().set_read_timeout(timeout);
    }
}

/// The path of contrib/scripts/NAME in this repository.
pub fn contrib_script(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/scripts")
        .join(name)
        .display()
        .to_string()
}

/// Starts the server in `a` with contrib/scripts/HOOK-up and HOOK-down as -u and -D, the
/// environment `env` (the scripts' settings) and `extra` options, and waits until it listens.
pub fn server_with_hooks(p: &Pair, hook: &str, env: &[(&str, &str)], extra: &str) -> Proc {
    let mut cmd = p.a.taptun(&format!(
        "-s -p {} -v -d tt0 {} {extra}",
        p.port,
        p.server_secrets()
    ));
    cmd.arg("-u")
        .arg(contrib_script(&format!("{hook}-up")))
        .arg("-D")
        .arg(contrib_script(&format!("{hook}-down")))
        .envs(env.iter().copied());
    let mut server = Proc::start("server", cmd, &p.scratch);
    assert!(
        wait_for(DEADLINE, || !server.running() || p.a.listening(p.port)),
        "taptun -s did not listen"
    );
    assert!(server.running(), "taptun -s exited");
    server
}

/// Lines of `proc`'s stderr that contain every one of `needles`.
pub fn log_lines(proc: &Proc, needles: &[&str]) -> Vec<String> {
    proc.stderr()
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

pub fn log_count(proc: &Proc, needles: &[&str]) -> usize {
    log_lines(proc, needles).len()
}

/// Waits until `proc` has logged at least `count` lines containing all of `needles`.
pub fn wait_log(proc: &Proc, needles: &[&str], count: usize, deadline: Duration) -> bool {
    wait_for(deadline, || log_count(proc, needles) >= count)
}

impl Proc {
    /// The process id (that of the program itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// An emulated WAN link (contrib/wanem.py, in a namespace of its own) in place of a [`Pair`]'s
/// veth: the same devices and addresses in `a` and `b`, but a link with a rate, a delay, a
/// bottleneck queue and random loss between them. Dropping it stops the emulator, then removes its
/// namespace.
pub struct Wan {
    // Declared first so that it is dropped first: the emulator stops before its devices go.
    pub emulator: Proc,
    pub m: Netns,
}

/// One direction's counters, from the emulator's "wanem: stats" line.
#[derive(Debug, Default)]
pub struct WanStats {
    pub forwarded: u64,
    /// Lost at random on the link.
    pub lost: u64,
    /// Dropped because the bottleneck queue was full.
    pub dropped: u64,
    /// The longest wait in the queue seen so far, and the queue's limit, in ms.
    pub peak_queue_ms: f64,
    pub limit_ms: f64,
}

impl Wan {
    /// Replaces `p`'s veth with the emulated link `link`: a preset (dsl, wan, mobile) and any
    /// further wanem.py options, split at whitespace ("dsl --loss 0"). Returns once a ping
    /// crosses it.
    pub fn between(p: &Pair, link: &str) -> Wan {
        let m = Netns::new(unique_id(), 'w');
        p.a.ip(&format!("link del {}", p.a.name));
        let mut words = link.split_whitespace();
        let mut cmd = m.command("python3");
        cmd.arg(contrib_wanem())
            .args(["--link", words.next().expect("a link preset")])
            .args(words)
            .args(["--left", &p.a.name, "--left-dev", &p.a.name])
            .args(["--left-addr", &format!("{}/24", p.server_addr())])
            .args(["--right", &p.b.name, "--right-dev", &p.b.name])
            .args(["--right-addr", &format!("10.213.{}.2/24", p.n)]);
        let mut emulator = Proc::start("wanem", cmd, &p.scratch);
        assert!(
            wait_log(&emulator, &["wanem: ready"], 1, DEADLINE) && emulator.running(),
            "wanem.py did not start"
        );
        let wan = Wan { emulator, m };
        assert!(
            p.b.ping(&p.server_addr()),
            "no ping across the emulated link"
        );
        wan
    }

    /// The counters now, (a to b, b to a): SIGUSR1 has the emulator print them.
    pub fn stats(&self) -> (WanStats, WanStats) {
        let before = log_count(&self.emulator, &["wanem: stats"]);
        self.emulator.signal(libc::SIGUSR1);
        assert!(
            wait_log(&self.emulator, &["wanem: stats"], before + 2, DEADLINE),
            "wanem.py printed no stats"
        );
        let lines = log_lines(&self.emulator, &["wanem: stats"]);
        let last = |direction: &str| {
            let line = lines
                .iter()
                .rev()
                .find(|line| line.contains(direction))
                .expect("a stats line for each direction");
            parse_wan_stats(line)
        };
        (last(" left>right "), last(" right>left "))
    }
}

impl Wan {
    /// Cuts the link: every frame is lost, both ways, until [`Wan::restore`].
    pub fn cut(&self) {
        self.toggle("wanem: link down");
    }

    pub fn restore(&self) {
        self.toggle("wanem: link up");
    }

    /// SIGUSR2 toggles the outage; the emulator confirms with `line`.
    fn toggle(&self, line: &str) {
        let before = log_count(&self.emulator, &[line]);
        self.emulator.signal(libc::SIGUSR2);
        assert!(
            wait_log(&self.emulator, &[line], before + 1, DEADLINE),
            "wanem.py did not say {line:?}"
        );
    }
}

/// "wanem: stats left>right forwarded=1 bytes=98 lost=0 dropped=0 peak_queue_ms=0.0 limit_ms=50.0"
fn parse_wan_stats(line: &str) -> WanStats {
    let mut stats = WanStats::default();
    for (key, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
        let number = || -> f64 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{key}={value} in {line:?}"))
        };
        match key {
            "forwarded" => stats.forwarded = number() as u64,
            "lost" => stats.lost = number() as u64,
            "dropped" => stats.dropped = number() as u64,
            "peak_queue_ms" => stats.peak_queue_ms = number(),
            "limit_ms" => stats.limit_ms = number(),
            _ => {}
        }
    }
    stats
}

/// The path of contrib/wanem.py, the link emulator.
pub fn contrib_wanem() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/wanem.py")
        .display()
        .to_string()
}

/// `ping -c COUNT -i INTERVAL` from `ns` to `addr`: the round-trip times of the replies, in ms
/// (fewer than COUNT when some were lost), from ping's own kernel timestamps.
pub fn ping_rtts(ns: &Netns, addr: &str, count: u32, interval: &str) -> Vec<f64> {
    ping_rtts_waiting(ns, addr, count, interval, &["-W", "2"])
}

/// As [`ping_rtts`], with ping's own waiting options (`-W SECS` per reply, or `-w SECS` for
/// every reply: a late reply is then slow, not lost).
pub fn ping_rtts_waiting(
    ns: &Netns,
    addr: &str,
    count: u32,
    interval: &str,
    wait: &[&str],
) -> Vec<f64> {
    let out = ns
        .command("ping")
        .args(["-n"])
        .args(wait)
        .args(["-i", interval, "-c"])
        .arg(count.to_string())
        .arg(addr)
        .output()
        .expect("ping (install iputils-ping)");
    // "64 bytes from 10.213.1.1: icmp_seq=1 ttl=64 time=40.3 ms"
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (_, time) = line.split_once("time=")?;
            time.strip_suffix(" ms")?.parse().ok()
        })
        .collect()
}

/// The nearest-rank percentile `p` (0-100) of `values`; panics on an empty list.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "a percentile of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * p / 100.0).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}
