//! The byte streams a tunnel runs over: a TCP connection accepted (-s) or
//! dialled (-c -m), the inherited fd 0 and fd 1 (-i), or a command's stdin
//! and stdout (-c -x).
//!
//! Every stream splits into a [`StreamReader`] (which waits with poll(2) so
//! that a stop or a deadline can interrupt it), a [`StreamWriter`], and a
//! [`Closer`] that can abort both halves from any thread and reaps a
//! command at the end.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::child::{self, Child};
use crate::error::Error;
use crate::frame::{self, FrameReader};
use crate::handshake::MessageIo;
use crate::pacing::{Load, Pacer, RECENT, Sample};
use crate::stream_error::Stopped;
use crate::sys::{self, Stop, Wait};

/// How long a failed handshake waits for a -x command's exit status: the end
/// of its stdout usually comes with its exit, and its status explains the
/// failure better than any guess about the peer.
const COMMAND_EXIT_WAIT: Duration = Duration::from_secs(1);
/// Backlog of the listening socket.
const LISTEN_BACKLOG: i32 = 128;

/// The read half: waits for data, a stop, or a time limit, then reads.
pub struct StreamReader {
    file: File,
    stops: Vec<Arc<Stop>>,
    /// Reads fail with `TimedOut` after this instant (handshake deadlines).
    deadline: Option<Instant>,
    /// Reads fail with `TimedOut` when nothing arrives for this long (a
    /// dead peer).
    idle: Option<Duration>,
    /// When bytes last arrived: the idle limit counts from here.
    heard: Instant,
}

impl StreamReader {
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub fn set_idle_limit(&mut self, idle: Option<Duration>) {
        self.idle = idle;
        self.heard = Instant::now();
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // From the last bytes received, not from this call: a read may
        // have given up at its deadline before.
        let idle_deadline = self.idle.map(|idle| self.heard + idle);
        let deadline = earliest(self.deadline, idle_deadline);
        loop {
            match sys::wait_readable(self.file.as_raw_fd(), &self.stops, deadline)? {
                Wait::Ready => match (&self.file).read(buf) {
                    // The descriptor may be shared with the non-blocking writer.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Ok(n) => {
                        self.heard = Instant::now();
                        return Ok(n);
                    }
                    other => return other,
                },
                Wait::Stopped => return Err(Stopped::error()),
                Wait::TimedOut if deadline == self.deadline => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
                }
                Wait::TimedOut => {
                    let secs = self.idle.unwrap_or_default().as_secs();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing received for {secs} s"),
                    ));
                }
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The write half. Its descriptor is non-blocking, so that a peer that
/// stops reading can neither block a stop nor hold us forever.
pub struct StreamWriter {
    file: File,
    stops: Vec<Arc<Stop>>,
    /// Writes fail with `TimedOut` after this instant (handshake deadlines).
    deadline: Option<Instant>,
    /// Writes fail with `TimedOut` when nothing can be written for this long.
    stall: Option<Duration>,
    /// How the writer fits a TCP carrier to its link; `None` when the
    /// stream is no TCP socket (or its tcp_info cannot be read).
    carrier: Option<Carrier>,
}

impl StreamWriter {
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub fn set_stall_limit(&mut self, stall: Option<Duration>) {
        self.stall = stall;
    }

    pub fn stall_limit(&self) -> Option<Duration> {
        self.stall
    }

