//! taptun in its ecosystem: every recipe in contrib/ run for real. Debian's xinetd serves the
//! xinetd.d file, a faithful stand-in for inetd runs the inetd.conf line, the test plays systemd
//! (socket activation, readiness, credentials, and the hardened units' user and capabilities,
//! through setpriv) and checks the unit files with `systemd-analyze verify` and `taptun --check`,
//! Debian's sshd runs the authorized_keys forced command for a client using the ssh_config, and
//! the bridge and NAT hook scripts make a third host reachable through the tunnel. Each file is
//! used as shipped, with only its placeholders (paths, keys, ports) replaced: `substitute` fails
//! when a placeholder has gone, so a changed file cannot silently stop being tested.
//!
//! The tests that run daemons need root, network namespaces and the Debian packages xinetd,
//! openssh-server, openssh-client, nftables and systemd (for systemd-analyze); without them they
//! say they are skipped and pass, unless TAPTUN_REQUIRE_NETNS=1.

mod common;

use common::{
    DEADLINE, Netns, Pair, Proc, TAPTUN, accept_within, in_netns, pubkey, run, server_with_hooks,
    wait_for,
};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's contrib/ directory.
fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn read_contrib(path: &str) -> String {
    let path = contrib(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every `(placeholder, value)` replaced; panics when a placeholder does not occur, so
/// that a contrib file edited without its test fails here instead of testing something else.
fn substitute(what: &str, text: &str, pairs: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (placeholder, value) in pairs {
        assert!(
            text.contains(placeholder),
            "{what} no longer contains {placeholder:?}: update the test with the file"
        );
        text = text.replace(placeholder, value);
    }
    text
}

/// True when the program `path` (from Debian package `package`) is installed. Otherwise prints
/// why the test is skipped and returns false, or panics when TAPTUN_REQUIRE_NETNS=1 (as in CI)
/// says that skipping is a failure.
fn require_program(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("TAPTUN_REQUIRE_NETNS").as_deref() != Ok("1"),
        "TAPTUN_REQUIRE_NETNS=1 but {path} is missing: apt-get install {package}"
    );
    let _ = writeln!(
        io::stderr(),
        "skipped: needs {path} (apt-get install {package})"
    );
    false
}

/// A third namespace next to the pair's `a` and `b` (same name with another last letter), for a
/// host on the server's LAN.
fn lan_host(p: &Pair) -> Netns {
    let name = format!("{}c", p.a.name.trim_end_matches('a'));
    run(Command::new("ip").args(["netns", "add", &name]));
    let ns = Netns { name };
    ns.ip("link set lo up");
    ns
}

/// A veth pair `lan0` between `x` and `y`, made directly inside the two namespaces (so the name
/// never clashes with anything on the host), both ends up.
fn lan_link(x: &Netns, y: &Netns) {
    run(Command::new("ip").args([
        "link", "add", "lan0", "netns", &x.name, "type", "veth", "peer", "name", "lan0", "netns",
        &y.name,
    ]));
    x.ip("link set lan0 up");
    y.ip("link set lan0 up");
}

/// Kills, when dropped, every process still in the namespace: the children that a daemon under
/// test (xinetd, sshd) started and might leave behind when it is stopped.
struct KillLeftovers<'a>(&'a Netns);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.0.name])
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill has no memory effects; these processes live in our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Writes `text` to NAME in the pair's scratch directory and returns its path.
fn scratch_file(p: &Pair, name: &str, text: &str) -> PathBuf {
    let path = p.scratch.path.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// The path of a SECRET given as "@PATH".
fn secret_path(secret: &str) -> &str {
    secret
        .strip_prefix('@')
        .expect("a secret of the form @PATH")
}

/// Runs `taptun ARGS --check` with `env` added to its environment and returns its exit code and
/// stderr.
fn check(args: &[String], env: &[(String, String)]) -> (Option<i32>, String) {
    let out = Command::new(TAPTUN)
        .args(args)
        .arg("--check")
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_check_passes(what: &str, args: &[String], env: &[(String, String)]) {
    let (code, stderr) = check(args, env);
    assert_eq!(
        code,
        Some(0),
        "{what}: taptun {} --check: {stderr}",
        args.join(" ")
    );
}

/// The xinetd.d file and the inetd.conf line: a super-server runs `taptun -i` per connection.
mod superserver {
    use super::*;

    /// The taptun command lines of xinetd.d/taptun, inetd.conf and ssh/authorized_keys, with real
    /// key files in place of the placeholders, pass --check (also without root).
    #[test]
    fn command_lines_in_the_superserver_and_ssh_files_pass_check() {
        let scratch = common::Scratch::new();
        let gw_key = scratch.genkey("gw");
        let laptop_key = scratch.genkey("laptop");
        let laptop_pubkey = pubkey(&laptop_key);
        let placeholders = [
            ("@/etc/taptun/gw.key", gw_key.as_str()),
            ("LAPTOP_PUBKEY", laptop_pubkey.as_str()),
        ];
        let xinetd = read_contrib("xinetd.d/taptun");
        let server_args = xinetd
            .lines()
            .find_map(|line| line.trim().strip_prefix("server_args"))
            .and_then(|rest| rest.trim_start().strip_prefix('='))
            .expect("xinetd.d/taptun has server_args");
        let inetd = read_contrib("inetd.conf");
        let inetd_args = inetd
            .lines()
            .find(|line| !line.starts_with('#') && !line.trim().is_empty())
            .expect("inetd.conf has a service line")
            .split_whitespace()
            .skip(7) // service, type, protocol, wait, user, program, argv[0]
            .collect::<Vec<_>>()
            .join(" ");
        let authorized_keys = read_contrib("ssh/authorized_keys");
        let forced = authorized_keys
            .lines()
            .find_map(|line| line.strip_prefix("command=\""))
            .and_then(|rest| rest.split_once('"'))
            .expect("authorized_keys has a command=\"...\" line")
            .0
            .strip_prefix("/usr/local/bin/taptun ")
            .expect("the forced command runs /usr/local/bin/taptun");
        for (what, line) in [
            ("xinetd.d/taptun", server_args),
            ("inetd.conf", &inetd_args),
            ("ssh/authorized_keys", forced),
        ] {
            let args = substitute(what, line, &placeholders);
            let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
            assert_check_passes(what, &args, &[]);
        }
    }

    #[test]
    fn xinetd_serves_one_session_and_closes_a_second_concurrent_connection() {
        if !common::require_root() || !require_program("/usr/sbin/xinetd", "xinetd") {
            return;
        }
        let p = Pair::new();
        let _leftovers = KillLeftovers(&p.a);
        let service = substitute(
            "contrib/xinetd.d/taptun",
            &read_contrib("xinetd.d/taptun"),
            &[
                ("/usr/local/bin/taptun", TAPTUN),
                ("@/etc/taptun/gw.key", &p.server_key),
                ("LAPTOP_PUBKEY", &pubkey(&p.client_key)),
                ("= 1980", &format!("= {}", p.port)),
            ],
        );
        let dir = p.scratch.path.join("xinetd.d");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("taptun"), service).unwrap();
        let conf = scratch_file(
            &p,
            "xinetd.conf",
            &format!(
                "defaults\n{{\n    log_type = FILE {}\n}}\nincludedir {}\n",
                p.scratch.path.join("xinetd-service.log").display(),
                dir.display()
            ),
        );
        let mut xinetd = p.a.command("/usr/sbin/xinetd");
        xinetd
            .args(["-dontfork", "-f"])
            .arg(&conf)
            .arg("-pidfile")
            .arg(p.scratch.path.join("xinetd.pid"));
        let mut xinetd = Proc::start("xinetd", xinetd, &p.scratch);
        assert!(
            wait_for(DEADLINE, || !xinetd.running() || p.a.listening(p.port)),
            "xinetd did not listen on {}",
            p.port
        );
        assert!(xinetd.running(), "xinetd exited");

        let mut first = p.good_client("first client", "tt0");
        p.a.wait_for_device("tap0");
        p.a.ip(&format!("addr add {}/24 dev tap0", p.tap_addr(1)));
        p.address_client_tap("tt0");
        p.assert_tap_ping();

        // instances = 1: xinetd closes the second connection before any handshake.
        let mut second = p.good_client_once("second client", "tt1");
        assert_eq!(
            second.wait().code(),
            Some(3),
            "the second concurrent client must be refused (closed before the handshake)"
        );
        p.assert_tap_ping();
        assert!(first.running() && xinetd.running());
    }

    /// inetd itself cannot be installed next to xinetd (Debian's inetds conflict with it), and
    /// it does only this: for each connection, exec the line's program with the line's argv and
    /// the connection as fds 0, 1 and 2. The test does the same with the line as shipped.
    #[test]
    fn inetd_conf_line_serves_a_session_and_a_second_connection_fails_on_the_busy_device() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let _leftovers = KillLeftovers(&p.a);
        let conf = read_contrib("inetd.conf");
        let lines: Vec<&str> = conf
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(lines.len(), 1, "contrib/inetd.conf holds one service line");
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            fields[..6],
            [
                "taptun",
                "stream",
                "tcp",
                "nowait",
                "root",
                "/usr/local/bin/taptun"
            ],
            "service, socket type, protocol, wait, user, program"
        );
        let argv = substitute(
            "contrib/inetd.conf",
            &fields[6..].join(" "),
            &[
                ("@/etc/taptun/gw.key", &p.server_key),
                ("LAPTOP_PUBKEY", &pubkey(&p.client_key)),
            ],
        );
        let argv: Vec<String> = argv.split_whitespace().map(str::to_owned).collect();

        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
        let serve = |name: &str| {
            let socket = OwnedFd::from(accept_within(&listener));
            let mut cmd = Command::new(TAPTUN);
            cmd.arg0(&argv[0])
                .args(&argv[1..])
                .env_remove("TAPTUN_LOCAL")
                .env_remove("TAPTUN_REMOTE")
                .stdin(socket.try_clone().unwrap())
                .stdout(socket.try_clone().unwrap())
                .stderr(socket);
            Proc::adopt(name, in_netns(&p.a, move || cmd.spawn().unwrap()), None)
        };

        let mut first = p.good_client("first client", "tt0");
        let mut first_server = serve("taptun -i (first)");
        p.a.wait_for_device("tap0");
        p.a.ip(&format!("addr add {}/24 dev tap0", p.tap_addr(1)));
        p.address_client_tap("tt0");
        p.assert_tap_ping();

        let mut second = p.good_client_once("second client", "tt1");
        let mut second_server = serve("taptun -i (second)");
        assert_eq!(
            second_server.wait().code(),
            Some(1),
            "the second taptun -i must fail on the busy tap0"
        );
        assert_eq!(
            second.wait().code(),
            Some(3),
            "the second client sees its connection closed before the handshake"
        );
        p.assert_tap_ping();
        assert!(first.running() && first_server.running());
    }
}

