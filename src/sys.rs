//! The few raw system calls taptun needs that neither `std` nor the `tun`
//! crate offer: poll(2) on several descriptors with a deadline, eventfd and
//! signalfd as wake-up sources, descriptor juggling for `-i`, and signalling
//! a child. This is the only module allowed to use `unsafe`; every block
//! says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// For a wait that no stop interrupts.
pub const NO_STOPS: &[&Stop] = &[];

impl AsRef<Stop> for Stop {
    fn as_ref(&self) -> &Stop {
        self
    }
}

/// Something threads can wait on to learn they must stop: an eventfd that
/// [`Stop::trigger`] makes readable for good, or a signalfd that becomes
/// readable when SIGINT or SIGTERM arrives.
#[derive(Debug)]
pub struct Stop {
    fd: OwnedFd,
    triggered: AtomicBool,
}

impl Stop {
    /// A new, untriggered stop.
    ///
    /// # Errors
    /// When the kernel refuses an eventfd (out of descriptors).
    pub fn new() -> io::Result<Stop> {
        // SAFETY: eventfd takes no pointers; a negative result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        Ok(Stop {
            fd: owned(fd)?,
            triggered: AtomicBool::new(false),
        })
    }

    /// Blocks `signals` in this thread (and every thread it starts
    /// afterwards) and returns a stop that triggers when one arrives. Call it
    /// before starting any thread. Children inherit the mask: start them
    /// with [`unblock_signals_on_exec`].
    ///
    /// # Errors
    /// When the kernel refuses a signalfd.
    pub fn on_signals(signals: &[i32]) -> io::Result<Stop> {
        let mask = signal_set(signals);
        // SAFETY: `mask` is an initialised sigset_t; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `mask` outlives the call.
        let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        Ok(Stop {
            fd: owned(fd)?,
            triggered: AtomicBool::new(false),
        })
    }

    /// Wakes every waiter, now and later.
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own descriptor. A
        // failure (counter saturated, or a signalfd) changes nothing: the
        // flag above is set either way.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Whether the stop has been triggered (or its signal has arrived).
    pub fn is_set(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
            || matches!(
                wait_readable(self.fd.as_raw_fd(), NO_STOPS, Some(Instant::now())),
                Ok(Wait::Ready)
            )
    }

    /// For a signal stop: the number of the signal that arrived, if any.
    pub fn take_signal(&self) -> Option<i32> {
        let mut info: libc::signalfd_siginfo = zeroed_siginfo();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into a live signalfd_siginfo.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn zeroed_siginfo() -> libc::signalfd_siginfo {
    // SAFETY: signalfd_siginfo is plain integers, for which zero is valid.
    unsafe { std::mem::zeroed() }
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// The name of a signal, for the log.
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us by the kernel and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What [`wait_readable`] and [`wait_writable`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// The descriptor is readable (or at EOF, or in error: a read will tell).
    Ready,
    /// One of the stops is set.
    Stopped,
    /// The deadline passed.
    TimedOut,
}

/// Waits until `fd` is readable, one of `stops` is set, or `deadline` passes.
///
/// # Errors
/// poll(2)'s errors other than EINTR.
pub fn wait_readable<S: AsRef<Stop>>(
    fd: RawFd,
    stops: &[S],
    deadline: Option<Instant>,
) -> io::Result<Wait> {
    wait_any(&[(fd, Interest::Read)], stops, deadline).map(Wait::from)
}

/// Waits until `fd` is writable, one of `stops` is set, or `deadline` passes.
///
/// # Errors
/// poll(2)'s errors other than EINTR.
pub fn wait_writable<S: AsRef<Stop>>(
    fd: RawFd,
    stops: &[S],
    deadline: Option<Instant>,
) -> io::Result<Wait> {
    wait_any(&[(fd, Interest::Write)], stops, deadline).map(Wait::from)
}

/// What to wait for on a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// What [`wait_any`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitAny {
    /// Bit i is set when watched descriptor i is ready (or at EOF or in error).
    Ready(u8),
    Stopped,
    TimedOut,
}

impl From<WaitAny> for Wait {
    fn from(w: WaitAny) -> Wait {
        match w {
            WaitAny::Ready(_) => Wait::Ready,
            WaitAny::Stopped => Wait::Stopped,
            WaitAny::TimedOut => Wait::TimedOut,
        }
    }
}

/// Waits until one of `watch` (at most 2) is ready, one of `stops` (at most
/// 3) is set, or `deadline` passes.
///
/// # Errors
/// poll(2)'s errors other than EINTR.
pub fn wait_any<S: AsRef<Stop>>(
    watch: &[(RawFd, Interest)],
    stops: &[S],
    deadline: Option<Instant>,
) -> io::Result<WaitAny> {
    const MAX_WATCH: usize = 2;
    const MAX_STOPS: usize = 3;
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut fds = [unused; MAX_WATCH + MAX_STOPS];
    let watched = watch.len().min(MAX_WATCH);
    for (slot, &(fd, interest)) in fds.iter_mut().zip(&watch[..watched]) {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        };
        *slot = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
    }
    let count = watched + stops.len().min(MAX_STOPS);
    for (slot, stop) in fds[watched..count].iter_mut().zip(stops) {
        *slot = libc::pollfd {
            fd: stop.as_ref().raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
    }
    loop {
        if stops
            .iter()
            .any(|s| s.as_ref().triggered.load(Ordering::SeqCst))
        {
            return Ok(WaitAny::Stopped);
        }
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that we never wake a hair before the deadline.
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `fds` is a live array and `count` is within its length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), count as libc::nfds_t, timeout) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if fds[watched..count].iter().any(|p| p.revents != 0) {
            return Ok(WaitAny::Stopped);
        }
        let ready = fds[..watched]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .fold(0u8, |mask, (i, _)| mask | 1 << i);
        if ready != 0 {
            return Ok(WaitAny::Ready(ready));
        }
        if rc == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(WaitAny::TimedOut);
        }
    }
}

