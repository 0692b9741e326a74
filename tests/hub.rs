//! The hub (-s -A): several peers on one server, each with its own key and
//! device, all in the hub's kernel bridge; strangers get nothing; SIGHUP
//! adds and removes peers without disturbing the others.
//!
//! The network is tests/common/hub.rs's; every listed peer's device joins
//! the hub's `br0` here.

mod common;

use common::hub::HubNet;
use common::*;
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn three_peers_reach_each_other_and_the_hub_through_its_bridge() {
    if !require_root() {
        return;
    }
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    // Listed by the public key of its passphrase: the hub never holds it.
    let c = net.site(3, Some("correct horse battery staple of the hub test"));
    net.write_peers(&[a, b, c], "bridge=br0");
    let hub = net.hub("");
    for site in &net.sites {
        let dev = format!("tt-{}", site.name);
        assert!(
            net.h.device_up(&dev),
            "{dev} was not made at start, up, before anyone connected"
        );
        let master = net.h.ip(&format!("-o link show dev {dev}"));
        assert!(master.contains("master br0"), "{dev}: {master}");
    }
    let _clients: Vec<Proc> = [a, b, c].iter().map(|&i| net.client(i)).collect();
    let hub_addr = net.overlay(254);
    for i in [a, b, c] {
        assert!(
            net.pings(i, &hub_addr),
            "site {i} cannot ping the hub's br0"
        );
        for j in [a, b, c] {
            if i != j {
                let to = net.overlay(net.sites[j].host);
                assert!(net.pings(i, &to), "site {i} cannot ping site {j} ({to})");
            }
        }
    }
    // 20 MB from one peer to another, and back, intact.
    let to = format!("{}:{}", net.overlay(net.sites[b].host), net.port + 1);
    echo_between(&net.sites[b].ns, &net.sites[a].ns, &to, 20 << 20, 13);
    // Hooks and logs name the peer; each session is on its own device.
    for site in &net.sites {
        let dev = format!("tt-{}", site.name);
        assert!(
            wait_log(&hub, &["established on", &dev], 1, DEADLINE),
            "no session on {dev}"
        );
    }
}

#[test]
fn strangers_get_nothing_and_disturb_no_peer() {
    if !require_root() {
        return;
    }
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    let stranger = net.site(3, None);
    net.write_peers(&[a, b], "bridge=br0");
    let hub = net.hub("");
    let _ca = net.client(a);
    let _cb = net.client(b);
    let addr_b = net.overlay(2);
    assert!(net.pings(a, &addr_b));
    // An unlisted key runs the real handshake: no answer at all.
    let mut lone = net.client(stranger);
    let hub_at = format!("10.241.{}.254:{}", net.n, net.port);
    // Garbage of message 1's length, and a longer one.
    for garbage in [vec![0x30u8; 50], vec![0u8; 300]] {
        let at = hub_at.clone();
        let mut conn = in_netns(&net.sites[a].ns, move || TcpStream::connect(at).unwrap());
        let mut framed = vec![0, (garbage.len() - 2) as u8];
        framed.extend_from_slice(&garbage[2..]);
        conn.write_all(&framed).unwrap();
        assert!(closed_without_answer(&mut conn), "the hub answered garbage");
    }
    assert!(
        wait_log(&hub, &["message 1"], 1, DEADLINE),
        "the hub logged no refused message 1"
    );
    lone.terminate();
    assert!(
        !lone.stderr().contains("session with"),
        "an unlisted key got a session: {}",
        lone.stderr()
    );
    // The listed peers' sessions were untouched: one session each, still up.
    assert!(net.sites[a].ns.ping(&addr_b));
    assert_eq!(log_count(&hub, &["established on"]), 2, "{}", hub.stderr());
    assert_eq!(log_count(&hub, &["ended"]), 0, "{}", hub.stderr());
}

/// Sends 10 ms pings from site `i` to `addr` until `stop`, in a thread;
/// returns the count sent and received.
fn ping_train(ns: &Netns, addr: &str, seconds: u32) -> std::process::Child {
    ns.command("ping")
        .args(["-q", "-i", "0.01", "-w", &seconds.to_string(), addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// ping's summary: (transmitted, received).
fn ping_summary(child: std::process::Child) -> (u32, u32) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let num = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap();
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    (num("packets transmitted"), num("received"))
}

#[test]
fn sighup_adds_and_removes_peers_while_the_others_ping_on() {
    if !require_root() {
        return;
    }
    let mut net = HubNet::new();
    let a = net.site(1, None);
    let b = net.site(2, None);
    let gone = net.site(3, None);
    let new = net.site(4, None);
    let marks = net.scratch.path.join("hooks");
    let down = net.scratch.path.join("down.sh");
    fs::write(
        &down,
        format!(
            "#!/bin/sh\necho \"down $TAPTUN_PEER_NAME $TAPTUN_DEVICE\" >> {}\n",
            marks.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&down, fs::Permissions::from_mode(0o700)).unwrap();
    let hooks = format!("bridge=br0 down={}", down.display());
    net.write_peers(&[a, b, gone], &hooks);
    let hub = net.hub("");
    let _ca = net.client(a);
    let _cb = net.client(b);
    let mut cg = net.client(gone);
    let (addr_b, addr_gone) = (net.overlay(2), net.overlay(3));
    assert!(net.pings(a, &addr_b));
    assert!(net.pings(a, &addr_gone));
    let train = ping_train(&net.sites[a].ns, &addr_b, 6);
    std::thread::sleep(Duration::from_millis(500));

    // A malformed file changes nothing, and says where it is wrong.
    let good = fs::read_to_string(&net.file).unwrap();
    net.write_file(&format!("{good}bad-line-without-a-key\n"));
    hub.signal(libc::SIGHUP);
    let file_line = format!("{}:", net.file.display());
    assert!(
        wait_log(&hub, &[&file_line, "reload refused"], 1, DEADLINE),
        "no reload error naming the file and line"
    );
    assert!(
        net.sites[a].ns.ping(&addr_gone),
        "a refused reload changed the peers"
    );

    // Remove one, add one.
    net.write_peers(&[a, b, new], &hooks);
    hub.signal(libc::SIGHUP);
    assert!(
        wait_log(&hub, &["reloaded"], 1, DEADLINE),
        "no reload: {}",
        hub.stderr()
    );
    let removed = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || {
            fs::read_to_string(&marks).is_ok_and(|m| m.contains("down s3 tt-s3"))
        }),
        "the removed peer's down hook did not run within 1 s"
    );
    assert!(
        wait_for(DEADLINE, || !net.h.device_up("tt-s3")),
        "the removed peer's device is still there"
    );
    assert!(removed.elapsed() < Duration::from_secs(3));
    let _cn = net.client(new);
    assert!(net.pings(new, &addr_b), "the added peer cannot ping");
    let (sent, received) = ping_summary(train);
    assert!(sent >= 300, "only {sent} pings sent");
    assert_eq!(
        sent, received,
        "pings between unchanged peers were lost during the reloads"
    );
    cg.terminate();
}