    /// One non-blocking write: `WouldBlock` when the stream is backed up.
    ///
    /// On a carrier slower than [`UNSENT_LOW_WATER`] takes [`UNSENT_TIME`]
    /// to send, the write leaves at most the unsent limit unsent:
    /// TCP_NOTSENT_LOWAT only says when the socket is writable, and a write
    /// then fills the last segment-to-be up to 64 KiB, which is 26 ms at 20
    /// Mbit/s.
    ///
    /// # Errors
    /// The stream's write errors, `WouldBlock` included.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut buf = buf;
        if let Some(carrier) = &self.carrier
            && carrier.unsent < UNSENT_LOW_WATER
            && let Ok(unsent) = sys::tcp_unsent_bytes(self.file.as_raw_fd())
        {
            let room = carrier.unsent.saturating_sub(unsent) as usize;
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            buf = &buf[..buf.len().min(room)];
        }
        loop {
            match (&self.file).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// The carrier's smoothed round-trip time when last sampled (TCP only).
    pub fn round_trip(&self) -> Option<Duration> {
        self.carrier.as_ref().and_then(|c| c.rtt)
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Fits the carrier to the link, from what its socket says (tcp_info,
    /// read at most every [`CARRIER_SAMPLE`]); call it after writes, and
    /// while the stream is `backed_up`:
    ///
    /// - TCP_NOTSENT_LOWAT follows the delivery rate (while backed up, when
    ///   that rate is the link's; at most every [`UNSENT_REFIT`]): a fixed
    ///   128 KiB is 0.1 ms at 10 Gbit/s but 50 ms at 20 Mbit/s, a queue that
    ///   every frame, pings included, would wait behind;
    /// - the pacing ceiling keeps the link's bottleneck queue short
    ///   ([`Pacer`]).
    pub fn fit_to_carrier(&mut self, backed_up: bool) {
        let Some(carrier) = &mut self.carrier else {
            return;
        };
        let now = Instant::now();
        carrier.waited |= backed_up;
        if backed_up {
            carrier.last_wait = Some(now);
        }
        if now < carrier.sampled + CARRIER_SAMPLE {
            return;
        }
        carrier.sampled = now;
        // Backed up at any time since the last sample: a backed-up writer
        // alternates waits with writes, and either may come to sample.
        let backed_up = std::mem::take(&mut carrier.waited);
        let fd = self.file.as_raw_fd();
        let info = match sys::tcp_info(fd) {
            Ok(info) => info,
            Err(e) => {
                log::debug!("TCP_INFO not available, the carrier is left as it is: {e}");
                self.carrier = None;
                return;
            }
        };
        if backed_up && info.delivery_rate > 0 && now >= carrier.fitted + UNSENT_REFIT {
            carrier.fitted = now;
            let fit = unsent_for_rate(info.delivery_rate);
            if fit != carrier.unsent {
                match sys::set_tcp_notsent_lowat(fd, fit) {
                    Ok(()) => carrier.unsent = fit,
                    Err(e) => log::debug!("TCP_NOTSENT_LOWAT not changed: {e}"),
                }
            }
        }
        carrier.rtt = (info.rtt_us > 0).then(|| Duration::from_micros(info.rtt_us.into()));
        let rtt = Duration::from_micros(info.rtt_us.into());
        let sample = Sample {
            rtt,
            min_rtt: Duration::from_micros(info.min_rtt_us.into()),
            delivery_rate: carrier
                .acked
                .rate(info.bytes_acked, rtt, now, info.delivery_rate),
            received_rate: carrier.received.rate(info.bytes_received, rtt, now, 0),
        };
        let load = match carrier.last_wait {
            _ if backed_up => Load::BackedUp,
            Some(t) if now - t < RECENT => Load::Recently,
            _ => Load::Light,
        };
        if let Some(cap) = carrier.pacer.update(sample, load, now) {
            log::trace!("carrier pacing ceiling {cap:?} bytes/s ({sample:?})");
            set_pacing_cap(fd, &mut carrier.pacer);
        }
        // The ceiling first: bbr starts up at twice the rate and more.
        if carrier.bbr
            && carrier.pacer.refresh_bbr(sample, load, now)
            && set_pacing_cap(fd, &mut carrier.pacer)
        {
            carrier.bbr = restart_bbr(&self.file);
        }
    }
}

/// Sets the pacer's cap on the socket; on failure turns the pacer off (the
/// carrier goes unpaced) and returns false.
fn set_pacing_cap(fd: std::os::fd::RawFd, pacer: &mut Pacer) -> bool {
    match sys::set_max_pacing_rate(fd, pacer.cap().unwrap_or(u64::MAX)) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("SO_MAX_PACING_RATE not set, the carrier goes unpaced: {e}");
            *pacer = Pacer::disabled();
            false
        }
    }
}

/// What the writer keeps to fit a TCP carrier to its link.
struct Carrier {
    /// The TCP_NOTSENT_LOWAT last set, and when it was last fitted.
    unsent: u32,
    fitted: Instant,
    /// When tcp_info was last read.
    sampled: Instant,
    /// Whether the writer waited for the carrier since then, and when it
    /// last did.
    waited: bool,
    last_wait: Option<Instant>,
    /// Its smoothed RTT then.
    rtt: Option<Duration>,
    acked: ByteRate,
    received: ByteRate,
    pacer: Pacer,
    /// Whether the carrier runs bbr, which the pacer may start afresh.
    bbr: bool,
}

/// A byte count's rate (what the peer acknowledges, or sends), over a
/// round trip at least: the kernel's own delivery rate is one
/// acknowledgement's, which a burst of them (a link that forwards in
/// batches) puts far above the link's rate, and a ceiling cut from it would
/// not bind. The higher of the last two windows: a lost segment stalls the
/// acknowledged count for a round trip, and a window that holds the stall
/// but not the burst that ends it can show half the link's rate or less
/// (one cut on the 2.5 MB/s dsl link went to 1.1 MB/s).
#[derive(Debug, Default)]
struct ByteRate {
    /// The count, and when, at the start of this window.
    since: Option<(u64, Instant)>,
    /// Over the last whole window and the one before, bytes a second.
    rate: Option<u64>,
    before: Option<u64>,
}

impl ByteRate {
    /// The rate over the last two whole windows of at least `rtt` (and 20
    /// ms) each, given the count now; `kernel`'s rate until a window has
    /// passed, or when the kernel does not count the bytes.
    fn rate(&mut self, count: u64, rtt: Duration, now: Instant, kernel: u64) -> u64 {
        if count == 0 {
            return kernel;
        }
        match self.since {
            Some((start, at)) if now - at >= rtt.max(Duration::from_millis(20)) => {
                let secs = (now - at).as_secs_f64();
                self.before = self.rate;
                self.rate = Some((count.saturating_sub(start) as f64 / secs) as u64);
                self.since = Some((count, now));
            }
            Some(_) => {}
            None => self.since = Some((count, now)),
        }
        match (self.rate, self.before) {
            (Some(rate), before) => rate.max(before.unwrap_or(0)),
            (None, _) => kernel,
        }
    }
}

/// Starts a bbr socket's congestion control afresh, by way of reno (setting
/// the algorithm it already has does nothing): bbr then takes the kernel's
/// least RTT as just measured, and skips the ProbeRTT it would otherwise
/// enter ([`crate::pacing`]). Returns whether to do so again (not after a
/// failure: the socket keeps whatever it has).
fn restart_bbr(file: &File) -> bool {
    let socket = socket2::SockRef::from(file);
    let restarted = socket
        .set_tcp_congestion(b"reno")
        .and_then(|()| socket.set_tcp_congestion(b"bbr"));
    if let Err(e) = restarted {
        log::debug!("the carrier's bbr was not restarted: {e}");
        return false;
    }
    log::trace!("the carrier's bbr restarted");
    true
}

/// TCP_NOTSENT_LOWAT for a carrier that delivers `rate` bytes a second:
/// [`UNSENT_TIME`] of it, within [`UNSENT_LOW_WATER_MIN`] and
/// [`UNSENT_LOW_WATER`].
fn unsent_for_rate(rate: u64) -> u32 {
    let bytes = rate.saturating_mul(UNSENT_TIME.as_micros() as u64) / 1_000_000;
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .clamp(UNSENT_LOW_WATER_MIN, UNSENT_LOW_WATER)
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let stall_deadline = self.stall.map(|stall| Instant::now() + stall);
        let deadline = earliest(self.deadline, stall_deadline);
        loop {
            match (&self.file).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
            match sys::wait_writable(self.file.as_raw_fd(), &self.stops, deadline)? {
                Wait::Ready => {}
                Wait::Stopped => return Err(Stopped::error()),
                Wait::TimedOut => {
                    let secs = self.stall.unwrap_or_default().as_secs();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing could be written for {secs} s"),
                    ));
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Aborts a stream from any thread, and cleans up after it.
pub struct Closer {
    how: CloseHow,
}

enum CloseHow {
    /// shutdown(2) wakes both halves of a socket.
    Socket(OwnedFd),
    /// Killing the command closes its pipes.
    Command {
        child: Child,
        /// The -x text, for messages.
        command: String,
    },
    /// Plain pipes (-i under ssh): nothing can wake a blocked read except
    /// the stops the reader watches.
    Nothing,
}

impl Closer {
    /// Wakes any thread blocked on the stream: shuts a socket down, or
    /// signals a command to exit.
    pub fn abort(&self) {
        match &self.how {
            CloseHow::Socket(fd) => {
                let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Both);
            }
            CloseHow::Command { child, .. } => child.signal(libc::SIGTERM),
            CloseHow::Nothing => {}
        }
    }

    /// A -x command that has exited by itself (waiting up to
    /// `COMMAND_EXIT_WAIT` for it), as `Error::CommandExited`; `None` while
    /// it runs, and for the other streams. Call it before [`Closer::abort`],
    /// whose signal would otherwise be the cause.
    pub fn command_exit(&mut self) -> Option<Error> {
        let CloseHow::Command { child, command } = &mut self.how else {
            return None;
        };
        let status = child.wait_exit(COMMAND_EXIT_WAIT)?;
        Some(Error::CommandExited {
            command: command.clone(),
            status,
        })
    }

    /// After both halves are closed: stops and reaps a command (`Child::stop`).
    pub fn finish(self) {
        if let CloseHow::Command { mut child, .. } = self.how {
            if let Some(status) = child.stop() {
                log::debug!("command exited: {status}");
            }
        }
    }
}

/// A connected stream before it is split.
pub struct Stream {
    /// Who is at the other end, for the log: an address, `stdio` or `exec`.
    pub peer: String,
    read: OwnedFd,
    write: OwnedFd,
    how: CloseHow,
}

impl Stream {
    /// Wraps an accepted or dialled TCP connection (sets TCP_NODELAY).
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub fn tcp(stream: TcpStream, peer: String) -> Result<Stream, Error> {
        limit_unsent(&stream);
        stream
            .set_nodelay(true)
            .and_then(|()| Stream::socket(stream.into(), peer.clone()))
            .map_err(|e| Error::io(format!("{peer}: cannot set up the connection"), e))
    }

    /// Wraps any connected stream socket (TCP, or a Unix socket in tests).
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub fn socket(socket: OwnedFd, peer: String) -> io::Result<Stream> {
        Ok(Stream {
            peer,
            read: socket.try_clone()?,
            how: CloseHow::Socket(socket.try_clone()?),
            write: socket,
        })
    }

    /// Takes fd 0 and fd 1 as the stream (-i) and points fds 0 and 1 at
    /// /dev/null, so that nothing else can ever write to the stream; fd 2
    /// too when it is the same socket as fd 0 (inetd and xinetd do that).
    ///
    /// # Errors
    /// When fd 0 or fd 1 is not open, or fd 0 is not a socket or a pipe.
    pub fn stdio() -> Result<Stream, Error> {
        let io_err = |e| Error::io("-i: cannot take the stream from fd 0 and fd 1", e);
        let read = sys::dup_high(0).map_err(io_err)?;
        refuse_stdin_that_is_no_connection(&read)?;
        let write = sys::dup_high(1).map_err(io_err)?;
        let mut redirect = vec![0, 1];
        if stderr_is_stream() {
            redirect.push(2);
        }
        sys::point_at_dev_null(&redirect).map_err(io_err)?;
        let how = if sys::is_socket(read.as_raw_fd()) {
            // inetd's TCP socket: small frames must not wait (not TCP: ignored).
            let _ = socket2::SockRef::from(&read).set_tcp_nodelay(true);
            limit_unsent(&read);
            CloseHow::Socket(read.try_clone().map_err(io_err)?)
        } else {
            CloseHow::Nothing
        };
        Ok(Stream {
            peer: "stdio".into(),
            read,
            write,
            how,
        })
    }

    /// Runs `command` with /bin/sh -c, its stdin and stdout as the stream
    /// and its stderr left as ours; secrets are scrubbed from its
    /// environment.
    ///
    /// # Errors
    /// `Error::Command` when the shell cannot be started.
    pub fn command(command: &str) -> Result<Stream, Error> {
        let mut cmd = child::shell(command);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let cmd_err = |source| Error::Command {
            command: command.to_owned(),
            source,
        };
        // In our process group: ssh may have to ask for a password on the
        // terminal, which a background group cannot read.
        let mut child = Child::spawn(cmd, false).map_err(cmd_err)?;
        let (Some(stdin), Some(stdout), _) = child.take_pipes() else {
            child.stop();
            return Err(cmd_err(io::Error::other("no pipes to the command")));
        };
        Ok(Stream {
            peer: "exec".into(),
            read: stdout.into(),
            write: stdin.into(),
            how: CloseHow::Command {
                child,
                command: command.to_owned(),
            },
        })
    }

    /// Splits the stream; the reader and the writer watch `stops`.
    ///
    /// # Errors
    /// When the write descriptor cannot be made non-blocking.
    pub fn split(self, stops: &[Arc<Stop>]) -> io::Result<(Framed, Closer)> {
        sys::set_nonblocking(self.write.as_raw_fd(), true)?;
        let reader = StreamReader {
            file: File::from(self.read),
            stops: stops.to_vec(),
            deadline: None,
            idle: None,
            heard: Instant::now(),
        };
        let carrier = is_tcp(&self.write).then(|| Carrier {
            unsent: UNSENT_LOW_WATER_MIN,
            fitted: Instant::now(),
            sampled: Instant::now(),
            waited: false,
            last_wait: None,
            rtt: None,
            acked: ByteRate::default(),
            received: ByteRate::default(),
            pacer: Pacer::default(),
            bbr: socket2::SockRef::from(&self.write)
                .tcp_congestion()
                .is_ok_and(|alg| alg.starts_with(b"bbr\0") || alg == b"bbr"),
        });
        let writer = StreamWriter {
            file: File::from(self.write),
            stops: stops.to_vec(),
            deadline: None,
            stall: None,
            carrier,
        };
        let framed = Framed {
            // Small while the handshake runs (a server may have 64 of them);
            // grown to READ_BUFFER once the session is established.
            reader: FrameReader::with_capacity(reader, frame::MAX_WIRE),
            writer,
            scratch: Vec::new(),
            peer: self.peer,
        };
        Ok((framed, Closer { how: self.how }))
    }
}

/// Unsent bytes above which a TCP socket no longer polls writable: the relay
/// then drops new frames at the tunnel's ingress instead of queueing them,
/// so a saturated tunnel does not build seconds of delay. This is the most,
/// which a fast carrier reaches; the limit is [`UNSENT_TIME`] of the
/// carrier's delivery rate ([`StreamWriter::fit_to_carrier`]).
pub const UNSENT_LOW_WATER: u32 = 128 * 1024;
/// The least unsent limit, and the first: a dozen full-size segments, so
/// that the writer, woken late on a busy machine, still finds the carrier
/// with data to send. The limit starts low and rises when the writer waits
/// for a fast carrier: started at the most, a slow carrier (20 Mbit/s)
/// took a whole inner window unsent, 50 ms, and its writer never waited,
/// so neither the limit nor the pacing ceiling ever followed the link.
const UNSENT_LOW_WATER_MIN: u32 = 16 * 1024;
/// How long the carrier's unsent bytes take to leave at its delivery rate:
/// every frame waits that long behind them. Between 52 and 420 Mbit/s
/// neither bound binds and this is the limit: on the emulated 100 Mbit/s,
/// 10 ms link, 2.5 ms rather than 5 took about 3 ms off the ping's p50
/// under load (18.1-18.8 ms against 21.4-21.9 with GSO) and 2-4 ms off its
/// p99 with GSO, at the same goodput (docs/PERFORMANCE.md). Slower
/// carriers keep the floor, faster ones the ceiling.
const UNSENT_TIME: Duration = Duration::from_micros(2500);
/// How often the unsent limit follows the delivery rate, at most.
const UNSENT_REFIT: Duration = Duration::from_millis(100);
/// How often a backed-up writer reads the carrier's tcp_info, at most.
const CARRIER_SAMPLE: Duration = Duration::from_millis(5);

/// Sets the first TCP_NOTSENT_LOWAT (not TCP, or an old kernel: nothing
/// happens).
fn limit_unsent(socket: &impl AsRawFd) {
    if let Err(e) = sys::set_tcp_notsent_lowat(socket.as_raw_fd(), UNSENT_LOW_WATER_MIN) {
        log::debug!("TCP_NOTSENT_LOWAT not set: {e}");
    }
}

/// -i run by hand from a terminal, or with stdin at /dev/null or a file,
/// would wait for a handshake that cannot come and end as an
/// authentication failure: say what fd 0 is instead. Whoever starts -i
/// gives it a socket (inetd, xinetd, systemd) or a pipe (ssh, -x).
fn refuse_stdin_that_is_no_connection(fd: &OwnedFd) -> Result<(), Error> {
    use std::io::IsTerminal;
    use std::os::unix::fs::FileTypeExt;
    let kind = File::from(
        fd.try_clone()
            .map_err(|e| Error::io("-i: cannot look at fd 0", e))?,
    )
    .metadata()
    .map_err(|e| Error::io("-i: cannot look at fd 0", e))?
    .file_type();
    let what = if kind.is_socket() || kind.is_fifo() {
        return Ok(());
    } else if fd.is_terminal() {
        "a terminal"
    } else if kind.is_char_device() {
        "a character device such as /dev/null"
    } else if kind.is_file() {
        "a file"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "neither a socket nor a pipe"
    };
    Err(Error::Usage(format!(
        "-i: fd 0 is not a connection (it is {what}): -i is for inetd, xinetd, systemd \
         or ssh to start, with the connection as fds 0 and 1; to run a server, use -s"
    )))
}

/// Whether fd 2 is the same socket as fd 0 (inetd, xinetd): then nothing may
/// be written to it and the log goes to syslog.
pub fn stderr_is_stream() -> bool {
    sys::is_socket(0) && sys::same_file(0, 2)
}

/// A split stream with message framing: used by the handshake, then handed
/// to the relay with whatever it has already buffered.
pub struct Framed {
    pub reader: FrameReader<StreamReader>,
    pub writer: StreamWriter,
    scratch: Vec<u8>,
    /// The stream's peer, for the handshake's debug lines.
    peer: String,
}

impl MessageIo for Framed {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        // Prefix and message in one write: one segment on the wire.
        self.scratch.clear();
        frame::encode(msg, &mut self.scratch);
        self.writer.write_all(&self.scratch)
    }

    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        self.reader.next_message()
    }

