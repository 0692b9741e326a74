//! The binary as a user runs it: --help, usage errors and their exit
//! statuses, genkey and pubkey, the mistakes of a first hour (HOST:PORT in
//! -m, swapped or doubled secrets, -i started by hand); and that every
//! option is documented in --help, the man page and the README. The one
//! test that needs a server runs it in network namespaces (root only).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_taptun");
const PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

fn taptun(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taptun");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_modes_and_exit_statuses() {
    let out = taptun(&["--help"], "");
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "taptun -s",
        "taptun -c -m HOST",
        "taptun -c -x COMMAND",
        "taptun -i",
        "genkey",
        "pubkey",
        "Exit status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn every_option_is_documented_in_help_man_page_and_readme() {
    let help = text(&taptun(&["--help"], "").stdout);
    let root = env!("CARGO_MANIFEST_DIR");
    let man = std::fs::read_to_string(format!("{root}/man/taptun.8")).expect("man/taptun.8");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    for opt in taptun::OPTIONS {
        let (short, long) = (opt.flag(), format!("--{}", opt.long));
        assert!(
            help.contains(&short) && help.contains(&long),
            "--help lacks {short} {long}"
        );
        // roff escapes '-' as '\-'.
        let (man_short, man_long) = (short.replace('-', "\\-"), long.replace('-', "\\-"));
        assert!(man.contains(&man_short), "man page lacks {short}");
        assert!(man.contains(&man_long), "man page lacks {long}");
        assert!(
            readme.contains(&short) || readme.contains(&long),
            "README lacks {short}/{long}"
        );
    }
}

#[test]
fn version() {
    let out = taptun(&["-V"], "");
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("taptun "));
}

