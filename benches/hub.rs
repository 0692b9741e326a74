//! The hub at scale (issue 13): N peers on one `taptun -s -A` in a network
//! namespace of its own, driven from one process by the library's own
//! handshake, with no device on the generator's side.
//!
//! `cargo bench --bench hub -- [N]` (or `TAPTUN_HUB_PEERS=N`; 1000 by
//! default) needs root. It makes two namespaces joined by a veth pair, the
//! hub's and the generator's, generates N peer keys and a hub key, writes the
//! peers file (mode 600), starts the hub binary built with this bench, waits
//! for its N devices, and then measures, printing a table at the end:
//!
//! - the time for all N handshakes from cold (TCP connect to key
//!   confirmation, up to `TAPTUN_HUB_CONCURRENCY` (32) at once: the hub
//!   takes 64 pending handshakes), and the hub's CPU meanwhile;
//!   a peer whose attempt fails (the hub closes connections unread while its
//!   budget for message-1 trials is spent) tries again after a client's
//!   backoff (1 s doubling to 30 s, up to 12 attempts), as `taptun -c`
//!   would, and the failed attempts are counted. Each session sends a keepalive when it has
//!   sent nothing for 10 s, as a client does, from the moment it is up;
//! - the hub's RSS and threads with its N devices before any session, and
//!   idle with all N connected, with what the RSS is made of (/proc/PID/smaps
//!   summed by kind of mapping) and the RSS per session;
//! - one Ethernet frame per peer per second for `TAPTUN_HUB_SECONDS` (60)
//!   each way, every frame carrying (peer index, sequence): an AF_PACKET
//!   socket in the hub's namespace checks that frame i left the hub on peer
//!   i's device (by ifindex), and frames injected on each device with
//!   AF_PACKET sendto must reach peer i's session; lost and misdelivered
//!   frames are counted, with the frames the hub sent that were not ours;
//! - the hub's CPU (utime+stime from /proc/PID/stat) per message 1 from an
//!   unlisted key and per garbage message 1 (48 random bytes), over
//!   `TAPTUN_HUB_MSG1` (400) connections of each, paced at
//!   `TAPTUN_HUB_MSG1_RATE` (25) per second so that the hub's budget for
//!   trials is not what is measured (those it closes unread anyway, seen as
//!   a reset, are counted and left out), the hub's idle CPU subtracted;
//! - a second hub with 4 peers, each a real `taptun -c` in a namespace of its
//!   own with a TAP device, the hub's devices in a bridge with an address and
//!   an iperf3 server per peer there: one peer's iperf3 stream alone for
//!   `TAPTUN_HUB_IPERF_SECONDS` (10), then all 4 at once, the total against
//!   the one alone.
//!
//! `TAPTUN_HUB_VERBOSE=1` runs the hubs with -v (each connection closed
//! over the budget is logged, and counted in the table); `TAPTUN_HUB_KEEP=1`
//! keeps the temporary folder with the hubs' logs; `TAPTUN_HUB_ARGS="-n"`
//! gives the hubs more options, and `TAPTUN_HUB_PASSPHRASE=TEXT` makes their
//! secret a passphrase (the other modes a user can pick, for the memory
//! figures). A binary without `-A` (no
//! hub) is run as the point-to-point `taptun -s` with N = 1 and one iperf3
//! peer.
//! It exits with status 1 when a frame was lost or misdelivered or a session
//! ended early (the figures are reported, not judged). Everything it makes
//! is removed on exit, also when it fails.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taptun::{
    Channel, Cipher, Framing, Hello, Identity, Initiator, Layer, MessageIo, OPEN_ROOM, Opened,
    PrivateKey, PublicKey, Sealed, VirtioKind, decode_message, encode_message, initiate,
};

