//! Logging: env_logger on stderr, or syslog when stderr is the tunnel's own
//! socket (inetd and xinetd hand the socket over as fds 0, 1 and 2).
//!
//! Default: informational lines from taptun (a line per session start and
//! end, every warning and error), warnings from libraries. Each -v adds
//! detail; RUST_LOG, when set, replaces the default filter entirely (an
//! invalid one is logged and ignored).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    /// The local syslog socket, /dev/log; lines are dropped when nothing
    /// listens there, never written anywhere else.
    Syslog,
}

/// The default filter for a number of -v.
pub fn default_filter(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "warn,taptun=info",
        1 => "warn,taptun=debug",
        _ => "info,taptun=trace",
    }
}

/// Sets up the logger. Calling it twice keeps the first.
pub fn init(verbosity: u8, sink: Sink) {
    // RUST_LOG is checked here, not by env_logger: its parser prints what it
    // refuses straight to fd 2, which under inetd is the peer's socket.
    let from_env = std::env::var("RUST_LOG").ok();
    let refused = from_env
        .as_deref()
        .and_then(|spec| env_filter::Builder::new().try_parse(spec).err());
    let filter = match (&from_env, &refused) {
        (Some(spec), None) => spec.as_str(),
        _ => default_filter(verbosity),
    };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    if sink == Sink::Syslog {
        let pid = std::process::id();
        builder
            .format(move |buf, record| {
                writeln!(
                    buf,
                    "<{}>taptun[{pid}]: {}",
                    priority(record.level()),
                    record.args()
                )
            })
            .target(env_logger::Target::Pipe(Box::new(SyslogWriter::new())));
    }
    let _ = builder.try_init();
    if let (Some(spec), Some(why)) = (from_env, refused) {
        log::warn!("RUST_LOG `{spec}` is not a logging filter ({why}); using -v's default");
    }
}

/// Facility daemon (3) and the level's severity.
fn priority(level: log::Level) -> u8 {
    let severity = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    3 * 8 + severity
}

/// Sends each record (env_logger writes one record per call) as a datagram,
/// never waiting: when syslogd does not read and its socket's queue is full,
/// a line is dropped rather than stalling the thread that logs (every -i
/// process would otherwise stop at its next line), and the next line that
/// gets through is preceded by how many were dropped.
struct SyslogWriter {
    path: &'static str,
    socket: Option<UnixDatagram>,
    dropped: u64,
}

impl SyslogWriter {
    fn new() -> SyslogWriter {
        SyslogWriter {
            path: "/dev/log",
            socket: None,
            dropped: 0,
        }
    }

    /// Sends one datagram; false when it was dropped.
    fn send(&mut self, line: &[u8]) -> bool {
        if self.socket.is_none() {
            self.socket = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect(self.path).is_ok() && s.set_nonblocking(true).is_ok());
        }
        let Some(socket) = &self.socket else {
            return false;
        };
        match socket.send(line) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                // syslogd may have restarted: reconnect on the next line.
                self.socket = None;
                false
            }
        }
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        if self.dropped > 0 {
            let notice = format!(
                "<{}>taptun[{}]: {} log lines dropped: syslog did not read them in time",
                priority(log::Level::Warn),
                std::process::id(),
                self.dropped
            );
            if self.send(notice.as_bytes()) {
                self.dropped = 0;
            } else {
                self.dropped += 1;
                return Ok(buf.len());
            }
        }
        if !self.send(line) {
            self.dropped += 1;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_syslog_that_does_not_read_costs_lines_not_a_stalled_thread() {
        let dir = std::env::temp_dir().join(format!("taptun-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let syslog = UnixDatagram::bind(&path).unwrap();
        let path: &'static str = Box::leak(path.to_str().unwrap().to_owned().into_boxed_str());
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut writer = SyslogWriter {
                path,
                socket: None,
                dropped: 0,
            };
            // Far more than the socket's queue (10 datagrams by default).
            // One write per record, as env_logger does.
            for i in 0..1000 {
                let line = format!("<30>taptun[1]: line {i}\n");
                writer.write_all(line.as_bytes()).unwrap();
            }
            let _ = done.send(writer);
        });
        let mut writer = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("logging stalled on a syslog that does not read");
        assert!(writer.dropped > 0);
        // syslogd reads again: the next line says how many were lost.
        syslog.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let mut queued = 0;
        while syslog.recv(&mut buf).is_ok() {
            queued += 1;
        }
        let dropped = writer.dropped;
        assert_eq!(queued + dropped, 1000);
        writer.write_all(b"<30>taptun[1]: after\n").unwrap();
        let n = syslog.recv(&mut buf).unwrap();
        let notice = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            notice.ends_with(&format!(
                "{dropped} log lines dropped: syslog did not read them in time"
            )),
            "{notice}"
        );
        let n = syslog.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>taptun[1]: after");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
