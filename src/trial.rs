//! Which listed peer a message 1 is from, found without snow: the hub's
//! trial of one message 1 against every listed peer's psk (issue 13).
//!
//! # Design
//!
//! Message 1 is `-> psk, e` with an empty payload: `e || tag`, 48 bytes. A
//! responder reading it runs, in Noise's terms (snow's order):
//!
//! ```text
//! InitializeSymmetric(protocol name)   h = ck = HASH(name)      per cipher
//! MixHash(prologue)                    h = HASH(h || prologue)  per cipher
//! psk:  MixKeyAndHash(psk)             ck, th, _ = HKDF(ck, psk, 3); h = HASH(h || th)   per peer
//! e:    MixHash(e)                     h' = HASH(h || e)        per message
//!       MixKey(e)  (psk handshakes)    ck', k = HKDF(ck, e, 2)  per message
//! payload: DecryptAndHash(tag)         AEAD-open(k, nonce 0, ad = h', tag)
//! ```
//!
//! Everything above the message's line is done once per peer by
//! [`Candidates::new`]. A trial then costs 7 BLAKE2s hashes (13 compressions:
//! one for h', two for each of HKDF's three HMACs' inner and outer hashes)
//! and one AEAD open. The hashes of [`CHUNK`] peers are computed together,
//! one step of the list above at a time, with blake2s_simd's `hash_many`,
//! which hashes eight inputs at once with AVX2 (four with SSE4.1; it detects
//! the CPU at run time). Snow would build a whole handshake state per peer
//! (10-20 µs); benches/msg1.rs measures both, docs/PERFORMANCE.md has the
//! figures.
//!
//! (HMAC states precomputed after `ck ^ ipad` and `ck ^ opad` would save 2
//! compressions, 4 counting those of HKDF's temporary key, but neither
//! BLAKE2s crate resumes from such a midstate. BLAKE2s written out here on
//! eight lanes with those midstates, 9 compressions, took 2.2 ms of CPU at
//! 1,000 peers, since the compiler keeps it scalar without AVX2; this takes
//! 0.9 to 1.0 ms on the same busy machine.)
//!
//! [`Budget`] bounds the CPU all trials together may take: a flood of
//! garbage makes the hub pay a full trial per message, and beyond the budget
//! new connections are closed unread.
//!
//! Secrets (each psk and ck, and a trial's inputs and outputs, which are a
//! peer's handshake keys when message 1 is authentic) live in
//! zeroed-on-drop buffers; `Debug` shows no secret. What is not zeroed: the
//! BLAKE2s states inside blake2s_simd's jobs and ring's AEAD key schedules,
//! as snow leaves its own (see src/resolver.rs).

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use blake2s_simd::many::{HashManyJob, hash_many};
use ring::aead;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::handshake::{Cipher, FIRST_MESSAGE_MAX_LEN, Identity, MESSAGE1_LEN, PROLOGUE};
use crate::keys::{self, KEY_LEN, PrivateKey, PublicKey};

/// Peers whose hashes are computed together: a multiple of AVX2's eight
/// lanes; their scratch takes about 30 KiB.
pub const CHUNK: usize = 64;
/// BLAKE2s's block, HMAC's padded key.
const BLOCK_LEN: usize = 64;

type Bytes32 = [u8; KEY_LEN];

/// BLAKE2s-256 of the concatenation of `parts`.
fn hash(parts: &[&[u8]]) -> Bytes32 {
    let mut state = blake2s_simd::State::new();
    parts.iter().for_each(|p| {
        state.update(p);
    });
    *state.finalize().as_array()
}

/// Writes HMAC's padded key, `key ^ pad` followed by `pad`, into the first
/// 64 bytes of `out`.
fn pad_key(key: &Bytes32, pad: u8, out: &mut [u8]) {
    for (i, b) in out.iter_mut().take(BLOCK_LEN).enumerate() {
        *b = key.get(i).copied().unwrap_or(0) ^ pad;
    }
}

