//! The client through real proxies from Debian's packages: tinyproxy (HTTP CONNECT, with and
//! without BasicAuth) and dante-server (SOCKS5, without authentication and with a user name and
//! password of a throwaway system user). In each test the client's namespace can reach the server
//! only through the proxy (nftables in the server's namespace drops the direct path), and dials the
//! server by a name that only the proxy's namespace can resolve. A session comes up, pings cross,
//! the proxy is restarted and the client comes back through it; wrong credentials exit 3 with
//! --once.

mod common;

use common::{DEADLINE, NetnsEtc, Pair, Proc, log_count, nft_drop_input, run, wait_for, wait_log};
use std::process::Command;
use std::time::Duration;

/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// The port the proxy listens on, in the server's namespace.
const PROXY_PORT: u16 = 3130;

/// The server's name, which only the server's namespace (where the proxy runs) can resolve.
fn server_name(p: &Pair) -> String {
    format!("ttsrv{}", p.n)
}

/// A pair whose client can reach the server only through a proxy in the server's namespace: a
/// running server, the direct path dropped, and the server's name in that namespace's hosts file.
fn behind_a_proxy() -> (Pair, Proc, NetnsEtc) {
    let p = Pair::new();
    let server = p.server("");
    let client_addr = format!("10.213.{}.2", p.n);
    nft_drop_input(
        &p.a,
        "taptunproxied",
        &[format!("ip saddr {client_addr} tcp dport {}", p.port)],
    );
    let hosts = format!(
        "127.0.0.1 localhost\n{} {}\n",
        p.server_addr(),
        server_name(&p)
    );
    let etc = NetnsEtc::new(&p.a, "hosts", &hosts);
    (p, server, etc)
}

/// Starts tinyproxy in the foreground in the server's namespace, allowing CONNECT to the server's
/// port only, with BasicAuth when `auth` is given.
fn tinyproxy(p: &Pair, auth: Option<(&str, &str)>) -> Proc {
    let conf = p.scratch.path.join("tinyproxy.conf");
    let mut text = format!(
        "User nobody\nGroup nogroup\nPort {PROXY_PORT}\nListen {addr}\nTimeout 600\n\
         Allow 10.213.{n}.0/24\nConnectPort {port}\nLogLevel Info\nMaxClients 20\n",
        addr = p.server_addr(),
        n = p.n,
        port = p.port,
    );
    if let Some((user, password)) = auth {
        text.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let mut cmd = p.a.command("tinyproxy");
    cmd.arg("-d").arg("-c").arg(&conf);
    start_listening(p, "tinyproxy", cmd)
}

/// Starts danted in the server's namespace: SOCKS5 CONNECT from the client's network, with the
/// user name and password of a system user when `username` is true.
fn danted(p: &Pair, username: bool) -> Proc {
    let conf = p.scratch.path.join("danted.conf");
    let method = if username { "username" } else { "none" };
    let text = format!(
        "logoutput: stderr\n\
         internal: {addr} port = {PROXY_PORT}\n\
         external: {addr}\n\
         clientmethod: none\n\
         socksmethod: {method}\n\
         user.privileged: root\n\
         user.unprivileged: nobody\n\
         client pass {{ from: 10.213.{n}.0/24 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 10.213.{n}.0/24 to: 0.0.0.0/0 command: connect }}\n",
        addr = p.server_addr(),
        n = p.n,
    );
    std::fs::write(&conf, text).unwrap();
    let mut cmd = p.a.command("danted");
    cmd.arg("-f").arg(&conf);
    start_listening(p, "danted", cmd)
}

/// Starts a proxy in a process group of its own, so that a restart ends every process it forked
/// (dante serves each connection from a child), as `systemctl restart` would.
fn start_listening(p: &Pair, name: &str, mut cmd: Command) -> Proc {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut proc = Proc::start(name, cmd, &p.scratch);
    let up = wait_for(DEADLINE, || !proc.running() || p.a.listening(PROXY_PORT));
    assert!(up && proc.running(), "{name} did not start listening");
    proc
}

/// A throwaway system user for dante's username method, removed when dropped.
struct SystemUser {
    name: String,
}

impl SystemUser {
    fn new(p: &Pair, password: &str) -> SystemUser {
        let name = format!("ttpx{}x{}", std::process::id() % 100_000, p.n);
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]));
        let user = SystemUser { name };
        let mut chpasswd = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("chpasswd");
        use std::io::Write;
        chpasswd
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}:{password}\n", user.name).as_bytes())
            .unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd");
        user
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Starts the client in `b`: `-c -m SERVER_NAME -P URL` with the right secrets, and the proxy's
/// credentials (if any) in TAPTUN_PROXY_AUTH.
fn client(p: &Pair, name: &str, url: &str, auth: Option<&str>, extra: &str) -> Proc {
    let args = format!(
        "-c -m {} -p {} -P {url} -v -d tt0 {} {extra}",
        server_name(p),
        p.port,
        p.client_secrets()
    );
    let mut cmd = p.b.taptun(&args);
    if let Some(auth) = auth {
        cmd.env("TAPTUN_PROXY_AUTH", auth);
    }
    Proc::start(name, cmd, &p.scratch)
}

