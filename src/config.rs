//! The command line: every option defined once in [`options`] (used for
//! parsing, `--help` and the tests that compare `--help` with the man page),
//! and [`Config`], built from argv and the environment and validated before
//! anything is opened.
//!
//! Parsing only validates: typed values, exactly one mode, named defaults,
//! and warnings to log once logging is up. Files, devices and sockets are
//! opened later, by `run`.

use std::net::IpAddr;
use std::path::PathBuf;

use getopts::Options;

use crate::device::{DeviceSpec, MIN_MTU};
use crate::error::Error;
use crate::keys::{Origin, PublicKey, SecretSpec};
use crate::local::SocketAccess;
use crate::proxy::Proxy;
use crate::wire::{Cipher, Layer};

/// TCP port of -s and -c -m, as taptunnel used.
pub const DEFAULT_PORT: u16 = 1980;
/// Environment variable for the local secret when -l is absent.
pub const ENV_LOCAL: &str = "TAPTUN_LOCAL";
/// Environment variable for the remote secret when -r and -k are absent.
pub const ENV_REMOTE: &str = "TAPTUN_REMOTE";
/// Environment variable for the proxy's user:password when --proxy-auth is absent.
pub const ENV_PROXY_AUTH: &str = "TAPTUN_PROXY_AUTH";
/// Seconds without sending before a keepalive goes out.
pub const DEFAULT_KEEPALIVE: u8 = 10;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run a tunnel.
    Tunnel(Box<Config>),
    /// Check a tunnel configuration and its secrets, then exit.
    Check(Box<Config>),
    /// Print a new private key, or write it to a new file (mode 600).
    GenKey(Option<PathBuf>),
    /// Read a secret from a file, or else stdin, and print its public key.
    PubKey(Option<PathBuf>),
    /// Ask the control socket at `path` of a running taptun for its status,
    /// as lines or (`json`) as one JSON document.
    Status { path: PathBuf, json: bool },
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
}

/// How the stream is obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// -s: listen for TCP connections.
    Server { bind: Option<IpAddr>, port: u16 },
    /// -c: start the handshake on each stream it dials.
    Client(Dial),
    /// -i: fd 0 and fd 1 are the stream.
    Inetd,
}

/// How a client gets its streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dial {
    /// -m: dial a TCP server; several -m are tried in turn, through the
    /// proxy when there is one.
    Tcp {
        hosts: Vec<String>,
        port: u16,
        proxy: Option<ProxyConfig>,
    },
    /// -x: run a command and use its stdin and stdout.
    Command(String),
}

/// -P, and where its credentials are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub proxy: Proxy,
    pub auth: Option<ProxyAuth>,
}

/// Where the proxy's user:password is: never on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyAuth {
    /// TAPTUN_PROXY_AUTH, read (and wiped) by `run`.
    Env,
    /// --proxy-auth @FILE, a secret file (mode 600).
    File(PathBuf),
}

/// Whom the peer must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// The peer's secret (-r or TAPTUN_REMOTE): its public key is derived.
    Secret(SecretSpec),
    /// The peer's public key (-k).
    Key(PublicKey),
    /// The file that holds the peer's public key (-k @FILE), read by `run`.
    KeyFile(PathBuf),
    /// The hub's peers file (-A), read by `run`: one key per listed peer.
    Peers(PathBuf),
}

/// A validated tunnel configuration. Its `Debug` never shows a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub layer: Layer,
    /// -d: a TAP/TUN device (named, or the kernel picks), or a local
    /// endpoint without one.
    pub device: DeviceSpec,
    /// --socket-mode and --socket-group: who may connect to a `qemu:` socket.
    pub socket: SocketAccess,
    pub local: SecretSpec,
    pub remote: Remote,
    pub cipher: Cipher,
    /// The MTU to set; `None` keeps the device's.
    pub mtu: Option<u32>,
    /// -o: -c runs one session and exits with its status.
    pub once: bool,
    /// Offer GSO super-frames (hello flag bit 0); -n turns it off.
    pub gso: bool,
    /// Seconds without sending before a keepalive; 0 = none. Announced in hello byte 3.
    pub keepalive: u8,
    /// Hook run when a session is established.
    pub up: Option<String>,
    /// Hook run when a session ends.
    pub down: Option<String>,
    /// User to switch to after opening the device and socket.
    pub user: Option<String>,
    /// Group to switch to.
    pub group: Option<String>,
    /// SO_MARK for the carrier socket.
    pub fwmark: Option<u32>,
    /// TCP_CONGESTION for the carrier socket; `None` keeps the system's.
    pub congestion: Option<String>,
    /// -S: where to serve status on a Unix socket.
    pub control: Option<PathBuf>,
    /// Number of -v.
    pub verbosity: u8,
    /// Warnings to log once logging is up.
    pub warnings: Vec<String>,
}

/// One command-line option.
pub struct OptionSpec {
    pub short: &'static str,
    pub long: &'static str,
    /// The argument's name; empty for a flag.
    pub hint: &'static str,
    pub help: &'static str,
}

impl OptionSpec {
    /// The name getopts knows it by: the short one, or the long one for an
    /// option without a letter.
    pub fn name(&self) -> &'static str {
        if self.short.is_empty() {
            self.long
        } else {
            self.short
        }
    }

    /// `-x`, or `--long` for an option without a letter, for messages.
    pub fn flag(&self) -> String {
        if self.short.is_empty() {
            format!("--{}", self.long)
        } else {
            format!("-{}", self.short)
        }
    }
}

