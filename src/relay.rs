//! The two directions of an established session, and the process's counters
//! with whether a session is up (the SIGUSR1 line).
//!
//! One thread per direction, blocking I/O:
//!
//! - device to stream: read a frame (the device is non-blocking; poll(2)
//!   only when it is empty), seal it with the next send nonce, and append
//!   prefix and ciphertext to one output buffer; frames already queued in the
//!   device join the same buffer, and the whole batch goes out in one write.
//!   While the stream is backed up, frames join a backlog in that buffer
//!   until its oldest byte has waited [`SOJOURN_TARGET`]; then bulk frames
//!   are dropped at the ingress on CoDel's schedule (counted), and all of
//!   them once it has waited [`BACKLOG_LIMIT`], so that the inner flows see
//!   the bottleneck and no standing queue builds here.
//! - stream to device: take the next message from the framed reader (one
//!   read fills a large buffer with many messages), open it, and write the
//!   frame to the device.
//!
//! Each thread owns one half of the session's [`Channel`], which holds the
//! protocol rules (nonces, framing, keepalives, header checks) and does no
//! I/O; the relay waits, batches, counts, and never drops what the channel
//! has sealed, so the peer's nonce counter stays in step. A message the
//! channel calls fatal ends the session; a frame the device refuses is
//! counted and dropped. Whichever direction ends first
//! triggers the session's stop and aborts the stream, which ends the other;
//! both are joined before [`relay`] returns.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) use crate::channel::{Channel, Framing};
use crate::channel::{OPEN_ROOM, Opened, Receiver, Sealed, Sender, Unsent};
use crate::device::PacketDevice;
use crate::frame::{self, FrameReader};
use crate::handshake::TAG_LEN;
use crate::stream_error::StreamEnd;
use crate::sys::{self, Interest, Stop, Wait, WaitAny};
use crate::transport::{Closer, Framed, StreamReader, StreamWriter};
use crate::vnet::{self, Reject};

/// The output buffer holds this many full-size messages; a batch is written
/// once no further full-size message is certain to fit.
const OUT_BUFFER_MESSAGES: usize = 4;

/// While the stream is backed up, frames up to this size (pings, TCP
/// acknowledgements, DNS, ARP) still join the backlog while it has room for
/// them; larger ones only while the drop schedule spares them, the oldest
/// byte waiting in the backlog has waited less than [`BACKLOG_LIMIT`], and
/// [`SMALL_FRAME_RESERVE`] stays free. Bulk flows then see drops (and slow
/// down) while interactive traffic and the acknowledgements of flows the
/// other way still get through.
const SMALL_FRAME: usize = 256;
/// Room in the output buffer kept for small frames.
const SMALL_FRAME_RESERVE: usize = 16 * 1024;
/// How long the backlog's oldest byte may wait for the carrier before bulk
/// frames are dropped at the ingress (CoDel's target, at the ingress since
/// sealed frames cannot be dropped). A time, not a size: a byte limit that
/// is 2 ms at 1 Gbit/s is 100 ms at 20 Mbit/s, and an inner TCP flow, which
/// sees no loss of its own on a carrier that hides the link's, fills it.
const SOJOURN_TARGET: Duration = Duration::from_millis(5);
/// CoDel's interval: while the backlog stays late, the n-th drop follows
/// the one before after this divided by the square root of n. One drop per
/// round trip is all an inner TCP flow needs to slow down; dropping every
/// bulk frame while late costs it whole windows and timeouts. On a carrier
/// whose round trip is longer, one and a half of its round trips (the
/// stall of a lost segment, which must not count as a standing queue).
const DROP_INTERVAL: Duration = Duration::from_millis(100);
/// Once the backlog's oldest byte has waited this long, every bulk frame is
/// dropped at the ingress until it has waited less: CoDel's schedule, one
/// drop after a whole interval then more often, cannot stop an inner flow's
/// slow start on a long path, which doubles its window every round trip
/// and fills the 256 KiB buffer (400 ms at 5 Mbit/s) before the first drop
/// reaches it. Measured on the emulated 5 Mbit/s, 120 ms link without its
/// loss: ping p99 under a new flow 406-428 ms without the limit, 225-256
/// with it, at the same goodput; on the 20 Mbit/s, 40 ms link with loss the
/// goodput and the p99 stayed as they were (docs/PERFORMANCE.md). Above 35
/// Mbit/s the buffer is shorter than this and its size binds first.
const BACKLOG_LIMIT: Duration = Duration::from_millis(60);
/// How many batches of the output buffer keep their own sealing time; the
/// newest absorbs any beyond (its time then errs on the old side).
const AGE_STAMPS: usize = 64;

