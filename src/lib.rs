//! taptun: a TAP/TUN tunnel over any reliable byte stream, authenticated
//! with Noise_XXpsk0.
//!
//! # Layout
//!
//! - [`config`]: the command line, validated into a `Config` before anything is opened.
//! - [`keys`]: secret forms, Argon2id, public keys, the psk.
//! - [`handshake`]: the Noise handshake as state machines, key confirmation, the replay cache.
//! - [`frame`]: the u16 big-endian length-prefix codec.
//! - [`device`]: opening TAP and TUN devices; the `PacketDevice` trait.
//! - [`transport`]: the streams: TCP listen and dial, stdio, a command's pipes.
//! - [`relay`]: the two directions of an established session, and counters.
//! - [`session`]: handshake then relay for one stream; [`server`]: -s with many.
//! - [`log`]: stderr or syslog. [`error`]: the one error type. `sys`: the raw syscalls.
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod handshake;
pub mod keys;
pub mod log;
pub mod relay;
pub mod server;
pub mod session;
pub mod sys;
pub mod transport;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, Mode, Remote};
use crate::device::Device;
use crate::error::Error;
use crate::handshake::{
    Hello, INITIATOR_COMMAND_DEADLINE, INITIATOR_DEADLINE, Identity, ReplayCache,
};
use crate::keys::{PrivateKey, SHORT_PASSPHRASE, SecretSpec, SecretText};
use crate::session::Tunnel;
use crate::sys::Stop;
use crate::transport::Stream;

/// Where logging should go for this configuration: syslog when -i was given
/// a socket that is also fd 2 (inetd), stderr otherwise.
pub fn log_sink(config: &Config) -> log::Sink {
    if config.mode == Mode::Inetd && transport::stderr_is_stream() {
        log::Sink::Syslog
    } else {
        log::Sink::Stderr
    }
}

/// Runs the tunnel the configuration describes. Logging must be set up.
///
/// # Errors
/// Every failure, as an [`Error`] whose `exit_code` is the process status.
pub fn run(config: Config) -> Result<(), Error> {
    // Before any thread exists, so that every thread inherits the mask.
    let shutdown =
        Arc::new(Stop::on_signals().map_err(|e| Error::io("cannot set up signal handling", e))?);
    // -i: take the stream first, so that nothing else can reach fd 1.
    let stdio = if config.mode == Mode::Inetd {
        std::panic::set_hook(Box::new(|info| ::log::error!("internal error: {info}")));
        Some(Stream::stdio()?)
    } else {
        None
    };
    for warning in &config.warnings {
        ::log::warn!("{warning}");
    }
    let identity = load_identity(&config)?;
    let device = Device::open(config.device.as_deref(), config.layer, config.mtu)?;
    let hello = Hello::new(config.layer, device.mtu());
    let tunnel = Tunnel {
        device,
        identity,
        hello,
        shutdown,
    };

    let result = match (&config.mode, stdio) {
        (Mode::Server { bind, port }, _) => {
            let listener = transport::listen(*bind, *port)?;
            server::serve(&tunnel, listener)
        }
        (Mode::Client { host, port }, _) => {
            let deadline = Instant::now() + INITIATOR_DEADLINE;
            let (tcp, addr) = transport::connect(host, *port, deadline)?;
            let stream = Stream::tcp(tcp, addr.to_string())?;
            initiator_session(&tunnel, stream, Instant::now() + INITIATOR_DEADLINE)
        }
        (Mode::Command { command }, _) => {
            let stream = Stream::command(command)?;
            initiator_session(&tunnel, stream, Instant::now() + INITIATOR_COMMAND_DEADLINE)
        }
        (Mode::Inetd, Some(stream)) => {
            // One connection per process: the cache only guards this one.
            let replays = ReplayCache::default();
            match tunnel.respond(stream, Instant::now(), &replays)? {
                Some(ready) => {
                    let peer = ready.peer.clone();
                    session::outcome(&peer, tunnel.relay(ready), &tunnel.device)
                }
                None => Ok(()),
            }
        }
        (Mode::Inetd, None) => unreachable!("the stdio stream is taken above for -i"),
    };
    if let Some(signo) = tunnel.shutdown.take_signal() {
        ::log::info!("received {}, exiting", sys::signal_name(signo));
    }
    result
}

fn initiator_session(tunnel: &Tunnel, stream: Stream, deadline: Instant) -> Result<(), Error> {
    match tunnel.initiate(stream, deadline)? {
        Some(ready) => {
            let peer = ready.peer.clone();
            session::outcome(&peer, tunnel.relay(ready), &tunnel.device)
        }
        None => Ok(()),
    }
}

/// Loads both secrets and derives the keys and psk.
fn load_identity(config: &Config) -> Result<Identity, Error> {
    let inetd = config.mode == Mode::Inetd;
    let local = private_key(&config.local, inetd)?;
    let remote = match &config.remote {
        Remote::Key(key) => *key,
        Remote::Secret(spec) => private_key(spec, inetd)?.public_key(),
    };
    Identity::new(local, remote, config.cipher).map_err(|why| Error::Secret {
        subject: "the remote key".into(),
        why,
    })
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

/// `taptun genkey`: prints a new private key.
///
/// # Errors
/// A failing random source or output.
pub fn genkey(out: &mut dyn Write) -> Result<(), Error> {
    let key = PrivateKey::generate()?;
    writeln!(out, "{}", key.to_text().as_str()).map_err(|e| Error::io("cannot write the key", e))
}

/// `taptun pubkey`: reads a secret (key or passphrase) on `input`, prints
/// its public key.
///
/// # Errors
/// Unreadable input, or a secret that is empty or a malformed key (exit 2).
pub fn pubkey(input: &mut dyn BufRead, out: &mut dyn Write) -> Result<(), Error> {
    let mut line = zeroize::Zeroizing::new(String::new());
    input
        .read_line(&mut line)
        .map_err(|e| Error::io("cannot read the secret from standard input", e))?;
    let text = SecretText::parse(&line).map_err(|why| Error::Secret {
        subject: "standard input".into(),
        why,
    })?;
    writeln!(out, "{}", text.private_key().public_key())
        .map_err(|e| Error::io("cannot write the key", e))
}
