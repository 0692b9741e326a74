//! What an idle session costs in memory and threads: the figure a hub
//! serving many peers from one process is budgeted by (issue 13: 1,000 idle
//! sessions in 160 MiB, at most 64 KiB each).
//!
//! Starts N sessions in this process (`cargo bench --bench sessions -- N`,
//! or `TAPTUN_SESSIONS=N`; 1000 by default), each as a server runs one: a
//! thread does the real handshake over a `UnixStream` (as initiator, the
//! responder driven by hand from the other end), then the relay between a
//! fake device (a `UnixDatagram` pair) and the stream. Once every session is
//! up and the process's RSS has settled, it prints VmRSS before and after
//! and per session, and the thread count. Then each session carries a burst
//! of full-size frames both ways, and the same figures are printed once the
//! sessions are idle again: what buffers that grew under load still hold.
//! tests/idle_memory.rs runs [`measure`] too, with fewer sessions.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taptun::{
    Channel, Cipher, Counters, Framing, Hello, Identity, Layer, MAX_FRAME, MAX_MESSAGE,
    PacketDevice, PrivateKey, READ_BUFFER, Responder, Stop, Stream, Transport, VirtioKind,
    encode_message, initiate, relay,
};

/// Sessions started when neither the argument nor the environment says.
const DEFAULT_SESSIONS: usize = 1000;
/// Full-size frames each session carries each way in the burst.
const BURST_FRAMES: usize = 8;

/// A datagram socket as the device: one packet per send and recv.
struct FakeDevice(UnixDatagram);

impl PacketDevice for FakeDevice {
    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.0.send(packet)
    }
}

/// What the bench keeps of one session: the far ends of its device and
/// stream, the peer's keys, and the session's stop and thread.
struct Session {
    outside: UnixDatagram,
    peer: UnixStream,
    peer_transport: Transport,
    /// The peer's next send nonce (its key confirmation took 0).
    peer_nonce: u64,
    /// The nonce the peer expects next from the session.
    session_nonce: u64,
    stop: Arc<Stop>,
    thread: std::thread::JoinHandle<()>,
}

/// Reads one message from the peer's end of the stream into `buf`: no
/// reader per session, so that the peers' memory does not count.
fn read_message<'a>(peer: &mut UnixStream, buf: &'a mut [u8]) -> &'a [u8] {
    let mut prefix = [0u8; 2];
    peer.read_exact(&mut prefix).expect("read");
    let len = usize::from(u16::from_be_bytes(prefix));
    peer.read_exact(&mut buf[..len]).expect("read");
    &buf[..len]
}

