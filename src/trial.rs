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
//! [`Candidates::new`], which also keeps the two HMAC-BLAKE2s states keyed
//! by each peer's ck (the compression of `ck ^ ipad` and of `ck ^ opad`), so
//! that a trial costs 9 BLAKE2s compressions and one AEAD open. Snow would
//! build a whole handshake state per peer (10-20 µs); see benches/msg1.rs
//! and docs/PERFORMANCE.md for both figures.
//!
//! The compressions run on [`LANES`] peers at once: each state word is an
//! array with one entry per peer, so that the compiler turns every step into
//! vector instructions without `unsafe` or target-specific code. BLAKE2s is
//! written out here (RFC 7693) because the blake2 crate neither exposes a
//! midstate that can be zeroed nor hashes several inputs at once; the unit
//! tests check it against that crate, and the whole trial against snow's
//! handshake at every position of a list.
//!
//! [`Budget`] bounds the CPU all trials together may take: a flood of
//! garbage makes the hub pay a full trial per message, and beyond the budget
//! new connections are closed unread.
//!
//! Secrets (each psk, each ck's HMAC states, the per-message keys) live in
//! zeroed-on-drop buffers; `Debug` shows no secret.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use ring::aead;
use zeroize::{Zeroize, Zeroizing};

use crate::handshake::{Cipher, FIRST_MESSAGE_MAX_LEN, Identity, MESSAGE1_LEN, PROLOGUE};
use crate::keys::{self, KEY_LEN, PrivateKey, PublicKey};

/// Peers tried together: eight 32-bit lanes fill an AVX2 register, two
/// SSE2 ones.
pub const LANES: usize = 8;
/// BLAKE2s's block.
const BLOCK_LEN: usize = 64;

/// One 32-bit word of BLAKE2s for each of [`LANES`] peers.
type Word = [u32; LANES];
/// A BLAKE2s chaining value (or a 32-byte string as words) per lane.
type State = [Word; 8];
/// A message block per lane.
type Block = [Word; 16];

const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

/// HMAC's pads, as little-endian words.
const IPAD: u32 = 0x3636_3636;
const OPAD: u32 = 0x5c5c_5c5c;

/// The same value in every lane.
fn splat(x: u32) -> Word {
    [x; LANES]
}

/// The initial state of BLAKE2s-256 without a key (parameter block: digest
/// length 32, fanout 1, depth 1).
fn initial_state() -> State {
    let mut state = IV.map(splat);
    state[0] = splat(IV[0] ^ 0x0101_0020);
    state
}

#[inline(always)]
fn add(a: Word, b: Word) -> Word {
    std::array::from_fn(|i| a[i].wrapping_add(b[i]))
}

#[inline(always)]
fn xor_rotr(a: Word, b: Word, n: u32) -> Word {
    std::array::from_fn(|i| (a[i] ^ b[i]).rotate_right(n))
}

#[inline(always)]
#[allow(clippy::many_single_char_names)] // RFC 7693's names
fn mix(v: &mut Block, [a, b, c, d]: [usize; 4], x: Word, y: Word) {
    v[a] = add(add(v[a], v[b]), x);
    v[d] = xor_rotr(v[d], v[a], 16);
    v[c] = add(v[c], v[d]);
    v[b] = xor_rotr(v[b], v[c], 12);
    v[a] = add(add(v[a], v[b]), y);
    v[d] = xor_rotr(v[d], v[a], 8);
    v[c] = add(v[c], v[d]);
    v[b] = xor_rotr(v[b], v[c], 7);
}

