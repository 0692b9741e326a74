//! Frames per second and idle round trips through a `qemu:` endpoint, against the TAP path in the
//! same run (issue 15's figures). `cargo bench --bench qemu_endpoint [-- --rounds N --time S]`,
//! as root (namespaces and TAP devices).
//!
//! Two namespaces joined by a veth pair, and two tunnels over it, each between two release-build
//! taptun processes (-s in A, -c in B), all four idle but for the one being measured:
//!
//! - qemu: `-d qemu:SOCK` at both ends. This process is the "VM" on each socket and speaks QEMU's
//!   framing (u32 big-endian length, then the frame): a sender writes a batch of frames per
//!   write into A's socket, a counter reads B's socket through a large buffer.
//! - tap: TAP devices at both ends, addressed; a sender in A floods UDP datagrams sized to make
//!   frames of the given size to B's tunnel address, where a socket is bound but never read (so
//!   no ICMP comes back); frames are counted by B's TAP device (rx_packets: what taptun wrote
//!   into it).
//!
//! Each throughput figure is one direction, A to B: frames received per second over `--time`
//! seconds after a 1 s warm-up, at 64 and 1,500 bytes per Ethernet frame (no FCS), the
//! frames' bits per second, and the CPU time both taptun processes spent per frame meanwhile
//! (utime + stime from /proc/PID/stat): on a machine whose other work takes CPU from the
//! tunnel, that figure moves less than the rate does. The generators' own ceilings are measured in the same run, with no
//! taptun: the QEMU-framing sender straight into the counter over a socket pair, and the UDP
//! sender straight over the veth, so that the table shows whether a generator was the limit.
//! Idle RTT: 200 single 98-byte frames 10 ms apart (a frame B's side echoes back in this process
//! for qemu:; `ping` for tap, a 98-byte frame too), p50 and p99.
//!
//! Everything is measured `--rounds` times (default 3), in turn, and the table gives each figure's
//! median and its spread (min to max, as a share of the median): the machine is shared and noisy.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TAPTUN: &str = env!("CARGO_BIN_EXE_taptun");
/// Ethertypes from the local experimental range: flood frames are counted, probes echoed.
const FLOOD: [u8; 2] = [0x88, 0xb5];
const PROBE: [u8; 2] = [0x88, 0xb6];
/// Ethernet frame sizes measured (no FCS).
const SIZES: [usize; 2] = [64, 1500];
/// The round-trip probe: the size of a default `ping`'s frame (14 + 20 + 8 + 56).
const PROBE_SIZE: usize = 98;
const PROBES: usize = 200;
const PROBE_GAP: Duration = Duration::from_millis(10);
const WARM_UP: Duration = Duration::from_secs(1);
/// UDP over IPv4 over Ethernet: what a datagram adds to make a frame.
const UDP_OVERHEAD: usize = 14 + 20 + 8;
const UDP_PORT: u16 = 5999;
/// How long anything set-up waits for may take.
const DEADLINE: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Re-executed inside a namespace as the UDP generator (see `udp_send`, `udp_sink`).
    match args.first().map(String::as_str) {
        Some("udp-send") => return udp_send(&args[1..]),
        Some("udp-sink") => return udp_sink(&args[1..]),
        _ => {}
    }
    let mut rounds = 3;
    let mut time = 3.0;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--time" => {
                time = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--time SECONDS")
            }
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown argument {other}: [--rounds N] [--time SECONDS]"),
        }
    }
    if sh(Command::new("id").arg("-u")).trim() != "0" {
        eprintln!("qemu_endpoint: needs root (network namespaces, TAP devices); skipped");
        return;
    }
    let bench = Bench::new();
    let window = Duration::from_secs_f64(time);
    let mut figures: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |name: String, value: f64| match figures.iter_mut().find(|f| f.0 == name) {
        Some(f) => f.1.push(value),
        None => figures.push((name, vec![value])),
    };
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        for size in SIZES {
            let (fps, cpu) = bench.qemu_flood(size, window);
            record(format!("qemu: {size} B, frames/s"), fps);
            record(format!("qemu: {size} B, taptun CPU us/frame"), cpu);
            let (fps, cpu) = bench.tap_flood(size, window);
            record(format!("tap {size} B, frames/s"), fps);
            record(format!("tap {size} B, taptun CPU us/frame"), cpu);
            record(
                format!("ceiling qemu-framing generator {size} B, frames/s"),
                generator_ceiling(size, window),
            );
            record(
                format!("ceiling UDP generator over veth {size} B, frames/s"),
                bench.udp_ceiling(size, window),
            );
        }
        let (p50, p99) = bench.qemu_rtt();
        record("qemu: idle RTT p50, ms".into(), p50);
        record("qemu: idle RTT p99, ms".into(), p99);
        let (p50, p99) = bench.tap_rtt();
        record("tap idle RTT p50, ms".into(), p50);
        record("tap idle RTT p99, ms".into(), p99);
    }
    print_table(&figures, rounds, time);
}