/// Every option, defined once: parsing, `--help` and the documentation
/// tests all read this table.
#[rustfmt::skip]
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec { short: "s", long: "server", hint: "", help: "listen for TCP connections (standalone server)" },
    OptionSpec { short: "c", long: "client", hint: "", help: "connect to a server: with -m over TCP, with -x through a command" },
    OptionSpec { short: "i", long: "inetd", hint: "", help: "use fd 0 and fd 1 as the stream (inetd, xinetd, systemd Accept=yes, ssh)" },
    OptionSpec { short: "m", long: "host", hint: "HOST", help: "the server to dial with -c (name, IPv4 or IPv6 address; the port goes with -p); repeat to try several in turn" },
    OptionSpec { short: "x", long: "exec", hint: "COMMAND", help: "with -c: run COMMAND with /bin/sh -c and use its stdin and stdout" },
    OptionSpec { short: "P", long: "proxy", hint: "URL", help: "with -c -m: reach HOST through http://PROXY[:PORT] (HTTP CONNECT, port 8080 by default) or socks5://PROXY[:PORT] (1080); the proxy resolves HOST" },
    OptionSpec { short: "", long: "proxy-auth", hint: "@FILE", help: "the proxy's user:password, in a file of mode 600 (default: $TAPTUN_PROXY_AUTH)" },
    OptionSpec { short: "p", long: "port", hint: "PORT", help: "TCP port for -s and -c -m (default 1980)" },
    OptionSpec { short: "b", long: "bind", hint: "ADDR", help: "with -s: listen on this address only (default: all, IPv4 and IPv6)" },
    OptionSpec { short: "d", long: "device", hint: "NAME", help: "device name (default tap%d or tun%d; an existing persistent device is attached), or a local endpoint without a device: qemu:PATH (listen for a VM's -netdev stream), qemu-connect:PATH (connect to QEMU or passt), vde:COMMAND (run vde_plug ...)" },
    OptionSpec { short: "", long: "socket-mode", hint: "MODE", help: "with -d qemu:PATH (or a hub's device=qemu:): the socket's mode, octal (default 600)" },
    OptionSpec { short: "", long: "socket-group", hint: "GROUP", help: "with -d qemu:PATH (or a hub's device=qemu:): the socket's group (e.g. libvirt-qemu, with --socket-mode 660)" },
    OptionSpec { short: "t", long: "type", hint: "tap|tun", help: "device type: tap (Ethernet frames, default) or tun (IP packets)" },
    OptionSpec { short: "l", long: "local", hint: "SECRET", help: "this end's secret: a key, a passphrase, or @FILE (default: $TAPTUN_LOCAL)" },
    OptionSpec { short: "r", long: "remote", hint: "SECRET", help: "the other end's secret, same forms (default: $TAPTUN_REMOTE)" },
    OptionSpec { short: "k", long: "peer-key", hint: "PUBKEY", help: "the other end's public key, or @FILE, instead of -r (see `taptun pubkey`)" },
    OptionSpec { short: "A", long: "peers", hint: "FILE", help: "with -s or -i: serve every peer listed in FILE, each on its own device (a hub), instead of -r/-k" },
    OptionSpec { short: "e", long: "cipher", hint: "CIPHER", help: "chachapoly (default) or aesgcm; both ends must agree" },
    OptionSpec { short: "M", long: "mtu", hint: "N", help: "set the device MTU (tap: 68-65491, tun: 68-65509)" },
    OptionSpec { short: "n", long: "no-gso", hint: "", help: "carry plain frames only: no IFF_VNET_HDR, no GSO super-frames (default: on where the kernel has it)" },
    OptionSpec { short: "o", long: "once", hint: "", help: "with -c: one session, no reconnecting; exit with its status" },
    OptionSpec { short: "K", long: "keepalive", hint: "SECS", help: "send a keepalive after SECS idle; peer dead after 3 x its interval (default 10, 0 = off)" },
    OptionSpec { short: "u", long: "up", hint: "CMD", help: "run CMD (/bin/sh -c) when a session is established; if it fails the session ends" },
    OptionSpec { short: "D", long: "down", hint: "CMD", help: "run CMD (/bin/sh -c) when a session ends" },
    OptionSpec { short: "U", long: "user", hint: "USER", help: "drop root to USER once the device is open and the socket bound" },
    OptionSpec { short: "G", long: "group", hint: "GROUP", help: "the group to switch to (default: USER's primary group)" },
    OptionSpec { short: "F", long: "fwmark", hint: "MARK", help: "set SO_MARK on the carrier socket, for policy routing (-s, -c -m)" },
    OptionSpec { short: "", long: "congestion", hint: "ALG", help: "TCP congestion control of the carrier socket (-s, -c -m, -i), e.g. bbr or cubic (default: the system's)" },
    OptionSpec { short: "S", long: "control", hint: "PATH", help: "serve status on a Unix socket at PATH (mode 600; read it with `taptun status PATH`; not with -i)" },
    OptionSpec { short: "C", long: "check", hint: "", help: "check the configuration and secrets, open nothing, exit 0 (or 2 with the reason)" },
    OptionSpec { short: "v", long: "verbose", hint: "", help: "log more (repeat for more); RUST_LOG overrides" },
    OptionSpec { short: "h", long: "help", hint: "", help: "print this help and exit" },
    OptionSpec { short: "V", long: "version", hint: "", help: "print the version and exit" },
];

/// The getopts parser for [`OPTIONS`].
pub fn options() -> Options {
    let mut o = Options::new();
    for spec in OPTIONS {
        match (spec.hint, spec.short) {
            ("", "v") => o.optflagmulti(spec.short, spec.long, spec.help),
            ("HOST", _) => o.optmulti(spec.short, spec.long, spec.help, spec.hint),
            ("", _) => o.optflag(spec.short, spec.long, spec.help),
            (hint, _) => o.optopt(spec.short, spec.long, spec.help, hint),
        };
    }
    o
}