    fn peek(&mut self) -> io::Result<&[u8]> {
        self.reader.fill_prefix()
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.reader.get_mut().set_deadline(deadline);
        self.writer.set_deadline(deadline);
    }
}

/// The first descriptor systemd passes (socket activation).
const LISTEN_FDS_START: RawFd = 3;

/// Claims what systemd passed (socket activation) and returns the listening
/// socket -s serves on, if any. Call it before taptun opens a descriptor of
/// its own: otherwise fd 3 may be one of ours, which would get two owners.
///
/// When LISTEN_PID names this process, each of the LISTEN_FDS descriptors
/// from fd 3 on is taken and made close-on-exec, so that no hook or -x
/// command inherits one. With `serve` (-s) all must be open and fd 3 must be
/// a listening TCP socket: it is returned, with `options` set on it; the
/// others are closed with a warning. Without (-c, -i) all are closed: none
/// is used (under systemd's Accept=yes, fd 3 is the connection -i already
/// has as fds 0 and 1).
///
/// # Errors
/// `Error::Usage`, naming the descriptor: LISTEN_FDS is not a number, a
/// descriptor is not open or fd 3 is not a listening TCP socket (-s), or
/// the mark cannot be set.
pub fn inherited_listener(
    env: &dyn Fn(&str) -> Option<String>,
    serve: bool,
    options: &SocketOptions,
) -> Result<Option<TcpListener>, Error> {
    let ours = env("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        return Ok(None);
    }
    let count = match env("LISTEN_FDS") {
        None => 0,
        Some(text) => text.parse::<u16>().map_err(|_| {
            Error::Usage(format!(
                "LISTEN_FDS=`{text}` is not a number of descriptors, and LISTEN_PID names \
                 taptun: start it from its .socket unit, or unset LISTEN_PID and LISTEN_FDS"
            ))
        })?,
    };
    // Every one is claimed before anything is logged: a first log line may
    // open the syslog socket, which must not land on a passed number.
    let mut passed = Vec::with_capacity(usize::from(count));
    let mut missing = None;
    for fd in (0..count).map(|i| LISTEN_FDS_START + RawFd::from(i)) {
        match sys::inherit_fd(fd) {
            Ok(owned) => passed.push(owned),
            Err(e) => {
                missing.get_or_insert((fd, e));
            }
        }
    }
    if !serve {
        if count > 0 {
            log::debug!(
                "closing the {} descriptors systemd passed (LISTEN_FDS={count}): only -s uses one",
                passed.len()
            );
        }
        return Ok(None);
    }
    if let Some((fd, e)) = missing {
        return Err(Error::Usage(format!(
            "fd {fd} from LISTEN_FDS is not open ({e}): LISTEN_PID and LISTEN_FDS={count} say \
             that systemd passed sockets from fd 3 on; start taptun from its .socket unit, \
             or unset LISTEN_PID and LISTEN_FDS to let it bind -p itself"
        )));
    }
    let mut passed = passed.into_iter();
    let Some(first) = passed.next() else {
        return Ok(None);
    };
    let listener = passed_listener(first)?;
    let extra = passed.len();
    drop(passed);
    if extra > 0 {
        log::warn!(
            "systemd passed {count} sockets (LISTEN_FDS); taptun serves on fd 3 and has closed \
             fds 4-{}: give the .socket unit one ListenStream=",
            LISTEN_FDS_START + RawFd::from(count) - 1
        );
    }
    if let Some(mark) = options.fwmark {
        mark_passed_listener(&listener, mark)?;
    }
    options.set_congestion(socket2::SockRef::from(&listener));
    Ok(Some(listener))
}