/// The session comes up through the proxy (the server sees the proxy's address, not the
/// client's), pings cross, and after a restart of the proxy (all its processes) the client is back
/// through it. Returns the restarted proxy.
fn session_pings_and_survives_a_proxy_restart(
    p: &Pair,
    server: &Proc,
    mut proxy: Proc,
    restart: impl Fn() -> Proc,
    client: &Proc,
) -> Proc {
    assert!(
        wait_log(client, ESTABLISHED, 1, DEADLINE),
        "no session through the proxy"
    );
    let through = format!("session with {}:", p.server_addr());
    assert!(
        wait_log(server, &[&through, " established"], 1, DEADLINE),
        "the server did not see the session come from the proxy's address"
    );
    p.address_tap();
    p.assert_tap_ping();

    run(Command::new("kill").args(["-TERM", "--", &format!("-{}", proxy.pid())]));
    proxy.wait();
    let proxy = restart();
    assert!(
        wait_log(client, ESTABLISHED, 2, DEADLINE),
        "the client did not come back through the restarted proxy"
    );
    p.assert_tap_ping();
    proxy
}

/// The client with wrong credentials and --once exits 3, without retrying.
fn wrong_credentials_exit_3(p: &Pair, url: &str, auth: Option<&str>) {
    let mut client = client(p, "wrong", url, auth, "--once");
    let exited = wait_for(DEADLINE, || !client.running());
    assert!(
        exited,
        "the client with wrong proxy credentials is still running"
    );
    assert_eq!(client.wait().code(), Some(3), "{}", client.stderr());
    assert_eq!(log_count(&client, &["reconnecting"]), 0);
}

#[test]
fn through_tinyproxy_without_credentials() {
    if !common::require_root() {
        return;
    }
    let (p, server, _etc) = behind_a_proxy();
    let proxy = tinyproxy(&p, None);
    let url = format!("http://{}:{PROXY_PORT}", p.server_addr());
    let client = client(&p, "client", &url, None, "");
    session_pings_and_survives_a_proxy_restart(&p, &server, proxy, || tinyproxy(&p, None), &client);
}

#[test]
fn through_tinyproxy_with_basic_auth_and_wrong_credentials_exit_3() {
    if !common::require_root() {
        return;
    }
    let (p, server, _etc) = behind_a_proxy();
    let auth = Some(("alice", "w0nder-land"));
    let proxy = tinyproxy(&p, auth);
    let url = format!("http://{}:{PROXY_PORT}", p.server_addr());
    let client = client(&p, "client", &url, Some("alice:w0nder-land"), "");
    // The credentials are gone from the process's environment once read (the start line comes
    // after that).
    assert!(wait_log(&client, &["connecting to"], 1, DEADLINE));
    let environ = std::fs::read(format!("/proc/{}/environ", client.pid())).unwrap();
    assert!(
        !environ.windows(11).any(|w| w == b"w0nder-land"),
        "the password is still in /proc/PID/environ"
    );
    let _proxy = session_pings_and_survives_a_proxy_restart(
        &p,
        &server,
        proxy,
        || tinyproxy(&p, auth),
        &client,
    );
    drop(client);
    wrong_credentials_exit_3(&p, &url, Some("alice:wrong"));
    wrong_credentials_exit_3(&p, &url, None);
}

