//! Hostile peers against a running `taptun -s`, in throwaway network namespaces (see `common`).
//!
//! Each test starts a server in namespace `a` with an authenticated client in `b` keeping a
//! session up (ping works), then attacks the server from `b`: a thousand connections that send
//! nothing, a thousand valid first messages that stall, random bytes, a 65535-byte length prefix
//! followed by a trickle, a recorded session and a captured message 1 replayed, a flipped bit in
//! the transport phase (through a recording proxy), and an authenticated peer that never reads.
//!
//! For each, it checks what taptun promises: the attack connections are closed without an answer
//! (or, for the replays, refused), the session keeps working, no frame reaches the server's device
//! (its rx counter does not move while only the attacker talks; IPv6 is off in the namespaces so
//! that nothing else does), the server's memory stays bounded (VmHWM), and the right client still
//! gets in afterwards. The figures (connections tried, peak RSS and threads, time to recover) are
//! printed to stderr, so they show in the test output.
//!
//! The bounds asserted are generous (peak RSS under 64 MiB); the only time limits are deadlines.
//! These tests need root, iproute2 and iputils-ping; otherwise they say they are skipped.

mod common;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    DEADLINE, Netns, Pair, Proc, TcpMessages, framed, in_netns, private_key, pseudo_random_bytes,
    wait_for,
};
use taptun::Layer;
use taptun::{Cipher, Hello, Identity, Initiator};

/// The server's peak resident memory must stay below this.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// The server runs at most this many handshakes at once.
const MAX_PENDING: u64 = 64;
/// Threads the server may have beyond its own before the attack and one per pending handshake:
/// the accept loop waits until an evicted handshake's thread has exited before it starts
/// another, so only a little slack for the sampling's timing.
const THREAD_SLACK: u64 = 4;
/// How long the attack connections may take to be closed: well past the 10 s handshake deadline.
const CLOSE_DEADLINE: Duration = Duration::from_secs(20);
/// Connections opened at a time.
const BATCH: usize = 100;

// ---------------------------------------------------------------------------------------------
// The arrangement: server, client, figures.

/// A server in `a` with its pid, and an authenticated client in `b` with a session up.
struct Setup {
    // The processes first: they must stop before the pair's namespaces and logs go.
    client: Option<Proc>,
    server: Proc,
    pid: u32,
    p: Pair,
}

impl Setup {
    /// Server and client straight to each other, session up, ping working.
    fn new() -> Setup {
        let p = pair_without_ipv6();
        let (server, pid) = start_server(&p);
        let client = p.good_client("client", "tt0");
        p.address_tap();
        pin_neighbours(&p);
        p.assert_tap_ping();
        Setup {
            client: Some(client),
            server,
            pid,
            p,
        }
    }

    fn server_addr(&self) -> String {
        format!("{}:{}", self.p.server_addr(), self.p.port)
    }

    /// `count` TCP connections to the server, made in `b`, each with when it was established.
    fn connect(&self, count: usize) -> Vec<(TcpStream, Instant)> {
        let addr = self.server_addr();
        in_netns(&self.p.b, move || {
            (0..count)
                .map(|_| {
                    let stream =
                        TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
                    (stream, Instant::now())
                })
                .collect()
        })
    }

    /// Whether the server is still running, with its log on failure.
    fn assert_server_running(&mut self) {
        assert!(self.server.running(), "the server died under attack");
    }

    /// The session keeps working: ping both ways across the tunnel.
    fn assert_session_works(&self) {
        self.p.assert_tap_ping();
    }

    /// Stops the current client (if any), starts a new one with the right keys and waits until
    /// ping works through it; returns how long that took.
    fn right_client_gets_in(&mut self, name: &str) -> Duration {
        if let Some(mut old) = self.client.take() {
            old.terminate();
        }
        let start = Instant::now();
        self.client = Some(self.p.good_client(name, "tt0"));
        self.p.address_client_tap("tt0");
        pin_neighbours(&self.p);
        self.p.assert_tap_ping();
        start.elapsed()
    }
}

