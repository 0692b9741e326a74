//! taptun: a TAP/TUN tunnel over any reliable byte stream, authenticated
//! with Noise_XXpsk0.
//!
//! # Layout
//!
//! - `config`: the command line, validated into a `Config` before anything is opened.
//! - `keys`: secret forms, Argon2id, public keys, the psk.
//! - `handshake`: the Noise handshake as state machines, key confirmation, the replay cache;
//!   `resolver`: its crypto, with X25519 keys zeroed on drop; `replay`: the replay cache
//!   that -i processes share; `wire`: the layer and the cipher, the values both ends agree on.
//!   `trial`: which listed peer a message 1 is from, tried without snow, and the CPU budget
//!   of those trials (the hub's).
//! - `frame`: the u16 big-endian length-prefix codec; `stream_error`: why a stream read or
//!   write failed, for the handshake and the relay alike.
//! - `device`: opening TAP and TUN devices, or a local endpoint; the `PacketDevice` trait;
//!   `local`: endpoints without a device (a VM's or a VDE switch's stream);
//!   `endpoint`: a device with its carrier and its drain while no session is attached.
//! - `transport`: the streams: TCP listen and dial, stdio, a command's pipes;
//!   `proxy`: HTTP CONNECT and SOCKS5 for -P; `child`: running and stopping a
//!   hook or a -x command with /bin/sh -c.
//! - `channel`: an established session's protocol rules with no I/O: seal and open.
//! - `relay`: the two directions of an established session, and counters.
//! - `session`: the one owner of sessions (handshake, hooks, relay,
//!   replacement, end), generic over the device; `client`: -c's streams
//!   and reconnection; `server`: -s's accept loop; `hooks`: -u and -D.
//! - `status`: what `taptun status` and SIGUSR1 report, per peer, as lines or
//!   JSON; `control`: the -S socket that serves it, and the client that asks it.
//! - `peers`: the hub's peers file (-A): its rules, reading it, what a reload changes.
//! - `log`: stderr or syslog. `error`: the one error type. `sys`: the raw syscalls.
#![deny(unsafe_code)]

mod channel;
mod child;
mod client;
mod config;
mod control;
mod device;
mod endpoint;
mod error;
mod frame;
// The fuzz targets' entry points: built for cargo-fuzz (which sets
// cfg(fuzzing)) and for the unit tests that replay their corpora, never into
// the shipped library.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod handshake;
mod hooks;
mod hub;
mod keys;
mod local;
mod log;
mod pacing;
mod peers;
mod proxy;
mod relay;
mod replay;
mod resolver;
mod server;
mod session;
mod status;
mod stream_error;
mod sys;
mod transport;
mod trial;
mod vnet;
mod wire;

// The library's face, as snow keeps one: only what the binary, the
// integration tests, the benchmarks and the fuzz targets use. Every module
// is private, so the compiler sees what nothing uses.
pub use channel::{Channel, Framing, OPEN_ROOM, Opened, Sealed};
pub use config::{Command, OPTIONS, help, mentions_inetd};
pub use device::{MAX_FRAME, PacketDevice};
pub use error::{Error, SEE_HELP};
pub use frame::{
    FrameReader, MAX_MESSAGE, MAX_WIRE, READ_BUFFER, decode as decode_message,
    encode as encode_message,
};
pub use handshake::{
    Cipher, Established, FLAG_GSO, Hello, Identity, Initiator, MESSAGE1_LEN, MessageIo, Responder,
    TAG_LEN, Transport, initiate,
};
pub use keys::{PrivateKey, PublicKey, SecretText, derive_psk, stretch_passphrase};
pub use log::{Sink as LogSink, init as init_log};
pub use relay::{Counters, relay};
pub use sys::{Stop, is_socket, thread_cpu_time};
pub use transport::Stream;
pub use trial::{Budget, Candidates};
pub use vnet::{
    F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, HDR_LEN as VIRTIO_HDR_LEN, Header as VirtioHeader,
    Kind as VirtioKind, tcp_super_frame,
};
pub use wire::Layer;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, Dial, Mode, Remote};
use crate::device::Device;
use crate::keys::{SHORT_PASSPHRASE, SecretSpec};
use crate::session::{Owner, Peer, Timing};
use crate::status::{POINT_TO_POINT_NAME, PeerReport, Report};