/// After this long with nothing to carry, a direction gives the pages of its
/// buffers back (they are kept, and fill again under load): an idle session
/// then costs little more than its threads' stacks, as a hub with many
/// peers needs.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// Counters of a process: sessions, handshakes and traffic. The relay adds
/// to them as it goes; a session's own figures are the difference between
/// two [`Snapshot`]s.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sessions established.
    pub sessions: AtomicU64,
    /// Handshakes that failed.
    pub handshake_failures: AtomicU64,
    /// Keepalives sent.
    pub keepalives_out: AtomicU64,
    /// Frames read from the device while no session was up.
    pub dropped_no_session: AtomicU64,
    /// Frames dropped at the tunnel's ingress while the stream was backed up.
    pub dropped_backlog: AtomicU64,
    /// Frames read from the device and sent.
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames received and written to the device.
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Keepalives received.
    pub keepalives_in: AtomicU64,
    /// Frames from the device too large for one message.
    pub dropped_oversize: AtomicU64,
    /// Frames the device refused to take.
    pub dropped_device: AtomicU64,
    /// Super-frames from the device (queued before the offloads were turned
    /// off) that a peer without GSO cannot take.
    pub dropped_offload: AtomicU64,
    /// Frames from the peer whose virtio header failed the checks.
    pub dropped_invalid: AtomicU64,
    /// Whether a session is up (SIGUSR1 says it first).
    status: std::sync::Mutex<Status>,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The traffic counters now.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            frames_in: get(&self.frames_in),
            bytes_in: get(&self.bytes_in),
            frames_out: get(&self.frames_out),
            bytes_out: get(&self.bytes_out),
            dropped: get(&self.dropped_oversize)
                + get(&self.dropped_device)
                + get(&self.dropped_backlog)
                + get(&self.dropped_offload)
                + get(&self.dropped_invalid),
        }
    }

    /// A session starts relaying with `peer`, its handshake just done.
    pub fn session_up(&self, peer: &str) {
        let now = Instant::now();
        let mut status = self.status();
        status.up = Some((now, peer.to_owned()));
        status.last_handshake = Some(now);
    }

    /// The session relaying now, if any: since when, and with whom (the
    /// stream's peer: an address, or the -x command).
    pub fn session(&self) -> Option<(Instant, String)> {
        self.status().up.clone()
    }

    /// When the last session's handshake completed, if one ever did.
    pub fn last_handshake(&self) -> Option<Instant> {
        self.status().last_handshake
    }

    /// The session relaying ended, for the reason `end` gives.
    pub fn session_down(&self, end: &End) {
        let mut status = self.status();
        status.up = None;
        status.last_end = Some((Instant::now(), end.to_string()));
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a session is up now and the whole process's counters, in one
    /// line (for SIGUSR1): "session up 2m13s with PEER; counters: ..." or
    /// "no session, last ended 30s ago: REASON; counters: ...". "To peer" is
    /// what the device gave and the tunnel sent, "from peer" what arrived
    /// and was written to the device.
    pub fn process_line(&self, uptime: Duration) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let state = {
            let status = self.status();
            match (&status.up, &status.last_end) {
                (Some((since, peer)), _) => {
                    format!("session up {} with {peer}", short_duration(since.elapsed()))
                }
                (None, Some((at, why))) => format!(
                    "no session, last ended {} ago: {why}",
                    short_duration(at.elapsed())
                ),
                (None, None) => "no session yet".to_owned(),
            }
        };
        format!(
            "{state}; counters: sessions {}, handshake failures {}, \
             to peer {} frames/{} bytes, from peer {} frames/{} bytes, \
             dropped {} (oversize {}, refused by the device {}, stream backed up {}, no session {}, \
             super-frames for a peer without GSO {}, invalid virtio header {}), \
             keepalives sent {} received {}, uptime {} s",
            get(&self.sessions),
            get(&self.handshake_failures),
            get(&self.frames_out),
            get(&self.bytes_out),
            get(&self.frames_in),
            get(&self.bytes_in),
            self.snapshot().dropped + get(&self.dropped_no_session),
            get(&self.dropped_oversize),
            get(&self.dropped_device),
            get(&self.dropped_backlog),
            get(&self.dropped_no_session),
            get(&self.dropped_offload),
            get(&self.dropped_invalid),
            get(&self.keepalives_out),
            get(&self.keepalives_in),
            uptime.as_secs(),
        )
    }
}

/// Whether a session relays now, and how the last one ended: what SIGUSR1
/// reports first. Changed twice per session, never per frame.
#[derive(Debug, Default)]
pub struct Status {
    /// Since when, and with whom, a session relays.
    up: Option<(Instant, String)>,
    /// When the last session ended, and why.
    last_end: Option<(Instant, String)>,
    /// When the last handshake completed (`taptun status` shows its age).
    last_handshake: Option<Instant>,
}

/// "13s", "2m13s", "5h02m", "3d04h": short enough for a status line.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Traffic counters at one moment, to compute a session's share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub dropped: u64,
}

impl Snapshot {
    /// What happened since `earlier`, in one line.
    pub fn since(&self, earlier: &Snapshot) -> String {
        format!(
            "to peer {} frames/{} bytes, from peer {} frames/{} bytes, dropped {}",
            self.frames_out - earlier.frames_out,
            self.bytes_out - earlier.bytes_out,
            self.frames_in - earlier.frames_in,
            self.bytes_in - earlier.bytes_in,
            self.dropped - earlier.dropped,
        )
    }
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed the stream between messages.
    PeerClosed,
    /// We were asked to stop (a signal, or a new session replacing this one).
    Stopped,
    /// The stream failed.
    StreamError(io::Error),
    /// The peer broke the protocol: the text says how.
    Protocol(String),
    /// The device failed for reading.
    DeviceError(io::Error),
    /// The keepalive rules declared the peer dead: the text says which.
    Dead(String),
    /// The up hook failed: the session never relayed.
    HookFailed(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => f.write_str("the peer closed the connection"),
            End::Stopped => f.write_str("stopped"),
            End::StreamError(e) => write!(f, "connection failed: {e}"),
            End::Protocol(what) => write!(f, "protocol error: {what}"),
            End::DeviceError(e) => write!(f, "device read failed: {e}"),
            End::Dead(why) => write!(f, "the peer is dead: {why}"),
            End::HookFailed(why) => f.write_str(why),
        }
    }
}

/// A failed read or write, as the reason a session ended.
impl From<StreamEnd> for End {
    fn from(e: StreamEnd) -> End {
        match e {
            StreamEnd::Stopped => End::Stopped,
            StreamEnd::Closed => End::PeerClosed,
            StreamEnd::TimedOut(e) => End::Dead(e.to_string()),
            StreamEnd::Malformed(e) => End::Protocol(e.to_string()),
            StreamEnd::Other(e) => End::StreamError(e),
        }
    }
}

