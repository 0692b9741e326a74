//! The way out through a proxy (-P): an HTTP proxy's CONNECT or a SOCKS5
//! server's CONNECT (RFC 1928, with RFC 1929's username and password), on a
//! TCP connection already made to the proxy.
//!
//! The proxy is asked for the -m host by name (SOCKS5's domain form, or the
//! CONNECT line), so the proxy resolves it: behind a proxy the client often
//! cannot. Its reply is read to its exact end and not one byte further: the
//! next byte is the server's message 2. Reply lines are logged with anything
//! but printable ASCII replaced and cut to [`REPLY_SHOWN`] characters: they
//! come from the network.
//!
//! What the proxy says decides what the client does next: 407 (or 401), 403 and
//! SOCKS5's "not allowed" or refused credentials are [`Failure::Denied`]
//! (the configuration is wrong: exit 3 at once, as a provable handshake
//! failure); a target the proxy could not reach, and a proxy that does not
//! answer or answers nonsense, are retried with the usual backoff.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::sys::{self, Stop, Wait};
use crate::transport;

/// The longest HTTP reply header we read before calling it broken.
const MAX_REPLY: usize = 16 * 1024;
/// How much of a proxy's reply line the log shows.
pub const REPLY_SHOWN: usize = 120;

/// How the proxy is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Socks5,
}

/// -P: where the proxy is. Its name is resolved again on every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl Proxy {
    /// Parses `http://HOST[:PORT]` (port 8080 when none is given) or
    /// `socks5://HOST[:PORT]` (1080); an IPv6 address goes in brackets.
    ///
    /// # Errors
    /// Another scheme, a path, a missing host or a bad port; credentials in
    /// the URL, which every user could read in `ps`.
    pub fn parse(url: &str) -> Result<Proxy, String> {
        let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest, 8080)
        } else if let Some(rest) = url.strip_prefix("socks5://") {
            (Scheme::Socks5, rest, 1080)
        } else {
            return Err(format!(
                "`{url}`: give http://PROXY[:PORT] (HTTP CONNECT) or socks5://PROXY[:PORT]"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            // Not quoted: the URL holds a password.
            return Err(
                "no credentials in the proxy URL (any user can read them in ps): \
                 put user:password in TAPTUN_PROXY_AUTH or in a file for --proxy-auth @FILE"
                    .into(),
            );
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(format!("`{url}`: a proxy URL has no path"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
                None => return Err(format!("`{url}`: an IPv6 address without its `]`")),
            },
            None => match rest.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (rest, None),
            },
        };
        // An IPv6 address only in brackets: without them its last group
        // would pass for a port.
        let bracketed = rest.starts_with('[');
        let bad_host = host.is_empty()
            || host.contains(':') != bracketed
            || bracketed && host.parse::<std::net::Ipv6Addr>().is_err()
            || host.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad_host {
            return Err(format!("`{url}`: no usable proxy host in it"));
        }
        let port = match port {
            None => default_port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(format!(
                        "`{url}`: the port must be a number from 1 to 65535"
                    ));
                }
            },
        };
        Ok(Proxy {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
        };
        write!(
            f,
            "{scheme}://{}",
            transport::host_port(&self.host, self.port)
        )
    }
}

/// The proxy's user name and password, zeroed when dropped.
pub struct Credentials {
    user: Zeroizing<String>,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(redacted)")
    }
}

impl Credentials {
    /// Parses `user:password` (the password may contain colons).
    ///
    /// # Errors
    /// No colon, an empty user, or either part over 255 bytes (SOCKS5's
    /// limit, and more than any proxy needs).
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let text = text.trim_end_matches(['\r', '\n']);
        let Some((user, password)) = text.split_once(':') else {
            return Err("proxy credentials must be user:password".into());
        };
        if user.is_empty() || user.len() > 255 || password.len() > 255 {
            return Err("proxy credentials must be user:password, each part 1 to 255 bytes".into());
        }
        Ok(Credentials {
            user: Zeroizing::new(user.to_owned()),
            password: Zeroizing::new(password.to_owned()),
        })
    }
}

