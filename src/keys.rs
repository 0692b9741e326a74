//! Secrets and keys: the forms a secret can take, key stretching, and the
//! derivations the handshake needs.
//!
//! A secret text is either a key (44 characters of standard base64 ending in
//! `=`, decoding canonically to 32 bytes: an X25519 private key as `genkey`
//! prints it) or a passphrase (anything else), stretched with Argon2id into a
//! private key. A text that looks like a key but does not decode is an error,
//! never a silent passphrase. Everything secret lives in `Zeroizing` buffers
//! and every type that holds one prints `<redacted>` in `Debug`.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use blake2::{Blake2s256, Digest};
use zeroize::Zeroizing;

use crate::error::Error;

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
/// A secret file larger than this is surely not a secret file.
const MAX_SECRET_FILE: u64 = 64 * 1024;

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
        decode_key(text).map(PublicKey).ok_or_else(|| {
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
fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != KEY_TEXT_LEN {
        return None;
    }
    // The STANDARD engine insists on canonical padding and zero trailing bits.
    let mut out = Zeroizing::new([0u8; 48]);
    let n = STANDARD.decode_slice(text, &mut out[..]).ok()?;
    if n != KEY_LEN {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
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
                Some(key) => Ok(SecretText::Key(PrivateKey::from_bytes(key))),
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
pub fn stretch_passphrase(passphrase: &str) -> PrivateKey {
    let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(KEY_LEN))
        .expect("constant Argon2 parameters are valid");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase.as_bytes(), ARGON2_SALT, &mut key[..])
        .expect("constant Argon2 parameters and salt are valid");
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
            SecretSource::File(path) => read_first_line(path)?,
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
fn read_first_line(path: &Path) -> Result<Zeroizing<String>, Error> {
    let file_error = |source| Error::KeyFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    // As ssh does with private keys: a secret others can read is no secret.
    // systemd's credentials are the exception: root-owned 0400 files shown
    // as 0440 because an ACL lets the unit's user read them, in a directory
    // private to the unit.
    let mode = file.metadata().map_err(file_error)?.permissions().mode();
    if mode & 0o077 != 0 && !in_credentials_directory(path) {
        return Err(file_error(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it is readable or writable by group or others (mode {:03o}); fix it with: chmod 600 {}",
                mode & 0o777,
                path.display()
            ),
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE)
        .read_to_end(&mut bytes)
        .map_err(file_error)?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = std::str::from_utf8(line).map_err(|_| {
        file_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "its first line is not UTF-8",
        ))
    })?;
    Ok(Zeroizing::new(text.to_owned()))
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

    #[test]
    fn debug_never_shows_secrets() {
        let spec = SecretSpec::parse(Origin::Argv("-l"), "hunter2 hunter2").unwrap();
        assert!(!format!("{spec:?}").contains("hunter2"));
        let key = PrivateKey::from_bytes([1; 32]);
        assert!(format!("{key:?}").contains("redacted"));
    }
}
