//! Checks taptun against the published test vectors in
//! `tests/vectors/taptun-v1.txt`, which other implementations can use too.
//!
//! Run with `TAPTUN_WRITE_VECTORS=1` to rewrite the file from this
//! implementation (then check the result against an independent one before
//! committing it: see the file's header).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use taptun::Layer;
use taptun::{Cipher, Hello, Identity, Initiator, Responder};
use taptun::{PrivateKey, PublicKey, SecretText};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/taptun-v1.txt");

const HEADER: &str = "\
# taptun protocol version 1: test vectors.
#
# Binary values are lowercase hex; keys are also given in base64 where
# taptun's command line shows them. Handshake messages are the Noise message
# bytes without the 2-byte big-endian length prefix that precedes each of them
# on the stream. Prologue \"taptun/1\"; psk = BLAKE2s-256(\"taptun/1 psk\" ||
# X25519(local private, remote public)). The server is the Noise responder,
# the client the initiator. Static keys are RFC 7748 section 6.1's Alice
# (server) and Bob (client): X25519 of the two is the RFC's shared secret
# 4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742.
#
# Cross-checked independently of taptun's Rust code: the passphrase key with
# argon2-cffi, public keys with Python cryptography's X25519, the psk with
# Python hashlib.blake2s, and every handshake and transport message with the
# Python `noiseprotocol` package driven with the same fixed ephemeral keys
# (tests/vectors/crosscheck.py).
";

const PASSPHRASE: &str = "correct horse battery staple";
const SERVER_PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const CLIENT_PRIVATE: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const INITIATOR_EPHEMERAL: &str =
    "2020202020202020202020202020202020202020202020202020202020202020";
const RESPONDER_EPHEMERAL: &str =
    "4040404040404040404040404040404040404040404040404040404040404040";
/// A 60-byte Ethernet frame (an ARP request), the first frame each way.
const FRAME: &str = "ffffffffffff02000000000108060001080006040001020000000001c0a80001000000000000c0a80002000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key32(text: &str) -> [u8; 32] {
    unhex(text).try_into().expect("32 bytes")
}

/// Computes every vector with taptun's own code.
fn compute() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let mut put = |section: &str, name: &str, value: String| {
        v.insert(format!("{section}.{name}"), value);
    };

    let SecretText::Passphrase(pass) = SecretText::parse(PASSPHRASE).unwrap() else {
        panic!("a passphrase")
    };
    let stretched = taptun::stretch_passphrase(&pass);
    put("passphrase", "passphrase", PASSPHRASE.into());
    put(
        "passphrase",
        "private_base64",
        stretched.to_text().to_string(),
    );
    put(
        "passphrase",
        "public_base64",
        stretched.public_key().to_string(),
    );

    let server = PrivateKey::from_bytes(key32(SERVER_PRIVATE));
    let client = PrivateKey::from_bytes(key32(CLIENT_PRIVATE));
    put("keys", "server_private", SERVER_PRIVATE.into());
    put(
        "keys",
        "server_private_base64",
        server.to_text().to_string(),
    );
    put("keys", "server_public", hex(&server.public_key().0));
    put(
        "keys",
        "server_public_base64",
        server.public_key().to_string(),
    );
    put("keys", "client_private", CLIENT_PRIVATE.into());
    put(
        "keys",
        "client_private_base64",
        client.to_text().to_string(),
    );
    put("keys", "client_public", hex(&client.public_key().0));
    put(
        "keys",
        "client_public_base64",
        client.public_key().to_string(),
    );
    let psk_s = taptun::derive_psk(&server, &client.public_key()).unwrap();
    let psk_c = taptun::derive_psk(&client, &server.public_key()).unwrap();
    assert_eq!(*psk_s, *psk_c);
    put("keys", "psk", hex(&psk_s[..]));

    for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
        let section = format!("handshake_{}", cipher.option_name());
        let s_id = Identity::new(server.clone(), client.public_key(), cipher).unwrap();
        let c_id = Identity::new(client.clone(), server.public_key(), cipher).unwrap();
        let ie = key32(INITIATOR_EPHEMERAL);
        let re = key32(RESPONDER_EPHEMERAL);
        let hello = Hello::new(Layer::Tap, 1500);
        let mut init = Initiator::with_ephemeral(&c_id, hello, Some(&ie)).unwrap();
        let mut resp = Responder::with_ephemeral(&s_id, hello, Some(&re)).unwrap();
        let mut buf = vec![0u8; 65535];

        let n = init.write_message1(&mut buf).unwrap();
        let m1 = buf[..n].to_vec();
        resp.read_message1(&m1).unwrap();
        let n = resp.write_message2(&mut buf).unwrap();
        let m2 = buf[..n].to_vec();
        assert_eq!(init.read_message2(&m2).unwrap(), hello);
        let n = init.write_message3(&mut buf).unwrap();
        let m3 = buf[..n].to_vec();
        assert_eq!(resp.read_message3(&m3).unwrap(), hello);
        let (it, _) = init.into_transport().unwrap();
        let (rt, _) = resp.into_transport().unwrap();

        let frame = unhex(FRAME);
        let n = rt.seal(0, &[], &mut buf).unwrap();
        let r0 = buf[..n].to_vec();
        let n = it.seal(0, &frame, &mut buf).unwrap();
        let i0 = buf[..n].to_vec();
        let n = rt.seal(1, &frame, &mut buf).unwrap();
        let r1 = buf[..n].to_vec();
        let mut plain = vec![0u8; 65535];
        assert_eq!(it.open(0, &r0, &mut plain).unwrap(), 0);
        let n = rt.open(0, &i0, &mut plain).unwrap();
        assert_eq!(&plain[..n], &frame[..]);

        put(&section, "protocol", cipher.noise_name().into());
        put(
            &section,
            "initiator_ephemeral_private",
            INITIATOR_EPHEMERAL.into(),
        );
        put(
            &section,
            "responder_ephemeral_private",
            RESPONDER_EPHEMERAL.into(),
        );
        put(&section, "hello", hex(&hello.encode()));
        put(&section, "message1", hex(&m1));
        put(&section, "message2", hex(&m2));
        put(&section, "message3", hex(&m3));
        put(&section, "transport_responder_nonce0_keepalive", hex(&r0));
        put(&section, "frame", FRAME.into());
        put(&section, "transport_initiator_nonce0_frame", hex(&i0));
        put(&section, "transport_responder_nonce1_frame", hex(&r1));
    }
    v
}