/// Why the proxy gave no tunnel.
#[derive(Debug)]
pub enum Failure {
    /// The proxy refused us for good (credentials missing or wrong, or not
    /// allowed): trying again cannot help.
    Denied(String),
    /// The proxy could not reach the target, or does not work right now:
    /// the client tries again later.
    Failed(String),
    /// A signal arrived.
    Stopped,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                Failure::Failed("the proxy closed the connection".into())
            }
            io::ErrorKind::TimedOut => Failure::Failed("the proxy did not answer in time".into()),
            _ => Failure::Failed(format!("talking to the proxy failed: {e}")),
        }
    }
}

/// Reaches the first of `hosts` that the proxy connects us to: for each in
/// turn, a connection to the proxy (its name resolved afresh, its addresses
/// raced as [`transport::connect`] does) and its CONNECT; returns the stream
/// and a peer name saying which proxy.
///
/// # Errors
/// `Error::Connect` when the proxy cannot be reached; `Error::Proxy` when it
/// refused us (`denied`) or reached none of the hosts. `Ok(None)` when
/// `stop` was set.
pub fn connect(
    proxy: &Proxy,
    auth: Option<&Credentials>,
    hosts: &[String],
    port: u16,
    socket: &transport::SocketOptions,
    deadline: Instant,
    stop: &Stop,
) -> Result<Option<(TcpStream, String)>, Error> {
    let mut last = String::from("no host to ask for");
    for host in hosts {
        let proxy_host = std::slice::from_ref(&proxy.host);
        let Some((mut tcp, _)) =
            transport::connect(proxy_host, proxy.port, socket, deadline, stop)?
        else {
            return Ok(None);
        };
        let target = transport::host_port(host, port);
        match open(&mut tcp, proxy, auth, host, port, deadline, stop) {
            Ok(()) => {
                log::debug!("{proxy}: connected to {target}");
                return Ok(Some((tcp, format!("{target} via {proxy}"))));
            }
            Err(Failure::Stopped) => return Ok(None),
            Err(Failure::Denied(why)) => {
                return Err(Error::Proxy {
                    proxy: proxy.to_string(),
                    what: format!("{target}: {why}"),
                    denied: true,
                });
            }
            Err(Failure::Failed(why)) => {
                log::info!("proxy {proxy}: {target}: {why}");
                last = format!("{target}: {why}");
            }
        }
    }
    Err(Error::Proxy {
        proxy: proxy.to_string(),
        what: last,
        denied: false,
    })
}

/// Asks the proxy at the other end of `stream` for a connection to
/// `host:port`; on success the stream carries that connection from its next
/// byte on.
///
/// # Errors
/// As [`Failure`] says; its text quotes the proxy's reply, sanitised.
pub fn open(
    stream: &mut TcpStream,
    proxy: &Proxy,
    auth: Option<&Credentials>,
    host: &str,
    port: u16,
    deadline: Instant,
    stop: &Stop,
) -> Result<(), Failure> {
    let mut io = Deadlined {
        stream,
        deadline,
        stop,
    };
    match proxy.scheme {
        Scheme::Http => http_connect(&mut io, auth, host, port),
        Scheme::Socks5 => socks5_connect(&mut io, auth, host, port),
    }
}

/// The proxy's connection, every read bounded by the deadline and a stop.
struct Deadlined<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
    stop: &'a Stop,
}

impl Deadlined<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Failure> {
        let mut got = 0;
        while got < buf.len() {
            match sys::wait_readable(self.stream.as_raw_fd(), &[self.stop], Some(self.deadline))? {
                Wait::Ready => {}
                Wait::Stopped => return Err(Failure::Stopped),
                Wait::TimedOut => return Err(io::Error::from(io::ErrorKind::TimedOut).into()),
            }
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One write: a request is small, and the kernel's buffer of a fresh
    /// connection takes it whole.
    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.write_all(bytes).map_err(Failure::from)
    }
}

