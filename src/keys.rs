//! Secrets and keys: the forms a secret can take, key stretching, and the
//! derivations the handshake needs.
//!
//! A secret text is either a key (44 characters of standard base64 ending in
//! `=`, decoding canonically to 32 bytes: an X25519 private key as `genkey`
//! prints it) or a passphrase (anything else), stretched with Argon2id into a
//! private key. A text that looks like a key but does not decode is an error,
//! never a silent passphrase. Everything secret lives in `Zeroizing` buffers
//! and every type that holds one prints `<redacted>` in `Debug`. Secrets are
//! read straight into a buffer of fixed size, never through a growing vector
//! or a stack buffer that would keep a copy, and the Argon2id work area is a
//! mapping of its own, zeroed and given back to the system after each use.
//! A secret file must be readable by its owner only; the peer's public key
//! may come from a file too (-k @FILE), read the same way, in any mode.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use blake2::{Blake2s256, Digest};
use zeroize::Zeroizing;

use crate::error::{Error, KeyFileKind};

/// Length of X25519 keys and of the psk.
pub const KEY_LEN: usize = 32;
/// Length of a key in its base64 text form.
pub const KEY_TEXT_LEN: usize = 44;
/// Argon2id salt: fixed, so that a passphrase gives the same key everywhere.
pub const ARGON2_SALT: &[u8] = b"taptun/1 static key";
/// Argon2id memory cost in KiB (OWASP's recommended minimum for Argon2id).
pub const ARGON2_M_KIB: u32 = 19456;
/// Argon2id passes.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;
/// Domain separation for the psk.
pub const PSK_LABEL: &[u8] = b"taptun/1 psk";
/// Passphrases shorter than this get a warning.
pub const SHORT_PASSPHRASE: usize = 20;
/// A secret file (or a line of standard input) larger than this is surely
/// not a secret.
const MAX_SECRET_LEN: usize = 64 * 1024;

/// An X25519 private key.
#[derive(Clone)]
pub struct PrivateKey(Zeroizing<[u8; KEY_LEN]>);

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// The pre-shared key both ends derive from their key pair.
pub type Psk = Zeroizing<[u8; KEY_LEN]>;

