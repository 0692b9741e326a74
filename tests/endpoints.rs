//! Local endpoints without a TAP device (`-d qemu:PATH`, `-d qemu-connect:PATH`, `-d vde:COMMAND`)
//! against programs nobody here wrote: passt as the far side of a `qemu-connect:` endpoint (its
//! DHCP server through the tunnel, a TCP service in its namespace, a restart), two VDE switches
//! joined with `vde:vde_plug` at both ends, and on a `qemu:` socket a client that speaks QEMU's
//! framing as a VM does, well (ARP through to a TAP device, a VM that restarts) and badly (lengths
//! 0 and 2^32-1, a trickle, a second client).
//!
//! Every taptun with such an endpoint runs as a throwaway unprivileged user with no capability:
//! it opens no /dev/net/tun. The far end is a TAP device (run as root) or another endpoint.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A throwaway system user, with a directory of its own (mode 700, under a root-owned 755 one
/// that holds a copy of the binary): what it runs cannot open a TAP device. Removed when
/// dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    /// Root's, mode 755: the binary's copy and `home`.
    dir: PathBuf,
    /// The user's own, mode 700: keys, sockets.
    home: PathBuf,
    bin: PathBuf,
}

impl User {
    fn new(tag: u32) -> User {
        let name = format!("ttep{}x{tag}", std::process::id() % 100_000);
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]));
        let id = |flag: &str| -> u32 {
            run(Command::new("id").args([flag, &name]))
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let dir = std::env::temp_dir().join(format!("taptun-endpoints-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.join("home");
        fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        let bin = dir.join("taptun");
        fs::copy(TAPTUN, &bin).unwrap();
        // A child another test forked while the copy was open for writing holds that descriptor
        // until it execs: running the copy fails with ETXTBSY until then.
        let runs = || {
            !matches!(
                Command::new(&bin).arg("--version").output(),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY)
            )
        };
        assert!(wait_for(DEADLINE, runs), "{} stays busy", bin.display());
        User {
            name,
            uid,
            gid,
            dir,
            home,
            bin,
        }
    }

    /// A copy of the secret file "@PATH" that the user owns (mode 600), as "@PATH".
    fn secret(&self, secret: &str) -> String {
        let from = Path::new(secret.strip_prefix('@').unwrap());
        let to = self.home.join(from.file_name().unwrap());
        fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(self.uid), Some(self.gid)).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
        format!("@{}", to.display())
    }

    /// `program ARGS` as this user (no supplementary group, no capability) inside `ns`.
    fn command(&self, ns: &Netns, program: &Path) -> Command {
        let mut cmd = ns.command("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--inh-caps=-all", "--"])
            .arg(program)
            .env("HOME", &self.home)
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE");
        cmd
    }

    /// `taptun ARGS` as this user inside `ns`, the arguments split at whitespace.
    fn taptun(&self, ns: &Netns, args: &str) -> Command {
        let mut cmd = self.command(ns, &self.bin);
        cmd.args(args.split_whitespace());
        cmd
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // Whatever still runs as the user (a failed test's passt) goes first.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts `cmd` with its stderr in NAME.log, as `Proc::start`, and returns its pid too.
fn start(name: &str, mut cmd: Command, scratch: &Scratch) -> (Proc, u32) {
    let log = scratch.path.join(format!("{name}.log"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    (Proc::adopt(name, child, Some(log)), pid)
}

/// How many lines of `proc`'s log contain `text`.
fn count_lines(proc: &Proc, text: &str) -> usize {
    proc.stderr().lines().filter(|l| l.contains(text)).count()
}

fn wait_for_line(proc: &mut Proc, text: &str) {
    assert!(
        wait_for(DEADLINE, || count_lines(proc, text) > 0 || !proc.running()),
        "no `{text}` in the log within {DEADLINE:?}"
    );
    assert!(proc.running(), "exited before logging `{text}`");
}

const ESTABLISHED: &str = "established on";

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn ipv4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// An ARP request from `mac`/`from` asking who has `to`, padded to Ethernet's minimum.
fn arp_request(mac: [u8; 6], from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(mac);
    f.extend(from);
    f.extend([0; 6]);
    f.extend(to);
    f.resize(60, 0);
    f
}

/// Whether `frame` is an ARP reply from `ip`.
fn is_arp_reply_from(frame: &[u8], ip: [u8; 4]) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == ip
}

/// What a VM does on a `qemu:` socket: frames behind u32 big-endian lengths.
struct Vm {
    stream: UnixStream,
}

const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl Vm {
    /// Connects to `path` once it is there.
    fn connect(path: &Path) -> Vm {
        let mut stream = None;
        wait_for(DEADLINE, || {
            stream = UnixStream::connect(path).ok();
            stream.is_some()
        });
        let stream = stream.unwrap_or_else(|| panic!("nothing listens on {}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Vm { stream }
    }

    fn send(&mut self, frame: &[u8]) {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next frame; `None` on a timeout, panics at the end of the stream.
    fn recv(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("the qemu: socket: {e}"),
        }
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        self.stream.read_exact(&mut frame).unwrap();
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Some(frame)
    }

    /// Asks who has `to` (as `from`) until the answer comes; whether it did within DEADLINE.
    fn arp(&mut self, from: [u8; 4], to: [u8; 4]) -> bool {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            self.send(&arp_request(VM_MAC, from, to));
            let round = Instant::now();
            while round.elapsed() < Duration::from_secs(1) {
                if let Some(frame) = self.recv() {
                    if is_arp_reply_from(&frame, to) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Whether taptun closed the stream within DEADLINE (a read sees its end or a reset).
    fn closed_by_taptun(&mut self) -> bool {
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A tunnel between a TAP device `tt0` (10.214.N.1, root, namespace `a`) and a `qemu:` socket
/// (an unprivileged taptun in `b`).
struct QemuTunnel {
    p: Pair,
    user: User,
    server: Proc,
    client: Proc,
    client_pid: u32,
    socket: PathBuf,
}

impl QemuTunnel {
    fn new() -> QemuTunnel {
        let p = Pair::new();
        let user = User::new(p.n);
        let mut server = p.server("");
        p.a.wait_for_device("tt0");
        p.a.ip(&format!("addr add {}/24 dev tt0", p.tap_addr(1)));
        let socket = user.home.join("vm.sock");
        let args = format!(
            "-c -m {} -p {} -v -d qemu:{} -l {} -r {}",
            p.server_addr(),
            p.port,
            socket.display(),
            user.secret(&p.client_key),
            user.secret(&p.server_key)
        );
        let mut cmd = user.taptun(&p.b, &args);
        let hook = user.home.join("hook");
        cmd.args([
            "-u",
            &format!("echo \"$TAPTUN_DEVICE\" > {}", hook.display()),
        ]);
        let (mut client, client_pid) = start("client", cmd, &p.scratch);
        wait_for_line(&mut server, ESTABLISHED);
        wait_for_line(&mut client, ESTABLISHED);
        QemuTunnel {
            p,
            user,
            server,
            client,
            client_pid,
            socket,
        }
    }

    fn vm_arp(&self, vm: &mut Vm) -> bool {
        vm.arp(ipv4(&self.p.tap_addr(2)), ipv4(&self.p.tap_addr(1)))
    }

    /// One session all along, on both ends.
    fn assert_one_session(&mut self) {
        assert!(self.client.running(), "the client exited");
        assert!(self.server.running(), "the server exited");
        assert_eq!(
            count_lines(&self.server, ESTABLISHED),
            1,
            "sessions on the server"
        );
        assert_eq!(
            count_lines(&self.client, ESTABLISHED),
            1,
            "sessions on the client"
        );
    }
}

#[test]
fn a_vm_on_a_qemu_socket_reaches_a_tap_device_as_an_ordinary_user_and_again_after_a_restart() {
    if !require_root() {
        return;
    }
    let mut t = QemuTunnel::new();
    // The up hook's TAPTUN_DEVICE names the endpoint.
    let hook = t.user.home.join("hook");
    assert!(
        wait_for(DEADLINE, || hook.exists()),
        "the up hook did not run"
    );
    assert_eq!(
        fs::read_to_string(&hook).unwrap().trim(),
        format!("qemu:{}", t.socket.display())
    );
    let meta = fs::symlink_metadata(&t.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "the socket's mode");
    assert_eq!(meta.uid(), t.user.uid, "the socket's owner");
    // The VM starts, stops, and starts again on the same socket: one session all along.
    for boot in 0..2 {
        let mut vm = Vm::connect(&t.socket);
        assert!(
            t.vm_arp(&mut vm),
            "boot {boot}: no ARP answer from the tap device"
        );
        drop(vm);
        wait_for_line(&mut t.client, "local stream down");
    }
    // The TAP end sees the VM's MAC address.
    let neigh = t.p.a.ip(&format!("neigh show {}", t.p.tap_addr(2)));
    assert!(
        neigh.contains("52:54:00:12:34:56"),
        "a's neighbours: {neigh}"
    );
    // With no VM there, frames from the tunnel are dropped and counted; SIGUSR1 tells.
    let _ =
        t.p.a
            .command("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", &t.p.tap_addr(2)])
            .output();
    t.client.signal(libc::SIGUSR1);
    let counted = wait_for(DEADLINE, || {
        t.client.stderr().lines().any(|l| {
            l.contains(&format!("qemu:{}: ", t.socket.display()))
                && l.contains("with no local stream")
                && !l.contains(" 0 with no local stream")
                && !l.contains("local stream down")
        })
    });
    assert!(
        counted,
        "SIGUSR1 did not count the frames dropped with no VM"
    );
    t.assert_one_session();
    assert!(t.client.terminate().success());
    assert!(!t.socket.exists(), "the socket is still there after exit");
}

#[test]
fn a_hostile_client_on_the_qemu_socket_ends_only_its_own_stream() {
    if !require_root() {
        return;
    }
    let mut t = QemuTunnel::new();
    let before = rss_kib(t.client_pid);

    // Empty frames are skipped; the frame after them gets through.
    let mut vm = Vm::connect(&t.socket);
    vm.stream.write_all(&[0u8; 4 * 5]).unwrap();
    assert!(t.vm_arp(&mut vm), "no ARP answer after empty frames");

    // A second client while one is connected is closed at once.
    let mut second = Vm::connect(&t.socket);
    assert!(second.closed_by_taptun(), "a second client was not refused");
    wait_for_line(&mut t.client, "refused a second client");
    assert!(
        t.vm_arp(&mut vm),
        "the first client lost its stream to the second"
    );

    // Frames too large to carry (up to QEMU's own 69,632) are skipped and the stream stays in
    // sync; 20 MB of them cost no memory.
    let huge = 65536 + 4096;
    let mut junk = (huge as u32).to_be_bytes().to_vec();
    junk.resize(4 + huge, 0xa5);
    for _ in 0..300 {
        vm.stream.write_all(&junk).unwrap();
    }
    assert!(t.vm_arp(&mut vm), "no ARP answer after oversize frames");

    // A length no frame can have (2^32-1) ends that stream, not the tunnel, and is not
    // allocated: what follows is not read in.
    vm.stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let _ = vm.stream.write_all(&[0x5a; 1 << 20]);
    assert!(
        vm.closed_by_taptun(),
        "a length of 2^32-1 did not end the stream"
    );
    wait_for_line(&mut t.client, "malformed length 4294967295");
    drop(vm);

    // A client that sends its frame a byte at a time is served.
    let mut slow = Vm::connect(&t.socket);
    let request = arp_request(VM_MAC, ipv4(&t.p.tap_addr(2)), ipv4(&t.p.tap_addr(1)));
    let mut bytes = (request.len() as u32).to_be_bytes().to_vec();
    bytes.extend(&request);
    for b in bytes {
        slow.stream.write_all(&[b]).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let mut answered = false;
    while !answered && start.elapsed() < DEADLINE {
        answered = slow
            .recv()
            .is_some_and(|f| is_arp_reply_from(&f, ipv4(&t.p.tap_addr(1))));
    }
    assert!(answered, "no ARP answer to a trickled frame");

    let after = rss_kib(t.client_pid);
    eprintln!("client RSS: {before} KiB before, {after} KiB after");
    assert!(
        after < before + 16 * 1024,
        "the client's memory grew from {before} to {after} KiB"
    );
    t.assert_one_session();
}

#[test]
fn the_qemu_socket_replaces_only_a_dead_socket_and_wants_a_safe_directory() {
    if !require_root() {
        return;
    }
    let user = User::new(9000 + std::process::id() % 1000);
    let scratch = Scratch::new();
    let secret = user.secret(&scratch.genkey("k"));
    let ns = Netns::new(9000, 'q');
    let check = |path: &Path| -> (bool, String) {
        let args = format!(
            "-s -p 2000 -l {secret} -r {secret} -d qemu:{} -v",
            path.display()
        );
        let mut cmd = user.taptun(&ns, &args);
        let mut proc = {
            let log = scratch.path.join("listen.log");
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap());
            Proc::adopt("listen", cmd.spawn().unwrap(), Some(log))
        };
        let up = wait_for(DEADLINE, || {
            !proc.running() || proc.stderr().contains("listening on")
        });
        let running = up && proc.running();
        (running, proc.stderr())
    };
    // A socket nobody answers on is replaced.
    let dead = user.home.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    std::os::unix::fs::chown(&dead, Some(user.uid), Some(user.gid)).unwrap();
    let (running, log) = check(&dead);
    assert!(running, "a dead socket was not replaced: {log}");
    // A live one is not.
    let live = user.home.join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    std::os::unix::fs::chown(&live, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&live, fs::Permissions::from_mode(0o600)).unwrap();
    let (running, log) = check(&live);
    assert!(!running && log.contains("another process listens"), "{log}");
    // Nor a file that is not a socket.
    let file = user.home.join("file");
    fs::write(&file, "x").unwrap();
    let (running, log) = check(&file);
    assert!(!running && log.contains("is not a socket"), "{log}");
    // A directory anyone may write to needs the sticky bit.
    let open = user.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let (running, log) = check(&open.join("vm.sock"));
    assert!(!running && log.contains("without the sticky bit"), "{log}");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let (running, log) = check(&open.join("vm.sock"));
    assert!(running, "a sticky directory was refused: {log}");
}

/// A namespace for passt with an address and a default route it can copy (a veth pair inside it:
/// nothing leaves it), and a TCP echo service on its loopback.
fn passt_namespace(n: u32) -> Netns {
    let ns = Netns::new(n, 'p');
    ns.ip("link add v0 type veth peer name v1");
    ns.ip("addr add 192.168.77.1/24 dev v0");
    ns.ip("link set v0 up");
    ns.ip("link set v1 up");
    ns.ip("route add default via 192.168.77.254");
    ns
}

fn start_passt(user: &User, ns: &Netns, socket: &Path, scratch: &Scratch, round: u32) -> Proc {
    let mut cmd = user.command(ns, Path::new("/usr/bin/passt"));
    cmd.args(["--mtu", "1500", "-f", "-e", "-4", "-s"])
        .arg(socket);
    let (mut passt, _) = start(&format!("passt{round}"), cmd, scratch);
    assert!(
        wait_for(DEADLINE, || !passt.running() || socket.exists()),
        "passt did not make its socket"
    );
    assert!(passt.running(), "passt exited");
    passt
}

/// DHCP on `dev` in `ns` with busybox's udhcpc; the lease's "IP SUBNET ROUTER MTU".
fn dhcp(ns: &Netns, dev: &str, scratch: &Scratch) -> Vec<String> {
    let out = scratch.path.join("lease");
    let script = scratch.path.join("udhcpc.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $subnet $router $mtu\" > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    let status = ns
        .command("busybox")
        .args([
            "udhcpc", "-f", "-q", "-n", "-t", "8", "-T", "1", "-i", dev, "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("busybox udhcpc (install busybox-static)");
    assert!(status.success(), "udhcpc got no lease through the tunnel");
    let lease = fs::read_to_string(&out).unwrap();
    lease.split_whitespace().map(str::to_owned).collect()
}

/// Connects from `ns` to `addr`, sends `len` bytes and checks they come back.
fn echo_through(ns: &Netns, addr: String, len: usize, seed: u64) -> bool {
    in_netns(ns, move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr.parse().unwrap(), DEADLINE) else {
            return false;
        };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        let sent = pseudo_random_bytes(len, seed);
        let mut got = vec![0u8; len];
        stream.write_all(&(len as u64).to_be_bytes()).is_ok()
            && stream.write_all(&sent).is_ok()
            && stream.read_exact(&mut got).is_ok()
            && got == sent
    })
}

/// A service on 127.0.0.1:`port` in `ns` that reads a u64 big-endian length and that many
/// bytes, then sends them back, for every connection until the test ends. One direction at a
/// time and no half-close: Debian 12's passt (0.0~git20230309) stalls a TCP connection that
/// carries a megabyte both ways at once, or back after the guest's FIN, through its own pasta
/// and a TAP device as well.
fn echo_service(ns: &Netns, port: u16) {
    let listener = in_netns(ns, move || TcpListener::bind(("127.0.0.1", port)).unwrap());
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut len = [0u8; 8];
                if stream.read_exact(&mut len).is_err() {
                    return;
                }
                let mut got = vec![0u8; u64::from_be_bytes(len).min(64 << 20) as usize];
                if stream.read_exact(&mut got).is_ok() {
                    let _ = stream.write_all(&got);
                }
            });
        }
    });
}

#[test]
fn passt_through_the_tunnel_gives_a_tap_device_dhcp_and_tcp_and_survives_its_restart() {
    if !require_root() {
        return;
    }
    if !Path::new("/usr/bin/passt").exists() {
        panic!("passt is missing: apt-get install passt");
    }
    let p = Pair::new();
    let user = User::new(p.n);
    let pns = passt_namespace(p.n);
    let port = 30000 + p.n as u16;
    echo_service(&pns, port);
    let socket = user.home.join("passt.sock");
    let passt = start_passt(&user, &pns, &socket, &p.scratch, 0);
    // taptun next to passt, unprivileged, serves; the far end is a TAP device.
    let args = format!(
        "-s -p {} -v -d qemu-connect:{} -l {} -r {}",
        p.port,
        socket.display(),
        user.secret(&p.server_key),
        user.secret(&p.client_key)
    );
    let (mut server, _) = start("server", user.taptun(&p.a, &args), &p.scratch);
    assert!(
        wait_for(DEADLINE, || !server.running() || p.a.listening(p.port)),
        "taptun -s did not listen"
    );
    wait_for_line(&mut server, "local stream up");
    let mut client = p.good_client("client", "tt0");
    p.b.wait_for_device("tt0");
    wait_for_line(&mut client, ESTABLISHED);

    let lease = dhcp(&p.b, "tt0", &p.scratch);
    assert_eq!(lease.len(), 4, "lease: {lease:?}");
    let (ip, router, mtu) = (&lease[0], &lease[2], &lease[3]);
    assert_eq!(
        ip, "192.168.77.1",
        "the address passt copies from its namespace"
    );
    assert_eq!(router, "192.168.77.254");
    assert_eq!(mtu, "1500", "passt's MTU (--mtu 1500)");
    p.b.ip(&format!("addr add {ip}/24 dev tt0"));
    // The gateway's address is passt's host: its loopback, where the service listens.
    let service = format!("{router}:{port}");
    assert!(
        echo_through(&p.b, service.clone(), 1 << 20, 1),
        "no echo from the service in passt's namespace"
    );

    // passt stops and starts again on the same socket: taptun connects again, and traffic
    // resumes within the same tunnel session.
    drop(passt);
    wait_for_line(&mut server, "local stream down");
    let _passt = start_passt(&user, &pns, &socket, &p.scratch, 1);
    assert!(
        wait_for(DEADLINE, || count_lines(&server, "local stream up") >= 2),
        "taptun did not connect to the new passt"
    );
    let resumed = wait_for(DEADLINE, || echo_through(&p.b, service.clone(), 1 << 20, 2));
    assert!(resumed, "no echo after passt's restart");
    assert_eq!(
        count_lines(&server, ESTABLISHED),
        1,
        "sessions on the server"
    );
    assert!(client.running() && server.running());
}

/// A VDE switch in `ns` with control directory `ctl` (open to all: the unprivileged taptun plugs
/// into it) and a tap port `tap`, with `addr`/24 on it.
fn vde_switch(
    ns: &Netns,
    ctl: &Path,
    tap: &str,
    addr: &str,
    scratch: &Scratch,
    name: &str,
) -> Proc {
    let mut cmd = ns.command("vde_switch");
    cmd.arg("-s")
        .arg(ctl)
        .args(["-m", "666", "--dirmode", "755", "-t", tap]);
    // The switch reads commands on stdin and exits at its end: keep it open.
    let log = scratch.path.join(format!("{name}.log"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("vde_switch (install vde-switch)");
    let mut switch = Proc::adopt(name, child, Some(log));
    assert!(
        wait_for(DEADLINE, || !switch.running() || ctl.join("ctl").exists()),
        "vde_switch made no control socket"
    );
    assert!(switch.running(), "vde_switch exited");
    let exists = || {
        Command::new("ip")
            .args(["-n", &ns.name, "link", "show", "dev", tap])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(wait_for(DEADLINE, exists), "vde_switch made no {tap}");
    ns.ip(&format!("addr add {addr}/24 dev {tap}"));
    ns.ip(&format!("link set {tap} up"));
    switch
}

#[test]
fn two_vde_switches_joined_by_taptun_carry_ping_and_10_mb_three_times() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let user = User::new(p.n);
    let (ctl_a, ctl_b) = (user.dir.join("vde-a"), user.dir.join("vde-b"));
    let tap_a = format!("10.216.{}.1", p.n);
    let tap_b = format!("10.216.{}.2", p.n);
    let _switch_a = vde_switch(&p.a, &ctl_a, "vt0", &tap_a, &p.scratch, "switch-a");
    let _switch_b = vde_switch(&p.b, &ctl_b, "vt0", &tap_b, &p.scratch, "switch-b");
    let vde = |ctl: &Path| format!("vde:vde_plug {}", ctl.display());
    let mut server_cmd = user.taptun(
        &p.a,
        &format!(
            "-s -p {} -v -l {} -r {}",
            p.port,
            user.secret(&p.server_key),
            user.secret(&p.client_key)
        ),
    );
    server_cmd.args(["-d", &vde(&ctl_a)]);
    let (mut server, _) = start("server", server_cmd, &p.scratch);
    assert!(
        wait_for(DEADLINE, || !server.running() || p.a.listening(p.port)),
        "taptun -s did not listen"
    );
    let mut client_cmd = user.taptun(
        &p.b,
        &format!(
            "-c -m {} -p {} -v -l {} -r {}",
            p.server_addr(),
            p.port,
            user.secret(&p.client_key),
            user.secret(&p.server_key)
        ),
    );
    client_cmd.args(["-d", &vde(&ctl_b)]);
    let (mut client, _) = start("client", client_cmd, &p.scratch);
    wait_for_line(&mut server, ESTABLISHED);
    wait_for_line(&mut client, ESTABLISHED);

    for round in 0..3 {
        assert!(
            p.b.ping(&tap_a),
            "round {round}: no ping from b's switch to a's"
        );
        assert!(
            p.a.ping(&tap_b),
            "round {round}: no ping from a's switch to b's"
        );
        echo_across_the_tunnel(&p, &tap_a, 10 << 20, round);
    }
    // vde_plug dies: taptun runs it again and traffic resumes, in the same session.
    let plug = format!("^vde_plug {}", ctl_b.display());
    run(Command::new("pkill").args(["-KILL", "-f", &plug]));
    wait_for_line(&mut client, "the command ended");
    assert!(
        wait_for(DEADLINE, || count_lines(&client, "local stream up") >= 2),
        "taptun did not run vde_plug again"
    );
    assert!(p.b.ping(&tap_a), "no ping after vde_plug was run again");
    assert_eq!(
        count_lines(&server, ESTABLISHED),
        1,
        "sessions on the server"
    );
    assert!(server.running() && client.running());
}

#[test]
fn a_local_endpoint_with_tun_or_socket_options_elsewhere_is_a_usage_error() {
    for args in [
        vec!["-s", "-t", "tun", "-d", "qemu:/tmp/x.sock"],
        vec!["-s", "-d", "tap0", "--socket-mode", "660"],
        vec!["-s", "-d", "vde:vde_plug x", "-M", "9215"],
    ] {
        let out = Command::new(TAPTUN)
            .args(&args)
            .args([
                "-l",
                "a-long-enough-passphrase",
                "-r",
                "another-long-passphrase",
            ])
            .env_remove("TAPTUN_LOCAL")
            .env_remove("TAPTUN_REMOTE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// -i points fd 2 at /dev/null before the device opens when fd 2 is the stream (inetd): a
/// `vde:` command started then writes nothing into the tunnel.
#[test]
fn under_inetd_a_vde_commands_stderr_stays_off_the_tunnel() {
    use std::os::fd::OwnedFd;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let scratch = Scratch::new();
    let secret = scratch.genkey("inetd");
    let mut cmd = Command::new(TAPTUN);
    cmd.args(["-i", "-l", &secret, "-r", &secret, "-d"])
        .arg("vde:echo junk-on-stderr >&2; exec sleep 30")
        .env_remove("TAPTUN_LOCAL")
        .env_remove("TAPTUN_REMOTE")
        .stdin(theirs.try_clone().unwrap())
        .stdout(theirs.try_clone().unwrap())
        .stderr(theirs);
    let _taptun = Proc::adopt("inetd", cmd.spawn().unwrap(), None);
    // The responder sends nothing before the initiator's first message: all
    // that can arrive here within a second is what the command wrote.
    ours.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got = Vec::new();
    let _ = (&ours).read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("junk-on-stderr"),
        "the command's stderr reached the tunnel: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn a_hub_peer_on_a_qemu_socket_reaches_its_peers_tap_device_as_an_ordinary_user() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let user = User::new(p.n);
    // The hub, unprivileged: its one listed peer's device is a qemu: socket.
    let socket = user.home.join("vm1.sock");
    let peers = user.home.join("peers");
    fs::write(
        &peers,
        format!(
            "vm1 {} device=qemu:{}\n",
            pubkey(&p.client_key),
            socket.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&peers, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&peers, fs::Permissions::from_mode(0o600)).unwrap();
    let args = format!(
        "-s -p {} -v -A {} -l {} --socket-mode 660",
        p.port,
        peers.display(),
        user.secret(&p.server_key)
    );
    let (mut hub, _) = start("hub", user.taptun(&p.a, &args), &p.scratch);
    assert!(
        wait_for(DEADLINE, || !hub.running() || p.a.listening(p.port)),
        "the hub did not listen"
    );
    assert!(hub.running(), "the hub exited");
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket's mode");
    // The peer: a TAP device, as root.
    let mut client = p.client(
        "client",
        &format!("-d tt0 -l {} -k {}", p.client_key, pubkey(&p.server_key)),
    );
    p.b.wait_for_device("tt0");
    p.b.ip(&format!("addr add {}/24 dev tt0", p.tap_addr(2)));
    wait_for_line(&mut client, ESTABLISHED);
    let mut vm = Vm::connect(&socket);
    assert!(
        vm.arp(ipv4(&p.tap_addr(1)), ipv4(&p.tap_addr(2))),
        "no ARP answer from the peer's tap device"
    );
    drop(vm);
    assert!(hub.terminate().success());
    assert!(!socket.exists(), "the socket is still there after exit");
}