/// The help text.
pub fn help() -> String {
    let brief = "\
Usage: taptun -s [-p PORT] [-b ADDR] [OPTIONS]
       taptun -c -m HOST [-p PORT] [OPTIONS]
       taptun -c -x COMMAND [OPTIONS]
       taptun -i [OPTIONS]
       taptun genkey [PATH]
       taptun pubkey [FILE]    (without FILE, the secret is read on stdin)
       taptun status PATH [--json]    (what a taptun run with -S PATH reports)

A TAP/TUN tunnel over a TCP connection, inetd's socket or a command's pipes,
authenticated with Noise_XXpsk0. The ends swap secrets: server -l S1 -r S2,
client -l S2 -r S1.";
    let mut text = options().usage(brief);
    text.push_str(
        "\nExit status: 0 clean end, 1 runtime failure, 2 usage or configuration error,\n\
         3 authentication failure. See taptun(8).\n",
    );
    text
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

impl Command {
    /// Parses argv (without the program name) and the environment.
    ///
    /// # Errors
    /// `Error::Usage` or `Error::Secret`, both exit status 2.
    pub fn parse<S: AsRef<str>>(
        args: &[S],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, Error> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        if let Some(("status", rest)) = args.split_first().map(|(first, rest)| (*first, rest)) {
            return parse_status(rest);
        }
        let m = options().parse(&args).map_err(|e| match e {
            getopts::Fail::UnrecognizedOption(name) => usage(unknown_option(&name, &args)),
            e => usage(e.to_string()),
        })?;
        refuse_values_like_options(&m)?;
        if m.opt_present("h") {
            return Ok(Command::Help);
        }
        if m.opt_present("V") {
            return Ok(Command::Version);
        }
        let modes = ["s", "c", "i"].iter().filter(|o| m.opt_present(o)).count();
        if let Some(sub) = m.free.first().filter(|s| *s == "genkey" || *s == "pubkey") {
            let others = options_given(&m);
            if !others.is_empty() {
                return Err(usage(format!(
                    "`taptun {sub}` takes no options (got {})",
                    others.join(" ")
                )));
            }
            let path = match &m.free[1..] {
                [] => None,
                [path] => Some(PathBuf::from(path)),
                [_, extra, ..] => {
                    return Err(usage(format!(
                        "`taptun {sub}`: unexpected argument `{extra}`"
                    )));
                }
            };
            return Ok(if sub == "genkey" {
                Command::GenKey(path)
            } else {
                Command::PubKey(path)
            });
        }
        if let Some(first) = m.free.first() {
            return Err(usage(format!("unexpected argument `{first}`")));
        }
        if modes != 1 {
            return Err(usage(
                "give exactly one of -s (server), -c (client) or -i (inetd)",
            ));
        }
        let config = Box::new(Config::from_matches(&m, env)?);
        Ok(if m.opt_present("C") {
            Command::Check(config)
        } else {
            Command::Tunnel(config)
        })
    }
}

/// `taptun status PATH [--json]`, its arguments after `status` (in any
/// order: `--json` is the only option).
fn parse_status(args: &[&str]) -> Result<Command, Error> {
    let mut json = false;
    let mut path = None;
    for arg in args {
        match *arg {
            "--json" if !json => json = true,
            "-h" | "--help" => return Ok(Command::Help),
            arg if arg.starts_with('-') && arg.len() > 1 => {
                return Err(usage(format!(
                    "`taptun status` takes PATH and --json only (got {arg})"
                )));
            }
            arg if path.is_none() && !arg.is_empty() => path = Some(PathBuf::from(arg)),
            arg => {
                return Err(usage(format!(
                    "`taptun status`: unexpected argument `{arg}`"
                )));
            }
        }
    }
    let path = path.ok_or_else(|| {
        usage("`taptun status` needs the PATH of the control socket (the -S of the running taptun)")
    })?;
    Ok(Command::Status { path, json })
}

/// Refuses an option value that starts with '-': getopts takes the argument
/// after an option as its value whatever it is, so `-c -m -p 1980` would
/// otherwise dial a host named `-p`. No option takes a negative number.
fn refuse_values_like_options(m: &getopts::Matches) -> Result<(), Error> {
    for spec in OPTIONS.iter().filter(|o| !o.hint.is_empty()) {
        let Some(value) = m
            .opt_strs(spec.name())
            .into_iter()
            .find(|v| v.starts_with('-'))
        else {
            continue;
        };
        let (flag, hint) = (spec.flag(), spec.hint);
        let mut msg = format!(
            "{flag}: the value `{value}` looks like an option: \
             {flag} takes {hint}, give it right after {flag}"
        );
        let var = match spec.short {
            "l" => Some(ENV_LOCAL),
            "r" => Some(ENV_REMOTE),
            _ => None,
        };
        if let Some(var) = var {
            msg.push_str(&format!(
                "; a passphrase that starts with '-' can be given as {flag} @FILE or in {var}"
            ));
        }
        return Err(usage(msg));
    }
    Ok(())
}

/// The message for an option getopts does not know (`name` without its
/// dashes), with the long options it is probably a misspelling of.
fn unknown_option(name: &str, args: &[&str]) -> String {
    let long = format!("--{name}");
    let given_long = args
        .iter()
        .take_while(|a| **a != "--")
        .any(|a| *a == long || a.starts_with(&format!("{long}=")));
    if !given_long {
        return format!("unknown option `-{name}`");
    }
    let near: Vec<String> = OPTIONS
        .iter()
        .filter(|o| is_near(name, o.long))
        .map(|o| format!("--{}", o.long))
        .collect();
    if near.is_empty() {
        format!("unknown option `{long}`")
    } else {
        format!(
            "unknown option `{long}`: did you mean {}?",
            near.join(" or ")
        )
    }
}

/// Whether `given` looks like a misspelling of the long option `known`:
/// the same but for dashes and case, an abbreviation of it, or one or two
/// typos away (one for short names, where two would match anything).
fn is_near(given: &str, known: &str) -> bool {
    let squash = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (given, known) = (squash(given), squash(known));
    let typos = if known.len() <= 4 { 1 } else { 2 };
    given == known
        || (given.len() >= 3 && known.starts_with(&given))
        || edit_distance(&given, &known) <= typos
}

/// Insertions, deletions, substitutions and swaps of two neighbours needed
/// to turn `a` into `b` (optimal string alignment).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    // d[i][j]: the distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether argv asks for -i (--inetd), read without parsing it fully, so
/// that even a usage error knows the stream may be fds 0, 1 and 2.
pub fn mentions_inetd<S: AsRef<str>>(args: &[S]) -> bool {
    for arg in args.iter().map(AsRef::as_ref) {
        if arg == "--" {
            return false;
        }
        if arg == "--inetd" {
            return true;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.starts_with('-')) else {
            continue;
        };
        // In `-vi` both are flags; in `-mi` the i is -m's value.
        for c in cluster.chars() {
            if c == 'i' {
                return true;
            }
            let takes_value = |o: &OptionSpec| o.short.chars().eq([c]) && !o.hint.is_empty();
            if OPTIONS.iter().any(takes_value) {
                break;
            }
        }
    }
    false
}

/// The options present, as `-x` strings, for messages.
fn options_given(m: &getopts::Matches) -> Vec<String> {
    OPTIONS
        .iter()
        .filter(|o| m.opt_present(o.name()))
        .map(OptionSpec::flag)
        .collect()
}

impl Config {
    fn from_matches(
        m: &getopts::Matches,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Error> {
        let mode = parse_mode(m, env)?;
        let layer = match m.opt_str("t").as_deref() {
            None | Some("tap") => Layer::Tap,
            Some("tun") => Layer::Tun,
            Some(other) => return Err(usage(format!("-t: unknown type `{other}` (tap or tun)"))),
        };
        let device = match m.opt_str("d") {
            None => DeviceSpec::Kernel(None),
            Some(d) => DeviceSpec::parse(&d).map_err(|why| usage(format!("-d: {why}")))?,
        };
        if device.is_local() && layer == Layer::Tun {
            return Err(usage(format!(
                "-t tun: -d {device} carries Ethernet frames: leave -t out (or give -t tap)"
            )));
        }
        let socket = socket_access(m, &device)?;
        let cipher = match m.opt_str("e").as_deref() {
            None | Some("chachapoly") => Cipher::ChaChaPoly,
            Some("aesgcm") => Cipher::AesGcm,
            Some(other) => {
                return Err(usage(format!(
                    "-e: unknown cipher `{other}` (chachapoly or aesgcm)"
                )));
            }
        };
        let mtu = match m.opt_str("M") {
            None => None,
            Some(text) => {
                let max = device.max_mtu(layer);
                match text.parse::<u32>() {
                    Ok(n) if (MIN_MTU..=max).contains(&n) => Some(n),
                    _ => {
                        let what = match &device {
                            DeviceSpec::Vde(_) => "vde:".to_owned(),
                            _ => layer.to_string(),
                        };
                        return Err(usage(format!(
                            "-M: `{text}` is not an MTU from {MIN_MTU} to {max} for {what}"
                        )));
                    }
                }
            }
        };
        let mut warnings = Vec::new();
        let local =
            secret(m.opt_str("l"), "-l", ENV_LOCAL, env, &mut warnings)?.ok_or_else(|| {
                usage(format!(
                    "no local secret: give -l SECRET or set {ENV_LOCAL}"
                ))
            })?;
        let remote = match (m.opt_str("k"), m.opt_str("r")) {
            _ if m.opt_present("A") => peers_file(m, &mode)?,
            (Some(_), Some(_)) => return Err(usage("give either -r or -k, not both")),
            (Some(key), None) => match key.strip_prefix('@') {
                Some("") => {
                    return Err(Error::Secret {
                        subject: "-k".into(),
                        why: "`@` must be followed by a file name".into(),
                    });
                }
                Some(path) => Remote::KeyFile(PathBuf::from(path)),
                None => Remote::Key(PublicKey::parse(&key).map_err(|why| Error::Secret {
                    subject: "-k".into(),
                    why,
                })?),
            },
            (None, r) => Remote::Secret(
                secret(r, "-r", ENV_REMOTE, env, &mut warnings)?.ok_or_else(|| {
                    usage(format!(
                        "no remote secret: give -r SECRET, -k PUBKEY, or set {ENV_REMOTE}"
                    ))
                })?,
            ),
        };
        let keepalive = match m.opt_str("K") {
            None => DEFAULT_KEEPALIVE,
            Some(text) => text.parse::<u8>().map_err(|_| {
                usage(format!(
                    "-K: `{text}` is not a number of seconds from 0 to 255"
                ))
            })?,
        };
        let hook = |opt: &str| -> Result<Option<String>, Error> {
            match m.opt_str(opt) {
                Some(cmd) if cmd.trim().is_empty() => Err(usage(format!("-{opt}: empty command"))),
                other => Ok(other),
            }
        };
        let (up, down) = (hook("u")?, hook("D")?);
        let nonempty = |opt: &str| -> Result<Option<String>, Error> {
            match m.opt_str(opt) {
                Some(name) if name.is_empty() => Err(usage(format!("-{opt}: empty name"))),
                other => Ok(other),
            }
        };
        let (user, group) = (nonempty("U")?, nonempty("G")?);
        let fwmark = match m.opt_str("F") {
            None => None,
            Some(text) => Some(parse_u32(&text).ok_or_else(|| {
                usage(format!(
                    "-F: `{text}` is not a mark (a number, 0x... allowed)"
                ))
            })?),
        };
        if fwmark.is_some() && !matches!(mode, Mode::Server { .. } | Mode::Client(Dial::Tcp { .. }))
        {
            return Err(usage("-F only applies to the TCP socket of -s and -c -m"));
        }
        if fwmark.is_some()
            && (user.is_some() || group.is_some())
            && matches!(mode, Mode::Client(Dial::Tcp { .. }))
        {
            return Err(usage(
                "-F cannot be combined with -U/-G in -c mode: setting the mark on each new connection needs CAP_NET_ADMIN",
            ));
        }
        let congestion = m.opt_str("congestion");
        if let Some(alg) = &congestion {
            // The kernel's names: at most 15 bytes (TCP_CA_NAME_MAX with its NUL).
            let name_ok = (1..=15).contains(&alg.len())
                && alg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !name_ok {
                return Err(usage(format!(
                    "--congestion: `{alg}` is not an algorithm's name (e.g. cubic, bbr, reno; \
                     see /proc/sys/net/ipv4/tcp_available_congestion_control)"
                )));
            }
            if matches!(mode, Mode::Client(Dial::Command(_))) {
                return Err(usage(
                    "--congestion applies to taptun's own TCP socket (-s, -c -m, -i); \
                     with -x the command makes the connection",
                ));
            }
        }
        let control = match m.opt_str("S") {
            None => None,
            Some(path) if path.is_empty() => return Err(usage("-S: empty path")),
            Some(_) if mode == Mode::Inetd => {
                return Err(usage(
                    "-S cannot be used with -i: every process inetd starts would serve the same                      path; run a -s server (or a hub) to have a control socket",
                ));
            }
            Some(path) => Some(PathBuf::from(path)),
        };
        let once = m.opt_present("o");
        if once && !matches!(mode, Mode::Client(_)) {
            return Err(usage(
                "-o only applies to -c (-s serves on, -i is always one session)",
            ));
        }
        Ok(Config {
            mode,
            layer,
            gso: !m.opt_present("n") && !device.is_local(),
            device,
            socket,
            local,
            remote,
            cipher,
            mtu,
            once,
            keepalive,
            up,
            down,
            user,
            group,
            fwmark,
            congestion,
            control,
            verbosity: u8::try_from(m.opt_count("v")).unwrap_or(u8::MAX),
            warnings,
        })
    }
}

/// -A FILE, which takes the place of -r/-k and of -d.
fn peers_file(m: &getopts::Matches, mode: &Mode) -> Result<Remote, Error> {
    if m.opt_present("r") || m.opt_present("k") {
        return Err(usage(
            "-A lists every peer's key: give either -A or -r/-k, not both",
        ));
    }
    if m.opt_present("d") {
        return Err(usage(
            "-d cannot be combined with -A: each listed peer has its own device (device= in the peers file)",
        ));
    }
    if !matches!(mode, Mode::Server { .. } | Mode::Inetd) {
        return Err(usage(
            "-A is for the serving end (-s or -i); a client names its one server with -k or -r",
        ));
    }
    match m.opt_str("A") {
        Some(path) if !path.is_empty() => Ok(Remote::Peers(PathBuf::from(path))),
        _ => Err(usage("-A: empty file name")),
    }
}

fn parse_mode(m: &getopts::Matches, env: &dyn Fn(&str) -> Option<String>) -> Result<Mode, Error> {
    let only_with = |opt: &str, what: &str, ok: bool| {
        if m.opt_present(opt) && !ok {
            Err(usage(format!("-{opt} is only used {what}")))
        } else {
            Ok(())
        }
    };
    let server = m.opt_present("s");
    let client = m.opt_present("c");
    only_with("m", "with -c", client)?;
    only_with("x", "with -c", client)?;
    only_with("P", "with -c -m", client && m.opt_present("m"))?;
    only_with("b", "with -s", server)?;
    only_with(
        "p",
        "with -s or -c -m",
        server || (client && m.opt_present("m")),
    )?;
    let port = match m.opt_str("p") {
        None => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(usage(format!("-p: `{text}` is not a TCP port (1-65535)"))),
        },
    };
    if server {
        let bind = match m.opt_str("b") {
            None => None,
            Some(text) => Some(
                unbracket(&text)
                    .parse::<IpAddr>()
                    .map_err(|_| usage(format!("-b: `{text}` is not an IP address")))?,
            ),
        };
        return Ok(Mode::Server { bind, port });
    }
    if client {
        let hosts = m
            .opt_strs("m")
            .iter()
            .map(|h| parse_host(h))
            .collect::<Result<Vec<String>, Error>>()?;
        let proxy = proxy_config(m, env)?;
        return match (hosts.is_empty(), m.opt_str("x")) {
            (false, None) => Ok(Mode::Client(Dial::Tcp { hosts, port, proxy })),
            (true, Some(command)) if !command.trim().is_empty() => {
                Ok(Mode::Client(Dial::Command(command)))
            }
            (false, Some(_)) => Err(usage("-c takes either -m HOST or -x COMMAND, not both")),
            _ => Err(usage("-c needs -m HOST or -x COMMAND")),
        };
    }
    Ok(Mode::Inetd)
}

/// -P and its credentials (--proxy-auth @FILE, else TAPTUN_PROXY_AUTH).
fn proxy_config(
    m: &getopts::Matches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ProxyConfig>, Error> {
    let Some(url) = m.opt_str("P") else {
        if m.opt_present("proxy-auth") {
            return Err(usage("--proxy-auth is only used with -P"));
        }
        return Ok(None);
    };
    let proxy = Proxy::parse(&url).map_err(|why| usage(format!("-P: {why}")))?;
    let auth = match m.opt_str("proxy-auth") {
        Some(value) => match value.strip_prefix('@') {
            Some(path) if !path.is_empty() => Some(ProxyAuth::File(PathBuf::from(path))),
            // Not quoted: it may be the password itself.
            _ => {
                return Err(usage(format!(
                    "--proxy-auth takes @FILE (a file of mode 600 holding user:password), \
                     never the credentials themselves, which any user could read in ps; \
                     or set {ENV_PROXY_AUTH}"
                )));
            }
        },
        None => env(ENV_PROXY_AUTH).map(|_| ProxyAuth::Env),
    };
    Ok(Some(ProxyConfig { proxy, auth }))
}

/// A decimal or 0x-prefixed hexadecimal u32.
fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A -m value as the dialer wants it: a name, an IPv4 address, or an IPv6
/// address with or without brackets (and a %zone). A name never holds a
/// ':', so anything else with one could only fail its lookup: HOST:PORT
/// gets told to use -p.
fn parse_host(text: &str) -> Result<String, Error> {
    let host = unbracket(text);
    if host.is_empty() {
        return Err(usage("-m: empty host name"));
    }
    let is_v6 = |h: &str| {
        let address = h.split_once('%').map_or(h, |(address, _)| address);
        address.parse::<std::net::Ipv6Addr>().is_ok()
    };
    if !host.contains(':') || is_v6(host) {
        return Ok(host.to_owned());
    }
    let split = match text.strip_prefix('[') {
        Some(rest) => rest.rsplit_once("]:").filter(|(h, _)| is_v6(h)),
        None => text.rsplit_once(':').filter(|(h, _)| !h.contains(':')),
    };
    match split {
        Some((host, port)) if port.parse::<u16>().is_ok_and(|p| p != 0) => Err(usage(format!(
            "-m: `{text}` looks like HOST:PORT: give the port with -p: -m {host} -p {port}"
        ))),
        _ => Err(usage(format!(
            "-m: `{text}` is neither a host name nor an IP address: a name has no ':', \
             and the port goes with -p"
        ))),
    }
}

/// `[::1]` -> `::1`, so IPv6 addresses may be given either way.
fn unbracket(text: &str) -> &str {
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text)
}

/// --socket-mode and --socket-group, which only a `qemu:` socket has.
fn socket_access(m: &getopts::Matches, device: &DeviceSpec) -> Result<SocketAccess, Error> {
    let given = m.opt_present("socket-mode") || m.opt_present("socket-group");
    // A hub's peers file may give its peers qemu: sockets (device=).
    if given && !matches!(device, DeviceSpec::Qemu(_)) && !m.opt_present("A") {
        return Err(usage(
            "--socket-mode and --socket-group only apply to -d qemu:PATH (or a hub's device=qemu:)",
        ));
    }
    let mut access = SocketAccess::default();
    if let Some(text) = m.opt_str("socket-mode") {
        access.mode = match u32::from_str_radix(&text, 8) {
            Ok(mode) if mode & !0o777 == 0 && mode & 0o600 == 0o600 => mode,
            _ => {
                return Err(usage(format!(
                    "--socket-mode: `{text}` is not an octal mode from 600 to 777 that lets the \
                     owner read and write (e.g. 660)"
                )));
            }
        };
    }
    match m.opt_str("socket-group") {
        Some(group) if group.is_empty() => return Err(usage("--socket-group: empty name")),
        group => access.group = group,
    }
    Ok(access)
}

/// A secret from its option, else from the environment.
fn secret(
    arg: Option<String>,
    opt: &'static str,
    var: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<SecretSpec>, Error> {
    // Our copies are zeroed; getopts keeps its own, and argv shows in ps anyway.
    if let Some(arg) = arg.map(zeroize::Zeroizing::new) {
        let spec = SecretSpec::parse(Origin::Argv(opt), &arg)?;
        if matches!(spec.source, crate::keys::SecretSource::Literal(_)) {
            warnings.push(format!(
                "the secret given with {opt} is visible to other local users in the process list; \
                 use {opt} @FILE or {var} instead"
            ));
        }
        return Ok(Some(spec));
    }
    env(var)
        .map(zeroize::Zeroizing::new)
        .map(|value| SecretSpec::parse(Origin::Env(var), &value))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretSource;
    use std::path::PathBuf;
    use zeroize::Zeroizing;

    const PUB: &str = "5bOQKq/4BjWEi63F+2VvNwLtwazMVBdxJQwJ3pdXUFA=";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[&str]) -> Result<Command, Error> {
        Command::parse(args, &no_env)
    }

    fn tunnel(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Command::Tunnel(c)) => *c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn file(origin: Origin, path: &str) -> SecretSpec {
        SecretSpec {
            origin,
            source: SecretSource::File(PathBuf::from(path)),
        }
    }

    #[test]
    fn server_defaults() {
        let c = tunnel(&["-s", "-l", "@/k1", "-r", "@/k2"]);
        assert_eq!(
            c,
            Config {
                mode: Mode::Server {
                    bind: None,
                    port: DEFAULT_PORT
                },
                layer: Layer::Tap,
                device: DeviceSpec::Kernel(None),
                socket: SocketAccess::default(),
                local: file(Origin::Argv("-l"), "/k1"),
                remote: Remote::Secret(file(Origin::Argv("-r"), "/k2")),
                cipher: Cipher::ChaChaPoly,
                mtu: None,
                once: false,
                gso: true,
                keepalive: DEFAULT_KEEPALIVE,
                up: None,
                down: None,
                user: None,
                group: None,
                fwmark: None,
                congestion: None,
                control: None,
                verbosity: 0,
                warnings: vec![],
            }
        );
    }

    #[test]
    fn client_with_every_option() {
        let c = tunnel(&[
            "--client",
            "--host",
            "[2001:db8::1]",
            "-m",
            "gw.example",
            "-p",
            "4000",
            "-t",
            "tun",
            "-d",
            "tun7",
            "-e",
            "aesgcm",
            "-M",
            "9000",
            "-vv",
            "-l",
            "@/k",
            "-k",
            PUB,
            "-o",
            "--no-gso",
            "-K",
            "0",
            "-u",
            "up.sh",
            "-D",
            "down.sh",
            "-F",
            "0x10",
        ]);
        assert_eq!(
            c,
            Config {
                mode: Mode::Client(Dial::Tcp {
                    hosts: vec!["2001:db8::1".into(), "gw.example".into()],
                    port: 4000,
                    proxy: None,
                }),
                layer: Layer::Tun,
                device: DeviceSpec::Kernel(Some("tun7".into())),
                socket: SocketAccess::default(),
                local: file(Origin::Argv("-l"), "/k"),
                remote: Remote::Key(PublicKey::parse(PUB).unwrap()),
                cipher: Cipher::AesGcm,
                mtu: Some(9000),
                once: true,
                gso: false,
                keepalive: 0,
                up: Some("up.sh".into()),
                down: Some("down.sh".into()),
                user: None,
                group: None,
                fwmark: Some(16),
                congestion: None,
                control: None,
                verbosity: 2,
                warnings: vec![],
            }
        );
    }

    #[test]
    fn user_and_group() {
        let c = tunnel(&[
            "-s", "-U", "nobody", "-G", "nogroup", "-l", "@/k", "-k", PUB,
        ]);
        assert_eq!(
            (c.user.as_deref(), c.group.as_deref()),
            (Some("nobody"), Some("nogroup"))
        );
    }

    #[test]
    fn control_socket_in_every_mode_but_inetd() {
        for mode in [&["-s"][..], &["-c", "-m", "gw"], &["-c", "-x", "ssh gw"]] {
            let mut args = mode.to_vec();
            args.extend(["-S", "/run/taptun/ctl", "-l", "@/k", "-k", PUB]);
            assert_eq!(
                tunnel(&args).control,
                Some(PathBuf::from("/run/taptun/ctl")),
                "{args:?}"
            );
        }
        let e = parse(&["-i", "--control", "/run/taptun/ctl", "-l", "@/k", "-k", PUB]).unwrap_err();
        assert!(
            e.to_string().starts_with("-S cannot be used with -i"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(parse(&["-s", "-S", "", "-l", "@/k", "-k", PUB]).is_err());
    }

    #[test]
    fn status_takes_a_path_and_json() {
        let status = |path: &str, json| Command::Status {
            path: PathBuf::from(path),
            json,
        };
        let ok = |args: &[&str]| parse(args).unwrap();
        assert_eq!(ok(&["status", "/run/ctl"]), status("/run/ctl", false));
        assert_eq!(
            ok(&["status", "/run/ctl", "--json"]),
            status("/run/ctl", true)
        );
        assert_eq!(ok(&["status", "--json", "ctl"]), status("ctl", true));
        for bad in [
            &["status"][..],
            &["status", "--json"],
            &["status", "a", "b"],
            &["status", "a", "--yaml"],
            &["status", "a", "--json", "--json"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn secrets_from_the_environment() {
        let env = |var: &str| match var {
            ENV_LOCAL => Some("@/etc/taptun/gw.key".to_string()),
            ENV_REMOTE => Some("a long passphrase for the laptop".to_string()),
            _ => None,
        };
        let Command::Tunnel(c) = Command::parse(&["-i"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(c.mode, Mode::Inetd);
        assert_eq!(c.local, file(Origin::Env(ENV_LOCAL), "/etc/taptun/gw.key"));
        assert_eq!(
            c.remote,
            Remote::Secret(SecretSpec {
                origin: Origin::Env(ENV_REMOTE),
                source: SecretSource::Literal(Zeroizing::new(
                    "a long passphrase for the laptop".into()
                )),
            })
        );
        assert!(
            c.warnings.is_empty(),
            "secrets from the environment are not on argv"
        );
        // With -k, TAPTUN_REMOTE is ignored.
        let Command::Tunnel(c) = Command::parse(&["-i", "-k", PUB], &env).unwrap() else {
            panic!()
        };
        assert_eq!(c.remote, Remote::Key(PublicKey::parse(PUB).unwrap()));
    }

    #[test]
    fn literal_secret_on_argv_warns() {
        let c = tunnel(&["-s", "-l", "a passphrase of some length", "-k", PUB]);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("process list"));
    }

    #[test]
    fn exec_mode() {
        let c = tunnel(&["-c", "-x", "ssh gw taptun -i", "-l", "@/k", "-k", PUB]);
        assert_eq!(
            c.mode,
            Mode::Client(Dial::Command("ssh gw taptun -i".into()))
        );
    }

    #[test]
    fn subcommands() {
        assert_eq!(parse(&["genkey"]).unwrap(), Command::GenKey(None));
        assert_eq!(
            parse(&["genkey", "/k"]).unwrap(),
            Command::GenKey(Some(PathBuf::from("/k")))
        );
        assert!(matches!(
            parse(&["genkey", "/k", "/j"]),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            parse(&["pubkey", "/k", "/j"]),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            parse(&["-s", "-C", "-l", "@/k", "-k", PUB]),
            Ok(Command::Check(_))
        ));
        assert_eq!(parse(&["pubkey"]).unwrap(), Command::PubKey(None));
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"]).unwrap(), Command::Version);
        assert!(matches!(parse(&["genkey", "-s"]), Err(Error::Usage(_))));
    }

    #[test]
    fn usage_errors() {
        let bad: &[&[&str]] = &[
            &[],
            &["-s", "-c", "-l", "@/k", "-k", PUB],
            &["-c", "-l", "@/k", "-k", PUB],
            &["-c", "-m", "h", "-x", "cmd", "-l", "@/k", "-k", PUB],
            &["-s", "-m", "h", "-l", "@/k", "-k", PUB],
            &["-i", "-p", "1", "-l", "@/k", "-k", PUB],
            &["-c", "-x", "cmd", "-p", "1", "-l", "@/k", "-k", PUB],
            &["-s", "-p", "0", "-l", "@/k", "-k", PUB],
            &["-s", "-p", "65536", "-l", "@/k", "-k", PUB],
            &["-s", "-b", "example.org", "-l", "@/k", "-k", PUB],
            &["-s", "-t", "tip", "-l", "@/k", "-k", PUB],
            &["-s", "-e", "des", "-l", "@/k", "-k", PUB],
            &["-s", "-M", "67", "-l", "@/k", "-k", PUB],
            &["-s", "-M", "65492", "-l", "@/k", "-k", PUB],
            &["-s", "-d", "a-name-far-too-long", "-l", "@/k", "-k", PUB],
            &["-s", "-l", "@/k"],
            &["-s", "-k", PUB],
            &["-s", "-l", "@/k", "-r", "@/r", "-k", PUB],
            &["-s", "-l", "@/k", "-k", "nonsense"],
            &["-s", "-l", "@", "-k", PUB],
            &["-s", "extra", "-l", "@/k", "-k", PUB],
            &["--no-such-option"],
            &["-s", "-o", "-l", "@/k", "-k", PUB],
            &["-s", "-K", "256", "-l", "@/k", "-k", PUB],
            &["-s", "-u", " ", "-l", "@/k", "-k", PUB],
            &["-i", "-F", "1", "-l", "@/k", "-k", PUB],
            &[
                "-c", "-m", "h", "-F", "1", "-U", "nobody", "-l", "@/k", "-k", PUB,
            ],
            &["-s", "-F", "mark", "-l", "@/k", "-k", PUB],
        ];
        for args in bad {
            let err = parse(args).expect_err(&format!("{args:?} should fail"));
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{args:?}: {err}");
        }
    }

    #[test]
    fn rejects_an_option_as_the_value_of_another() {
        let err = parse(&["-c", "-m", "-p", "1980", "-l", "@/k", "-k", PUB]).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            "-m: the value `-p` looks like an option: -m takes HOST, give it right after -m"
        );
        // Without the stray 1980, this used to dial a host named `-p`.
        let err = parse(&["-c", "-m", "-p", "-l", "@/k", "-k", PUB]).unwrap_err();
        assert!(err.to_string().starts_with("-m: the value `-p`"), "{err}");
        for spec in OPTIONS.iter().filter(|o| !o.hint.is_empty()) {
            let short = spec.flag();
            let long = format!("--{}=-z", spec.long);
            let attached = format!("{short}-z");
            let forms = match spec.short {
                "" => vec![vec!["-s", &short, "-z"], vec!["-s", &long]],
                _ => vec![
                    vec!["-s", &short, "-z"],
                    vec!["-s", &long],
                    vec!["-s", &attached],
                ],
            };
            for args in forms {
                let err = parse(&args).expect_err(&format!("{args:?} should fail"));
                assert!(
                    err.to_string()
                        .starts_with(&format!("{short}: the value `-z`")),
                    "{args:?}: {err}"
                );
            }
        }
        let err = parse(&["-s", "-l", "-secret-", "-k", PUB]).unwrap_err();
        assert!(
            err.to_string().contains("-l @FILE or in TAPTUN_LOCAL"),
            "{err}"
        );
        let err = parse(&["-s", "-l", "@/k", "-r", "-secret-"]).unwrap_err();
        assert!(
            err.to_string().contains("-r @FILE or in TAPTUN_REMOTE"),
            "{err}"
        );
        // A secret that starts with '-' still works from the environment.
        let env = |var: &str| (var == ENV_LOCAL).then(|| "-a passphrase from env-".to_string());
        assert!(Command::parse(&["-s", "-k", PUB], &env).is_ok());
    }

    #[test]
    fn mentions_inetd_finds_i_in_any_spelling() {
        for args in [
            &["-i"][..],
            &["--inetd", "--bogus"],
            &["-vi", "-K", "300"],
            &["-s", "-v", "-ni"],
            // -d's value to getopts, but the stream may still be fd 0: err on the safe side.
            &["-d", "-i"],
        ] {
            assert!(mentions_inetd(args), "{args:?}");
        }
        for args in [
            &[][..],
            &["-s", "-m", "i"],
            &["-c", "-mi"],
            &["-s", "--", "-i"],
            &["--inetdx"],
        ] {
            assert!(!mentions_inetd(args), "{args:?}");
        }
    }

    #[test]
    fn help_states_the_default_port() {
        assert!(help().contains(&format!("(default {DEFAULT_PORT})")));
    }

    #[test]
    fn tun_allows_a_larger_mtu_than_tap() {
        assert_eq!(
            tunnel(&["-s", "-t", "tun", "-M", "65509", "-l", "@/k", "-k", PUB]).mtu,
            Some(65509)
        );
    }

    #[test]
    fn malformed_key_literal_is_a_usage_error() {
        let bad = "yAnz5aJ0gbZlk8u8m8xq0L3YbL2mFqNm3fJ0bVQ0uUJ=";
        assert!(matches!(
            parse(&["-s", "-l", bad, "-k", PUB]),
            Err(Error::Secret { .. })
        ));
    }

    #[test]
    fn pubkey_takes_a_file_as_well_as_stdin() {
        assert_eq!(
            parse(&["pubkey", "/etc/taptun/gw.key"]).unwrap(),
            Command::PubKey(Some(PathBuf::from("/etc/taptun/gw.key")))
        );
        let err = parse(&["pubkey", "-v", "/k"]).unwrap_err();
        assert_eq!(err.to_string(), "`taptun pubkey` takes no options (got -v)");
    }

    #[test]
    fn peer_key_from_a_file_is_read_later() {
        let c = tunnel(&["-s", "-l", "@/k", "-k", "@/etc/taptun/laptop.pub"]);
        assert_eq!(
            c,
            Config {
                remote: Remote::KeyFile(PathBuf::from("/etc/taptun/laptop.pub")),
                ..tunnel(&["-s", "-l", "@/k", "-k", PUB])
            }
        );
        let err = parse(&["-s", "-l", "@/k", "-k", "@"]).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert_eq!(err.to_string(), "-k: `@` must be followed by a file name");
    }

    #[test]
    fn host_and_port_in_one_host_is_refused_with_the_p_to_use() {
        for (host, says) in [
            ("10.0.0.1:1980", "-m 10.0.0.1 -p 1980"),
            ("gw.example:1980", "-m gw.example -p 1980"),
            ("[2001:db8::1]:1980", "-m 2001:db8::1 -p 1980"),
        ] {
            let err = parse(&["-c", "-C", "-m", host, "-l", "@/k", "-k", PUB]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("-m: `{host}` looks like HOST:PORT: give the port with -p: {says}")
            );
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        }
        for host in ["gw:http", "gw.example:", "[gw]:1980", "[2001:db8::1"] {
            let err = parse(&["-c", "-m", host, "-l", "@/k", "-k", PUB]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("is neither a host name nor an IP address"),
                "{host}: {err}"
            );
        }
    }

    #[test]
    fn ipv6_addresses_with_colons_are_hosts() {
        let c = tunnel(&[
            "-c",
            "-m",
            "2001:db8::1",
            "-m",
            "[::1]",
            "-m",
            "fe80::1%eth0",
            "-m",
            "10.0.0.1",
            "-m",
            "2001:db8::1:1980",
            "-l",
            "@/k",
            "-k",
            PUB,
        ]);
        assert_eq!(
            c.mode,
            Mode::Client(Dial::Tcp {
                hosts: vec![
                    "2001:db8::1".into(),
                    "::1".into(),
                    "fe80::1%eth0".into(),
                    "10.0.0.1".into(),
                    // A valid address too: it cannot be told from one with a port.
                    "2001:db8::1:1980".into(),
                ],
                port: DEFAULT_PORT,
                proxy: None,
            })
        );
    }

    #[test]
    fn an_unknown_long_option_suggests_the_nearest() {
        for (given, says) in [
            (
                &["--peerkey", PUB][..],
                "unknown option `--peerkey`: did you mean --peer-key?",
            ),
            (
                &["--peerkey=x"][..],
                "unknown option `--peerkey`: did you mean --peer-key?",
            ),
            (
                &["-s", "--hots", "h"][..],
                "unknown option `--hots`: did you mean --host?",
            ),
            (
                &["--Keep-Alive"][..],
                "unknown option `--Keep-Alive`: did you mean --keepalive?",
            ),
            (
                &["--dev", "tap0"][..],
                "unknown option `--dev`: did you mean --device?",
            ),
            (
                &["--ver"][..],
                "unknown option `--ver`: did you mean --verbose or --version?",
            ),
            (&["--bogus"][..], "unknown option `--bogus`"),
            (&["-q"][..], "unknown option `-q`"),
            (&["-sq"][..], "unknown option `-q`"),
        ] {
            let err = parse(given).unwrap_err();
            assert_eq!(err.to_string(), says, "{given:?}");
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        }
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            [
                d("", ""),
                d("host", "host"),
                d("hots", "host"),
                d("mtu", ""),
                d("kitten", "sitting")
            ],
            [0, 0, 1, 3, 3]
        );
    }

    #[test]
    fn a_proxy_takes_its_credentials_from_a_file_or_the_environment_never_argv() {
        let args = [
            "-c",
            "-m",
            "gw",
            "-P",
            "socks5://px:9050",
            "-l",
            "@/k",
            "-k",
            PUB,
        ];
        let Mode::Client(Dial::Tcp { proxy, .. }) = tunnel(&args).mode else {
            panic!("not a client")
        };
        let proxy = proxy.unwrap();
        assert_eq!(proxy.proxy.to_string(), "socks5://px:9050");
        assert_eq!(proxy.auth, None);
        let env = |var: &str| (var == ENV_PROXY_AUTH).then(|| "u:p".to_string());
        let Ok(Command::Tunnel(c)) = Command::parse(&args, &env) else {
            panic!("not a tunnel")
        };
        assert!(matches!(
            c.mode,
            Mode::Client(Dial::Tcp {
                proxy: Some(ProxyConfig {
                    auth: Some(ProxyAuth::Env),
                    ..
                }),
                ..
            })
        ));
        let with_file = [&args[..], &["--proxy-auth", "@/etc/taptun/proxy"]].concat();
        let Mode::Client(Dial::Tcp { proxy, .. }) = tunnel(&with_file).mode else {
            panic!("not a client")
        };
        assert_eq!(
            proxy.unwrap().auth,
            Some(ProxyAuth::File("/etc/taptun/proxy".into()))
        );

        let literal = [&args[..], &["--proxy-auth", "alice:hunter2"]].concat();
        let err = parse(&literal).unwrap_err().to_string();
        assert!(err.contains("@FILE") && !err.contains("hunter2"), "{err}");
        let in_url = [
            "-c",
            "-m",
            "gw",
            "-P",
            "http://alice:hunter2@px",
            "-l",
            "@/k",
            "-k",
            PUB,
        ];
        let err = parse(&in_url).unwrap_err().to_string();
        assert!(
            err.contains("TAPTUN_PROXY_AUTH") && !err.contains("hunter2"),
            "{err}"
        );
        for bad in [
            &["-s", "-P", "http://px", "-l", "@/k", "-k", PUB][..],
            &[
                "-c",
                "-x",
                "ssh gw",
                "-P",
                "http://px",
                "-l",
                "@/k",
                "-k",
                PUB,
            ][..],
            &[
                "-c",
                "-m",
                "gw",
                "--proxy-auth",
                "@/f",
                "-l",
                "@/k",
                "-k",
                PUB,
            ][..],
            &["-c", "-m", "gw", "-P", "ftp://px", "-l", "@/k", "-k", PUB][..],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{bad:?}: {err}");
        }
    }

    #[test]
    fn congestion_takes_an_algorithm_name_for_taptuns_own_socket() {
        let c = tunnel(&["-s", "--congestion", "bbr", "-l", "@/k", "-k", PUB]);
        assert_eq!(c.congestion.as_deref(), Some("bbr"));
        let c = tunnel(&["-i", "-l", "@/k", "-k", PUB]);
        assert_eq!(c.congestion, None);
        for bad in [
            &["-s", "--congestion", "", "-l", "@/k", "-k", PUB][..],
            &["-s", "--congestion", "cubic;reboot", "-l", "@/k", "-k", PUB][..],
            &[
                "-s",
                "--congestion",
                "a_name_far_too_long",
                "-l",
                "@/k",
                "-k",
                PUB,
            ][..],
            &[
                "-c",
                "-x",
                "ssh gw",
                "--congestion",
                "bbr",
                "-l",
                "@/k",
                "-k",
                PUB,
            ][..],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{bad:?}: {err}");
        }
    }
}

#[cfg(test)]
mod local_endpoint_tests {
    use super::*;

    const PUB: &str = "5bOQKq/4BjWEi63F+2VvNwLtwazMVBdxJQwJ3pdXUFA=";

    fn parse(extra: &[&str]) -> Result<Config, Error> {
        let mut args = vec!["-s", "-l", "@/k", "-k", PUB];
        args.extend_from_slice(extra);
        match Command::parse(&args, &|_| None)? {
            Command::Tunnel(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    fn usage_text(extra: &[&str]) -> String {
        match parse(extra) {
            Err(Error::Usage(text)) => text,
            other => panic!("{extra:?}: {other:?}"),
        }
    }

    #[test]
    fn local_endpoints_are_tap_without_gso() {
        let c = parse(&["-d", "qemu:/run/taptun/vm1.sock"]).unwrap();
        assert_eq!(c.device, DeviceSpec::Qemu("/run/taptun/vm1.sock".into()));
        assert_eq!((c.layer, c.gso), (Layer::Tap, false));
        assert_eq!(c.socket, SocketAccess::default());
        let c = parse(&["-d", "qemu-connect:rel.sock", "-t", "tap"]).unwrap();
        assert_eq!(c.device, DeviceSpec::QemuConnect("rel.sock".into()));
        let c = parse(&["-d", "vde:vde_plug /run/vde.ctl", "-M", "9214"]).unwrap();
        assert_eq!(c.device, DeviceSpec::Vde("vde_plug /run/vde.ctl".into()));
        assert_eq!(c.mtu, Some(9214));
        let c = parse(&["-d", "tap7"]).unwrap();
        assert_eq!(
            (c.device, c.gso),
            (DeviceSpec::Kernel(Some("tap7".into())), true)
        );
    }

    #[test]
    fn socket_mode_and_group_apply_to_a_qemu_socket() {
        let c = parse(&[
            "-d",
            "qemu:/s",
            "--socket-mode",
            "660",
            "--socket-group",
            "kvm",
        ])
        .unwrap();
        assert_eq!(
            c.socket,
            SocketAccess {
                mode: 0o660,
                group: Some("kvm".into())
            }
        );
    }

    #[test]
    fn rejects_what_a_local_endpoint_cannot_be() {
        assert!(usage_text(&["-d", "qemu:/s", "-t", "tun"]).contains("carries Ethernet frames"));
        assert!(usage_text(&["-d", "qemu:"]).contains("needs a socket path"));
        assert!(usage_text(&["-d", "vde: "]).contains("needs a command"));
        assert!(usage_text(&["-d", "vde:x", "-M", "9215"]).contains("68 to 9214 for vde:"));
        assert!(usage_text(&["-d", "tap0", "--socket-mode", "660"]).contains("only apply"));
        assert!(
            usage_text(&["-d", "qemu-connect:/s", "--socket-group", "g"]).contains("only apply")
        );
        assert!(usage_text(&["-d", "qemu:/s", "--socket-mode", "500"]).contains("octal mode"));
        assert!(usage_text(&["-d", "qemu:/s", "--socket-mode", "1777"]).contains("octal mode"));
        assert!(usage_text(&["-d", "qemu:/s", "--socket-mode", "9"]).contains("octal mode"));
        assert!(usage_text(&["-d", "nope:x"]).contains("qemu:PATH"));
    }
}