/// Where logging should go for this configuration: syslog when -i was given
/// a socket that is also fd 2 (inetd), stderr otherwise.
pub fn log_sink(config: &Config) -> log::Sink {
    if config.mode == Mode::Inetd && transport::stderr_is_stream() {
        log::Sink::Syslog
    } else {
        log::Sink::Stderr
    }
}

/// The process environment, as the functions that read it want it.
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Runs the tunnel the configuration describes. Logging must be set up.
///
/// # Errors
/// Every failure, as an [`Error`] whose `exit_code` is the process status.
pub fn run(config: Config) -> Result<(), Error> {
    let started = Instant::now();
    wipe_secrets_from_the_environment();
    // First of all, before taptun opens a descriptor of its own that could
    // take a number systemd's hand-over names.
    let serve = matches!(config.mode, Mode::Server { .. });
    let socket_options = transport::SocketOptions::new(config.fwmark, config.congestion.clone());
    let inherited = transport::inherited_listener(&env, serve, &socket_options)?;
    forbid_core_dumps();
    // Before any thread exists, so that every thread inherits the mask.
    let signal_err = |e| Error::io("cannot set up signal handling", e);
    let shutdown = Arc::new(Stop::on_signals(&[libc::SIGINT, libc::SIGTERM]).map_err(signal_err)?);
    let usr1 = Stop::on_signals(&[libc::SIGUSR1]).map_err(signal_err)?;
    // SIGHUP reloads a hub's peers file and means nothing otherwise: blocked
    // and read (or never read), it cannot end the process (children still
    // start with it unblocked).
    let hangup = Stop::on_signals(&[libc::SIGHUP]).map_err(signal_err)?;
    // -i: take the stream first, so that nothing else can reach fd 1.
    let stdio = if config.mode == Mode::Inetd {
        std::panic::set_hook(Box::new(|info| ::log::error!("internal error: {info}")));
        let stream = Stream::stdio()?;
        socket_options.apply_to_stdio(&stream);
        Some(stream)
    } else {
        None
    };
    for warning in &config.warnings {
        ::log::warn!("{warning}");
    }
    let owner = Owner {
        shutdown,
        counters: Default::default(),
        timing: Timing::REAL,
    };
    let served = match &config.remote {
        Remote::Peers(path) => {
            let local = private_key(&config.local, config.mode == Mode::Inetd)?;
            let defaults = hub::Defaults {
                layer: config.layer,
                cipher: config.cipher,
                gso: config.gso,
                mtu: config.mtu,
                keepalive: config.keepalive,
                up: config.up.clone(),
                down: config.down.clone(),
                socket: config.socket.clone(),
            };
            match config.mode {
                // Each connection's peer, and so its device, is known only
                // once its message 1 is read.
                Mode::Inetd => Served::InetdHub(path, local, defaults),
                _ => Served::Hub(Box::new(hub::Hub::load(path, local, defaults)?)),
            }
        }
        _ => {
            let identity = load_identity(&config)?;
            let device = Device::open(
                &config.device,
                config.layer,
                config.mtu,
                config.gso,
                &config.socket,
            )?;
            let peer = Peer::new(device, identity, config.keepalive, owner.counters.clone());
            peer.set(config.up.clone(), config.down.clone(), config.keepalive);
            Served::One(Box::new(peer))
        }
    };
    let proxy_auth = load_proxy_auth(&config)?;
    let ids = resolve_ids(&config)?;
    let listener = match &config.mode {
        Mode::Server { bind, port } => Some(match inherited {
            Some(listener) => {
                ::log::info!("using the listening socket passed by systemd (fd 3)");
                listener
            }
            None => transport::listen(*bind, *port, &socket_options)?,
        }),
        _ => None,
    };
    // Made while still root, so that it can be given to the -U user; before
    // the readiness notice, so that a status right after it finds the socket.
    let control = config
        .control
        .as_deref()
        .map(|path| control::ControlSocket::bind(path, ids))
        .transpose()?;
    transport::notify_ready(&env);
    if let Some((uid, gid)) = ids {
        let dropped = match served {
            // A hub makes devices when a reload adds peers, and -i -A once
            // message 1 has named the peer.
            Served::Hub(_) | Served::InetdHub(..) => {
                sys::drop_privileges_keeping_net_admin(uid, gid)
            }
            Served::One(_) => sys::drop_privileges(uid, gid),
        };
        dropped.map_err(|e| Error::io("cannot drop privileges", e))?;
        ::log::debug!("now running as uid {uid}, gid {gid}");
    }
    let finished = Stop::new().map_err(|e| Error::io("cannot create an eventfd", e))?;
    if let (Some(waits_for), Served::One(peer)) = (waits_for(&config.mode), &served) {
        // Before the first attempt, whose failure may take seconds to show.
        ::log::info!("{} ready; {waits_for}", peer.endpoint.device().name());
    }
    let report = || {
        let now = Instant::now();
        let one = |name: &str, peer: &Peer<Device>| {
            let device = peer.endpoint.device().name();
            PeerReport::from_counters(name, device, &peer.counters, now)
        };
        Report::new(match &served {
            Served::Hub(hub) => hub
                .peers()
                .iter()
                .map(|listed| one(listed.peer.name.as_deref().unwrap_or("?"), &listed.peer))
                .collect(),
            Served::One(peer) => vec![one(POINT_TO_POINT_NAME, peer)],
            // -i -A: the peer is known only inside the connection.
            Served::InetdHub(..) => Vec::new(),
        })
    };
    let result = std::thread::scope(|scope| {
        // A hub's per-peer lines say it all; one peer's process line also
        // has the handshake failures and keepalives.
        let lines = || {
            let mut lines = match &served {
                Served::Hub(_) => Vec::new(),
                _ => vec![owner.counters.process_line(started.elapsed())],
            };
            lines.extend(report().lines());
            // A local endpoint's own counts: its stream's frames and drops.
            lines.extend(match &served {
                Served::Hub(hub) => hub
                    .peers()
                    .iter()
                    .filter_map(|listed| listed.peer.endpoint.device().counts())
                    .collect(),
                Served::One(peer) => peer.endpoint.device().counts().into_iter().collect(),
                Served::InetdHub(..) => Vec::new(),
            });
            lines
        };
        let (usr1, finished) = (&usr1, &finished);
        scope.spawn(move || report_counters_on_sigusr1(usr1, &lines, finished));
        if let Some(control) = &control {
            let (report, shutdown) = (&report, &owner.shutdown);
            scope.spawn(move || control.serve(report, &[shutdown, finished]));
        }
        let result = match (listener, stdio, &config.mode, &served) {
            (Some(listener), _, _, Served::Hub(hub)) => hub::serve(&owner, hub, listener, &hangup),
            (Some(listener), _, _, Served::One(peer)) => server::serve(&owner, peer, listener),
            (_, Some(stream), _, Served::InetdHub(path, local, defaults)) => {
                hub::inetd(&owner, path, local, defaults, stream)
            }
            (_, Some(stream), _, Served::One(peer)) => inetd(&owner, peer, stream),
            (_, _, Mode::Client(dial), Served::One(peer)) => {
                let dialer = client::Dialer {
                    dial,
                    socket: &socket_options,
                    proxy_auth: proxy_auth.as_ref(),
                };
                client::run(&owner, peer, &dialer, config.once)
            }
            // The configuration allows no other combination.
            _ => Ok(()),
        };
        finished.trigger();
        result
    });
    if let Some(signo) = owner.shutdown.take_signal() {
        ::log::info!("received {}, exiting", sys::signal_name(signo));
    }
    result
}

