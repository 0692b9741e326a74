//! A slow legitimate client against a flood of keyless connections to `taptun -s`.
//!
//! The server runs at most 64 handshakes at once and closes one to make room for a newcomer. The
//! client here, built on the library's initiator, sends message 1 at once but holds message 3
//! back for 300 ms (a client far away, or a slow one), while silent connections arrive at 500/s:
//! enough to fill 64 slots in 128 ms. The client must still get key confirmation in every trial,
//! because a handshake whose message 1 proved authentic is never closed for a keyless one.
//!
//! Everything runs in throwaway namespaces (see `common`). Needs root and iproute2; otherwise
//! skipped.

mod common;

use std::fs;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Pair, framed, in_netns, private_key};
use taptun::FrameReader;
use taptun::Layer;
use taptun::{Cipher, Hello, Identity, Initiator, TAG_LEN};

const TRIALS: usize = 20;
/// How long the client holds message 3 back.
const HOLD: Duration = Duration::from_millis(300);
/// One silent connection every 2 ms: 500/s.
const FLOOD_INTERVAL: Duration = Duration::from_millis(2);
/// The flood starts this long before the client connects, so the slots are full already.
const HEAD_START: Duration = Duration::from_millis(150);
/// The most silent connections in one trial (the flood stops at the client's outcome).
const FLOOD_BOUND: usize = 500;

/// The slow client: message 1 at once, message 3 after HOLD, then key confirmation.
fn slow_handshake(identity: &Identity, addr: &str) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(stream);
    let mut init =
        Initiator::new(identity, Hello::new(Layer::Tap, 1500)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; taptun::MAX_MESSAGE];

    // -> psk, e
    let n = init.write_message1(&mut buf).map_err(|e| e.to_string())?;
    writer
        .write_all(&framed(&buf[..n]))
        .map_err(|e| format!("message 1: {e}"))?;
    // <- e, ee, s, es
    let m2 = match reader.next_message() {
        Ok(Some(m)) => m.to_vec(),
        Ok(None) => return Err("closed before message 2".into()),
        Err(e) => return Err(format!("message 2: {e}")),
    };
    init.read_message2(&m2).map_err(|e| e.to_string())?;
    thread::sleep(HOLD.saturating_sub(start.elapsed()));
    // -> s, se
    let n = init.write_message3(&mut buf).map_err(|e| e.to_string())?;
    writer
        .write_all(&framed(&buf[..n]))
        .map_err(|e| format!("message 3: {e}"))?;
    let (transport, _) = init.into_transport().map_err(|e| e.to_string())?;
    // <- keepalive
    let confirmation = match reader.next_message() {
        Ok(Some(m)) => m.to_vec(),
        Ok(None) => return Err("closed before key confirmation".into()),
        Err(e) => return Err(format!("key confirmation: {e}")),
    };
    if confirmation.len() < TAG_LEN {
        return Err("key confirmation too short".into());
    }
    let mut plain = vec![0u8; confirmation.len()];
    match transport.open(0, &confirmation, &mut plain) {
        Ok(0) => Ok(()),
        Ok(_) => Err("the first transport message is not a keepalive".into()),
        Err(_) => Err("key confirmation does not authenticate".into()),
    }
}

/// Silent connections every FLOOD_INTERVAL until `stop` (at most FLOOD_BOUND), held open until
/// the flood ends; returns how many were made.
fn flood(addr: &str, stop: &AtomicBool) -> usize {
    let start = Instant::now();
    let mut held = Vec::new();
    for i in 0..FLOOD_BOUND {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Paced from the start, so a slow connect does not lower the rate.
        let due = start + FLOOD_INTERVAL * i as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        match TcpStream::connect(addr) {
            Ok(stream) => held.push(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            Err(_) => {}
        }
    }
    held.len()
}

#[test]
fn a_slow_client_gets_in_through_a_flood_of_silent_connections() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let mut server = p.server("");
    let server_public = private_key(&p.server_key).public_key();
    let identity = Arc::new(
        Identity::new(
            private_key(&p.client_key),
            server_public,
            Cipher::ChaChaPoly,
        )
        .expect("a valid key pair"),
    );
    let addr = format!("{}:{}", p.server_addr(), p.port);

    let mut failures = Vec::new();
    let mut silent = 0;
    for trial in 0..TRIALS {
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (addr, stop) = (addr.clone(), stop.clone());
            in_netns_spawn(&p, move || flood(&addr, &stop))
        };
        thread::sleep(HEAD_START);
        let outcome = {
            let (addr, identity) = (addr.clone(), identity.clone());
            in_netns(&p.b, move || slow_handshake(&identity, &addr))
        };
        stop.store(true, Ordering::Relaxed);
        silent += flooder.join().expect("the flood thread");
        if let Err(why) = outcome {
            failures.push(format!("trial {trial}: {why}"));
        }
    }
    let succeeded = TRIALS - failures.len();
    eprintln!(
        "slow client through a flood at 500/s: {succeeded}/{TRIALS} handshakes succeeded \
         ({silent} silent connections)"
    );
    for failure in &failures {
        eprintln!("  {failure}");
    }
    assert!(server.running(), "the server died under the flood");
    assert_eq!(succeeded, TRIALS, "{failures:#?}");
}

/// Runs `f` on a new thread inside `p.b`, like `common::in_netns`, without waiting for it.
fn in_netns_spawn<T: Send + 'static>(
    p: &Pair,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{}", p.b.name);
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: `file` stays open across the call; CLONE_NEWNET moves only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
}
