//! The up and down hooks (-u, -D): commands run with /bin/sh -c when a
//! session is established and when it ends.
//!
//! A hook sees TAPTUN_DEVICE, TAPTUN_TYPE, TAPTUN_MTU, TAPTUN_PEER,
//! TAPTUN_PEER_KEY and, in a hub, TAPTUN_PEER_NAME, and never the secrets or systemd's hand-over variables
//! (see `child::is_scrubbed`). Its stdin is /dev/null and its stdout is
//! ours (in -i mode /dev/null). Its stderr is a pipe: each line goes to our
//! log as it comes (under inetd our own stderr may go nowhere), and the last
//! [`STDERR_TAIL`] bytes end the failure's text, so that the error says what
//! the hook said. It runs in a process group of its own. A hook that runs
//! past [`HOOK_LIMIT`] is stopped (`Child::stop`: SIGTERM to its group,
//! SIGKILL a second later), and so is an up hook running when SIGINT or
//! SIGTERM arrives; the down hook then gets [`DOWN_LIMIT_ON_STOP`]. Either
//! way the failure is logged, and a failed up hook ends the session.
//!
//! An up hook that fails the same way at every reconnect (an address that
//! is already there, say) would log the same error every time; [`Repeats`]
//! lets the caller log a failure loudly once, and its repeats quietly.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStderr, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::{self, Child, POLL};
use crate::device::Layer;
use crate::keys::PublicKey;
use crate::sys::{self, Stop};

/// How long a hook may run.
pub const HOOK_LIMIT: Duration = Duration::from_secs(30);
/// How long the down hook may run once SIGINT or SIGTERM has arrived.
pub const DOWN_LIMIT_ON_STOP: Duration = Duration::from_secs(5);
/// How much of a hook's stderr, its last lines, a failure's text carries.
pub const STDERR_TAIL: usize = 4096;
/// A longer line of a hook's stderr is cut here, so that a hook writing
/// without newlines cannot grow our memory.
const LINE_MAX: usize = 1024;
/// How long an exited hook's stderr may stay open: a command it left in
/// the background may hold it for good, and is then forwarded on its own.
const STDERR_GRACE: Duration = Duration::from_millis(200);
/// A failure that repeats is logged again at warning level every this many
/// times, so that a tunnel down for hours still says so now and then.
pub const REMIND_EVERY: u64 = 10;

/// What a hook is told about the session.
#[derive(Clone, Debug)]
pub struct HookEnv {
    pub device: String,
    pub layer: Layer,
    pub mtu: u32,
    /// host:port, `stdio` or `exec`.
    pub peer: String,
    pub peer_key: PublicKey,
    /// The peer's name in a hub's peers file.
    pub peer_name: Option<String>,
}

impl HookEnv {
    fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("TAPTUN_DEVICE", self.device.clone()),
            ("TAPTUN_TYPE", self.layer.to_string()),
            ("TAPTUN_MTU", self.mtu.to_string()),
            ("TAPTUN_PEER", self.peer.clone()),
            ("TAPTUN_PEER_KEY", self.peer_key.to_string()),
        ];
        if let Some(name) = &self.peer_name {
            vars.push(("TAPTUN_PEER_NAME", name.clone()));
        }
        vars
    }
}

/// Runs hook `name` (for the log: "up" or "down") and waits for it, at
/// most `limit`. Once `stop` is set the hook has at most `after_stop` left
/// (zero for an up hook: it is stopped at once). A hook that must go is
/// stopped with its whole process group (`Child::stop`). Each line of its
/// stderr is logged at `echo` as it comes.
///
/// # Errors
/// A text saying why the hook failed: it could not start, exited non-zero
/// or by a signal, ran past the limit, or was stopped; followed by the end
/// of its stderr, if it wrote any.
pub fn run(
    name: &str,
    command: &str,
    env: &HookEnv,
    limit: Duration,
    stop: &Stop,
    after_stop: Duration,
    echo: log::Level,
) -> Result<(), String> {
    let mut cmd = child::shell(command);
    cmd.stdin(Stdio::null())
        .stderr(Stdio::piped())
        .envs(env.vars());
    let started = Instant::now();
    // Its own group, so that a stop reaches the commands it runs too.
    let mut child = Child::spawn(cmd, true)
        .map_err(|e| format!("{name} hook `{command}` could not start: {e}"))?;
    log::debug!("{name} hook `{command}` started (pid {})", child.id());
    let stderr = child.take_pipes().2.map(|p| Stderr::forward(p, name, echo));
    let failed = |why: String| match &stderr {
        Some(stderr) => Err(stderr.append_to(why)),
        None => Err(why),
    };
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
                return failed(format!("{name} hook `{command}` failed: {status}"));
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
                child.stop();
                return failed(if stopped {
                    format!("{name} hook `{command}` was stopped")
                } else {
                    format!(
                        "{name} hook `{command}` ran past {} s and was killed",
                        limit.as_secs()
                    )
                });
            }
            Err(e) => return failed(format!("{name} hook `{command}`: {e}")),
        }
    }
}