/// contrib/systemd: socket activation and readiness for real (the test plays systemd), the server
/// unit run as its unprivileged user with its credential and hooks, the units verified by
/// systemd-analyze, and every ExecStart accepted by `taptun --check`.
mod systemd {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    const UNITS: [&str; 6] = [
        "taptun.socket",
        "taptun@.service",
        "taptun-server.socket",
        "taptun-server.service",
        "taptun-client@.service",
        "taptun-hub.service",
    ];

    /// Waits for a datagram on `notify` and returns it; panics when `sender` exits first or
    /// nothing arrives within DEADLINE.
    fn notification(notify: &UnixDatagram, sender: &mut Proc) -> String {
        notify
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut message = None;
        let got = wait_for(DEADLINE, || match notify.recv(&mut buf) {
            Ok(len) => {
                message = Some(String::from_utf8_lossy(&buf[..len]).into_owned());
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                assert!(sender.running(), "the service exited without notifying");
                false
            }
            Err(e) => panic!("receiving on NOTIFY_SOCKET: {e}"),
        });
        assert!(got, "no sd_notify message within {DEADLINE:?}");
        message.unwrap()
    }

    fn says_ready(message: &str) -> bool {
        message.lines().any(|line| line == "READY=1")
    }

    /// `PROGRAM ARGS` in namespace `ns`, started as systemd starts a socket-activated service:
    /// LISTEN_FDS=1, `listener` as fd 3, and LISTEN_PID the process's own pid, known only in the
    /// child (`sh` sets it and execs the program in place, as `ip netns exec` and `setpriv` do).
    fn as_systemd_would(
        ns: &Netns,
        listener: &TcpListener,
        program: &str,
        args: &[&str],
    ) -> Command {
        as_systemd_would_after(ns, "", listener, program, args)
    }

    /// `as_systemd_would`, running the shell commands `setup` first (as root, in the private
    /// mount namespace that `ip netns exec` makes).
    fn as_systemd_would_after(
        ns: &Netns,
        setup: &str,
        listener: &TcpListener,
        program: &str,
        args: &[&str],
    ) -> Command {
        let script = format!("set -e; {setup}\nLISTEN_PID=$$ exec \"$0\" \"$@\"");
        let mut cmd = ns.command("/bin/sh");
        cmd.args(["-c", &script, program])
            .args(args)
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE")
            .env("LISTEN_FDS", "1");
        let fd = listener.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself would keep close-on-exec.
                    if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    #[test]
    fn server_serves_on_the_socket_systemd_passes_and_reports_ready() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
        let notify_path = p.scratch.path.join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();

        // -p names another port: with a socket from systemd, taptun must not bind one itself.
        let other_port = (p.port + 1000).to_string();
        let server_key = p.server_key.clone();
        let client_key = p.client_key.clone();
        let args = [
            "-s",
            "-p",
            &other_port,
            "-v",
            "-d",
            "tt0",
            "-l",
            &server_key,
            "-r",
            &client_key,
        ];
        let mut cmd = as_systemd_would(&p.a, &listener, TAPTUN, &args);
        cmd.env("NOTIFY_SOCKET", &notify_path);
        let mut server = Proc::start("server", cmd, &p.scratch);
        drop(listener);

        let message = notification(&notify, &mut server);
        assert!(says_ready(&message), "sd_notify message {message:?}");
        assert!(
            p.a.device_up("tt0"),
            "READY=1 came before the device was open"
        );
        assert!(server.running());
        assert!(
            p.a.listening(p.port) && !p.a.listening(other_port.parse().unwrap()),
            "taptun must serve on the inherited socket, not bind -p"
        );

        let _client = p.good_client("client", "tt0");
        p.address_tap();
        p.assert_tap_ping();
    }