/// A field of /proc/self/status (VmRSS in kB, Threads).
fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Waits until VmRSS has not moved by more than 1% for a second (at most
/// 20 s); returns it in kB.
fn settled_rss() -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = status("VmRSS");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = status("VmRSS");
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Raises the soft limit on open files to the hard one: each session holds
/// about ten descriptors.
fn raise_nofile() -> u64 {
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
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// Starts one session: its thread initiates the handshake and relays; this
/// thread answers as the responder, by hand.
fn start(ours: &Arc<Identity>, theirs: &Identity, counters: &Arc<Counters>) -> Session {
    let (device_end, outside) = UnixDatagram::pair().expect("socketpair");
    device_end.set_nonblocking(true).expect("non-blocking");
    outside
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (stream_end, peer) = UnixStream::pair().expect("socketpair");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let stop = Arc::new(Stop::new().expect("eventfd"));
    let hello = Hello::new(Layer::Tap, 1500);

    let thread = {
        let (identity, stop, counters) = (ours.clone(), stop.clone(), counters.clone());
        std::thread::spawn(move || {
            let device = FakeDevice(device_end);
            let stream = Stream::socket(stream_end.into(), "bench".into()).expect("stream");
            let (mut framed, closer) = stream.split(std::slice::from_ref(&stop)).expect("split");
            let deadline = Instant::now() + Duration::from_secs(10);
            let established = initiate(&mut framed, &identity, hello, deadline).expect("handshake");
            // As a session does once established.
            framed.reader.grow(READ_BUFFER);
            let channel = Channel::new(established, Framing::Plain, VirtioKind::Ethernet);
            relay(&device, framed, &closer, channel, None, &stop, &counters);
            closer.finish();
        })
    };

    let mut peer = peer;
    let mut resp = Responder::new(theirs, hello).expect("responder");
    let (mut buf, mut out) = (vec![0u8; 1024], vec![0u8; 1024]);
    let send = |peer: &mut UnixStream, msg: &[u8]| {
        let mut wire = Vec::new();
        encode_message(msg, &mut wire);
        peer.write_all(&wire).expect("send");
    };
    // -> psk, e
    resp.read_message1(read_message(&mut peer, &mut buf))
        .expect("message 1");
    // <- e, ee, s, es
    let n = resp.write_message2(&mut out).expect("message 2");
    send(&mut peer, &out[..n]);
    // -> s, se
    resp.read_message3(read_message(&mut peer, &mut buf))
        .expect("message 3");
    let (peer_transport, _) = resp.into_transport().expect("transport");
    // The key confirmation: an empty message at nonce 0.
    let n = peer_transport.seal(0, &[], &mut out).expect("seal");
    send(&mut peer, &out[..n]);
    Session {
        outside,
        peer,
        peer_transport,
        peer_nonce: 1,
        session_nonce: 0,
        stop,
        thread,
    }
}

/// Full-size frames both ways through one session, one at a time: the
/// device's datagram queue holds only a few, and the relay drops frames
/// while the stream is backed up.
fn burst(s: &mut Session, frame: &[u8], buf: &mut [u8], plain: &mut [u8]) {
    for _ in 0..BURST_FRAMES {
        s.outside.send(frame).expect("device send");
        let msg = read_message(&mut s.peer, buf);
        let n = s
            .peer_transport
            .open(s.session_nonce, msg, plain)
            .expect("opens");
        assert_eq!(n, MAX_FRAME);
        s.session_nonce += 1;
    }
    for _ in 0..BURST_FRAMES {
        let n = s
            .peer_transport
            .seal(s.peer_nonce, frame, buf)
            .expect("seal");
        s.peer_nonce += 1;
        let mut wire = Vec::new();
        encode_message(&buf[..n], &mut wire);
        s.peer.write_all(&wire).expect("stream send");
        let n = s.outside.recv(plain).expect("device recv");
        assert_eq!(n, MAX_FRAME);
    }
}

/// VmRSS in kB: before any session, once all are idle after the
/// handshake, and once all are idle again after a burst.
pub struct Measured {
    pub base: u64,
    pub after_handshake: u64,
    pub after_burst: u64,
    pub threads: u64,
}

/// Starts `sessions` sessions, measures, and stops them; prints as it goes.
pub fn measure(sessions: usize) -> Measured {
    let nofile = raise_nofile();
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let ours =
        Arc::new(Identity::new(a.clone(), b.public_key(), Cipher::ChaChaPoly).expect("keys"));
    let theirs = Identity::new(b, a.public_key(), Cipher::ChaChaPoly).expect("keys");
    let counters = Arc::new(Counters::default());
    println!(
        "{sessions} sessions, open files limit {nofile}, default thread stack {} KiB",
        std::env::var("RUST_MIN_STACK")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(2048, |b| b / 1024)
    );

    let base = settled_rss();
    let started = Instant::now();
    let mut all: Vec<Session> = (0..sessions)
        .map(|_| start(&ours, &theirs, &counters))
        .collect();
    // Every session has read its key confirmation once it relays: a frame
    // from its device crosses.
    let (mut buf, mut plain) = (vec![0u8; MAX_MESSAGE], vec![0u8; MAX_MESSAGE]);
    for s in &mut all {
        s.outside.send(b"up").expect("device send");
        let msg = read_message(&mut s.peer, &mut buf);
        let n = s
            .peer_transport
            .open(s.session_nonce, msg, &mut plain)
            .expect("opens");
        assert_eq!(&plain[..n], b"up");
        s.session_nonce += 1;
    }
    println!("{sessions} sessions up in {:?}", started.elapsed());
    let after_handshake = settled_rss();
    report("idle after the handshake", base, after_handshake, sessions);

    let frame = vec![0x5au8; MAX_FRAME];
    for s in &mut all {
        burst(s, &frame, &mut buf, &mut plain);
    }
    let after_burst = settled_rss();
    report(
        &format!("idle after {BURST_FRAMES} frames of {MAX_FRAME} bytes each way"),
        base,
        after_burst,
        sessions,
    );
    let threads = status("Threads");

    for s in &all {
        s.stop.trigger();
    }
    for s in all {
        s.thread.join().expect("session thread");
    }
    Measured {
        base,
        after_handshake,
        after_burst,
        threads,
    }
}

fn report(what: &str, base: u64, rss: u64, sessions: usize) {
    if let Ok(path) = std::env::var("TAPTUN_SMAPS") {
        let _ = std::fs::copy("/proc/self/smaps", format!("{path}.{}", what.len()));
    }
    let per = (rss.saturating_sub(base)) as f64 / sessions as f64;
    println!(
        "{what}: VmRSS {base} kB before, {rss} kB after: {per:.1} KiB per session; {} threads",
        status("Threads")
    );
}

#[allow(dead_code)] // tests/idle_memory.rs includes this file for `measure`.
fn main() {
    let sessions = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("TAPTUN_SESSIONS").ok())
        .map_or(DEFAULT_SESSIONS, |n| {
            n.parse().expect("a number of sessions")
        });
    measure(sessions);
}