/// BLAKE2s's compression F (RFC 7693 3.2) of `block` into `state`, in every
/// lane; `count` is the byte counter t including this block, `last` the
/// final-block flag.
fn compress(state: &mut State, block: &Block, count: u32, last: bool) {
    let mut v: Block = [[0; LANES]; 16];
    v[..8].copy_from_slice(state);
    for (i, iv) in IV.iter().enumerate() {
        v[8 + i] = splat(*iv);
    }
    v[12] = splat(IV[4] ^ count);
    if last {
        v[14] = splat(!IV[6]);
    }
    for s in &SIGMA {
        mix(&mut v, [0, 4, 8, 12], block[s[0]], block[s[1]]);
        mix(&mut v, [1, 5, 9, 13], block[s[2]], block[s[3]]);
        mix(&mut v, [2, 6, 10, 14], block[s[4]], block[s[5]]);
        mix(&mut v, [3, 7, 11, 15], block[s[6]], block[s[7]]);
        mix(&mut v, [0, 5, 10, 15], block[s[8]], block[s[9]]);
        mix(&mut v, [1, 6, 11, 12], block[s[10]], block[s[11]]);
        mix(&mut v, [2, 7, 8, 13], block[s[12]], block[s[13]]);
        mix(&mut v, [3, 4, 9, 14], block[s[14]], block[s[15]]);
    }
    for i in 0..8 {
        state[i] = std::array::from_fn(|l| state[i][l] ^ v[i][l] ^ v[i + 8][l]);
    }
    v.zeroize();
}

/// 32 bytes as little-endian words.
fn words(bytes: &[u8; KEY_LEN]) -> [u32; 8] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}

/// Lane `lane` of a state, as the 32 bytes BLAKE2s outputs.
fn lane_bytes(state: &State, lane: usize) -> Zeroizing<[u8; KEY_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word[lane].to_le_bytes());
    }
    out
}

/// The block `first || second` (each 8 words), the rest of a 64-byte block.
fn block_of(first: &State, second: &State) -> Block {
    let mut block = [[0; LANES]; 16];
    block[..8].copy_from_slice(first);
    block[8..].copy_from_slice(second);
    block
}

/// HMAC-BLAKE2s's first block, `key ^ pad` (a 32-byte key, zero-padded to
/// the block), compressed into a fresh state: the state every HMAC under
/// that key continues from.
fn keyed_state(key: &State, pad: u32) -> State {
    let mut block = [splat(pad); 16];
    for (b, k) in block.iter_mut().zip(key) {
        *b = k.map(|k| k ^ pad);
    }
    let mut state = initial_state();
    compress(&mut state, &block, BLOCK_LEN as u32, false);
    block.zeroize();
    state
}

/// The per-peer values of [`LANES`] peers, a lane each.
#[derive(Zeroize)]
struct Group {
    /// The handshake hash after the psk was mixed in.
    h: State,
    /// HMAC states keyed by the chaining key after the psk: after `ck ^
    /// ipad` and after `ck ^ opad`.
    ck_inner: State,
    ck_outer: State,
}

/// A trial's intermediate values, zeroed when it ends: they are a real
/// peer's keys when message 1 is authentic.
#[derive(Zeroize, Default)]
struct Scratch {
    block: Block,
    /// HASH(h || e): the associated data of the tag.
    hash: State,
    /// HKDF(ck, e)'s temporary key and its two HMAC states.
    temp: State,
    temp_inner: State,
    temp_outer: State,
    /// HKDF's two outputs: the new chaining key and the cipher key.
    ck: State,
    key: State,
}

impl Group {
    /// Runs MixHash(e) and MixKey(e) for every lane: `scratch.hash` gets h'
    /// and `scratch.key` the key of the tag.
    fn mix_ephemeral(&self, e: &State, s: &mut Scratch) {
        let zero = [[0; LANES]; 8];
        // h' = HASH(h || e): one final block of 64 bytes.
        s.hash = initial_state();
        s.block = block_of(&self.h, e);
        compress(&mut s.hash, &s.block, 64, true);
        // temp = HMAC(ck, e): 64 bytes of pad, then 32 of input.
        let (pad_and_input, pad_and_hash) = (64 + 32, 64 + 32);
        s.block = block_of(e, &zero);
        s.ck = self.ck_inner;
        compress(&mut s.ck, &s.block, pad_and_input, true);
        s.block = block_of(&s.ck, &zero);
        s.temp = self.ck_outer;
        compress(&mut s.temp, &s.block, pad_and_hash, true);
        s.temp_inner = keyed_state(&s.temp, IPAD);
        s.temp_outer = keyed_state(&s.temp, OPAD);
        // ck' = HMAC(temp, 0x01)
        s.block = [[0; LANES]; 16];
        s.block[0] = splat(1);
        s.ck = s.temp_inner;
        compress(&mut s.ck, &s.block, 64 + 1, true);
        s.block = block_of(&s.ck, &zero);
        s.ck = s.temp_outer;
        compress(&mut s.ck, &s.block, pad_and_hash, true);
        // k = HMAC(temp, ck' || 0x02)
        s.block = block_of(&s.ck, &zero);
        s.block[8] = splat(2);
        s.key = s.temp_inner;
        compress(&mut s.key, &s.block, 64 + 33, true);
        s.block = block_of(&s.key, &zero);
        s.key = s.temp_outer;
        compress(&mut s.key, &s.block, pad_and_hash, true);
    }
}