/// A `Pair` whose namespaces have IPv6 off on every interface, so that no router solicitation or
/// neighbour discovery crosses the tunnel by itself and the device counters only move for the
/// traffic a test makes.
fn pair_without_ipv6() -> Pair {
    let p = Pair::new();
    for ns in [&p.a, &p.b] {
        in_netns(ns, || {
            for conf in ["default", "all"] {
                // Absent when the kernel has no IPv6: then there is nothing to silence.
                let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
        });
    }
    p
}

/// The MAC address of `dev` in `ns`.
fn mac_address(ns: &Netns, dev: &str) -> String {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{dev}/address"))
        .output()
        .expect("cat address");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fixes each end's neighbour entry for the other's tunnel address, so that no ARP request or
/// probe crosses the tunnel by itself (a probe 5 s after a ping would look like a frame the
/// attacker injected). Called again whenever the client, and so its MAC address, changes.
fn pin_neighbours(p: &Pair) {
    for (ns, peer_ns, peer_host) in [(&p.a, &p.b, 2), (&p.b, &p.a, 1)] {
        ns.ip(&format!(
            "neigh replace {} lladdr {} dev tt0 nud permanent",
            p.tap_addr(peer_host),
            mac_address(peer_ns, "tt0")
        ));
    }
}

/// Starts `taptun -s` in `a` as `Pair::server` does, and returns its pid too.
fn start_server(p: &Pair) -> (Proc, u32) {
    let args = format!("-s -p {} -v -d tt0 {}", p.port, p.server_secrets());
    let log = p.scratch.path.join("server.log");
    let mut cmd = p.a.taptun(&args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("server log"));
    let child = cmd.spawn().expect("taptun -s");
    // `ip netns exec` execs taptun: the child's pid is the server's.
    let pid = child.id();
    let mut server = Proc::adopt("server", child, Some(log));
    let listening = wait_for(DEADLINE, || !server.running() || p.a.listening(p.port));
    assert!(
        listening && server.running(),
        "taptun -s did not start listening"
    );
    (server, pid)
}

/// A number from /proc/PID/status ("VmHWM", "VmRSS" in KiB, "Threads").
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// The server's resources at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: u64,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        Usage {
            rss_kib: proc_status(pid, "VmRSS"),
            hwm_kib: proc_status(pid, "VmHWM"),
            threads: proc_status(pid, "Threads"),
            fds: open_fds(pid),
        }
    }
}

/// Samples the server's threads, descriptors and memory every 10 ms until finished; keeps the
/// peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Usage>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut peak = Usage::default();
            while !flag.load(Ordering::Relaxed) {
                let now = Usage::of(pid);
                peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                peak.hwm_kib = peak.hwm_kib.max(now.hwm_kib);
                peak.threads = peak.threads.max(now.threads);
                peak.fds = peak.fds.max(now.fds);
                thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// Prints one scenario's figures and checks the bounds every scenario shares.
fn report(scenario: &str, tried: usize, before: Usage, peak: Usage, after: Usage, extra: &str) {
    let _ = writeln!(
        io::stderr(),
        "hostile: {scenario}: {tried} connections tried; server VmRSS {} KiB before, {} KiB after, \
         peak VmHWM {} KiB (bound {RSS_BOUND_KIB} KiB); threads {} before, peak {}; fds {} before, peak {}; {extra}",
        before.rss_kib,
        after.rss_kib,
        after.hwm_kib.max(peak.hwm_kib),
        before.threads,
        peak.threads,
        before.fds,
        peak.fds,
    );
    assert!(
        after.hwm_kib.max(peak.hwm_kib) < RSS_BOUND_KIB,
        "{scenario}: the server's peak RSS grew to {} KiB",
        after.hwm_kib.max(peak.hwm_kib)
    );
}

/// The rx packet counter of `dev` in `ns`: frames taptun wrote into the device.
fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{dev}/statistics/rx_packets"))
        .output()
        .expect("cat rx_packets");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no rx counter for {dev} in {}", ns.name))
}

/// The rx counter of `dev`, once it has not moved for half a second (the last ping's packets
/// are in).
fn quiet_rx(ns: &Netns, dev: &str) -> u64 {
    let mut last = rx_packets(ns, dev);
    let mut since = Instant::now();
    let quiet = wait_for(DEADLINE, || {
        let now = rx_packets(ns, dev);
        if now != last {
            last = now;
            since = Instant::now();
        }
        since.elapsed() >= Duration::from_millis(500)
    });
    assert!(quiet, "{dev} in {} never went quiet", ns.name);
    last
}

