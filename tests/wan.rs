//! The emulated WAN link (contrib/wanem.py) checked against raw TCP and ping, before any figure of
//! taptun is measured over it: a ping takes the configured round trip and never less, an iperf3
//! flow with cubic gets the configured rate and never more, cubic fills the bottleneck queue to
//! its limit and no further, and the random loss is the configured share.
//!
//! Only the bounds that a busy machine cannot break are tight (nothing arrives early, nothing
//! goes faster than the rate, nothing waits longer than the queue allows); the others have slack,
//! and the real figures come from `contrib/bench.sh --wan` (docs/PERFORMANCE.md).

mod common;

use std::thread;
use std::time::Duration;

use common::*;

/// How far above the configured round trip an idle ping may be here (the manual check holds
/// p50 to 0.5 ms and p99 to 2 ms), and how much a ping under load may exceed RTT + queue.
const IDLE_P50_SLACK_MS: f64 = 1.0;
const IDLE_P99_SLACK_MS: f64 = 5.0;
const LOAD_SLACK_MS: f64 = 5.0;

/// Idle pings from `b` to `a`: no faster than `rtt_ms`, and not much slower. Returns them.
fn check_idle_ping(p: &Pair, rtt_ms: f64) -> Vec<f64> {
    let rtts = ping_rtts(&p.b, &p.server_addr(), 200, "0.01");
    assert!(
        rtts.len() >= 190,
        "{} of 200 idle pings answered",
        rtts.len()
    );
    let (min, p50, p99) = (
        percentile(&rtts, 0.0),
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
    );
    eprintln!("idle ping over a {rtt_ms} ms link: min {min} p50 {p50} p99 {p99} ms");
    assert!(
        min >= rtt_ms,
        "a ping took {min} ms over a link of {rtt_ms} ms RTT"
    );
    assert!(
        p50 <= rtt_ms + IDLE_P50_SLACK_MS && p99 <= rtt_ms + IDLE_P99_SLACK_MS,
        "idle ping p50 {p50} ms, p99 {p99} ms over a link of {rtt_ms} ms RTT"
    );
    rtts
}

/// What one cubic flow from `b` to `a` did to the link, with pings beside it from its start.
struct Load {
    mbit_s: f64,
    pings: Vec<f64>,
    ping_count: u32,
    /// The emulator's counters afterwards: (a to b, b to a).
    stats: (WanStats, WanStats),
}

/// Sends `bytes` (iperf3's -n) from `b` to `a` with cubic, pinging `a` from `b` meanwhile.
fn load(p: &Pair, wan: &Wan, bytes: &str, ping_count: u32) -> Load {
    let addr = p.server_addr();
    let (rate, pings) = thread::scope(|s| {
        let flow = s.spawn(|| {
            iperf3(
                &p.a,
                &p.b,
                &addr,
                p.port,
                bytes,
                &["-C", "cubic"],
                Duration::from_secs(40),
                &p.scratch,
            )
        });
        let pings = ping_rtts(&p.b, &addr, ping_count, "0.01");
        (flow.join().unwrap(), pings)
    });
    let mbit_s = rate.unwrap_or_else(|e| panic!("iperf3 over the emulated link: {e}"));
    Load {
        mbit_s,
        pings,
        ping_count,
        stats: wan.stats(),
    }
}

/// The rate is a ceiling no flow can pass; the floor is loose (a busy machine, slow start).
fn check_rate(load: &Load, link_mbit_s: f64) {
    eprintln!(
        "cubic over a {link_mbit_s} Mbit/s link: {} Mbit/s",
        load.mbit_s
    );
    assert!(
        load.mbit_s <= link_mbit_s * 1.05,
        "iperf3 got {} Mbit/s through a {link_mbit_s} Mbit/s link",
        load.mbit_s
    );
}