/// A hook's stderr, read by a thread of its own: each line is logged, and
/// the last [`STDERR_TAIL`] bytes are kept.
struct Stderr {
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Closed by the reader at the end of the pipe.
    done: mpsc::Receiver<()>,
}

impl Stderr {
    fn forward(pipe: ChildStderr, name: &str, level: log::Level) -> Stderr {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, done) = mpsc::channel::<()>();
        let (lines, hook) = (tail.clone(), name.to_owned());
        // Not joined: a command the hook left in the background may keep
        // the pipe open, and its lines are forwarded until it closes it.
        let spawned = std::thread::Builder::new()
            .name(format!("{name} hook stderr"))
            .spawn(move || {
                let _tx = tx;
                let mut reader = BufReader::with_capacity(LINE_MAX, pipe);
                while let Some(line) = read_line_capped(&mut reader) {
                    log::log!(level, "{hook} hook: {line}");
                    keep(&mut lines.lock().unwrap_or_else(|p| p.into_inner()), line);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot read the stderr of the {name} hook: {e}");
        }
        Stderr { tail, done }
    }

    /// `why`, followed by the end of the hook's stderr once the pipe has
    /// closed (or [`STDERR_GRACE`] has passed).
    fn append_to(&self, why: String) -> String {
        let _ = self.done.recv_timeout(STDERR_GRACE);
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            return why;
        }
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{why}; stderr: {}", lines.join(" / "))
    }
}

/// Appends `line` to `tail`, dropping its oldest lines beyond [`STDERR_TAIL`] bytes.
fn keep(tail: &mut VecDeque<String>, line: String) {
    tail.push_back(line);
    let mut bytes: usize = tail.iter().map(String::len).sum();
    while bytes > STDERR_TAIL {
        match tail.pop_front() {
            Some(old) => bytes -= old.len(),
            None => break,
        }
    }
}

