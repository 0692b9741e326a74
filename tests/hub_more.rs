//! The hub (-s -A, -i -A) beyond tests/hub.rs: a peer that never reads
//! does not slow another peer; xinetd runs one -i -A process per
//! connection, each on its peer's device, and refuses a second connection
//! of a peer whose device is in use; with -U a reload still makes devices
//! while hooks get no capability; frames for a peer with no session are
//! drained and counted, and a peer's reconnect replaces only its own
//! session.
//!
//! The network is tests/common/hub.rs's.

mod common;

use common::hub::HubNet;
use common::*;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use taptun::{Cipher, Hello, Identity, Layer};

/// The latency test runs alone: the other tests' traffic (a flood among
/// them) would be part of what it measures. They share it with each other.
static LATENCY: RwLock<()> = RwLock::new(());

/// A share of [`LATENCY`] for a test that is not the latency test.
fn not_alone() -> std::sync::RwLockReadGuard<'static, ()> {
    LATENCY.read().unwrap_or_else(|p| p.into_inner())
}

/// What these tests add to the shared hub network.
impl HubNet {
    /// A session of site `i`'s peer driven by the library's handshake, whose
    /// socket then reads nothing (its receive buffer is small, so that the
    /// hub's side backs up at once). Returns the open stream.
    fn session_that_never_reads(&self, i: usize) -> TcpStream {
        let identity = Identity::new(
            private_key(&self.sites[i].secret),
            private_key(&self.hub_key).public_key(),
            Cipher::ChaChaPoly,
        )
        .expect("a valid key pair");
        let at = self.hub_at();
        let stream = in_netns(&self.sites[i].ns, move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket
                .connect_timeout(&at.into(), DEADLINE)
                .expect("connect");
            TcpStream::from(socket)
        });
        let mut io = TcpMessages::new(&stream);
        // Keepalive 0 in our hello: the hub never declares us dead for silence.
        taptun::initiate(
            &mut io,
            &identity,
            Hello::new(Layer::Tap, 1500),
            Instant::now() + DEADLINE,
        )
        .expect("the handshake of a listed peer");
        stream
    }

    /// Points MAC `mac` and address 10.242.N.HOST of the hub's br0 at site
    /// `i`'s port tt-NAME (static fdb and neighbour entries), so that
    /// traffic from the hub to that address goes to that peer only.
    fn pin_behind(&self, i: usize, host: u8, mac: &str) -> SocketAddr {
        let dev = format!("tt-{}", self.sites[i].name);
        run(Command::new("bridge").args([
            "-n",
            &self.h.name,
            "fdb",
            "replace",
            mac,
            "dev",
            &dev,
            "master",
            "static",
        ]));
        let addr = self.overlay(host);
        self.h.ip(&format!(
            "neigh replace {addr} lladdr {mac} dev br0 nud permanent"
        ));
        format!("{addr}:9").parse().unwrap()
    }

    /// The hub's SIGUSR1 line for site `i`'s peer, fresh.
    fn status_line(&self, hub: &Proc, i: usize) -> String {
        let prefix = format!("{}: ", self.sites[i].name);
        let before = log_count(hub, &[&prefix, ", drops "]);
        hub.signal(libc::SIGUSR1);
        assert!(
            wait_log(hub, &[&prefix, ", drops "], before + 1, DEADLINE),
            "no SIGUSR1 line for {prefix}"
        );
        log_lines(hub, &[&prefix, ", drops "])
            .pop()
            .expect("the line just waited for")
    }
}

/// The figure after `label` in a SIGUSR1 line ("no session 12," gives 12).
fn counter(line: &str, label: &str) -> u64 {
    let (_, after) = line
        .split_once(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label:?} in {line}"));
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {label:?} in {line}"))
}