fn render(v: &BTreeMap<String, String>) -> String {
    let mut out = String::from(HEADER);
    let mut section = "";
    for (key, value) in v {
        let (s, name) = key.split_once('.').unwrap();
        if s != section {
            let _ = write!(out, "\n[{s}]\n");
            section = s;
        }
        let _ = writeln!(out, "{name} = {value}");
    }
    out
}

fn parse(text: &str) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, val)) = line.split_once(" = ") {
            v.insert(format!("{section}.{k}"), val.to_string());
        }
    }
    v
}

#[test]
fn implementation_matches_published_vectors() {
    let computed = compute();
    if std::env::var_os("TAPTUN_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, render(&computed)).unwrap();
        return;
    }
    let published = parse(&std::fs::read_to_string(PATH).expect("tests/vectors/taptun-v1.txt"));
    assert_eq!(
        computed.len(),
        published.len(),
        "the vector file lists other fields"
    );
    for (key, value) in &computed {
        assert_eq!(published.get(key), Some(value), "vector {key}");
    }
}

#[test]
fn rfc7748_keys_and_psk() {
    // Values from RFC 7748 section 6.1 and from Python's hashlib.blake2s.
    let server = PrivateKey::from_bytes(key32(SERVER_PRIVATE));
    let client = PrivateKey::from_bytes(key32(CLIENT_PRIVATE));
    assert_eq!(
        hex(&server.public_key().0),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(
        hex(&client.public_key().0),
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    );
    let psk = taptun::derive_psk(&server, &client.public_key()).unwrap();
    assert_eq!(
        hex(&psk[..]),
        "598123c8d8d237aa8a2bcd002115fe098c97a77d2bcdabdc91ba0f451e669767"
    );
}

#[test]
fn passphrase_matches_argon2_cffi() {
    // argon2-cffi: hash_secret_raw(b"correct horse battery staple",
    // b"taptun/1 static key", time_cost=2, memory_cost=19456, parallelism=1,
    // hash_len=32, type=Type.ID, version=19)
    let SecretText::Passphrase(pass) = SecretText::parse(PASSPHRASE).unwrap() else {
        panic!("a passphrase")
    };
    let key = taptun::stretch_passphrase(&pass);
    assert_eq!(
        key.to_text().as_str(),
        "C7O4IBpXPHNzcArFxDLRtirO9v4zFWRyfLo2cwBoO2o="
    );
    assert_eq!(
        key.public_key(),
        PublicKey::parse("g4/E+BRxYUDxG5VOpoLsnGlf8g0F03KePwiLEaR4Tzg=").unwrap()
    );
}
