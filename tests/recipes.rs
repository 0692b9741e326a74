//! Bulk TCP forwarded through the README's bridge and NAT recipes (contrib/scripts as taptun's
//! hooks): a host `h` behind the server's end sends to the client across the tunnel, so that
//! its packets, merged by GRO on the server's LAN interface into super-frames of up to 64 KiB,
//! are forwarded into the server's tap device. None of them may be dropped as oversize, and the
//! transfer must complete. The rates of the forwarded and of the direct transfer (the server's
//! own end to the client) are printed for comparison, never asserted: the machine is noisy.
//!
//! These tests need root, iproute2, iputils-ping, ethtool, iperf3 and (for NAT) nftables;
//! without root or `ip netns` they say they are skipped and pass, unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{DEADLINE, Netns, Pair, Proc, run, server_with_hooks, wait_for};
use std::process::Command;
use std::time::Duration;

/// How long one transfer may take before it counts as a stall: far above what 32 MiB need even
/// on a busy machine.
const TRANSFER_LIMIT: Duration = Duration::from_secs(25);
const TRANSFER: &str = "32M";

/// The host behind the server: namespace `h`, joined to `a` by a veth pair `lan0`.
fn lan_host(p: &Pair) -> Netns {
    let name = format!("{}h", p.a.name.trim_end_matches('a'));
    run(Command::new("ip").args(["netns", "add", &name]));
    let h = Netns { name };
    h.ip("link set lo up");
    run(Command::new("ip").args([
        "link", "add", "lan0", "netns", &p.a.name, "type", "veth", "peer", "name", "lan0", "netns",
        &h.name,
    ]));
    p.a.ip("link set lan0 up");
    h.ip("link set lan0 up");
    // h sends MTU-sized segments and a's side merges them (GRO), as a LAN NIC does: the
    // forwarded packets are then GRO super-frames, as large as the stack makes them.
    run(h
        .command("ethtool")
        .args(["-K", "lan0", "tso", "off", "gso", "off"]));
    run(p.a.command("ethtool").args(["-K", "lan0", "gro", "on"]));
    h
}

/// Sends SIGUSR1 to `proc` and returns the `counters:` line it logs.
fn counters_line(proc: &Proc) -> String {
    let lines = |proc: &Proc| -> Vec<String> {
        proc.stderr()
            .lines()
            .filter(|l| l.contains("counters: sessions"))
            .map(str::to_owned)
            .collect()
    };
    let before = lines(proc).len();
    proc.signal(libc::SIGUSR1);
    assert!(
        wait_for(DEADLINE, || lines(proc).len() > before),
        "no `counters:` line after SIGUSR1"
    );
    lines(proc).pop().unwrap()
}

/// The number after `what` in a counters line: 0 in "oversize 0".
fn count(line: &str, what: &str) -> u64 {
    line.split_once(&format!("{what} "))
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no `{what} N` in {line}"))
}

