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
            .target(env_logger::Target::Pipe(Box::new(SyslogWriter {
                socket: None,
            })));
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

/// Sends each record (env_logger writes one record per call) as a datagram.
struct SyslogWriter {
    socket: Option<UnixDatagram>,
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.socket.is_none() {
            self.socket = UnixDatagram::unbound()
                .ok()
                .filter(|s| s.connect("/dev/log").is_ok());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        if let Some(socket) = &self.socket {
            if socket.send(line).is_err() {
                // syslogd may have restarted: reconnect on the next line.
                self.socket = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
