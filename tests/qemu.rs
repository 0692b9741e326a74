//! A real QEMU guest on a `qemu:` endpoint: Debian's qemu-system-x86 (TCG, no KVM) boots Debian's
//! kernel with a busybox initramfs (contrib/qemu-guest.sh, cached under target/ per kernel
//! version) whose virtio-net card is a `-netdev stream` to `taptun -d qemu:SOCK -s`, run as a
//! throwaway unprivileged user with QEMU running as that user too. The far end is `taptun -c` on a
//! TAP device in a namespace. The guest pings the TAP's address, the far end pings the guest; the
//! guest powers off and a second boot connects to the same socket and pings again, on the same
//! tunnel session. The whole test has 120 s.

mod common;

use common::{Pair, Proc, Scratch, TAPTUN, log_count, require_root, run, wait_for, wait_log};
use std::fs::{self, DirBuilder};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The bound for the whole test: two boots under TCG and the tunnel around them.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// "session with PEER established on DEV ..."
const ESTABLISHED: &[&str] = &["session with", " established"];

/// True when QEMU is installed; otherwise skips (prints why), or fails under
/// TAPTUN_REQUIRE_NETNS=1, where CI has installed it.
fn require_qemu() -> bool {
    if Path::new(QEMU).exists() {
        return true;
    }
    assert!(
        std::env::var("TAPTUN_REQUIRE_NETNS").as_deref() != Ok("1"),
        "TAPTUN_REQUIRE_NETNS=1 but {QEMU} is missing: apt-get install qemu-system-x86"
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipped: needs {QEMU} (apt-get install qemu-system-x86)"
    );
    false
}

/// The guest's folder (vmlinuz, initrd.gz), built by contrib/qemu-guest.sh on the first run.
fn guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/qemu-guest.sh");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-guest");
    PathBuf::from(run(Command::new("bash").arg(script).arg(cache)).trim())
}

/// A throwaway system user with a private folder (mode 700) for its key files, the socket, the
/// binary and the guest, all removed when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl User {
    fn new(p: &Pair) -> User {
        let name = format!("ttqm{}x{}", std::process::id() % 100_000, p.n);
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]));
        let id = |flag: &str| -> u32 {
            run(Command::new("id").arg(flag).arg(&name))
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let home = std::env::temp_dir().join(format!("taptun-qemu-{name}"));
        let user = User {
            name,
            uid,
            gid,
            home,
        };
        let _ = fs::remove_dir_all(&user.home);
        DirBuilder::new().mode(0o700).create(&user.home).unwrap();
        std::os::unix::fs::chown(&user.home, Some(uid), Some(gid)).unwrap();
        user
    }

    /// Copies `from` into the user's folder as `name`, owned by the user with `mode`.
    fn give(&self, from: &Path, name: &str, mode: u32) -> PathBuf {
        let to = self.home.join(name);
        fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        std::os::unix::fs::chown(&to, Some(self.uid), Some(self.gid)).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
        to
    }

    /// Copies the key file of a SECRET "@PATH" and returns the SECRET of the copy.
    fn give_key(&self, secret: &str, name: &str) -> String {
        let path = secret
            .strip_prefix('@')
            .expect("a secret of the form @PATH");
        format!("@{}", self.give(Path::new(path), name, 0o600).display())
    }

    /// `setpriv` running `program ARGS` as this user, with no supplementary group.
    fn command(&self, ns: &common::Netns, program: &Path) -> Command {
        let mut cmd = ns.command("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program)
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE");
        cmd
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.home);
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// What a boot needs besides the user: the guest's files, the endpoint's socket, the guest's
/// address and the address it pings.
struct Boot<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    socket: &'a Path,
    addr: &'a str,
    peer: &'a str,
}

/// A QEMU guest: the process, its serial console's lines as they come, and its console input.
struct Vm {
    proc: Proc,
    console: Receiver<String>,
    input: ChildStdin,
    /// Every console line so far, for the failure message.
    seen: Vec<String>,
    started: Instant,
}