const TAPTUN: &str = env!("CARGO_BIN_EXE_taptun");
const DEFAULT_PEERS: usize = 1000;
/// The hub's port, in its own namespace.
const PORT: u16 = 1980;
const HUB_ADDR: &str = "10.77.0.1";
const GEN_ADDR: &str = "10.77.0.2";
/// Handshakes in flight at once (`TAPTUN_HUB_CONCURRENCY`): half the
/// hub's 64 pending slots.
const HANDSHAKE_THREADS: usize = 32;
/// What we tell the hub in our hello, and how often we send a keepalive
/// when idle, as `taptun -c` does by default.
const KEEPALIVE_SECS: u8 = 10;
/// IEEE 802 local experimental ethertype 1: nothing else sends it.
const ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 4] = b"TTHB";
/// Ethernet header, magic, index (u32), sequence (u64), direction; padded
/// to the 60-byte Ethernet minimum.
const FRAME_LEN: usize = 60;
const TO_HUB: u8 = 1;
const FROM_HUB: u8 = 2;
/// How long to wait for a device, a listening hub or a ping.
const DEADLINE: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a command, panicking with its output if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `ok` every 20 ms until it holds or `within` has passed.
fn wait_for(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- guards (a small copy of tests/common's) -------------------------------

/// A network namespace, deleted with everything still running in it.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("tthub{}{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip("link set lo up");
        // No IPv6 on the devices the hub makes: router solicitations and
        // MLD reports would be frames we did not send.
        for conf in ["all", "default"] {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{conf}.disable_ipv6=1"),
            ]));
        }
        ns
    }

    fn ip(&self, args: &str) -> String {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// A command run inside the namespace (`ip netns exec` execs in place,
    /// so the child's pid is the program's).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets it
    /// makes belong to the namespace and can be used from any thread.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns only reads the descriptor, which `file` keeps open for
    // the call; it changes this thread's namespace and nothing in memory.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str, log: Option<&Path>) -> Proc {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = fs::File::create(path).expect("log file");
                cmd.stdout(file.try_clone().expect("dup")).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
        Proc {
            child,
            what: what.into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn assert_alive(&mut self) {
        assert!(
            self.alive(),
            "{} exited: {:?}",
            self.what,
            self.child.try_wait()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        if !wait_for(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("taptun-hub-bench.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// Writes a file of mode 600 (the hub refuses a looser peers file).
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create");
        file.write_all(text.as_bytes()).expect("write");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("TAPTUN_HUB_KEEP").is_some() {
            println!(
                "kept {} (the hubs' logs, keys, peers files)",
                self.0.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

// --- the hub ---------------------------------------------------------------

/// Whether the binary is a hub (has -A); otherwise the point-to-point
/// server stands in with one peer.
fn binary_is_hub() -> bool {
    let out = run(Command::new(TAPTUN).arg("--help"));
    out.contains("--peers")
}

/// A peer's name in the peers file; its device is "tt-" + name.
fn peer_name(prefix: char, i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(4);
    format!("{prefix}{i:0width$}")
}

struct Hub {
    proc: Proc,
    log: PathBuf,
    devices: Vec<String>,
}

impl Hub {
    /// Starts a hub in `ns` for `peers` (name, key), listening on `addr`,
    /// and waits for its devices and its port.
    fn start(
        ns: &Netns,
        scratch: &Scratch,
        tag: &str,
        hub_key: &PrivateKey,
        peers: &[(String, PublicKey)],
        addr: &str,
        is_hub: bool,
    ) -> Hub {
        // The hub's secret as a passphrase (TAPTUN_HUB_PASSPHRASE) or a key.
        let secret = std::env::var("TAPTUN_HUB_PASSPHRASE")
            .unwrap_or_else(|_| hub_key.to_text().to_string());
        let key = scratch.write(&format!("{tag}.key"), &secret);
        let log = scratch.0.join(format!("{tag}.log"));
        let devices: Vec<String> = peers.iter().map(|(name, _)| format!("tt-{name}")).collect();
        let mut cmd = ns.command(TAPTUN);
        cmd.env_remove("TAPTUN_LOCAL").env_remove("TAPTUN_REMOTE");
        cmd.args(["-s", "-b", addr, "-p", &PORT.to_string()]);
        if std::env::var_os("TAPTUN_HUB_VERBOSE").is_some() {
            cmd.arg("-v");
        }
        cmd.arg("-l").arg(format!("@{}", key.display()));
        // More options for the hub, e.g. -n (TAPTUN_HUB_ARGS="-n").
        if let Ok(extra) = std::env::var("TAPTUN_HUB_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        if is_hub {
            let mut text = String::from("# NAME PUBLIC-KEY\n");
            for (name, key) in peers {
                let _ = writeln!(text, "{name} {key}");
            }
            let file = scratch.write(&format!("{tag}.peers"), &text);
            cmd.arg("-A").arg(file);
        } else {
            assert_eq!(peers.len(), 1, "the point-to-point server takes one peer");
            cmd.args(["-d", &devices[0], "-k", &peers[0].1.to_string()]);
        }
        let started = Instant::now();
        let mut proc = Proc::spawn(cmd, &format!("hub {tag}"), Some(&log));
        let names = devices.clone();
        // In order, remembering how far: a hub makes its devices in turn.
        let all_up = ns.enter(move || {
            let mut up = 0;
            wait_for(DEADLINE, || {
                while names
                    .get(up)
                    .is_some_and(|d| ifindex(d).is_some() && is_up(d))
                {
                    up += 1;
                }
                up == names.len()
            })
        });
        proc.assert_alive();
        assert!(
            all_up,
            "the hub's {} devices did not come up",
            devices.len()
        );
        let listening = wait_for(DEADLINE, || {
            run(ns
                .command("ss")
                .args(["-Htln", &format!("sport = :{PORT}")]))
            .contains("LISTEN")
        });
        assert!(listening, "the hub does not listen on port {PORT}");
        println!(
            "hub {tag}: {} devices up and listening in {:.2} s",
            devices.len(),
            started.elapsed().as_secs_f64()
        );
        Hub { proc, log, devices }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The device's ifindex in the calling thread's namespace.
fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether the device is administratively up, in the calling thread's
/// namespace (SIOCGIFFLAGS on a socket made there).
fn is_up(name: &str) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_ifru of `req`,
    // which lives for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    rc == 0 && unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0
}

/// A field of /proc/PID/status in kB (VmRSS) or a count (Threads).
fn status(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its ')'.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads its argument.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Waits until the process's VmRSS has not moved by more than 1% for 2 s
/// (at most 30 s); returns it in kB.
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = status(pid, "VmRSS");
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = status(pid, "VmRSS");
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The process's RSS by kind of mapping, in kB, with the number of
/// mappings of each kind: what the memory is made of.
fn rss_by_mapping(pid: u32) -> Vec<(String, u64, usize)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut kinds: HashMap<&str, (u64, usize)> = HashMap::new();
    let mut current = "";
    // The end of the last mapping if it was an anonymous one with no
    // access: the guard page below a thread's stack.
    let mut guard_end = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Rss:", kb, ..] => {
                kinds.entry(current).or_default().0 += kb.parse::<u64>().unwrap_or(0);
            }
            [range, perms, _offset, _dev, _inode, rest @ ..] if range.contains('-') => {
                let (start, end) = range.split_once('-').unwrap_or(("", ""));
                let path = rest.first().copied().unwrap_or("");
                let below_guard = guard_end == Some(start);
                guard_end = (path.is_empty() && *perms == "---p").then_some(end);
                current = match path {
                    "[heap]" => "heap (brk)",
                    "[stack]" => "main thread's stack",
                    "" if *perms == "---p" => "guard pages and reserved",
                    "" if below_guard => "thread stacks",
                    "" => "anonymous (malloc arenas, large buffers)",
                    p if p.starts_with('/') => "files (binary, libraries)",
                    _ => "kernel ([vdso] and such)",
                };
                kinds.entry(current).or_default().1 += 1;
            }
            _ => {}
        }
    }
    let mut out: Vec<(String, u64, usize)> = kinds
        .into_iter()
        .map(|(k, (kb, maps))| (k.to_string(), kb, maps))
        .collect();
    out.sort_by_key(|k| std::cmp::Reverse(k.1));
    out
}

// --- the generator's sessions ----------------------------------------------

/// A session opened, or why not.
type SessionResult = Result<Rx, String>;

/// Every peer's sending half once its session is up: the keepalives start
/// then, not once the last handshake is done.
type Senders = Arc<Mutex<Vec<Option<Tx>>>>;

/// The handshake's message stream over a blocking TCP socket.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out.
    consumed: usize,
    deadline: Option<Instant>,
}

impl MessageIo for Wire {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut wire = Vec::with_capacity(msg.len() + 2);
        encode_message(msg, &mut wire);
        self.stream.write_all(&wire)
    }

    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        loop {
            match decode_message(&self.buf) {
                Ok(Some((from, to))) => {
                    self.consumed = to;
                    return Ok(Some(&self.buf[from..to]));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let left = self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(left)?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

/// The sending half of a generator session.
struct Tx {
    stream: TcpStream,
    /// Only its sender is used (the types of the halves are not public).
    channel: Channel,
    last_sent: Instant,
    sent: u64,
}

/// The receiving half of a generator session and what it saw.
struct Rx {
    stream: TcpStream,
    /// Only its receiver is used.
    channel: Channel,
    buf: Vec<u8>,
    frames: u64,
    next_seq: u64,
    out_of_order: u64,
    keepalives: u64,
    /// Frames with our tag but another peer's index.
    misdelivered: u64,
    /// Frames without our tag (the hub's own traffic).
    foreign: u64,
    ended: Option<String>,
}

fn frame(index: u32, seq: u64, direction: u8) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&[0x02, 0x54, 0x54, 0, 0, 1]);
    f[6..8].copy_from_slice(&[0x02, 0x54]);
    f[8..12].copy_from_slice(&index.to_be_bytes());
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(MAGIC);
    f[18..22].copy_from_slice(&index.to_be_bytes());
    f[22..30].copy_from_slice(&seq.to_be_bytes());
    f[30] = direction;
    f
}

/// (index, sequence, direction) of one of our frames.
fn parse_frame(f: &[u8]) -> Option<(u32, u64, u8)> {
    if f.len() < 31 || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..18] != MAGIC {
        return None;
    }
    let index = u32::from_be_bytes(f[18..22].try_into().ok()?);
    let seq = u64::from_be_bytes(f[22..30].try_into().ok()?);
    Some((index, seq, f[30]))
}

/// One session: connect from the generator's namespace (the calling
/// thread's), run the library's initiator, split the channel.
fn open_session(hub: SocketAddr, identity: &Identity) -> Result<(Tx, Rx), String> {
    let stream = TcpStream::connect_timeout(&hub, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
        consumed: 0,
        deadline: None,
    };
    let mut hello = Hello::new(Layer::Tap, 1500);
    hello.keepalive = KEEPALIVE_SECS;
    let deadline = Instant::now() + Duration::from_secs(30);
    let established =
        initiate(&mut wire, identity, hello, deadline).map_err(|e| format!("handshake: {e}"))?;
    // Bytes that came behind the key confirmation belong to the session.
    let leftover = wire.buf.split_off(wire.consumed);
    let stream = wire.stream;
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    // Two channels over one transport: each half keeps its own nonce.
    let transport = Arc::new(established.transport);
    let (send, recv) = (established.send_nonce, established.recv_nonce);
    let channel = |t| Channel::resume(t, send, recv, Framing::Plain, VirtioKind::Ethernet);
    let rx_stream = stream.try_clone().map_err(|e| e.to_string())?;
    Ok((
        Tx {
            stream,
            channel: channel(transport.clone()),
            last_sent: Instant::now(),
            sent: 0,
        },
        Rx {
            stream: rx_stream,
            channel: channel(transport),
            buf: leftover,
            frames: 0,
            next_seq: 0,
            out_of_order: 0,
            keepalives: 0,
            misdelivered: 0,
            foreign: 0,
            ended: None,
        },
    ))
}

/// How the handshakes went: the sessions, and what it took.
struct Opening {
    /// The receiving halves; the sending halves are in the [`Senders`].
    sessions: Vec<Rx>,
    /// From the first connect to the last key confirmation.
    took: Duration,
    /// Attempts that failed, and the first few reasons.
    failed_attempts: usize,
    reasons: Vec<String>,
    /// Peers that needed more than one attempt, and the most any needed.
    retried: usize,
    most_attempts: u32,
    /// Peers with no session after `MAX_ATTEMPTS`.
    gave_up: Vec<String>,
}

/// Attempts per peer before the bench gives up on it.
const MAX_ATTEMPTS: u32 = 12;

/// A client's delay before attempt `attempt` + 1 (src/client.rs: 1 s,
/// doubling to 30 s, up to a quarter less at random).
fn backoff(attempt: u32) -> Duration {
    let step =
        Duration::from_secs(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30));
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    step.mul_f64(1.0 - 0.25 * f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX))
}

/// Opens a session for every identity, `concurrency` at a time, from
/// threads in the generator's namespace. A peer whose attempt fails tries
/// again after a client's backoff, as `taptun -c` would.
fn open_all(
    gen_ns: &Netns,
    hub: SocketAddr,
    identities: Vec<Identity>,
    txs: &Senders,
    concurrency: usize,
) -> Opening {
    let n = identities.len();
    let identities = Arc::new(identities);
    let started = Instant::now();
    // (when, peer, attempts so far), soonest first.
    let queue: BinaryHeap<Reverse<(Instant, usize, u32)>> =
        (0..n).map(|i| Reverse((started, i, 0))).collect();
    let queue = Arc::new(Mutex::new(queue));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<SessionResult>>>> =
        Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let attempts = Arc::new(Mutex::new((vec![0u32; n], Vec::<String>::new())));
    let path = format!("/run/netns/{}", gen_ns.name);
    let workers: Vec<_> = (0..concurrency.clamp(1, n.max(1)))
        .map(|_| {
            let (identities, queue, in_flight, results, attempts, path, txs) = (
                identities.clone(),
                queue.clone(),
                in_flight.clone(),
                results.clone(),
                attempts.clone(),
                path.clone(),
                txs.clone(),
            );
            std::thread::spawn(move || {
                enter_netns(&path);
                loop {
                    let next = {
                        let mut queue = queue.lock().expect("queue");
                        match queue.peek() {
                            Some(Reverse((at, ..))) if *at <= Instant::now() => {
                                in_flight.fetch_add(1, Ordering::SeqCst);
                                queue.pop().map(|Reverse(e)| e)
                            }
                            Some(_) => None,
                            None if in_flight.load(Ordering::SeqCst) == 0 => return,
                            None => None,
                        }
                    };
                    let Some((_, i, tries)) = next else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let r = open_session(hub, &identities[i]);
                    let tries = tries + 1;
                    match r {
                        Ok((tx, rx)) => {
                            txs.lock().expect("senders")[i] = Some(tx);
                            results.lock().expect("results")[i] = Some(Ok(rx));
                        }
                        Err(e) => {
                            let mut a = attempts.lock().expect("attempts");
                            if a.1.len() < 5 {
                                a.1.push(format!("peer {i}, attempt {tries}: {e}"));
                            }
                            drop(a);
                            if tries < MAX_ATTEMPTS {
                                let at = Instant::now() + backoff(tries);
                                queue.lock().expect("queue").push(Reverse((at, i, tries)));
                            } else {
                                results.lock().expect("results")[i] =
                                    Some(Err(format!("peer {i}: {e}")));
                            }
                        }
                    }
                    attempts.lock().expect("attempts").0[i] = tries;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("handshake thread");
    }
    let took = started.elapsed();
    let results = std::mem::take(&mut *results.lock().expect("results"));
    let (tries, reasons) = std::mem::take(&mut *attempts.lock().expect("attempts"));
    let mut sessions = Vec::new();
    let mut gave_up = Vec::new();
    for r in results {
        match r {
            Some(Ok(s)) => sessions.push(s),
            Some(Err(e)) => gave_up.push(e),
            None => gave_up.push("never tried".into()),
        }
    }
    Opening {
        sessions,
        took,
        failed_attempts: tries.iter().map(|&t| t as usize).sum::<usize>() - (n - gave_up.len()),
        reasons,
        retried: tries.iter().filter(|&&t| t > 1).count(),
        most_attempts: tries.iter().copied().max().unwrap_or(0),
        gave_up,
    }
}

/// Reads every session's stream with epoll until `stop`, opening and
/// checking what arrives.
fn receive(mut rxs: Vec<Rx>, stop: Arc<AtomicBool>) -> Vec<Rx> {
    // SAFETY: epoll_create1 takes no pointer.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1: {}", io::Error::last_os_error());
    for (i, rx) in rxs.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` lives for the call; the fd is open (owned by `rx`).
        let rc =
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, rx.stream.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl: {}", io::Error::last_os_error());
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut chunk = vec![0u8; 65536];
    let mut plain = vec![0u8; OPEN_ROOM];
    // Bytes behind the key confirmation, read during the handshake.
    for (i, rx) in rxs.iter_mut().enumerate() {
        drain(rx, i, &mut plain);
    }
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for its length of entries.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 200) };
        for ev in events.iter().take(usize::try_from(ready).unwrap_or(0)) {
            let i = ev.u64 as usize;
            let rx = &mut rxs[i];
            match (&rx.stream).read(&mut chunk) {
                Ok(0) => {
                    rx.ended
                        .get_or_insert_with(|| "the hub closed the stream".into());
                    deregister(epoll, rx.stream.as_raw_fd());
                }
                Ok(n) => {
                    rx.buf.extend_from_slice(&chunk[..n]);
                    drain(rx, i, &mut plain);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    rx.ended.get_or_insert_with(|| e.to_string());
                    deregister(epoll, rx.stream.as_raw_fd());
                }
            }
        }
    }
    // SAFETY: `epoll` is ours and closed once.
    unsafe { libc::close(epoll) };
    rxs
}

fn deregister(epoll: RawFd, fd: RawFd) {
    // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
}

/// Opens the whole messages in `rx.buf`.
fn drain(rx: &mut Rx, index: usize, plain: &mut [u8]) {
    let mut used = 0;
    while rx.ended.is_none() {
        let Ok(Some((from, to))) = decode_message(&rx.buf[used..]) else {
            break;
        };
        let message = &rx.buf[used + from..used + to];
        used += to;
        match rx.channel.receiver.open(message, plain) {
            Opened::Keepalive => rx.keepalives += 1,
            Opened::Frame { len, .. } => match parse_frame(&plain[..len]) {
                Some((i, seq, FROM_HUB)) if i as usize == index => {
                    rx.frames += 1;
                    if seq != rx.next_seq {
                        rx.out_of_order += 1;
                    }
                    rx.next_seq = seq + 1;
                }
                Some(_) => rx.misdelivered += 1,
                None => rx.foreign += 1,
            },
            Opened::Drop(why) => rx.ended = Some(format!("dropped frame: {why:?}")),
            Opened::Fatal(why) => rx.ended = Some(why.to_string()),
        }
    }
    rx.buf.drain(..used);
}

/// Sends a keepalive on every session idle for `KEEPALIVE_SECS`, as a
/// client does.
fn keep_alive(txs: &Mutex<Vec<Option<Tx>>>) {
    let mut out = [0u8; 64];
    let mut txs = txs.lock().expect("senders");
    for tx in txs.iter_mut().flatten() {
        if tx.last_sent.elapsed() >= Duration::from_secs(u64::from(KEEPALIVE_SECS)) {
            let n = tx.channel.sender.keepalive(&mut out);
            let _ = (&tx.stream).write_all(&out[..n]);
            tx.last_sent = Instant::now();
        }
    }
}

/// A thread that calls [`keep_alive`] every second until dropped.
struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    fn start(txs: &Senders) -> Keeper {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, txs) = (stop.clone(), txs.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    keep_alive(&txs);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Keeper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --- the hub's side of the frames: AF_PACKET -------------------------------

/// An AF_PACKET socket made in the calling thread's namespace.
struct Packet(RawFd);

impl Packet {
    fn new(protocol: u16) -> Packet {
        // SAFETY: socket takes no pointer.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol.to_be()),
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let packet = Packet(fd);
        let set = |level, name, value: libc::c_int| {
            // SAFETY: `value` lives for the call and its size is given.
            unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&raw const value).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        // What we inject ourselves is not what the hub sent.
        set(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: `timeout` lives for the call and its size is given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        packet
    }

    /// One frame and the ifindex and packet type it came with.
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, u32, u8)> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `addr` are valid for writes of the lengths given
        // and live for the call.
        let n = unsafe {
            libc::recvfrom(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize, addr.sll_ifindex as u32, addr.sll_pkttype))
    }

    /// Sends `frame` out of the device `ifindex`.
    fn send(&self, frame: &[u8], ifindex: u32) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE.to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for reads of the lengths given
        // and live for the call.
        let n = unsafe {
            libc::sendto(
                self.0,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// What the hub's side saw of the frames the generator sent.
#[derive(Default)]
struct HubSeen {
    /// Per peer: frames on the right device.
    right: Vec<u64>,
    /// Frames of peer i seen on another device.
    wrong_device: u64,
    /// Frames of ours whose index is out of range, or sent the other way.
    malformed: u64,
    out_of_order: u64,
    /// Frames on the hub's devices that were not ours.
    foreign: u64,
}

/// Counts the generator's frames leaving the hub on its devices until
/// `stop`; `ifindex[i]` is peer i's device.
fn watch(socket: Packet, ifindex: Vec<u32>, stop: Arc<AtomicBool>) -> HubSeen {
    let by_index: HashMap<u32, usize> = ifindex.iter().enumerate().map(|(i, &x)| (x, i)).collect();
    let mut seen = HubSeen {
        right: vec![0; ifindex.len()],
        ..HubSeen::default()
    };
    let mut next = vec![0u64; ifindex.len()];
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, dev, pkttype) = match socket.recv(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => panic!("AF_PACKET recv: {e}"),
        };
        if pkttype == libc::PACKET_OUTGOING || !by_index.contains_key(&dev) {
            continue;
        }
        match parse_frame(&buf[..n]) {
            Some((i, seq, TO_HUB)) if (i as usize) < ifindex.len() => {
                let i = i as usize;
                if ifindex[i] != dev {
                    seen.wrong_device += 1;
                    continue;
                }
                seen.right[i] += 1;
                if seq != next[i] {
                    seen.out_of_order += 1;
                }
                next[i] = seq + 1;
            }
            Some(_) => seen.malformed += 1,
            None => seen.foreign += 1,
        }
    }
    seen
}

/// Injects one frame per device per second, spread over the second, for
/// `seconds`; returns how many went to each device.
fn inject(socket: Packet, ifindex: Vec<u32>, seconds: u64) -> (Vec<u64>, u64) {
    let n = ifindex.len();
    let mut sent = vec![0u64; n];
    let mut errors = 0;
    let start = Instant::now();
    for second in 0..seconds {
        for (i, &dev) in ifindex.iter().enumerate() {
            let at = Duration::from_secs(second) + Duration::from_secs(1) * i as u32 / n as u32;
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            match Packet::send(&socket, &frame(i as u32, sent[i], FROM_HUB), dev) {
                Ok(()) => sent[i] += 1,
                Err(_) => errors += 1,
            }
        }
    }
    (sent, errors)
}

// --- message 1 from strangers ----------------------------------------------

/// Makes a stranger's message 1 to the hub of this public key.
type MakeMessage1 = fn(&PublicKey) -> Vec<u8>;

/// Opens `count` connections paced at `rate` per second, each sending
/// `message` (made fresh for each by `make`), and waits for the hub to close
/// each; returns the bytes the hub sent back in all, the connections it
/// reset (closed with our message unread: over its budget for trials), and
/// those it did not close within 10 s.
fn strangers(
    gen_ns: &Netns,
    hub: SocketAddr,
    count: usize,
    rate: f64,
    make: MakeMessage1,
    hub_key: PublicKey,
) -> (u64, u64, u64) {
    let path = format!("/run/netns/{}", gen_ns.name);
    let next = Arc::new(AtomicUsize::new(0));
    let (answered, unread, stuck) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (path, next, answered, unread, stuck) = (
                path.clone(),
                next.clone(),
                answered.clone(),
                unread.clone(),
                stuck.clone(),
            );
            std::thread::spawn(move || {
                enter_netns(&path);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let at = Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = at.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let mut wire = Vec::new();
                    encode_message(&make(&hub_key), &mut wire);
                    let Ok(mut s) = TcpStream::connect_timeout(&hub, Duration::from_secs(10))
                    else {
                        stuck.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(&wire);
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                answered.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                                unread.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                stuck.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("stranger thread");
    }
    (
        answered.load(Ordering::Relaxed),
        unread.load(Ordering::Relaxed),
        stuck.load(Ordering::Relaxed),
    )
}

/// A message 1 from a key the hub does not list: a real initiator's.
fn unlisted_message1(hub: &PublicKey) -> Vec<u8> {
    let stranger = PrivateKey::generate().expect("random key");
    let identity = Identity::new(stranger, *hub, Cipher::ChaChaPoly).expect("identity");
    let mut init = Initiator::new(&identity, Hello::new(Layer::Tap, 1500)).expect("initiator");
    let mut out = vec![0u8; 1024];
    let n = init.write_message1(&mut out).expect("message 1");
    out.truncate(n);
    out
}

/// Garbage of a message 1's length: the hub must try it against every peer.
fn garbage_message1(_: &PublicKey) -> Vec<u8> {
    let mut out = vec![0u8; taptun::MESSAGE1_LEN];
    getrandom::fill(&mut out).expect("random");
    out
}

// --- 4 iperf3 peers --------------------------------------------------------

/// The iperf3 figure: `peers` real clients through a hub whose devices
/// are bridged, one stream alone and then all at once; bits/s.
fn iperf(scratch: &Scratch, is_hub: bool, seconds: u64) -> (f64, Vec<f64>) {
    let peers = if is_hub { 4 } else { 1 };
    let hub_ns = Netns::new("i");
    hub_ns.ip("link add br0 type bridge");
    hub_ns.ip("addr add 10.78.0.1/24 dev br0");
    hub_ns.ip("link set br0 up");
    let hub_key = hub_key();
    let keys: Vec<PrivateKey> = (0..peers)
        .map(|_| PrivateKey::generate().expect("key"))
        .collect();
    let names: Vec<(String, PublicKey)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (peer_name('c', i, peers), k.public_key()))
        .collect();
    let mut clients = Vec::new();
    let mut client_ns = Vec::new();
    for i in 0..peers {
        let ns = Netns::new(&format!("c{i}"));
        let (h, c) = (format!("tthv{i}h"), format!("tthv{i}c"));
        run(Command::new("ip").args([
            "link",
            "add",
            &h,
            "netns",
            &hub_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &c,
            "netns",
            &ns.name,
        ]));
        hub_ns.ip(&format!("addr add 10.79.{i}.1/24 dev {h}"));
        hub_ns.ip(&format!("link set {h} up"));
        ns.ip(&format!("addr add 10.79.{i}.2/24 dev {c}"));
        ns.ip(&format!("link set {c} up"));
        client_ns.push(ns);
    }
    let hub = Hub::start(
        &hub_ns,
        scratch,
        "iperf-hub",
        &hub_key,
        &names,
        "0.0.0.0",
        is_hub,
    );
    for dev in &hub.devices {
        hub_ns.ip(&format!("link set {dev} master br0"));
    }
    let mut servers = Vec::new();
    for (i, (ns, key)) in client_ns.iter().zip(&keys).enumerate() {
        let key_file = scratch.write(&format!("client{i}.key"), &key.to_text());
        let mut cmd = ns.command(TAPTUN);
        cmd.env_remove("TAPTUN_LOCAL").env_remove("TAPTUN_REMOTE");
        cmd.args(["-c", "-m", &format!("10.79.{i}.1"), "-p", &PORT.to_string()]);
        cmd.args(["-d", "ttc", "-k", &hub_key.public_key().to_string()]);
        cmd.arg("-l").arg(format!("@{}", key_file.display()));
        let log = scratch.0.join(format!("client{i}.log"));
        clients.push(Proc::spawn(cmd, &format!("client {i}"), Some(&log)));
        let mut server = hub_ns.command("iperf3");
        server.args(["-s", "-B", "10.78.0.1", "-p", &(5201 + i).to_string()]);
        servers.push(Proc::spawn(server, "iperf3 server", None));
    }
    for (i, ns) in client_ns.iter().enumerate() {
        assert!(
            wait_for(DEADLINE, || {
                Command::new("ip")
                    .args(["-n", &ns.name, "link", "show", "ttc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }),
            "client {i}'s device"
        );
        ns.ip(&format!("addr add 10.78.0.{}/24 dev ttc", 11 + i));
        let pinged = wait_for(DEADLINE, || {
            ns.command("ping")
                .args(["-c1", "-W1", "10.78.0.1"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(pinged, "client {i} cannot ping the hub's bridge");
    }
    let stream = |i: usize| {
        let mut cmd = client_ns[i].command("iperf3");
        cmd.args(["-J", "-c", "10.78.0.1", "-p", &(5201 + i).to_string()]);
        cmd.args(["-t", &seconds.to_string()]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("iperf3 client")
    };
    let rate = |child: Child| {
        let out = child.wait_with_output().expect("iperf3");
        let text = String::from_utf8_lossy(&out.stdout);
        received_bits_per_second(&text)
            .unwrap_or_else(|| panic!("iperf3 gave no figure: {text} {:?}", out.stderr))
    };
    let alone = rate(stream(0));
    let together: Vec<f64> = if peers > 1 {
        let children: Vec<Child> = (0..peers).map(stream).collect();
        children.into_iter().map(rate).collect()
    } else {
        Vec::new()
    };
    drop(servers);
    drop(clients);
    drop(hub);
    (alone, together)
}

/// end.sum_received.bits_per_second from iperf3's JSON, without a parser.
fn received_bits_per_second(json: &str) -> Option<f64> {
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let at = rest.find("\"bits_per_second\"")?;
    let rest = rest[at..].split_once(':')?.1;
    let end = rest.find([',', '}', '\n'])?;
    rest[..end].trim().parse().ok()
}

// --- the run ---------------------------------------------------------------

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// " (first: X)" for the first of a list, or nothing.
fn first<T: std::fmt::Display>(list: &[T]) -> String {
    list.first()
        .map_or(String::new(), |x| format!(" (first: {x})"))
}

/// The figures, printed as they come and as a table at the end, and what
/// went wrong (frames lost or misdelivered, sessions ended).
#[derive(Default)]
struct Table(Vec<(String, String)>, Vec<String>);

impl Table {
    fn row(&mut self, what: &str, value: String) {
        println!("  {what}: {value}");
        self.0.push((what.into(), value));
    }

    /// Records a failure if `count` is not 0.
    fn expect_none(&mut self, count: u64, what: &str) {
        if count != 0 {
            self.1.push(format!("{count} {what}"));
        }
    }

    fn print(&self, title: &str) {
        println!("\n{title}");
        let width = self.0.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
        for (what, value) in &self.0 {
            println!("{what:<width$}  {value}");
        }
        if !self.1.is_empty() {
            println!("\nFAILED: {}", self.1.join(", "));
        }
    }
}

/// The settings, from the environment (see the file's header).
struct Settings {
    peers: usize,
    seconds: u64,
    msg1_count: usize,
    msg1_rate: f64,
    iperf_seconds: u64,
    /// Handshakes in flight at once.
    concurrency: usize,
}

/// The hub's memory and threads, idle with every session up; `before` is
/// its RSS with its devices and no session.
fn memory(table: &mut Table, pid: u32, n: usize, before: u64) {
    let rss = settled_rss(pid);
    let threads = status(pid, "Threads");
    table.row(
        &format!("hub RSS, {n} sessions idle"),
        format!("{} ({threads} threads)", mib(rss)),
    );
    table.row(
        "hub RSS per session",
        format!("{:.1} KiB", rss.saturating_sub(before) as f64 / n as f64),
    );
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    println!("  /proc/{pid}/smaps_rollup:");
    for line in rollup.lines().skip(1).filter(|l| !l.ends_with(" 0 kB")) {
        println!("    {line}");
    }
    for (kind, kb, maps) in rss_by_mapping(pid) {
        if kb >= 100 {
            table.row(
                &format!("  of which {kind}"),
                format!("{} in {maps} mappings", mib(kb)),
            );
        }
    }
}

/// The hub's CPU per message 1 from strangers, its idle CPU subtracted.
fn message1_cost(
    table: &mut Table,
    settings: &Settings,
    gen_ns: &Netns,
    hub: SocketAddr,
    pid: u32,
    hub_key: PublicKey,
) {
    // Over two keepalive intervals: the idle sessions' keepalives both ways
    // are most of what an idle hub does.
    let (ticks, at) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2 * u64::from(KEEPALIVE_SECS)));
    let idle = (cpu_ticks(pid) - ticks) as f64 / at.elapsed().as_secs_f64();
    table.row(
        "hub CPU, sessions idle",
        format!(
            "{:.1} % of one core",
            idle / clock_ticks_per_second() * 100.0
        ),
    );
    let (count, rate) = (settings.msg1_count, settings.msg1_rate);
    let kinds: [(&str, MakeMessage1); 2] = [
        ("unlisted key", unlisted_message1),
        ("garbage", garbage_message1),
    ];
    for (what, make) in kinds {
        let (ticks, at) = (cpu_ticks(pid), Instant::now());
        let (answered, unread, stuck) = strangers(gen_ns, hub, count, rate, make, hub_key);
        let spent = (cpu_ticks(pid) - ticks) as f64 - idle * at.elapsed().as_secs_f64();
        // Those closed unread cost an accept and a close only: the figure is
        // per message tried (a little more than the trial alone).
        let tried = count.saturating_sub(unread as usize).max(1);
        table.row(
            &format!("hub CPU per message 1, {what}"),
            format!(
                "{:.3} ms ({count} at {rate}/s, {unread} closed unread over the budget; {answered} bytes answered, {stuck} not closed within 10 s)",
                spent.max(0.0) / clock_ticks_per_second() / tried as f64 * 1000.0
            ),
        );
    }
}

/// One frame per peer per second each way for `seconds`, checked on the
/// hub's devices and in the sessions.
fn frames(
    table: &mut Table,
    hub: &Hub,
    hub_ns: &Netns,
    txs: &Mutex<Vec<Option<Tx>>>,
    receiver: (std::thread::JoinHandle<Vec<Rx>>, Arc<AtomicBool>),
    seconds: u64,
) {
    let names = hub.devices.clone();
    let ifindex: Vec<u32> =
        hub_ns.enter(move || names.iter().map(|d| ifindex(d).expect("device")).collect());
    let n = ifindex.len();
    let (watch_socket, inject_socket) =
        hub_ns.enter(|| (Packet::new(libc::ETH_P_ALL as u16), Packet::new(0)));
    let watching = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ifindex, stop) = (ifindex.clone(), watching.clone());
        std::thread::spawn(move || watch(watch_socket, ifindex, stop))
    };
    println!("  frames: 1 per peer per second each way for {seconds} s");
    let injector = {
        let ifindex = ifindex.clone();
        std::thread::spawn(move || inject(inject_socket, ifindex, seconds))
    };
    let cpu_before = cpu_ticks(hub.pid());
    let start = Instant::now();
    let mut out = vec![0u8; 256];
    let mut send_errors = 0u64;
    for second in 0..seconds {
        for i in 0..n {
            // Spread over the second, as independent peers would be.
            let at = Duration::from_secs(second) + Duration::from_secs(1) * i as u32 / n as u32;
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let mut txs = txs.lock().expect("senders");
            let tx = txs[i].as_mut().expect("every session is up");
            let mut f = frame(i as u32, tx.sent, TO_HUB);
            match tx.channel.sender.seal(&mut f, &mut out) {
                Sealed::Message { used, .. } => {
                    if (&tx.stream).write_all(&out[..used]).is_ok() {
                        tx.sent += 1;
                        tx.last_sent = Instant::now();
                    } else {
                        send_errors += 1;
                    }
                }
                Sealed::Drop(why) => panic!("frame not sealed: {why:?}"),
            }
        }
    }
    let cpu = cpu_ticks(hub.pid()) - cpu_before;
    let (injected, inject_errors) = injector.join().expect("injector");
    // The last frames are on their way.
    std::thread::sleep(Duration::from_secs(2));
    watching.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    let (receiver, receiving) = receiver;
    receiving.store(true, Ordering::Relaxed);
    let rxs = receiver.join().expect("receiver");

    let sent: Vec<u64> = txs
        .lock()
        .expect("senders")
        .iter()
        .map(|t| t.as_ref().map_or(0, |t| t.sent))
        .collect();
    let lost: u64 = sent
        .iter()
        .zip(&seen.right)
        .map(|(s, r)| s.saturating_sub(*r))
        .sum();
    table.expect_none(lost, "frames lost on the way to the hub's devices");
    table.expect_none(seen.wrong_device, "frames on a wrong device");
    table.expect_none(send_errors, "frames the generator could not send");
    table.row(
        "frames generator -> hub devices",
        format!(
            "{} sent, {} on the right device, {lost} lost, {} on a wrong device, {} out of order, {send_errors} send errors; {} frames of the hub's own",
            sent.iter().sum::<u64>(),
            seen.right.iter().sum::<u64>(),
            seen.wrong_device,
            seen.out_of_order,
            seen.foreign + seen.malformed,
        ),
    );
    let lost: u64 = injected
        .iter()
        .zip(&rxs)
        .map(|(s, r)| s.saturating_sub(r.frames))
        .sum();
    let misdelivered = rxs.iter().map(|r| r.misdelivered).sum::<u64>();
    table.expect_none(lost, "frames lost on the way to the sessions");
    table.expect_none(misdelivered, "frames to a wrong session");
    table.row(
        "frames hub devices -> generator",
        format!(
            "{} injected, {} received, {lost} lost, {} misdelivered, {} out of order, {inject_errors} inject errors; {} frames of the hub's own, {} keepalives",
            injected.iter().sum::<u64>(),
            rxs.iter().map(|r| r.frames).sum::<u64>(),
            misdelivered,
            rxs.iter().map(|r| r.out_of_order).sum::<u64>(),
            rxs.iter().map(|r| r.foreign).sum::<u64>(),
            rxs.iter().map(|r| r.keepalives).sum::<u64>(),
        ),
    );
    table.row(
        "hub CPU while relaying",
        format!(
            "{:.1} % of one core",
            cpu as f64 / clock_ticks_per_second() / seconds as f64 * 100.0
        ),
    );
    let ended: Vec<String> = rxs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.ended.as_ref().map(|e| format!("peer {i}: {e}")))
        .collect();
    table.expect_none(ended.len() as u64, "sessions ended early");
    table.row(
        "sessions ended early",
        format!("{}{}", ended.len(), first(&ended)),
    );
}

/// The hub's log: how long, and its warnings and errors.
fn log_summary(table: &mut Table, log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let over_budget = text
        .lines()
        .filter(|l| l.contains("over the budget"))
        .count();
    table.row(
        "hub log",
        format!(
            "{} lines, {} warnings or errors, {over_budget} connections closed over the trial budget (logged with -v)",
            text.lines().count(),
            warnings.len()
        ),
    );
    for line in warnings.iter().take(10) {
        println!("    {line}");
    }
}

/// Everything but iperf3, with one hub of `n` peers.
fn at_scale(table: &mut Table, settings: &Settings, scratch: &Scratch, is_hub: bool) {
    let n = settings.peers;
    let hub_ns = Netns::new("h");
    let gen_ns = Netns::new("g");
    run(Command::new("ip").args([
        "link",
        "add",
        "tthub0",
        "netns",
        &hub_ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "tthub1",
        "netns",
        &gen_ns.name,
    ]));
    hub_ns.ip(&format!("addr add {HUB_ADDR}/24 dev tthub0"));
    hub_ns.ip("link set tthub0 up");
    gen_ns.ip(&format!("addr add {GEN_ADDR}/24 dev tthub1"));
    gen_ns.ip("link set tthub1 up");

    let hub_key = hub_key();
    let keys: Vec<PrivateKey> = (0..n)
        .map(|_| PrivateKey::generate().expect("key"))
        .collect();
    let peers: Vec<(String, PublicKey)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (peer_name('p', i, n), k.public_key()))
        .collect();
    let mut hub = Hub::start(&hub_ns, scratch, "hub", &hub_key, &peers, HUB_ADDR, is_hub);
    let pid = hub.pid();
    let before = settled_rss(pid);
    table.row(
        &format!("hub RSS, {n} devices, no session"),
        format!("{} ({} threads)", mib(before), status(pid, "Threads")),
    );

    let identities: Vec<Identity> = keys
        .into_iter()
        .map(|k| Identity::new(k, hub_key.public_key(), Cipher::ChaChaPoly).expect("identity"))
        .collect();
    let hub_addr: SocketAddr = format!("{HUB_ADDR}:{PORT}").parse().expect("address");
    let txs: Senders = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let keeper = Keeper::start(&txs);
    let ticks = cpu_ticks(pid);
    let opening = open_all(&gen_ns, hub_addr, identities, &txs, settings.concurrency);
    let cpu = (cpu_ticks(pid) - ticks) as f64 / clock_ticks_per_second();
    table.row(
        &format!("{n} handshakes from cold, {} at a time", settings.concurrency),
        format!(
            "{:.2} s (hub CPU meanwhile {cpu:.2} s); {} peers needed more than one attempt ({} failed attempts, at most {} for one peer), {} gave up{}",
            opening.took.as_secs_f64(),
            opening.retried,
            opening.failed_attempts,
            opening.most_attempts,
            opening.gave_up.len(),
            first(&opening.reasons),
        ),
    );
    hub.proc.assert_alive();
    if !opening.gave_up.is_empty() {
        log_summary(table, &hub.log);
        panic!(
            "{} peers have no session after {MAX_ATTEMPTS} attempts{}",
            opening.gave_up.len(),
            first(&opening.gave_up)
        );
    }
    let rxs = opening.sessions;
    let receiving = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = receiving.clone();
        std::thread::spawn(move || receive(rxs, stop))
    };

    memory(table, pid, n, before);
    message1_cost(
        table,
        settings,
        &gen_ns,
        hub_addr,
        pid,
        hub_key.public_key(),
    );
    frames(
        table,
        &hub,
        &hub_ns,
        &txs,
        (receiver, receiving),
        settings.seconds,
    );
    drop(keeper);
    hub.proc.assert_alive();
    log_summary(table, &hub.log);
}

fn main() {
    let is_hub = binary_is_hub();
    let mut peers = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| env_or("TAPTUN_HUB_PEERS", DEFAULT_PEERS));
    if !is_hub && peers != 1 {
        println!("{TAPTUN} has no -A (no hub yet): point-to-point server, N = 1");
        peers = 1;
    }
    let settings = Settings {
        peers,
        seconds: env_or("TAPTUN_HUB_SECONDS", 60),
        msg1_count: env_or("TAPTUN_HUB_MSG1", 400),
        msg1_rate: env_or("TAPTUN_HUB_MSG1_RATE", 25.0),
        iperf_seconds: env_or("TAPTUN_HUB_IPERF_SECONDS", 10),
        concurrency: env_or("TAPTUN_HUB_CONCURRENCY", HANDSHAKE_THREADS),
    };
    println!(
        "{peers} peers, hub binary {TAPTUN}{}",
        if is_hub { "" } else { " (point-to-point)" }
    );
    // Each session holds a few descriptors on both sides.
    raise_nofile();
    let scratch = Scratch::new();
    let mut table = Table::default();
    at_scale(&mut table, &settings, &scratch, is_hub);

    let (alone, together) = iperf(&scratch, is_hub, settings.iperf_seconds);
    table.row("iperf3, 1 peer alone", format!("{:.2} Gbit/s", alone / 1e9));
    if !together.is_empty() {
        let total: f64 = together.iter().sum();
        let each: Vec<String> = together.iter().map(|r| format!("{:.2}", r / 1e9)).collect();
        table.row(
            &format!("iperf3, {} peers at once", together.len()),
            format!(
                "{:.2} Gbit/s in all ({}), {:.0} % of one alone",
                total / 1e9,
                each.join(" + "),
                total / alone * 100.0
            ),
        );
    }
    table.print(&format!(
        "hub at scale: {peers} peers, {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    ));
    if !table.1.is_empty() {
        // After every guard has cleaned up.
        drop(scratch);
        std::process::exit(1);
    }
}

/// Raises the soft limit on open files to the hard one.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`, which
    // lives for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The hub's key: from TAPTUN_HUB_PASSPHRASE (stretched as taptun does) so
/// that a hub with a passphrase is measured too, or a new one.
fn hub_key() -> PrivateKey {
    match std::env::var("TAPTUN_HUB_PASSPHRASE") {
        Ok(passphrase) => taptun::stretch_passphrase(&passphrase),
        Err(_) => PrivateKey::generate().expect("key"),
    }
}
