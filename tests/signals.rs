//! Signals reach taptun in every state, and slow steps do not cost a session.
//!
//! SIGINT and SIGTERM end the process with status 0 within 2 s whatever it is doing: a name
//! lookup that hangs, a dial to an address that drops packets, a handshake write that cannot
//! proceed, an up hook that runs long (killed with what it started), or a relay; the down hook
//! still runs. SIGHUP and SIGUSR1 never end it. Hooks run alongside the relay, so a slow up hook,
//! or the slow down hook of a session being replaced, does not get the new session declared dead.
//! Each test prints the time it measured.

mod common;

use common::{
    DEADLINE, NetnsEtc, Pair, Proc, TAPTUN, blackholed_address, log_count, wait_for, wait_log,
};
use std::fs;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// What the issue allows between SIGTERM and the end of the process.
const EXIT_LIMIT: Duration = Duration::from_secs(2);
/// How long a test waits for an exit that is too late, to print the figure on old code.
const WAIT_FOR_FIGURE: Duration = Duration::from_secs(35);

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];
/// "session with PEER ended: REASON (...)"
const ENDED: &[&str] = &["session with", " ended"];

/// Sends SIGTERM and returns how long `proc` took to exit, with its status (None: still running
/// after WAIT_FOR_FIGURE).
fn sigterm_exit(proc: &mut Proc, what: &str) -> (Duration, Option<ExitStatus>) {
    let sent = Instant::now();
    proc.signal(libc::SIGTERM);
    let exited = wait_for(WAIT_FOR_FIGURE, || !proc.running());
    let took = sent.elapsed();
    eprintln!("SIGTERM during {what}: exited after {took:?}");
    (took, exited.then(|| proc.wait()))
}

fn assert_quick_clean_exit(proc: &mut Proc, what: &str) {
    let (took, status) = sigterm_exit(proc, what);
    assert!(
        took < EXIT_LIMIT,
        "SIGTERM during {what}: {took:?} to exit, more than {EXIT_LIMIT:?}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM during {what}: exit status"
    );
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
}

fn wait_file(path: &Path) -> String {
    assert!(
        wait_for(DEADLINE, || fs::read_to_string(path)
            .is_ok_and(|t| t.ends_with('\n'))),
        "{} was not written",
        path.display()
    );
    fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn sigterm_during_a_dial_to_a_blackholed_address_exits_0_within_2_s() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dead = blackholed_address(&p);
    let args = format!(
        "-c -m {dead} -p {} -v -d tt0 {}",
        p.port,
        p.client_secrets()
    );
    let mut client = Proc::start("client", p.b.taptun(&args), &p.scratch);
    // The device is opened before the dial, which then hangs for up to 10 s.
    p.b.wait_for_device("tt0");
    std::thread::sleep(Duration::from_millis(500));
    assert_quick_clean_exit(&mut client, "a dial to a blackholed address");
}

#[test]
fn sigterm_during_a_hanging_name_lookup_exits_0_within_2_s() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let dns = blackholed_address(&p);
    let _resolv = NetnsEtc::new(&p.b, "resolv.conf", &format!("nameserver {dns}\n"));
    let args = format!(
        "-c -m taptun-server-{}.test -p {} -v -d tt0 {}",
        p.n,
        p.port,
        p.client_secrets()
    );
    let mut client = Proc::start("client", p.b.taptun(&args), &p.scratch);
    p.b.wait_for_device("tt0");
    std::thread::sleep(Duration::from_millis(500));
    assert!(client.running(), "the lookup must still hang");
    assert_quick_clean_exit(&mut client, "a name lookup that hangs");
}