    #[test]
    fn listen_fds_of_another_process_are_ignored_and_ready_reaches_an_abstract_socket() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        // An abstract socket belongs to a network namespace: it must be made in taptun's.
        let name = format!("taptun-test-notify-{}", p.a.name);
        let bind_name = name.clone();
        let notify = in_netns(&p.a, move || {
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(bind_name).unwrap()).unwrap()
        });
        let port = p.port.to_string();
        let args = [
            "-s",
            "-p",
            &port,
            "-d",
            "tt0",
            "-l",
            &p.server_key,
            "-r",
            &p.client_key,
        ];
        let mut cmd = p.a.taptun("");
        cmd.args(args)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1")
            .env("NOTIFY_SOCKET", format!("@{name}"));
        let mut server = Proc::start("server", cmd, &p.scratch);

        let message = notification(&notify, &mut server);
        assert!(says_ready(&message), "sd_notify message {message:?}");
        assert!(
            p.a.listening(p.port),
            "LISTEN_PID names another process: taptun binds -p itself, and listens before READY=1"
        );
        assert!(server.running());
        let _client = p.good_client("client", "tt0");
        p.address_tap();
        p.assert_tap_ping();
    }

    /// `PROGRAM ARGS` in `ns` started as systemd starts a socket-activated service, with
    /// LISTEN_FDS=`listen_fds` and `fds` as fds 3, 4...; every other number below
    /// 3 + `listen_fds` is closed, so that a test can announce descriptors that are not there.
    fn as_systemd_would_pass(
        ns: &Netns,
        listen_fds: u16,
        fds: &[std::os::fd::RawFd],
        program: &str,
        args: &[&str],
    ) -> Command {
        const MAX: usize = 8;
        assert!(fds.len() <= MAX && usize::from(listen_fds) <= MAX);
        let mut sources = [-1; MAX];
        sources[..fds.len()].copy_from_slice(fds);
        let count = fds.len();
        let announced = 3 + libc::c_int::from(listen_fds);
        let mut cmd = ns.command("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", program])
            .args(args)
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE")
            .env("LISTEN_FDS", listen_fds.to_string());
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec, on
        // an array copied before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, so that dup2 onto 3, 4... cannot clobber a later source.
                let mut high = [-1; MAX];
                for i in 0..count {
                    high[i] = libc::fcntl(sources[i], libc::F_DUPFD, 100);
                    if high[i] == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for fd in 3..announced.max(3 + count as libc::c_int) {
                    libc::close(fd);
                }
                for (i, &fd) in high[..count].iter().enumerate() {
                    if libc::dup2(fd, 3 + i as libc::c_int) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        cmd
    }

    /// What `/proc/self/fd/N` links to, such as `socket:[1234]`.
    fn fd_target(fd: &impl AsRawFd) -> String {
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .display()
            .to_string()
    }

    /// A hook (or -x command) that writes `ls -l` of its shell's descriptors to DIR/NAME.fds and
    /// its environment to DIR/NAME.env, the latter last and atomically (a test polls for it).
    fn inspecting_hook(dir: &Path, name: &str) -> String {
        let path = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
        format!(
            "ls -l /proc/$$/fd > {fds}; env > {tmp} && mv {tmp} {env}",
            fds = path("fds"),
            tmp = path("tmp"),
            env = path("env")
        )
    }

    /// The two files of `inspecting_hook`, once it has run.
    fn inspected(dir: &Path, name: &str) -> (String, String) {
        let env = dir.join(format!("{name}.env"));
        assert!(
            wait_for(DEADLINE, || env.exists()),
            "{name} did not run: no {}",
            env.display()
        );
        let fds = fs::read_to_string(dir.join(format!("{name}.fds"))).unwrap();
        (fds, fs::read_to_string(env).unwrap())
    }

    fn listen_variables(env: &str) -> Vec<&str> {
        env.lines().filter(|l| l.starts_with("LISTEN_")).collect()
    }

    #[test]
    fn listen_fds_without_fd_3_is_refused_naming_fd_3() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let args = ["-s", "-d", "tt0", "-l", &p.server_key, "-r", &p.client_key];
        let cmd = as_systemd_would_pass(&p.a, 1, &[], TAPTUN, &args);
        let mut server = Proc::start("server", cmd, &p.scratch);
        let status = server.wait();
        let stderr = server.stderr();
        assert_eq!(status.code(), Some(2), "{status}: {stderr}");
        assert!(
            stderr.contains("fd 3 from LISTEN_FDS is not open"),
            "{stderr}"
        );
    }

    #[test]
    fn a_passed_fd_3_that_is_not_a_listening_tcp_socket_is_refused() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let unix_path = p.scratch.path.join("unix.sock");
        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let (udp, tcp, connected) = in_netns(&p.a, move || {
            let tcp = TcpListener::bind(listen_addr).unwrap();
            let connected = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
            (
                std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
                tcp,
                connected,
            )
        });
        let file = fs::File::open("/dev/null").unwrap();
        let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        let cases: [(&dyn AsRawFd, &str); 4] = [
            (&file, "it is not a socket"),
            (&udp, "it is not a stream socket"),
            (&unix, "it is an AF_UNIX socket"),
            (&connected, "it is not listening"),
        ];
        let args = ["-s", "-d", "tt0", "-l", &p.server_key, "-r", &p.client_key];
        for (fd, says) in cases {
            let cmd = as_systemd_would_pass(&p.a, 1, &[fd.as_raw_fd()], TAPTUN, &args);
            let mut server = Proc::start("server", cmd, &p.scratch);
            let status = server.wait();
            let stderr = server.stderr();
            assert_eq!(status.code(), Some(2), "{says}: {status}: {stderr}");
            let expected = format!("fd 3 from LISTEN_FDS is not a listening TCP socket: {says}");
            assert!(stderr.contains(&expected), "{stderr}");
        }
        drop(tcp);
    }

    #[test]
    fn every_passed_descriptor_is_claimed_and_no_hook_inherits_one() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let (first, second) = (format!("{}:{}", p.server_addr(), p.port), p.port + 1);
        let addr = p.server_addr();
        let listeners = in_netns(&p.a, move || {
            let second = TcpListener::bind((addr.as_str(), second)).unwrap();
            (TcpListener::bind(first).unwrap(), second)
        });
        let targets = [fd_target(&listeners.0), fd_target(&listeners.1)];
        let hook = inspecting_hook(&p.scratch.path, "up");
        let args = [
            "-s",
            "-v",
            "-d",
            "tt0",
            "-l",
            &p.server_key,
            "-r",
            &p.client_key,
            "-u",
            &hook,
        ];
        let fds = [listeners.0.as_raw_fd(), listeners.1.as_raw_fd()];
        let mut cmd = as_systemd_would_pass(&p.a, 2, &fds, TAPTUN, &args);
        cmd.env("LISTEN_FDNAMES", "taptun:other")
            .env("LISTEN_PIDFDID", "4242");
        let mut server = Proc::start("server", cmd, &p.scratch);
        drop(listeners);

        let _client = p.good_client("client", "tt0");
        let (fds, env) = inspected(&p.scratch.path, "up");
        for target in &targets {
            assert!(
                !fds.contains(target.as_str()),
                "the up hook inherited {target}:\n{fds}"
            );
        }
        assert_eq!(listen_variables(&env), Vec::<&str>::new(), "in the up hook");
        assert!(
            wait_for(DEADLINE, || !p.a.listening(p.port + 1)),
            "fd 4 is still open in taptun: something listens on {}",
            p.port + 1
        );
        assert!(server.running());
        assert!(
            server.stderr().contains("systemd passed 2 sockets"),
            "{}",
            server.stderr()
        );
    }

    #[test]
    fn an_exec_command_inherits_no_passed_descriptor_and_no_listen_variable() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let listener = in_netns(&p.b, || TcpListener::bind("127.0.0.1:0").unwrap());
        let target = fd_target(&listener);
        let command = inspecting_hook(&p.scratch.path, "exec");
        let args = [
            "-c",
            "-o",
            "-x",
            &command,
            "-d",
            "tt0",
            "-l",
            &p.client_key,
            "-r",
            &p.server_key,
        ];
        let mut cmd = as_systemd_would_pass(&p.b, 1, &[listener.as_raw_fd()], TAPTUN, &args);
        cmd.env("LISTEN_PIDFDID", "4242");
        let mut client = Proc::start("client", cmd, &p.scratch);
        drop(listener);
        let (fds, env) = inspected(&p.scratch.path, "exec");
        assert!(!fds.contains(&target), "-x inherited {target}:\n{fds}");
        assert_eq!(
            listen_variables(&env),
            Vec::<&str>::new(),
            "in the -x command"
        );
        client.wait();
    }

    #[test]
    fn fwmark_marks_connections_on_the_socket_systemd_passes() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
        let args = [
            "-s",
            "-v",
            "-F",
            "0x2a",
            "-d",
            "tt0",
            "-l",
            &p.server_key,
            "-r",
            &p.client_key,
        ];
        let cmd = as_systemd_would(&p.a, &listener, TAPTUN, &args);
        let mut server = Proc::start("server", cmd, &p.scratch);
        drop(listener);
        // A connection made before taptun sets the mark is accepted unmarked (the man page
        // says to set Mark= in the .socket unit for that one).
        assert!(
            wait_for(DEADLINE, || server.stderr().contains("listening on")),
            "{}",
            server.stderr()
        );
        let _client = p.good_client("client", "tt0");
        p.address_tap();
        p.assert_tap_ping();
        let local = format!("{}:{}", p.server_addr(), p.port);
        let sockets =
            run(p
                .a
                .command("ss")
                .args(["-t", "-n", "-e", "state", "established", "src", &local]));
        assert!(
            sockets.contains("fwmark:0x2a"),
            "no fwmark 42 on the accepted carrier socket:\n{sockets}"
        );
        assert!(server.running());
    }

    #[test]
    fn fwmark_on_the_socket_systemd_passes_without_cap_net_admin_is_refused() {
        if !common::require_root() || !require_program("/usr/bin/setpriv", "util-linux") {
            return;
        }
        let p = Pair::new();
        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
        let args = [
            "--inh-caps=-all",
            // Linux 5.17 and later let CAP_NET_RAW set a mark too.
            "--bounding-set=-net_admin,-net_raw",
            TAPTUN,
            "-s",
            "-F",
            "42",
            "-d",
            "tt0",
            "-l",
            &p.server_key,
            "-r",
            &p.client_key,
        ];
        let cmd = as_systemd_would(&p.a, &listener, "setpriv", &args);
        let mut server = Proc::start("server", cmd, &p.scratch);
        drop(listener);
        let status = server.wait();
        let stderr = server.stderr();
        assert_eq!(status.code(), Some(2), "{status}: {stderr}");
        assert!(
            stderr.contains("-F: cannot set mark 42") && stderr.contains("CAP_NET_ADMIN"),
            "{stderr}"
        );
    }

    /// A unit file: its sections, each a list of (key, value) in file order.
    type Unit = Vec<(String, Vec<(String, String)>)>;

    /// Parses a unit file strictly enough to catch a broken edit when systemd-analyze is missing:
    /// known sections, `Key=value` lines, no continuation lines.
    fn parse_unit(name: &str, text: &str) -> Unit {
        let mut unit: Unit = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{name}:{}: no continuation lines",
                n + 1
            );
            if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                assert!(
                    ["Unit", "Service", "Socket", "Install"].contains(&section),
                    "{name}:{}: unexpected section [{section}]",
                    n + 1
                );
                unit.push((section.to_owned(), Vec::new()));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: not Key=value: {line}", n + 1));
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
                "{name}:{}: bad key {key:?}",
                n + 1
            );
            let section = unit
                .last_mut()
                .unwrap_or_else(|| panic!("{name}:{}: a setting before any section", n + 1));
            section.1.push((key.to_owned(), value.to_owned()));
        }
        unit
    }

    /// The values of `key` in `section`, in order.
    fn values<'u>(unit: &'u Unit, section: &str, key: &str) -> Vec<&'u str> {
        unit.iter()
            .filter(|(s, _)| s == section)
            .flat_map(|(_, settings)| settings)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one<'u>(unit: &'u Unit, name: &str, section: &str, key: &str) -> &'u str {
        match values(unit, section, key)[..] {
            [value] => value,
            ref all => panic!("{name}: [{section}] {key}= set {} times", all.len()),
        }
    }

    #[test]
    fn units_parse_and_have_the_promised_settings() {
        for name in UNITS {
            let unit = parse_unit(name, &read_contrib(&format!("systemd/{name}")));
            assert_eq!(
                one(&unit, name, "Unit", "Documentation"),
                "man:taptun(8)",
                "{name}"
            );
            if name.ends_with(".socket") {
                assert_eq!(one(&unit, name, "Socket", "ListenStream"), "1980");
                continue;
            }
            let setting = |key| one(&unit, name, "Service", key);
            for (key, value) in [
                ("User", "taptun"),
                ("AmbientCapabilities", "CAP_NET_ADMIN"),
                ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
                ("DeviceAllow", "/dev/net/tun rw"),
                ("NoNewPrivileges", "yes"),
                ("ProtectSystem", "strict"),
                ("ProtectHome", "yes"),
                ("PrivateTmp", "yes"),
                (
                    "RestrictAddressFamilies",
                    "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
                ),
            ] {
                assert_eq!(setting(key), value, "{name}: {key}=");
            }
            assert!(
                values(&unit, "Service", "PrivateDevices").is_empty(),
                "{name}: PrivateDevices= hides /dev/net/tun"
            );
            // The key comes as a credential, under the name ExecStart reads.
            let (credential, source) = setting("LoadCredential").split_once(':').unwrap();
            assert!(source.starts_with("/etc/taptun/"), "{name}: {source}");
            let exec = setting("ExecStart");
            assert!(
                exec.contains(&format!(" -l @%d/{credential} ")),
                "{name}: ExecStart must read the credential {credential}: {exec}"
            );
            assert!(
                !exec.contains(" -U") && !exec.contains("--user"),
                "{name}: User= runs it unprivileged, not -U"
            );
        }
        let accept = parse_unit("taptun.socket", &read_contrib("systemd/taptun.socket"));
        assert_eq!(one(&accept, "taptun.socket", "Socket", "Accept"), "yes");
        assert_eq!(
            one(&accept, "taptun.socket", "Socket", "MaxConnections"),
            "1"
        );
        let per_connection =
            parse_unit("taptun@.service", &read_contrib("systemd/taptun@.service"));
        for (key, value) in [
            ("StandardInput", "socket"),
            ("StandardOutput", "socket"),
            ("StandardError", "journal"),
        ] {
            assert_eq!(
                one(&per_connection, "taptun@.service", "Service", key),
                value
            );
        }
        assert!(one(&per_connection, "taptun@.service", "Service", "ExecStart").contains(" -i "));
        let server = parse_unit(
            "taptun-server.service",
            &read_contrib("systemd/taptun-server.service"),
        );
        assert_eq!(
            one(&server, "taptun-server.service", "Service", "Type"),
            "notify"
        );
        let socket = parse_unit(
            "taptun-server.socket",
            &read_contrib("systemd/taptun-server.socket"),
        );
        assert!(values(&socket, "Socket", "Accept").is_empty());
    }

    #[test]
    fn systemd_analyze_verify_accepts_the_units() {
        if !require_program("/usr/bin/systemd-analyze", "systemd") {
            return;
        }
        let scratch = common::Scratch::new();
        let mut paths = Vec::new();
        for name in UNITS {
            let text = read_contrib(&format!("systemd/{name}"));
            // verify checks that ExecStart's program exists: point it at the built binary.
            let text = if name.ends_with(".service") {
                substitute(name, &text, &[("/usr/local/bin/taptun", TAPTUN)])
            } else {
                text
            };
            let path = scratch.path.join(name);
            fs::write(&path, text).unwrap();
            paths.push(path);
        }
        // A template is verified as one of its instances too, as `systemctl start` would load it.
        paths.push(scratch.path.join("taptun-client@gw.service"));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&paths)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify ({}): {stderr}",
            out.status
        );
    }

    /// The environment of a unit's ExecStart: its Environment= settings, then its
    /// EnvironmentFile (which overrides them, as in systemd).
    fn unit_environment(unit: &Unit, env_file: &str) -> HashMap<String, String> {
        let mut env = HashMap::new();
        for assignments in values(unit, "Service", "Environment") {
            for assignment in assignments.split_whitespace() {
                let (k, v) = assignment.split_once('=').unwrap();
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        for line in env_file.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let (k, v) = line.split_once('=').unwrap();
            let v = v.trim().trim_matches('"');
            env.insert(k.trim().to_owned(), v.to_owned());
        }
        env
    }

    /// ExecStart's arguments after systemd's expansion: specifiers first (`%d`, `%i`, `%%`),
    /// then `${VAR}` as one word and `$VAR` split at whitespace. The program is dropped.
    fn exec_start_args(
        exec: &str,
        specifiers: &[(&str, &str)],
        env: &HashMap<String, String>,
    ) -> Vec<String> {
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/taptun"));
        let mut args = Vec::new();
        for word in words {
            let mut word = word.to_owned();
            for (specifier, value) in specifiers {
                word = word.replace(specifier, value);
            }
            let unset = |var: &str| panic!("ExecStart uses {var}, set nowhere");
            if let Some(var) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                args.push(env.get(var).cloned().unwrap_or_else(|| unset(var)));
            } else if let Some(var) = word.strip_prefix('$') {
                let value = env.get(var).cloned().unwrap_or_else(|| unset(var));
                args.extend(value.split_whitespace().map(str::to_owned));
            } else {
                assert!(!word.contains('$'), "unexpected expansion in {word}");
                args.push(word);
            }
        }
        args
    }

    /// The uid that stands for the units' `User=taptun`, which need not exist here.
    const NOBODY: u32 = 65534;

    /// Gives user `uid` the permissions `perm` (4 = r, 5 = r-x) on `path` through a POSIX access
    /// ACL, as systemd does for its credentials; the group bits of the mode then show the ACL's
    /// mask. Returns false when the file system has no ACLs.
    fn grant_by_acl(path: &Path, uid: u32, perm: u16) -> bool {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).unwrap().permissions().mode();
        let class = |shift: u32| ((mode >> shift) & 7) as u16;
        // The kernel's xattr form of an access ACL (linux/posix_acl_xattr.h): version 2, then
        // entries of (tag, permissions, id), little-endian, sorted by tag.
        const UNDEFINED_ID: u32 = u32::MAX;
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, class(6), UNDEFINED_ID),     // ACL_USER_OBJ
            (0x02, perm, uid),                     // ACL_USER
            (0x04, class(3), UNDEFINED_ID),        // ACL_GROUP_OBJ
            (0x10, perm | class(3), UNDEFINED_ID), // ACL_MASK
            (0x20, class(0), UNDEFINED_ID),        // ACL_OTHER
        ] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: both strings are NUL-terminated and `acl` is valid for its length.
        let rc = unsafe {
            libc::setxattr(
                c_path.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        if rc == 0 {
            return true;
        }
        let e = io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "setting an ACL on {}: {e}",
            path.display()
        );
        false
    }

    /// Copies a key file to `to` as systemd writes a credential for a unit with `User=`: mode
    /// 0400, owned by root, and readable by the unit's user through a POSIX ACL entry, so that
    /// stat shows mode 0440 although no group and no other user can read it. Where the file system
    /// has no ACLs, systemd gives the file to the user instead, and so does this (as root).
    fn write_credential(from: &Path, to: &Path, uid: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::copy(from, to).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(0o400)).unwrap();
        if grant_by_acl(to, uid, 4) {
            let mode = fs::metadata(to).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o440, "a credential with an ACL shows its mask");
        } else {
            let _ = writeln!(
                io::stderr(),
                "note: no ACLs on {}: the credential is a plain 0400 file",
                to.display()
            );
            let _ = std::os::unix::fs::chown(to, Some(uid), None);
        }
    }

    #[test]
    fn every_exec_start_passes_taptun_check_with_the_example_configuration() {
        let scratch = common::Scratch::new();
        // The credentials directory (%d), holding each unit's key under its credential name.
        let credentials = scratch.path.join("credentials");
        fs::create_dir(&credentials).unwrap();
        let peer = scratch.genkey("peer");
        let example = substitute(
            "contrib/systemd/example.conf",
            &read_contrib("systemd/example.conf"),
            &[
                ("PEER_PUBKEY", &pubkey(&peer)),
                ("gw.example.org", "127.0.0.1"),
                (
                    "/usr/local/lib/taptun/",
                    &format!("{}/", contrib("scripts").display()),
                ),
            ],
        );
        let specifiers = [
            ("%d", credentials.to_str().unwrap()),
            ("%i", "gw"),
            ("%I", "gw"),
            ("%%", "%"),
        ];
        for name in UNITS.iter().filter(|n| n.ends_with(".service")) {
            let unit = parse_unit(name, &read_contrib(&format!("systemd/{name}")));
            let credential = one(&unit, name, "Service", "LoadCredential")
                .split_once(':')
                .unwrap()
                .0
                .replace("%i", "gw");
            let key = scratch.genkey(&format!("{name}-local"));
            write_credential(
                Path::new(secret_path(&key)),
                &credentials.join(&credential),
                NOBODY,
            );

            // The process environment, as systemd gives it: the unit's variables and the
            // credentials directory.
            let env = unit_environment(&unit, &example);
            let mut process_env: Vec<(String, String)> = env.clone().into_iter().collect();
            process_env.push((
                "CREDENTIALS_DIRECTORY".to_owned(),
                credentials.display().to_string(),
            ));
            let exec = one(&unit, name, "Service", "ExecStart");
            if name == &"taptun-hub.service" {
                // The hub reads its peers file: one peer, then none that --check can read.
                let peers = scratch.path.join("peers");
                fs::write(&peers, format!("gw {} bridge=br0\n", pubkey(&peer))).unwrap();
                let exec = exec.replace("/etc/taptun/peers", peers.to_str().unwrap());
                let args = exec_start_args(&exec, &specifiers, &env);
                assert_check_passes(name, &args, &process_env);
                fs::write(&peers, "gw not-a-key\n").unwrap();
                let (code, stderr) = check(&args, &process_env);
                assert_eq!(code, Some(2), "{name} with a bad peers file: {stderr}");
                assert!(stderr.contains(":1:"), "{name}: {stderr}");
                fs::remove_file(credentials.join(&credential)).unwrap();
                continue;
            }
            let args = exec_start_args(exec, &specifiers, &env);
            assert_check_passes(name, &args, &process_env);

            // --check really checks: without PEER_KEY in the file, -k gets an empty key.
            let mut env = env;
            env.insert("PEER_KEY".to_owned(), String::new());
            let (code, stderr) = check(&exec_start_args(exec, &specifiers, &env), &process_env);
            assert_eq!(code, Some(2), "{name} with an empty PEER_KEY: {stderr}");
            fs::remove_file(credentials.join(&credential)).unwrap();
        }
    }

    /// `setpriv` options that give a process what the unit's `User=`, `AmbientCapabilities=`,
    /// `CapabilityBoundingSet=` and `NoNewPrivileges=` give it; `uid` stands for the user.
    fn unit_privileges(unit: &Unit, name: &str, uid: u32) -> Vec<String> {
        let caps = |key| {
            one(unit, name, "Service", key)
                .split_whitespace()
                .map(|cap| {
                    let cap = cap.to_ascii_lowercase();
                    format!(",+{}", cap.strip_prefix("cap_").unwrap())
                })
                .collect::<String>()
        };
        let mut options = vec![
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps=-all{}", caps("AmbientCapabilities")),
            format!("--ambient-caps=-all{}", caps("AmbientCapabilities")),
            format!("--bounding-set=-all{}", caps("CapabilityBoundingSet")),
        ];
        if one(unit, name, "Service", "NoNewPrivileges") == "yes" {
            options.push("--no-new-privs".to_owned());
        }
        options
    }

    /// The uid and effective capabilities of the process named `comm` in `ns`.
    fn credentials_of(ns: &Netns, comm: &str) -> Option<(String, String)> {
        let pids = run(Command::new("ip").args(["netns", "pids", &ns.name]));
        pids.split_whitespace().find_map(|pid| {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if name.trim() != comm {
                return None;
            }
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            };
            Some((field("Uid:")?, field("CapEff:")?))
        })
    }

    /// taptun-server.socket and taptun-server.service as systemd would run them, minus the file
    /// system sandbox: the unit's ExecStart with the example settings (NAT hooks included), as an
    /// unprivileged user with only the unit's capabilities, the key as a credential, the socket
    /// passed in and readiness reported. A client then reaches a host behind the server's NAT.
    #[test]
    fn server_unit_runs_unprivileged_with_its_socket_credential_and_hooks() {
        use std::os::unix::fs::PermissionsExt;
        if !common::require_root()
            || !require_program("/usr/bin/setpriv", "util-linux")
            || !require_program("/usr/sbin/nft", "nftables")
        {
            return;
        }
        let p = Pair::new();
        let c = lan_host(&p);
        lan_link(&p.a, &c);
        let (lan_a, lan_c) = (format!("10.216.{}.1", p.n), format!("10.216.{}.2", p.n));
        p.a.ip(&format!("addr add {lan_a}/24 dev lan0"));
        c.ip(&format!("addr add {lan_c}/24 dev lan0"));

        // What the unprivileged user needs to reach: the scratch directory (traversable, not
        // listable), copies of the binary and the hooks, and the credentials directory.
        let mode = |path: &Path, mode| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(&p.scratch.path, 0o711);
        let bin = p.scratch.path.join("bin");
        fs::create_dir(&bin).unwrap();
        mode(&bin, 0o755);
        for file in ["nat-up", "nat-down"] {
            fs::copy(contrib(&format!("scripts/{file}")), bin.join(file)).unwrap();
        }
        let taptun = bin.join("taptun");
        fs::copy(TAPTUN, &taptun).unwrap();
        let credentials = p.scratch.path.join("credentials");
        fs::create_dir(&credentials).unwrap();

        let name = "taptun-server.service";
        let unit = parse_unit(name, &read_contrib(&format!("systemd/{name}")));
        let (credential, _) = one(&unit, name, "Service", "LoadCredential")
            .split_once(':')
            .unwrap();
        write_credential(
            Path::new(secret_path(&p.server_key)),
            &credentials.join(credential),
            NOBODY,
        );
        mode(&credentials, 0o500);
        if !grant_by_acl(&credentials, NOBODY, 5) {
            std::os::unix::fs::chown(&credentials, Some(NOBODY), None).unwrap();
        }

        let example = substitute(
            "contrib/systemd/example.conf",
            &read_contrib("systemd/example.conf"),
            &[
                ("PEER_PUBKEY", &pubkey(&p.client_key)),
                ("/usr/local/lib/taptun/", &format!("{}/", bin.display())),
                ("TAPTUN_NAT_IF=eth0", "TAPTUN_NAT_IF=lan0"),
            ],
        );
        assert!(
            example.contains("-u ") && example.contains("nat-up"),
            "the example runs the NAT hooks"
        );
        let env = unit_environment(&unit, &example);
        let specifiers = [("%d", credentials.to_str().unwrap()), ("%%", "%")];
        let args = exec_start_args(one(&unit, name, "Service", "ExecStart"), &specifiers, &env);

        let socket = parse_unit(
            "taptun-server.socket",
            &read_contrib("systemd/taptun-server.socket"),
        );
        assert_eq!(
            one(&socket, "taptun-server.socket", "Socket", "ListenStream"),
            "1980"
        );
        // The test's port instead of 1980, on the server's veth address.
        let listen_addr = format!("{}:{}", p.server_addr(), p.port);
        let listener = in_netns(&p.a, move || TcpListener::bind(listen_addr).unwrap());
        let notify_path = p.scratch.path.join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        mode(&notify_path, 0o777); // systemd's notify socket accepts every user

        let mut setpriv_args = unit_privileges(&unit, name, NOBODY);
        setpriv_args.push(taptun.display().to_string());
        setpriv_args.extend(args);
        let setpriv_args: Vec<&str> = setpriv_args.iter().map(String::as_str).collect();
        // Debian's udev makes /dev/net/tun 0666, so that CAP_NET_ADMIN alone opens it; a host
        // without udev may leave it 0600. Then the server gets a 0666 node of its own, on a
        // tmpfs in its private mount namespace, bound over /dev/net/tun there only.
        let tun_mode = fs::metadata("/dev/net/tun").unwrap().permissions().mode() & 0o777;
        let setup = if tun_mode == 0o666 {
            String::new()
        } else {
            let dev = p.scratch.path.join("dev");
            fs::create_dir(&dev).unwrap();
            let _ = writeln!(
                io::stderr(),
                "note: /dev/net/tun is {tun_mode:o} here, not 666 as udev makes it: \
                 the server gets its own 666 node"
            );
            format!(
                "mount -t tmpfs -o mode=755 taptun-test '{dev}'; \
                 mknod -m 666 '{dev}/tun' c 10 200; mount --bind '{dev}/tun' /dev/net/tun",
                dev = dev.display()
            )
        };
        let mut cmd = as_systemd_would_after(&p.a, &setup, &listener, "setpriv", &setpriv_args);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LISTEN_FDS", "1")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .envs(&env);
        let mut server = Proc::start("taptun-server.service", cmd, &p.scratch);
        drop(listener);

        let message = notification(&notify, &mut server);
        assert!(says_ready(&message), "sd_notify message {message:?}");
        assert!(server.running());
        // CAP_NET_ADMIN is bit 12: the process has that one capability and no other.
        let (uid, caps) = credentials_of(&p.a, "taptun").expect("taptun runs in a");
        assert_eq!(uid, format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}"));
        assert_eq!(u64::from_str_radix(&caps, 16).unwrap(), 1 << 12, "CapEff");

        let device = &env["DEVICE"];
        let _client = p.client(
            "client",
            &format!("-d tt0 -l {} -k {}", p.client_key, pubkey(&p.server_key)),
        );
        p.a.wait_for_device(device);
        p.a.ip(&format!("addr add {}/24 dev {device}", p.tap_addr(1)));
        p.address_client_tap("tt0");
        p.b.ip(&format!(
            "route add 10.216.{}.0/24 via {}",
            p.n,
            p.tap_addr(1)
        ));
        assert!(
            p.b.ping(&lan_c),
            "ping from the client to {lan_c} behind the unprivileged server's NAT"
        );
        let table = format!("taptun_nat_{device}");
        assert!(run(p.a.command("nft").args(["list", "tables"])).contains(&table));
    }
}

