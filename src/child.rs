//! The commands taptun runs with /bin/sh -c: the -x command and the hooks.
//!
//! A child never sees the secrets or systemd's hand-over variables
//! ([`is_scrubbed`]) and starts with no signal blocked, so that it hears the
//! SIGTERM that asks it to go. [`Child::stop`] is the one way to end one:
//! SIGTERM (to its whole process group if it leads one), SIGKILL [`GRACE`]
//! later if it is still there, then reaping. Once reaped, a child is never
//! signalled again: its pid may name another process by then.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{self, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::sys;

/// Environment variables a child must never see: the secrets and systemd's
/// hand-over to us. A variable added later that holds a secret (a proxy's
/// credentials, say) belongs here.
pub const SCRUBBED_ENV: &[&str] = &[
    "TAPTUN_LOCAL",
    "TAPTUN_REMOTE",
    "TAPTUN_PROXY_AUTH",
    "NOTIFY_SOCKET",
];
/// Prefixes of more such variables: systemd's socket activation sets
/// LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, LISTEN_PIDFDID, and may add more.
pub const SCRUBBED_ENV_PREFIXES: &[&str] = &["LISTEN_"];
/// How long a child that must go has between SIGTERM and SIGKILL: short
/// enough for taptun to end soon after SIGINT or SIGTERM.
pub const GRACE: Duration = Duration::from_secs(1);
/// How often a child is checked while we wait for it to exit.
pub const POLL: Duration = Duration::from_millis(10);

/// Whether environment variable `name` must be kept from a child.
pub fn is_scrubbed(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    SCRUBBED_ENV.iter().any(|var| name == var.as_bytes())
        || SCRUBBED_ENV_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix.as_bytes()))
}

/// `/bin/sh -c command`, with our environment less what [`is_scrubbed`]
/// names, and no signal blocked. The caller sets its stdio and adds to its
/// environment, then starts it with [`Child::spawn`].
pub fn shell(command: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command);
    for (name, _) in std::env::vars_os().filter(|(name, _)| is_scrubbed(name)) {
        cmd.env_remove(name);
    }
    sys::unblock_signals_on_exec(&mut cmd);
    cmd
}

/// A running command, until it is reaped.
pub struct Child {
    process: process::Child,
    /// It leads a process group of its own: signals go to the whole group,
    /// so that what it started goes too.
    group: bool,
    /// Set once reaped; from then on it is never signalled.
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` (made by [`shell`]), in a process group of its own if
    /// `own_group`.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn(mut cmd: Command, own_group: bool) -> io::Result<Child> {
        if own_group {
            cmd.process_group(0);
        }
        Ok(Child {
            process: cmd.spawn()?,
            group: own_group,
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// The pipes asked for when it was started, each once.
    pub fn take_pipes(&mut self) -> (Option<ChildStdin>, Option<ChildStdout>, Option<ChildStderr>) {
        let p = &mut self.process;
        (p.stdin.take(), p.stdout.take(), p.stderr.take())
    }

    /// Sends `signal`, unless it has been reaped.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            sys::kill(self.id(), self.group, signal);
        }
    }

    /// Its exit status if it has exited, without waiting.
    ///
    /// # Errors
    /// waitpid(2)'s.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.process.try_wait()?;
        }
        Ok(self.status)
    }

    /// Its exit status once it has exited, waiting up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            match self.try_wait() {
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(status) => return status,
                Err(_) => return None,
            }
        }
    }

    /// SIGTERM, SIGKILL [`GRACE`] later if it is still there, and reaped:
    /// its exit status (`None` only if waitpid(2) failed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(GRACE) {
            return Some(status);
        }
        self.signal(libc::SIGKILL);
        self.status = self.process.wait().ok();
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ENV_LOCAL, ENV_REMOTE};

    #[test]
    fn secrets_and_every_listen_variable_are_scrubbed() {
        for name in [
            ENV_LOCAL,
            ENV_REMOTE,
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "LISTEN_PIDFDID",
            "LISTEN_ANYTHING_NEW",
        ] {
            assert!(is_scrubbed(name.as_ref()), "{name}");
        }
        for name in [
            "PATH",
            "TAPTUN_DEVICE",
            "TAPTUN_PEER_KEY",
            "XLISTEN_FDS",
            "LISTEN",
        ] {
            assert!(!is_scrubbed(name.as_ref()), "{name}");
        }
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut cmd = shell("trap '' TERM; echo ready; while :; do sleep 0.05; done");
        cmd.stdout(std::process::Stdio::piped());
        let mut child = Child::spawn(cmd, true).unwrap();
        let (_, stdout, _) = child.take_pipes();
        let mut ready = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(stdout.unwrap()), &mut ready).unwrap();
        let started = Instant::now();
        let status = child.stop().unwrap();
        let took = started.elapsed();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(took >= GRACE && took < GRACE * 3, "{took:?}");
        assert_eq!(child.try_wait().unwrap(), Some(status));
    }
}
