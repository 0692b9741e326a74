//! GSO super-frames end to end: with GSO offered on both ends (the default), TCP across the
//! tunnel makes the devices hand over super-frames of up to 64 KiB, which cross whole (their
//! average size, from the SIGUSR1 counters, is above the largest plain frame), both devices have
//! TSO on and a gso_max_size of 65400, and 64 MiB (tap) or 16 MiB (tun) echoed over TCP arrive
//! intact. With GSO refused by one end (`-n`/`--no-gso`), the other end turns its offloads off,
//! both ends carry plain frames and the bytes still arrive intact.
//!
//! A GSO session leaves no offloads behind on a persistent device: they go off when the session
//! ends, when taptun exits, and when `taptun -n` opens a device a killed GSO session left them on;
//! `-n` then carries TCP (an iperf3 transfer) on it. A GSO peer's invalid virtio headers are
//! dropped, counted, and never reach the device.
//!
//! These tests need root, iproute2, iputils-ping, ethtool and iperf3; without root or `ip netns` they say
//! they are skipped and pass, unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{
    DEADLINE, Netns, Pair, Proc, TcpMessages, framed, in_netns, log_lines, private_key, wait_for,
};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use taptun::Layer;
use taptun::{Cipher, FLAG_GSO, Hello, Identity};
use taptun::{VirtioHeader as Header, VirtioKind as Kind};

const MIB: usize = 1 << 20;

/// The largest plain frame on a TAP device at MTU 1500: the packet and its Ethernet header.
const TAP_PLAIN_MAX: u64 = 1514;
/// The largest plain packet on a TUN device at MTU 1500.
const TUN_PLAIN_MAX: u64 = 1500;

/// The traffic counters of a `counters:` line that a taptun process logged on SIGUSR1.
struct Counters {
    frames_in: u64,
    bytes_in: u64,
    frames_out: u64,
    bytes_out: u64,
    line: String,
}

impl Counters {
    /// Average frame size (bytes per frame) received from the peer.
    fn average_in(&self) -> u64 {
        self.bytes_in / self.frames_in.max(1)
    }

    /// Average frame size sent to the peer.
    fn average_out(&self) -> u64 {
        self.bytes_out / self.frames_out.max(1)
    }
}

/// (frames, bytes) from the "DIR F frames/B bytes" part of a counters line (DIR: "from peer" or
/// "to peer").
fn frames_bytes(line: &str, dir: &str) -> Option<(u64, u64)> {
    line.split(", ").find_map(|part| {
        let rest = part.strip_prefix(dir)?.strip_prefix(' ')?;
        let (frames, rest) = rest.split_once(" frames/")?;
        let bytes = rest.strip_suffix(" bytes")?;
        Some((frames.parse().ok()?, bytes.parse().ok()?))
    })
}