/// Relays until either direction ends; returns why.
///
/// `stop` is this session's own stop: triggering it from outside ends the
/// session with [`End::Stopped`]. The reader and writer must already watch
/// it; their idle and stall limits (set on `framed`) declare a dead peer.
/// A keepalive goes out after `keepalive` without sending anything.
pub fn relay<D: PacketDevice>(
    device: &D,
    framed: Framed,
    closer: &Closer,
    channel: Channel,
    keepalive: Option<Duration>,
    stop: &Arc<Stop>,
    counters: &Counters,
) -> End {
    let finish = |end: End| {
        stop.trigger();
        closer.abort();
        end
    };
    let Framed { reader, writer, .. } = framed;
    let Channel { sender, receiver } = channel;
    let (to_device, to_stream) = std::thread::scope(|scope| {
        let to_device =
            scope.spawn(|| finish(stream_to_device(device, reader, receiver, counters)));
        let to_stream = scope.spawn(|| {
            finish(device_to_stream(
                device, writer, sender, keepalive, stop, counters,
            ))
        });
        (to_device.join(), to_stream.join())
    });
    let to_device = to_device.unwrap_or(End::Protocol("relay thread panicked".into()));
    let to_stream = to_stream.unwrap_or(End::Protocol("relay thread panicked".into()));
    // The direction that ended first says why; the other merely saw the stop
    // or the abort that followed. A stop from outside leaves both Stopped.
    match (to_device, to_stream) {
        (End::Stopped, other) | (other, End::Stopped) if !matches!(other, End::Stopped) => other,
        (End::PeerClosed, _) => End::PeerClosed,
        (first, _) => first,
    }
}

fn stream_to_device<D: PacketDevice>(
    device: &D,
    mut reader: FrameReader<StreamReader>,
    mut receiver: Receiver,
    counters: &Counters,
) -> End {
    let mut plain = vec![0u8; OPEN_ROOM];
    // Whether the buffers gave their pages back since the last message.
    let mut released = false;
    loop {
        // A read that starts with nothing held gives up once the stream has
        // been quiet for IDLE_RELEASE, so that the pages can go back.
        let quiet = (!released && reader.is_empty()).then(|| Instant::now() + IDLE_RELEASE);
        reader.get_mut().set_deadline(quiet);
        let msg = match reader.next_message() {
            Ok(Some(msg)) => msg,
            Ok(None) => return End::PeerClosed,
            // Or the idle limit: then the next read says so at once.
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !released => {
                if let Some(buf) = reader.idle_buffer() {
                    sys::release_pages(buf);
                }
                sys::release_pages(&mut plain);
                released = true;
                continue;
            }
            Err(e) => return End::from(StreamEnd::from(e)),
        };
        released = false;
        let (len, bytes) = match receiver.open(msg, &mut plain) {
            Opened::Frame { len, bytes } => (len, bytes),
            Opened::Keepalive => {
                Counters::add(&counters.keepalives_in, 1);
                continue;
            }
            Opened::Drop(why) => {
                Counters::add(&counters.dropped_invalid, 1);
                log::debug!(
                    "dropped a message of {} bytes from the peer: {why}",
                    msg.len()
                );
                continue;
            }
            Opened::Fatal(why) => return End::Protocol(why.to_string()),
        };
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("stream -> device: {len} bytes");
        }
        match device.send(&plain[..len]) {
            Ok(_) => {
                Counters::add(&counters.frames_in, 1);
                Counters::add(&counters.bytes_in, bytes as u64);
            }
            Err(e) => {
                Counters::add(&counters.dropped_device, 1);
                log::debug!("the device refused a frame of {len} bytes: {e}");
            }
        }
    }
}

fn device_to_stream<D: PacketDevice>(
    device: &D,
    mut writer: StreamWriter,
    sender: Sender,
    keepalive: Option<Duration>,
    stop: &Stop,
    counters: &Counters,
) -> End {
    let mut sealer = Sealer { sender, counters };
    // One more byte than the largest frame, to tell an oversize frame apart.
    let mut packet = vec![0u8; frame::MAX_MESSAGE + 1];
    let mut out = vec![0u8; OUT_BUFFER_MESSAGES * frame::MAX_WIRE];
    // out[start..end]: sealed, not yet written. Sealed frames are never
    // dropped (the peer's nonce counter would fall out of step).
    let (mut start, mut end) = (0, 0);
    let mut ages = Ages::new();
    let mut dropper = Dropper::default();
    let mut last_send = Instant::now();
    let mut blocked_since: Option<Instant> = None;
    loop {
        if start == end {
            start = 0;
            dropper.drained();
            let keepalive_due = keepalive.map(|k| last_send + k);
            match gather(
                device,
                &mut sealer,
                &mut packet,
                &mut out,
                keepalive_due,
                stop,
            ) {
                Ok(used) => end = used,
                Err(why) => return why,
            }
            ages.sealed(end, Instant::now());
        }
        match writer.try_write(&out[start..end]) {
            Ok(n) => {
                start += n;
                ages.written(n);
                blocked_since = None;
                last_send = Instant::now();
                writer.fit_to_carrier(false);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // After a stop, the aborted stream's error is not the peer's doing.
            Err(_) if stop.is_set() => return End::Stopped,
            Err(e) => return End::from(StreamEnd::from(e)),
        }
        // The stream is backed up: wait for it, and meanwhile take frames
        // from the device into a backlog, dropping (counted) bulk frames once
        // it has kept them waiting, so that the inner TCP flows see the
        // bottleneck instead of a queue of their own making. The carrier's
        // rate is the link's now: the carrier is fitted to it.
        let since = *blocked_since.get_or_insert_with(Instant::now);
        writer.fit_to_carrier(true);
        let stall = writer.stall_limit();
        let watch = [
            (writer.raw_fd(), Interest::Write),
            (device.raw_fd(), Interest::Read),
        ];
        match sys::wait_any(&watch, &[stop], stall.map(|s| since + s)) {
            Ok(WaitAny::Ready(ready)) if ready & 2 != 0 => {
                out.copy_within(start..end, 0);
                (start, end) = (0, end - start);
                let now = Instant::now();
                let waited = ages.oldest().map_or(Duration::ZERO, |t| now - t);
                dropper.set_round_trip(writer.round_trip());
                let ingress = Ingress {
                    waited,
                    now,
                    dropper: &mut dropper,
                };
                match backlog(device, &mut sealer, &mut packet, &mut out, end, ingress) {
                    Ok(used) => {
                        ages.sealed(used - end, now);
                        end = used;
                    }
                    Err(why) => return why,
                }
            }
            Ok(WaitAny::Ready(_)) => {}
            Ok(WaitAny::Stopped) => return End::Stopped,
            Ok(WaitAny::TimedOut) => {
                let secs = stall.unwrap_or_default().as_secs();
                return End::Dead(format!("nothing could be written for {secs} s"));
            }
            Err(e) => return End::StreamError(e),
        }
    }
}

/// When the bytes waiting in the output buffer were sealed, by batch, so
/// that the backlog knows how long its oldest byte has waited. The stamps
/// are in a ring allocated once.
struct Ages {
    /// (bytes sealed in all, up to the end of a batch; when it was sealed),
    /// oldest first.
    stamps: std::collections::VecDeque<(u64, Instant)>,
    sealed: u64,
    written: u64,
}

impl Ages {
    fn new() -> Ages {
        Ages {
            stamps: std::collections::VecDeque::with_capacity(AGE_STAMPS),
            sealed: 0,
            written: 0,
        }
    }

    /// `bytes` more were sealed at `at`.
    fn sealed(&mut self, bytes: usize, at: Instant) {
        if bytes == 0 {
            return;
        }
        self.sealed += bytes as u64;
        let full = self.stamps.len() == AGE_STAMPS;
        match self.stamps.back_mut() {
            Some(newest) if full => newest.0 = self.sealed,
            _ => self.stamps.push_back((self.sealed, at)),
        }
    }

    /// `bytes` more went to the stream.
    fn written(&mut self, bytes: usize) {
        self.written += bytes as u64;
        while self
            .stamps
            .front()
            .is_some_and(|&(end, _)| end <= self.written)
        {
            self.stamps.pop_front();
        }
    }

    /// When the oldest byte not yet written was sealed.
    fn oldest(&self) -> Option<Instant> {
        self.stamps.front().map(|&(_, at)| at)
    }
}

/// The channel's sending half, counting what it seals and drops.
struct Sealer<'a> {
    sender: Sender,
    counters: &'a Counters,
}