/// HMAC-BLAKE2s with a 32-byte key, one at a time: for the per-peer
/// precomputation.
fn hmac(key: &Bytes32, data: &[&[u8]]) -> Zeroizing<Bytes32> {
    let mut block = Zeroizing::new([0u8; BLOCK_LEN]);
    pad_key(key, 0x36, &mut block[..]);
    let mut state = blake2s_simd::State::new();
    state.update(&block[..]);
    data.iter().for_each(|d| {
        state.update(d);
    });
    let inner = Zeroizing::new(*state.finalize().as_array());
    pad_key(key, 0x5c, &mut block[..]);
    Zeroizing::new(hash(&[&block[..], &inner[..]]))
}

/// BLAKE2s-256 of the first `len` bytes of each of `inputs`, into `out`,
/// eight at a time where the CPU can.
fn hash_each<const N: usize>(inputs: &[[u8; N]], len: usize, out: &mut [Bytes32]) {
    let params = blake2s_simd::Params::new();
    let mut jobs: Vec<HashManyJob<'_>> = inputs
        .iter()
        .map(|input| HashManyJob::new(&params, input.get(..len).unwrap_or(input)))
        .collect();
    hash_many(jobs.iter_mut());
    for (o, job) in out.iter_mut().zip(&jobs) {
        *o = *job.to_hash().as_array();
    }
}

/// What a trial of up to [`CHUNK`] peers computes, zeroed when it ends: for the
/// peer that sent an authentic message 1, these are its handshake keys.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Scratch {
    /// h || e, hashed into h'.
    hash_input: Vec<[u8; 2 * KEY_LEN]>,
    /// A padded key and 32 bytes: HMAC(ck, e)'s inner hash, and every
    /// outer hash.
    long: Vec<[u8; BLOCK_LEN + KEY_LEN]>,
    /// A padded key and up to 33 bytes: HMAC(temp, 0x01) and HMAC(temp,
    /// ck' || 0x02)'s inner hashes.
    short: Vec<[u8; BLOCK_LEN + KEY_LEN + 1]>,
    /// h', the tag's associated data.
    ad: Vec<Bytes32>,
    /// The latest inner hash.
    inner: Vec<Bytes32>,
    /// HKDF(ck, e)'s temporary key, its first output (the next ck) and its
    /// second (the tag's key).
    temp: Vec<Bytes32>,
    ck: Vec<Bytes32>,
    key: Vec<Bytes32>,
    /// The copy of message 1's ciphertext that is opened in place.
    opened: Vec<u8>,
}

impl Scratch {
    /// Room for `rows` peers (at most [`CHUNK`]), on the heap, each part
    /// allocated as it is: a trial may run on a thread with a small stack,
    /// and a short list should not pay for zeroing a long one's scratch.
    fn new(rows: usize) -> Scratch {
        let rows = rows.min(CHUNK);
        Scratch {
            hash_input: vec![[0; 2 * KEY_LEN]; rows],
            long: vec![[0; BLOCK_LEN + KEY_LEN]; rows],
            short: vec![[0; BLOCK_LEN + KEY_LEN + 1]; rows],
            ad: vec![[0; KEY_LEN]; rows],
            inner: vec![[0; KEY_LEN]; rows],
            temp: vec![[0; KEY_LEN]; rows],
            ck: vec![[0; KEY_LEN]; rows],
            key: vec![[0; KEY_LEN]; rows],
            opened: vec![0; FIRST_MESSAGE_MAX_LEN],
        }
    }

