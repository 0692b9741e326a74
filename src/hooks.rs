//! The up and down hooks (-u, -D): commands run with /bin/sh -c when a
//! session is established and when it ends.
//!
//! A hook sees TAPTUN_DEVICE, TAPTUN_TYPE, TAPTUN_MTU, TAPTUN_PEER and
//! TAPTUN_PEER_KEY, and never the secrets or systemd's hand-over variables
//! (see [`crate::transport::is_scrubbed`]). Its stdin is /dev/null; its
//! stdout and stderr are ours (in -i mode stdout is /dev/null). A hook that
//! runs past [`HOOK_LIMIT`] is killed; either way the failure is logged, and
//! a failed up hook ends the session.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::device::Layer;
use crate::keys::PublicKey;
use crate::transport::scrub_env;

/// How long a hook may run.
pub const HOOK_LIMIT: Duration = Duration::from_secs(30);
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

/// Runs hook `name` (for the log: "up" or "down") and waits for it.
///
/// # Errors
/// A text saying why the hook failed: it could not start, exited non-zero
/// or by a signal, or ran past the limit.
pub fn run(name: &str, command: &str, env: &HookEnv) -> Result<(), String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null());
    scrub_env(&mut cmd);
    cmd.envs(env.vars());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name} hook `{command}` could not start: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                log::debug!(
                    "{name} hook `{command}` succeeded in {:.1?}",
                    started.elapsed()
                );
                return Ok(());
            }
            Ok(Some(status)) => return Err(format!("{name} hook `{command}` failed: {status}")),
            Ok(None) if started.elapsed() < HOOK_LIMIT => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} hook `{command}` ran past {} s and was killed",
                    HOOK_LIMIT.as_secs()
                ));
            }
            Err(e) => return Err(format!("{name} hook `{command}`: {e}")),
        }
    }
}