/// Fd 3 as the listening TCP socket it must be.
fn passed_listener(fd: OwnedFd) -> Result<TcpListener, Error> {
    let refuse = |why: String| {
        Error::Usage(format!(
            "fd 3 from LISTEN_FDS is not a listening TCP socket: {why}; give taptun -s a \
             .socket unit with ListenStream=PORT and without Accept=yes, or unset LISTEN_PID \
             and LISTEN_FDS to let it bind -p itself"
        ))
    };
    if !sys::is_socket(fd.as_raw_fd()) {
        return Err(refuse("it is not a socket".into()));
    }
    let socket = socket2::Socket::from(fd);
    let query = |e: io::Error| refuse(format!("cannot query it: {e}"));
    let domain = socket.domain().map_err(query)?;
    if domain != socket2::Domain::IPV4 && domain != socket2::Domain::IPV6 {
        return Err(refuse(format!("it is an {domain:?} socket")));
    }
    if socket.r#type().map_err(query)? != socket2::Type::STREAM {
        return Err(refuse("it is not a stream socket".into()));
    }
    if !socket.is_listener().map_err(query)? {
        return Err(refuse(
            "it is not listening (with Accept=yes systemd passes connections: run taptun -i for those)"
                .into(),
        ));
    }
    Ok(socket.into())
}