/// The number after `what` in a counters line: 0 in "invalid virtio header 0".
fn count(line: &str, what: &str) -> Option<u64> {
    let (_, rest) = line.split_once(&format!("{what} "))?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Sends SIGUSR1 to `proc` and returns the `counters:` line it logs.
fn counters_line(proc: &Proc) -> String {
    let needles = ["counters: sessions"];
    let before = log_lines(proc, &needles).len();
    proc.signal(libc::SIGUSR1);
    assert!(
        wait_for(DEADLINE, || log_lines(proc, &needles).len() > before),
        "no `counters:` line logged within {DEADLINE:?} after SIGUSR1"
    );
    log_lines(proc, &needles).pop().unwrap()
}

/// Sends SIGUSR1 to `proc`, waits for the `counters:` line it logs and parses it.
fn counters(proc: &Proc) -> Counters {
    let line = counters_line(proc);
    let parse = |dir| {
        frames_bytes(&line, dir)
            .unwrap_or_else(|| panic!("no `{dir} F frames/B bytes` in the counters line: {line}"))
    };
    let ((frames_in, bytes_in), (frames_out, bytes_out)) = (parse("from peer"), parse("to peer"));
    // Neither can happen in these tests: both ends agree on the framing before any TCP traffic.
    for what in [
        "super-frames for a peer without GSO",
        "invalid virtio header",
    ] {
        assert_eq!(count(&line, what), Some(0), "{what}: {line}");
    }
    Counters {
        frames_in,
        bytes_in,
        frames_out,
        bytes_out,
        line,
    }
}

/// The "session with PEER established on DEV (...)" line of `proc`'s log (exactly one).
fn established_line(proc: &Proc) -> String {
    let lines = log_lines(proc, &["session with", " established on "]);
    assert_eq!(lines.len(), 1, "one session established: {lines:?}");
    lines.into_iter().next().unwrap()
}

/// The TUN addresses: 10.215.N.1 in `a`, 10.215.N.2 in `b`, point to point on their tt0.
fn address_tun(p: &Pair) -> (String, String) {
    let (addr_a, addr_b) = (format!("10.215.{}.1", p.n), format!("10.215.{}.2", p.n));
    for (ns, local, peer) in [(&p.a, &addr_a, &addr_b), (&p.b, &addr_b, &addr_a)] {
        ns.wait_for_device("tt0");
        ns.ip(&format!("addr add {local} peer {peer} dev tt0"));
    }
    (addr_a, addr_b)
}

/// Asserts that `ip -d link show tt0` in `ns` says `gso_max_size 65400`.
fn assert_gso_max_size(ns: &Netns) {
    let details = ns.ip("-d link show dev tt0");
    assert!(
        details.contains(" gso_max_size 65400 "),
        "tt0 in {} should have gso_max_size 65400:\n{details}",
        ns.name
    );
}

/// Whether `ethtool -k tt0` in `ns` says `tcp-segmentation-offload: on` (true) or `off` (false).
fn tso_on(ns: &Netns) -> bool {
    let missing = Command::new("ethtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
    assert!(
        !missing,
        "ethtool is missing: install it (Debian: apt-get install ethtool)"
    );
    let features = common::run(ns.command("ethtool").args(["-k", "tt0"]));
    // "tcp-segmentation-offload: on", possibly followed by " [fixed]".
    let value = features
        .lines()
        .find_map(|line| line.trim().strip_prefix("tcp-segmentation-offload:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no tcp-segmentation-offload in ethtool -k tt0:\n{features}"));
    match value {
        "on" => true,
        "off" => false,
        other => panic!("tcp-segmentation-offload: {other}?\n{features}"),
    }
}

/// After a transfer with GSO on both ends: both sessions say so, and in both directions the
/// frames that crossed were on average larger than the largest plain frame `plain_max`.
fn assert_super_frames_crossed(server: &Proc, client: &Proc, plain_max: u64) {
    for (name, proc) in [("server", server), ("client", client)] {
        let line = established_line(proc);
        assert!(
            line.contains("GSO super-frames"),
            "the {name} should carry GSO super-frames: {line}"
        );
    }
    for (name, proc) in [("server", server), ("client", client)] {
        let c = counters(proc);
        // Each end sends one direction of the echo and receives the other.
        for (dir, average) in [("out", c.average_out()), ("in", c.average_in())] {
            assert!(
                average > plain_max,
                "the {name}'s frames {dir} average {average} bytes, no more than a plain frame \
                 ({plain_max}): no super-frames crossed\n{}",
                c.line
            );
        }
    }
}

#[test]
fn gso_on_both_ends_carries_super_frames_and_64_mib_arrive_intact_both_ways() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("");
    let client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    assert_gso_max_size(&p.a);
    assert_gso_max_size(&p.b);

    common::echo_across_the_tunnel(&p, &p.tap_addr(1), 64 * MIB, 0x650_0001);
    assert_super_frames_crossed(&server, &client, TAP_PLAIN_MAX);
}

#[test]
fn gso_on_both_ends_of_a_tun_tunnel_carries_super_frames_and_16_mib_arrive_intact() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("-t tun");
    let client = p.client_once("client", &format!("-t tun -d tt0 {}", p.client_secrets()));
    let (addr_a, addr_b) = address_tun(&p);
    p.assert_ping_both_ways(&addr_a, &addr_b);
    assert_gso_max_size(&p.a);
    assert_gso_max_size(&p.b);

    common::echo_across_the_tunnel(&p, &addr_a, 16 * MIB, 0x650_0002);
    assert_super_frames_crossed(&server, &client, TUN_PLAIN_MAX);
}

