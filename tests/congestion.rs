//! --congestion: the carrier socket's TCP congestion control, on both ends (the server's accepted
//! connections inherit it from the listening socket), and what happens when the kernel refuses an
//! algorithm: one warning naming the sysctl, the system's default, and a working tunnel.

mod common;

use common::{DEADLINE, Netns, Pair, Proc, accept_within, in_netns, log_count, wait_log};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::Stdio;

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// The congestion control `ss` reports for the established TCP connections on `port` in `ns`.
fn algorithms_on(ns: &Netns, port: u16) -> Vec<String> {
    let out = ns
        .command("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( sport = :{port} or dport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Each connection is two lines: the addresses, then its details, which start with the
    // algorithm's name.
    text.lines()
        .filter(|line| line.starts_with(char::is_whitespace))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn sysctl_words(name: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn both_ends_carry_the_algorithm_asked_for() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // reno: always built in, and never the default.
    let _server = p.server("--congestion reno");
    let client = p.client(
        "client",
        &format!("-d tt0 {} --congestion reno", p.client_secrets()),
    );
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert_eq!(algorithms_on(&p.a, p.port), ["reno"], "the server's side");
    assert_eq!(algorithms_on(&p.b, p.port), ["reno"], "the client's side");
    assert_eq!(log_count(&client, &["--congestion"]), 0);
}

#[test]
fn a_refused_algorithm_is_logged_once_and_the_default_used() {
    if !common::require_root() {
        return;
    }
    let default = sysctl_words("tcp_congestion_control");
    let allowed = sysctl_words("tcp_allowed_congestion_control");
    let p = Pair::new();
    let mut server = p.server("");

    // An algorithm this kernel does not have: even root gets the default.
    let client = p.client(
        "unknown",
        &format!("-d tt0 {} --congestion nosuchalg", p.client_secrets()),
    );
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert!(
        wait_log(
            &client,
            &["--congestion nosuchalg", "no such algorithm"],
            1,
            DEADLINE
        ),
        "no warning for an unknown algorithm"
    );
    assert_eq!(algorithms_on(&p.b, p.port), default);
    drop(client);

    // One that exists but is not allowed to a process without CAP_NET_ADMIN (after -U).
    let Some(restricted) = sysctl_words("tcp_available_congestion_control")
        .into_iter()
        .find(|alg| !allowed.contains(alg))
    else {
        eprintln!("skipped the unprivileged part: every available algorithm is allowed");
        return;
    };
    let client = p.client(
        "unprivileged",
        &format!(
            "-d tt1 -U nobody {} --congestion {restricted}",
            p.client_secrets()
        ),
    );
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    // A reconnect dials a new socket: still one warning.
    server.terminate();
    let _server = p.server("");
    assert!(
        wait_log(&client, ESTABLISHED, 2, DEADLINE),
        "no second session"
    );
    let warning = [
        &format!("--congestion {restricted}")[..],
        "net.ipv4.tcp_allowed_congestion_control",
    ];
    assert_eq!(log_count(&client, &warning), 1, "{}", client_log(&client));
    assert_eq!(algorithms_on(&p.b, p.port), default);
}

fn client_log(client: &Proc) -> String {
    client.stderr()
}

/// -i with a TCP connection as fds 0 and 1, accepted by the test as inetd would accept it.
#[test]
fn the_connection_inetd_hands_over_gets_it_too() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let port = p.port;
    let listener = in_netns(&p.a, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let client = p.client("client", &format!("-d tt0 {}", p.client_secrets()));
    let conn = accept_within(&listener);
    let fd = OwnedFd::from(conn);
    let mut inetd = p.a.taptun(&format!(
        "-i -v -d tt0 {} --congestion reno",
        p.server_secrets()
    ));
    inetd
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd));
    let log = p.scratch.path.join("inetd.log");
    inetd.stderr(std::fs::File::create(&log).unwrap());
    let child = inetd.spawn().expect("taptun -i");
    let _inetd = Proc::adopt("inetd", child, Some(log));
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert_eq!(algorithms_on(&p.a, p.port), ["reno"], "the inetd side");
}
