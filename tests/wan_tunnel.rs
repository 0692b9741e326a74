//! taptun over the emulated dsl link (contrib/wanem.py: 20 Mbit/s, 40 ms RTT, 0.1 % loss, 150 ms
//! queue): a session comes up, 10 MB cross intact both ways, and a 5-second outage of the link
//! (every frame lost) does not end the session under the default keepalive: traffic resumes soon
//! after the link is back, as soon as the outer TCP's retransmission backoff lets it.
//!
//! Not here yet: ping under load within issue 14's figure (taptun's own queues still hold about
//! 150 ms at this rate; `contrib/bench.sh --wan dsl` measures it).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// The outer TCP retransmits at about 0.25, 0.75, 1.75, 3.75 and 7.75 s into a 5-second outage:
/// the first retransmission after the link is back comes within about 3 s. The figure is
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
