//! End to end on real TAP and TUN devices: taptun in two network namespaces joined by a veth pair
//! (see `common`), with ping and a 10 MB TCP transfer across the tunnel, every way of carrying the
//! stream (-s/-c over TCP, -c -x with a command, -i on stdin/stdout inetd-style), both ciphers,
//! refused secrets (exit status 3), garbage sent to a running server, a client replacing another,
//! and a clean exit on SIGTERM.
//!
//! These tests need root, iproute2 and iputils-ping; otherwise they say they are skipped and pass,
//! unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{Pair, Proc, accept_within, closed_without_answer, in_netns, pubkey, wait_for};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;

#[test]
fn tap_ping_across_the_tunnel() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();
    assert!(client.running(), "the client left the session");
}

#[test]
fn tun_ping_across_the_tunnel_with_passphrases_from_the_environment() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let (server_pass, client_pass) = (
        "a server passphrase long enough",
        "the client's passphrase, just as long",
    );
    // At the highest verbosity, so that the logs can be searched for secrets.
    let mut cmd = p.a.taptun(&format!("-s -p {} -vv -t tun -d tt0", p.port));
    cmd.env("TAPTUN_LOCAL", server_pass)
        .env("TAPTUN_REMOTE", client_pass)
        .env("RUST_LOG", "trace");
    let mut server = Proc::start("server", cmd, &p.scratch);
    assert!(wait_for(common::DEADLINE, || p.a.listening(p.port)));
    let mut cmd = p.b.taptun(&format!(
        "-c --once -m {} -p {} -v -t tun -d tt0",
        p.server_addr(),
        p.port
    ));
    cmd.env("TAPTUN_LOCAL", client_pass)
        .env("TAPTUN_REMOTE", server_pass)
        .env("RUST_LOG", "trace");
    let client = Proc::start("client", cmd, &p.scratch);

    // A TUN device is point to point: each end names the other as its peer.
    let (addr_a, addr_b) = (format!("10.215.{}.1", p.n), format!("10.215.{}.2", p.n));
    for (ns, local, peer) in [(&p.a, &addr_a, &addr_b), (&p.b, &addr_b, &addr_a)] {
        ns.wait_for_device("tt0");
        ns.ip(&format!("addr add {local} peer {peer} dev tt0"));
    }
    p.assert_ping_both_ways(&addr_a, &addr_b);
    assert!(server.running());
    for log in [server.stderr(), client.stderr()] {
        assert!(log.contains("established"), "{log}");
        for secret in [server_pass, client_pass] {
            assert!(!log.contains(secret), "a secret is in the log:\n{log}");
        }
    }
}

#[test]
fn aesgcm_on_both_ends_works_and_a_cipher_mismatch_is_refused() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("-e aesgcm");

    let mut mismatched = p.good_client_once("chachapoly-client", "tt0");
    assert_eq!(
        mismatched.wait().code(),
        Some(3),
        "a different -e must fail the handshake"
    );
    assert!(server.running());

    let _client = p.client_once(
        "aesgcm-client",
        &format!("-d tt0 -e aesgcm {}", p.client_secrets()),
    );
    p.address_tap();
    p.assert_tap_ping();
}

#[test]
fn ten_megabytes_over_tcp_across_the_tunnel_arrive_intact_both_ways() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _server = p.server("");
    let _client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();

    // An echo server in `a` on its tunnel address: the bytes cross the tunnel in both directions.
    common::echo_across_the_tunnel(&p, &p.tap_addr(1), 10 << 20, 0x7a97_0001);
}

#[test]
fn client_over_a_command_reaches_inetd_mode_on_its_stdin_and_stdout() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // The -i end names its peer by public key (-k), as the ssh example in the README does.
    let command = format!(
        "ip netns exec {} {} -i -v -d tt0 -l {} -k {}",
        p.a.name,
        common::TAPTUN,
        p.server_key,
        pubkey(&p.client_key)
    );
    let mut cmd =
        p.b.taptun(&format!("-c --once -v -d tt0 {}", p.client_secrets()));
    cmd.args(["-x", &command]);
    let mut client = Proc::start("client (stderr of -i too)", cmd, &p.scratch);
    p.address_tap();
    p.assert_tap_ping();

    assert_eq!(client.terminate().code(), Some(0), "SIGTERM is a clean end");
    assert!(
        wait_for(common::DEADLINE, || !p.a.device_up("tt0")),
        "taptun -i did not end with the client"
    );
}