/// -F on the socket systemd passed: accepted connections inherit the mark.
fn mark_passed_listener(listener: &TcpListener, mark: u32) -> Result<(), Error> {
    let socket = socket2::SockRef::from(listener);
    if socket.mark().is_ok_and(|old| old == mark) {
        return Ok(());
    }
    socket.set_mark(mark).map_err(|e| {
        Error::Usage(format!(
            "-F: cannot set mark {mark} on the socket systemd passed (fd 3): {e}; setting a mark \
             needs CAP_NET_ADMIN (or CAP_NET_RAW from Linux 5.17): give the service \
             AmbientCapabilities=CAP_NET_ADMIN, or drop -F and set Mark={mark} in the .socket unit"
        ))
    })?;
    // The connection that made systemd start us may already be queued, and
    // the kernel marked it when it arrived.
    log::warn!(
        "-F: mark {mark} set on the socket systemd passed; connections queued before taptun \
         started are unmarked: set Mark={mark} in the .socket unit too"
    );
    Ok(())
}

/// Tells systemd (NOTIFY_SOCKET) that we are ready; nothing when unset.
pub fn notify_ready(env: &dyn Fn(&str) -> Option<String>) {
    let Some(path) = env("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(b"READY=1", &addr)
        }
        None => socket.send_to(b"READY=1", &path),
    });
    if let Err(e) = sent {
        log::warn!("cannot notify systemd through {path}: {e}");
    }
}

/// What the carrier's TCP sockets get: -F's mark and --congestion's
/// algorithm. Accepted connections inherit both from the listening socket.
#[derive(Debug, Default)]
pub struct SocketOptions {
    pub fwmark: Option<u32>,
    pub congestion: Option<String>,
    /// A refused algorithm is logged once, not at every reconnect.
    refused: AtomicBool,
}

impl SocketOptions {
    pub fn new(fwmark: Option<u32>, congestion: Option<String>) -> SocketOptions {
        SocketOptions {
            fwmark,
            congestion,
            refused: AtomicBool::new(false),
        }
    }

    /// Sets the mark (its failure is the caller's) and the congestion
    /// control, before the socket connects or listens so that even the SYN
    /// is routed by the mark and paced by the algorithm.
    fn apply(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        if let Some(mark) = self.fwmark {
            socket.set_mark(mark)?;
        }
        self.set_congestion(socket);
        Ok(())
    }

    /// Sets --congestion's algorithm; one that is refused is logged once
    /// and the system default kept: the tunnel works either way.
    fn set_congestion(&self, socket: socket2::SockRef<'_>) {
        let Some(alg) = &self.congestion else {
            return;
        };
        let Err(e) = socket.set_tcp_congestion(alg.as_bytes()) else {
            return;
        };
        if self.refused.swap(true, Ordering::Relaxed) {
            return;
        }
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => "it is not in net.ipv4.tcp_allowed_congestion_control, \
                 and only a process with CAP_NET_ADMIN may use another"
                .to_owned(),
            Some(libc::ENOENT) => "this kernel has no such algorithm \
                 (see net.ipv4.tcp_available_congestion_control; `modprobe tcp_NAME` may add it)"
                .to_owned(),
            _ => e.to_string(),
        };
        log::warn!(
            "--congestion {alg}: {why}; the carrier uses the system's default \
             (net.ipv4.tcp_congestion_control)"
        );
    }

    /// Sets the congestion control on the connection -i was handed, when it
    /// is a TCP socket (a pipe from ssh has none).
    pub fn apply_to_stdio(&self, stream: &Stream) {
        if self.congestion.is_some() && is_tcp(&stream.read) {
            self.set_congestion(socket2::SockRef::from(&stream.read));
        }
    }
}