/// Pings under load wait at most the queue's limit, measured from outside the emulator.
fn check_queue_limit(load: &Load, rtt_ms: f64, queue_ms: f64) -> f64 {
    assert!(
        load.pings.len() as u32 >= load.ping_count / 2,
        "{} of {} pings under load answered",
        load.pings.len(),
        load.ping_count
    );
    let (p50, p99, max) = (
        percentile(&load.pings, 50.0),
        percentile(&load.pings, 99.0),
        percentile(&load.pings, 100.0),
    );
    eprintln!(
        "ping under load: p50 {p50} p99 {p99} max {max} ms; {:?}",
        load.stats
    );
    assert!(
        p99 <= rtt_ms + queue_ms + LOAD_SLACK_MS,
        "ping p99 {p99} ms under load: more than RTT {rtt_ms} + queue {queue_ms} ms"
    );
    max
}

#[test]
fn wan_link_has_its_delay_and_rate_and_cubic_fills_its_queue() {
    if !require_root() {
        return;
    }
    let (rtt, rate, queue) = (10.0, 100.0, 50.0);
    let p = Pair::new();
    let wan = Wan::between(&p, "wan");
    check_idle_ping(&p, rtt);

    // 60 MB: about 5 s at 100 Mbit/s, enough for cubic to fill the queue after slow start.
    let load = load(&p, &wan, "60M", 300);
    check_rate(&load, rate);
    assert!(
        load.mbit_s >= rate * 0.6,
        "iperf3 got only {} Mbit/s through a {rate} Mbit/s link with no loss",
        load.mbit_s
    );
    let max = check_queue_limit(&load, rtt, queue);
    let (a_to_b, b_to_a) = &load.stats;
    assert!(
        max >= rtt + 0.8 * queue,
        "no ping under load waited in the {queue} ms queue (max {max} ms)"
    );
    assert!(
        b_to_a.dropped > 0 && b_to_a.peak_queue_ms >= 0.95 * queue,
        "cubic did not fill the {queue} ms queue: {b_to_a:?}"
    );
    assert_eq!(
        (a_to_b.lost, b_to_a.lost),
        (0, 0),
        "frames lost on a link without loss"
    );
}

#[test]
fn dsl_link_has_its_delay_and_rate() {
    if !require_root() {
        return;
    }
    let (rtt, rate, queue) = (40.0, 20.0, 150.0);
    let p = Pair::new();
    let wan = Wan::between(&p, "dsl --seed 1");
    check_idle_ping(&p, rtt);

    // 8 MB: about 5 s for cubic, which the 0.1 % loss keeps below the rate.
    let load = load(&p, &wan, "8M", 300);
    check_rate(&load, rate);
    check_queue_limit(&load, rtt, queue);
    assert!(
        load.stats.1.forwarded > 3000,
        "the flow did not cross the emulator: {:?}",
        load.stats
    );
}

#[test]
fn random_loss_is_the_configured_share() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let wan = Wan::between(&p, "dsl --loss 10% --seed 7");
    // 1000 frames each way: the share lost is within 0.03 of 0.1 but for one run in a thousand.
    let pings = ping_rtts(&p.b, &p.server_addr(), 1000, "0.002");
    let (a_to_b, b_to_a) = wan.stats();
    eprintln!(
        "{} of 1000 pings answered; {a_to_b:?} {b_to_a:?}",
        pings.len()
    );
    for stats in [&a_to_b, &b_to_a] {
        let share = stats.lost as f64 / (stats.lost + stats.forwarded) as f64;
        assert!(
            (0.07..=0.13).contains(&share),
            "{share} of the frames lost, 0.1 configured: {stats:?}"
        );
    }
    // A ping is answered when neither the request nor the reply is lost: 0.81.
    assert!(
        (760..=860).contains(&pings.len()),
        "{} of 1000 pings answered with 10 % loss each way",
        pings.len()
    );
}

#[test]
fn outage_loses_every_frame_until_the_link_is_back() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let wan = Wan::between(&p, "wan");
    wan.cut();
    let pings = ping_rtts(&p.b, &p.server_addr(), 20, "0.01");
    assert!(
        pings.is_empty(),
        "{} pings answered across a cut link",
        pings.len()
    );
    let b_to_a = wan.stats().1;
    assert!(b_to_a.lost >= 20, "the pings were not lost: {b_to_a:?}");
    wan.restore();
    assert!(p.b.ping(&p.server_addr()), "no ping once the link was back");
}