#[test]
fn inetd_mode_with_the_socket_on_stdin_stdout_and_stderr_logs_elsewhere() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let listen_addr = format!("{}:{}", p.server_addr(), p.port);
    let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
    let mut client = p.good_client_once("client", "tt0");

    // As inetd does: fds 0, 1 and 2 are all the accepted socket, so taptun must not log to fd 2.
    let socket = OwnedFd::from(accept_within(&listener));
    let mut inetd = p.a.taptun(&format!("-i -v -d tt0 {}", p.server_secrets()));
    inetd
        .stdin(socket.try_clone().unwrap())
        .stdout(socket.try_clone().unwrap())
        .stderr(socket);
    let child = in_netns(&p.a, move || inetd.spawn().unwrap());
    let mut inetd = Proc::adopt("taptun -i", child, None);

    p.address_tap();
    p.assert_tap_ping();
    assert!(client.running() && inetd.running());

    assert_eq!(client.terminate().code(), Some(0));
    assert_eq!(
        inetd.wait().code(),
        Some(0),
        "-i ends cleanly when its peer closes"
    );
}

#[test]
fn wrong_secrets_are_refused_with_status_3() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("");
    let stranger = p.scratch.genkey("stranger");

    let wrong_remote = format!("-d tt0 -l {} -r {stranger}", p.client_key);
    let wrong_local = format!("-d tt0 -l {stranger} -r {}", p.server_key);
    let wrong_peer_key = format!("-d tt0 -l {} -k {}", p.client_key, pubkey(&stranger));
    for (name, args) in [
        ("wrong -r", wrong_remote),
        ("wrong -l", wrong_local),
        ("wrong -k", wrong_peer_key),
    ] {
        let mut client = p.client_once(name, &args);
        assert_eq!(client.wait().code(), Some(3), "client with {name}");
        assert!(
            server.running(),
            "the server must survive a client with {name}"
        );
    }

    // The server was not disturbed: the right client, with -k, gets through.
    let right = format!("-d tt0 -l {} -k {}", p.client_key, pubkey(&p.server_key));
    let _client = p.client_once("right client", &right);
    p.address_tap();
    p.assert_tap_ping();
}

#[test]
fn garbage_sent_to_a_running_server_leaves_its_session_intact() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();

    let connect = || {
        let addr = format!("{}:{}", p.server_addr(), p.port);
        in_netns(&p.b, move || TcpStream::connect(addr).unwrap())
    };
    let mut random = connect();
    random
        .write_all(&common::pseudo_random_bytes(4096, 0x6a7b_0002))
        .unwrap();
    let mut zero_length = connect();
    zero_length.write_all(&[0, 0, 0, 0]).unwrap();
    let mut silent = connect();

    assert!(p.a.ping(&p.tap_addr(2)), "ping while garbage is pending");
    for (what, stream) in [
        ("random bytes", &mut random),
        ("a zero-length frame", &mut zero_length),
        ("nothing", &mut silent),
    ] {
        assert!(
            closed_without_answer(stream),
            "a connection sending {what} must be closed with no answer"
        );
    }
    assert!(server.running() && client.running());
    p.assert_tap_ping();

    // Afterwards the right client can still connect.
    assert_eq!(client.terminate().code(), Some(0));
    let _again = p.good_client_once("client again", "tt0");
    p.address_client_tap("tt0");
    p.assert_tap_ping();
}

#[test]
fn a_new_client_replaces_the_current_one() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _server = p.server("");
    let mut old = p.good_client_once("old client", "tt0");
    p.address_tap();
    p.assert_tap_ping();

    let mut new = p.good_client_once("new client", "tt1");
    assert_eq!(
        old.wait().code(),
        Some(0),
        "the replaced client exits cleanly"
    );
    // The old client's device is gone with its address: the new one takes it.
    p.address_client_tap("tt1");
    p.assert_tap_ping();
    assert!(new.running());
}

#[test]
fn sigterm_ends_the_server_and_then_the_client_with_status_0() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("");
    let mut client = p.good_client_once("client", "tt0");
    p.address_tap();
    p.assert_tap_ping();

    assert_eq!(server.terminate().code(), Some(0), "server after SIGTERM");
    assert_eq!(
        client.wait().code(),
        Some(0),
        "client after the server left"
    );
}
