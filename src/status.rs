//! What `taptun status` and SIGUSR1 report: one [`PeerReport`] per peer
//! (the one peer of the point-to-point modes, each listed peer of a hub),
//! gathered in a [`Report`] and rendered as one line per peer or as one
//! JSON document.
//!
//! The model holds names, addresses, ages and counters only: nothing secret
//! (no key, not even a public one) can reach a rendering. The JSON is
//! written by hand; every string in it goes through [`json_string`], so a
//! device or peer name cannot break the document. Its field names are part
//! of the interface (the man page lists them): add fields, never rename
//! one, and raise [`FORMAT_VERSION`] if a field's meaning ever changes.
//!
//! The line format, fields always in this order, `-` for what is unknown:
//!
//! ```text
//! NAME: STATE, remote ADDR, device DEV, session AGE, handshake AGE ago,
//! in N frames/N bytes, out N frames/N bytes,
//! drops N (no session N, backlog N, oversize N, device N, offload N, invalid N)
//! ```
//!
//! (one line; "in" is what arrived from the peer and went to the device,
//! "out" what the device gave and went to the peer).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::relay::{Counters, short_duration};

/// The `version` of the JSON document.
pub const FORMAT_VERSION: u32 = 1;

/// Everything `taptun status` shows: one entry per peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The JSON format's version, [`FORMAT_VERSION`], so that scripts can
    /// tell a document they do not know.
    pub version: u32,
    pub peers: Vec<PeerReport>,
}

/// Whether a peer has a session relaying now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Idle,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Idle => "idle",
        }
    }
}

/// One peer as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerReport {
    /// The peers-file name in a hub; [`POINT_TO_POINT_NAME`] otherwise.
    pub name: String,
    pub state: State,
    /// The current session's remote end (an address, or `exec` for -x);
    /// `None` while idle.
    pub remote: Option<String>,
    /// The peer's local device.
    pub device: String,
    /// How long the current session has relayed; `None` while idle.
    pub session_age: Option<Duration>,
    /// How long ago the last handshake completed (it survives the session's
    /// end); `None` before the first.
    pub since_handshake: Option<Duration>,
    /// Frames received from the peer and written to the device.
    pub frames_in: u64,
    /// Frames read from the device and sent to the peer.
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub drops: Drops,
}

/// Frames dropped, by cause: the [`Counters`] fields of the same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Read from the device while no session was up.
    pub no_session: u64,
    /// Dropped at the ingress while the stream was backed up.
    pub backlog: u64,
    /// Too large for one message.
    pub oversize: u64,
    /// Refused by the device.
    pub device: u64,
    /// Super-frames for a peer without GSO.
    pub offload: u64,
    /// From the peer with an invalid virtio header.
    pub invalid: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.no_session + self.backlog + self.oversize + self.device + self.offload + self.invalid
    }

    /// Cause names (as in the JSON) and counts, in the order both
    /// renderings use.
    fn causes(&self) -> [(&'static str, u64); 6] {
        [
            ("no_session", self.no_session),
            ("backlog", self.backlog),
            ("oversize", self.oversize),
            ("device", self.device),
            ("offload", self.offload),
            ("invalid", self.invalid),
        ]
    }
}

/// The name of the one peer of -s, -c and -i, which has no name of its own.
pub const POINT_TO_POINT_NAME: &str = "peer";