/// Whom this process serves.
enum Served<'c> {
    /// The one peer of -r/-k.
    One(Box<Peer<Device>>),
    /// -s -A.
    Hub(Box<hub::Hub>),
    /// -i -A: the peers file, our key, and the defaults for the peer that
    /// connects.
    InetdHub(&'c std::path::Path, PrivateKey, hub::Defaults),
}

/// -i: one handshake and at most one session on the stream.
fn inetd<D: PacketDevice>(owner: &Owner, peer: &Peer<D>, stream: Stream) -> Result<(), Error> {
    // One connection per process: only a cache shared with the other -i
    // processes can see a replay from an earlier one.
    let replays = replay::InetdReplays::open(&env);
    let respond = |io: &mut _| {
        handshake::respond(
            io,
            &peer.identity,
            peer.hello(),
            Instant::now(),
            &replays,
            &(),
        )
    };
    let Some(session) = owner.handshake(stream, respond)? else {
        return Ok(());
    };
    let name = session.peer.clone();
    let end = std::thread::scope(|scope| owner.run(peer, session, scope));
    session::outcome(&name, end, peer.endpoint.device().name())
}

/// What the tunnel waits for, for the start line (-s says it once
/// listening, with the address it got).
fn waits_for(mode: &Mode) -> Option<String> {
    match mode {
        Mode::Client(Dial::Tcp { hosts, port, proxy }) => {
            let hosts: Vec<String> = hosts
                .iter()
                .map(|host| transport::host_port(host, *port))
                .collect();
            let via = match proxy {
                Some(p) => format!(" through {}", p.proxy),
                None => String::new(),
            };
            Some(format!("connecting to {}{via}", hosts.join(", ")))
        }
        Mode::Client(Dial::Command(command)) => Some(format!("running `{command}`")),
        Mode::Inetd => Some("handshake with the peer on stdin/stdout".into()),
        Mode::Server { .. } => None,
    }
}