/// UDP datagrams of 1400 bytes sent from `socket` to `to` at about
/// `mbit` Mbit/s until dropped; the thread returns how many were sent.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Flood {
    fn start(socket: UdpSocket, to: SocketAddr, mbit: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let payload = [0x5au8; 1400];
            // On the wire with the IP, UDP and Ethernet headers.
            let per_second = mbit * 1_000_000 / 8 / (1400 + 28 + 14);
            let (mut sent, start) = (0u64, Instant::now());
            while !stopped.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
                while sent < due {
                    // A full socket buffer: the datagram is lost like any other.
                    let _ = socket.send_to(&payload, to);
                    sent += 1;
                }
                thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood; returns the datagrams sent.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// User and system CPU time of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> i64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's closing parenthesis: fields 3 onwards; utime and
    // stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<i64>().unwrap() + fields[12].parse::<i64>().unwrap()
}

/// The round-trip times (ms) of COUNT pings from `ns` to `addr`, 10 ms
/// apart. ping waits up to 10 s for every reply (-w): one that comes late
/// on a busy machine is slow, not lost.
fn pings_of(ns: &Netns, addr: &str, count: u32) -> Vec<f64> {
    ping_rtts_waiting(ns, addr, count, "0.01", &["-w", "10"])
}

/// Figures for the reader of the test's output (shown with --nocapture,
/// and on failure).
fn report(what: &str) {
    let _ = writeln!(io::stderr(), "{what}");
}

#[test]
fn a_peer_that_never_reads_does_not_slow_another_peers_pings() {
    if !require_root() {
        return;
    }
    let _alone = LATENCY.write().unwrap_or_else(|p| p.into_inner());
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let stalled = net.site(2, None);
    net.write_peers(&[a, stalled], "bridge=br0");
    // Nothing written for 3 x 30 s ends a session: the stalled one outlives
    // the test even on a slow machine.
    let hub = net.hub("-K 30");
    let _ca = net.client(a);
    let hub_addr = net.overlay(254);
    assert!(net.sites[a].ns.ping(&hub_addr), "a cannot ping the hub");
    let _stuck = net.session_that_never_reads(stalled);
    assert!(
        wait_log(&hub, &["established on tt-s2"], 1, DEADLINE),
        "no session for the stalled peer"
    );
    let target = net.pin_behind(stalled, 99, "02:00:00:00:99:02");
    let socket = in_netns(&net.h, || UdpSocket::bind("0.0.0.0:0").unwrap());

    // Interleaved, so that a change in the machine's load hits both sides.
    let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
    let (mut backed_up, mut hub_cpu) = (Vec::new(), Vec::new());
    for run in 0..3 {
        let cpu_before = cpu_ticks(hub.pid());
        let rtts = pings_of(&net.sites[a].ns, &hub_addr, 200);
        let cpu_quiet = cpu_ticks(hub.pid()) - cpu_before;
        assert_eq!(rtts.len(), 200, "run {run}: pings lost with no flood");
        quiet.push(percentile(&rtts, 99.0));

        let flood = Flood::start(socket.try_clone().unwrap(), target, 100);
        // The stalled peer's socket buffers fill first.
        thread::sleep(Duration::from_millis(500));
        let cpu_before = cpu_ticks(hub.pid());
        let rtts = pings_of(&net.sites[a].ns, &hub_addr, 200);
        hub_cpu.push((cpu_quiet, cpu_ticks(hub.pid()) - cpu_before));
        let sent = flood.stop();
        assert!(
            sent > 20_000,
            "run {run}: only {sent} datagrams towards the stalled peer"
        );
        assert_eq!(
            rtts.len(),
            200,
            "run {run}: pings lost while a peer that never reads was flooded"
        );
        loaded.push(percentile(&rtts, 99.0));
        backed_up.push(counter(&net.status_line(&hub, stalled), "backlog"));
    }
    // The flood really met a peer that does not read: its session is still
    // up, and the hub dropped at its ingress in every run.
    let line = net.status_line(&hub, stalled);
    assert!(line.contains(": up,"), "{line}");
    assert!(
        backed_up[0] > 0 && backed_up[1] > backed_up[0] && backed_up[2] > backed_up[1],
        "the stalled peer's stream never backed up: {backed_up:?}"
    );
    let (quiet_p99, loaded_p99) = (percentile(&quiet, 50.0), percentile(&loaded, 50.0));
    let bound = (3.0 * quiet_p99).max(quiet_p99 + 5.0);
    report(&format!(
        "ping p99 of another peer (ms), 3 runs: without the flood {quiet:?} (median {quiet_p99}), \
         with 100 Mbit/s towards a peer that never reads {loaded:?} (median {loaded_p99}); \
         bound {bound:.3}; frames dropped at the stalled peer's ingress after each run {backed_up:?}; \
         the hub's CPU ticks (1/100 s) during the pings, (quiet, flooded): {hub_cpu:?}"
    ));
    assert!(
        loaded_p99 <= bound,
        "p99 {loaded_p99} ms with the stalled peer flooded, {quiet_p99} ms without: more than {bound:.3} ms"
    );
}