/// contrib/ssh: sshd's forced command runs taptun -i; the client reaches it with the ssh_config.
mod ssh {
    use super::*;

    /// Whether root's password field in /etc/shadow marks the account locked (starts with '!').
    fn root_is_locked() -> bool {
        fs::read_to_string("/etc/shadow")
            .is_ok_and(|shadow| shadow.lines().any(|line| line.starts_with("root:!")))
    }

    #[test]
    fn tunnel_through_sshd_with_the_forced_command_and_the_client_config() {
        if !common::require_root()
            || !require_program("/usr/sbin/sshd", "openssh-server")
            || !require_program("/usr/bin/ssh", "openssh-client")
        {
            return;
        }
        let p = Pair::new();
        let _leftovers = KillLeftovers(&p.a);
        // sshd refuses to start without its privilege-separation directory, which Debian's
        // service makes at boot; a test machine that never started sshd may lack it.
        fs::create_dir_all("/run/sshd").unwrap();
        let keygen = |name: &str| {
            let path = p.scratch.path.join(name);
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path));
            let public = fs::read_to_string(path.with_extension("pub")).unwrap();
            (path, public.trim().to_owned())
        };
        let (host_key, host_public) = keygen("host_key");
        let (laptop_key, laptop_public) = keygen("laptop_ssh_key");

        let authorized_keys = substitute(
            "contrib/ssh/authorized_keys",
            &read_contrib("ssh/authorized_keys"),
            &[
                ("/usr/local/bin/taptun", TAPTUN),
                ("@/etc/taptun/gw.key", &p.server_key),
                ("LAPTOP_PUBKEY", &pubkey(&p.client_key)),
                ("ssh-ed25519 LAPTOP_SSH_PUBLIC_KEY laptop", &laptop_public),
            ],
        );
        let authorized_keys = scratch_file(&p, "authorized_keys", &authorized_keys);
        // Without PAM, sshd refuses a locked account ("!" in /etc/shadow), which root is on some
        // installations; PAM's account check does not look at the password, so use it then.
        let sshd_config = scratch_file(
            &p,
            "sshd_config",
            &format!(
                "Port {port}\nListenAddress {addr}\nHostKey {host_key}\nPidFile none\n\
                 UsePAM {use_pam}\nStrictModes no\nAuthorizedKeysFile {authorized_keys}\n\
                 PermitRootLogin forced-commands-only\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nLogLevel VERBOSE\n",
                port = p.port,
                addr = p.server_addr(),
                host_key = host_key.display(),
                authorized_keys = authorized_keys.display(),
                use_pam = if root_is_locked() { "yes" } else { "no" },
            ),
        );
        let mut sshd = p.a.command("/usr/sbin/sshd");
        sshd.args(["-D", "-e", "-f"]).arg(&sshd_config);
        let mut sshd = Proc::start("sshd", sshd, &p.scratch);
        assert!(
            wait_for(DEADLINE, || !sshd.running() || p.a.listening(p.port)),
            "sshd did not listen"
        );
        assert!(sshd.running(), "sshd exited");

        // The client side: the shipped ssh_config with gw's real address, port and host key.
        let known_hosts = scratch_file(
            &p,
            "ssh_known_hosts",
            &format!("[{}]:{} {host_public}\n", p.server_addr(), p.port),
        );
        let ssh_config = substitute(
            "contrib/ssh/ssh_config",
            &read_contrib("ssh/ssh_config"),
            &[
                (
                    "HostName gw.example.org",
                    &format!("HostName {}", p.server_addr()),
                ),
                ("Port 22", &format!("Port {}", p.port)),
                (
                    "IdentityFile /etc/taptun/laptop_ssh_key",
                    &format!("IdentityFile {}", laptop_key.display()),
                ),
                (
                    "UserKnownHostsFile /etc/taptun/ssh_known_hosts",
                    &format!("UserKnownHostsFile {}", known_hosts.display()),
                ),
            ],
        );
        let ssh_config = scratch_file(&p, "ssh_config", &ssh_config);
        let mut cmd = p.b.taptun(&format!(
            "-c -v -d tt0 -l {} -k {}",
            p.client_key,
            pubkey(&p.server_key)
        ));
        cmd.arg("-x")
            .arg(format!("ssh -F {} gw", ssh_config.display()));
        let mut client = Proc::start("client (with ssh's stderr)", cmd, &p.scratch);

        p.a.wait_for_device("tap0");
        p.a.ip(&format!("addr add {}/24 dev tap0", p.tap_addr(1)));
        p.address_client_tap("tt0");
        p.assert_tap_ping();
        assert!(
            sshd.stderr().contains("Accepted publickey for root"),
            "sshd log: {}",
            sshd.stderr()
        );

        assert_eq!(client.terminate().code(), Some(0));
        assert!(
            wait_for(DEADLINE, || !p.a.device_up("tap0")),
            "the forced taptun -i did not end with the ssh session"
        );
    }
}