/// Logs the process's and each peer's lines (see `status`) each time
/// SIGUSR1 arrives, until `finished`.
fn report_counters_on_sigusr1(usr1: &Stop, lines: &dyn Fn() -> Vec<String>, finished: &Stop) {
    loop {
        match sys::wait_readable(usr1.raw_fd(), &[finished], None) {
            Ok(sys::Wait::Ready) => {
                usr1.take_signal();
                for line in lines() {
                    ::log::info!("{line}");
                }
            }
            Ok(_) | Err(_) => return,
        }
    }
}

/// -U and -G as ids, resolved before anything is opened.
fn resolve_ids(config: &Config) -> Result<Option<(libc::uid_t, libc::gid_t)>, Error> {
    let lookup_err = |opt: &str, e: std::io::Error| Error::Usage(format!("{opt}: {e}"));
    let user = config.user.as_deref().map(sys::lookup_user);
    let user = user.transpose().map_err(|e| lookup_err("-U", e))?;
    let group = config.group.as_deref().map(sys::lookup_group);
    let group = group.transpose().map_err(|e| lookup_err("-G", e))?;
    Ok(match (user, group) {
        (None, None) => None,
        (Some((uid, primary)), group) => Some((uid, group.unwrap_or(primary))),
        // -G alone: keep the user, change the group.
        (None, Some(gid)) => Some((sys::effective_uid(), gid)),
    })
}

/// `taptun --check`: loads and checks the secrets (and -U/-G), opens no
/// device or socket.
///
/// # Errors
/// What `run` would have refused before opening anything (exit 2).
pub fn check(config: &Config) -> Result<(), Error> {
    forbid_core_dumps();
    wipe_secrets_from_the_environment();
    for warning in &config.warnings {
        ::log::warn!("{warning}");
    }
    if let Remote::Peers(path) = &config.remote {
        let local = private_key(&config.local, config.mode == Mode::Inetd)?;
        let max = match config.mode {
            Mode::Inetd => peers::MAX_INETD_PEERS,
            _ => peers::MAX_PEERS,
        };
        let listed = peers::read(path, &local.public_key(), config.layer, max)?;
        ::log::info!("{}: {} peers", path.display(), listed.len());
    } else {
        load_identity(config)?;
    }
    load_proxy_auth(config)?;
    resolve_ids(config)?;
    Ok(())
}