/// Prints each figure's median, its spread, and for rates the frames' Mbit/s.
fn print_table(figures: &[(String, Vec<f64>)], rounds: usize, time: f64) {
    println!("\n{rounds} rounds, {time} s per throughput figure; median (min-max, spread)\n");
    println!(
        "| {:<52} | {:>12} | {:>9} | {:>26} |",
        "figure", "median", "Mbit/s", "min - max (spread)"
    );
    println!("|{:-<54}|{:->14}|{:->11}|{:->28}|", "", "", "", "");
    for (name, values) in figures {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        let spread = if median > 0.0 {
            (max - min) / median * 100.0
        } else {
            0.0
        };
        let size: Option<f64> = SIZES
            .iter()
            .find(|s| name.ends_with(&format!(" {s} B, frames/s")))
            .map(|&s| s as f64);
        let (value, mbits, range) = match size {
            Some(size) => (
                format!("{median:.0}"),
                format!("{:.0}", median * size * 8.0 / 1e6),
                format!("{min:.0} - {max:.0} ({spread:.0} %)"),
            ),
            None => (
                format!("{median:.3}"),
                String::new(),
                format!("{min:.3} - {max:.3} ({spread:.0} %)"),
            ),
        };
        println!("| {name:<52} | {value:>12} | {mbits:>9} | {range:>26} |");
    }
}

/// An Ethernet frame of `size` bytes with `kind` as ethertype and `seq` after it.
fn frame(size: usize, kind: [u8; 2], seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
    f[12..14].copy_from_slice(&kind);
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    f
}

/// `batch` frames of `size` bytes in QEMU's framing, for one write.
fn framed_batch(size: usize, batch: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch * (size + 4));
    for i in 0..batch {
        buf.extend_from_slice(&(size as u32).to_be_bytes());
        buf.extend_from_slice(&frame(size, FLOOD, i as u64));
    }
    buf
}

/// Writes batches of framed frames into `stream` until `stop`.
fn flood(mut stream: UnixStream, size: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let batch = framed_batch(size, (64 * 1024 / (size + 4)).max(1));
        while !stop.load(Ordering::Relaxed) {
            if stream.write_all(&batch).is_err() {
                break;
            }
        }
    })
}

/// Reads QEMU-framed frames from `stream` until it ends: counts flood frames in `count`, and
/// hands each probe to `probe` (which echoes it or reports it).
fn read_frames(
    mut stream: UnixStream,
    count: Arc<AtomicU64>,
    mut probe: impl FnMut(&[u8]) + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut start, mut end) = (0, 0);
        loop {
            // Parse every whole frame in buf[start..end].
            while end - start >= 4 {
                let len = u32::from_be_bytes(buf[start..start + 4].try_into().unwrap()) as usize;
                assert!(len <= 65536 + 4096, "taptun sent a length of {len}");
                if end - start < 4 + len {
                    break;
                }
                let f = &buf[start + 4..start + 4 + len];
                if f.len() >= 14 && f[12..14] == PROBE {
                    probe(f);
                } else {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                start += 4 + len;
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            match stream.read(&mut buf[end..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => end += n,
            }
        }
    })
}

/// Frames per second that `count` counts over `window`, after the warm-up, and the CPU time the
/// processes `pids` spent per frame meanwhile, in microseconds.
fn rate(mut count: impl FnMut() -> u64, pids: &[u32], window: Duration) -> (f64, f64) {
    thread::sleep(WARM_UP);
    let (c0, cpu0, t0) = (count(), cpu_seconds(pids), Instant::now());
    thread::sleep(window);
    let (c1, cpu1, t1) = (count(), cpu_seconds(pids), Instant::now());
    let frames = (c1 - c0) as f64;
    let per_frame = if frames > 0.0 {
        (cpu1 - cpu0) / frames * 1e6
    } else {
        0.0
    };
    (frames / (t1 - t0).as_secs_f64(), per_frame)
}

/// User and system CPU seconds of processes `pids` so far (all their threads), from
/// /proc/PID/stat in clock ticks of 1/100 s (USER_HZ on Linux).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The fields after "(comm)": state is field 3, utime 14 and stime 15.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
            let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
            ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0)
        })
        .sum::<f64>()
        / 100.0
}