impl Vm {
    /// Boots the guest as `user` with a virtio-net card on `-netdev stream` to `socket`; its init
    /// gives eth0 `addr` and pings `peer` three times.
    fn boot(user: &User, p: &Pair, boot: &Boot, log: &Scratch, name: &str) -> Vm {
        let Boot {
            kernel,
            initrd,
            socket,
            addr,
            peer,
        } = boot;
        let mut cmd = user.command(&p.a, Path::new(QEMU));
        cmd.args(["-accel", "tcg", "-m", "256", "-nodefaults", "-no-reboot"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 taptun.addr={addr}/24 taptun.ping={peer} taptun.count=3"
            ))
            .arg("-netdev")
            .arg(format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                socket.display()
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(log.path.join(format!("{name}.log"))).unwrap());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let input = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, console) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end().to_owned()).is_err() {
                    break;
                }
            }
        });
        let proc = Proc::adopt(name, child, Some(log.path.join(format!("{name}.log"))));
        Vm {
            proc,
            console,
            input,
            seen: Vec::new(),
            started,
        }
    }

    /// Waits until the console prints a line containing `needle`, before `until`; returns the
    /// line and the time since boot. Panics with the console so far otherwise.
    fn expect(&mut self, needle: &str, until: Instant) -> (String, Duration) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.console.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return (line, self.started.elapsed());
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no {needle:?} on the guest's console within the test's {TEST_LIMIT:?}; \
                     it printed:\n{}\nQEMU's stderr: {}",
                    self.seen.join("\n"),
                    self.proc.stderr()
                ),
            }
        }
    }

    /// Asks the guest to power off (a line on its console) and waits until QEMU has exited.
    fn power_off(&mut self, until: Instant) {
        self.input.write_all(b"\n").unwrap();
        self.expect("reboot: Power down", until);
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            wait_for(left, || !self.proc.running()),
            "QEMU did not exit after the guest powered off"
        );
    }
}

#[test]
fn a_qemu_guest_on_a_qemu_endpoint_pings_a_tap_across_the_tunnel_and_again_after_a_reboot() {
    if !require_root() || !require_qemu() {
        return;
    }
    let building = Instant::now();
    let guest = guest();
    let built = building.elapsed();
    // The limit is the VMs' and the tunnel's; the guest is built once per kernel version.
    let start = Instant::now();
    let until = start + TEST_LIMIT;
    let p = Pair::new();
    let user = User::new(&p);
    let bin = user.give(Path::new(TAPTUN), "taptun", 0o755);
    let kernel = user.give(&guest.join("vmlinuz"), "vmlinuz", 0o644);
    let initrd = user.give(&guest.join("initrd.gz"), "initrd.gz", 0o644);
    let secrets = format!(
        "-l {} -r {}",
        user.give_key(&p.server_key, "server.key"),
        user.give_key(&p.client_key, "client.key")
    );
    let socket = user.home.join("vm.sock");

    let mut cmd = user.command(&p.a, &bin);
    cmd.args(format!("-s -p {} -v {secrets} -d", p.port).split_whitespace())
        .arg(format!("qemu:{}", socket.display()));
    let mut server = Proc::start("server", cmd, &p.scratch);
    assert!(
        wait_for(common::DEADLINE, || !server.running()
            || (p.a.listening(p.port) && socket.exists())),
        "taptun -s -d qemu: did not listen on its socket and port"
    );
    assert!(server.running(), "taptun -s -d qemu: exited");
    let client = p.good_client("client", "tt0");
    assert!(
        wait_log(&client, ESTABLISHED, 1, common::DEADLINE),
        "no session"
    );
    p.address_client_tap("tt0");
    let (guest_addr, tap_addr) = (p.tap_addr(3), p.tap_addr(2));
    let how = Boot {
        kernel: &kernel,
        initrd: &initrd,
        socket: &socket,
        addr: &guest_addr,
        peer: &tap_addr,
    };

    let mut boots = Vec::new();
    for boot in 1..=2 {
        let mut vm = Vm::boot(&user, &p, &how, &p.scratch, &format!("qemu{boot}"));
        let (_, up) = vm.expect("TAPTUN-GUEST: UP", until);
        let (line, pinged) = vm.expect("TAPTUN-GUEST: PING", until);
        assert!(
            line.contains("PING OK"),
            "boot {boot}: the guest could not ping {tap_addr}: {line}\n{}",
            vm.seen.join("\n")
        );
        assert!(
            p.b.ping(&guest_addr),
            "boot {boot}: the far end could not ping the guest at {guest_addr}"
        );
        vm.power_off(until);
        boots.push((up, pinged));
    }

    assert_eq!(
        log_count(&client, ESTABLISHED),
        1,
        "the tunnel session did not outlive the VM"
    );
    assert!(server.running(), "taptun -s -d qemu: exited");
    server.terminate();
    assert!(!socket.exists(), "taptun left its socket behind at exit");
    let _ = writeln!(
        std::io::stderr(),
        "guest ready in {built:.1?}; boots: eth0 up, then 3 pings answered, after {boots:.1?}; \
         the test after the guest was ready {:.1?}",
        start.elapsed()
    );
    assert!(start.elapsed() < TEST_LIMIT);
}