fn assert_nothing_injected(p: &Pair, rx_before: u64, scenario: &str) {
    let rx_after = rx_packets(&p.a, "tt0");
    assert_eq!(
        rx_after,
        rx_before,
        "{scenario}: {} frame(s) reached the server's device while only the attacker talked",
        rx_after - rx_before
    );
}

// ---------------------------------------------------------------------------------------------
// Attack connections: open many, watch them being closed.

/// One attack connection and what became of it.
struct Conn {
    stream: TcpStream,
    opened: Instant,
    /// Bytes the server sent on it.
    answered: usize,
    /// How long after opening the server closed it.
    closed_after: Option<Duration>,
}

impl Conn {
    fn new(stream: TcpStream, opened: Instant) -> Conn {
        stream.set_nonblocking(true).expect("non-blocking");
        Conn {
            stream,
            opened,
            answered: 0,
            closed_after: None,
        }
    }

    /// Reads what has arrived; true once the server has closed the connection.
    fn poll(&mut self) -> bool {
        if self.closed_after.is_some() {
            return true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.answered += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset: the server closed with our bytes unread.
                Err(_) => break,
            }
        }
        self.closed_after = Some(self.opened.elapsed());
        true
    }
}

/// Connections being watched, and those already closed (their sockets released).
#[derive(Default)]
struct Crowd {
    open: Vec<Conn>,
    closed: Vec<(usize, Duration)>,
    tried: usize,
}

impl Crowd {
    fn add(&mut self, streams: Vec<(TcpStream, Instant)>, first_words: impl Fn(usize) -> Vec<u8>) {
        for (stream, opened) in streams {
            let words = first_words(self.tried);
            self.tried += 1;
            let mut conn = Conn::new(stream, opened);
            if !words.is_empty() {
                // The server may already have closed it: that is its right.
                let _ = write_all_nonblocking(&mut conn.stream, &words);
            }
            self.open.push(conn);
        }
    }

    /// Polls every open connection; moves the closed ones out.
    fn sweep(&mut self) {
        let mut still = Vec::with_capacity(self.open.len());
        for mut conn in self.open.drain(..) {
            if conn.poll() {
                let after = conn.closed_after.unwrap_or_default();
                self.closed.push((conn.answered, after));
            } else {
                still.push(conn);
            }
        }
        self.open = still;
    }

    /// Waits until the server has closed every connection; returns how long that took.
    fn wait_all_closed(&mut self, scenario: &str) -> Duration {
        let start = Instant::now();
        let done = wait_for(CLOSE_DEADLINE, || {
            self.sweep();
            self.open.is_empty()
        });
        assert!(
            done,
            "{scenario}: {} connection(s) still open {CLOSE_DEADLINE:?} after the attack",
            self.open.len()
        );
        start.elapsed()
    }

    /// Connections that got `bytes` bytes from the server, and those that got anything.
    fn answered(&self, bytes: usize) -> (usize, usize) {
        let exact = self.closed.iter().filter(|(n, _)| *n == bytes).count();
        let any = self.closed.iter().filter(|(n, _)| *n > 0).count();
        (exact, any)
    }

    /// Closed within `early` of opening (evicted for a newer one), and the longest lifetime.
    fn lifetimes(&self, early: Duration) -> (usize, Duration) {
        let evicted = self.closed.iter().filter(|(_, d)| *d < early).count();
        let longest = self
            .closed
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        (evicted, longest)
    }
}

