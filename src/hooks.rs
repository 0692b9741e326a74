//! The up and down hooks (-u, -D): commands run with /bin/sh -c when a
//! session is established and when it ends.
//!
//! A hook sees TAPTUN_DEVICE, TAPTUN_TYPE, TAPTUN_MTU, TAPTUN_PEER and
//! TAPTUN_PEER_KEY, and never the secrets or systemd's hand-over variables
//! (see [`crate::transport::is_scrubbed`]). Its stdin is /dev/null; its
//! stdout and stderr are ours (in -i mode stdout is /dev/null). It runs in
//! a process group of its own. A hook that runs past [`HOOK_LIMIT`] is
//! killed, and so is an up hook running when SIGINT or SIGTERM arrives; the
//! down hook then gets [`DOWN_LIMIT_ON_STOP`]. Either way the failure is
//! logged, and a failed up hook ends the session.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::Layer;
use crate::keys::PublicKey;
use crate::sys::{self, Stop};
use crate::transport::scrub_env;

/// How long a hook may run.
pub const HOOK_LIMIT: Duration = Duration::from_secs(30);
/// How long the down hook may run once SIGINT or SIGTERM has arrived.
pub const DOWN_LIMIT_ON_STOP: Duration = Duration::from_secs(5);
/// How long a hook that must go has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// How often a running hook is checked.
const POLL: Duration = Duration::from_millis(10);

/// What a hook is told about the session.
#[derive(Clone, Debug)]
pub struct HookEnv {
    pub device: String,
    pub layer: Layer,
    pub mtu: u32,
    /// host:port, `stdio` or `exec`.
    pub peer: String,
    pub peer_key: PublicKey,
}

impl HookEnv {
    fn vars(&self) -> [(&'static str, String); 5] {
        [
            ("TAPTUN_DEVICE", self.device.clone()),
            ("TAPTUN_TYPE", self.layer.to_string()),
            ("TAPTUN_MTU", self.mtu.to_string()),
            ("TAPTUN_PEER", self.peer.clone()),
            ("TAPTUN_PEER_KEY", self.peer_key.to_string()),
        ]
    }
}

/// Runs hook `name` (for the log: "up" or "down") and waits for it, at
/// most `limit`. Once `stop` is set the hook has at most `after_stop` left
/// (zero for an up hook: it is stopped at once). A hook that must go gets
/// SIGTERM, and SIGKILL [`KILL_GRACE`] later, sent to its process group so
/// that what it started goes too.
///
/// # Errors
/// A text saying why the hook failed: it could not start, exited non-zero
/// or by a signal, ran past the limit, or was stopped.
pub fn run(
    name: &str,
    command: &str,
    env: &HookEnv,
    limit: Duration,
    stop: &Stop,
    after_stop: Duration,
) -> Result<(), String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null());
    scrub_env(&mut cmd);
    cmd.envs(env.vars());
    // Its own group, so that a stop reaches the commands it runs too.
    cmd.process_group(0);
    sys::unblock_signals_on_exec(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name} hook `{command}` could not start: {e}"))?;
    log::debug!("{name} hook `{command}` started (pid {})", child.id());
    let mut deadline = started + limit;
    let mut stopped = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                log::debug!(
                    "{name} hook `{command}` succeeded in {:.1?}",
                    started.elapsed()
                );
                return Ok(());
            }
            Ok(Some(status)) => {
                log::debug!(
                    "{name} hook `{command}` exited with {status} after {:.1?}",
                    started.elapsed()
                );
                return Err(format!("{name} hook `{command}` failed: {status}"));
            }
            Ok(None) if Instant::now() < deadline => {
                if !stopped && stop.is_set() {
                    stopped = true;
                    deadline = deadline.min(Instant::now() + after_stop);
                    continue;
                }
                let wake = (Instant::now() + POLL).min(deadline);
                if stopped {
                    // The stop stays readable: only sleep now.
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                } else {
                    let _ = sys::wait_readable(stop.raw_fd(), sys::NO_STOPS, Some(wake));
                }
            }
            Ok(None) => {
                terminate(&mut child);
                return Err(if stopped {
                    format!("{name} hook `{command}` was stopped")
                } else {
                    format!(
                        "{name} hook `{command}` ran past {} s and was killed",
                        limit.as_secs()
                    )
                });
            }
            Err(e) => return Err(format!("{name} hook `{command}`: {e}")),
        }
    }
}

/// SIGTERM to the hook's process group, SIGKILL [`KILL_GRACE`] later if the
/// hook is still there, then reaps it.
fn terminate(child: &mut Child) {
    sys::kill_group(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // Reaped: its pid may be reused now, so the group is not
            // signalled again.
            return;
        }
        std::thread::sleep(POLL);
    }
    sys::kill_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            device: "tt0".into(),
            layer: Layer::Tap,
            mtu: 1500,
            peer: "exec".into(),
            peer_key: PublicKey([0; crate::keys::KEY_LEN]),
        }
    }

    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
    }

    #[test]
    fn a_stop_ends_a_running_up_hook_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("taptun-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("sleep.pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let stop = Stop::new().unwrap();
        let started = Instant::now();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                while !std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n')) {
                    std::thread::sleep(POLL);
                }
                stop.trigger();
            });
            run("up", &command, &env(), HOOK_LIMIT, &stop, Duration::ZERO)
        });
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.is_err_and(|why| why.contains("was stopped")));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!alive(pid.trim()), "the hook's child outlived it");
    }

    #[test]
    fn after_a_stop_a_down_hook_keeps_its_grace() {
        let stop = Stop::new().unwrap();
        stop.trigger();
        assert_eq!(
            run(
                "down",
                "sleep 0.2",
                &env(),
                HOOK_LIMIT,
                &stop,
                DOWN_LIMIT_ON_STOP
            ),
            Ok(())
        );
        let result = run(
            "down",
            "sleep 30",
            &env(),
            HOOK_LIMIT,
            &stop,
            Duration::from_millis(100),
        );
        assert!(result.is_err());
    }
}