impl PeerReport {
    /// The peer whose traffic `counters` count, on `device`, as of `now`.
    pub fn from_counters(
        name: &str,
        device: &str,
        counters: &Counters,
        now: Instant,
    ) -> PeerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let session = counters.session();
        let age = |since: Instant| now.saturating_duration_since(since);
        PeerReport {
            name: name.to_owned(),
            state: if session.is_some() {
                State::Up
            } else {
                State::Idle
            },
            session_age: session.as_ref().map(|(since, _)| age(*since)),
            remote: session.map(|(_, remote)| remote),
            device: device.to_owned(),
            since_handshake: counters.last_handshake().map(age),
            frames_in: get(&counters.frames_in),
            frames_out: get(&counters.frames_out),
            bytes_in: get(&counters.bytes_in),
            bytes_out: get(&counters.bytes_out),
            drops: Drops {
                no_session: get(&counters.dropped_no_session),
                backlog: get(&counters.dropped_backlog),
                oversize: get(&counters.dropped_oversize),
                device: get(&counters.dropped_device),
                offload: get(&counters.dropped_offload),
                invalid: get(&counters.dropped_invalid),
            },
        }
    }

    /// The peer in one line (see the module's doc for the format).
    pub fn line(&self) -> String {
        let or_dash = |d: Option<Duration>| d.map_or("-".to_owned(), short_duration);
        let drops = self.drops.causes().map(|(cause, n)| {
            let cause = cause.replace('_', " ");
            format!("{cause} {n}")
        });
        format!(
            "{}: {}, remote {}, device {}, session {}, handshake {} ago, \
             in {} frames/{} bytes, out {} frames/{} bytes, drops {} ({})",
            self.name,
            self.state.as_str(),
            self.remote.as_deref().unwrap_or("-"),
            self.device,
            or_dash(self.session_age),
            or_dash(self.since_handshake),
            self.frames_in,
            self.bytes_in,
            self.frames_out,
            self.bytes_out,
            self.drops.total(),
            drops.join(", "),
        )
    }

    fn write_json(&self, out: &mut String) {
        let secs = |d: Option<Duration>| d.map_or("null".to_owned(), |d| d.as_secs().to_string());
        let remote = self
            .remote
            .as_deref()
            .map_or("null".to_owned(), json_string);
        let drops: Vec<String> = self
            .drops
            .causes()
            .iter()
            .map(|(cause, n)| format!("\"{cause}\":{n}"))
            .collect();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"name\":{},\"state\":\"{}\",\"remote\":{remote},\"device\":{},\
             \"session_age_secs\":{},\"since_handshake_secs\":{},\
             \"frames_in\":{},\"frames_out\":{},\"bytes_in\":{},\"bytes_out\":{},\
             \"drops\":{{{}}}}}",
            json_string(&self.name),
            self.state.as_str(),
            json_string(&self.device),
            secs(self.session_age),
            secs(self.since_handshake),
            self.frames_in,
            self.frames_out,
            self.bytes_in,
            self.bytes_out,
            drops.join(","),
        );
    }
}

impl Report {
    pub fn new(peers: Vec<PeerReport>) -> Report {
        Report {
            version: FORMAT_VERSION,
            peers,
        }
    }

    /// One line per peer, for `taptun status` and SIGUSR1.
    pub fn lines(&self) -> Vec<String> {
        self.peers.iter().map(PeerReport::line).collect()
    }

    /// The whole report as one JSON document (no newline at the end).
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"version\":{},\"peers\":[", self.version);
        for (i, peer) in self.peers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            peer.write_json(&mut out);
        }
        out.push_str("]}");
        out
    }
}