/// Sets or clears O_NONBLOCK.
///
/// # Errors
/// fcntl(2)'s errors.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain integers (zero is valid) and fstat fills it in.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Whether two descriptors refer to the same open file (device and inode).
pub fn same_file(a: RawFd, b: RawFd) -> bool {
    match (fstat(a), fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Whether `fd` is a socket.
pub fn is_socket(fd: RawFd) -> bool {
    fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// A close-on-exec duplicate of `fd`, numbered 3 or above.
///
/// # Errors
/// fcntl(2)'s errors (EBADF when `fd` is not open).
pub fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes plain integers and returns a new fd we own.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })
}

/// Points each of `fds` at /dev/null.
///
/// # Errors
/// When /dev/null cannot be opened or dup2(2) fails.
pub fn point_at_dev_null(fds: &[RawFd]) -> io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    for &fd in fds {
        // SAFETY: dup2 onto a standard descriptor number; the old file
        // behind it, if any, is closed by the kernel atomically. Nothing in
        // this process holds an owning handle to fds 0-2 (std's stdio does
        // not own them).
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to process `pid`, or with `group` to the process group it
/// leads (a hook, with whatever it started itself). It must be a child we
/// have not yet reaped, so that the id cannot have been reused.
pub fn kill(pid: u32, group: bool, signal: i32) {
    if let Ok(pid @ 1..) = libc::pid_t::try_from(pid) {
        // SAFETY: kill takes plain integers; a negative pid names a group.
        unsafe { libc::kill(if group { -pid } else { pid }, signal) };
    }
}

/// A user or group id from a name, or from a number given as text.
///
/// # Errors
/// When the name is unknown (`NotFound`) or the lookup fails.
pub fn lookup_user(name: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: passwd is plain data (zero is valid); getpwnam_r writes into
    // `pwd` and `buf`, whose lengths we pass, and sets `result`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if !result.is_null() {
            return Ok((pwd.pw_uid, pwd.pw_gid));
        }
    }
    match name.parse::<libc::uid_t>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user `{name}`"),
        )),
    }
}

