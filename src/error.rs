//! The one error type of taptun.
//!
//! Every variant names what it concerns (a device, a file, an address, a peer)
//! and keeps its cause, so that `main` can print the whole chain in one line
//! and map the variant to an exit status. Messages say what to do where there
//! is something to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::handshake::HandshakeError;

/// Exit status for a clean end (the peer closed the stream, or a signal).
pub const EXIT_OK: u8 = 0;
/// Exit status for a failure at run time.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for an authentication (handshake) failure.
pub const EXIT_AUTH: u8 = 3;
/// What `main` appends to an error in the command line itself, and to no
/// other: `--help` cannot help with a file's mode or a refused connection.
pub const SEE_HELP: &str = "(see taptun --help)";

#[derive(Debug)]
pub enum Error {
    /// The command line or the environment is wrong; the text says how.
    Usage(String),
    /// A secret's text is not a valid key or passphrase (names the option).
    Secret { subject: String, why: String },
    /// A key file could not be read, or (genkey) made.
    KeyFile {
        path: PathBuf,
        kind: KeyFileKind,
        source: io::Error,
    },
    /// The TAP/TUN device could not be opened or configured.
    Device {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    /// The listening socket could not be made.
    Listen { addr: String, source: io::Error },
    /// The server could not be reached.
    Connect { addr: String, source: io::Error },
    /// The -x command could not be started.
    Command { command: String, source: io::Error },
    /// The handshake with a peer failed (authentication, version, layer...).
    Handshake { peer: String, cause: HandshakeError },
    /// The peer broke the protocol after the handshake.
    Protocol { peer: String, what: String },
    /// A hook failed: the text says which and how.
    Hook(String),
    /// An I/O failure on something the text names.
    Io { what: String, source: io::Error },
}

/// What a key file was for, to name it right in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileKind {
    /// A secret (-l, -r, their variables, `pubkey FILE`).
    Secret,
    /// The peer's public key (-k @FILE).
    PublicKey,
    /// The new file of `genkey PATH`.
    New,
}

impl Error {
    /// The process exit status this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Secret { .. } | Error::KeyFile { .. } => EXIT_USAGE,
            Error::Handshake { .. } => EXIT_AUTH,
            _ => EXIT_FAILURE,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Advice appended to device errors for the usual causes.
fn device_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (run as root, give the process CAP_NET_ADMIN, or use a persistent device you own: ip tuntap add dev NAME mode tap user YOU)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            " (the tun driver is missing: modprobe tun, or create /dev/net/tun)"
        }
        Some(libc::EBUSY) => " (another process is attached to it)",
        Some(libc::EINVAL) => " (it exists but is of the other type: check -t)",
        _ => "",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Secret { subject, why } => write!(f, "{subject}: {why}"),
            Error::KeyFile { path, kind, source } => {
                let path = path.display();
                match kind {
                    KeyFileKind::Secret => write!(f, "cannot read secret file {path}: {source}"),
                    KeyFileKind::PublicKey => {
                        write!(f, "-k: cannot read public key file {path}: {source}")
                    }
                    KeyFileKind::New if source.kind() == io::ErrorKind::AlreadyExists => write!(
                        f,
                        "{path} exists already and is kept as it is (genkey never overwrites \
                         a file): give a path that does not exist yet"
                    ),
                    KeyFileKind::New => write!(f, "cannot create key file {path}: {source}"),
                }
            }
            Error::Device { name, what, source } => {
                write!(f, "{name}: {what}: {source}{}", device_hint(source))
            }
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::Command { command, source } => {
                write!(f, "cannot run command `{command}`: {source}")
            }
            Error::Handshake { peer, cause } => write!(f, "{peer}: handshake failed: {cause}"),
            Error::Protocol { peer, what } => write!(f, "{peer}: protocol error: {what}"),
            Error::Hook(why) => f.write_str(why),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The sources are already part of the one-line message above; keeping
        // them out of source() stops main from printing them twice.
        None
    }
}
