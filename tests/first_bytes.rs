//! What a newcomer sees when the other end of the stream is not a taptun peer (issue 16, item 2),
//! through the real binary: a -x command that exits before the handshake is named with its exit
//! status or signal (exit 1, not the authentication failure's 3), and a stream whose first bytes
//! cannot start a taptun message (a login banner, an SSH or HTTP port) is refused as soon as its
//! length prefix is in and described by those bytes, at both ends and without answer.
//!
//! The client opens its device before it dials, so every test runs in a namespace of its own as
//! root; the other ends (a fake SSH server, an HTTP client) are plain sockets on its loopback.

mod common;

use common::{
    DEADLINE, Netns, Proc, Scratch, TAPTUN, accept_within, closed_without_answer, in_netns,
    wait_for,
};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

/// "the stream starts with `...` instead of message N"
const STARTS_WITH: &str = "the stream starts with `";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace and two genkey keys for one test.
struct Setup {
    ns: Netns,
    scratch: Scratch,
    /// -l of the client, -r of the server.
    client_key: String,
    /// -l of the server, -r of the client.
    server_key: String,
}

impl Setup {
    fn new() -> Setup {
        let ns = Netns::new(NEXT.fetch_add(1, Ordering::Relaxed), 'f');
        let scratch = Scratch::new();
        let client_key = scratch.genkey("client");
        let server_key = scratch.genkey("server");
        Setup {
            ns,
            scratch,
            client_key,
            server_key,
        }
    }

    /// `taptun -v MODE_ARGS` with the keys of `role` ('c' client, 's' server) on device `dev`,
    /// in the namespace; each argument is given whole (a -x command keeps its spaces).
    fn taptun(&self, role: char, dev: &str, args: &[&str]) -> Command {
        let (local, remote) = match role {
            'c' => (&self.client_key, &self.server_key),
            _ => (&self.server_key, &self.client_key),
        };
        let mut cmd = self.ns.command(TAPTUN);
        cmd.args(["-v", "-d", dev, "-l", local, "-r", remote])
            .args(args)
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE");
        cmd
    }

    /// Starts `taptun -c --once` with `args`; its stderr goes to NAME.log.
    fn client_once(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = vec!["-c", "--once"];
        all.extend_from_slice(args);
        Proc::start(name, self.taptun('c', "tt0", &all), &self.scratch)
    }
}

/// Runs a one-attempt client with `-x command` and returns its exit code and its stderr.
fn run_command_client(command: &str) -> (Option<i32>, String) {
    let s = Setup::new();
    let mut client = s.client_once("client", &["-x", command]);
    let code = client.wait().code();
    (code, client.stderr())
}

#[test]
fn a_command_that_fails_is_named_with_its_status_not_blamed_on_the_secrets() {
    if !common::require_root() {
        return;
    }
    let (code, log) = run_command_client("false");
    assert!(
        log.contains("the command `false` exited with status 1 before the handshake"),
        "{log}"
    );
    let blamed = log
        .lines()
        .any(|line| line.contains("ERROR") && line.contains("wrong secrets"));
    assert!(!blamed, "{log}");
    assert_eq!(code, Some(1), "not an authentication failure: {log}");
}

#[test]
fn a_command_that_is_not_found_gets_status_127_and_a_hint() {
    if !common::require_root() {
        return;
    }
    let (code, log) = run_command_client("sshh gw");
    assert!(
        log.contains(
            "the command `sshh gw` exited with status 127 before the handshake \
             (sh: command not found? check the -x command)"
        ),
        "{log}"
    );
    // The shell's own message still reaches our stderr.
    assert!(log.contains("sshh: not found"), "{log}");
    assert_eq!(code, Some(1), "{log}");
}

#[test]
fn a_command_killed_by_a_signal_is_named_with_it() {
    if !common::require_root() {
        return;
    }
    let (code, log) = run_command_client("kill -KILL $$");
    assert!(
        log.contains(
            "the command `kill -KILL $$` was killed by signal SIGKILL before the handshake"
        ),
        "{log}"
    );
    assert_eq!(code, Some(1), "{log}");
}

#[test]
fn a_banner_printed_by_the_command_is_shown_and_is_no_authentication_failure() {
    if !common::require_root() {
        return;
    }
    // The command stays alive: only the first bytes can end the handshake early.
    let (code, log) = run_command_client("echo hello banner; sleep 5");
    assert!(
        log.contains(
            "exec: handshake failed: the stream starts with `hello ba` instead of message 2"
        ),
        "{log}"
    );
    assert!(!log.contains("ended inside a message"), "{log}");
    assert_eq!(code, Some(1), "{log}");
}