#[test]
fn gso_on_both_ends_turns_tcp_segmentation_offload_on_both_devices() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    for ns in [&p.a, &p.b] {
        assert!(tso_on(ns), "TSO should be on for tt0 in {}", ns.name);
    }
    assert!(client.running(), "the client left the session");
}

/// One end offers GSO, the other (given `-n` or `--no-gso`) does not: 16 MiB echoed arrive intact
/// in plain frames both ways, and the end that offered GSO has turned TSO off.
fn gso_on_one_end_only_falls_back_to_plain_frames(server_extra: &str, client_extra: &str) {
    let p = Pair::new();
    let server = p.server(server_extra);
    let client = p.client_once(
        "client",
        &format!("-d tt0 {} {client_extra}", p.client_secrets()),
    );
    p.address_tap();
    p.assert_tap_ping();
    for ns in [&p.a, &p.b] {
        assert!(
            !tso_on(ns),
            "TSO should be off for tt0 in {} when one end refuses GSO",
            ns.name
        );
    }

    common::echo_across_the_tunnel(&p, &p.tap_addr(1), 16 * MIB, 0x650_0003);
    for (name, proc) in [("server", &server), ("client", &client)] {
        let line = established_line(proc);
        assert!(
            line.contains("plain frames"),
            "the {name} should carry plain frames: {line}"
        );
    }
    for (name, proc) in [("server", &server), ("client", &client)] {
        let c = counters(proc);
        assert!(
            c.frames_in > 0 && c.frames_out > 0,
            "the {name} counted no traffic: {}",
            c.line
        );
        for (dir, average) in [("out", c.average_out()), ("in", c.average_in())] {
            assert!(
                average <= TAP_PLAIN_MAX,
                "the {name}'s frames {dir} average {average} bytes, more than a plain frame \
                 ({TAP_PLAIN_MAX})\n{}",
                c.line
            );
        }
    }
}

#[test]
fn gso_on_the_server_only_falls_back_to_plain_frames() {
    if !common::require_root() {
        return;
    }
    gso_on_one_end_only_falls_back_to_plain_frames("", "--no-gso");
}

#[test]
fn gso_on_the_client_only_falls_back_to_plain_frames() {
    if !common::require_root() {
        return;
    }
    gso_on_one_end_only_falls_back_to_plain_frames("-n", "");
}

#[test]
fn a_persistent_device_keeps_a_smaller_gso_max_size_and_still_carries_super_frames() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // An administrator's persistent device with a smaller limit: taptun must not raise it.
    p.a.ip("tuntap add dev tt0 mode tap");
    p.a.ip("link set dev tt0 gso_max_size 32000");
    let server = p.server("");
    let client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    let details = p.a.ip("-d link show dev tt0");
    assert!(
        details.contains(" gso_max_size 32000 "),
        "the persistent device's gso_max_size changed: {details}"
    );
    assert_gso_max_size(&p.b);

    common::echo_across_the_tunnel(&p, &p.tap_addr(1), 16 * MIB, 0x650_0005);
    assert_super_frames_crossed(&server, &client, TAP_PLAIN_MAX);
}

// ---------------------------------------------------------------------------------------------
// A GSO peer driven by the library, sending virtio headers of its choosing.

/// The client's side of a session with GSO announced, with the client's keys, from `p.b`.
struct GsoPeer {
    stream: TcpStream,
    transport: taptun::Transport,
    nonce: u64,
}

impl GsoPeer {
    fn connect(p: &Pair) -> GsoPeer {
        let identity = Identity::new(
            private_key(&p.client_key),
            private_key(&p.server_key).public_key(),
            Cipher::ChaChaPoly,
        )
        .expect("a valid key pair");
        let addr: SocketAddr = format!("{}:{}", p.server_addr(), p.port).parse().unwrap();
        let stream = in_netns(&p.b, move || {
            TcpStream::connect_timeout(&addr, DEADLINE).expect("connect")
        });
        let mut io = TcpMessages::new(&stream);
        let mut hello = Hello::new(Layer::Tap, 1500);
        hello.flags = FLAG_GSO;
        let established = taptun::initiate(&mut io, &identity, hello, Instant::now() + DEADLINE)
            .expect("the handshake with the client's keys");
        assert_ne!(
            established.peer_hello.flags & FLAG_GSO,
            0,
            "the server did not offer GSO"
        );
        GsoPeer {
            stream,
            transport: established.transport,
            nonce: established.send_nonce,
        }
    }