/// Loads both secrets (and -k @FILE) and derives the keys and psk.
///
/// # Errors
/// A secret or key file that cannot be used, or a remote key that is this
/// end's own or a low-order point (all exit 2).
fn load_identity(config: &Config) -> Result<Identity, Error> {
    let inetd = config.mode == Mode::Inetd;
    let local = private_key(&config.local, inetd)?;
    let remote = match &config.remote {
        Remote::Key(key) => *key,
        Remote::KeyFile(path) => keys::read_public_key_file(path)?,
        Remote::Secret(spec) => private_key(spec, inetd)?.public_key(),
        Remote::Peers(_) => unreachable!("a hub has no one remote key"),
    };
    // Any 32 bytes pass for a public key, so -k given our own private key
    // (a key file instead of its `pubkey`) is only caught by comparing.
    if !matches!(config.remote, Remote::Secret(_)) && remote.0 == *local.as_bytes() {
        return Err(Error::Usage(format!(
            "-k is this end's private key (that of {}), not the other end's public key: \
             give the other end's, as `taptun pubkey` prints it there",
            config.local.origin
        )));
    }
    // Both ends then hold one key pair. That works (it used to be the only
    // check of a shared secret, and refusing it would stop configurations
    // that ran before), but anyone with that secret can be either end, and
    // it is usually one secret given twice or the wrong public key pasted:
    // say so loudly, and let the handshake say "swapped" if it fails.
    if remote == local.public_key() {
        let local_origin = config.local.origin;
        match &config.remote {
            Remote::Secret(spec) => ::log::warn!(
                "{local_origin} and {} give the same secret, so both ends hold one key pair and \
                 either end can impersonate the other; give each end a secret of its own (the server \
                 runs -l S1 -r S2, the client -l S2 -r S1)",
                spec.origin
            ),
            Remote::Key(_) | Remote::KeyFile(_) | Remote::Peers(_) => ::log::warn!(
                "-k is this end's own public key (that of {local_origin}): unless the other end \
                 runs with this very secret, give the other end's, as `taptun pubkey` prints it there"
            ),
        }
    }
    Identity::new(local, remote, config.cipher).map_err(|why| Error::Secret {
        subject: "the remote key".into(),
        why,
    })
}

/// The config holds its own zeroed copies of TAPTUN_LOCAL and TAPTUN_REMOTE:
/// the environment's, which /proc/PID/environ shows to root and to our own
/// uid for as long as we run, are overwritten and unset (TAPTUN_PROXY_AUTH
/// is taken the same way when it is read). Call before any thread starts.
fn wipe_secrets_from_the_environment() {
    for var in [config::ENV_LOCAL, config::ENV_REMOTE] {
        drop(sys::take_env_secret(var));
    }
}

/// The proxy's credentials, from --proxy-auth @FILE or TAPTUN_PROXY_AUTH
/// (wiped from the environment once read). Call before any thread starts.
///
/// # Errors
/// An unusable file or a value that is not user:password (exit 2).
fn load_proxy_auth(config: &Config) -> Result<Option<proxy::Credentials>, Error> {
    let Mode::Client(Dial::Tcp {
        proxy: Some(config::ProxyConfig {
            auth: Some(auth), ..
        }),
        ..
    }) = &config.mode
    else {
        return Ok(None);
    };
    let (text, subject) = match auth {
        config::ProxyAuth::File(path) => {
            (keys::read_secret_file(path)?, path.display().to_string())
        }
        config::ProxyAuth::Env => match sys::take_env_secret(config::ENV_PROXY_AUTH) {
            Some(text) => (text, config::ENV_PROXY_AUTH.to_owned()),
            None => return Ok(None),
        },
    };
    proxy::Credentials::parse(&text)
        .map(Some)
        .map_err(|why| Error::Secret { subject, why })
}