#[test]
fn usage_errors_exit_2_with_a_pointer_to_help() {
    for args in [
        &[][..],
        &["-s", "-c"][..],
        &["-c", "-l", "@/k", "-k", PUB][..],
        &["-s", "-p", "http", "-l", "@/k", "-k", PUB][..],
        &["-s", "-l", "@/k"][..],
        &["--bogus"][..],
    ] {
        let out = taptun(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("taptun --help"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn an_option_is_not_taken_as_the_value_of_the_one_before() {
    let out = taptun(&["-c", "-m", "-p", "1980", "-l", "@/k", "-k", PUB], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("-m: the value `-p` looks like an option"),
        "{err}"
    );
    assert!(err.contains("taptun --help"), "{err}");
}

#[test]
fn missing_secret_file_is_a_configuration_error_before_any_device() {
    let out = taptun(
        &[
            "-s",
            "-l",
            "@/nonexistent/taptun.key",
            "-k",
            PUB,
            "-d",
            "ttnodev0",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/taptun.key"));
}

#[test]
fn malformed_key_is_an_error_not_a_passphrase() {
    let bad = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=";
    let out = taptun(&["-s", "-l", bad, "-k", PUB], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("genkey"));
    let out = taptun(&["pubkey"], bad);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn genkey_then_pubkey() {
    let out = taptun(&["genkey"], "");
    assert!(out.status.success());
    let key = text(&out.stdout);
    assert_eq!(key.trim_end().len(), 44);
    assert!(key.ends_with("=\n"));
    let other = text(&taptun(&["genkey"], "").stdout);
    assert_ne!(key, other, "two keys from genkey are equal");
    let out = taptun(&["pubkey"], &key);
    assert!(out.status.success());
    let public = text(&out.stdout);
    assert_eq!(public.trim_end().len(), 44);
    assert_ne!(public, key);
}

#[test]
fn pubkey_of_a_passphrase_matches_the_vectors() {
    let out = taptun(&["pubkey"], "  correct horse battery staple \n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "g4/E+BRxYUDxG5VOpoLsnGlf8g0F03KePwiLEaR4Tzg=\n"
    );
}

#[test]
fn pubkey_of_a_key_matches_rfc7748() {
    let out = taptun(
        &["pubkey"],
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n",
    );
    assert_eq!(text(&out.stdout), format!("{PUB}\n"));
}

/// Runs `taptun ARGS` as inetd does, with fds 0, 1 and 2 all one end of a
/// socket pair, and returns its exit status and every byte it wrote to the
/// stream. As root, the child gets a private /dev whose `log` is a datagram
/// socket of the test's, and the syslog lines that reached it are returned
/// too (`None` when not root).
fn as_inetd_would(
    name: &str,
    args: &[&str],
    rust_log: Option<&str>,
) -> (Option<i32>, Vec<u8>, Option<Vec<String>>) {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::os::unix::process::CommandExt;

    let (client, server) = UnixStream::pair().unwrap();
    let end = || Stdio::from(OwnedFd::from(server.try_clone().unwrap()));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .env_remove("RUST_LOG")
        .envs(rust_log.map(|filter| ("RUST_LOG", filter)))
        .stdin(end())
        .stdout(end())
        .stderr(end());
    drop(server);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dev = TempDir::new(name);
    let syslog = root.then(|| {
        let socket = UnixDatagram::bind(dev.0.join("log")).unwrap();
        socket.set_nonblocking(true).unwrap();
        let dev = std::ffi::CString::new(dev.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: only raw syscalls between fork and exec, on strings made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let none = std::ptr::null::<libc::c_char>();
                let private = libc::MS_REC | libc::MS_PRIVATE;
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()) != 0
                    || libc::mount(
                        dev.as_ptr(),
                        c"/dev".as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        socket
    });
    let status = cmd.status().expect("run taptun");
    // The command holds copies of the stream's descriptors until dropped.
    drop(cmd);
    let mut written = Vec::new();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    (&client)
        .read_to_end(&mut written)
        .expect("EOF on the stream");
    let lines = syslog.map(|socket| {
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(len) = socket.recv(&mut buf) {
            lines.push(text(&buf[..len]));
        }
        lines
    });
    (status.code(), written, lines)
}

#[test]
fn usage_errors_under_inetd_go_to_syslog_never_to_the_stream() {
    for (n, (args, says, rust_log)) in [
        (&["-i", "-K", "300", "-l", "@/k", "-k", PUB][..], "-K", None),
        (&["--bogus", "-i"][..], "bogus", None),
        (&["-i", "-b", "::1", "-l", "@/k", "-k", PUB][..], "-b", None),
        // env_filter prints its own warning about a bad RUST_LOG to fd 2.
        (&["--bogus", "-i"][..], "bogus", Some("taptun=loud")),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, written, syslog) = as_inetd_would(&format!("inetd-dev{n}"), args, rust_log);
        assert_eq!(
            (status, text(&written).as_str()),
            (Some(2), ""),
            "{args:?}: exit status, and what reached the client"
        );
        if let Some(lines) = syslog {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("<27>taptun[") && l.contains(says)),
                "{args:?}: syslog got {lines:?}"
            );
            if rust_log.is_some() {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with("<28>taptun[")
                            && l.contains("RUST_LOG `taptun=loud`")),
                    "the bad RUST_LOG is reported as a warning in syslog: {lines:?}"
                );
            }
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("taptun-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn genkey_to_a_file_is_private_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("genkey");
    let path = dir.0.join("gw.key");
    let path_text = path.to_str().unwrap();
    let out = taptun(&["genkey", path_text], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    let public = text(&taptun(&["pubkey"], &key).stdout);
    assert_eq!(
        text(&out.stdout),
        public,
        "genkey PATH prints the public key"
    );
    let again = taptun(&["genkey", path_text], "");
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        key,
        "the key was overwritten"
    );
}

#[test]
fn check_validates_secrets_without_opening_anything() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("check");
    let key = dir.0.join("k");
    let key_text = key.to_str().unwrap();
    assert!(taptun(&["genkey", key_text], "").status.success());
    let secret = format!("@{key_text}");
    // A device name no test uses: --check must not create it.
    let args = [
        "-s",
        "-C",
        "-d",
        "ttcheck0",
        "-l",
        secret.as_str(),
        "-k",
        PUB,
    ];
    let out = taptun(&args, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!std::path::Path::new("/sys/class/net/ttcheck0").exists());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = taptun(&args, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = taptun(
        &[
            "-c",
            "-C",
            "-m",
            "gw",
            "-U",
            "no-such-user-here",
            "-l",
            secret.as_str(),
            "-k",
            PUB,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-U"), "{}", text(&out.stderr));
}

mod common;

/// A new `genkey` key file in `dir`, mode 600, and its public key.
fn key_file(dir: &TempDir, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.0.join(name);
    let out = taptun(&["genkey", path.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    (path, text(&out.stdout).trim_end().to_owned())
}

/// `[2026-12-05T08:00:00Z ERROR taptun] MESSAGE` -> MESSAGE, panicking on any other line.
fn logged_error(stderr: &[u8]) -> String {
    let line = text(stderr);
    let message = line
        .split_once(" ERROR taptun] ")
        .filter(|(time, _)| time.starts_with('['))
        .map(|(_, message)| message.trim_end().to_owned());
    message.unwrap_or_else(|| panic!("not one error log line: {line:?}"))
}

#[test]
fn check_refuses_host_and_port_in_one_m() {
    let dir = TempDir::new("hostport");
    let (key, _) = key_file(&dir, "k");
    let secret = format!("@{}", key.display());
    for (host, says) in [
        ("10.0.0.1:1980", "-m 10.0.0.1 -p 1980"),
        ("gw.example:1980", "-m gw.example -p 1980"),
        ("[2001:db8::1]:1980", "-m 2001:db8::1 -p 1980"),
    ] {
        let out = taptun(&["-c", "-C", "-m", host, "-l", &secret, "-k", PUB], "");
        assert_eq!(out.status.code(), Some(2), "{host}");
        assert_eq!(
            text(&out.stderr),
            format!(
                "taptun: error: -m: `{host}` looks like HOST:PORT: give the port with -p: \
                 {says} (see taptun --help)\n"
            )
        );
        assert!(out.stdout.is_empty());
    }
    // A bare IPv6 address has colons too, and is a host.
    let out = taptun(
        &["-c", "-C", "-m", "2001:db8::1", "-l", &secret, "-k", PUB],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn check_refuses_this_ends_private_key_as_the_peers_and_warns_of_one_key_pair_at_both_ends() {
    let dir = TempDir::new("ownkey");
    let (key, public) = key_file(&dir, "k");
    let secret = format!("@{}", key.display());
    let out = taptun(&["-s", "-C", "-l", &secret, "-k", &secret], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        logged_error(&out.stderr),
        "-k is this end's private key (that of -l), not the other end's public key: give \
         the other end's, as `taptun pubkey` prints it there"
    );
    assert!(out.stdout.is_empty());
    // One key pair at both ends ran before and still runs, with a warning.
    for (remote, says) in [
        (["-r", secret.as_str()], "-l and -r give the same secret"),
        (["-k", public.as_str()], "-k is this end's own public key"),
    ] {
        let out = taptun(&["-s", "-C", "-l", &secret, remote[0], remote[1]], "");
        assert!(out.status.success(), "{remote:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(says),
            "{remote:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_client_that_swapped_its_secrets_is_told_so() {
    if !common::require_root() {
        return;
    }
    let p = common::Pair::new();
    let _server = p.server("");
    // The server's own -l and -r: the client holds the server's key pair.
    let mut client = p.client_once("swapped client", &format!("-d tt0 {}", p.server_secrets()));
    assert!(
        common::wait_for(common::DEADLINE, || !client.running()),
        "the swapped client is still running"
    );
    assert_eq!(client.wait().code(), Some(3), "{}", client.stderr());
    let log = client.stderr();
    assert!(
        log.contains(
            "handshake failed: the server has this end's own key (the public key of our -l): \
             -l and -r look swapped at one of the two ends"
        ),
        "{log}"
    );
}

#[test]
fn a_directory_as_secret_file_is_named_a_directory() {
    let dir = TempDir::new("dirsecret");
    let path = dir.0.display().to_string();
    let out = taptun(&["-s", "-C", "-l", &format!("@{path}"), "-k", PUB], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        logged_error(&out.stderr),
        format!(
            "cannot read secret file {path}: it is a directory: give the path of the key file in it"
        )
    );
}

#[test]
fn genkey_on_an_existing_file_says_it_is_kept() {
    let dir = TempDir::new("genkey-exists");
    let (key, _) = key_file(&dir, "k");
    let before = std::fs::read(&key).unwrap();
    let out = taptun(&["genkey", key.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "taptun: error: {} exists already and is kept as it is (genkey never overwrites a \
             file): give a path that does not exist yet\n",
            key.display()
        )
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn only_command_line_errors_point_to_help() {
    use std::os::unix::fs::PermissionsExt;
    let out = taptun(&["--peerkey", PUB], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "taptun: error: unknown option `--peerkey`: did you mean --peer-key? (see taptun --help)\n"
    );
    // A key file others may read: found once logging is up, and --help has nothing on it.
    let dir = TempDir::new("nohint");
    let (key, _) = key_file(&dir, "k");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = format!("@{}", key.display());
    let out = taptun(&["-s", "-C", "-l", &secret, "-k", PUB], "");
    assert_eq!(out.status.code(), Some(2));
    let message = logged_error(&out.stderr);
    assert!(
        message.ends_with(&format!(
            "(mode 644); fix it with: chmod 600 {}",
            key.display()
        )),
        "{message}"
    );
    // The same file for pubkey, which logs nothing.
    let out = taptun(&["pubkey", key.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("taptun: error: cannot read secret file "),
        "{err}"
    );
    assert!(!err.contains("--help"), "{err}");
}

#[test]
fn peer_key_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("kfile");
    let (key, _) = key_file(&dir, "k");
    let secret = format!("@{}", key.display());
    let public = dir.0.join("peer.pub");
    std::fs::write(&public, format!("{PUB}\n")).unwrap();
    // A public key is no secret: any mode will do.
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
    let at_public = format!("@{}", public.display());
    let out = taptun(&["-s", "-C", "-l", &secret, "-k", &at_public], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A secret file by mistake: refused, and its text stays out of the log.
    std::fs::write(&public, "hunter2 hunter2\n").unwrap();
    let out = taptun(&["-s", "-C", "-l", &secret, "-k", &at_public], "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        logged_error(&out.stderr),
        format!(
            "-k ({}): its first line is not a public key (44 base64 characters from `taptun \
             pubkey`)",
            public.display()
        )
    );
    let missing = format!("@{}", dir.0.join("missing.pub").display());
    let out = taptun(&["-s", "-C", "-l", &secret, "-k", &missing], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        logged_error(&out.stderr).starts_with("-k: cannot read public key file "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn pubkey_reads_a_file_as_well_as_stdin() {
    let dir = TempDir::new("pubkey-file");
    let (key, public) = key_file(&dir, "k");
    let out = taptun(&["pubkey", key.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{public}\n"));
    let stdin = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        text(&taptun(&["pubkey"], &stdin).stdout),
        format!("{public}\n")
    );
}

#[test]
fn help_shows_the_arguments_of_genkey_and_pubkey() {
    let help = text(&taptun(&["--help"], "").stdout);
    assert!(help.contains("taptun genkey [PATH]\n"), "{help}");
    assert!(help.contains("taptun pubkey [FILE]"), "{help}");
}

/// A new pseudo-terminal: (controller, terminal).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two integers; the name and the
    // settings may be null.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(controller),
            std::fs::File::from_raw_fd(terminal),
        )
    }
}

/// What `taptun ARGS` wrote to a terminal on its stdout (and stderr), and its exit status.
fn on_a_terminal(args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let (mut controller, terminal) = pty();
    let status = Command::new(BIN)
        .args(args)
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .env_remove("RUST_LOG")
        .stdin(terminal.try_clone().unwrap())
        .stdout(terminal.try_clone().unwrap())
        .stderr(terminal)
        .status()
        .unwrap();
    // Everything written is queued; once no terminal end is open, reads end with EIO.
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = controller.read(&mut buf) {
        shown.extend_from_slice(&buf[..n]);
    }
    (status.code(), text(&shown).replace("\r\n", "\n"))
}

#[test]
fn genkey_labels_the_public_key_on_a_terminal_only() {
    let dir = TempDir::new("genkey-label");
    let path = dir.0.join("k");
    let (status, shown) = on_a_terminal(&["genkey", path.to_str().unwrap()]);
    assert_eq!(status, Some(0), "{shown}");
    let key = std::fs::read_to_string(&path).unwrap();
    let public = text(&taptun(&["pubkey"], &key).stdout);
    assert_eq!(shown, format!("public key: {public}"));
    // Not a terminal: the bare key, for scripts.
    let (_, public) = key_file(&dir, "k2");
    assert_eq!(public.len(), 44, "{public}");
}

#[test]
fn inetd_mode_refuses_an_fd_0_that_is_no_connection() {
    let dir = TempDir::new("inetd-fd0");
    let (key, _) = key_file(&dir, "k");
    let secret = format!("@{}", key.display());
    let args = ["-i", "-d", "ttnoconn0", "-l", &secret, "-k", PUB];
    let says = |what: &str| {
        format!(
            "-i: fd 0 is not a connection (it is {what}): -i is for inetd, xinetd, systemd or \
             ssh to start, with the connection as fds 0 and 1; to run a server, use -s"
        )
    };
    let (status, shown) = on_a_terminal(&args);
    assert_eq!(status, Some(2), "{shown}");
    // The log is in colour on a terminal.
    assert!(
        shown.contains("ERROR") && shown.ends_with(&format!("{}\n", says("a terminal"))),
        "{shown:?}"
    );
    for (stdin, what) in [
        (
            std::fs::File::open("/dev/null").unwrap(),
            "a character device such as /dev/null",
        ),
        (std::fs::File::open(&key).unwrap(), "a file"),
    ] {
        let out = Command::new(BIN).args(args).stdin(stdin).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert_eq!(logged_error(&out.stderr), says(what));
        assert!(out.stdout.is_empty());
    }
    assert!(!std::path::Path::new("/sys/class/net/ttnoconn0").exists());
}