    /// Seals `packet` (virtio header and frame) at the next nonce and sends it.
    fn send(&mut self, packet: &[u8]) {
        let mut sealed = vec![0u8; taptun::MAX_MESSAGE];
        let n = self
            .transport
            .seal(self.nonce, packet, &mut sealed)
            .expect("seal");
        self.nonce += 1;
        self.stream.write_all(&framed(&sealed[..n])).expect("send");
    }
}

/// Frames written into `dev` in `ns` (its rx counter).
fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = common::run(
        ns.command("cat")
            .arg(format!("/sys/class/net/{dev}/statistics/rx_packets")),
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no rx counter for {dev} in {}", ns.name))
}

/// A virtio header and frame with the header replaced.
fn with_header(h: Header, packet: &[u8]) -> Vec<u8> {
    [&h.encode()[..], &packet[taptun::VIRTIO_HDR_LEN..]].concat()
}

/// Each header a GSO peer may not send, with its frame: what `vnet::check` refuses beyond
/// the offsets inside the frame.
fn invalid_headers() -> Vec<(&'static str, Vec<u8>)> {
    let tcp4 = taptun::tcp_super_frame(Kind::Ethernet, false, 0, 3000);
    let tcp6 = taptun::tcp_super_frame(Kind::Ethernet, true, 2, 3000);
    let (h4, h6) = (Header::parse(&tcp4).unwrap(), Header::parse(&tcp6).unwrap());
    let h = taptun::VIRTIO_HDR_LEN;
    let altered = |packet: &[u8], at: usize, byte: u8| {
        let mut p = packet.to_vec();
        p[h + at] = byte;
        p
    };
    vec![
        (
            "gso_size 1",
            with_header(Header { gso_size: 1, ..h4 }, &tcp4),
        ),
        (
            "gso_size 47",
            with_header(Header { gso_size: 47, ..h4 }, &tcp4),
        ),
        (
            "csum_offset 6",
            with_header(
                Header {
                    csum_offset: 6,
                    ..h4
                },
                &tcp4,
            ),
        ),
        (
            "csum_start at the IP header",
            with_header(
                Header {
                    csum_start: 14,
                    ..h4
                },
                &tcp4,
            ),
        ),
        (
            "TCPV6 on IPv4",
            with_header(
                Header {
                    gso_type: taptun::GSO_TCPV6,
                    ..h4
                },
                &tcp4,
            ),
        ),
        (
            "TCPV4 on IPv6 behind QinQ",
            with_header(
                Header {
                    gso_type: taptun::GSO_TCPV4,
                    ..h6
                },
                &tcp6,
            ),
        ),
        ("GSO UDP", with_header(Header { gso_type: 3, ..h4 }, &tcp4)),
        ("UDP in a TCPV4 super-frame", altered(&tcp4, 14 + 9, 17)),
        ("IPv6 extension header", altered(&tcp6, 22 + 6, 0)),
        (
            "unknown flag",
            with_header(
                Header {
                    flags: 4 | taptun::F_NEEDS_CSUM,
                    ..h4
                },
                &tcp4,
            ),
        ),
    ]
}

