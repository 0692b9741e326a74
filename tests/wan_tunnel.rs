//! taptun over the emulated dsl link (contrib/wanem.py: 20 Mbit/s, 40 ms RTT, 0.1 % loss, 150 ms
//! queue): a session comes up, 10 MB cross intact both ways, and a 5-second outage of the link
//! (every frame lost) does not end the session under the default keepalive: traffic resumes soon
//! after the link is back, as soon as the outer TCP's retransmission backoff lets it.
//!
//! Under one saturating inner flow, pings through the tunnel stay within twice issue 14's figure
//! (RTT + 1.5 RTT + 10 ms): the tunnel drops bulk frames at its ingress once they would wait,
//! instead of queueing them behind the carrier (`contrib/bench.sh --wan dsl` holds the real
//! figure).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// The outer TCP retransmits at about 0.25, 0.75, 1.75, 3.75 and 7.75 s into a 5-second outage:
/// the first retransmission after the link is back comes within about 3 s. The issue's figure is
/// 4 s; the test allows 2 s more for a busy machine.
const RESUME_WITHIN: Duration = Duration::from_secs(6);

/// One ping from `ns` to `addr` that waits at most 1 s for its answer.
fn one_ping(ns: &Netns, addr: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", "-q", addr])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn over_dsl_a_session_carries_10_mb_and_outlives_a_5_second_outage() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let wan = Wan::between(&p, "dsl --seed 7");
    let _server = p.server("");
    let client = p.good_client("client", "tt0");
    assert!(
        wait_log(&client, ESTABLISHED, 1, DEADLINE),
        "no session over the dsl link"
    );
    p.address_tap();
    p.assert_tap_ping();
    echo_across_the_tunnel(&p, &p.tap_addr(1), 10 << 20, 14);

    wan.cut();
    thread::sleep(Duration::from_secs(5));
    wan.restore();
    let back = Instant::now();
    let resumed = wait_for(RESUME_WITHIN, || one_ping(&p.b, &p.tap_addr(1)));
    let after = back.elapsed();
    eprintln!("traffic through the tunnel again {after:.1?} after the link came back");
    assert!(
        resumed,
        "no ping through the tunnel {RESUME_WITHIN:?} after the outage"
    );
    assert_eq!(
        log_count(&client, ESTABLISHED),
        1,
        "the outage ended the session"
    );
    assert_eq!(
        log_count(&client, &["ended"]),
        0,
        "the outage ended the session"
    );
    // And the session carries bulk data again.
    echo_across_the_tunnel(&p, &p.tap_addr(1), 1 << 20, 15);
}

/// Issue 14's ping p99 under load on dsl: base RTT + 1.5 x RTT + 10 ms; the test allows twice
/// that (the benchmark holds the real figure).
const DSL_LOAD_P99_MS: f64 = 2.0 * (40.0 + 1.5 * 40.0 + 10.0);

/// Pings `target` from the client's namespace while one inner cubic flow through the tunnel
/// saturates the link the same way; returns their RTTs in ms and the flow's rate in Mbit/s.
fn pings_under_load(p: &Pair, round: u16, target: &str) -> (Vec<f64>, f64) {
    let addr = p.tap_addr(1);
    let (pings, rate) = thread::scope(|s| {
        let flow = s.spawn(|| {
            iperf3(
                &p.a,
                &p.b,
                &addr,
                5201 + round,
                "32M",
                &["-C", "cubic"],
                Duration::from_secs(60),
                &p.scratch,
            )
        });
        // Past slow start: the queue the flow keeps, not the one it overshoots to at first.
        thread::sleep(Duration::from_secs(3));
        (ping_rtts(&p.b, target, 600, "0.01"), flow.join().unwrap())
    });
    let mbit_s = rate.unwrap_or_else(|e| panic!("iperf3 through the tunnel: {e}"));
    (pings, mbit_s)
}

/// taptun -s and -c over `p` with cubic carriers, a session up and a ping through it; returns
/// (server, client).
fn cubic_tunnel(p: &Pair) -> (Proc, Proc) {
    let server = p.server("--congestion cubic");
    let client = p.client(
        "client",
        &format!("-d tt0 --congestion cubic {}", p.client_secrets()),
    );
    assert!(
        wait_log(&client, ESTABLISHED, 1, DEADLINE),
        "no session over the emulated link"
    );
    p.address_tap();
    p.assert_tap_ping();
    (server, client)
}

#[test]
fn over_dsl_pings_under_load_stay_within_twice_the_issues_figure() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _wan = Wan::between(&p, "dsl --seed 11");
    // Cubic for the carrier, as on most hosts: on this lossy link it keeps the link's own queue
    // short, so what the pings wait for is the tunnel's queue (and the retransmissions' stalls).
    // bbr, this machine's default, adds its own tail (ProbeRTT, twice the BDP in flight), which
    // taptun does not choose (docs/PERFORMANCE.md).
    let (_server, client) = cubic_tunnel(&p);
    // The median of three rounds' p99: one round can meet a burst of the machine's other work.
    let mut p99s = Vec::new();
    for round in 0..3 {
        let (pings, mbit_s) = pings_under_load(&p, round, &p.tap_addr(1));
        assert!(pings.len() >= 500, "{} of 600 pings answered", pings.len());
        let (p50, p99) = (percentile(&pings, 50.0), percentile(&pings, 99.0));
        eprintln!(
            "round {round}: inner flow {mbit_s} Mbit/s; ping under it p50 {p50} p99 {p99} ms"
        );
        p99s.push(p99);
    }
    let p99 = percentile(&p99s, 50.0);
    assert!(
        p99 <= DSL_LOAD_P99_MS,
        "ping p99 under load {p99} ms (median of {p99s:?}): more than {DSL_LOAD_P99_MS} ms"
    );
    assert_eq!(
        log_count(&client, ESTABLISHED),
        1,
        "the session restarted under load"
    );
}

/// What the link's own bottleneck queue may add, at the median, to the pings beside a tunnel
/// whose carrier is paced: its target (5 ms + a quarter of the 40 ms RTT), the queue's swings
/// around it, and a busy machine. Unpaced, cubic fills the whole 150 ms queue of a lossless link.
const PACED_LINK_QUEUE_MS: f64 = 40.0;

#[test]
fn over_a_lossless_dsl_link_the_paced_carrier_keeps_the_links_queue_short() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // No random loss: a loss-based carrier then fills the bottleneck queue until it overflows.
    let _wan = Wan::between(&p, "dsl --loss 0");
    let (_server, _client) = cubic_tunnel(&p);
    // Beside the tunnel, to the server's own address: the link's queue alone.
    let (link, mbit_s) = pings_under_load(&p, 0, &p.server_addr());
    assert!(link.len() >= 500, "{} of 600 pings answered", link.len());
    let (p50, p99) = (percentile(&link, 50.0), percentile(&link, 99.0));
    eprintln!("inner flow {mbit_s} Mbit/s; ping over the link beside it p50 {p50} p99 {p99} ms");
    assert!(
        p50 <= 40.0 + PACED_LINK_QUEUE_MS,
        "the link's queue under the tunnel's flow: p50 {p50} ms, more than 40 ms + {PACED_LINK_QUEUE_MS}"
    );
    // Not a speed figure (the benchmark has those): a ceiling stuck far below the link would
    // starve the flow.
    assert!(mbit_s >= 5.0, "the paced tunnel carried {mbit_s} Mbit/s");
}