impl PrivateKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(Zeroizing::new(bytes))
    }

    /// A new random key, as `genkey` prints it.
    ///
    /// # Errors
    /// When the system's random source fails.
    pub fn generate() -> Result<PrivateKey, Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|e| {
            Error::io(
                "cannot read the system's random source",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(PrivateKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's base64 text (secret: for `genkey` only).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.0[..]))
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(*self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// X25519(self, remote) as in RFC 7748.
    fn diffie_hellman(&self, remote: &PublicKey) -> Zeroizing<[u8; KEY_LEN]> {
        let secret = x25519_dalek::StaticSecret::from(*self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(remote.0));
        Zeroizing::new(shared.to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PublicKey {
    /// Parses a public key in base64 (as `pubkey` prints it).
    ///
    /// # Errors
    /// When the text is not canonical base64 of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = trim(text);
        decode_key(text).map(|key| PublicKey(*key)).ok_or_else(|| {
            format!("`{text}` is not a public key (44 base64 characters from `taptun pubkey`)")
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Removes surrounding ASCII whitespace, as for every secret text.
pub fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// Decodes canonical standard base64 of exactly 32 bytes.
fn decode_key(text: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    if text.len() != KEY_TEXT_LEN {
        return None;
    }
    // The STANDARD engine insists on canonical padding and zero trailing bits.
    let mut out = Zeroizing::new([0u8; 48]);
    let n = STANDARD.decode_slice(text, &mut out[..]).ok()?;
    if n != KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&out[..KEY_LEN]);
    Some(key)
}

/// Whether a text has the shape of a key: 44 base64 characters ending in `=`.
fn looks_like_key(text: &str) -> bool {
    text.len() == KEY_TEXT_LEN
        && text.ends_with('=')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// What a secret text turned out to be.
pub enum SecretText {
    Key(PrivateKey),
    Passphrase(Zeroizing<String>),
}

impl SecretText {
    /// Classifies a secret text (after trimming).
    ///
    /// # Errors
    /// An empty text, or one shaped like a key that does not decode to one.
    pub fn parse(text: &str) -> Result<SecretText, String> {
        let text = trim(text);
        if text.is_empty() {
            return Err("the secret is empty".into());
        }
        if looks_like_key(text) {
            return match decode_key(text) {
                Some(key) => Ok(SecretText::Key(PrivateKey(key))),
                None => Err(
                    "looks like a key (44 base64 characters ending in `=`) but is not \
                     canonical base64 of 32 bytes; generate one with `taptun genkey`"
                        .into(),
                ),
            };
        }
        Ok(SecretText::Passphrase(Zeroizing::new(text.to_owned())))
    }

    /// The private key: the key itself, or the Argon2id stretch of the passphrase.
    pub fn private_key(&self) -> PrivateKey {
        match self {
            SecretText::Key(key) => key.clone(),
            SecretText::Passphrase(pass) => stretch_passphrase(pass),
        }
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretText::Key(_) => f.write_str("Key(<redacted>)"),
            SecretText::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// Argon2id v0x13, m = 19456 KiB, t = 2, p = 1, fixed salt, 32-byte output.
///
/// The 19 MiB work area is mapped for this derivation alone, then zeroed and
/// unmapped before returning: from the heap it would stay resident for the
/// life of the process.
pub fn stretch_passphrase(passphrase: &str) -> PrivateKey {
    let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(KEY_LEN))
        .expect("constant Argon2 parameters are valid");
    let blocks = crate::sys::Argon2Blocks::new(params.block_count());
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into_with_memory(passphrase.as_bytes(), ARGON2_SALT, &mut key[..], blocks)
        .expect("constant Argon2 parameters and salt, and memory for block_count blocks");
    PrivateKey(key)
}

/// psk = BLAKE2s-256("taptun/1 psk" || X25519(local, remote)).
///
/// Both ends compute the same value, since X25519(a, B) = X25519(b, A).
///
/// # Errors
/// When the DH result is all zero (the remote key is a low-order point).
pub fn derive_psk(local: &PrivateKey, remote: &PublicKey) -> Result<Psk, String> {
    let shared = local.diffie_hellman(remote);
    if shared.iter().all(|&b| b == 0) {
        return Err(format!(
            "the remote public key {remote} is a low-order point (X25519 gives all zeros)"
        ));
    }
    let mut hasher = Blake2s256::new();
    hasher.update(PSK_LABEL);
    hasher.update(&shared[..]);
    let mut psk = Zeroizing::new([0u8; KEY_LEN]);
    psk.copy_from_slice(&hasher.finalize());
    Ok(psk)
}

/// Where a secret was given, for messages and warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// On the command line, with the option named.
    Argv(&'static str),
    /// In the environment variable named.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Argv(opt) => f.write_str(opt),
            Origin::Env(var) => f.write_str(var),
        }
    }
}

/// A secret as configured: the text itself, or the file that holds it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Literal(Zeroizing<String>),
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            SecretSource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// A configured secret: where it came from and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    pub origin: Origin,
    pub source: SecretSource,
}

impl SecretSpec {
    /// Parses a secret argument: `@PATH` or a literal. A literal is checked
    /// here already, so that a malformed key is a usage error.
    ///
    /// # Errors
    /// An empty `@`, or a literal that is empty or a malformed key.
    pub fn parse(origin: Origin, arg: &str) -> Result<SecretSpec, Error> {
        let source = match arg.strip_prefix('@') {
            Some("") => {
                return Err(Error::Secret {
                    subject: origin.to_string(),
                    why: "`@` must be followed by a file name".into(),
                });
            }
            Some(path) => SecretSource::File(PathBuf::from(path)),
            None => {
                SecretText::parse(arg).map_err(|why| Error::Secret {
                    subject: origin.to_string(),
                    why,
                })?;
                SecretSource::Literal(Zeroizing::new(arg.to_owned()))
            }
        };
        Ok(SecretSpec { origin, source })
    }

    /// Reads (for a file) and classifies the secret.
    ///
    /// # Errors
    /// An unreadable file, or a text that is empty or a malformed key.
    pub fn load(&self) -> Result<SecretText, Error> {
        let text = match &self.source {
            SecretSource::Literal(text) => text.clone(),
            SecretSource::File(path) => read_secret_file(path)?,
        };
        SecretText::parse(&text).map_err(|why| Error::Secret {
            subject: match &self.source {
                SecretSource::File(path) => format!("{} ({})", self.origin, path.display()),
                SecretSource::Literal(_) => self.origin.to_string(),
            },
            why,
        })
    }
}

/// Whether `path` is a file directly in systemd's $CREDENTIALS_DIRECTORY.
fn in_credentials_directory(path: &Path) -> bool {
    match (std::env::var_os("CREDENTIALS_DIRECTORY"), path.parent()) {
        (Some(dir), Some(parent)) => !dir.is_empty() && parent == Path::new(&dir),
        _ => false,
    }
}

/// The first line of a secret file, as UTF-8.
///
/// # Errors
/// `Error::KeyFile`: the file cannot be opened or read, is a directory, is
/// readable or writable by group or others, is larger than 64 KiB, or its
/// first line is not UTF-8.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, Error> {
    read_key_file(path, KeyFileKind::Secret)
}

/// The public key in a file (-k @FILE): the same reading and checks as a
/// secret file, but any mode, since a public key is no secret.
///
/// # Errors
/// `Error::KeyFile` as for a secret file, `Error::Secret` when its first
/// line is not a public key.
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, Error> {
    let line = read_key_file(path, KeyFileKind::PublicKey)?;
    // Not quoted in the message: the file may be a secret file given by
    // mistake, and the message goes to the log.
    PublicKey::parse(&line).map_err(|_| Error::Secret {
        subject: format!("-k ({})", path.display()),
        why: "its first line is not a public key (44 base64 characters from `taptun pubkey`)"
            .into(),
    })
}

fn read_key_file(path: &Path, kind: KeyFileKind) -> Result<Zeroizing<String>, Error> {
    let file_error = |source| Error::KeyFile {
        path: path.to_owned(),
        kind,
        source,
    };
    let mut file = std::fs::File::open(path).map_err(file_error)?;
    let metadata = file.metadata().map_err(file_error)?;
    // Opening a directory succeeds; its mode (755) would otherwise be
    // blamed, with a chmod that would not help.
    if metadata.is_dir() {
        return Err(file_error(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory: give the path of the key file in it",
        )));
    }
    // As ssh does with private keys: a secret others can read is no secret.
    // systemd's credentials are the exception: root-owned 0400 files shown
    // as 0440 because an ACL lets the unit's user read them, in a directory
    // private to the unit.
    let mode = metadata.permissions().mode();
    if kind == KeyFileKind::Secret && mode & 0o077 != 0 && !in_credentials_directory(path) {
        return Err(file_error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is readable or writable by group or others (mode {:03o}); fix it with: chmod 600 {}",
                mode & 0o777,
                path.display()
            ),
        )));
    }
    read_secret_line(&mut file, false).map_err(file_error)
}

/// The first line of a secret read from `input`, as UTF-8. With `one_line`
/// the reading stops at the first newline (a terminal or a pipe that stays
/// open); otherwise `input` is read to its end, and refused when it is larger
/// than a secret could be.
///
/// # Errors
/// A failing read, more than 64 KiB (before the first newline, with
/// `one_line`), or a first line that is not UTF-8.
pub fn read_secret_line(input: &mut dyn Read, one_line: bool) -> io::Result<Zeroizing<String>> {
    // One byte more than allowed, to tell "exactly the limit" from "more".
    let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_LEN + 1]);
    let len = read_into(input, &mut buf, one_line)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            if one_line {
                "its first line is longer than 64 KiB: not a secret"
            } else {
                "it is larger than 64 KiB: not a secret file"
            },
        )
    })?;
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = std::str::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "its first line is not UTF-8"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Reads `input` straight into `buf` until its end, or, with `one_line`,
/// until a newline has been read. `buf` cannot grow, so no part of the
/// secret is left behind in a reallocated vector or a stack buffer. Returns
/// the length read, or None when `buf` filled up first.
fn read_into(input: &mut dyn Read, buf: &mut [u8], one_line: bool) -> io::Result<Option<usize>> {
    let mut len = 0;
    while len < buf.len() {
        match input.read(&mut buf[len..]) {
            Ok(0) => return Ok(Some(len)),
            Ok(n) => {
                let start = len;
                len = (len + n).min(buf.len());
                if one_line && buf[start..len].contains(&b'\n') {
                    return Ok(Some(len));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "yAnz5aJ0gbZlk8u8m8xq0L3YbL2mFqNm3fJ0bVQ0uUI=";

    #[test]
    fn key_text_round_trips() {
        let key = PrivateKey::generate().unwrap();
        match SecretText::parse(&key.to_text()).unwrap() {
            SecretText::Key(parsed) => assert_eq!(parsed.as_bytes(), key.as_bytes()),
            SecretText::Passphrase(_) => panic!("a genkey key parsed as a passphrase"),
        }
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let padded = format!(" \t{KEY}\r\n");
        assert!(matches!(SecretText::parse(&padded), Ok(SecretText::Key(_))));
        match SecretText::parse("  correct horse  \n").unwrap() {
            SecretText::Passphrase(p) => assert_eq!(p.as_str(), "correct horse"),
            SecretText::Key(_) => panic!("passphrase parsed as key"),
        }
    }

    #[test]
    fn rejects_key_shaped_text_with_nonzero_trailing_bits() {
        // Last character 'J' instead of 'I': same bytes, nonzero trailing bits.
        let bad = "yAnz5aJ0gbZlk8u8m8xq0L3YbL2mFqNm3fJ0bVQ0uUJ=";
        assert!(SecretText::parse(bad).is_err());
    }

    #[test]
    fn rejects_key_shaped_text_of_31_bytes() {
        let bad = format!("{}==", &STANDARD.encode([7u8; 31])[..42]);
        assert_eq!(bad.len(), 44);
        assert!(SecretText::parse(&bad).is_err());
    }

    #[test]
    fn rejects_empty_secret() {
        assert!(SecretText::parse(" \n").is_err());
    }

    #[test]
    fn other_texts_are_passphrases() {
        // 44 characters but not ending in '=', and 43 characters ending in '='.
        let no_pad = "yAnz5aJ0gbZlk8u8m8xq0L3YbL2mFqNm3fJ0bVQ0uUIx";
        assert!(matches!(
            SecretText::parse(no_pad),
            Ok(SecretText::Passphrase(_))
        ));
        assert!(matches!(
            SecretText::parse(&KEY[1..]),
            Ok(SecretText::Passphrase(_))
        ));
    }

    #[test]
    fn public_key_parse_rejects_garbage() {
        assert!(PublicKey::parse("not a key").is_err());
        let key = PrivateKey::generate().unwrap().public_key();
        assert_eq!(PublicKey::parse(&format!("{key}\n")).unwrap(), key);
    }

    #[test]
    fn psk_is_symmetric() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        let ab = derive_psk(&a, &b.public_key()).unwrap();
        let ba = derive_psk(&b, &a.public_key()).unwrap();
        assert_eq!(*ab, *ba);
    }

    #[test]
    fn psk_rejects_low_order_point() {
        let a = PrivateKey::generate().unwrap();
        assert!(derive_psk(&a, &PublicKey([0u8; 32])).is_err());
    }

    fn secret_file(name: &str, mode: u32) -> (PathBuf, SecretSpec) {
        let dir = std::env::temp_dir().join(format!("taptun-keys-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        std::fs::write(&path, format!("{KEY}\nsecond line\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let spec = SecretSpec::parse(Origin::Argv("-l"), &format!("@{}", path.display())).unwrap();
        (dir, spec)
    }

    #[test]
    fn secret_file_first_line_is_used() {
        let (dir, spec) = secret_file("first-line", 0o600);
        assert!(matches!(spec.load(), Ok(SecretText::Key(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_file_readable_by_others_is_refused() {
        for mode in [0o644, 0o640, 0o602] {
            let (dir, spec) = secret_file(&format!("mode-{mode:o}"), mode);
            let err = spec.load().unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// Hands out `data` `chunk` bytes per read and records where each buffer it is given ends.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
        ends: Vec<usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.ends.push(buf.as_ptr_range().end as usize);
            let n = buf.len().min(self.chunk).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// A first line `line`, then filler lines up to `len` bytes in all.
    fn padded(line: &str, len: usize) -> Vec<u8> {
        let mut data = format!("{line}\n").into_bytes();
        data.resize(len, b'#');
        data
    }

    #[test]
    fn a_secret_is_read_straight_into_one_buffer_that_never_moves() {
        // Exactly the limit, in short reads: every read goes into the same buffer, whose end
        // never moves (no reallocation, no stack buffer in between).
        let data = padded(KEY, MAX_SECRET_LEN);
        let mut input = Trickle {
            data: &data,
            chunk: 1000,
            ends: Vec::new(),
        };
        let text = read_secret_line(&mut input, false).unwrap();
        assert_eq!(text.as_str(), KEY);
        assert!(
            input.ends.len() > MAX_SECRET_LEN / 1000,
            "{} reads",
            input.ends.len()
        );
        assert!(
            input.ends.iter().all(|&end| end == input.ends[0]),
            "the secret was read into more than one buffer"
        );
    }

    #[test]
    fn reading_one_line_stops_at_its_newline() {
        // A terminal or an open pipe: nothing more arrives after the line.
        let mut input = Trickle {
            data: b"correct horse\n",
            chunk: 4,
            ends: Vec::new(),
        };
        let text = read_secret_line(&mut input, true).unwrap();
        assert_eq!(text.as_str(), "correct horse");
        assert_eq!(input.ends.len(), 4, "reads after the newline");
        let long = padded(&"x".repeat(MAX_SECRET_LEN + 1), MAX_SECRET_LEN + 2);
        let mut input = Trickle {
            data: &long,
            chunk: usize::MAX,
            ends: Vec::new(),
        };
        let err = read_secret_line(&mut input, true).unwrap_err();
        assert!(err.to_string().contains("longer than 64 KiB"), "{err}");
    }

    #[test]
    fn secret_file_larger_than_64_kib_is_refused() {
        let (dir, spec) = secret_file("at-limit", 0o600);
        let SecretSource::File(path) = &spec.source else {
            unreachable!()
        };
        std::fs::write(path, padded(KEY, MAX_SECRET_LEN)).unwrap();
        assert!(matches!(spec.load(), Ok(SecretText::Key(_))));
        std::fs::write(path, padded(KEY, MAX_SECRET_LEN + 1)).unwrap();
        let err = spec.load().unwrap_err();
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_passphrase_stretches_to_the_same_key_every_time() {
        // Each derivation has fresh memory of its own: nothing left from the last one matters.
        let first = stretch_passphrase("correct horse battery staple");
        let second = stretch_passphrase("correct horse battery staple");
        assert_eq!(first.as_bytes(), second.as_bytes());
        assert_eq!(
            first.to_text().as_str(),
            "C7O4IBpXPHNzcArFxDLRtirO9v4zFWRyfLo2cwBoO2o="
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let spec = SecretSpec::parse(Origin::Argv("-l"), "hunter2 hunter2").unwrap();
        assert!(!format!("{spec:?}").contains("hunter2"));
        let key = PrivateKey::from_bytes([1; 32]);
        assert!(format!("{key:?}").contains("redacted"));
    }

    #[test]
    fn a_directory_as_secret_file_is_named_a_directory() {
        let (dir, _) = secret_file("dir", 0o600);
        for mode in [0o700, 0o755] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let spec =
                SecretSpec::parse(Origin::Argv("-l"), &format!("@{}", dir.display())).unwrap();
            let err = spec.load().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot read secret file {}: it is a directory: give the path of the key file in it",
                    dir.display()
                )
            );
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
            let err = read_public_key_file(&dir).unwrap_err();
            assert!(err.to_string().contains("it is a directory"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_public_key_file_may_be_read_by_anyone() {
        let (dir, _) = secret_file("pub", 0o600);
        let path = dir.join("peer.pub");
        let key = PrivateKey::from_bytes([7; 32]).public_key();
        std::fs::write(&path, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_public_key_file(&path).unwrap(), key);
        // A secret file given by mistake: its text stays out of the message.
        std::fs::write(&path, "hunter2 hunter2\n").unwrap();
        let err = read_public_key_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "-k ({}): its first line is not a public key (44 base64 characters from `taptun pubkey`)",
                path.display()
            )
        );
        let err = read_public_key_file(&dir.join("missing")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("-k: cannot read public key file "),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