/// A group id from a name or number.
///
/// # Errors
/// When the name is unknown (`NotFound`) or the lookup fails.
pub fn lookup_group(name: &str) -> io::Result<libc::gid_t> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: group is plain data (zero is valid); getgrnam_r writes into
    // `grp` and `buf`, whose lengths we pass, and sets `result`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if !result.is_null() {
            return Ok(grp.gr_gid);
        }
    }
    name.parse::<libc::gid_t>()
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("no group `{name}`")))
}

/// Switches for good to `uid` and `gid`: setgroups, setgid, setuid, in that
/// order, then checks that root cannot be regained.
///
/// # Errors
/// When any step fails, or root could be regained.
pub fn drop_privileges(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain integer syscalls; setgroups reads one gid from a live array.
    unsafe {
        check(libc::setgroups(1, &gid))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
        if uid != 0 && (libc::setuid(0) == 0 || libc::seteuid(0) == 0) {
            return Err(io::Error::other(
                "root could be regained after dropping privileges",
            ));
        }
    }
    Ok(())
}

/// Makes the process non-dumpable (no core files, no ptrace by other
/// users): key material must not leak through a crash or a debugger.
///
/// # Errors
/// When prctl or setrlimit fails.
pub fn forbid_core_dumps() -> io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prctl with integer arguments; setrlimit reads a live rlimit.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0
            || libc::setrlimit(libc::RLIMIT_CORE, &none) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Takes ownership of descriptor `fd`, inherited from our parent (systemd's
/// socket activation passes listening sockets from fd 3 on), and makes it
/// close-on-exec. Call it before the process opens a descriptor of its own,
/// which could otherwise have that number.
///
/// # Errors
/// When `fd` is not open (EBADF).
pub fn inherit_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setting FD_CLOEXEC on an open descriptor; our children must
    // not inherit what systemd passed us.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open and was handed to this process alone
    // (LISTEN_PID names us); it is claimed before the process opens any of
    // its own, so nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets TCP_NOTSENT_LOWAT: the socket polls writable only while fewer than
/// `bytes` are waiting to be sent.
///
/// # Errors
/// setsockopt(2)'s errors (ENOPROTOOPT when `fd` is not TCP).
pub fn set_tcp_notsent_lowat(fd: RawFd, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The offloads taptun asks of a device whose peer takes GSO super-frames:
/// partial checksums and TCP segmentation for IPv4 and IPv6, with ECN.
pub const TUN_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// TUNSETOFFLOAD: which offloads the kernel may leave to us in the frames it
/// hands over (0: complete, segmented frames only).
///
/// # Errors
/// ioctl(2)'s errors (EINVAL: the kernel lacks one of them).
pub fn tun_set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value, not by pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// TUNSETVNETLE: the virtio headers are little-endian whatever the host's
/// byte order (the wire format says so; on little-endian hosts it already is).
///
/// # Errors
/// ioctl(2)'s errors.
pub fn tun_set_vnet_le(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: TUNSETVNETLE reads one c_int through the pointer, which is live.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETLE, &on as *const libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// rtnetlink's attribute for an interface's GSO size limit.
const IFLA_GSO_MAX_SIZE: u16 = 41;

/// An interface's GSO size limit, through rtnetlink (what
/// `ip -d link show NAME` prints as gso_max_size).
///
/// # Errors
/// No such interface, or a kernel that does not report it.
pub fn gso_max_size(ifname: &str) -> io::Result<u32> {
    let reply = rtnetlink_link(ifname, libc::RTM_GETLINK, 0, None)?;
    // The reply: nlmsghdr (16), ifinfomsg (16), then attributes, each a
    // u16 length (header included), a u16 type and its data, 4-aligned.
    let mut attrs = reply.get(32..).unwrap_or_default();
    while let (Some(len), Some(kind)) = (attrs.get(0..2), attrs.get(2..4)) {
        let len = usize::from(u16::from_ne_bytes([len[0], len[1]]));
        let kind = u16::from_ne_bytes([kind[0], kind[1]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == IFLA_GSO_MAX_SIZE && len == 8 {
            return Ok(u32::from_ne_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    Err(io::Error::other("the kernel did not report gso_max_size"))
}

/// Sets an interface's GSO size limit through rtnetlink (what
/// `ip link set NAME gso_max_size SIZE` does).
///
/// # Errors
/// No such interface, no CAP_NET_ADMIN (EPERM), or a kernel that cannot
/// change it (EOPNOTSUPP and the like).
pub fn set_gso_max_size(ifname: &str, size: u32) -> io::Result<()> {
    let flags = libc::NLM_F_ACK as u16;
    rtnetlink_link(
        ifname,
        libc::RTM_NEWLINK,
        flags,
        Some((IFLA_GSO_MAX_SIZE, size)),
    )
    .map(drop)
}

/// Sends one rtnetlink request about interface `ifname` (an ifinfomsg with
/// at most one u32 attribute) and returns the kernel's reply, or the error
/// it answered with.
fn rtnetlink_link(
    ifname: &str,
    msg_type: u16,
    flags: u16,
    attr: Option<(u16, u32)>,
) -> io::Result<Vec<u8>> {
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: reads a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // nlmsghdr (16) + ifinfomsg (16) + the attribute (8), native order.
    let len: u32 = if attr.is_some() { 40 } else { 32 };
    let mut msg = Vec::with_capacity(40);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
    msg.extend_from_slice(&(index as i32).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]); // flags, change mask: leave them alone
    if let Some((kind, value)) = attr {
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&value.to_ne_bytes());
    }

    // SAFETY: socket takes plain integers; the result is checked by `owned`.
    let sock = owned(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: sockaddr_nl is plain integers (zero is valid: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` are live for the call and their lengths are exact.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel answers at once: the link (for a get), or NLMSG_ERROR,
    // whose error 0 is the ack of a set.
    let mut reply = vec![0u8; 32 * 1024];
    // SAFETY: writes at most `reply.len()` bytes into the live buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(n as usize);
    let reply_type = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    if reply_type == Some(libc::NLMSG_ERROR as u16) {
        let error = reply
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return match error {
            Some(0) => Ok(reply),
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Err(io::Error::other("a truncated rtnetlink error")),
        };
    }
    if reply_type == Some(msg_type) || reply_type == Some(libc::RTM_NEWLINK) {
        Ok(reply)
    } else {
        Err(io::Error::other("unexpected rtnetlink reply"))
    }
}

/// The effective user id: the owner of the files this process creates.
pub fn effective_uid() -> libc::uid_t {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Time since boot, suspend included (CLOCK_BOOTTIME): one clock for every
/// process, unlike `Instant`, so processes can compare their records.
pub fn boottime() -> std::time::Duration {
    // SAFETY: timespec is plain integers (zero is valid) and clock_gettime
    // fills it in; CLOCK_BOOTTIME exists on every Linux taptun runs on.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
        ts
    };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    std::time::Duration::new(secs, nanos)
}

/// Tries to take an exclusive flock(2) on `fd` without waiting: Ok(false)
/// while another open file holds it. Released by [`unlock`] or when the
/// last descriptor of this open file closes.
///
/// # Errors
/// flock(2)'s errors other than EWOULDBLOCK.
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<bool> {
    loop {
        // SAFETY: flock takes plain integers and touches no memory.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Releases a flock(2) taken with [`try_lock_exclusive`].
pub fn unlock(fd: RawFd) {
    // SAFETY: flock takes plain integers and touches no memory; unlocking
    // cannot fail on a valid descriptor.
    unsafe { libc::flock(fd, libc::LOCK_UN) };
}

/// Waits until one of `watch` is ready (or at EOF, or in error) or
/// `deadline` passes, and says which are: all false when the deadline
/// passed. For the few descriptors a connect races (Happy Eyeballs);
/// the caller puts its stops among them.
///
/// # Errors
/// poll(2)'s errors other than EINTR.
pub fn poll_ready(watch: &[(RawFd, Interest)], deadline: Option<Instant>) -> io::Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = watch
        .iter()
        .map(|&(fd, interest)| libc::pollfd {
            fd,
            events: match interest {
                Interest::Read => libc::POLLIN,
                Interest::Write => libc::POLLOUT,
            },
            revents: 0,
        })
        .collect();
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `fds` is a live vector and its length is passed with it.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(fds.iter().map(|p| p.revents != 0).collect());
        }
    }
}

/// Makes the child that `cmd` starts begin with no signal blocked. The mask
/// that sends SIGINT, SIGTERM, SIGUSR1 and SIGHUP to our signalfds is
/// inherited across fork and exec (std does not reset it), and would leave
/// a hook or a -x command deaf to the SIGTERM that asks it to go.
pub fn unblock_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: sigemptyset and
    // pthread_sigmask on a set on the stack, no allocation, no lock.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
                0 => Ok(()),
                rc => Err(io::Error::from_raw_os_error(rc)),
            }
        });
    }
}

/// The work area of one Argon2id derivation, in an anonymous mapping of its
/// own: dropping it zeroes the blocks (they held material derived from the
/// passphrase) and unmaps them, so the memory goes back to the system. From
/// the heap it would stay: glibc raises its mmap threshold to the size of the
/// first large chunk freed, so the next one comes from the heap, which never
/// shrinks below the raised trim threshold.
pub struct Argon2Blocks {
    ptr: std::ptr::NonNull<argon2::Block>,
    len: usize,
}

impl Argon2Blocks {
    /// `count` (more than 0) zeroed blocks of 1 KiB. A refused mapping ends
    /// the process as a failed allocation does (`handle_alloc_error`): it is
    /// the same memory the heap would have been asked for.
    pub fn new(count: usize) -> Argon2Blocks {
        let layout = std::alloc::Layout::array::<argon2::Block>(count)
            .expect("Argon2id's block count fits in the address space");
        // SAFETY: a new private anonymous mapping, overlapping nothing; the
        // result is checked for MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(layout);
        }
        // Huge pages where the kernel allows them: ten page faults instead of
        // almost five thousand, which made a derivation a third faster here
        // (20 ms against 30). Only advice: without them nothing changes.
        // SAFETY: advice about our own mapping; it changes no contents.
        unsafe { libc::madvise(ptr, layout.size(), libc::MADV_HUGEPAGE) };
        // A mapping is page-aligned, which satisfies Block's 64-byte alignment.
        let Some(ptr) = std::ptr::NonNull::new(ptr.cast::<argon2::Block>()) else {
            std::alloc::handle_alloc_error(layout);
        };
        Argon2Blocks { ptr, len: count }
    }
}

impl AsMut<[argon2::Block]> for Argon2Blocks {
    fn as_mut(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping holds `len` blocks, is aligned for them, lives
        // as long as `self` and is reached only through it; a fresh mapping
        // is zero-filled, and all zeros is a valid Block (plain u64s).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Argon2Blocks {
    fn drop(&mut self) {
        for block in self.as_mut() {
            zeroize::Zeroize::zeroize(block);
        }
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing
        // refers to any more. It cannot fail for a mapping we own.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<argon2::Block>(),
            )
        };
    }
}

/// TUNSETCARRIER (Linux 5.0): the device's carrier on or off, which
/// `ip link` shows as LOWER_UP or NO-CARRIER and routing daemons follow.
///
/// # Errors
/// ioctl(2)'s errors (EINVAL: an older kernel; EPERM: a persistent device
/// we do not own).
pub fn tun_set_carrier(fd: RawFd, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    // SAFETY: TUNSETCARRIER reads one c_int through the pointer, which is live.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETCARRIER, &value as *const libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes a secret out of the environment: returns its value, overwrites it
/// where it lies (so that /proc/PID/environ no longer shows it) and unsets
/// it. Call it before any other thread exists: the environment has no lock
/// that C code honours.
pub fn take_env_secret(name: &str) -> Option<zeroize::Zeroizing<String>> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getenv returns null or a pointer to the NUL-terminated value
    // inside the environment; no other thread exists to change it meanwhile
    // (the caller's promise), and it stays valid until the unsetenv below.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: as above; `value` is a live NUL-terminated string, and the
    // bytes overwritten are exactly its own (the NUL is kept). The initial
    // environment and strings setenv made are both writable.
    let text = unsafe {
        let bytes = std::ffi::CStr::from_ptr(value).to_bytes();
        let text = zeroize::Zeroizing::new(String::from_utf8_lossy(bytes).into_owned());
        std::ptr::write_bytes(value, 0, bytes.len());
        libc::unsetenv(name.as_ptr());
        text
    };
    Some(text)
}

/// Gives the whole pages inside `buf` back to the kernel, so that an idle
/// session's buffers cost no memory until they are written again; they read
/// as zeros meanwhile. Best effort: nothing happens if the kernel refuses.
pub fn release_pages(buf: &mut [u8]) {
    // SAFETY: sysconf reads a constant of the system.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(page);
    let end = (buf.as_mut_ptr() as usize + buf.len()) / page * page;
    if end > start {
        // SAFETY: [start, end) lies inside `buf`, which is borrowed mutably,
        // so nothing else reads it now. The heap is private anonymous memory,
        // where MADV_DONTNEED only swaps its pages for zero-filled ones on
        // the next access: the bytes stay valid, and still ours.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The uid of the process at the other end of a connected Unix socket, as
/// the kernel recorded it at connect(2) (SO_PEERCRED): the control socket's
/// check of who asks, which no client can forge.
///
/// # Errors
/// getsockopt(2)'s errors (`fd` is no Unix socket, or not connected).
pub fn peer_uid(fd: RawFd) -> io::Result<libc::uid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals; the kernel writes at most
    // `len` bytes into `cred` and the new length into `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("SO_PEERCRED returned a short answer"));
    }
    Ok(cred.uid)
}

/// rtnetlink's attribute for an interface's master (its bridge).
const IFLA_MASTER: u16 = 10;

/// Puts interface `ifname` into bridge `bridge` (what `ip link set IFNAME
/// master BRIDGE` does).
///
/// # Errors
/// No such bridge (ENODEV), one that is not a bridge (EOPNOTSUPP and the
/// like), no CAP_NET_ADMIN (EPERM).
pub fn set_master(ifname: &str, bridge: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(bridge).map_err(io::Error::other)?;
    // SAFETY: reads a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {bridge}"),
        ));
    }
    let flags = libc::NLM_F_ACK as u16;
    rtnetlink_link(ifname, libc::RTM_NEWLINK, flags, Some((IFLA_MASTER, index))).map(drop)
}

/// The capability that makes and configures network devices.
const CAP_NET_ADMIN: u32 = 12;

/// As [`drop_privileges`], but keeps exactly CAP_NET_ADMIN (effective and
/// permitted, not inheritable: commands this process runs get none), so
/// that a hub can still make devices when its peers file is reloaded.
///
/// # Errors
/// When any step fails, or root could be regained.
pub fn drop_privileges_keeping_net_admin(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }.into())?;
    drop_privileges(uid, gid)?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two Data, capabilities 0-31 in the first.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let kept = Data {
        effective: 1 << CAP_NET_ADMIN,
        permitted: 1 << CAP_NET_ADMIN,
        inheritable: 0,
    };
    let none = Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let data = [kept, none];
    // SAFETY: capset reads the live header and the two-element array the
    // version-3 header announces.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }.into())?;
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit: a hub holds
/// a device and, per connected peer, its connection and a few eventfds, far
/// more than the usual soft limit of 1,024. Returns the limit now in force.
///
/// # Errors
/// getrlimit's or setrlimit's.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the live struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID): what the
/// hub's message-1 trials are charged (src/trial.rs), unlike wall time
/// unaffected by the thread's waiting for a CPU.
pub fn thread_cpu_time() -> std::time::Duration {
    // SAFETY: timespec is plain integers (zero is valid) and clock_gettime
    // fills it in; CLOCK_THREAD_CPUTIME_ID exists on every Linux taptun runs on.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    std::time::Duration::new(secs, nanos)
}

/// Binds a Unix stream socket at `path` with mode 0600 from the start: the
/// umask is 0177 for the bind, so that no other user can connect in the
/// moment before the caller sets the mode it wants. The umask is the
/// process's: call this while no other thread creates files (start-up).
///
/// # Errors
/// bind(2) and listen(2)'s.
pub fn bind_unix_private(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask it returned.
    unsafe { libc::umask(old) };
    bound
}

/// What a TCP socket's tcp_info says about its path.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpInfo {
    /// Smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// The least round-trip time seen, µs (0 on kernels before 4.10).
    pub min_rtt_us: u32,
    /// The rate at which the peer has lately been acknowledging data, in
    /// bytes a second (0 without a sample, or before Linux 4.9).
    pub delivery_rate: u64,
    /// Bytes the peer has acknowledged in all (0 before Linux 4.1).
    pub bytes_acked: u64,
    /// Bytes received from the peer in all (0 before Linux 4.1).
    pub bytes_received: u64,
}

/// A TCP socket's tcp_info.
///
/// # Errors
/// getsockopt(2)'s errors (EOPNOTSUPP or ENOPROTOOPT when `fd` is not TCP).
pub fn tcp_info(fd: RawFd) -> io::Result<TcpInfo> {
    // SAFETY: tcp_info is plain integers, for which all zeros is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live tcp_info and its exact size; the
    // kernel writes at most `len` bytes and says how many in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // An older kernel fills less: the fields past `len` stay zero.
    Ok(TcpInfo {
        rtt_us: info.tcpi_rtt,
        min_rtt_us: info.tcpi_min_rtt,
        delivery_rate: info.tcpi_delivery_rate,
        bytes_acked: info.tcpi_bytes_acked,
        bytes_received: info.tcpi_bytes_received,
    })
}

/// How many bytes a TCP socket holds that it has not sent yet
/// (SIOCOUTQNSD).
///
/// # Errors
/// ioctl(2)'s.
pub fn tcp_unsent_bytes(fd: RawFd) -> io::Result<u32> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int through the pointer, which points
    // at a live c_int.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut unsent) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(unsent).unwrap_or(0))
}

/// SO_MAX_PACING_RATE (asm-generic/socket.h; libc does not export it).
const SO_MAX_PACING_RATE: libc::c_int = 47;

/// Caps the rate at which the kernel paces a socket's sending, in bytes a
/// second (`u64::MAX`: no cap). On TCP this also turns on the kernel's own
/// pacing, so it needs no fq qdisc.
///
/// # Errors
/// setsockopt(2)'s.
pub fn set_max_pacing_rate(fd: RawFd, rate: u64) -> io::Result<()> {
    // SAFETY: passes a pointer to a live u64 and its exact size (the kernel
    // takes a 64-bit rate when given 8 bytes).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MAX_PACING_RATE,
            (&rate as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