#[test]
fn through_dante_without_authentication() {
    if !common::require_root() {
        return;
    }
    let (p, server, _etc) = behind_a_proxy();
    let proxy = danted(&p, false);
    let url = format!("socks5://{}:{PROXY_PORT}", p.server_addr());
    let client = client(&p, "client", &url, None, "");
    session_pings_and_survives_a_proxy_restart(&p, &server, proxy, || danted(&p, false), &client);
}

#[test]
fn through_dante_with_a_user_name_and_password_and_wrong_ones_exit_3() {
    if !common::require_root() {
        return;
    }
    let (p, server, _etc) = behind_a_proxy();
    let password = "s0cks-pass";
    let user = SystemUser::new(&p, password);
    let auth = format!("{}:{password}", user.name);
    let proxy = danted(&p, true);
    let url = format!("socks5://{}:{PROXY_PORT}", p.server_addr());
    let client = client(&p, "client", &url, Some(&auth), "");
    let _proxy = session_pings_and_survives_a_proxy_restart(
        &p,
        &server,
        proxy,
        || danted(&p, true),
        &client,
    );
    drop(client);
    wrong_credentials_exit_3(&p, &url, Some(&format!("{}:wrong", user.name)));
    wrong_credentials_exit_3(&p, &url, None);
    // Give the file form a go too: mode 600, as every secret file.
    let file = p.scratch.path.join("proxy-auth");
    std::fs::write(&file, format!("{auth}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let by_file = client_with_file(&p, &url, &file);
    assert!(
        wait_log(&by_file, ESTABLISHED, 1, Duration::from_secs(10)),
        "no session with --proxy-auth @FILE"
    );
}

fn client_with_file(p: &Pair, url: &str, file: &std::path::Path) -> Proc {
    client(
        p,
        "by-file",
        url,
        None,
        &format!("--proxy-auth @{}", file.display()),
    )
}

/// The README's -x equivalent: OpenBSD netcat's `-X connect` through the same tinyproxy, with the
/// proxy given by a name that only the client's namespace resolves (-P re-resolves it the same
/// way on every attempt).
#[test]
fn the_readme_netcat_equivalent_and_a_proxy_given_by_name() {
    if !common::require_root() {
        return;
    }
    let (p, _server, _etc) = behind_a_proxy();
    let _proxy = tinyproxy(&p, None);
    let proxy_name = format!("ttpx{}", p.n);
    let _client_etc = NetnsEtc::new(
        &p.b,
        "hosts",
        &format!("127.0.0.1 localhost\n{} {proxy_name}\n", p.server_addr()),
    );
    let url = format!("http://{proxy_name}:{PROXY_PORT}");
    let by_name = client(&p, "by-name", &url, None, "--once");
    assert!(
        wait_log(&by_name, ESTABLISHED, 1, DEADLINE),
        "no session with -P naming the proxy"
    );
    drop(by_name);
    let command = format!(
        "nc -X connect -x {proxy_name}:{PROXY_PORT} {} {}",
        server_name(&p),
        p.port
    );
    let mut cmd = p.b.command(common::TAPTUN);
    cmd.args(["-c", "-x", &command, "-v", "-d", "tt0"])
        .args(p.client_secrets().split_whitespace());
    let netcat = Proc::start("netcat", cmd, &p.scratch);
    assert!(
        wait_log(&netcat, ESTABLISHED, 1, DEADLINE),
        "no session through nc -X connect"
    );
    p.address_tap();
    p.assert_tap_ping();
}