/// A directory bind-mounted over /dev in a private mount namespace, with
/// the real /dev/null, /dev/urandom, /dev/zero and /dev/net (for
/// /dev/net/tun) and a `log` datagram socket that a thread of the test
/// reads all along (a full socket would block the loggers): what a process
/// started there logs to syslog reaches the test.
struct PrivateDev {
    dir: PathBuf,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl PrivateDev {
    fn new(scratch: &Scratch) -> PrivateDev {
        let dir = scratch.path.join("dev");
        fs::create_dir(&dir).unwrap();
        fs::create_dir(dir.join("net")).unwrap();
        for file in ["null", "urandom", "zero"] {
            fs::write(dir.join(file), "").unwrap();
        }
        let log = std::os::unix::net::UnixDatagram::bind(dir.join("log")).unwrap();
        log.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (lines.clone(), stop.clone());
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(len) = log.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..len]).into_owned();
                    into.lock().unwrap().push(line);
                }
            }
        });
        PrivateDev {
            dir,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// Has `cmd` start in a private mount namespace where this is /dev.
    fn apply(&self, cmd: &mut Command) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let binds: Vec<(CString, CString)> = ["null", "urandom", "zero", "net"]
            .iter()
            .map(|f| (c(&Path::new("/dev").join(f)), c(&self.dir.join(f))))
            .chain([(c(&self.dir), c(Path::new("/dev")))])
            .collect();
        // SAFETY: only raw syscalls between fork and exec, on strings made
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let none = std::ptr::null::<libc::c_char>();
                let fail = || Err(io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                let private = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()) != 0 {
                    return fail();
                }
                for (from, to) in &binds {
                    let flags = libc::MS_BIND | libc::MS_REC;
                    if libc::mount(from.as_ptr(), to.as_ptr(), none, flags, std::ptr::null()) != 0 {
                        return fail();
                    }
                }
                Ok(())
            });
        }
    }

    /// The syslog lines received so far.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for PrivateDev {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[test]
