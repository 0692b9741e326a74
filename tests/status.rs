//! Whether the tunnel is up, as a newcomer sees it (issue 16, item 3): the device's carrier
//! (`ip link` says NO-CARRIER while no session is up), the SIGUSR1 line that starts with the
//! session's state and names the directions, the -v lines for each connect attempt, handshake
//! step and hook, and the info line at start naming the device and what it waits for.
//!
//! Real processes on TAP devices in network namespaces (see `common`); everything is polled
//! with deadlines.

mod common;

use common::{DEADLINE, Netns, Pair, Proc, log_lines, wait_for, wait_log};

const ESTABLISHED: &[&str] = &["session with", "established"];
const ENDED: &[&str] = &["session with", "ended: "];

/// The flags of `dev` in `ns`, as `ip link` shows them: "NO-CARRIER,BROADCAST,MULTICAST,UP".
fn link_flags(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&format!("-o link show dev {dev}"));
    out.split(['<', '>']).nth(1).unwrap_or("").to_owned()
}

/// Waits until `dev` in `ns` shows NO-CARRIER (`carrier` false) or LOWER_UP (true).
fn assert_carrier(ns: &Netns, dev: &str, carrier: bool, when: &str) {
    let wanted = if carrier { "LOWER_UP" } else { "NO-CARRIER" };
    let shown = wait_for(DEADLINE, || {
        link_flags(ns, dev).split(',').any(|flag| flag == wanted)
    });
    assert!(
        shown,
        "{when}: {dev} should show {wanted}, `ip link` says <{}>",
        link_flags(ns, dev)
    );
}

/// Sends SIGUSR1 to `proc` and returns the new `counters:` line it logs.
fn status_line(proc: &Proc) -> String {
    let before = log_lines(proc, &["counters:"]).len();
    proc.signal(libc::SIGUSR1);
    assert!(
        wait_log(proc, &["counters:"], before + 1, DEADLINE),
        "no `counters:` line after SIGUSR1"
    );
    log_lines(proc, &["counters:"]).pop().unwrap()
}

/// The reason in `proc`'s last "session with PEER ended: REASON (counters)" line.
fn last_end_reason(proc: &Proc) -> String {
    let line = log_lines(proc, ENDED).pop().expect("no `ended` line");
    let reason = line.split_once("ended: ").unwrap().1;
    reason
        .rsplit_once(" (")
        .map_or(reason, |(reason, _)| reason)
        .to_owned()
}

#[test]
fn the_carrier_is_off_without_a_session_and_on_while_one_relays() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let carrier_file = p.scratch.path.join("carrier");
    // What the up hook sees (it runs alongside the relay): the carrier must be on already.
    let mut cmd = p.a.taptun(&format!(
        "-s -p {} -v -d tt0 {}",
        p.port,
        p.server_secrets()
    ));
    cmd.arg("-u").arg(format!(
        "cat /sys/class/net/$TAPTUN_DEVICE/carrier > {}",
        carrier_file.display()
    ));
    let server = Proc::start("server", cmd, &p.scratch);
    assert!(
        wait_for(DEADLINE, || p.a.listening(p.port)),
        "taptun -s did not start listening"
    );
    p.a.wait_for_device("tt0");
    assert_carrier(&p.a, "tt0", false, "server, before any session");

    let mut client = p.good_client("client", "tt0");
    assert!(wait_log(&server, ESTABLISHED, 1, DEADLINE), "no session");
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert_carrier(&p.a, "tt0", true, "server, session up");
    assert_carrier(&p.b, "tt0", true, "client, session up");
    assert!(
        wait_for(DEADLINE, || std::fs::read_to_string(&carrier_file)
            .is_ok_and(|s| s.ends_with('\n'))),
        "the up hook did not run"
    );
    assert_eq!(
        std::fs::read_to_string(&carrier_file).unwrap().trim(),
        "1",
        "the up hook saw the carrier off"
    );
    p.address_tap();
    p.assert_tap_ping();

    // The client goes: the server's session ends and its device says so.
    client.signal(libc::SIGKILL);
    let _ = client.wait();
    assert!(
        wait_log(&server, ENDED, 1, DEADLINE),
        "the server did not see the end"
    );
    assert_carrier(&p.a, "tt0", false, "server, after the session ended");

    // And the other way: a new client, then the server goes.
    let client = p.good_client("client again", "tt1");
    assert!(
        wait_log(&client, ESTABLISHED, 1, DEADLINE),
        "no second session"
    );
    assert_carrier(&p.b, "tt1", true, "client, session up");
    drop(server);
    assert!(
        wait_log(&client, ENDED, 1, DEADLINE),
        "the client did not see the end"
    );
    assert_carrier(&p.b, "tt1", false, "client, after the session ended");
}