fn http_connect(
    io: &mut Deadlined<'_>,
    auth: Option<&Credentials>,
    host: &str,
    port: u16,
) -> Result<(), Failure> {
    let target = transport::host_port(host, port);
    let mut request = Zeroizing::new(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"));
    if let Some(auth) = auth {
        let pair = Zeroizing::new(format!("{}:{}", *auth.user, *auth.password));
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*pair));
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&encoded);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    io.send(request.as_bytes())?;
    // Byte by byte up to the blank line: what follows is the server's, and
    // a larger read could swallow its first message.
    let mut reply = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") && !reply.ends_with(b"\n\n") {
        if reply.len() >= MAX_REPLY {
            return Err(Failure::Failed(format!(
                "the proxy's reply header is longer than {MAX_REPLY} bytes: {}",
                shown(&reply)
            )));
        }
        io.read_exact(&mut byte)?;
        reply.push(byte[0]);
    }
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    http_status(line)
}

/// What an HTTP proxy's status line means for us.
fn http_status(line: &[u8]) -> Result<(), Failure> {
    let shown = shown(line);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let version = words.next().unwrap_or_default();
    let code = words.next().and_then(|w| std::str::from_utf8(w).ok());
    let code = match code.and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if version.starts_with(b"HTTP/") => code,
        _ => {
            return Err(Failure::Failed(format!(
                "not an HTTP proxy's reply: {shown}"
            )));
        }
    };
    match code {
        200..=299 => Ok(()),
        // 407 is the standard's answer; tinyproxy 1.11 says 401.
        401 | 407 => Err(Failure::Denied(format!(
            "the proxy wants credentials, or refused ours ({shown}): \
             set TAPTUN_PROXY_AUTH=user:password or --proxy-auth @FILE"
        ))),
        403 => Err(Failure::Denied(format!(
            "the proxy does not allow a connection to this host and port ({shown}): \
             an HTTP proxy often allows only port 443; ask its administrator"
        ))),
        _ => Err(Failure::Failed(format!("the proxy answered {shown}"))),
    }
}

const SOCKS_VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const USER_PASSWORD: u8 = 2;
const NO_ACCEPTABLE: u8 = 0xff;

