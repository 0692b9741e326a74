//! The Noise crypto resolver: snow's ring-accelerated ciphers and BLAKE2s,
//! with X25519 of our own so that the static and ephemeral private keys
//! snow holds are zeroed when the handshake state is dropped (snow's own
//! X25519 keeps them in plain arrays).
//!
//! What snow still keeps without zeroing: the psk (copied into the handshake
//! state), the handshake's chaining key and hash, and the transport keys
//! (inside ring's key schedules). The process is made non-dumpable against
//! their being read; see the man page's SECURITY section.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{
    BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver, RingResolver,
};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::keys::KEY_LEN;

/// The resolver every handshake uses.
pub fn resolver() -> BoxedCryptoResolver {
    let snows = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    Box::new(FallbackResolver::new(
        Box::new(ZeroizingDh),
        Box::new(snows),
    ))
}

/// Resolves only X25519, to [`Dh25519`].
struct ZeroizingDh;

impl CryptoResolver for ZeroizingDh {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(Dh25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, _choice: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, _choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// An X25519 key pair whose private half is zeroed on drop.
#[derive(Default)]
struct Dh25519 {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
}

impl Dh25519 {
    fn derive_public(&mut self) {
        let secret = x25519_dalek::StaticSecret::from(*self.private);
        self.public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    }
}

impl Dh for Dh25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        // snow only passes keys of priv_len(); anything else leaves the key
        // unset, and the handshake then fails to authenticate.
        if let Some(Ok(key)) = privkey.get(..KEY_LEN).map(<[u8; KEY_LEN]>::try_from) {
            *self.private = key;
            self.derive_public();
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private[..])?;
        self.derive_public();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow may pass a longer buffer (room for its largest curve).
        let public: [u8; KEY_LEN] = pubkey
            .get(..KEY_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let target = out.get_mut(..KEY_LEN).ok_or(snow::Error::Dh)?;
        let secret = x25519_dalek::StaticSecret::from(*self.private);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public));
        target.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc7748() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut alice = Dh25519::default();
        alice.set(&hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            alice.pubkey(),
            &hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")[..]
        );
        let mut out = [0u8; 32];
        alice
            .dh(
                &hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            &out[..],
            &hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")[..]
        );
    }
}