impl Sealer<'_> {
    /// Seals a packet read from the device; returns the bytes used, 0 when
    /// the frame was dropped (counted).
    fn seal_frame(&mut self, packet: &mut [u8], out: &mut [u8]) -> usize {
        match self.sender.seal(packet, out) {
            Sealed::Message { used, bytes } => {
                Counters::add(&self.counters.frames_out, 1);
                Counters::add(&self.counters.bytes_out, bytes as u64);
                used
            }
            Sealed::Drop(Unsent::Offload(why)) => {
                Counters::add(&self.counters.dropped_offload, 1);
                if why != Reject::SuperFrame {
                    log::debug!("dropped a frame from the device: {why}");
                }
                0
            }
            Sealed::Drop(Unsent::Oversize) => {
                Counters::add(&self.counters.dropped_oversize, 1);
                log::debug!("dropped a frame of {} bytes from the device", packet.len());
                0
            }
        }
    }

    /// Seals a keepalive; returns the bytes used.
    fn keepalive(&mut self, out: &mut [u8]) -> usize {
        let used = self.sender.keepalive(out);
        if used > 0 {
            Counters::add(&self.counters.keepalives_out, 1);
        }
        used
    }
}

/// Reads one frame from the device (with its virtio header, if it has
/// them): `Ok(None)` when none is queued, and frames too large to carry are
/// dropped (counted) and skipped.
fn read_frame<D: PacketDevice>(device: &D, packet: &mut [u8]) -> Result<Option<usize>, End> {
    loop {
        match device.recv(packet) {
            Ok(0) => continue,
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(End::DeviceError(e)),
        }
    }
}

/// Waits for frames from the device (or the keepalive time) and seals what
/// is queued, as long as a full message fits; returns the bytes used. Once
/// idle for [`IDLE_RELEASE`], gives the pages of the buffers back.
fn gather<D: PacketDevice>(
    device: &D,
    sealer: &mut Sealer<'_>,
    packet: &mut [u8],
    out: &mut [u8],
    keepalive_due: Option<Instant>,
    stop: &Stop,
) -> Result<usize, End> {
    let mut used = 0;
    let mut dirty = true;
    while out.len() - used >= frame::MAX_WIRE {
        match read_frame(device, packet)? {
            Some(n) => used += sealer.seal_frame(&mut packet[..n], &mut out[used..]),
            None if used > 0 => break,
            None => {
                let release_due = dirty.then(|| Instant::now() + IDLE_RELEASE);
                let due = [keepalive_due, release_due].into_iter().flatten().min();
                match sys::wait_readable(device.raw_fd(), &[stop], due) {
                    Ok(Wait::Ready) => {}
                    Ok(Wait::Stopped) => return Err(End::Stopped),
                    // Idle for the keepalive interval: an empty message.
                    Ok(Wait::TimedOut) if due == keepalive_due => return Ok(sealer.keepalive(out)),
                    Ok(Wait::TimedOut) => {
                        sys::release_pages(packet);
                        sys::release_pages(out);
                        dirty = false;
                    }
                    Err(e) => return Err(End::DeviceError(e)),
                }
            }
        }
    }
    if log::log_enabled!(log::Level::Trace) {
        log::trace!("device -> stream: {used} bytes");
    }
    Ok(used)
}

/// How long the backlog's oldest byte has waited, and the drop schedule.
struct Ingress<'a> {
    waited: Duration,
    now: Instant,
    dropper: &'a mut Dropper,
}