/// HMAC-BLAKE2s with a 32-byte key, through the blake2 crate: for the
/// per-peer precomputation, where speed does not matter.
fn hmac(key: &[u8; KEY_LEN], data: &[&[u8]]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut pad = Zeroizing::new([0u8; BLOCK_LEN]);
    let mut inner = Zeroizing::new([0u8; KEY_LEN]);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    pad[..KEY_LEN].copy_from_slice(key);
    pad.iter_mut().for_each(|b| *b ^= 0x36);
    let mut hasher = Blake2s256::new();
    hasher.update(&pad[..]);
    data.iter().for_each(|d| hasher.update(d));
    inner.copy_from_slice(&hasher.finalize_reset());
    pad.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
    hasher.update(&pad[..]);
    hasher.update(&inner[..]);
    out.copy_from_slice(&hasher.finalize());
    out
}

fn hash(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut hasher = Blake2s256::new();
    parts.iter().for_each(|p| hasher.update(p));
    hasher.finalize().into()
}

/// Every listed peer's psk and precomputed handshake state, in list order.
pub struct Candidates {
    cipher: Cipher,
    keys: Vec<PublicKey>,
    psks: Zeroizing<Vec<[u8; KEY_LEN]>>,
    /// `keys.len()` lanes in all; the last group's extra lanes are never
    /// tried.
    groups: Zeroizing<Vec<Group>>,
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
        let name_hash = hash(&[cipher.noise_name().as_bytes()]);
        let ck0 = Zeroizing::new(name_hash);
        let h0 = hash(&[&name_hash, PROLOGUE]);
        let mut psks = Zeroizing::new(Vec::with_capacity(keys.len()));
        let mut groups = Zeroizing::new(Vec::with_capacity(keys.len().div_ceil(LANES)));
        for chunk in keys.chunks(LANES) {
            let mut h = [[0; LANES]; 8];
            let mut ck = Zeroizing::new([[0; LANES]; 8]);
            for (lane, key) in chunk.iter().enumerate() {
                let position = psks.len();
                let psk =
                    keys::derive_psk(local, key).map_err(|e| format!("peer {position}: {e}"))?;
                psks.push(*psk);
                // MixKeyAndHash(psk): HKDF(ck, psk, 3) gives the new ck and
                // the value mixed into h (its third output, a key, is
                // replaced by MixKey(e) before any use).
                let temp = hmac(&ck0, &[&psk[..]]);
                let ck1 = hmac(&temp, &[&[1]]);
                let mixed = hmac(&temp, &[&ck1[..], &[2]]);
                let h1 = words(&hash(&[&h0, &mixed[..]]));
                let ck1 = Zeroizing::new(words(&ck1));
                for i in 0..8 {
                    h[i][lane] = h1[i];
                    ck[i][lane] = ck1[i];
                }
            }
            groups.push(Group {
                h,
                ck_inner: keyed_state(&ck, IPAD),
                ck_outer: keyed_state(&ck, OPAD),
            });
        }
        Ok(Candidates {
            cipher,
            keys: keys.to_vec(),
            psks,
            groups,
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
        let e: &[u8; KEY_LEN] = e.try_into().ok()?;
        let e = words(e).map(splat);
        let mut scratch = Zeroizing::new(Scratch::default());
        let mut opened = Zeroizing::new([0u8; FIRST_MESSAGE_MAX_LEN]);
        for (g, group) in self.groups.iter().enumerate() {
            group.mix_ephemeral(&e, &mut scratch);
            for lane in 0..LANES {
                let index = g * LANES + lane;
                if index >= self.keys.len() {
                    break;
                }
                let key = lane_bytes(&scratch.key, lane);
                let ad = lane_bytes(&scratch.hash, lane);
                if tag_checks(self.cipher, &key, &ad, sealed, &mut opened[..]) {
                    return Some(index);
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
/// Time is passed in (`now`), so that tests can drive the clock. The caller
/// charges the wall time of [`Candidates::find`]: more than its CPU time
/// when the thread was preempted, never less.
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

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.bucket().refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Hello, Initiator, Layer, Responder};

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
    fn compression_matches_the_blake2_crate() {
        // Each lane its own input: a lane mix-up shows too.
        let inputs: Vec<[u8; 64]> = (0..LANES).map(|_| random()).collect();
        let mut block = [[0; LANES]; 16];
        for (lane, input) in inputs.iter().enumerate() {
            for (i, word) in input.chunks_exact(4).enumerate() {
                block[i][lane] = u32::from_le_bytes(word.try_into().unwrap());
            }
        }
        let mut state = initial_state();
        compress(&mut state, &block, 64, true);
        for (lane, input) in inputs.iter().enumerate() {
            assert_eq!(*lane_bytes(&state, lane), hash(&[input]), "lane {lane}");
        }
    }

    #[test]
    fn keyed_states_match_hmac() {
        let keys: Vec<[u8; 32]> = (0..LANES).map(|_| random()).collect();
        let data: [u8; 32] = random();
        let mut key = [[0; LANES]; 8];
        for (lane, k) in keys.iter().enumerate() {
            for (i, w) in words(k).iter().enumerate() {
                key[i][lane] = *w;
            }
        }
        let (inner, outer) = (keyed_state(&key, IPAD), keyed_state(&key, OPAD));
        let mut block = block_of(&words(&data).map(splat), &[[0; LANES]; 8]);
        let mut out = inner;
        compress(&mut out, &block, 96, true);
        block = block_of(&out, &[[0; LANES]; 8]);
        out = outer;
        compress(&mut out, &block, 96, true);
        for (lane, k) in keys.iter().enumerate() {
            assert_eq!(*lane_bytes(&out, lane), *hmac(k, &[&data]), "lane {lane}");
        }
    }

    /// Snow's message 1 for peer i is found at exactly i, for every position
    /// of a list of two groups and a part (so every lane, and a last group
    /// that is not full), with both ciphers.
    #[test]
    fn finds_every_position_with_both_ciphers() {
        let (hub, privates, publics) = peers(2 * LANES + 3);
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
        for i in [0, 7, 8, 517, 1002] {
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
        let (hub, privates, publics) = peers(LANES + 1);
        for cipher in BOTH {
            let candidates = Candidates::new(&hub, cipher, &publics).unwrap();
            let peer = &privates[LANES];
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
            assert_eq!(key, publics[LANES]);
        }
        assert!(
            Candidates::new(&hub, Cipher::ChaChaPoly, &publics)
                .unwrap()
                .identity(LANES + 1, &hub)
                .is_none()
        );
    }

    #[test]
    fn garbage_is_from_no_one() {
        let (hub, _, publics) = peers(2 * LANES);
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
        let (hub, _, publics) = peers(LANES);
        let (stranger, _) = key_pair();
        let candidates = Candidates::new(&hub, Cipher::ChaChaPoly, &publics).unwrap();
        assert_eq!(
            candidates.find(&message1(&stranger, &hub, Cipher::ChaChaPoly)),
            None
        );
    }

    #[test]
    fn another_cipher_is_from_no_one() {
        let (hub, privates, publics) = peers(LANES);
        let candidates = Candidates::new(&hub, Cipher::AesGcm, &publics).unwrap();
        assert_eq!(
            candidates.find(&message1(&privates[3], &hub, Cipher::ChaChaPoly)),
            None
        );
    }

    #[test]
    fn a_truncated_or_altered_message_is_from_no_one() {
        let (hub, privates, publics) = peers(LANES);
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
    fn budget_ignores_a_clock_that_goes_back() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let budget = Budget::new(Duration::from_millis(10), t0);
        budget.charge(t0, Duration::from_millis(20));
        assert!(!budget.admit(t0 - Duration::from_secs(1)));
        assert!(!budget.admit(t0));
        assert!(budget.admit(t0 + Duration::from_secs(2)));
    }
}
