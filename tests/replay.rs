//! A captured message 1 replayed across `taptun -i` connections, as inetd and systemd
//! `Accept=yes` run them: one process per connection, the socket on stdin and stdout. The -i
//! processes share their replay cache through a file in `$RUNTIME_DIRECTORY` (a private directory
//! here, so that tests never touch /run/taptun), so the second connection gets no answer at all.
//!
//! Needs root and iproute2 (the device is made in a throwaway namespace); otherwise skipped.

mod common;

use std::fs::{self, DirBuilder};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{DEADLINE, Pair, Proc, accept_within, in_netns, private_key};
use taptun::Layer;
use taptun::{Cipher, Hello, Identity, Initiator};

/// Message 2 with its length prefix: 102 bytes and 2.
const MESSAGE2_FRAMED: usize = 104;

/// A genuine message 1 from the client's keys, with its length prefix: what an eavesdropper
/// captures from a real client's first connection.
fn captured_message1(p: &Pair) -> Vec<u8> {
    let server_public = private_key(&p.server_key).public_key();
    let identity = Identity::new(
        private_key(&p.client_key),
        server_public,
        Cipher::ChaChaPoly,
    )
    .expect("a valid key pair");
    let mut init = Initiator::new(&identity, Hello::new(Layer::Tap, 1500)).expect("initiator");
    let mut buf = vec![0u8; taptun::MAX_MESSAGE];
    let n = init.write_message1(&mut buf).expect("message 1");
    let mut out = Vec::new();
    taptun::encode_message(&buf[..n], &mut out);
    out
}

/// Sends `message1` on a new connection served by a new `taptun -i` in `p.a` (with
/// `RUNTIME_DIRECTORY=run_dir`), reads until the server closes or message 2 has come whole,
/// then closes and waits for the process to end. Returns the bytes received and the log.
fn one_inetd_connection(p: &Pair, run_dir: &Path, message1: &[u8], name: &str) -> (usize, String) {
    let listener = in_netns(&p.a, || TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let mut client = in_netns(&p.a, move || TcpStream::connect(addr).unwrap());
    let socket = OwnedFd::from(accept_within(&listener));
    let mut cmd = p.a.taptun(&format!("-i -v -d tt0 {}", p.server_secrets()));
    cmd.env("RUNTIME_DIRECTORY", run_dir)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(socket.try_clone().unwrap())
        .stdout(socket);
    let log = p.scratch.path.join(format!("{name}.log"));
    cmd.stderr(fs::File::create(&log).unwrap());
    let mut server = Proc::adopt(name, cmd.spawn().unwrap(), Some(log));

    client.write_all(message1).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while got.len() < MESSAGE2_FRAMED && start.elapsed() < DEADLINE {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    drop(client);
    // Frees the device for the next connection's process.
    server.wait();
    eprintln!("{name}: {} bytes back", got.len());
    (got.len(), server.stderr())
}

#[test]
fn a_message_1_replayed_on_a_second_inetd_connection_gets_no_answer() {
    if !common::require_root() {
        return;
    }
    let p = Pair::new();
    let run_dir = p.scratch.path.join("run");
    DirBuilder::new().mode(0o700).create(&run_dir).unwrap();
    let message1 = captured_message1(&p);

    let (first, _) = one_inetd_connection(&p, &run_dir, &message1, "taptun -i (first)");
    assert_eq!(
        first, MESSAGE2_FRAMED,
        "the genuine first connection gets message 2"
    );
    let (second, log) = one_inetd_connection(&p, &run_dir, &message1, "taptun -i (replay)");
    assert_eq!(
        second, 0,
        "the replay on a new connection got {second} bytes back"
    );
    assert!(
        log.contains("is a replay"),
        "the replay is not logged as one: {log}"
    );

    // The cache is the file of our uid in RUNTIME_DIRECTORY, private to us.
    let uid = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let file = run_dir.join(format!("replay-{}", uid.unwrap()));
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
}