/// Whether `fd` is a TCP socket.
fn is_tcp(fd: &OwnedFd) -> bool {
    sys::is_socket(fd.as_raw_fd())
        && socket2::SockRef::from(fd)
            .protocol()
            .is_ok_and(|p| p == Some(socket2::Protocol::TCP))
}

/// Binds the server's socket: all addresses, IPv6 and IPv4, unless `bind`
/// names one.
///
/// # Errors
/// `Error::Listen` naming the address.
pub fn listen(
    bind: Option<IpAddr>,
    port: u16,
    options: &SocketOptions,
) -> Result<TcpListener, Error> {
    let dual_stack = bind.is_none();
    let addr = SocketAddr::new(bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), port);
    match bind_socket(addr, dual_stack, options) {
        Ok(listener) => Ok(listener),
        // A host with IPv6 disabled: fall back to IPv4 only.
        Err(e) if dual_stack && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], port));
            bind_socket(v4, false, options).map_err(|source| Error::Listen {
                addr: v4.to_string(),
                source,
            })
        }
        Err(source) => Err(Error::Listen {
            addr: addr.to_string(),
            source,
        }),
    }
}

fn bind_socket(
    addr: SocketAddr,
    dual_stack: bool,
    options: &SocketOptions,
) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Accepted connections inherit the mark and the congestion control.
    options.apply(socket2::SockRef::from(&socket))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Accepts one connection, or returns `None` when a stop is set.