/// `text` as a JSON string literal: quotes, backslashes and every control
/// character escaped (RFC 8259, section 7).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::End;

    fn peer(name: &str) -> PeerReport {
        PeerReport {
            name: name.to_owned(),
            state: State::Up,
            remote: Some("10.0.0.2:41234".into()),
            device: "tap0".into(),
            session_age: Some(Duration::from_secs(133)),
            since_handshake: Some(Duration::from_secs(133)),
            frames_in: 10,
            frames_out: 12,
            bytes_in: 1100,
            bytes_out: 1234,
            drops: Drops {
                no_session: 1,
                backlog: 2,
                oversize: 3,
                device: 4,
                offload: 5,
                invalid: 6,
            },
        }
    }

    #[test]
    fn a_peer_from_counters_is_idle_until_a_session_is_up_and_keeps_its_handshake_age() {
        let c = Counters::default();
        Counters::add(&c.frames_in, 3);
        Counters::add(&c.bytes_out, 99);
        Counters::add(&c.dropped_no_session, 7);
        Counters::add(&c.dropped_invalid, 1);
        let now = Instant::now();
        let idle = PeerReport::from_counters("peer", "tt0", &c, now);
        assert_eq!(
            idle,
            PeerReport {
                name: "peer".into(),
                state: State::Idle,
                remote: None,
                device: "tt0".into(),
                session_age: None,
                since_handshake: None,
                frames_in: 3,
                frames_out: 0,
                bytes_in: 0,
                bytes_out: 99,
                drops: Drops {
                    no_session: 7,
                    invalid: 1,
                    ..Drops::default()
                },
            }
        );

        c.session_up("10.0.0.2:41234");
        let later = Instant::now() + Duration::from_secs(5);
        let up = PeerReport::from_counters("peer", "tt0", &c, later);
        assert_eq!(up.state, State::Up);
        assert_eq!(up.remote.as_deref(), Some("10.0.0.2:41234"));
        assert!(up.session_age.is_some_and(|d| d >= Duration::from_secs(5)));
        assert_eq!(up.session_age, up.since_handshake);

        c.session_down(&End::PeerClosed);
        let down = PeerReport::from_counters("peer", "tt0", &c, later);
        assert_eq!(
            (down.state, down.remote, down.session_age),
            (State::Idle, None, None)
        );
        assert!(
            down.since_handshake.is_some(),
            "the handshake's age outlives the session"
        );
    }

    #[test]
    fn the_line_has_every_field_in_order_and_dashes_for_the_unknown() {
        assert_eq!(
            peer("peer").line(),
            "peer: up, remote 10.0.0.2:41234, device tap0, session 2m13s, handshake 2m13s ago, \
             in 10 frames/1100 bytes, out 12 frames/1234 bytes, \
             drops 21 (no session 1, backlog 2, oversize 3, device 4, offload 5, invalid 6)"
        );
        let idle = PeerReport {
            state: State::Idle,
            remote: None,
            session_age: None,
            since_handshake: None,
            ..peer("laptop")
        };
        assert!(
            idle.line()
                .starts_with("laptop: idle, remote -, device tap0, session -, handshake - ago, "),
            "{}",
            idle.line()
        );
    }

    #[test]
    fn json_has_the_version_and_every_peer_with_the_documented_fields() {
        let idle = PeerReport {
            state: State::Idle,
            remote: None,
            session_age: None,
            since_handshake: None,
            ..peer("b")
        };
        let report = Report::new(vec![peer("a"), idle]);
        assert_eq!(
            report.to_json(),
            "{\"version\":1,\"peers\":[\
             {\"name\":\"a\",\"state\":\"up\",\"remote\":\"10.0.0.2:41234\",\"device\":\"tap0\",\
             \"session_age_secs\":133,\"since_handshake_secs\":133,\
             \"frames_in\":10,\"frames_out\":12,\"bytes_in\":1100,\"bytes_out\":1234,\
             \"drops\":{\"no_session\":1,\"backlog\":2,\"oversize\":3,\"device\":4,\"offload\":5,\"invalid\":6}},\
             {\"name\":\"b\",\"state\":\"idle\",\"remote\":null,\"device\":\"tap0\",\
             \"session_age_secs\":null,\"since_handshake_secs\":null,\
             \"frames_in\":10,\"frames_out\":12,\"bytes_in\":1100,\"bytes_out\":1234,\
             \"drops\":{\"no_session\":1,\"backlog\":2,\"oversize\":3,\"device\":4,\"offload\":5,\"invalid\":6}}]}"
        );
        assert_eq!(
            Report::new(vec![]).to_json(),
            "{\"version\":1,\"peers\":[]}"
        );
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(json_string("plain"), "\"plain\"");
        assert_eq!(
            json_string("a\"b\\c\nd\u{1}e\u{1f}é"),
            "\"a\\\"b\\\\c\\nd\\u0001e\\u001fé\""
        );
    }
}