fn xinetd_serves_two_peers_at_once_each_on_its_device_and_refuses_a_device_in_use() {
    if !require_root() {
        return;
    }
    let _shared = not_alone();
    if !Path::new("/usr/sbin/xinetd").exists() {
        assert!(
            std::env::var("TAPTUN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "TAPTUN_REQUIRE_NETNS=1 but /usr/sbin/xinetd is missing: apt-get install xinetd"
        );
        report("skipped: needs /usr/sbin/xinetd (apt-get install xinetd)");
        return;
    }
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    // No bridge: each peer has a subnet of its own on its own device.
    net.write_peers(&[a, b], "");
    let _leftovers = KillLeftovers(&net.h);
    let dir = net.scratch.path.join("xinetd.d");
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join("taptun-hub"),
        format!(
            "service taptun-hub\n{{\n    type = UNLISTED\n    port = {}\n    socket_type = stream\n    \
             protocol = tcp\n    wait = no\n    user = root\n    server = {TAPTUN}\n    \
             server_args = -i -v -A {} -l {}\n    instances = UNLIMITED\n    \
             log_on_success = PID EXIT\n}}\n",
            net.port,
            net.file.display(),
            net.hub_key
        ),
    )
    .unwrap();
    let service_log = net.scratch.path.join("xinetd-service.log");
    let conf = net.scratch.path.join("xinetd.conf");
    fs::write(
        &conf,
        format!(
            "defaults\n{{\n    log_type = FILE {}\n}}\nincludedir {}\n",
            service_log.display(),
            dir.display()
        ),
    )
    .unwrap();
    let dev = PrivateDev::new(&net.scratch);
    let mut cmd = net.h.command("/usr/sbin/xinetd");
    cmd.args(["-dontfork", "-f"])
        .arg(&conf)
        .arg("-pidfile")
        .arg(net.scratch.path.join("xinetd.pid"));
    dev.apply(&mut cmd);
    let mut xinetd = Proc::start("xinetd", cmd, &net.scratch);
    assert!(
        wait_for(DEADLINE, || !xinetd.running() || net.h.listening(net.port)),
        "xinetd did not listen on {}",
        net.port
    );
    assert!(xinetd.running(), "xinetd exited");

    // Two peers at once, each on its device in the hub's namespace.
    let mut clients = Vec::new();
    for (i, subnet) in [(a, 243), (b, 244)] {
        clients.push(net.client_on(i, "tt0", &net.sites[i].name.clone(), ""));
        let dev_name = format!("tt-{}", net.sites[i].name);
        if !wait_for(DEADLINE, || net.h.device_up(&dev_name)) {
            panic!(
                "{dev_name} did not come up; xinetd: {}; syslog: {:#?}",
                fs::read_to_string(&service_log).unwrap_or_default(),
                dev.lines()
            );
        }
        let dev = dev_name;
        net.h
            .ip(&format!("addr add 10.{subnet}.{}.1/24 dev {dev}", net.n));
        net.sites[i].ns.wait_for_device("tt0");
        net.sites[i]
            .ns
            .ip(&format!("addr add 10.{subnet}.{}.2/24 dev tt0", net.n));
    }
    let ping_both = || {
        for (i, subnet) in [(a, 243), (b, 244)] {
            let addr = format!("10.{subnet}.{}.1", net.n);
            assert!(
                net.sites[i].ns.ping(&addr),
                "{} cannot ping its address {addr} on tt-{}",
                net.sites[i].name,
                net.sites[i].name
            );
        }
    };
    ping_both();
    // One process per connection.
    let servers = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "pids", &net.h.name])
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .filter(|pid| {
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == Path::new(TAPTUN))
    })
    .count();
    assert_eq!(servers, 2, "taptun processes under xinetd");

    // A second connection of s1 while its first holds tt-s1.
    let mut second = net.client_on(a, "tt1", "s1 again", "--once");
    let status_1 = wait_for(DEADLINE, || {
        fs::read_to_string(&service_log).is_ok_and(|log| log.contains("EXIT: taptun-hub status=1"))
    });
    let syslog = dev.lines();
    assert!(
        status_1,
        "xinetd logged no exit with status 1: {}",
        fs::read_to_string(&service_log).unwrap_or_default()
    );
    assert!(
        syslog.iter().any(|l| l.starts_with("<27>taptun[")
            && l.contains("tt-s1")
            && l.contains("another process is attached")),
        "no error naming the device in use in syslog: {syslog:#?}"
    );
    assert!(
        !second.stderr().contains("established"),
        "the second connection got a session: {}",
        second.stderr()
    );
    second.terminate();
    report(&format!(
        "xinetd: {}\nthe refused connection's syslog lines: {:#?}",
        fs::read_to_string(&service_log).unwrap_or_default(),
        syslog
            .iter()
            .filter(|l| l.starts_with("<27>"))
            .collect::<Vec<_>>()
    ));
    // The first two sessions go on.
    ping_both();
    for client in &mut clients {
        assert!(client.running());
    }
    assert!(xinetd.running());
}