/// Waits until `count` has stopped moving: the pipeline is empty before the next figure.
fn settle(count: &AtomicU64) {
    let mut last = count.load(Ordering::Relaxed);
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = count.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// The QEMU-framing generator and counter with nothing between them: a socket pair.
fn generator_ceiling(size: usize, window: Duration) -> f64 {
    let (tx, rx) = UnixStream::pair().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(tx, size, stop.clone());
    let reader = read_frames(rx, count.clone(), |_| {});
    let (fps, _) = rate(|| count.load(Ordering::Relaxed), &[], window);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    reader.join().unwrap();
    fps
}

/// The p50 and p99 of `values`, in the order given.
fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        ns.ip("link set lo up");
        ns
    }

    fn ip(&self, args: &str) {
        sh(Command::new("ip")
            .args(["-n", &self.0])
            .args(args.split_whitespace()));
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    /// A counter of device `dev` here (rx_packets...), from the namespace's own sysfs.
    fn counter(&self, dev: &str, name: &str) -> u64 {
        let out = self
            .command("cat")
            .arg(format!("/sys/class/net/{dev}/statistics/{name}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a command to completion; panics with its stderr if it fails.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `done` every 20 ms until it holds or DEADLINE passes.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A connected "VM" on each qemu: socket: A's end sends, B's end counts and echoes probes.
struct Vms {
    a: UnixStream,
    b_count: Arc<AtomicU64>,
    /// Sequence numbers of probes that came back to A.
    probes: Mutex<Receiver<u64>>,
}

/// The two namespaces, the four taptun processes, and the VMs on the qemu: sockets.
struct Bench {
    // Declared first so that they are dropped first: the processes before their namespaces.
    procs: Vec<Proc>,
    vms: Vms,
    dir: PathBuf,
    a: Netns,
    b: Netns,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    fn new() -> Bench {
        let tag = std::process::id() % 100_000;
        let dir = std::env::temp_dir().join(format!("taptun-qemu-bench-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let (a, b) = (
            Netns::new(format!("ttqb{tag}a")),
            Netns::new(format!("ttqb{tag}b")),
        );
        sh(Command::new("ip").args([
            "link", "add", "ttqbv", "netns", &a.0, "type", "veth", "peer", "name", "ttqbv",
            "netns", &b.0,
        ]));
        for (ns, host) in [(&a, 1), (&b, 2)] {
            ns.ip(&format!("addr add 10.81.0.{host}/24 dev ttqbv"));
            ns.ip("link set ttqbv up");
        }
        let key = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, sh(Command::new(TAPTUN).arg("genkey"))).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            format!("@{}", path.display())
        };
        let (ka, kb) = (key("a.key"), key("b.key"));
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let start = |ns: &Netns, args: String, name: &str| {
            let child = ns
                .command(TAPTUN)
                .args(args.split_whitespace())
                .stdin(Stdio::null())
                .stderr(log(name))
                .spawn()
                .unwrap();
            Proc(child)
        };
        let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
        let procs = vec![
            start(
                &a,
                format!("-s -p 1981 -v -l {ka} -r {kb} -d qemu:{}", sa.display()),
                "qemu-s.log",
            ),
            start(
                &b,
                format!(
                    "-c -m 10.81.0.1 -p 1981 -v -l {kb} -r {ka} -d qemu:{}",
                    sb.display()
                ),
                "qemu-c.log",
            ),
            start(
                &a,
                format!("-s -p 1982 -v -l {ka} -r {kb} -d ttqbt"),
                "tap-s.log",
            ),
            start(
                &b,
                format!("-c -m 10.81.0.1 -p 1982 -v -l {kb} -r {ka} -d ttqbt"),
                "tap-c.log",
            ),
        ];
        let established = |name: &str| {
            std::fs::read_to_string(dir.join(name)).is_ok_and(|l| l.contains(" established"))
        };
        assert!(
            wait_for(|| established("qemu-c.log") && established("tap-c.log")),
            "the tunnels did not come up; logs in {}",
            dir.display()
        );
        for (ns, host) in [(&a, 1), (&b, 2)] {
            ns.ip(&format!("addr add 10.82.0.{host}/24 dev ttqbt"));
            ns.ip("link set ttqbt up");
        }
        let connect = |path: &Path| {
            let mut stream = None;
            assert!(wait_for(|| {
                stream = UnixStream::connect(path).ok();
                stream.is_some()
            }));
            stream.unwrap()
        };
        let (va, vb) = (connect(&sa), connect(&sb));
        let (probe_tx, probe_rx): (Sender<u64>, _) = channel();
        read_frames(
            va.try_clone().unwrap(),
            Arc::new(AtomicU64::new(0)),
            move |f| {
                let _ = probe_tx.send(u64::from_be_bytes(f[14..22].try_into().unwrap()));
            },
        );
        let b_count = Arc::new(AtomicU64::new(0));
        let mut echo = vb.try_clone().unwrap();
        read_frames(vb, b_count.clone(), move |f| {
            let mut out = (f.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(f);
            let _ = echo.write_all(&out);
        });
        let bench = Bench {
            procs,
            vms: Vms {
                a: va,
                b_count,
                probes: Mutex::new(probe_rx),
            },
            dir,
            a,
            b,
        };
        // ARP, and the sink that keeps B from answering the flood with ICMP.
        assert!(bench.ping_once("10.82.0.2") && bench.ping_once("10.81.0.2"));
        bench
    }

    fn ping_once(&self, addr: &str) -> bool {
        wait_for(|| {
            self.a
                .command("ping")
                .args(["-c", "1", "-W", "1", addr])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// The pids of the two taptun processes of the qemu: tunnel (0) or the tap one (1).
    fn pids(&self, tunnel: usize) -> [u32; 2] {
        [
            self.procs[2 * tunnel].0.id(),
            self.procs[2 * tunnel + 1].0.id(),
        ]
    }

    fn qemu_flood(&self, size: usize, window: Duration) -> (f64, f64) {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = flood(self.vms.a.try_clone().unwrap(), size, stop.clone());
        let count = || self.vms.b_count.load(Ordering::Relaxed);
        let figures = rate(count, &self.pids(0), window);
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        settle(&self.vms.b_count);
        figures
    }

    /// UDP from A to `to` in B sized to make `size`-byte frames, counted by B's `dev`.
    fn udp_flood(
        &self,
        to: &str,
        dev: &str,
        size: usize,
        pids: &[u32],
        window: Duration,
    ) -> (f64, f64) {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let _sink = Proc(
            self.b
                .command(exe)
                .args(["udp-sink", &UDP_PORT.to_string()])
                .spawn()
                .unwrap(),
        );
        let seconds = (WARM_UP + window + Duration::from_secs(1)).as_secs_f64();
        let mut sender = Proc(
            self.a
                .command(exe)
                .args(["udp-send", &format!("{to}:{UDP_PORT}")])
                .arg((size - UDP_OVERHEAD).to_string())
                .arg(seconds.to_string())
                .spawn()
                .unwrap(),
        );
        let figures = rate(|| self.b.counter(dev, "rx_packets"), pids, window);
        let _ = sender.0.wait();
        // Let the tunnel drain before the next figure.
        let mut last = self.b.counter(dev, "rx_packets");
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.b.counter(dev, "rx_packets");
            if now == last {
                break;
            }
            last = now;
        }
        figures
    }

    fn tap_flood(&self, size: usize, window: Duration) -> (f64, f64) {
        self.udp_flood("10.82.0.2", "ttqbt", size, &self.pids(1), window)
    }

    fn udp_ceiling(&self, size: usize, window: Duration) -> f64 {
        self.udp_flood("10.81.0.2", "ttqbv", size, &[], window).0
    }

    fn qemu_rtt(&self) -> (f64, f64) {
        let probes = self.vms.probes.lock().unwrap();
        let mut a = &self.vms.a;
        let mut rtts = Vec::with_capacity(PROBES);
        for seq in 0..PROBES as u64 {
            let mut out = (PROBE_SIZE as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&frame(PROBE_SIZE, PROBE, seq));
            let sent = Instant::now();
            a.write_all(&out).unwrap();
            while probes.recv_timeout(DEADLINE).expect("a probe was lost") != seq {}
            rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
            thread::sleep(PROBE_GAP);
        }
        percentiles(rtts)
    }

    fn tap_rtt(&self) -> (f64, f64) {
        let out = sh(self.a.command("ping").args([
            "-c",
            &PROBES.to_string(),
            "-i",
            &PROBE_GAP.as_secs_f64().to_string(),
            "10.82.0.2",
        ]));
        // "64 bytes from 10.82.0.2: icmp_seq=1 ttl=64 time=0.123 ms"
        let rtts: Vec<f64> = out
            .lines()
            .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        assert!(rtts.len() > PROBES / 2, "ping lost most replies:\n{out}");
        percentiles(rtts)
    }
}

/// `udp-send ADDR:PORT PAYLOAD SECONDS`: sends datagrams as fast as it can.
fn udp_send(args: &[String]) {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect(&args[0]).unwrap();
    let payload = vec![0x5au8; args[1].parse().unwrap()];
    let end = Instant::now() + Duration::from_secs_f64(args[2].parse().unwrap());
    while Instant::now() < end {
        for _ in 0..256 {
            // A full queue on the way drops the datagram (or says ENOBUFS): the receiving
            // device's counter says what went through.
            let _ = socket.send(&payload);
        }
    }
}

/// `udp-sink PORT`: binds the port and never reads, so that datagrams to it are dropped quietly
/// instead of answered with ICMP port unreachable.
fn udp_sink(args: &[String]) {
    let _socket = std::net::UdpSocket::bind(format!("0.0.0.0:{}", args[0])).unwrap();
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