#[test]
fn sigusr1_starts_with_whether_a_session_is_up_and_names_the_directions() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("");
    let before = status_line(&server);
    assert!(
        before.contains("no session yet;"),
        "before any session: {before}"
    );

    let mut client = p.good_client("client", "tt0");
    assert!(wait_log(&server, ESTABLISHED, 1, DEADLINE), "no session");
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    p.address_tap();
    p.assert_tap_ping();
    let during = status_line(&server);
    let client_addr = format!("with {}:", common_client_addr(&p));
    assert!(
        during.contains("session up ") && during.contains(&client_addr),
        "server, session up: {during}"
    );
    let client_line = status_line(&client);
    let server_addr = format!("with {}:{};", p.server_addr(), p.port);
    assert!(
        client_line.contains("session up ") && client_line.contains(&server_addr),
        "client, session up: {client_line}"
    );
    for line in [&during, &client_line] {
        for part in ["to peer ", "from peer ", "sessions 1,"] {
            assert!(line.contains(part), "no `{part}` in {line}");
        }
        assert!(
            !line.contains(" in ") && !line.contains(" out "),
            "directions named in/out: {line}"
        );
    }

    client.signal(libc::SIGKILL);
    let _ = client.wait();
    assert!(
        wait_log(&server, ENDED, 1, DEADLINE),
        "the server did not see the end"
    );
    // The state changes just after the `ended` line: ask again until it does.
    let mut after = String::new();
    wait_for(DEADLINE, || {
        after = status_line(&server);
        !after.contains("session up ")
    });
    let reason = last_end_reason(&server);
    assert!(
        after.contains("no session, last ended ")
            && after.contains(&format!(" ago: {reason}; counters:")),
        "after the session ended ({reason}): {after}"
    );
}

/// The client's veth address, from which it connects.
fn common_client_addr(p: &Pair) -> String {
    format!("10.213.{}.2", p.n)
}

#[test]
fn verbose_logs_each_connect_attempt_handshake_step_and_hook() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let server = p.server("");
    let client = p.client("client", &format!("-d tt0 -u true {}", p.client_secrets()));
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert!(
        wait_log(&client, &["up hook `true`", "succeeded"], 1, DEADLINE),
        "the up hook did not run"
    );
    let target = format!("{}:{}", p.server_addr(), p.port);
    for needles in [
        &[target.as_str(), "connecting"][..],
        &[target.as_str(), "connected in "],
        &["handshake: message 1 sent"],
        &["handshake: message 2 received"],
        &["handshake: message 3 sent"],
        &["handshake: key confirmation received"],
        &["up hook `true` started"],
    ] {
        assert!(
            !log_lines(&client, needles).is_empty(),
            "client -v: no line with {needles:?}"
        );
    }
    for needle in [
        "connection accepted",
        "handshake: message 1 received",
        "handshake: message 2 sent",
        "handshake: message 3 received",
        "handshake: key confirmation sent",
    ] {
        assert!(
            !log_lines(&server, &[needle]).is_empty(),
            "server -v: no line with {needle:?}"
        );
    }
}

#[test]
fn an_info_line_at_start_names_the_device_and_what_it_waits_for() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // Default level (no -v), and nobody listening yet: the client's first error comes at once.
    let client = Proc::start(
        "client",
        p.b.taptun(&format!(
            "-c -m {} -p {} -d tt0 {}",
            p.server_addr(),
            p.port,
            p.client_secrets()
        )),
        &p.scratch,
    );
    let start = format!("tt0 ready; connecting to {}:{}", p.server_addr(), p.port);
    assert!(
        wait_log(&client, &["ERROR"], 1, DEADLINE),
        "the client logged no error"
    );
    let log = client.stderr();
    let start_at = log.find(&start);
    let error_at = log.find("ERROR");
    assert!(
        start_at.is_some() && start_at < error_at,
        "no `{start}` before the first error:\n{log}"
    );

    let server = Proc::start(
        "server",
        p.a.taptun(&format!("-s -p {} -d tt0 {}", p.port, p.server_secrets())),
        &p.scratch,
    );
    assert!(
        wait_log(
            &server,
            &["tt0 ready; listening on ", &format!(":{}", p.port)],
            1,
            DEADLINE
        ),
        "no start line from the server"
    );

    // -i: the peer is on stdin and stdout, a socket as inetd gives (-i refuses /dev/null).
    let (_peer, end) = std::os::unix::net::UnixStream::pair().unwrap();
    let log = p.scratch.path.join("inetd.log");
    let mut cmd = p.a.taptun(&format!("-i -d ti0 {}", p.server_secrets()));
    cmd.stdin(std::os::fd::OwnedFd::from(end.try_clone().unwrap()))
        .stdout(std::os::fd::OwnedFd::from(end))
        .stderr(std::fs::File::create(&log).unwrap());
    let inetd = Proc::adopt("inetd", cmd.spawn().unwrap(), Some(log));
    assert!(
        wait_log(
            &inetd,
            &["ti0 ready; handshake with the peer on stdin/stdout"],
            1,
            DEADLINE
        ),
        "no start line with -i"
    );

    // -x: the command's name.
    let mut cmd = p.b.taptun(&format!("-c -d tt1 {}", p.client_secrets()));
    cmd.args(["-x", "exit 1"]);
    let command = Proc::start("command", cmd, &p.scratch);
    assert!(
        wait_log(&command, &["tt1 ready; running `exit 1`"], 1, DEADLINE),
        "no start line with -x"
    );
}