/// Kills, when dropped, every process still in the namespace: the
/// children that xinetd started and might leave behind when stopped.
struct KillLeftovers<'a>(&'a Netns);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.0.name])
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill has no memory effects; these processes live in our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The hexadecimal capability set `field` (CapEff, CapPrm, ...) of `line`s
/// in /proc/PID/status form.
fn caps(status: &str, field: &str) -> u64 {
    let value = status
        .lines()
        .find_map(|l| l.split_once(&format!("{field}:")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(&value, 16).unwrap_or_else(|_| panic!("{field}: {value}"))
}

#[test]
fn with_u_a_reload_makes_the_added_peers_device_and_hooks_get_no_capability() {
    if !require_root() {
        return;
    }
    let _shared = not_alone();
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    // nobody reads the peers file again on SIGHUP, and runs the hook.
    fs::set_permissions(&net.scratch.path, fs::Permissions::from_mode(0o755)).unwrap();
    let up = net.scratch.path.join("up.sh");
    fs::write(
        &up,
        "#!/bin/sh\nfor f in CapInh CapPrm CapEff CapAmb; do echo \"$TAPTUN_PEER_NAME $(grep ^$f: /proc/self/status)\" >&2; done\n",
    )
    .unwrap();
    fs::set_permissions(&up, fs::Permissions::from_mode(0o755)).unwrap();
    let options = format!("bridge=br0 up={}", up.display());
    net.write_peers(&[a], &options);
    let hub = net.hub("-U nobody");
    let pid = hub.pid();
    let status = || fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = || {
        status()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(
        wait_for(DEADLINE, || uid() == "65534 65534 65534 65534"),
        "the hub did not become nobody: Uid {}",
        uid()
    );
    assert_eq!(
        caps(&status(), "CapEff"),
        1 << 12,
        "the hub keeps exactly CAP_NET_ADMIN"
    );
    assert_eq!(caps(&status(), "CapPrm"), 1 << 12);

    net.write_peers(&[a, b], &options);
    hub.signal(libc::SIGHUP);
    assert!(
        wait_log(&hub, &["reloaded", "1 added"], 1, DEADLINE),
        "no reload adding a peer"
    );
    assert!(
        net.h.device_up("tt-s2"),
        "the reload as nobody did not make tt-s2"
    );
    let master = net.h.ip("-o link show dev tt-s2");
    assert!(master.contains("master br0"), "{master}");
    let _cb = net.client(b);
    assert!(
        net.sites[b].ns.ping(&net.overlay(254)),
        "the added peer cannot ping the hub"
    );
    let hook_says = |field: &str| {
        let needle = format!("s2 {field}:");
        assert!(
            wait_log(&hub, &["up hook", &needle], 1, DEADLINE),
            "the up hook printed no {field}"
        );
        let line = log_lines(&hub, &["up hook", &needle]).pop().unwrap();
        let (_, value) = line.split_once(&needle).unwrap();
        u64::from_str_radix(value.trim(), 16).unwrap()
    };
    for field in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(hook_says(field), 0, "the up hook's {field}");
    }
    assert_eq!(caps(&status(), "CapEff"), 1 << 12);
}

#[test]
fn frames_without_a_session_are_counted_and_a_reconnect_replaces_only_its_own_session() {
    if !require_root() {
        return;
    }
    let _shared = not_alone();
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    net.write_peers(&[a, b], "bridge=br0");
    let hub = net.hub("");
    let first = net.client(a);
    let _cb = net.client(b);
    let (addr_a, hub_addr) = (net.overlay(1), net.overlay(254));
    assert!(net.sites[b].ns.ping(&addr_a), "b cannot ping a");
    assert!(net.sites[b].ns.ping(&hub_addr), "b cannot ping the hub");
    let b_peer = format!("10.241.{}.2:", net.n);

    // a comes back while its first session is still up (frozen, it keeps
    // its connection): the new session replaces only a's. A count, not a
    // deadline (-w): ping stops at its deadline without waiting for the
    // last reply, which a busy machine then counts as lost.
    let train = net.sites[b]
        .ns
        .command("ping")
        .args(["-q", "-i", "0.01", "-c", "400", "-W", "2", &hub_addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    first.signal(libc::SIGSTOP);
    let again = net.client_on(a, "tt1", "s1 again", "");
    assert!(
        wait_log(&hub, &["replaces", "as the peer"], 1, DEADLINE),
        "a's new session did not replace its old one"
    );
    first.signal(libc::SIGKILL);
    let site_a = &net.sites[a].ns;
    site_a.wait_for_device("tt1");
    // The first client's tt0, and its address, go with it.
    assert!(wait_for(DEADLINE, || !site_a.device_up("tt0")));
    site_a.ip(&format!("addr add {addr_a}/24 dev tt1"));
    // From a first: its ARP request tells b the new device's MAC address.
    assert!(
        site_a.ping(&net.overlay(2)),
        "a's new session cannot reach b"
    );
    assert!(
        net.sites[b].ns.ping(&addr_a),
        "b cannot ping a's new session"
    );
    let out = train.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "b's pings were lost while a reconnected: {summary}"
    );
    assert_eq!(log_count(&hub, &["established on tt-s2"]), 1, "b's session");
    assert_eq!(
        log_count(&hub, &["established on tt-s1"]),
        2,
        "a's sessions"
    );
    assert_eq!(
        log_count(&hub, &[&format!("session with {b_peer}"), "ended"]),
        0,
        "b's session ended: {}",
        hub.stderr()
    );

    // Frames for a while a's session ends: what reaches its device once no
    // session reads it (what it held, and what the kernel still sends until
    // it has seen the carrier go off) is drained and counted, on a's line
    // only. How much that is depends on the kernel's timing (seen: 9 to
    // 2,800 frames); a session end that left nothing is tried again.
    let line = net.status_line(&hub, a);
    assert!(line.contains(": up,"), "{line}");
    let before = counter(&line, "no session");
    let target = net.pin_behind(a, 98, "02:00:00:00:98:01");
    let socket = in_netns(&net.h, || UdpSocket::bind("0.0.0.0:0").unwrap());
    let flood = Flood::start(socket, target, 100);
    let mut client = again;
    let mut counts = Vec::new();
    for attempt in 1..=3 {
        if attempt > 1 {
            client = net.client_on(a, "tt1", &format!("s1 attempt {attempt}"), "");
            assert!(
                wait_log(&hub, &["established on tt-s1"], 1 + attempt, DEADLINE),
                "a did not come back"
            );
        }
        thread::sleep(Duration::from_millis(300));
        client.signal(libc::SIGKILL);
        assert!(
            wait_log(&hub, &["session with", "ended"], 1 + attempt, DEADLINE),
            "a's session did not end"
        );
        thread::sleep(Duration::from_millis(300));
        let line = net.status_line(&hub, a);
        assert!(line.contains(": idle,"), "{line}");
        counts.push(counter(&line, "no session"));
        if counts.last() > Some(&before) {
            break;
        }
    }
    flood.stop();
    report(&format!(
        "frames for a drained with no session: {before} while its session was up, {counts:?} after each end"
    ));
    assert!(
        counts.last() > Some(&before),
        "nothing was drained and counted for a with no session: {counts:?}"
    );
    let line_b = net.status_line(&hub, b);
    assert!(line_b.contains(": up,"), "{line_b}");
    assert_eq!(counter(&line_b, "no session"), 0, "{line_b}");
}