#[test]
fn a_gso_peer_s_invalid_virtio_headers_are_dropped_counted_and_never_reach_the_device() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("");
    let mut peer = GsoPeer::connect(&p);
    assert!(
        wait_for(DEADLINE, || !log_lines(&server, &["GSO super-frames"])
            .is_empty()),
        "the server did not start a GSO session"
    );
    p.a.wait_for_device("tt0");
    let invalid = |line: &str| count(line, "invalid virtio header").expect("invalid virtio header");
    let frames_in = |line: &str| {
        frames_bytes(line, "from peer")
            .expect("from peer F frames")
            .0
    };

    // A valid super-frame reaches the device: the way to see a frame arrive works.
    let valid = taptun::tcp_super_frame(Kind::Ethernet, false, 0, 3000);
    let rx_start = rx_packets(&p.a, "tt0");
    peer.send(&valid);
    assert!(
        wait_for(DEADLINE, || rx_packets(&p.a, "tt0") == rx_start + 1),
        "the valid super-frame did not reach the device (rx {} -> {})\n{}",
        rx_start,
        rx_packets(&p.a, "tt0"),
        counters_line(&server)
    );

    let mut dropped = invalid(&counters_line(&server));
    assert_eq!(dropped, 0);
    let in_before = frames_in(&counters_line(&server));
    for (what, packet) in invalid_headers() {
        let rx_before = rx_packets(&p.a, "tt0");
        peer.send(&packet);
        let mut line = String::new();
        let counted = wait_for(DEADLINE, || {
            line = counters_line(&server);
            invalid(&line) > dropped || frames_in(&line) > in_before
        });
        assert!(counted, "{what}: neither dropped nor written: {line}");
        assert_eq!(
            invalid(&line),
            dropped + 1,
            "{what}: the invalid virtio header counter did not move by one: {line}"
        );
        dropped += 1;
        assert_eq!(
            rx_packets(&p.a, "tt0"),
            rx_before,
            "{what}: a frame reached the device"
        );
        assert_eq!(
            frames_in(&line),
            in_before,
            "{what}: counted as written: {line}"
        );
        println!("{what}: dropped, invalid virtio header {dropped}, device rx {rx_before}");
    }

    // The session survived them all, its nonces in step: the valid frame still arrives.
    let rx_before = rx_packets(&p.a, "tt0");
    peer.send(&valid);
    assert!(
        wait_for(DEADLINE, || rx_packets(&p.a, "tt0") == rx_before + 1),
        "the valid super-frame after the invalid ones did not reach the device"
    );
}

// ---------------------------------------------------------------------------------------------
// Offloads left on a persistent device.

/// The session-ended line count of `proc`'s log.
fn sessions_ended(proc: &Proc) -> usize {
    log_lines(proc, &["session with", " ended: "]).len()
}

/// With a `taptun -n` server on `a`'s persistent tt0 (addressed 10.214.N.1 already) and a new
/// client: ping, then an iperf3 transfer from b to a that must complete. Returns its rate.
fn plain_session_carries_tcp(p: &Pair) -> f64 {
    let server = p.server("-n");
    let _client = p.good_client_once("client plain", "tt0");
    p.address_client_tap("tt0");
    p.assert_tap_ping();
    assert!(
        !tso_on(&p.a),
        "TSO is on for the -n server's tt0: its peer gets super-frames"
    );
    let rate = common::iperf3(
        &p.a,
        &p.b,
        &p.tap_addr(1),
        p.port + 3000,
        "16M",
        &[],
        Duration::from_secs(20),
        &p.scratch,
    )
    .unwrap_or_else(|why| panic!("iperf3 through taptun -n on the persistent tap: {why}"));
    println!("iperf3 through taptun -n on the persistent tap: {rate} Mbit/s");
    drop(server);
    rate
}

#[test]
fn a_gso_session_on_a_persistent_tap_turns_its_offloads_off_when_it_ends_and_when_taptun_exits() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    p.a.ip("tuntap add dev tt0 mode tap");
    let mut server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    assert!(tso_on(&p.a), "the GSO session did not turn TSO on");

    // The session ends, the server stays: its device must not keep the offloads meanwhile.
    client.terminate();
    assert!(
        wait_for(DEADLINE, || sessions_ended(&server) == 1),
        "the server did not see the session end"
    );
    assert!(!tso_on(&p.a), "TSO still on after the GSO session ended");

    // A second GSO session, then the server exits on SIGTERM.
    let _client = p.good_client_once("client again", "tt0");
    p.address_client_tap("tt0");
    p.assert_tap_ping();
    assert!(tso_on(&p.a), "the second GSO session did not turn TSO on");
    assert!(server.terminate().success());
    assert!(!tso_on(&p.a), "TSO still on after taptun exited");

    plain_session_carries_tcp(&p);
}

#[test]
fn taptun_n_turns_off_the_offloads_a_killed_gso_session_left_on_a_persistent_tap() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    p.a.ip("tuntap add dev tt0 mode tap");
    let mut server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    // Killed, nothing of taptun runs: the kernel keeps the offloads on the device.
    server.signal(libc::SIGKILL);
    server.wait();
    client.wait();
    assert!(
        tso_on(&p.a),
        "TSO went off with the killed server: nothing to test"
    );

    plain_session_carries_tcp(&p);
}