fn socks5_connect(
    io: &mut Deadlined<'_>,
    auth: Option<&Credentials>,
    host: &str,
    port: u16,
) -> Result<(), Failure> {
    // Offer username/password only when we have them.
    match auth {
        Some(_) => io.send(&[SOCKS_VERSION, 2, NO_AUTH, USER_PASSWORD])?,
        None => io.send(&[SOCKS_VERSION, 1, NO_AUTH])?,
    }
    let mut choice = [0u8; 2];
    io.read_exact(&mut choice)?;
    if choice[0] != SOCKS_VERSION {
        return Err(Failure::Failed(format!(
            "not a SOCKS5 server: its first bytes are {}",
            shown_hex(&choice)
        )));
    }
    match (choice[1], auth) {
        (NO_AUTH, _) => {}
        (USER_PASSWORD, Some(auth)) => {
            let mut request = Zeroizing::new(vec![1, auth.user.len() as u8]);
            request.extend_from_slice(auth.user.as_bytes());
            request.push(auth.password.len() as u8);
            request.extend_from_slice(auth.password.as_bytes());
            io.send(&request)?;
            let mut status = [0u8; 2];
            io.read_exact(&mut status)?;
            if status[1] != 0 {
                return Err(Failure::Denied(
                    "the SOCKS server refused our user name and password: \
                     check TAPTUN_PROXY_AUTH or the --proxy-auth file"
                        .into(),
                ));
            }
        }
        (NO_ACCEPTABLE, None) => {
            return Err(Failure::Denied(
                "the SOCKS server wants credentials: set TAPTUN_PROXY_AUTH=user:password \
                 or --proxy-auth @FILE"
                    .into(),
            ));
        }
        (NO_ACCEPTABLE, Some(_)) => {
            return Err(Failure::Denied(
                "the SOCKS server accepts neither no authentication nor a user name and password"
                    .into(),
            ));
        }
        (method, _) => {
            return Err(Failure::Failed(format!(
                "the SOCKS server chose method {method}, which we did not offer"
            )));
        }
    }
    let mut request = vec![SOCKS_VERSION, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            request.push(1);
            request.extend_from_slice(&v4.octets());
        }
        Ok(IpAddr::V6(v6)) => {
            request.push(4);
            request.extend_from_slice(&v6.octets());
        }
        Err(_) => {
            let Ok(len) = u8::try_from(host.len()) else {
                return Err(Failure::Denied(format!(
                    "the host name {host} is longer than SOCKS5's 255 bytes"
                )));
            };
            request.push(3);
            request.push(len);
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    io.send(&request)?;
    // VER REP RSV ATYP, then the bound address (its length by ATYP) and port,
    // read exactly: the server's message 2 follows.
    let mut head = [0u8; 4];
    io.read_exact(&mut head)?;
    if head[0] != SOCKS_VERSION {
        return Err(Failure::Failed(format!(
            "a malformed SOCKS5 reply: {}",
            shown_hex(&head)
        )));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            io.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        _ => {
            return Err(Failure::Failed(format!(
                "a malformed SOCKS5 reply: {}",
                shown_hex(&head)
            )));
        }
    };
    let mut bound = [0u8; 255 + 2];
    io.read_exact(&mut bound[..rest])?;
    socks5_reply(head[1])
}

/// What a SOCKS5 reply code means for us.
fn socks5_reply(code: u8) -> Result<(), Failure> {
    let what = match code {
        0 => return Ok(()),
        1 => "general SOCKS server failure",
        2 => {
            return Err(Failure::Denied(
                "the SOCKS server does not allow a connection to this host and port (reply 2, \
                 not allowed by its rules): ask its administrator"
                    .into(),
            ));
        }
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "an unknown reply code",
    };
    Err(Failure::Failed(format!(
        "the SOCKS server answered {code} ({what})"
    )))
}

/// Bytes from the network as a log may show them: printable ASCII kept,
/// anything else `?`, cut to [`REPLY_SHOWN`] characters.
fn shown(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut text: String = trimmed
        .iter()
        .take(REPLY_SHOWN)
        .map(|&b| match b {
            0x20..=0x7e => b as char,
            _ => '?',
        })
        .collect();
    if trimmed.len() > REPLY_SHOWN {
        text.push_str("...");
    }
    format!("\"{text}\"")
}

fn shown_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn urls_parse_with_default_ports_and_refuse_credentials() {
        let cases = [
            ("http://proxy", Scheme::Http, "proxy", 8080),
            ("http://proxy:3128/", Scheme::Http, "proxy", 3128),
            ("socks5://10.0.0.1", Scheme::Socks5, "10.0.0.1", 1080),
            (
                "socks5://[2001:db8::1]:9050",
                Scheme::Socks5,
                "2001:db8::1",
                9050,
            ),
            ("http://[::1]", Scheme::Http, "::1", 8080),
        ];
        for (url, scheme, host, port) in cases {
            let p = Proxy::parse(url).unwrap();
            assert_eq!(
                (p.scheme, p.host.as_str(), p.port),
                (scheme, host, port),
                "{url}"
            );
        }
        assert_eq!(
            Proxy::parse("socks5://[2001:db8::1]:9050")
                .unwrap()
                .to_string(),
            "socks5://[2001:db8::1]:9050"
        );
        for bad in [
            "proxy:8080",
            "https://proxy",
            "socks4://proxy",
            "http://",
            "http://:80",
            "http://proxy:0",
            "http://proxy:65536",
            "http://proxy:x",
            "http://proxy/path",
            "http://2001:db8::1",
            "http://[::1",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
        let e = Proxy::parse("http://me:secret@proxy:3128").unwrap_err();
        assert!(e.contains("TAPTUN_PROXY_AUTH"), "{e}");
    }

    #[test]
    fn credentials_split_at_the_first_colon_and_are_bounded() {
        let c = Credentials::parse("alice:pa:ss\n").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        assert_eq!(format!("{c:?}"), "Credentials(redacted)");
        for bad in ["alice", ":pw", &format!("{}:pw", "u".repeat(256))] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
    }

    /// A proxy played by the test: it reads what the client sends (the
    /// request, up to `expect` bytes), answers `reply` and then `after`.
    fn exchange(
        proxy: Scheme,
        auth: Option<&Credentials>,
        host: &str,
        script: &[(usize, &[u8])],
    ) -> (Result<(), Failure>, Vec<u8>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Vec<(usize, Vec<u8>)> = script.iter().map(|(n, r)| (*n, r.to_vec())).collect();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut received = Vec::new();
            for (expect, reply) in script {
                let mut buf = vec![0u8; expect];
                conn.read_exact(&mut buf).unwrap();
                received.extend_from_slice(&buf);
                conn.write_all(&reply).unwrap();
            }
            // Whatever else the client sends until it closes.
            let _ = conn.read_to_end(&mut received);
            received
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        let proxy = Proxy {
            scheme: proxy,
            host: "127.0.0.1".into(),
            port: addr.port(),
        };
        let stop = Stop::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = open(&mut stream, &proxy, auth, host, 4242, deadline, &stop);
        // What the server sent after the reply must still be unread.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut rest = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if rest.len() >= 3 {
                break;
            }
        }
        drop(stream);
        (result, server.join().unwrap(), rest)
    }

    #[test]
    fn http_connect_reads_the_reply_to_its_end_and_not_a_byte_further() {
        let auth = Credentials::parse("alice:wonder land").unwrap();
        let request = "CONNECT vpn.example:4242 HTTP/1.1\r\nHost: vpn.example:4242\r\n\
                       Proxy-Authorization: Basic YWxpY2U6d29uZGVyIGxhbmQ=\r\n\r\n";
        let (result, sent, rest) = exchange(
            Scheme::Http,
            Some(&auth),
            "vpn.example",
            &[(
                request.len(),
                b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nMSG",
            )],
        );
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(String::from_utf8_lossy(&sent), request);
        assert_eq!(
            rest, b"MSG",
            "the bytes after the reply belong to the server"
        );
    }

    #[test]
    fn http_refusals_are_denied_or_retried_by_their_status() {
        let request_len = "CONNECT h:4242 HTTP/1.1\r\nHost: h:4242\r\n\r\n".len();
        let cases: [(&[u8], bool); 6] = [
            (b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n", true),
            (b"HTTP/1.0 401 Unauthorized\r\n\r\n", true),
            (b"HTTP/1.1 403 Access violation\r\n\r\n", true),
            (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", false),
            (b"HTTP/1.1 503 Unavailable\r\n\r\n", false),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false),
        ];
        for (reply, denied) in cases {
            let (result, _, _) = exchange(Scheme::Http, None, "h", &[(request_len, reply)]);
            match result {
                Err(Failure::Denied(why)) if denied => assert!(why.contains("\""), "{why}"),
                Err(Failure::Failed(why)) if !denied => assert!(why.contains("\""), "{why}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(reply)),
            }
        }
    }

    #[test]
    fn a_reply_line_is_sanitised_and_cut() {
        let mut line = b"HTTP/1.1 502 \x1b[31mred\x07".to_vec();
        line.extend(std::iter::repeat_n(b'x', 500));
        let Err(Failure::Failed(why)) = http_status(&line) else {
            panic!("not a failure")
        };
        assert!(!why.contains('\x1b') && !why.contains('\x07'), "{why}");
        assert!(why.len() < REPLY_SHOWN + 60, "{} bytes", why.len());
    }

    #[test]
    fn an_endless_http_reply_is_refused() {
        let request_len = "CONNECT h:4242 HTTP/1.1\r\nHost: h:4242\r\n\r\n".len();
        let endless = vec![b'a'; MAX_REPLY + 10];
        let (result, _, _) = exchange(Scheme::Http, None, "h", &[(request_len, &endless)]);
        assert!(
            matches!(result, Err(Failure::Failed(ref w)) if w.contains("longer")),
            "{result:?}"
        );
    }

    #[test]
    fn socks5_asks_by_name_authenticates_and_leaves_the_next_bytes() {
        let auth = Credentials::parse("bob:pw").unwrap();
        let connect: &[u8] = &[
            5, 1, 0, 3, 11, b'v', b'p', b'n', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x10,
            0x92,
        ];
        let (result, sent, rest) = exchange(
            Scheme::Socks5,
            Some(&auth),
            "vpn.example",
            &[
                (4, &[5, 2]),
                (1 + 1 + 3 + 1 + 2, &[1, 0]),
                (
                    connect.len(),
                    &[
                        5, 0, 0, 3, 4, b'h', b'o', b's', b't', 0, 80, b'M', b'S', b'G',
                    ],
                ),
            ],
        );
        assert!(result.is_ok(), "{result:?}");
        let mut want = vec![5, 2, 0, 2, 1, 3, b'b', b'o', b'b', 2, b'p', b'w'];
        want.extend_from_slice(connect);
        assert_eq!(sent, want);
        assert_eq!(rest, b"MSG");
    }

    #[test]
    fn socks5_refusals_are_denied_or_retried() {
        let ip_connect = 4 + 4 + 2;
        let refused = exchange(
            Scheme::Socks5,
            None,
            "10.1.2.3",
            &[(3, &[5, 0]), (ip_connect, &[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])],
        );
        assert!(
            matches!(refused.0, Err(Failure::Failed(ref w)) if w.contains("refused")),
            "{:?}",
            refused.0
        );
        assert_eq!(refused.1[3..], [5, 1, 0, 1, 10, 1, 2, 3, 0x10, 0x92]);
        let ruleset = exchange(
            Scheme::Socks5,
            None,
            "10.1.2.3",
            &[(3, &[5, 0]), (ip_connect, &[5, 2, 0, 1, 0, 0, 0, 0, 0, 0])],
        );
        assert!(
            matches!(ruleset.0, Err(Failure::Denied(_))),
            "{:?}",
            ruleset.0
        );
        let wants_auth = exchange(Scheme::Socks5, None, "h", &[(3, &[5, 0xff])]);
        assert!(
            matches!(wants_auth.0, Err(Failure::Denied(ref w)) if w.contains("TAPTUN_PROXY_AUTH")),
            "{:?}",
            wants_auth.0
        );
        let auth = Credentials::parse("bob:wrong").unwrap();
        let bad_pw = exchange(
            Scheme::Socks5,
            Some(&auth),
            "h",
            &[(4, &[5, 2]), (1 + 1 + 3 + 1 + 5, &[1, 1])],
        );
        assert!(
            matches!(bad_pw.0, Err(Failure::Denied(_))),
            "{:?}",
            bad_pw.0
        );
        let not_socks = exchange(Scheme::Socks5, None, "h", &[(3, b"HT")]);
        assert!(
            matches!(not_socks.0, Err(Failure::Failed(_))),
            "{:?}",
            not_socks.0
        );
    }

    #[test]
    fn a_silent_proxy_times_out_and_a_stop_ends_the_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _held = listener.accept().unwrap();
        let proxy = Proxy::parse(&format!(
            "socks5://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        ))
        .unwrap();
        let stop = Stop::new().unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        let r = open(&mut stream, &proxy, None, "h", 1, soon, &stop);
        assert!(
            matches!(r, Err(Failure::Failed(ref w)) if w.contains("in time")),
            "{r:?}"
        );
        stop.trigger();
        let later = Instant::now() + Duration::from_secs(10);
        let r = open(&mut stream, &proxy, None, "h", 1, later, &stop);
        assert!(matches!(r, Err(Failure::Stopped)), "{r:?}");
    }
}