/// (frames, bytes) of the "to peer F frames/B bytes" part of a counters line: what the server read
/// from its device and sent to the client.
fn frames_out(line: &str) -> (u64, u64) {
    line.split(", ")
        .find_map(|part| {
            let (frames, bytes) = part.strip_prefix("to peer ")?.split_once(" frames/")?;
            Some((
                frames.parse().ok()?,
                bytes.strip_suffix(" bytes")?.parse().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no `to peer F frames/B bytes` in {line}"))
}

/// Runs `transfer` and returns its rate with the average size of the frames the server read
/// from its device meanwhile.
fn measured(server: &Proc, transfer: impl FnOnce() -> f64) -> (f64, u64) {
    let (frames, bytes) = frames_out(&counters_line(server));
    let rate = transfer();
    let (frames_after, bytes_after) = frames_out(&counters_line(server));
    (rate, (bytes_after - bytes) / (frames_after - frames).max(1))
}

/// The largest plain frame at MTU 1500: a forwarded transfer whose frames average more came
/// through as GRO super-frames, the case under test.
const PLAIN_MAX: u64 = 1514;

/// Prints both transfers and checks that the forwarded one came as super-frames.
fn report(recipe: &str, direct: (f64, u64), forwarded: (f64, u64)) {
    println!(
        "{recipe} recipe, {TRANSFER}B to the client: direct {} Mbit/s (frames of {} bytes on \
         average), forwarded {} Mbit/s (frames of {} bytes on average): {:.0}% of direct",
        direct.0,
        direct.1,
        forwarded.0,
        forwarded.1,
        forwarded.0 / direct.0 * 100.0
    );
    assert!(
        forwarded.1 > PLAIN_MAX,
        "{recipe}: the forwarded frames averaged {} bytes: no GRO super-frames, nothing tested",
        forwarded.1
    );
}

/// iperf3 from a server in `from` (listening on `addr`) to a client in `p.b`, in reverse mode
/// (-R: the server sends), so the data flows towards the client across the tunnel. Panics when
/// it fails or stalls; returns the rate in Mbit/s.
fn transfer_to_client(p: &Pair, from: &Netns, addr: &str, port: u16, what: &str) -> f64 {
    common::iperf3(
        from,
        &p.b,
        addr,
        port,
        TRANSFER,
        &["-R"],
        TRANSFER_LIMIT,
        &p.scratch,
    )
    .unwrap_or_else(|why| panic!("{what}: {why}"))
}

/// After the transfers: nothing was dropped as oversize on either end.
fn assert_no_oversize(server: &Proc, client: &Proc, what: &str) {
    for (name, proc) in [("server", server), ("client", client)] {
        let line = counters_line(proc);
        assert_eq!(
            count(&line, "oversize"),
            0,
            "{what}: the {name} dropped frames as oversize: {line}"
        );
    }
}

#[test]
fn bulk_tcp_forwarded_through_the_bridge_recipe_is_never_dropped_as_oversize() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let h = lan_host(&p);
    let host_h = format!("10.214.{}.3", p.n);
    h.ip(&format!("addr add {host_h}/24 dev lan0"));
    let server = server_with_hooks(&p, "bridge", &[("TAPTUN_BRIDGE_IF", "lan0")], "");
    let client = p.good_client("client", "tt0");
    p.address_client_tap("tt0");
    assert!(p.b.ping(&host_h), "ping from the client to {host_h}");
    // The server's own address belongs on the bridge: the direct transfer starts there.
    assert!(
        wait_for(DEADLINE, || p.a.device_up("br-taptun")),
        "no bridge"
    );
    p.a.ip(&format!("addr add {}/24 dev br-taptun", p.tap_addr(1)));
    p.assert_tap_ping();

    let direct = measured(&server, || {
        transfer_to_client(&p, &p.a, &p.tap_addr(1), p.port + 3000, "direct")
    });
    let bridged = measured(&server, || {
        transfer_to_client(&p, &h, &host_h, p.port + 3001, "through the bridge")
    });
    report("bridge", direct, bridged);
    assert_no_oversize(&server, &client, "bridge");
}

#[test]
fn bulk_tcp_forwarded_through_the_nat_recipe_is_never_dropped_as_oversize() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let h = lan_host(&p);
    let (lan_a, lan_h) = (format!("10.216.{}.1", p.n), format!("10.216.{}.3", p.n));
    p.a.ip(&format!("addr add {lan_a}/24 dev lan0"));
    h.ip(&format!("addr add {lan_h}/24 dev lan0"));
    let server = server_with_hooks(&p, "nat", &[("TAPTUN_NAT_IF", "lan0")], "");
    let client = p.good_client("client", "tt0");
    p.address_tap();
    p.b.ip(&format!(
        "route add 10.216.{}.0/24 via {}",
        p.n,
        p.tap_addr(1)
    ));
    assert!(
        p.b.ping(&lan_h),
        "ping from the client to {lan_h} behind the NAT"
    );

    let direct = measured(&server, || {
        transfer_to_client(&p, &p.a, &p.tap_addr(1), p.port + 3000, "direct")
    });
    let natted = measured(&server, || {
        transfer_to_client(&p, &h, &lan_h, p.port + 3001, "through the NAT")
    });
    report("NAT", direct, natted);
    assert_no_oversize(&server, &client, "NAT");
}