/// contrib/scripts: bridge-up/down and nat-up/down as taptun's --up and --down hooks.
mod scripts {
    use super::*;

    fn script(name: &str) -> String {
        contrib(&format!("scripts/{name}")).display().to_string()
    }

    /// The name of the master (bridge) of `dev` in `ns`, if any.
    fn master(ns: &Netns, dev: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["-n", &ns.name, "-o", "link", "show", "dev", dev])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "master")?;
        words.next().map(str::to_owned)
    }

    fn exists(ns: &Netns, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &ns.name, "link", "show", "dev", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn nft_tables(ns: &Netns) -> String {
        run(ns.command("nft").args(["list", "tables"]))
    }

    #[test]
    fn a_host_bridged_with_the_servers_tap_device_is_reachable_from_the_client() {
        if !common::require_root() {
            return;
        }
        let p = Pair::new();
        let c = lan_host(&p);
        lan_link(&p.a, &c);
        // c is on the tunnel's own subnet: the bridge makes it one Ethernet segment.
        let host_c = format!("10.214.{}.3", p.n);
        c.ip(&format!("addr add {host_c}/24 dev lan0"));

        let _server = server_with_hooks(&p, "bridge", &[("TAPTUN_BRIDGE_IF", "lan0")], "");
        let mut client = p.good_client("client", "tt0");
        p.address_client_tap("tt0");
        assert!(
            p.b.ping(&host_c),
            "ping from the client to {host_c} on the bridge"
        );
        assert!(c.ping(&p.tap_addr(2)), "ping from c to the client");
        assert_eq!(master(&p.a, "tt0").as_deref(), Some("br-taptun"));
        assert_eq!(master(&p.a, "lan0").as_deref(), Some("br-taptun"));

        // The session ends: bridge-down takes tt0 out and removes the bridge it made.
        assert_eq!(client.terminate().code(), Some(0));
        assert!(
            wait_for(DEADLINE, || !exists(&p.a, "br-taptun")),
            "bridge-down did not remove br-taptun"
        );
        assert_eq!(master(&p.a, "lan0"), None);
    }

    #[test]
    fn a_host_behind_the_servers_nat_is_reachable_from_the_client() {
        if !common::require_root() || !require_program("/usr/sbin/nft", "nftables") {
            return;
        }
        let p = Pair::new();
        let c = lan_host(&p);
        lan_link(&p.a, &c);
        // The LAN 10.216.N.0/24: c knows no route to the tunnel, so only NAT brings replies back.
        let (lan_a, lan_c) = (format!("10.216.{}.1", p.n), format!("10.216.{}.2", p.n));
        p.a.ip(&format!("addr add {lan_a}/24 dev lan0"));
        c.ip(&format!("addr add {lan_c}/24 dev lan0"));

        // A tunnel MTU below the LAN's, on the server's side: the SYN-ACK that c sends (MSS 1460)
        // leaves through tt0 and must be clamped to 1400 - 40.
        let _server = server_with_hooks(&p, "nat", &[("TAPTUN_NAT_IF", "lan0")], "-M 1400");
        let mut client = p.good_client("client", "tt0");
        p.address_tap();
        p.b.ip(&format!(
            "route add 10.216.{}.0/24 via {}",
            p.n,
            p.tap_addr(1)
        ));
        assert!(
            p.b.ping(&lan_c),
            "ping from the client to {lan_c} behind the NAT"
        );

        let listen_addr = format!("{lan_c}:{}", p.port);
        let listener = in_netns(&c, move || TcpListener::bind(listen_addr).unwrap());
        let connect_addr = format!("{lan_c}:{}", p.port);
        let stream = in_netns(&p.b, move || TcpStream::connect(connect_addr).unwrap());
        let seen_from = accept_within(&listener).peer_addr().unwrap();
        assert_eq!(
            seen_from.ip().to_string(),
            lan_a,
            "c must see the server's LAN address (masquerade)"
        );
        let mss = tcp_maxseg(&stream);
        assert!(
            mss <= 1360,
            "MSS {mss}: the SYN-ACK was not clamped to the tunnel's path MTU"
        );

        assert_eq!(client.terminate().code(), Some(0));
        assert!(
            wait_for(DEADLINE, || !nft_tables(&p.a).contains("taptun_nat_tt0")),
            "nat-down did not remove the nftables table: {}",
            nft_tables(&p.a)
        );
    }

    /// The MSS the connection's sender uses (TCP_MAXSEG): at most what the peer announced.
    fn tcp_maxseg(stream: &TcpStream) -> i32 {
        let mut mss: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: mss and len are valid for writes of the sizes given; the fd is open.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&raw mut mss).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_MAXSEG: {}", io::Error::last_os_error());
        mss
    }

    /// Runs SCRIPT in `ns` with exactly the environment `env` (plus PATH) and returns its exit
    /// code and stderr.
    fn run_script(ns: &Netns, name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let out = ns
            .command(&script(name))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn assert_succeeds(ns: &Netns, name: &str, env: &[(&str, &str)]) {
        let (code, stderr) = run_script(ns, name, env);
        assert_eq!(code, Some(0), "{name}: {stderr}");
    }

    fn assert_fails_saying(ns: &Netns, name: &str, env: &[(&str, &str)], says: &str) {
        let (code, stderr) = run_script(ns, name, env);
        assert_eq!(code, Some(1), "{name} with {env:?} must fail: {stderr}");
        assert!(
            stderr.starts_with(&format!("{name}: error: ")) && stderr.contains(says),
            "{name} with {env:?} must say {says:?}, said: {stderr}"
        );
    }

    #[test]
    fn scripts_are_idempotent_and_refuse_clearly() {
        if !common::require_root() || !require_program("/usr/sbin/nft", "nftables") {
            return;
        }
        let p = Pair::new();
        let ns = &p.a;
        ns.ip("tuntap add dev tap0 mode tap");
        ns.ip("link add lan0 type veth peer name lan1");
        let tap = [("TAPTUN_DEVICE", "tap0"), ("TAPTUN_TYPE", "tap")];
        let nat = [tap[0], tap[1], ("TAPTUN_NAT_IF", "lan0")];
        let bridge = [tap[0], tap[1], ("TAPTUN_BRIDGE_IF", "lan0")];

        for _ in 0..2 {
            assert_succeeds(ns, "nat-up", &nat);
        }
        let ruleset = run(ns
            .command("nft")
            .args(["list", "table", "inet", "taptun_nat_tap0"]));
        assert_eq!(ruleset.matches("masquerade").count(), 1, "{ruleset}");
        assert!(
            ruleset.contains("tcp option maxseg size set rt mtu"),
            "{ruleset}"
        );
        assert_eq!(
            run(ns.command("cat").arg("/proc/sys/net/ipv4/ip_forward")).trim(),
            "1"
        );
        for _ in 0..2 {
            assert_succeeds(ns, "nat-down", &nat);
        }
        assert!(!nft_tables(ns).contains("taptun_nat_tap0"));

        for _ in 0..2 {
            assert_succeeds(ns, "bridge-up", &bridge);
        }
        assert_eq!(master(ns, "tap0").as_deref(), Some("br-taptun"));
        assert_eq!(master(ns, "lan0").as_deref(), Some("br-taptun"));
        for _ in 0..2 {
            assert_succeeds(ns, "bridge-down", &bridge);
        }
        assert!(!exists(ns, "br-taptun") && master(ns, "tap0").is_none());

        // A bridge made by someone else survives bridge-down.
        ns.ip("link add br-taptun type bridge");
        assert_succeeds(ns, "bridge-up", &bridge);
        assert_succeeds(ns, "bridge-down", &bridge);
        assert!(exists(ns, "br-taptun") && master(ns, "tap0").is_none());
        ns.ip("link del br-taptun");

        // Refusals name the problem, and change nothing.
        assert_fails_saying(ns, "nat-up", &tap, "TAPTUN_NAT_IF is not set");
        assert_fails_saying(
            ns,
            "nat-up",
            &[tap[0], ("TAPTUN_NAT_IF", "nosuch0")],
            "no interface nosuch0",
        );
        assert_fails_saying(ns, "nat-down", &[], "TAPTUN_DEVICE is not set");
        assert_fails_saying(
            ns,
            "bridge-up",
            &[("TAPTUN_DEVICE", "tap0"), ("TAPTUN_TYPE", "tun")],
            "only a tap device",
        );
        ns.ip("addr add 10.217.0.1/24 dev lan0");
        assert_fails_saying(ns, "bridge-up", &bridge, "lan0 has IP addresses");
        assert!(!exists(ns, "br-taptun") && master(ns, "tap0").is_none());
    }
}