/// CoDel's control law at the ingress: once the backlog has stayed late for
/// a whole [`DROP_INTERVAL`], one bulk frame is dropped, then the next after
/// [`DROP_INTERVAL`] / sqrt(n) (n drops so far), so the drops come faster
/// until the inner flows have slowed down enough; once the backlog is on
/// time again the count decays. A backlog late for less than an interval is
/// a burst, not a standing queue: a carrier that stalls for a round trip
/// while a lost segment is resent (head-of-line blocking, 1-2 times a
/// second at 0.1 % loss on a 20 Mbit/s link) then costs the inner flows
/// nothing, where a drop would halve their windows. (A burst that keeps the
/// oldest byte waiting [`BACKLOG_LIMIT`] is cut short at the ingress all
/// the same: see there.)
#[derive(Debug)]
struct Dropper {
    /// Drops in this late spell (or the last, if it ended recently).
    count: u32,
    /// No drop before this.
    next: Option<Instant>,
    /// Since when the backlog has been late.
    late_since: Option<Instant>,
    interval: Duration,
}

impl Default for Dropper {
    fn default() -> Dropper {
        Dropper {
            count: 0,
            next: None,
            late_since: None,
            interval: DROP_INTERVAL,
        }
    }
}

impl Dropper {
    /// Whether a bulk frame arriving at `now` is to be dropped.
    fn drop_now(&mut self, late: bool, now: Instant) -> bool {
        if !late {
            self.late_since = None;
            // A spell long over: start the next one gently.
            if self.next.is_some_and(|next| now > next + self.interval) {
                self.count = 0;
            }
            return false;
        }
        let since = *self.late_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.interval
            || self.next.is_some_and(|next| now < next)
        {
            return false;
        }
        self.count = self.count.saturating_add(1);
        self.next = Some(now + self.interval.div_f64(f64::from(self.count).sqrt()));
        true
    }

    /// The carrier's round trip, when known: the interval is at least one
    /// and a half of it.
    fn set_round_trip(&mut self, rtt: Option<Duration>) {
        self.interval = DROP_INTERVAL.max(rtt.unwrap_or_default() * 3 / 2);
    }

    /// The output buffer is empty: whatever was late has gone.
    fn drained(&mut self) {
        self.late_since = None;
    }
}