fn private_key(spec: &SecretSpec, inetd: bool) -> Result<PrivateKey, Error> {
    let text = spec.load()?;
    if let SecretText::Passphrase(pass) = &text {
        if pass.chars().count() < SHORT_PASSPHRASE {
            ::log::warn!(
                "the passphrase of {} is shorter than {SHORT_PASSPHRASE} characters; prefer a key from `taptun genkey`",
                spec.origin
            );
        }
        if inetd {
            ::log::warn!(
                "{} is a passphrase: with -i every connection pays an Argon2id derivation before it can check anything; \
                 prefer a key from `taptun genkey`",
                spec.origin
            );
        }
    }
    Ok(text.private_key())
}

/// Makes the process non-dumpable before it reads a secret: keys and
/// passphrases must not leak into a core file or to a debugger.
fn forbid_core_dumps() {
    if let Err(e) = sys::forbid_core_dumps() {
        ::log::warn!("cannot forbid core dumps (keys could leak into one): {e}");
    }
}

/// `taptun status PATH [--json]`: asks the control socket of a running
/// taptun and prints its answer to `out`.
///
/// # Errors
/// No socket at `path`, nobody answering, a refusal (another user), or a
/// failing output; all exit 1.
pub fn status(path: &std::path::Path, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    control::query(path, json, out)
}

/// `taptun genkey [PATH]`: prints a new private key, or writes it to a new
/// file PATH with mode 600 and prints its public key: labelled when
/// `label` (stdout is a terminal, where a bare key could pass for the
/// private one), bare for scripts.
///
/// # Errors
/// A failing random source or output, or PATH that exists already.
pub fn genkey(
    path: Option<&std::path::Path>,
    label: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    forbid_core_dumps();
    let key = PrivateKey::generate()?;
    // One write of the whole line: a line-buffered stdout passes it straight
    // through, where `writeln!` would leave the key in stdout's buffer.
    let mut line = key.to_text();
    line.push('\n');
    let Some(path) = path else {
        return out
            .write_all(line.as_bytes())
            .map_err(|e| Error::io("cannot write the key", e));
    };
    use std::os::unix::fs::OpenOptionsExt;
    let file_err = |source| Error::KeyFile {
        path: path.to_owned(),
        kind: error::KeyFileKind::New,
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err)?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(file_err)?;
    let label = if label { "public key: " } else { "" };
    writeln!(out, "{label}{}", key.public_key())
        .map_err(|e| Error::io("cannot write the public key", e))
}

/// `taptun pubkey`: reads a secret (key or passphrase) as the first line of
/// `input`, prints its public key. Give it an unbuffered `input` (see
/// [`unbuffered_stdin`]): a buffered reader keeps a copy of what it read.
///
/// # Errors
/// Unreadable input (exit 1), or a secret that is empty, longer than 64 KiB,
/// not UTF-8 or a malformed key (exit 2).
pub fn pubkey(input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    forbid_core_dumps();
    let line = keys::read_secret_line(input, true).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => Error::Secret {
            subject: "standard input".into(),
            why: e.to_string(),
        },
        _ => Error::io("cannot read the secret from standard input", e),
    })?;
    print_public_key(&line, "standard input", out)
}

/// `taptun pubkey FILE`: as [`pubkey`], the secret read from a file with
/// the checks of a secret file (mode 600 among them).
///
/// # Errors
/// A file that cannot be used as a secret file, or a secret that is empty
/// or a malformed key (exit 2).
pub fn pubkey_of_file(path: &std::path::Path, out: &mut dyn Write) -> Result<(), Error> {
    forbid_core_dumps();
    let line = keys::read_secret_file(path)?;
    print_public_key(&line, &path.display().to_string(), out)
}

fn print_public_key(line: &str, subject: &str, out: &mut dyn Write) -> Result<(), Error> {
    let text = SecretText::parse(line).map_err(|why| Error::Secret {
        subject: subject.into(),
        why,
    })?;
    writeln!(out, "{}", text.private_key().public_key())
        .map_err(|e| Error::io("cannot write the key", e))
}

/// Standard input without std's buffer (which would keep a copy of a secret
/// read through it): a duplicate of descriptor 0.
///
/// # Errors
/// When descriptor 0 is not open.
pub fn unbuffered_stdin() -> Result<std::fs::File, Error> {
    use std::os::fd::AsFd;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| Error::io("cannot read standard input", e))
}