/// Every file in the directories of contrib/ that these tests own is used by one of them.
#[test]
fn every_recipe_file_in_contrib_is_exercised_here() {
    const EXERCISED: &[&str] = &[
        "inetd.conf",
        "xinetd.d/taptun",
        "systemd/taptun.socket",
        "systemd/taptun@.service",
        "systemd/taptun-server.socket",
        "systemd/taptun-server.service",
        "systemd/taptun-client@.service",
        "systemd/taptun-hub.service",
        "systemd/example.conf",
        "ssh/authorized_keys",
        "ssh/ssh_config",
        "scripts/bridge-up",
        "scripts/bridge-down",
        "scripts/nat-up",
        "scripts/nat-down",
    ];
    let mut found = vec!["inetd.conf".to_owned()];
    for dir in ["xinetd.d", "systemd", "ssh", "scripts"] {
        for entry in fs::read_dir(contrib(dir)).unwrap() {
            let name = entry.unwrap().file_name();
            found.push(format!("{dir}/{}", name.to_string_lossy()));
        }
    }
    for file in &found {
        assert!(
            EXERCISED.contains(&file.as_str()),
            "contrib/{file} is not exercised by tests/ecosystem.rs"
        );
    }
    assert_eq!(found.len(), EXERCISED.len(), "{found:?}");
}