    /// MixHash(e) and MixKey(e) for the peers whose handshake hash and
    /// chaining key after the psk are `h` and `ck` (as many as it has rows):
    /// `self.ad` gets each h' and `self.key` each tag's key.
    fn mix_ephemeral(&mut self, e: &Bytes32, h: &[Bytes32], ck: &[Bytes32]) {
        let n = h.len().min(ck.len()).min(self.ad.len());
        let (h, ck) = (&h[..n], &ck[..n]);
        const K: usize = KEY_LEN;
        const B: usize = BLOCK_LEN;
        // h' = HASH(h || e)
        for (input, h) in self.hash_input.iter_mut().zip(h) {
            input[..K].copy_from_slice(h);
            input[K..].copy_from_slice(e);
        }
        hash_each(&self.hash_input[..n], 2 * K, &mut self.ad[..n]);
        // temp = HMAC(ck, e)
        for (input, ck) in self.long.iter_mut().zip(ck) {
            pad_key(ck, 0x36, input);
            input[B..].copy_from_slice(e);
        }
        hash_each(&self.long[..n], B + K, &mut self.inner[..n]);
        for ((input, ck), inner) in self.long.iter_mut().zip(ck).zip(&self.inner) {
            pad_key(ck, 0x5c, input);
            input[B..].copy_from_slice(inner);
        }
        hash_each(&self.long[..n], B + K, &mut self.temp[..n]);
        // ck' = HMAC(temp, 0x01)
        for (input, temp) in self.short.iter_mut().zip(&self.temp[..n]) {
            pad_key(temp, 0x36, input);
            input[B] = 1;
        }
        hash_each(&self.short[..n], B + 1, &mut self.inner[..n]);
        for ((input, temp), inner) in self.long.iter_mut().zip(&self.temp[..n]).zip(&self.inner) {
            pad_key(temp, 0x5c, input);
            input[B..].copy_from_slice(inner);
        }
        hash_each(&self.long[..n], B + K, &mut self.ck[..n]);
        // k = HMAC(temp, ck' || 0x02): both padded keys are in place.
        for (input, ck) in self.short.iter_mut().zip(&self.ck[..n]) {
            input[B..B + K].copy_from_slice(ck);
            input[B + K] = 2;
        }
        hash_each(&self.short[..n], B + K + 1, &mut self.inner[..n]);
        for (input, inner) in self.long.iter_mut().zip(&self.inner[..n]) {
            input[B..].copy_from_slice(inner);
        }
        hash_each(&self.long[..n], B + K, &mut self.key[..n]);
    }
}

/// Every listed peer's psk and precomputed handshake state, in list order.
pub struct Candidates {
    cipher: Cipher,
    keys: Vec<PublicKey>,
    psks: Zeroizing<Vec<Bytes32>>,
    /// Each peer's handshake hash after the psk was mixed in.
    hashes: Vec<Bytes32>,
    /// Each peer's chaining key after the psk was mixed in.
    chaining_keys: Zeroizing<Vec<Bytes32>>,
}

impl fmt::Debug for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field("cipher", &self.cipher)
            .field("peers", &self.keys.len())
            .field("psks", &"<redacted>")
            .finish()
    }
}