///
/// # Errors
/// accept(2)'s errors; the caller decides which are fatal.
pub fn accept(
    listener: &TcpListener,
    stops: &[&Stop],
) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        match sys::wait_readable(listener.as_fd().as_raw_fd(), stops, None)? {
            Wait::Stopped => return Ok(None),
            Wait::TimedOut => continue,
            Wait::Ready => {}
        }
        match listener.accept() {
            Ok(conn) => return Ok(Some(conn)),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long after starting a connect to one address the next address of the
/// same host is tried alongside it (RFC 8305's connection attempt delay).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// How long a -m host may stay silent before the next one is tried
/// alongside it: a slow but live primary that answers within this wins
/// over the backup.
pub const HOST_DELAY: Duration = Duration::from_secs(2);

/// `host:port`, an IPv6 address in brackets: for logs, CONNECT lines and
/// the start line.
pub fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// Dials the first of `hosts` that answers on `port`, each name resolved
/// afresh, until `deadline`.
///
/// Within one host, its addresses race as RFC 8305 (Happy Eyeballs) says:
/// IPv6 and IPv4 interleaved, each started [`ATTEMPT_DELAY`] after the
/// previous one (at once when the previous one failed). Across hosts, the
/// next one starts when the previous one failed or stayed silent for
/// [`HOST_DELAY`]; from then on the earlier hosts' attempts go on too and
/// whichever connection completes first wins. The losers are closed before
/// any byte is sent. A name is resolved on a thread of its own that is
/// abandoned when `stop` is set, so a hanging DNS server cannot hold a
/// signal up.
///
/// # Errors
/// `Error::Connect` naming a host with its last failure; `Ok(None)` when
/// `stop` was set.
pub fn connect(
    hosts: &[String],
    port: u16,
    options: &SocketOptions,
    deadline: Instant,
    stop: &Stop,
) -> Result<Option<(TcpStream, SocketAddr)>, Error> {
    let mut race: Vec<Host> = hosts
        .iter()
        .map(|host| Host {
            name: host_port(host, port),
            host: host.clone(),
            started: None,
            state: HostState::Waiting,
            last: None,
        })
        .collect();
    loop {
        if stop.is_set() {
            return Ok(None);
        }
        let now = Instant::now();
        if now >= deadline {
            let pending = race.iter().position(|h| !h.failed());
            let host = pending.or(race.len().checked_sub(1));
            return Err(match host.and_then(|i| race.get_mut(i)) {
                Some(h) => h.error(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
                None => Error::Usage("-c needs -m HOST".into()),
            });
        }
        let several = race.len() > 1;
        for i in 0..race.len() {
            let due = match i.checked_sub(1).and_then(|p| race.get(p)) {
                None => Some(now),
                Some(prev) => host_due(prev.started, prev.failed()),
            };
            if race[i].started.is_none() && due.is_some_and(|due| due <= now) {
                race[i].start(port);
            }
            race[i].advance(options, now, several);
        }
        if race.iter().all(Host::failed) {
            let last = race.pop().map(|mut h| {
                let source = h.last.take().unwrap_or_else(no_addresses);
                Error::Connect {
                    addr: h.name,
                    source,
                }
            });
            return Err(last.unwrap_or_else(|| Error::Usage("-c needs -m HOST".into())));
        }

        // Wait for a connect to finish, a lookup to answer, the next step
        // of the schedule, or the stop.
        let mut watch = vec![(stop.raw_fd(), sys::Interest::Read)];
        let mut wake = deadline;
        for (i, host) in race.iter().enumerate() {
            if host.started.is_none() {
                let due = i
                    .checked_sub(1)
                    .and_then(|p| race.get(p))
                    .and_then(|prev| host_due(prev.started, prev.failed()));
                wake = wake.min(due.unwrap_or(deadline));
            }
            match &host.state {
                HostState::Resolving { ready, .. } => {
                    watch.push((ready.raw_fd(), sys::Interest::Read));
                }
                HostState::Dialing {
                    queue,
                    attempts,
                    last_start,
                } => {
                    if !queue.is_empty() {
                        wake = wake.min(attempt_due(*last_start, attempts.len(), now));
                    }
                    for attempt in attempts {
                        watch.push((attempt.socket.as_raw_fd(), sys::Interest::Write));
                    }
                }
                HostState::Waiting | HostState::Failed => {}
            }
        }
        let ready = sys::poll_ready(&watch, Some(wake))
            .map_err(|source| Error::io("waiting for a connection", source))?;
        if ready.first() == Some(&true) {
            continue;
        }
        for host in &mut race {
            if let Some(won) = host.finished_attempt() {
                return Ok(Some(won));
            }
        }
    }
}

/// One -m host in the race.
struct Host {
    /// host:port, for the log and errors.
    name: String,
    host: String,
    /// When its lookup (or, for an address, its first connect) started.
    started: Option<Instant>,
    state: HostState,
    /// Its latest failure, for the error when every host failed.
    last: Option<io::Error>,
}

enum HostState {
    Waiting,
    /// The lookup thread sends its answer and then triggers `ready`.
    Resolving {
        answer: std::sync::mpsc::Receiver<io::Result<Vec<SocketAddr>>>,
        ready: Arc<Stop>,
    },
    Dialing {
        /// Addresses not tried yet, in the order they will be.
        queue: std::collections::VecDeque<SocketAddr>,
        /// Connects in progress.
        attempts: Vec<Attempt>,
        last_start: Option<Instant>,
    },
    Failed,
}

/// A non-blocking connect in progress.
struct Attempt {
    socket: socket2::Socket,
    addr: SocketAddr,
    /// For the debug log: how long the connect took.
    started: Instant,
}

impl Host {
    fn failed(&self) -> bool {
        matches!(self.state, HostState::Failed)
    }

    fn error(&mut self, source: io::Error) -> Error {
        Error::Connect {
            addr: self.name.clone(),
            source: self.last.take().unwrap_or(source),
        }
    }

    /// Starts the lookup (an address needs none).
    fn start(&mut self, port: u16) {
        self.started = Some(Instant::now());
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            self.state = HostState::Dialing {
                queue: [SocketAddr::new(ip, port)].into(),
                attempts: Vec::new(),
                last_start: None,
            };
            return;
        }
        let ready = match Stop::new() {
            Ok(stop) => Arc::new(stop),
            Err(e) => return self.fail(e),
        };
        let (tx, answer) = std::sync::mpsc::channel();
        log::debug!("{}: looking up", self.name);
        let (host, done) = (self.host.clone(), ready.clone());
        // Never joined: when the stop comes first, the process exits
        // without waiting for getaddrinfo.
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let result = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|addrs| addrs.collect());
                let _ = tx.send(result);
                done.trigger();
            });
        match spawned {
            Ok(_) => self.state = HostState::Resolving { answer, ready },
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.last = Some(e);
        self.state = HostState::Failed;
    }

    /// Takes a finished lookup and starts the connects that are due; marks
    /// the host failed when nothing is left to try.
    fn advance(&mut self, options: &SocketOptions, now: Instant, several: bool) {
        if let HostState::Resolving { answer, .. } = &self.state {
            match answer.try_recv() {
                Ok(Ok(addrs)) => {
                    log::debug!(
                        "{}: resolved to {addrs:?} in {:.0?}",
                        self.name,
                        self.started.map(|t| t.elapsed()).unwrap_or_default()
                    );
                    self.state = HostState::Dialing {
                        queue: interleave(addrs),
                        attempts: Vec::new(),
                        last_start: None,
                    };
                }
                Ok(Err(e)) => {
                    log::debug!("{}: lookup failed: {e}", self.name);
                    self.fail(e)
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.fail(io::Error::other("the lookup thread died"));
                }
            }
        }
        let HostState::Dialing {
            queue,
            attempts,
            last_start,
        } = &mut self.state
        else {
            return;
        };
        while attempt_due(*last_start, attempts.len(), now) <= now {
            let Some(addr) = queue.pop_front() else {
                break;
            };
            *last_start = Some(now);
            log::debug!("{addr}: connecting");
            match dial(addr, options) {
                Ok(socket) => attempts.push(Attempt {
                    socket,
                    addr,
                    started: now,
                }),
                Err(e) => {
                    log::debug!("{addr}: connect failed: {e}");
                    self.last = Some(e);
                }
            }
        }
        if queue.is_empty() && attempts.is_empty() {
            let last = self.last.get_or_insert_with(no_addresses);
            if several {
                log::warn!("cannot connect to {}: {last}", self.name);
            }
            self.state = HostState::Failed;
        }
    }

    /// A connect of this host's that succeeded; failed ones are dropped.
    fn finished_attempt(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let HostState::Dialing { attempts, .. } = &mut self.state else {
            return None;
        };
        let mut i = 0;
        while i < attempts.len() {
            let attempt = &attempts[i];
            let outcome = match attempt.socket.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                // Not finished yet: no error and no peer.
                Ok(None) if attempt.socket.peer_addr().is_err() => {
                    i += 1;
                    continue;
                }
                Ok(None) => attempt.socket.set_nonblocking(false),
            };
            let attempt = attempts.swap_remove(i);
            let took = attempt.started.elapsed();
            match outcome {
                Ok(()) => {
                    log::debug!("{}: connected in {took:.0?}", attempt.addr);
                    return Some((attempt.socket.into(), attempt.addr));
                }
                Err(e) => {
                    log::debug!("{}: connect failed after {took:.0?}: {e}", attempt.addr);
                    self.last = Some(e);
                }
            }
        }
        None
    }
}

fn no_addresses() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the name has no addresses")
}

/// The order addresses are tried in: IPv6 and IPv4 alternating, starting
/// with the family of the first address the resolver gave (RFC 8305 4),
/// each family in the resolver's order.
fn interleave(addrs: Vec<SocketAddr>) -> std::collections::VecDeque<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut v6, mut v4): (std::collections::VecDeque<_>, std::collections::VecDeque<_>) =
        addrs.into_iter().partition(SocketAddr::is_ipv6);
    let (first, second) = if first_v6 {
        (&mut v6, &mut v4)
    } else {
        (&mut v4, &mut v6)
    };
    let mut order = std::collections::VecDeque::with_capacity(first.len() + second.len());
    while !first.is_empty() || !second.is_empty() {
        order.extend(first.pop_front());
        order.extend(second.pop_front());
    }
    order
}

