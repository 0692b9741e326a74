//! The binary as a user runs it: --help, usage errors and their exit
//! statuses, genkey and pubkey; and that every option is documented in
//! --help, the man page and the README.

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
    for opt in taptun::config::OPTIONS {
        let (short, long) = (format!("-{}", opt.short), format!("--{}", opt.long));
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
fn as_inetd_would(name: &str, args: &[&str]) -> (Option<i32>, Vec<u8>, Option<Vec<String>>) {
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
    for (n, (args, says)) in [
        (&["-i", "-K", "300", "-l", "@/k", "-k", PUB][..], "-K"),
        (&["--bogus", "-i"][..], "bogus"),
        (&["-i", "-b", "::1", "-l", "@/k", "-k", PUB][..], "-b"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, written, syslog) = as_inetd_would(&format!("inetd-dev{n}"), args);
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