/// The next line, without its newline and cut to [`LINE_MAX`] bytes (the
/// rest of a longer line is skipped); `None` at the end or on an error.
fn read_line_capped(reader: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    loop {
        match reader.take(LINE_MAX as u64).read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    if line.last() != Some(&b'\n') {
        let mut rest = Vec::new();
        loop {
            rest.clear();
            match reader.take(LINE_MAX as u64).read_until(b'\n', &mut rest) {
                Ok(n) if n > 0 && rest.last() != Some(&b'\n') => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
    }
    let text = String::from_utf8_lossy(&line);
    Some(text.trim_end().to_owned())
}

/// How a failure compares with the ones before it ([`Repeats::failed`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not the failure before: log it loudly. `previous` is how many times
    /// in a row the failure before it happened, if one did.
    New { previous: u64 },
    /// The same as the one before, for the `count`th time in a row; `remind`
    /// every [`REMIND_EVERY`] times.
    Repeat { count: u64, remind: bool },
}

/// The latest failure of a hook and how many times in a row it happened.
#[derive(Debug, Default)]
pub struct Repeats(Mutex<Option<(String, u64)>>);

impl Repeats {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<(String, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The level for the hook's stderr lines as they come: debug while it
    /// keeps failing (the failure's text carries them), info otherwise.
    pub fn echo_level(&self) -> log::Level {
        if self.last().is_some() {
            log::Level::Debug
        } else {
            log::Level::Info
        }
    }

    /// Records a failure with text `why`.
    pub fn failed(&self, why: &str) -> Failure {
        let mut last = self.last();
        match last.as_mut() {
            Some((text, count)) if text == why => {
                *count += 1;
                Failure::Repeat {
                    count: *count,
                    remind: *count % REMIND_EVERY == 0,
                }
            }
            _ => {
                let previous = last.as_ref().map_or(0, |(_, count)| *count);
                *last = Some((why.to_owned(), 1));
                Failure::New { previous }
            }
        }
    }

    /// Records a success; returns how many failures in a row came before.
    pub fn succeeded(&self) -> u64 {
        self.last().take().map_or(0, |(_, count)| count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: log::Level = log::Level::Info;

    fn env() -> HookEnv {
        HookEnv {
            device: "tt0".into(),
            layer: Layer::Tap,
            mtu: 1500,
            peer: "exec".into(),
            peer_key: PublicKey([0; crate::keys::KEY_LEN]),
            peer_name: None,
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
            run(
                "up",
                &command,
                &env(),
                HOOK_LIMIT,
                &stop,
                Duration::ZERO,
                INFO,
            )
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
                DOWN_LIMIT_ON_STOP,
                INFO
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
            INFO,
        );
        assert!(result.is_err());
    }

    fn run_quick(command: &str) -> Result<(), String> {
        let stop = Stop::new().unwrap();
        run(
            "up",
            command,
            &env(),
            HOOK_LIMIT,
            &stop,
            Duration::ZERO,
            INFO,
        )
    }

    #[test]
    fn a_failure_ends_with_what_the_hook_wrote_on_stderr() {
        let why = run_quick("echo out; echo one >&2; echo two >&2; exit 3").unwrap_err();
        assert_eq!(
            why,
            "up hook `echo out; echo one >&2; echo two >&2; exit 3` failed: \
             exit status: 3; stderr: one / two"
        );
        assert_eq!(
            run_quick("exit 4").unwrap_err(),
            "up hook `exit 4` failed: exit status: 4"
        );
    }

    #[test]
    fn a_failure_carries_only_the_last_4_kib_of_stderr_in_lines_of_at_most_1_kib() {
        // 3000 lines, then one line of 5000 bytes with no newline.
        let why = run_quick(
            "i=0; while [ $i -lt 3000 ]; do echo line$i >&2; i=$((i+1)); done; \
             head -c 5000 /dev/zero | tr '\\0' x >&2; exit 1",
        )
        .unwrap_err();
        let (_, stderr) = why.split_once("; stderr: ").unwrap();
        let kept: usize = stderr.split(" / ").map(str::len).sum();
        assert!(
            kept <= STDERR_TAIL && kept > STDERR_TAIL - 16,
            "{kept} bytes"
        );
        assert!(stderr.ends_with(&format!("line2999 / {}", "x".repeat(LINE_MAX))));
        assert!(!stderr.contains("line0 "));
    }

    #[test]
    fn a_background_command_holding_stderr_does_not_hold_up_the_failure() {
        let started = Instant::now();
        let why = run_quick("sleep 3 & echo gone >&2; exit 1").unwrap_err();
        assert!(why.ends_with("stderr: gone"), "{why}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn repeats_are_told_from_new_failures() {
        let repeats = Repeats::default();
        assert_eq!(repeats.echo_level(), INFO);
        assert_eq!(repeats.failed("a"), Failure::New { previous: 0 });
        assert_eq!(repeats.echo_level(), log::Level::Debug);
        for count in 2..REMIND_EVERY {
            assert_eq!(
                repeats.failed("a"),
                Failure::Repeat {
                    count,
                    remind: false
                }
            );
        }
        assert_eq!(
            repeats.failed("a"),
            Failure::Repeat {
                count: REMIND_EVERY,
                remind: true
            }
        );
        assert_eq!(
            repeats.failed("b"),
            Failure::New {
                previous: REMIND_EVERY
            }
        );
        assert_eq!(repeats.succeeded(), 1);
        assert_eq!(repeats.echo_level(), INFO);
        assert_eq!(repeats.failed("b"), Failure::New { previous: 0 });
    }
}