#[test]
fn a_taptun_behind_the_command_that_refuses_us_is_still_status_3() {
    if !common::require_root() {
        return;
    }
    // Not a change but its limit: the command's status 3 is a taptun -i (here run directly; ssh
    // passes the status on) that refused our secrets, so -c keeps the authentication status.
    let s = Setup::new();
    let stranger = s.scratch.genkey("stranger");
    let server = format!("{TAPTUN} -i -d tt1 -l {} -r {stranger}", s.server_key);
    let mut client = s.client_once("client", &["-x", &server]);
    let code = client.wait().code();
    let log = client.stderr();
    assert!(
        log.contains("message 1 did not authenticate"),
        "the server's message: {log}"
    );
    assert!(
        log.contains("exited with status 3 before the handshake"),
        "{log}"
    );
    assert_eq!(code, Some(3), "{log}");
}

#[test]
fn without_once_a_command_that_fails_is_retried() {
    if !common::require_root() {
        return;
    }
    let s = Setup::new();
    let mut client = Proc::start(
        "client",
        s.taptun('c', "tt0", &["-c", "-x", "false"]),
        &s.scratch,
    );
    let failures = || {
        client
            .stderr()
            .matches("the command `false` exited with status 1 before the handshake")
            .count()
    };
    assert!(
        wait_for(DEADLINE, || failures() >= 2),
        "a second attempt: {}",
        client.stderr()
    );
    assert!(client.running(), "{}", client.stderr());
}

#[test]
fn an_ssh_port_is_named_by_its_banner_at_once() {
    if !common::require_root() {
        return;
    }
    let s = Setup::new();
    let listener = in_netns(&s.ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    // An SSH server: its banner, then it waits for ours until the client leaves.
    let sshd = thread::spawn(move || {
        let mut stream = accept_within(&listener);
        stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        received.len()
    });
    let port = port.to_string();
    let mut client = s.client_once("client", &["-m", "127.0.0.1", "-p", &port]);
    let code = client.wait().code();
    let log = client.stderr();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{port}: handshake failed: {STARTS_WITH}SSH-2.0-` instead of message 2"
        )),
        "{log}"
    );
    assert_eq!(code, Some(1), "{log}");
    assert_eq!(
        sshd.join().unwrap(),
        2 + 48,
        "the client sent its message 1 and nothing more"
    );
}

/// Sends an HTTP request to a responder on `stream` and checks that it is closed unanswered.
fn http_request_gets_no_answer(mut stream: TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    assert!(
        closed_without_answer(&mut stream),
        "an HTTP request got an answer or the connection stayed open"
    );
}

#[test]
fn an_http_request_to_the_server_is_named_and_refused_without_answer() {
    if !common::require_root() {
        return;
    }
    let s = Setup::new();
    let port = 7443;
    let args = ["-s", "-p", "7443"];
    let mut server = Proc::start("server", s.taptun('s', "tt0", &args), &s.scratch);
    assert!(
        wait_for(DEADLINE, || !server.running() || s.ns.listening(port)),
        "taptun -s did not start listening"
    );
    let stream = in_netns(&s.ns, move || {
        TcpStream::connect(("127.0.0.1", port)).unwrap()
    });
    http_request_gets_no_answer(stream);
    let expected = format!("handshake failed: {STARTS_WITH}GET / HT` instead of message 1");
    assert!(
        wait_for(DEADLINE, || server.stderr().contains(&expected)),
        "{}",
        server.stderr()
    );
    assert!(server.running(), "-s goes on serving");
}

#[test]
fn an_http_request_to_an_inetd_server_is_named_and_exits_1() {
    if !common::require_root() {
        return;
    }
    let s = Setup::new();
    let listener = in_netns(&s.ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let stream = in_netns(&s.ns, move || TcpStream::connect(addr).unwrap());
    // As inetd does, but with stderr kept apart for the log.
    let socket = OwnedFd::from(accept_within(&listener));
    let mut inetd = s.taptun('s', "tt0", &["-i"]);
    inetd.stdin(socket.try_clone().unwrap()).stdout(socket);
    let log = s.scratch.path.join("inetd.log");
    inetd.stderr(File::create(&log).unwrap());
    let mut inetd = Proc::adopt("taptun -i", inetd.spawn().unwrap(), Some(log));
    http_request_gets_no_answer(stream);
    let code = inetd.wait().code();
    let log = inetd.stderr();
    assert!(
        log.contains(&format!(
            "stdio: handshake failed: {STARTS_WITH}GET / HT` instead of message 1"
        )),
        "{log}"
    );
    assert_eq!(code, Some(1), "not an authentication failure: {log}");
}