impl Candidates {
    /// Derives each peer's psk (one X25519 each) and runs every step of
    /// message 1 that does not depend on the message.
    ///
    /// # Errors
    /// A key that is a low-order point, named with its position (from 0).
    pub fn new(
        local: &PrivateKey,
        cipher: Cipher,
        keys: &[PublicKey],
    ) -> Result<Candidates, String> {
        // InitializeSymmetric: the name is longer than 32 bytes, so it is
        // hashed; then MixHash(prologue).
        let ck0 = Zeroizing::new(hash(&[cipher.noise_name().as_bytes()]));
        let h0 = hash(&[&ck0[..], PROLOGUE]);
        let mut psks = Zeroizing::new(Vec::with_capacity(keys.len()));
        let mut hashes = Vec::with_capacity(keys.len());
        let mut chaining_keys = Zeroizing::new(Vec::with_capacity(keys.len()));
        for (position, key) in keys.iter().enumerate() {
            let psk = keys::derive_psk(local, key).map_err(|e| format!("peer {position}: {e}"))?;
            // MixKeyAndHash(psk): HKDF(ck, psk, 3) gives the new ck and the
            // value mixed into h (its third output, a key, is replaced by
            // MixKey(e) before any use).
            let temp = hmac(&ck0, &[&psk[..]]);
            let ck = hmac(&temp, &[&[1]]);
            let mixed = hmac(&temp, &[&ck[..], &[2]]);
            psks.push(*psk);
            hashes.push(hash(&[&h0, &mixed[..]]));
            chaining_keys.push(*ck);
        }
        Ok(Candidates {
            cipher,
            keys: keys.to_vec(),
            psks,
            hashes,
            chaining_keys,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The position of the peer whose psk authenticates `msg1` (a message 1
    /// without its length prefix), or `None`: garbage, an unlisted key, a
    /// different cipher, a message 1 shorter than [`MESSAGE1_LEN`] or longer
    /// than [`FIRST_MESSAGE_MAX_LEN`] (which the handshake refuses anyway).
    pub fn find(&self, msg1: &[u8]) -> Option<usize> {
        if !(MESSAGE1_LEN..=FIRST_MESSAGE_MAX_LEN).contains(&msg1.len()) {
            return None;
        }
        let (e, sealed) = msg1.split_at(KEY_LEN);
        let e: &Bytes32 = e.try_into().ok()?;
        let mut scratch = Scratch::new(self.hashes.len());
        let chunks = self
            .hashes
            .chunks(CHUNK)
            .zip(self.chaining_keys.chunks(CHUNK));
        for (c, (h, ck)) in chunks.enumerate() {
            scratch.mix_ephemeral(e, h, ck);
            let Scratch {
                ad, key, opened, ..
            } = &mut scratch;
            for (i, (key, ad)) in key.iter().zip(ad.iter()).take(h.len()).enumerate() {
                if tag_checks(self.cipher, key, ad, sealed, opened) {
                    return Some(c * CHUNK + i);
                }
            }
        }
        None
    }

    /// The identity of the peer at `index` for the real handshake (snow's),
    /// with the psk already derived: no second X25519. `None` past the end.
    pub fn identity(&self, index: usize, local: &PrivateKey) -> Option<Identity> {
        let remote = *self.keys.get(index)?;
        let psk = Zeroizing::new(*self.psks.get(index)?);
        Some(Identity::with_psk(local.clone(), remote, psk, self.cipher))
    }
}

/// Whether `sealed` (the tag, after any payload) opens with `key`, nonce 0
/// and `ad`; `room` holds the copy that is opened in place. ring compares
/// the tag in constant time.
fn tag_checks(
    cipher: Cipher,
    key: &[u8; KEY_LEN],
    ad: &[u8; KEY_LEN],
    sealed: &[u8],
    room: &mut [u8],
) -> bool {
    let algorithm = match cipher {
        Cipher::ChaChaPoly => &aead::CHACHA20_POLY1305,
        Cipher::AesGcm => &aead::AES_256_GCM,
    };
    let Ok(key) = aead::UnboundKey::new(algorithm, key) else {
        return false;
    };
    let Some(room) = room.get_mut(..sealed.len()) else {
        return false;
    };
    room.copy_from_slice(sealed);
    // Noise's nonce is 4 zero bytes and the counter (little-endian for
    // ChaChaPoly, big-endian for AESGCM): for counter 0 both are 12 zeros.
    let nonce = aead::Nonce::assume_unique_for_key([0; aead::NONCE_LEN]);
    aead::LessSafeKey::new(key)
        .open_in_place(nonce, aead::Aad::from(ad), room)
        .is_ok()
}

/// A token bucket of CPU time for trials, shared by every connection: it
/// holds at most one second's worth, refills at `per_second` each second,
/// and each trial is charged what it took (and may leave it in debt). While
/// it is empty, [`Budget::admit`] says no: the caller closes the connection
/// unread.
///
/// Time is passed in (`now`), so that tests can drive the clock. A trial is
/// charged the CPU time of its thread ([`Budget::find`] measures it), not
/// wall time, which a busy machine would stretch.
#[derive(Debug)]
pub struct Budget {
    per_second: Duration,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Nanoseconds of CPU time left; negative after trials that overran.
    balance: i128,
    /// When `balance` was last brought up to date.
    updated: Instant,
    /// Connections refused since the start.
    refused: u64,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: Duration) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let capacity = per_second.as_nanos();
        let earned = elapsed.saturating_mul(capacity) / 1_000_000_000;
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        let capacity = i128::try_from(capacity).unwrap_or(i128::MAX);
        self.balance = self.balance.saturating_add(earned).min(capacity);
        self.updated = self.updated.max(now);
    }
}

impl Budget {
    /// A full bucket at `now`.
    pub fn new(per_second: Duration, now: Instant) -> Budget {
        Budget {
            per_second,
            bucket: Mutex::new(Bucket {
                balance: i128::try_from(per_second.as_nanos()).unwrap_or(i128::MAX),
                updated: now,
                refused: 0,
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // The bucket is consistent after every statement: a panic elsewhere
        // leaves nothing half-done.
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a new connection may have its message 1 tried; counts the
    /// refusal when not.
    pub fn admit(&self, now: Instant) -> bool {
        let mut bucket = self.bucket();
        bucket.refill(now, self.per_second);
        if bucket.balance > 0 {
            return true;
        }
        bucket.refused += 1;
        false
    }

    /// Charges a trial that took `spent`.
    pub fn charge(&self, now: Instant, spent: Duration) {
        let mut bucket = self.bucket();
        bucket.refill(now, self.per_second);
        let spent = i128::try_from(spent.as_nanos()).unwrap_or(i128::MAX);
        bucket.balance = bucket.balance.saturating_sub(spent);
    }

    /// [`Candidates::find`], charged the CPU time it took.
    pub fn find(&self, candidates: &Candidates, msg1: &[u8], now: Instant) -> Option<usize> {
        let start = crate::sys::thread_cpu_time();
        let found = candidates.find(msg1);
        self.charge(now, crate::sys::thread_cpu_time().saturating_sub(start));
        found
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.bucket().refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Hello, Initiator, Layer, Responder};
    use blake2::Digest;

    const BOTH: [Cipher; 2] = [Cipher::ChaChaPoly, Cipher::AesGcm];

    fn hello() -> Hello {
        Hello::new(Layer::Tap, 1500)
    }

    fn random<const N: usize>() -> [u8; N] {
        let mut bytes = [0u8; N];
        getrandom::fill(&mut bytes).unwrap();
        bytes
    }

    fn key_pair() -> (PrivateKey, PublicKey) {
        let key = PrivateKey::from_bytes(random());
        let public = key.public_key();
        (key, public)
    }

    /// A hub and `n` peers, each peer's private key and the public keys.
    fn peers(n: usize) -> (PrivateKey, Vec<PrivateKey>, Vec<PublicKey>) {
        let (hub, _) = key_pair();
        let privates: Vec<PrivateKey> = (0..n).map(|_| key_pair().0).collect();
        let publics = privates.iter().map(PrivateKey::public_key).collect();
        (hub, privates, publics)
    }

    /// Message 1 as snow's initiator writes it for `peer` dialing `hub`.
    fn message1(peer: &PrivateKey, hub: &PrivateKey, cipher: Cipher) -> Vec<u8> {
        let identity = Identity::new(peer.clone(), hub.public_key(), cipher).unwrap();
        let mut initiator = Initiator::new(&identity, hello()).unwrap();
        let mut out = vec![0u8; 1024];
        let n = initiator.write_message1(&mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn hash_each_matches_the_blake2_crate() {
        // More than one batch of eight, and a last one that is not full.
        let inputs: Vec<[u8; 97]> = (0..11).map(|_| random()).collect();
        for len in [64, 65, 96, 97] {
            let mut out = vec![[0u8; 32]; inputs.len()];
            hash_each(&inputs, len, &mut out);
            for (input, out) in inputs.iter().zip(&out) {
                let expected: [u8; 32] = blake2::Blake2s256::digest(&input[..len]).into();
                assert_eq!(*out, expected, "{len} bytes");
            }
        }
    }

    #[test]
    fn hmac_matches_snows() {
        use snow::params::HashChoice;
        let mut snows = crate::resolver::resolver()
            .resolve_hash(&HashChoice::Blake2s)
            .unwrap();
        let (key, data): ([u8; 32], [u8; 33]) = (random(), random());
        let mut expected = [0u8; 32];
        snows.hmac(&key, &data, &mut expected);
        assert_eq!(*hmac(&key, &[&data[..1], &data[1..]]), expected);
    }

    /// Snow's message 1 for peer i is found at exactly i, for every position
    /// of a list of a chunk and a part (so a last chunk that is not full,
    /// and a last batch of eight that is not), with both ciphers.
    #[test]
    fn finds_every_position_with_both_ciphers() {
        let (hub, privates, publics) = peers(CHUNK + 11);
        for cipher in BOTH {
            let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
            for (i, peer) in privates.iter().enumerate() {
                let msg = message1(peer, &hub, cipher);
                assert_eq!(candidates.find(&msg), Some(i), "{cipher:?} peer {i}");
            }
        }
    }

    #[test]
    fn finds_positions_in_a_thousand() {
        let (hub, _, mut publics) = peers(1003);
        let cipher = Cipher::ChaChaPoly;
        for i in [0, 63, 64, 517, 1002] {
            let (peer, public) = key_pair();
            publics[i] = public;
            let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
            let msg = message1(&peer, &hub, cipher);
            assert_eq!(candidates.find(&msg), Some(i));
        }
    }

    /// What `identity` hands over runs snow's handshake to the end with the
    /// initiator: the psk, the key and the cipher are the peer's.
    #[test]
    fn identity_completes_the_real_handshake() {
        let (hub, privates, publics) = peers(9);
        for cipher in BOTH {
            let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
            let peer = &privates[8];
            let peer_id = Identity::new(peer.clone(), hub.public_key(), cipher).unwrap();
            let mut initiator = Initiator::new(&peer_id, hello()).unwrap();
            let mut buf = vec![0u8; 1024];
            let n = initiator.write_message1(&mut buf).unwrap();
            let index = candidates.find(&buf[..n]).unwrap();
            let hub_id = candidates.identity(index, &hub).unwrap();
            let mut responder = Responder::new(&hub_id, hello()).unwrap();
            responder.read_message1(&buf[..n]).unwrap();
            let n = responder.write_message2(&mut buf).unwrap();
            initiator.read_message2(&buf[..n]).unwrap();
            let n = initiator.write_message3(&mut buf).unwrap();
            responder.read_message3(&buf[..n]).unwrap();
            let (_, key) = responder.into_transport().unwrap();
            assert_eq!(key, publics[8]);
        }
        assert!(
            Candidates::new(&hub, Cipher::ChaChaPoly, &publics)
                .unwrap()
                .identity(9, &hub)
                .is_none()
        );
    }

    #[test]
    fn garbage_is_from_no_one() {
        let (hub, _, publics) = peers(2 * CHUNK + 5);
        for cipher in BOTH {
            let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
            for len in [MESSAGE1_LEN, 100, FIRST_MESSAGE_MAX_LEN] {
                let garbage: Vec<u8> = (0..len).map(|_| random::<1>()[0]).collect();
                assert_eq!(candidates.find(&garbage), None);
            }
        }
    }

    #[test]
    fn an_unlisted_key_is_from_no_one() {
        let (hub, _, publics) = peers(8);
        let (stranger, _) = key_pair();
        let candidates = Candidates::new(&hub, Cipher::ChaChaPoly, &publics).unwrap();
        assert_eq!(
            candidates.find(&message1(&stranger, &hub, Cipher::ChaChaPoly)),
            None
        );
    }

    #[test]
    fn another_cipher_is_from_no_one() {
        let (hub, privates, publics) = peers(8);
        let candidates = Candidates::new(&hub, Cipher::AesGcm, &publics).unwrap();
        assert_eq!(
            candidates.find(&message1(&privates[3], &hub, Cipher::ChaChaPoly)),
            None
        );
    }

    #[test]
    fn a_truncated_or_altered_message_is_from_no_one() {
        let (hub, privates, publics) = peers(8);
        let cipher = Cipher::ChaChaPoly;
        let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
        let msg = message1(&privates[5], &hub, cipher);
        assert_eq!(candidates.find(&msg), Some(5));
        assert_eq!(candidates.find(&msg[..MESSAGE1_LEN - 1]), None);
        assert_eq!(candidates.find(&[]), None);
        for bit in [0, 8 * KEY_LEN - 1, 8 * KEY_LEN, 8 * MESSAGE1_LEN - 1] {
            let mut altered = msg.clone();
            altered[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(candidates.find(&altered), None, "bit {bit}");
        }
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(candidates.find(&longer), None);
    }

    #[test]
    fn a_low_order_key_is_refused_by_position() {
        let (hub, _, mut publics) = peers(3);
        publics[2] = PublicKey([0; KEY_LEN]);
        let err = Candidates::new(&hub, Cipher::ChaChaPoly, &publics).unwrap_err();
        assert!(err.starts_with("peer 2: "), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let (hub, _, publics) = peers(1);
        let text = format!(
            "{:?}",
            Candidates::new(&hub, Cipher::ChaChaPoly, &publics).unwrap()
        );
        assert!(
            text.contains("<redacted>") && !text.contains("groups"),
            "{text}"
        );
    }

    #[test]
    fn budget_refuses_once_spent_and_refills_with_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let budget = Budget::new(ms(250), t0);
        assert!(budget.admit(t0));
        budget.charge(t0, ms(200));
        assert!(budget.admit(t0));
        budget.charge(t0, ms(60));
        // 10 ms in debt: refused until 40 ms have passed (250 ms per s).
        assert!(!budget.admit(t0));
        assert!(!budget.admit(t0 + ms(40)));
        assert!(budget.admit(t0 + ms(41)));
        assert_eq!(budget.refused(), 2);
        // An idle hour fills it to one second's worth, no more.
        let later = t0 + Duration::from_secs(3600);
        budget.charge(later, ms(250));
        assert!(!budget.admit(later));
        assert!(budget.admit(later + ms(1)));
    }

    #[test]
    fn budget_charges_each_find() {
        let (hub, privates, publics) = peers(2 * CHUNK);
        let candidates = Candidates::new(&hub, Cipher::ChaChaPoly, &publics).unwrap();
        let t0 = Instant::now();
        // A nanosecond a second: the first trial overdraws it.
        let budget = Budget::new(Duration::from_nanos(1), t0);
        assert!(budget.admit(t0));
        let msg = message1(&privates[CHUNK + 1], &hub, Cipher::ChaChaPoly);
        assert_eq!(budget.find(&candidates, &msg, t0), Some(CHUNK + 1));
        assert!(!budget.admit(t0));
        assert_eq!(budget.refused(), 1);
    }

    #[test]
    fn budget_ignores_a_clock_that_goes_back() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let budget = Budget::new(Duration::from_millis(10), t0);
        budget.charge(t0, Duration::from_millis(20));
        assert!(!budget.admit(t0 - Duration::from_secs(1)));
        assert!(!budget.admit(t0));
        assert!(budget.admit(t0 + Duration::from_secs(2)));
    }
}