/// Writes all of `bytes` to a non-blocking socket, waiting a little when its buffer is full.
fn write_all_nonblocking(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens `total` connections in batches, each sending `first_words(i)`, and then waits until the
/// server has closed them all. Checks that the session works while the last batch is pending and
/// that nothing reached the device. Returns the crowd and how long the closing took.
fn flood(
    s: &mut Setup,
    scenario: &str,
    total: usize,
    first_words: impl Fn(usize) -> Vec<u8>,
) -> (Crowd, Duration) {
    let rx_before = quiet_rx(&s.p.a, "tt0");
    let mut crowd = Crowd::default();
    while crowd.tried < total {
        let streams = s.connect(BATCH.min(total - crowd.tried));
        crowd.add(streams, &first_words);
        crowd.sweep();
    }
    crowd.sweep();
    assert_nothing_injected(&s.p, rx_before, scenario);
    s.assert_server_running();
    // Under attack: the last batch's handshakes are still pending.
    let pending = crowd.open.len();
    s.assert_session_works();
    let _ = writeln!(
        io::stderr(),
        "hostile: {scenario}: ping across the tunnel works with {pending} attack connections still open"
    );
    let closing = crowd.wait_all_closed(scenario);
    (crowd, closing)
}

// ---------------------------------------------------------------------------------------------
// The library's initiator, for attackers that hold the client's keys.

/// The client's identity, as the real client has it: an attacker who stole its keys.
fn client_identity(p: &Pair) -> Identity {
    let server_public = private_key(&p.server_key).public_key();
    Identity::new(
        private_key(&p.client_key),
        server_public,
        Cipher::ChaChaPoly,
    )
    .expect("a valid key pair")
}

/// A fresh, valid message 1 from the client's keys, with its length prefix.
fn valid_message1(identity: &Identity) -> Vec<u8> {
    let mut init = Initiator::new(identity, Hello::new(Layer::Tap, 1500)).expect("initiator");
    let mut buf = vec![0u8; taptun::MAX_MESSAGE];
    let n = init.write_message1(&mut buf).expect("message 1");
    framed(&buf[..n])
}

// ---------------------------------------------------------------------------------------------
// A recording, tampering TCP proxy between the client and the server.

/// What the proxy saw on one connection.
#[derive(Default)]
struct Recording {
    /// Every byte the client sent.
    from_client: Vec<u8>,
    /// The server closed its side.
    server_closed: bool,
    /// A bit of a transport message was flipped.
    flipped: bool,
}

/// Flip a bit in the next client-to-server transport message of this many bytes.
type Tamper = Arc<Mutex<Option<usize>>>;

struct Proxy {
    port: u16,
    recordings: Arc<Mutex<Vec<Arc<Mutex<Recording>>>>>,
    tamper: Tamper,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy listening on 127.0.0.1 in `ns` and forwarding to `upstream` from there.
    fn start(ns: &Netns, upstream: String) -> Proxy {
        let recordings: Arc<Mutex<Vec<Arc<Mutex<Recording>>>>> = Arc::default();
        let tamper: Tamper = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, tam, flag) = (recordings.clone(), tamper.clone(), stop.clone());
        let (port, thread) = in_netns(ns, move || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
            let port = listener.local_addr().expect("proxy address").port();
            listener.set_nonblocking(true).expect("non-blocking");
            // Threads started here stay in the namespace, so upstream connections are made there.
            let thread = thread::spawn(move || proxy_loop(listener, upstream, rec, tam, flag));
            (port, thread)
        });
        Proxy {
            port,
            recordings,
            tamper,
            stop,
            thread: Some(thread),
        }
    }

    fn recording(&self, index: usize) -> Arc<Mutex<Recording>> {
        self.recordings.lock().expect("recordings")[index].clone()
    }

    fn connections(&self) -> usize {
        self.recordings.lock().expect("recordings").len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn proxy_loop(
    listener: TcpListener,
    upstream: String,
    recordings: Arc<Mutex<Vec<Arc<Mutex<Recording>>>>>,
    tamper: Tamper,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => panic!("proxy accept: {e}"),
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(&upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let recording = Arc::new(Mutex::new(Recording::default()));
        recordings
            .lock()
            .expect("recordings")
            .push(recording.clone());
        let (c, s) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let (rec, tam) = (recording.clone(), tamper.clone());
        thread::spawn(move || client_to_server(c, s, &rec, &tam));
        thread::spawn(move || server_to_client(server, client, &recording));
    }
}

/// Forwards whole messages, recording them; flips one bit of a transport message when asked.
fn client_to_server(
    mut client: TcpStream,
    mut server: TcpStream,
    recording: &Mutex<Recording>,
    tamper: &Tamper,
) {
    let mut pending = Vec::new();
    let mut index = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Ok(Some((start, end))) = taptun::decode_message(&pending) {
            let mut message: Vec<u8> = pending.drain(..end).collect();
            recording
                .lock()
                .expect("recording")
                .from_client
                .extend_from_slice(&message);
            // Messages 0 and 1 are the handshake's; from 2 on, transport.
            let mut target = tamper.lock().expect("tamper");
            if index >= 2 && *target == Some(end - start) {
                message[start + (end - start) / 2] ^= 0x04;
                *target = None;
                recording.lock().expect("recording").flipped = true;
            }
            drop(target);
            index += 1;
            if server.write_all(&message).is_err() {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = server.write_all(&pending);
    let _ = server.shutdown(Shutdown::Write);
}

fn server_to_client(mut server: TcpStream, mut client: TcpStream, recording: &Mutex<Recording>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    recording.lock().expect("recording").server_closed = true;
    let _ = client.shutdown(Shutdown::Both);
}

/// A server, a proxy in `b`, and a client that reaches the server through the proxy.
fn setup_with_proxy() -> (Setup, Proxy) {
    let p = pair_without_ipv6();
    let (server, pid) = start_server(&p);
    let proxy = Proxy::start(&p.b, format!("{}:{}", p.server_addr(), p.port));
    let client = client_through(&p, &proxy, "client");
    p.address_tap();
    pin_neighbours(&p);
    p.assert_tap_ping();
    let s = Setup {
        client: Some(client),
        server,
        pid,
        p,
    };
    (s, proxy)
}

fn client_through(p: &Pair, proxy: &Proxy, name: &str) -> Proc {
    let args = format!(
        "-c -m 127.0.0.1 -p {} -v -d tt0 {}",
        proxy.port,
        p.client_secrets()
    );
    Proc::start(name, p.b.taptun(&args), &p.scratch)
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

#[test]
fn a_thousand_silent_connections_are_closed_and_the_session_survives() {
    if !common::require_root() {
        return;
    }
    let mut s = Setup::new();
    let before = Usage::of(s.pid);
    let sampler = Sampler::start(s.pid);
    let (crowd, closing) = flood(&mut s, "silent", 1000, |_| Vec::new());
    let peak = sampler.finish();
    let after = Usage::of(s.pid);

    let (_, answered) = crowd.answered(0);
    assert_eq!(answered, 0, "silent connections got an answer");
    let (evicted, longest) = crowd.lifetimes(Duration::from_millis(2500));
    // Without the cap, every one would live until the 3 s deadline.
    assert!(
        evicted >= crowd.tried / 2,
        "only {evicted} of {} silent connections were closed before the deadline: is the cap of \
         {MAX_PENDING} pending handshakes enforced?",
        crowd.tried
    );
    let recover = s.right_client_gets_in("client again");
    s.assert_server_running();
    report(
        "1000 silent connections",
        crowd.tried,
        before,
        peak,
        after,
        &format!(
            "{evicted} closed early to keep at most {MAX_PENDING} pending, the rest at the message-1 deadline \
             (longest lived {longest:.1?}); last closed {closing:.1?} after the last batch; \
             right client back in {recover:.1?}"
        ),
    );
    assert!(
        peak.threads <= before.threads + MAX_PENDING + THREAD_SLACK,
        "the server ran {} threads (before: {})",
        peak.threads,
        before.threads
    );
}

#[test]
fn a_thousand_valid_first_messages_that_stall_are_closed_and_the_session_survives() {
    if !common::require_root() {
        return;
    }
    let mut s = Setup::new();
    let identity = client_identity(&s.p);
    // Distinct ephemeral keys: none is a replay, each costs the server a message 2.
    let messages: Vec<Vec<u8>> = (0..1000).map(|_| valid_message1(&identity)).collect();
    let before = Usage::of(s.pid);
    let sampler = Sampler::start(s.pid);
    let (crowd, closing) = flood(&mut s, "stalled message 1", messages.len(), |i| {
        messages[i].clone()
    });
    let peak = sampler.finish();
    let after = Usage::of(s.pid);

    // Message 2 is 102 bytes and its prefix 2: an authenticated message 1 gets exactly that.
    let (message2, answered) = crowd.answered(2 + 102);
    assert_eq!(
        answered, message2,
        "a stalled connection got something other than message 2"
    );
    let (evicted, longest) = crowd.lifetimes(Duration::from_millis(9000));
    // Without the cap, every one would live until the 10 s deadline.
    assert!(
        evicted >= crowd.tried / 2,
        "only {evicted} of {} stalled connections were closed before the deadline: is the cap of \
         {MAX_PENDING} pending handshakes enforced?",
        crowd.tried
    );
    let recover = s.right_client_gets_in("client again");
    s.assert_server_running();
    report(
        "1000 valid message 1 then stall",
        crowd.tried,
        before,
        peak,
        after,
        &format!(
            "{message2} got message 2 before being closed; {evicted} closed early to keep at most {MAX_PENDING} pending, \
             the rest at the handshake deadline (longest lived {longest:.1?}); last closed {closing:.1?} after the last batch; \
             right client back in {recover:.1?}"
        ),
    );
    assert!(
        peak.threads <= before.threads + MAX_PENDING + THREAD_SLACK,
        "the server ran {} threads (before: {})",
        peak.threads,
        before.threads
    );
}

#[test]
fn random_bytes_and_a_trickled_65535_byte_message_are_closed_without_an_answer() {
    if !common::require_root() {
        return;
    }
    let mut s = Setup::new();
    let before = Usage::of(s.pid);
    let sampler = Sampler::start(s.pid);

    // Random bytes, 1 to 8192 of them: most fail message 1's tag at once, some announce a longer
    // message than they send and wait for the deadline, some start with a zero length.
    let (random, random_closing) = flood(&mut s, "random bytes", 300, |i| {
        let len = 1 + (i * 7919) % 8192;
        pseudo_random_bytes(len, 0x5eed_0000 + i as u64)
    });
    assert_eq!(
        random.answered(0).1,
        0,
        "a connection sending random bytes got an answer"
    );

    // A length prefix of 65535, then one byte every 80 ms (half of them after sending most of the
    // message at once): the server must still close at the message-1 deadline (3 s), not wait
    // for the trickle. As many as may be pending at once, none evicted, so that this is the
    // deadline at work and half of them hold a nearly full read buffer.
    let rx_before = quiet_rx(&s.p.a, "tt0");
    let mut crowd = Crowd::default();
    let streams = s.connect(MAX_PENDING as usize);
    crowd.add(streams, |i| {
        let mut words = vec![0xff, 0xff];
        // Half send most of the message at once, half only the prefix before trickling.
        if i % 2 == 0 {
            words.extend_from_slice(&pseudo_random_bytes(65000, 0x7111_0000 + i as u64));
        }
        words
    });
    let start = Instant::now();
    let mut trickled = 0usize;
    let all_closed = wait_for(CLOSE_DEADLINE, || {
        for conn in &mut crowd.open {
            if conn.stream.write(&[0x42]).is_ok() {
                trickled += 1;
            }
        }
        crowd.sweep();
        thread::sleep(Duration::from_millis(80));
        crowd.open.is_empty()
    });
    let trickle_closing = start.elapsed();
    assert!(
        all_closed,
        "{} trickling connection(s) still open after {CLOSE_DEADLINE:?}",
        crowd.open.len()
    );
    assert_eq!(
        crowd.answered(0).1,
        0,
        "a trickling connection got an answer"
    );
    let (_, longest) = crowd.lifetimes(Duration::ZERO);
    assert_nothing_injected(&s.p, rx_before, "65535 trickle");
    s.assert_session_works();
    let peak = sampler.finish();
    let after = Usage::of(s.pid);
    let recover = s.right_client_gets_in("client again");
    s.assert_server_running();
    report(
        "300 random-byte connections, then 64 trickling a 65535-byte message 1",
        random.tried + crowd.tried,
        before,
        peak,
        after,
        &format!(
            "random: last closed {random_closing:.1?} after the last batch; trickle: {trickled} bytes trickled, \
             all closed within {trickle_closing:.1?} (longest lived {longest:.1?}); right client back in {recover:.1?}"
        ),
    );
}

#[test]
fn a_replayed_session_and_64_replayed_first_messages_are_refused() {
    if !common::require_root() {
        return;
    }
    let (mut s, proxy) = setup_with_proxy();
    // More traffic in the recording: pings are transport messages.
    s.assert_session_works();
    let recorded = proxy
        .recording(0)
        .lock()
        .expect("recording")
        .from_client
        .clone();
    let message1 = match taptun::decode_message(&recorded) {
        Ok(Some((_, end))) => recorded[..end].to_vec(),
        other => panic!("the recording does not start with a message: {other:?}"),
    };
    assert_eq!(message1.len(), 2 + taptun::MESSAGE1_LEN);

    let before = Usage::of(s.pid);
    let sampler = Sampler::start(s.pid);
    let rx_before = quiet_rx(&s.p.a, "tt0");

    // The whole recorded session, handshake and transport, replayed to the server.
    let mut crowd = Crowd::default();
    let streams = s.connect(1);
    crowd.add(streams, |_| recorded.clone());
    // 64 replays of its message 1 at once.
    let streams = s.connect(64);
    crowd.add(streams, |_| message1.clone());
    let closing = crowd.wait_all_closed("replays");
    assert_eq!(
        crowd.answered(0).1,
        0,
        "a replay got an answer (message 2 would mean the replay cache let it through)"
    );
    assert_nothing_injected(&s.p, rx_before, "replays");
    s.assert_server_running();
    s.assert_session_works();
    let peak = sampler.finish();
    let after = Usage::of(s.pid);
    // The server logs each refusal just after closing the connection.
    let mut refused = 0;
    wait_for(DEADLINE, || {
        refused = s.server.stderr().matches("replay").count();
        refused >= crowd.tried
    });
    assert!(
        refused >= crowd.tried,
        "the server logged {refused} replays for {} replayed connections",
        crowd.tried
    );

    // The right client, straight to the server this time, still gets in.
    let recover = s.right_client_gets_in("client again");
    s.assert_server_running();
    report(
        "recorded session replayed, then 64 replays of its message 1",
        crowd.tried,
        before,
        peak,
        after,
        &format!(
            "{} recorded bytes replayed, {refused} replays logged, all closed without an answer within {closing:.1?}; \
             right client back in {recover:.1?}",
            recorded.len()
        ),
    );
    drop(proxy);
}

#[test]
fn a_flipped_bit_in_the_transport_phase_ends_the_session_without_injecting_the_frame() {
    if !common::require_root() {
        return;
    }
    let (mut s, proxy) = setup_with_proxy();
    let before = Usage::of(s.pid);

    // A UDP datagram of a size nothing else has, from b to a across the tunnel: 777 bytes of
    // payload make a 14 + 20 + 8 + 777 = 819-byte frame and, behind the 10-byte virtio header
    // that both ends' default GSO puts in front of every frame, an 845-byte transport message.
    const PAYLOAD: usize = 777;
    let message_len = taptun::VIRTIO_HDR_LEN + 14 + 20 + 8 + PAYLOAD + taptun::TAG_LEN;
    let target: SocketAddr = format!("{}:{}", s.p.tap_addr(1), s.p.port + 2000)
        .parse()
        .expect("address");
    let receiver = in_netns(&s.p.a, move || UdpSocket::bind(target).expect("bind in a"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let sender = in_netns(&s.p.b, || UdpSocket::bind("0.0.0.0:0").expect("bind in b"));

    let rx_before = quiet_rx(&s.p.a, "tt0");
    *proxy.tamper.lock().expect("tamper") = Some(message_len);
    let tampered_at = Instant::now();
    sender
        .send_to(&[0xab; PAYLOAD], target)
        .expect("send the datagram");
    let recording = proxy.recording(0);
    let ended = wait_for(DEADLINE, || {
        let r = recording.lock().expect("recording");
        r.flipped && r.server_closed
    });
    assert!(
        recording.lock().expect("recording").flipped,
        "the proxy never saw the datagram's transport message"
    );
    assert!(ended, "the server did not end the tampered session");
    let ended_after = tampered_at.elapsed();
    let mut buf = [0u8; 2048];
    match receiver.recv_from(&mut buf) {
        Ok((n, from)) => panic!("the tampered datagram arrived: {n} bytes from {from}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    assert_nothing_injected(&s.p, rx_before, "flipped bit");
    s.assert_server_running();

    // A restarted client gets in through the same proxy (no longer tampering), and the same
    // datagram now arrives intact.
    if let Some(mut old) = s.client.take() {
        old.terminate();
    }
    let start = Instant::now();
    s.client = Some(client_through(&s.p, &proxy, "client again"));
    s.p.address_client_tap("tt0");
    pin_neighbours(&s.p);
    s.p.assert_tap_ping();
    let recover = start.elapsed();
    sender
        .send_to(&[0xab; PAYLOAD], target)
        .expect("send the datagram");
    let (n, _) = receiver
        .recv_from(&mut buf)
        .expect("the untampered datagram arrives");
    assert_eq!(n, PAYLOAD);
    let after = Usage::of(s.pid);
    report(
        "flipped bit in a transport message",
        proxy.connections(),
        before,
        after,
        after,
        &format!(
            "session ended {ended_after:.1?} after the flip, the frame never reached the device; \
             restarted client back in {recover:.1?}"
        ),
    );
}

#[test]
fn a_peer_that_never_reads_does_not_grow_the_server_and_the_right_peer_gets_back_in() {
    if !common::require_root() {
        return;
    }
    let mut s = Setup::new();
    // The attacker holds the client's keys, so it takes the session over; the real client must
    // not come back on its own meanwhile.
    if let Some(mut client) = s.client.take() {
        client.terminate();
    }
    let identity = client_identity(&s.p);
    let addr: SocketAddr = s.server_addr().parse().expect("address");
    let stream = in_netns(&s.p.b, move || {
        // A small receive buffer, so that the server's side fills up at once.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), DEADLINE)
            .expect("connect");
        TcpStream::from(socket)
    });
    let mut io = TcpMessages::new(&stream);
    let established = taptun::initiate(
        &mut io,
        &identity,
        Hello::new(Layer::Tap, 1500),
        Instant::now() + DEADLINE,
    )
    .expect("the attacker's handshake (it has the client's keys)");
    assert_eq!(
        established.peer_key,
        private_key(&s.p.server_key).public_key()
    );
    drop(io);
    let rx_before = quiet_rx(&s.p.a, "tt0");

    // Traffic from a towards b's tunnel address: the server reads it from its device and must
    // send it to a peer that reads nothing. (The right client's entry is pinned again when it
    // comes back.)
    let b_addr = s.p.tap_addr(2);
    s.p.a.ip(&format!(
        "neigh replace {b_addr} lladdr 02:00:00:00:00:02 dev tt0 nud permanent"
    ));
    let before = Usage::of(s.pid);
    let sampler = Sampler::start(s.pid);
    let target: SocketAddr = format!("{b_addr}:9").parse().expect("address");
    let flood_for = Duration::from_secs(5);
    let sent = in_netns(&s.p.a, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind in a");
        let payload = [0x5a; 1400];
        let (mut sent, start) = (0u64, Instant::now());
        while start.elapsed() < flood_for {
            for _ in 0..50 {
                if socket.send_to(&payload, target).is_ok() {
                    sent += 1;
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    s.assert_server_running();
    let peak = sampler.finish();
    let during = Usage::of(s.pid);
    assert_nothing_injected(&s.p, rx_before, "never reads");

    // The right client replaces the stuck session.
    let recover = s.right_client_gets_in("client again");
    s.assert_server_running();
    // The server has let go of the stuck connection: it ends (after whatever was queued).
    let mut stuck = stream;
    stuck
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut queued = 0usize;
    let mut buf = vec![0u8; 65536];
    let released = wait_for(DEADLINE, || match stuck.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            queued += n;
            false
        }
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        ),
    });
    assert!(
        released,
        "the server kept the replaced, non-reading connection open"
    );
    let after = Usage::of(s.pid);
    report(
        "authenticated peer that never reads",
        1,
        before,
        peak,
        during,
        &format!(
            "{sent} datagrams of 1400 bytes sent towards it in {flood_for:?}; {queued} bytes were queued for it when it \
             was replaced; right client back in {recover:.1?}; VmRSS {} KiB at the end",
            after.rss_kib
        ),
    );
}