/// While the stream is backed up: takes what the device has queued into the
/// backlog behind `used` bytes, and drops (counted) what may not join it:
/// a bulk frame when the ingress's drop schedule says so, when the backlog
/// has waited [`BACKLOG_LIMIT`] or when it would leave less than
/// [`SMALL_FRAME_RESERVE`] free, small frames only once the output buffer
/// is full. Returns the bytes used.
fn backlog<D: PacketDevice>(
    device: &D,
    sealer: &mut Sealer<'_>,
    packet: &mut [u8],
    out: &mut [u8],
    mut used: usize,
    ingress: Ingress<'_>,
) -> Result<usize, End> {
    while let Some(n) = read_frame(device, packet)? {
        // At most n bytes of plaintext (less once a virtio header is stripped).
        let need = frame::HEADER_LEN + n + TAG_LEN;
        let small = n <= SMALL_FRAME + vnet::HDR_LEN;
        let reserve = if small { 0 } else { SMALL_FRAME_RESERVE };
        let late = ingress.waited > SOJOURN_TARGET;
        let dropped = !small
            && (ingress.waited > BACKLOG_LIMIT || ingress.dropper.drop_now(late, ingress.now));
        if !dropped && out.len() - used >= need + reserve {
            used += sealer.seal_frame(&mut packet[..n], &mut out[used..]);
        } else {
            Counters::add(&sealer.counters.dropped_backlog, 1);
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::time::Duration;

    use crate::device::MAX_FRAME;
    use crate::handshake::{Cipher, Transport};
    use crate::transport::Stream;

    /// Two transports as after a real handshake (initiator, responder).
    fn transports() -> (Arc<Transport>, Arc<Transport>) {
        let ((ti, _), (tr, _)) = crate::handshake::in_memory(Cipher::ChaChaPoly);
        (Arc::new(ti), Arc::new(tr))
    }

    /// A datagram socket as a device, with or without virtio headers.
    struct FakeDevice {
        socket: UnixDatagram,
        vnet: bool,
    }

    impl PacketDevice for FakeDevice {
        fn raw_fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.socket)
        }
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.socket.recv(buf)
        }
        fn send(&self, packet: &[u8]) -> io::Result<usize> {
            self.socket.send(packet)
        }
        fn vnet_hdr(&self) -> bool {
            self.vnet
        }
    }

    /// One end: a fake device (a datagram pair: `outside` is the kernel's
    /// side) relaying over `stream`.
    struct Side {
        device: FakeDevice,
        outside: UnixDatagram,
        stop: Arc<Stop>,
        counters: Counters,
        framing: Framing,
    }

    fn end() -> Side {
        end_with(Framing::Plain)
    }

    fn end_with(framing: Framing) -> Side {
        let (device, outside) = UnixDatagram::pair().unwrap();
        device.set_nonblocking(true).unwrap();
        outside
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Side {
            device: FakeDevice {
                socket: device,
                vnet: framing != Framing::Plain,
            },
            outside,
            stop: Arc::new(Stop::new().unwrap()),
            counters: Counters::default(),
            framing,
        }
    }

    fn run(end: &Side, stream: UnixStream, transport: &Arc<Transport>) -> End {
        let stream = Stream::socket(stream.into(), "test".into()).unwrap();
        let (framed, closer) = stream.split(std::slice::from_ref(&end.stop)).unwrap();
        let kind = vnet::Kind::Ethernet;
        let channel = Channel::resume(transport.clone(), 0, 0, end.framing, kind);
        relay(
            &end.device,
            framed,
            &closer,
            channel,
            None,
            &end.stop,
            &end.counters,
        )
    }

    #[test]
    fn frames_cross_unchanged_in_order_and_eof_stops_both_directions() {
        let (ti, tr) = transports();
        let (sa, sb) = UnixStream::pair().unwrap();
        let (a, b) = (end(), end());
        let sizes = [1usize, 60, 1514, 9000, MAX_FRAME, 2, 64000];
        std::thread::scope(|s| {
            let ra = s.spawn(|| run(&a, sa, &ti));
            let rb = s.spawn(|| run(&b, sb, &tr));
            let mut got = vec![0u8; 70000];
            for (i, &size) in sizes.iter().enumerate() {
                let frame: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
                a.outside.send(&frame).unwrap();
                let n = b.outside.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &frame[..], "frame {i} of {size} bytes, a to b");
                b.outside.send(&frame).unwrap();
                let n = a.outside.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &frame[..], "frame {i} of {size} bytes, b to a");
            }
            // An oversize frame is dropped before sealing; the next one still
            // arrives, so the nonces stayed in step.
            a.outside.send(&vec![7u8; MAX_FRAME + 1]).unwrap();
            a.outside.send(b"after").unwrap();
            let n = b.outside.recv(&mut got).unwrap();
            assert_eq!(&got[..n], b"after");
            assert_eq!(a.counters.dropped_oversize.load(Ordering::Relaxed), 1);
            // Stopping one end closes its stream: the other sees the peer close.
            a.stop.trigger();
            assert!(matches!(ra.join().unwrap(), End::Stopped));
            assert!(matches!(rb.join().unwrap(), End::PeerClosed));
        });
        assert_eq!(
            b.counters.frames_in.load(Ordering::Relaxed),
            sizes.len() as u64 + 1
        );
    }

    #[test]
    fn a_burst_is_batched_and_stays_ordered() {
        let (ti, tr) = transports();
        let (sa, sb) = UnixStream::pair().unwrap();
        let (a, b) = (end(), end());
        std::thread::scope(|s| {
            let ra = s.spawn(|| run(&a, sa, &ti));
            let rb = s.spawn(|| run(&b, sb, &tr));
            for i in 0..200u32 {
                a.outside.send(&i.to_be_bytes()).unwrap();
            }
            let mut got = [0u8; 16];
            for i in 0..200u32 {
                let n = b.outside.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &i.to_be_bytes());
            }
            b.stop.trigger();
            assert!(matches!(rb.join().unwrap(), End::Stopped));
            assert!(matches!(ra.join().unwrap(), End::PeerClosed));
        });
    }

    #[test]
    fn tampered_message_ends_the_session_and_injects_nothing() {
        let (ti, tr) = transports();
        let (sa, mut wire) = UnixStream::pair().unwrap();
        let b = end();
        // A valid message from the initiator, then a copy with a flipped bit.
        let mut sealed = vec![0u8; 100];
        let n = ti.seal(0, b"good", &mut sealed).unwrap();
        let mut bytes = Vec::new();
        frame::encode(&sealed[..n], &mut bytes);
        let n = ti.seal(1, b"evil", &mut sealed).unwrap();
        sealed[5] ^= 1;
        frame::encode(&sealed[..n], &mut bytes);
        wire.write_all(&bytes).unwrap();
        let result = run(&b, sa, &tr);
        assert!(matches!(result, End::Protocol(_)), "{result}");
        let mut got = [0u8; 16];
        let n = b.outside.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"good");
        b.outside.set_nonblocking(true).unwrap();
        assert!(
            b.outside.recv(&mut got).is_err(),
            "nothing after the tampered message"
        );
    }

    #[test]
    fn short_message_and_zero_length_end_the_session() {
        let (_, tr) = transports();
        for bytes in [&[0u8, 3, 1, 2, 3][..], &[0, 0][..]] {
            let (sa, mut wire) = UnixStream::pair().unwrap();
            wire.write_all(bytes).unwrap();
            let b = end();
            assert!(matches!(run(&b, sa, &tr), End::Protocol(_)));
            assert_eq!(b.counters.frames_in.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_silent_peer_is_dead_once_the_idle_limit_has_passed_since_its_last_message() {
        let (ti, tr) = transports();
        let (sa, mut wire) = UnixStream::pair().unwrap();
        let b = end();
        let stream = Stream::socket(sa.into(), "test".into()).unwrap();
        let (mut framed, closer) = stream.split(std::slice::from_ref(&b.stop)).unwrap();
        let limit = Duration::from_millis(1500);
        framed.reader.get_mut().set_idle_limit(Some(limit));
        let mut sealed = vec![0u8; 100];
        let n = ti.seal(0, b"last words", &mut sealed).unwrap();
        let mut bytes = Vec::new();
        frame::encode(&sealed[..n], &mut bytes);
        wire.write_all(&bytes).unwrap();
        let channel = Channel::resume(tr, 0, 0, Framing::Plain, vnet::Kind::Ethernet);
        let start = Instant::now();
        let end = relay(
            &b.device,
            framed,
            &closer,
            channel,
            None,
            &b.stop,
            &b.counters,
        );
        let took = start.elapsed();
        assert!(matches!(end, End::Dead(_)), "{end}");
        // Waiting for the stream to go idle (to give the buffers back) does
        // not add to the limit.
        assert!(
            took >= limit && took < limit + IDLE_RELEASE / 2,
            "declared dead after {took:?}"
        );
        assert_eq!(b.counters.frames_in.load(Ordering::Relaxed), 1);
        drop(wire);
    }

    #[test]
    fn replayed_message_does_not_decrypt() {
        let (ti, tr) = transports();
        let (sa, mut wire) = UnixStream::pair().unwrap();
        let mut sealed = vec![0u8; 100];
        let n = ti.seal(0, b"once", &mut sealed).unwrap();
        let mut bytes = Vec::new();
        frame::encode(&sealed[..n], &mut bytes);
        bytes.extend_from_slice(&bytes.clone());
        wire.write_all(&bytes).unwrap();
        let b = end();
        assert!(matches!(run(&b, sa, &tr), End::Protocol(_)));
        assert_eq!(b.counters.frames_in.load(Ordering::Relaxed), 1);
    }

    /// Polls `done` for up to 5 s.
    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[test]
    fn a_stream_that_does_not_read_makes_frames_drop_whole_at_the_ingress() {
        let (ti, tr) = transports();
        let (sa, sb) = UnixStream::pair().unwrap();
        let a = end();
        std::thread::scope(|s| {
            let ra = s.spawn(|| run(&a, sa, &ti));
            // Nobody reads `sb` yet: the stream backs up, and the device
            // must still be read, the excess dropped and counted.
            let frame = [0x5au8; 1400];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while a.counters.dropped_backlog.load(Ordering::Relaxed) == 0 {
                assert!(std::time::Instant::now() < deadline, "nothing was dropped");
                a.outside.send(&frame).unwrap();
            }
            // A small frame (a ping, an acknowledgement) still gets in: the
            // backlog keeps room for those; a large one after it does not.
            let sealed = a.counters.frames_out.load(Ordering::Relaxed);
            a.outside.send(b"small").unwrap();
            let took_small = wait_until(|| a.counters.frames_out.load(Ordering::Relaxed) > sealed);
            assert!(took_small, "the small frame was not taken into the backlog");
            let dropped = a.counters.dropped_backlog.load(Ordering::Relaxed);
            a.outside.send(&frame).unwrap();
            assert!(wait_until(|| a
                .counters
                .dropped_backlog
                .load(Ordering::Relaxed)
                > dropped));
            let sent = a.counters.frames_out.load(Ordering::Relaxed);
            assert_eq!(sent, sealed + 1);
            // Everything that was sealed arrives whole, in nonce order.
            let mut reader = FrameReader::new(sb);
            let mut plain = vec![0u8; 2048];
            for nonce in 0..sent {
                let msg = reader.next_message().unwrap().unwrap();
                let n = tr.open(nonce, msg, &mut plain).unwrap();
                let want: &[u8] = if nonce + 1 == sent { b"small" } else { &frame };
                assert_eq!(&plain[..n], want, "message {nonce}");
            }
            a.stop.trigger();
            assert!(matches!(ra.join().unwrap(), End::Stopped));
        });
    }

    /// A GSO super-frame of `len` bytes (an IPv4 TCP packet in an Ethernet
    /// frame) as the kernel hands it over: header, then frame.
    fn super_frame(len: usize) -> Vec<u8> {
        vnet::tcp_super_frame(vnet::Kind::Ethernet, false, 0, len - 54)
    }

    #[test]
    fn gso_framing_carries_headers_whole_and_drops_invalid_ones_from_the_peer() {
        let (ti, tr) = transports();
        let (sa, sb) = UnixStream::pair().unwrap();
        let (a, b) = (end_with(Framing::Gso), end_with(Framing::Gso));
        std::thread::scope(|s| {
            let ra = s.spawn(|| run(&a, sa, &ti));
            let rb = s.spawn(|| run(&b, sb, &tr));
            let mut got = vec![0u8; 70000];
            let big = super_frame(MAX_FRAME);
            a.outside.send(&big).unwrap();
            let n = b.outside.recv(&mut got).unwrap();
            assert_eq!(&got[..n], &big[..], "a super-frame of the largest size");
            // An unknown GSO type is sealed as it is, and refused by the
            // receiver before its device sees it; the next frame still
            // arrives (the nonces stayed in step).
            let mut bad = super_frame(3000);
            bad[1] = 3;
            a.outside.send(&bad).unwrap();
            let plain = [vnet::Header::default().encode().to_vec(), b"after".to_vec()].concat();
            a.outside.send(&plain).unwrap();
            let n = b.outside.recv(&mut got).unwrap();
            assert_eq!(&got[..n], &plain[..]);
            assert_eq!(b.counters.dropped_invalid.load(Ordering::Relaxed), 1);
            a.stop.trigger();
            assert!(matches!(ra.join().unwrap(), End::Stopped));
            assert!(matches!(rb.join().unwrap(), End::PeerClosed));
        });
        // Only once the relay has ended: it counts a frame after the device
        // took it, so the count may still lag the frame just received.
        assert_eq!(
            b.counters.bytes_in.load(Ordering::Relaxed),
            MAX_FRAME as u64 + 5
        );
    }

    #[test]
    fn strip_framing_completes_checksums_drops_super_frames_and_adds_zero_headers() {
        let (ti, tr) = transports();
        let (sa, sb) = UnixStream::pair().unwrap();
        // `a` has virtio headers, its peer `b` none.
        let (a, b) = (end_with(Framing::Strip), end());
        std::thread::scope(|s| {
            let ra = s.spawn(|| run(&a, sa, &ti));
            let rb = s.spawn(|| run(&b, sb, &tr));
            let mut got = vec![0u8; 70000];
            // A super-frame queued before the offloads went off: dropped.
            a.outside.send(&super_frame(20000)).unwrap();
            let (partial, full) = vnet::udp_frame(b"checksum me");
            let h = vnet::Header {
                flags: vnet::F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..vnet::Header::default()
            };
            a.outside
                .send(&[h.encode().to_vec(), partial].concat())
                .unwrap();
            let n = b.outside.recv(&mut got).unwrap();
            assert_eq!(
                &got[..n],
                &full[..],
                "the checksum completed, the header gone"
            );
            assert_eq!(a.counters.dropped_offload.load(Ordering::Relaxed), 1);
            b.outside.send(b"plain frame").unwrap();
            let n = a.outside.recv(&mut got).unwrap();
            assert_eq!(&got[..vnet::HDR_LEN], &[0u8; vnet::HDR_LEN]);
            assert_eq!(&got[vnet::HDR_LEN..n], b"plain frame");
            b.stop.trigger();
            assert!(matches!(rb.join().unwrap(), End::Stopped));
            assert!(matches!(ra.join().unwrap(), End::PeerClosed));
        });
    }

    #[test]
    fn a_backlog_late_for_an_interval_drops_one_bulk_frame_then_more_often_while_it_stays_late() {
        let mut d = Dropper::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert!(!d.drop_now(false, t0), "on time: nothing dropped");
        assert!(
            !d.drop_now(true, t0),
            "late for less than an interval: a burst"
        );
        assert!(!d.drop_now(true, ms(99)));
        assert!(d.drop_now(true, ms(100)), "late for an interval: the first");
        assert!(!d.drop_now(true, ms(101)), "then no more for an interval");
        assert!(!d.drop_now(true, ms(199)));
        assert!(d.drop_now(true, ms(200)), "the second after the interval");
        // The third after 100 / sqrt(2) ms.
        assert!(!d.drop_now(true, ms(270)));
        assert!(d.drop_now(true, ms(271)));
        assert_eq!(d.count, 3);
        // On time again: nothing dropped, and a long pause starts the count over.
        assert!(!d.drop_now(false, ms(300)));
        assert_eq!(d.count, 3, "a short pause keeps the count");
        assert!(!d.drop_now(false, ms(500)));
        assert_eq!(d.count, 0);
        assert!(
            !d.drop_now(true, ms(501)),
            "a new late spell waits its interval"
        );
        assert!(d.drop_now(true, ms(601)));
        assert!(!d.drop_now(true, ms(650)), "the interval is whole again");
    }

    #[test]
    fn a_backlog_that_waited_its_limit_drops_every_bulk_frame_but_takes_small_ones() {
        let (ti, _) = transports();
        let side = end();
        let channel = Channel::resume(ti, 0, 0, Framing::Plain, vnet::Kind::Ethernet);
        let mut sealer = Sealer {
            sender: channel.sender,
            counters: &side.counters,
        };
        let mut packet = vec![0u8; frame::MAX_MESSAGE + 1];
        let mut out = vec![0u8; OUT_BUFFER_MESSAGES * frame::MAX_WIRE];
        let mut dropper = Dropper::default();
        let now = Instant::now();
        let mut three_bulk_and_a_ping = |waited: Duration| {
            for _ in 0..3 {
                side.outside.send(&[0x5a; 1400]).unwrap();
            }
            side.outside.send(b"small").unwrap();
            let ingress = Ingress {
                waited,
                now,
                dropper: &mut dropper,
            };
            let (device, out) = (&side.device, &mut out);
            backlog(device, &mut sealer, &mut packet, out, 0, ingress).unwrap();
            let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
            (
                count(&side.counters.frames_out),
                count(&side.counters.dropped_backlog),
            )
        };
        // Late, but for less than an interval and under the limit: a burst.
        let under = BACKLOG_LIMIT - Duration::from_millis(1);
        assert_eq!(three_bulk_and_a_ping(under), (4, 0));
        // At once over the limit, however short the late spell.
        let over = BACKLOG_LIMIT + Duration::from_millis(1);
        assert_eq!(three_bulk_and_a_ping(over), (5, 3), "only the ping joins");
    }

    #[test]
    fn a_stall_shorter_than_an_interval_drops_nothing_even_when_it_recurs() {
        let mut d = Dropper::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // A carrier that stalls for 60-90 ms a round trip after each lost segment.
        for stall in 0..10 {
            let begin = stall * 300;
            for late in (0..90).step_by(10) {
                assert!(
                    !d.drop_now(true, ms(begin + late)),
                    "stall {stall}, {late} ms late"
                );
            }
            d.drained();
        }
        assert_eq!(d.count, 0);
    }

    #[test]
    fn the_interval_covers_a_long_carriers_round_trip_and_a_half() {
        let mut d = Dropper::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        d.set_round_trip(Some(Duration::from_millis(40)));
        assert_eq!(d.interval, DROP_INTERVAL);
        d.set_round_trip(Some(Duration::from_millis(120)));
        assert!(!d.drop_now(true, t0));
        assert!(!d.drop_now(true, ms(179)), "a 120 ms carrier's stall");
        assert!(d.drop_now(true, ms(180)));
    }

    #[test]
    fn ages_name_the_sealing_time_of_the_oldest_unwritten_byte() {
        let mut ages = Ages::new();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(ages.oldest(), None);
        ages.sealed(100, ms(0));
        ages.sealed(0, ms(1));
        ages.sealed(50, ms(2));
        ages.written(99);
        assert_eq!(ages.oldest(), Some(ms(0)));
        ages.written(1);
        assert_eq!(ages.oldest(), Some(ms(2)));
        ages.written(50);
        assert_eq!(ages.oldest(), None);
        // More batches than stamps: the newest stamp takes the rest.
        for i in 0..AGE_STAMPS as u64 + 10 {
            ages.sealed(10, ms(10 + i));
        }
        assert_eq!(ages.stamps.len(), AGE_STAMPS);
        ages.written(10 * (AGE_STAMPS - 1));
        assert_eq!(ages.oldest(), Some(ms(10 + AGE_STAMPS as u64 - 1)));
        ages.written(10 * 11);
        assert_eq!(ages.oldest(), None);
    }

    #[test]
    fn status_line_starts_with_the_session_state_and_names_directions() {
        let c = Counters::default();
        Counters::add(&c.frames_out, 12);
        Counters::add(&c.bytes_out, 1234);
        Counters::add(&c.frames_in, 10);
        Counters::add(&c.bytes_in, 1100);
        let line = c.process_line(Duration::from_secs(7));
        assert!(line.starts_with("no session yet; counters: "), "{line}");
        assert!(
            line.contains("to peer 12 frames/1234 bytes, from peer 10 frames/1100 bytes"),
            "{line}"
        );
        assert!(line.ends_with("uptime 7 s"), "{line}");

        c.session_up("10.0.0.2:41234");
        let line = c.process_line(Duration::ZERO);
        assert!(
            line.starts_with("session up 0s with 10.0.0.2:41234; counters: "),
            "{line}"
        );

        c.session_down(&End::PeerClosed);
        let line = c.process_line(Duration::ZERO);
        assert!(
            line.starts_with("no session, last ended 0s ago: the peer closed the connection; "),
            "{line}"
        );
    }

    #[test]
    fn short_durations_keep_two_units() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (133, "2m13s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (86399, "23h59m"),
            (86400, "1d00h"),
            (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        ];
        for (secs, text) in cases {
            assert_eq!(short_duration(Duration::from_secs(secs)), text, "{secs} s");
        }
    }
}
