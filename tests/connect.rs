//! How the client reaches its server when some of the addresses it is given drop packets instead
//! of refusing (a firewall, a stale AAAA record): several -m hosts are tried in turn, the next one
//! after 2 s of silence, and the addresses of one name race as Happy Eyeballs (RFC 8305), so a dead
//! first address delays a session by 2 s (another host) or 250 ms (another address of the same
//! name), on every reconnect too, and a slow primary that answers within 2 s still wins.
//!
//! The dead addresses are real addresses in the server's namespace behind an nftables rule that
//! drops everything arriving for them: a SYN gets no answer, as behind a firewall.

mod common;

use common::{
    DEADLINE, NetnsEtc, Pair, Proc, blackholed_address, daddr, log_count, nft_delete_table,
    nft_drop_input, run, wait_for,
};
use std::time::{Duration, Instant};

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// Waits until `proc` has logged `count` sessions; returns how long that took from `since`.
fn session_within(
    proc: &Proc,
    count: usize,
    since: Instant,
    deadline: Duration,
) -> Option<Duration> {
    wait_for(deadline, || log_count(proc, ESTABLISHED) >= count).then(|| since.elapsed())
}

#[test]
fn a_blackholed_first_host_delays_the_session_by_2_s_on_every_reconnect() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dead = blackholed_address(&p);
    let mut server = p.server("");
    let started = Instant::now();
    let args = format!(
        "-c -m {dead} -m {} -p {} -v -d tt0 {}",
        p.server_addr(),
        p.port,
        p.client_secrets()
    );
    let client = Proc::start("client", p.b.taptun(&args), &p.scratch);
    let first = session_within(&client, 1, started, DEADLINE);
    eprintln!("-m BLACKHOLED -m SERVER: first session after {first:?}");
    assert!(
        first.is_some_and(|t| t < Duration::from_secs(3)),
        "no session within 3 s with a blackholed first host (after {first:?})"
    );

    // The server goes away and comes back: the next attempt waits 2 s for the dead host again,
    // and the session is back within 3 s of that attempt's start (after a backoff of at most 1 s).
    server.terminate();
    let restarted = Instant::now();
    let _server = p.server("");
    let again = session_within(&client, 2, restarted, DEADLINE);
    eprintln!("after a server restart: a session again after {again:?}");
    assert!(
        again.is_some_and(|t| t < Duration::from_secs(4)),
        "no session within 1 s of backoff + 3 s after the server came back (after {again:?})"
    );
}

#[test]
fn a_name_whose_ipv6_address_drops_connects_over_ipv4_within_a_second() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // A global-scope IPv6 prefix (documentation range), so that getaddrinfo sorts it before IPv4.
    let v6 = format!("2001:db8:213:{}::", p.n);
    for (ns, host) in [(&p.a, 1), (&p.b, 2)] {
        ns.ip(&format!("addr add {v6}{host}/64 dev {} nodad", ns.name));
    }
    let dead = format!("{v6}3");
    p.a.ip(&format!("addr add {dead}/64 dev {} nodad", p.a.name));
    nft_drop_input(&p.a, "taptunblackhole", &[daddr(&dead)]);
    let name = format!("taptun-server-{}.test", p.n);
    let _hosts = NetnsEtc::new(
        &p.b,
        "hosts",
        &format!(
            "127.0.0.1 localhost\n{dead} {name}\n{} {name}\n",
            p.server_addr()
        ),
    );
    let order = run(p.b.command("getent").args(["ahosts", &name]));
    assert!(
        order.lines().next().is_some_and(|l| l.starts_with(&dead)),
        "the resolver must give the dead IPv6 address first: {order}"
    );

    let _server = p.server("");
    let started = Instant::now();
    let args = format!(
        "-c -m {name} -p {} -v -d tt0 {}",
        p.port,
        p.client_secrets()
    );
    let client = Proc::start("client", p.b.taptun(&args), &p.scratch);
    let first = session_within(&client, 1, started, DEADLINE);
    eprintln!("a name with a dead AAAA first: session after {first:?}");
    assert!(
        first.is_some_and(|t| t < Duration::from_secs(1)),
        "no session within 1 s over the name's IPv4 address (after {first:?})"
    );
}

/// The hosts are tried in turn, not raced from the start: a primary that answers within 2 s (here
/// its first SYN is dropped, so it answers the retransmission about 1 s later) wins over a backup
/// that would answer at once.
#[test]
fn a_slow_primary_that_answers_within_2_s_wins_over_the_backup() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let primary = p.server_addr();
    let backup = format!("10.213.{}.3", p.n);
    p.a.ip(&format!("addr add {backup}/24 dev {}", p.a.name));
    let server = |name: &str, addr: &str, dev: &str| {
        let args = format!(
            "-s -b {addr} -p {} -v -d {dev} {}",
            p.port,
            p.server_secrets()
        );
        Proc::start(name, p.a.taptun(&args), &p.scratch)
    };
    let servers = [
        server("primary", &primary, "tt0"),
        server("backup", &backup, "tt1"),
    ];
    for server in &servers {
        assert!(
            wait_for(DEADLINE, || log_count(server, &["listening on"]) > 0),
            "a server did not start listening"
        );
    }

    nft_drop_input(&p.a, "taptunblackhole", &[daddr(&primary)]);
    let args = format!(
        "-c -m {primary} -m {backup} -p {} -v -d tt0 {}",
        p.port,
        p.client_secrets()
    );
    let started = Instant::now();
    let client = Proc::start("client", p.b.taptun(&args), &p.scratch);
    std::thread::sleep(Duration::from_millis(700));
    nft_delete_table(&p.a, "taptunblackhole");
    let first = session_within(&client, 1, started, DEADLINE);
    eprintln!("a primary answering after about 1 s: session after {first:?}");
    let log = client.stderr();
    assert!(
        log.contains(&format!("session with {primary}:{} established", p.port)),
        "the primary must win: {log}"
    );
}