#[test]
fn sigterm_during_a_30_s_up_hook_kills_it_with_its_children_and_runs_down() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let _server = p.server("");
    let dir = &p.scratch.path;
    let (pidfile, downfile) = (dir.join("sleep.pid"), dir.join("down.ran"));
    let termfile = dir.join("up.term");
    let mut cmd = p.b.taptun(&format!(
        "-c -m {} -p {} -v -d tt0 {}",
        p.server_addr(),
        p.port,
        p.client_secrets()
    ));
    cmd.args([
        "-u",
        &format!(
            "trap 'echo term > {}; exit 1' TERM; sleep 30 & echo $! > {}; wait",
            termfile.display(),
            pidfile.display()
        ),
        "-D",
        &format!("echo ran > {}", downfile.display()),
    ]);
    let mut client = Proc::start("client", cmd, &p.scratch);
    let sleep_pid = wait_file(&pidfile);
    assert!(alive(&sleep_pid));
    assert_quick_clean_exit(&mut client, "a 30 s up hook");
    assert!(
        !alive(&sleep_pid),
        "the up hook's child (sleep 30, pid {sleep_pid}) survived"
    );
    assert_eq!(wait_file(&downfile), "ran", "the down hook must run");
    assert_eq!(
        wait_file(&termfile),
        "term",
        "the up hook gets SIGTERM (not only SIGKILL)"
    );
}

/// The -x command hands message 1 to a `taptun -i` responder, fills its own stdin pipe (which
/// nothing reads any more), and only then passes message 2 on: the client's message 3 write
/// waits for room that never comes.
#[test]
fn sigterm_while_a_handshake_write_is_blocked_is_a_clean_exit_not_a_handshake_failure() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    // Message 1: the 2-byte length prefix, an ephemeral key (32) and an empty payload's tag (16).
    let command = format!(
        "{{ sleep 0.5; dd if=/dev/zero of=/proc/$$/fd/0 bs=4096 count=64 oflag=nonblock \
         conv=notrunc 2>/dev/null; }} & \
         head -c 50 | {TAPTUN} -i -d tt1 {} 2>/dev/null | {{ sleep 1.5; cat; }}; exec sleep 30",
        p.server_secrets()
    );
    let mut cmd =
        p.b.taptun(&format!("-c --once -v -d tt0 {}", p.client_secrets()));
    cmd.args(["-x", &command]);
    let mut client = Proc::start("client", cmd, &p.scratch);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        client.running(),
        "the client must still wait to write message 3"
    );
    assert_quick_clean_exit(&mut client, "a blocked handshake write");
    assert!(
        !client.stderr().contains("handshake failed"),
        "a stop is not a handshake failure"
    );
}

/// The -x command is a shell that ignores SIGTERM and, once its `taptun -i` has gone, sleeps:
/// only SIGKILL, after the 1 s grace, ends it.
#[test]
fn sigterm_during_a_relay_over_a_command_that_ignores_sigterm_exits_within_2_s() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let command = format!(
        "trap '' TERM; {TAPTUN} -i -d tt1 {} 2>/dev/null; exec sleep 30",
        p.server_secrets()
    );
    let mut cmd =
        p.b.taptun(&format!("-c --once -v -d tt0 {}", p.client_secrets()));
    cmd.args(["-x", &command]);
    let mut client = Proc::start("client", cmd, &p.scratch);
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    assert_quick_clean_exit(&mut client, "a relay over a command that ignores SIGTERM");
}

