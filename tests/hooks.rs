//! Up hooks across reconnects (issue 16), on real TAP devices in network namespaces (see
//! `common`): an up hook that fails the same way at every reconnect is logged as an error once,
//! with what the hook wrote on stderr, and the README's own up hooks (`ip addr replace`) keep
//! working when the server restarts, since the device and its address outlive a session.
//!
//! Without root these tests say they are skipped and pass, unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{DEADLINE, Pair, Proc, log_lines, wait_for, wait_log};
use std::time::Duration;

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// What `ip` says when an address is added a second time.
const ALREADY: &str = "Address already assigned";

#[test]
fn an_up_hook_failing_the_same_way_at_every_reconnect_is_one_error_with_its_stderr() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // A persistent device that already has the address: `ip addr add` in the up hook fails at
    // every session, as it did at every reconnect with the README's old example.
    let addr = p.tap_addr(2);
    p.b.ip("tuntap add dev tt0 mode tap");
    p.b.ip(&format!("addr add {addr}/24 dev tt0"));
    let _server = p.server("");
    let mut client = p.b.taptun(&format!(
        "-c -m {} -p {} -v -d tt0 {}",
        p.server_addr(),
        p.port,
        p.client_secrets()
    ));
    let hook = format!("ip addr add {addr}/24 dev $TAPTUN_DEVICE");
    client.args(["-u", &hook]);
    let client = Proc::start("client", client, &p.scratch);

    // Three sessions, each closed by the hook (the backoff makes that about 4 s).
    assert!(
        wait_log(&client, ESTABLISHED, 3, Duration::from_secs(20)),
        "the client did not reconnect twice after its up hook failed"
    );
    assert!(
        wait_log(&client, &["closing the session"], 3, DEADLINE),
        "three failures of the up hook are not all logged"
    );
    let errors = log_lines(&client, &["ERROR", "up hook"]);
    assert_eq!(
        errors.len(),
        1,
        "one error for a failure that repeats, not one per attempt: {errors:#?}"
    );
    let error = &errors[0];
    assert!(
        error.contains(&hook) && error.contains(&format!("stderr: Error: ipv4: {ALREADY}")),
        "the error names the hook and says what it wrote on stderr: {error}"
    );
    assert_eq!(
        log_lines(
            &client,
            &["DEBUG", "the same failure, 2 times in a row", ALREADY]
        )
        .len(),
        1,
        "the second failure is logged as a repeat, at debug"
    );
    // Each line of the hook's stderr reaches the log as well: at info the first time, at debug
    // (visible with -v) while it repeats.
    assert!(log_lines(&client, &["INFO", "up hook: Error", ALREADY]).len() == 1);
    assert!(!log_lines(&client, &["DEBUG", "up hook: Error", ALREADY]).is_empty());
}

/// The `-u '...'` hook in the README that gives the address ADDR/24.
fn readme_hook(readme: &str, addr: &str) -> String {
    readme
        .split("-u '")
        .skip(1)
        .filter_map(|rest| rest.split_once('\'').map(|(hook, _)| hook))
        .find(|hook| hook.contains(&format!("{addr}/24")))
        .unwrap_or_else(|| panic!("the README has no up hook giving {addr}/24"))
        .to_owned()
}

#[test]
fn the_readme_up_hooks_survive_a_server_restart() {
    if !common::require_root() {
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    // The README's addresses, inside this test's namespaces only.
    let (addr_a, addr_b) = ("10.78.0.1", "10.78.0.2");
    let (hook_a, hook_b) = (readme_hook(&readme, addr_a), readme_hook(&readme, addr_b));
    let p = Pair::new();
    let server = || {
        let mut cmd = p.a.taptun(&format!(
            "-s -p {} -v -d tt0 {}",
            p.port,
            p.server_secrets()
        ));
        cmd.args(["-u", &hook_a]);
        let mut server = Proc::start("server", cmd, &p.scratch);
        assert!(
            wait_for(DEADLINE, || !server.running() || p.a.listening(p.port)),
            "taptun -s did not start listening"
        );
        server
    };
    let mut first = server();
    let mut client = p.b.taptun(&format!(
        "-c -m {} -p {} -v -d tt0 {}",
        p.server_addr(),
        p.port,
        p.client_secrets()
    ));
    client.args(["-u", &hook_b]);
    let mut client = Proc::start("client", client, &p.scratch);
    assert!(p.b.ping(addr_a), "no ping across the tunnel");

    first.signal(libc::SIGKILL);
    assert!(wait_for(DEADLINE, || !first.running()));
    let _second = server();
    assert!(
        wait_log(&client, ESTABLISHED, 2, Duration::from_secs(20)),
        "the client did not reach the restarted server"
    );
    // Pings from the client first: nothing on the server's side has spoken since the restart.
    assert!(
        p.b.ping(addr_a),
        "no ping across the tunnel after the server restarted; the client's hook said: {:#?}",
        log_lines(&client, &["up hook"])
    );
    assert!(p.a.ping(addr_b));
    let failures = log_lines(&client, &["up hook"]);
    assert!(
        failures.iter().all(|l| !l.contains("ERROR")),
        "{failures:#?}"
    );
    assert!(client.running());
    assert!(
        p.b.ip("-o addr show dev tt0")
            .contains(&format!("{addr_b}/24")),
        "the client's address is gone"
    );
}
