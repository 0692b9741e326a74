//! The one error type of taptun.
//!
//! Every variant names what it concerns (a device, a file, an address, a peer)
//! and keeps its cause, so that `main` can print the whole chain in one line
//! and map the variant to an exit status. Messages say what to do where there
//! is something to do.

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

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
    /// A local endpoint without a TAP device (`-d qemu:`, `qemu-connect:`,
    /// `vde:`) could not be set up.
    Local {
        endpoint: String,
        what: String,
        source: Option<io::Error>,
    },
    /// The listening socket could not be made.
    Listen { addr: String, source: io::Error },
    /// The server could not be reached.
    Connect { addr: String, source: io::Error },
    /// The -x command could not be started.
    Command { command: String, source: io::Error },
    /// The -x command exited, or was killed, before the handshake finished.
    CommandExited { command: String, status: ExitStatus },
    /// The handshake with a peer failed (authentication, version, layer...).
    Handshake {
        peer: String,
        cause: Box<dyn HandshakeCause>,
    },
    /// The peer broke the protocol after the handshake.
    Protocol { peer: String, what: String },
    /// The proxy (-P) gave no tunnel; `denied` when it refused us for good
    /// (credentials, not allowed: exit 3, no retry).
    Proxy {
        proxy: String,
        what: String,
        denied: bool,
    },
    /// A hook failed: the text says which and how.
    Hook(String),
    /// An I/O failure on something the text names.
    Io { what: String, source: io::Error },
    /// The control socket (-S PATH, `taptun status PATH`) could not be
    /// served or asked; `hint` says what to do. `misconfigured` when the
    /// fix is in the configuration (exit 2), not in the running system.
    Control {
        path: PathBuf,
        what: String,
        source: Option<io::Error>,
        hint: &'static str,
        misconfigured: bool,
    },
    /// The hub's peers file (-A) is refused: the file itself (`line` None:
    /// its owner, mode, size, kind) or a line of it.
    PeersFile {
        path: PathBuf,
        line: Option<usize>,
        why: String,
    },
}

/// What [`Error`] needs to know of a handshake's failure; the handshake's
/// error type implements it, so that this module imports nothing of the
/// crate.
pub trait HandshakeCause: std::error::Error + Send + Sync {
    /// It proves the peer is not who we expect or cannot talk to us: a
    /// client gives up instead of retrying.
    fn is_provable(&self) -> bool;
    /// It counts as an authentication failure (exit status 3).
    fn is_authentication(&self) -> bool;
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
            Error::Usage(_)
            | Error::Secret { .. }
            | Error::KeyFile { .. }
            | Error::PeersFile { .. } => EXIT_USAGE,
            Error::Control {
                misconfigured: true,
                ..
            } => EXIT_USAGE,
            Error::Handshake { cause, .. } if cause.is_authentication() => EXIT_AUTH,
            Error::Proxy { denied: true, .. } => EXIT_AUTH,
            // A taptun at the other end of the command that failed its
            // handshake (through ssh, its status is ssh's).
            Error::CommandExited { status, .. } if status.code() == Some(EXIT_AUTH.into()) => {
                EXIT_AUTH
            }
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

/// Advice on a -x command's exit status, for the statuses that have a
/// usual cause.
fn command_hint(code: i32) -> &'static str {
    match code {
        127 => " (sh: command not found? check the -x command)",
        126 => " (sh: a command that cannot be executed? check the -x command)",
        255 => " (ssh's status when ssh itself fails: see its message above)",
        3 => {
            " (taptun's status for a failed handshake, if the command ran one: wrong secrets or \
             a different -e? see its message above)"
        }
        _ => "",
    }
}

/// The usual name of a signal that ends a command.
fn signal_name(signo: i32) -> Option<&'static str> {
    Some(match signo {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
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
            Error::Local {
                endpoint,
                what,
                source,
            } => {
                write!(f, "{endpoint}: {what}")?;
                match source {
                    Some(source) => write!(f, ": {source}"),
                    None => Ok(()),
                }
            }
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::Proxy { proxy, what, .. } => write!(f, "proxy {proxy}: {what}"),
            Error::Command { command, source } => {
                write!(f, "cannot run command `{command}`: {source}")
            }
            Error::CommandExited { command, status } => {
                write!(f, "the command `{command}` ")?;
                match (status.code(), status.signal()) {
                    (Some(code), _) => write!(f, "exited with status {code}")?,
                    (None, Some(signo)) => match signal_name(signo) {
                        Some(name) => write!(f, "was killed by signal {name}")?,
                        None => write!(f, "was killed by signal {signo}")?,
                    },
                    (None, None) => write!(f, "ended ({status})")?,
                }
                let hint = status.code().map_or("", command_hint);
                write!(f, " before the handshake{hint}")
            }
            Error::Handshake { peer, cause } => write!(f, "{peer}: handshake failed: {cause}"),
            Error::Protocol { peer, what } => write!(f, "{peer}: protocol error: {what}"),
            Error::Hook(why) => f.write_str(why),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Control {
                path,
                what,
                source,
                hint,
                ..
            } => {
                write!(f, "control socket {}: {what}", path.display())?;
                if let Some(source) = source {
                    write!(f, ": {source}")?;
                }
                if !hint.is_empty() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            Error::PeersFile { path, line, why } => match line {
                Some(line) => write!(f, "peers file {}:{line}: {why}", path.display()),
                None => write!(f, "peers file {}: {why}", path.display()),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(command: &str, raw_wait_status: i32) -> Error {
        Error::CommandExited {
            command: command.into(),
            status: ExitStatus::from_raw(raw_wait_status),
        }
    }

    #[test]
    fn a_command_that_ended_is_named_with_its_status_or_signal() {
        let e = exited("sshh gw", 127 << 8);
        assert_eq!(
            e.to_string(),
            "the command `sshh gw` exited with status 127 before the handshake \
             (sh: command not found? check the -x command)"
        );
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        let e = exited("false", 1 << 8);
        assert_eq!(
            e.to_string(),
            "the command `false` exited with status 1 before the handshake"
        );
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        let e = exited("ssh gw", libc::SIGKILL);
        assert_eq!(
            e.to_string(),
            "the command `ssh gw` was killed by signal SIGKILL before the handshake"
        );
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        // A taptun behind the command that refused us (ssh passes its status on).
        assert_eq!(exited("ssh gw taptun -i", 3 << 8).exit_code(), EXIT_AUTH);
    }
}