#[test]
fn sighup_and_sigusr1_do_not_end_the_process_and_sigterm_ends_a_relay() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("");
    let mut client = p.good_client("client", "tt0");
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    for proc in [&server, &client] {
        proc.signal(libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.running(), "SIGHUP ended the server");
    assert!(client.running(), "SIGHUP ended the client");
    for proc in [&server, &client] {
        proc.signal(libc::SIGUSR1);
        assert!(
            wait_log(proc, &["counters:"], 1, DEADLINE),
            "SIGUSR1 logs the counters"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.running(), "SIGUSR1 ended the server");
    assert!(client.running(), "SIGUSR1 ended the client");
    assert_eq!(log_count(&client, ENDED), 0, "the session must go on");
    assert_quick_clean_exit(&mut client, "a relay (client)");
    assert_quick_clean_exit(&mut server, "a relay (server)");
}

/// An 8 s up hook at one end (`server_hook` or not) with -K 2 at both: each end declares the
/// other dead after 6 s of silence, so the end running the hook must go on reading and sending
/// keepalives meanwhile.
fn slow_up_hook_keeps_the_session(server_hook: bool) {
    let p = Pair::new();
    let hook = |cmd: &mut std::process::Command, on: bool| {
        if on {
            cmd.args(["-u", "sleep 8"]);
        }
    };
    let mut server = p.a.taptun(&format!(
        "-s -p {} -v -d tt0 -K 2 {}",
        p.port,
        p.server_secrets()
    ));
    hook(&mut server, server_hook);
    let server = Proc::start("server", server, &p.scratch);
    assert!(wait_for(DEADLINE, || p.a.listening(p.port)));
    let mut client = p.b.taptun(&format!(
        "-c -m {} -p {} -v -d tt0 -K 2 {}",
        p.server_addr(),
        p.port,
        p.client_secrets()
    ));
    hook(&mut client, !server_hook);
    let client = Proc::start("client", client, &p.scratch);
    assert!(wait_log(&client, ESTABLISHED, 1, DEADLINE), "no session");
    std::thread::sleep(Duration::from_secs(12));
    let (sessions, ended) = (log_count(&client, ESTABLISHED), log_count(&client, ENDED));
    let end = if server_hook { "server" } else { "client" };
    eprintln!(
        "12 s with an 8 s up hook at the {end} and -K 2: {sessions} session(s), {ended} ended"
    );
    assert_eq!((sessions, ended), (1, 0), "one session that stays up");
    assert_eq!(log_count(&server, ENDED), 0);
}

#[test]
fn a_slow_up_hook_at_the_server_does_not_get_the_session_declared_dead() {
    if common::require_root() {
        slow_up_hook_keeps_the_session(true);
    }
}

#[test]
fn a_slow_up_hook_at_the_client_does_not_get_the_session_declared_dead() {
    if common::require_root() {
        slow_up_hook_keeps_the_session(false);
    }
}

#[test]
fn a_slow_down_hook_of_a_replaced_session_does_not_hold_up_the_new_one() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.a.taptun(&format!(
        "-s -p {} -v -d tt0 -K 2 {}",
        p.port,
        p.server_secrets()
    ));
    server.args(["-D", "sleep 8"]);
    let server = Proc::start("server", server, &p.scratch);
    assert!(wait_for(DEADLINE, || p.a.listening(p.port)));
    let client_args = |dev: &str| {
        format!(
            "-c -m {} -p {} -v -d {dev} -K 2 {}",
            p.server_addr(),
            p.port,
            p.client_secrets()
        )
    };
    let first = Proc::start(
        "first",
        p.b.taptun(&format!("--once {}", client_args("tt0"))),
        &p.scratch,
    );
    assert!(
        wait_log(&first, ESTABLISHED, 1, DEADLINE),
        "no first session"
    );
    // The same keys from a second client: it replaces the first, whose down hook takes 8 s.
    let second = Proc::start("second", p.b.taptun(&client_args("tt1")), &p.scratch);
    assert!(
        wait_log(&second, ESTABLISHED, 1, DEADLINE),
        "no second session"
    );
    assert!(
        wait_log(&server, &["replaces"], 1, DEADLINE),
        "no replacement"
    );
    std::thread::sleep(Duration::from_secs(12));
    let (sessions, ended) = (log_count(&second, ESTABLISHED), log_count(&second, ENDED));
    eprintln!(
        "12 s after a replacement with an 8 s down hook: {sessions} session(s), {ended} ended"
    );
    assert_eq!((sessions, ended), (1, 0), "the new session stays up");
}
