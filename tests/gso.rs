//! GSO super-frames end to end: with GSO offered on both ends (the default), TCP across the
//! tunnel makes the devices hand over super-frames of up to 64 KiB, which cross whole (their
//! average size, from the SIGUSR1 counters, is above the largest plain frame), both devices have
//! TSO on and a gso_max_size of 65400, and 64 MiB (tap) or 16 MiB (tun) echoed over TCP arrive
//! intact. With GSO refused by one end (`-n`/`--no-gso`), the other end turns its offloads off,
//! both ends carry plain frames and the bytes still arrive intact.
//!
//! These tests need root, iproute2, iputils-ping and ethtool; without root or `ip netns` they say
//! they are skipped and pass, unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{DEADLINE, Netns, Pair, Proc, wait_for};
use std::io;
use std::process::{Command, Stdio};

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

/// Lines of `proc`'s stderr that contain all of `needles`.
fn log_lines(proc: &Proc, needles: &[&str]) -> Vec<String> {
    proc.stderr()
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// (frames, bytes) from the "DIR F frames/B bytes" part of a counters line (DIR: "in" or "out").
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

/// Sends SIGUSR1 to `proc`, waits for the `counters:` line it logs and parses it.
fn counters(proc: &Proc) -> Counters {
    let needles = ["counters: sessions"];
    let before = log_lines(proc, &needles).len();
    proc.signal(libc::SIGUSR1);
    assert!(
        wait_for(DEADLINE, || log_lines(proc, &needles).len() > before),
        "no `counters:` line logged within {DEADLINE:?} after SIGUSR1"
    );
    let line = log_lines(proc, &needles).pop().unwrap();
    let parse = |dir| {
        frames_bytes(&line, dir)
            .unwrap_or_else(|| panic!("no `{dir} F frames/B bytes` in the counters line: {line}"))
    };
    let ((frames_in, bytes_in), (frames_out, bytes_out)) = (parse("in"), parse("out"));
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