/// When the next address of a host is due: at once when none is in
/// progress (the first, or the previous ones failed), otherwise
/// [`ATTEMPT_DELAY`] after the latest start.
fn attempt_due(last_start: Option<Instant>, in_progress: usize, now: Instant) -> Instant {
    match last_start {
        Some(last) if in_progress > 0 => last + ATTEMPT_DELAY,
        _ => now,
    }
}

/// When the host after one that started at `started` is due: at once when
/// that one failed, [`HOST_DELAY`] after its start otherwise, never while it
/// has not started.
fn host_due(started: Option<Instant>, failed: bool) -> Option<Instant> {
    started.map(|started| {
        if failed {
            started
        } else {
            started + HOST_DELAY
        }
    })
}

/// Starts a non-blocking connect to `addr`.
fn dial(addr: SocketAddr, options: &SocketOptions) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    options.apply(socket2::SockRef::from(&socket))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_rate_is_the_higher_of_its_last_two_windows_of_a_round_trip() {
        let rtt = Duration::from_millis(40);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rate = ByteRate::default();
        // The kernel's figure until a window has passed, and without a count.
        assert_eq!(rate.rate(1000, rtt, ms(0), 7), 7);
        assert_eq!(rate.rate(2000, rtt, ms(20), 7), 7);
        assert_eq!(ByteRate::default().rate(0, rtt, ms(0), 7), 7);
        // 100 kB in 40 ms: 2.5 MB/s.
        assert_eq!(rate.rate(101_000, rtt, ms(40), 7), 2_500_000);
        // A stall: nothing acknowledged for a round trip. Not taken for
        // the link's rate while the window before it counts.
        assert_eq!(rate.rate(101_000, rtt, ms(80), 7), 2_500_000);
        // The burst that ends it.
        assert_eq!(rate.rate(301_000, rtt, ms(120), 7), 5_000_000);
        // Two windows at 1 MB/s: the rate falls to it.
        rate.rate(341_000, rtt, ms(160), 7);
        assert_eq!(rate.rate(381_000, rtt, ms(200), 7), 1_000_000);
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn unsent_limit_is_2_5_ms_of_the_delivery_rate_within_16_and_128_kib() {
        // 20 Mbit/s: 6.25 kB in 2.5 ms, below the floor.
        assert_eq!(unsent_for_rate(2_500_000), 16 * 1024);
        // 100 Mbit/s: 31.25 kB.
        assert_eq!(unsent_for_rate(12_500_000), 31_250);
        // 10 Gbit/s: the ceiling, as before the limit followed the rate.
        assert_eq!(unsent_for_rate(1_250_000_000), UNSENT_LOW_WATER);
        assert_eq!(unsent_for_rate(u64::MAX), UNSENT_LOW_WATER);
    }

    #[test]
    fn a_new_carriers_writer_leaves_no_more_than_the_least_unsent_limit_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        // A peer that does not read: once its window is full, whatever is
        // written stays unsent.
        socket2::SockRef::from(&receiver)
            .set_recv_buffer_size(4096)
            .unwrap();
        let stream = Stream::tcp(sender, "test".into()).unwrap();
        let (mut framed, _closer) = stream.split(&[]).unwrap();
        let writer = &mut framed.writer;
        // The limit a carrier starts with, until its writer has waited for
        // it and measured its rate.
        let limit = UNSENT_LOW_WATER_MIN;
        let chunk = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut most = 0;
        while Instant::now() < deadline {
            match writer.try_write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
            let unsent = sys::tcp_unsent_bytes(writer.raw_fd()).unwrap();
            most = most.max(unsent);
            if most > 0 && writer.try_write(&chunk).is_err() {
                break;
            }
        }
        assert!(most > 0, "nothing stayed unsent");
        assert!(
            most <= limit,
            "{most} bytes unsent, over the limit of {limit}"
        );
        drop(receiver);
    }

    #[test]
    fn happy_eyeballs_alternates_families_starting_with_the_resolvers_first() {
        let order = interleave(addrs(&[
            "[2001:db8::1]:1",
            "[2001:db8::2]:1",
            "[2001:db8::3]:1",
            "192.0.2.1:1",
            "192.0.2.2:1",
        ]));
        let expected = addrs(&[
            "[2001:db8::1]:1",
            "192.0.2.1:1",
            "[2001:db8::2]:1",
            "192.0.2.2:1",
            "[2001:db8::3]:1",
        ]);
        assert_eq!(Vec::from(order), expected);

        let order = interleave(addrs(&["192.0.2.1:1", "192.0.2.2:1", "[2001:db8::1]:1"]));
        let expected = addrs(&["192.0.2.1:1", "[2001:db8::1]:1", "192.0.2.2:1"]);
        assert_eq!(Vec::from(order), expected);
        assert!(interleave(Vec::new()).is_empty());
    }

    #[test]
    fn next_address_starts_250_ms_after_the_previous_or_at_once_when_none_is_in_progress() {
        let now = Instant::now();
        let earlier = now - Duration::from_millis(100);
        assert_eq!(attempt_due(None, 0, now), now, "the first starts at once");
        assert_eq!(attempt_due(Some(earlier), 1, now), earlier + ATTEMPT_DELAY);
        assert_eq!(
            attempt_due(Some(earlier), 0, now),
            now,
            "the previous one failed: the next starts at once"
        );
    }

    #[test]
    fn next_host_starts_after_2_s_of_silence_or_when_the_previous_failed() {
        let started = Instant::now();
        assert_eq!(
            host_due(None, false),
            None,
            "never before the previous started"
        );
        assert_eq!(host_due(Some(started), false), Some(started + HOST_DELAY));
        assert_eq!(host_due(Some(started), true), Some(started));
    }

    #[test]
    fn connect_falls_through_a_refused_host_to_a_listening_one_and_a_stop_ends_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Nothing listens on ::1 at that port (or there is no IPv6): refused.
        let hosts = ["::1".to_owned(), "127.0.0.1".to_owned()];
        let stop = Stop::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_, addr) = connect(&hosts, port, &SocketOptions::default(), deadline, &stop)
            .unwrap()
            .expect("connected");
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));

        stop.trigger();
        assert!(
            connect(&hosts, port, &SocketOptions::default(), deadline, &stop)
                .unwrap()
                .is_none()
        );
    }
}
