//! The values both ends must agree on, as they cross the wire: the layer
//! (hello byte 1) and the cipher (in the Noise protocol name). The hello
//! itself is in `handshake.rs`; the device and the command line use these
//! types too. Depends on nothing else in the crate.

use std::fmt;

/// TAP (Ethernet frames) or TUN (IP packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Layer {
    Tap = 0,
    Tun = 1,
}

impl Layer {
    /// The value in hello byte 1.
    pub fn wire_value(self) -> u8 {
        self as u8
    }

    pub fn from_wire(value: u8) -> Option<Layer> {
        match value {
            0 => Some(Layer::Tap),
            1 => Some(Layer::Tun),
            _ => None,
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Tap => "tap",
            Layer::Tun => "tun",
        })
    }
}

/// The AEAD both ends must agree on (-e).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    ChaChaPoly,
    AesGcm,
}

impl Cipher {
    pub fn noise_name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s",
            Cipher::AesGcm => "Noise_XXpsk0_25519_AESGCM_BLAKE2s",
        }
    }

    pub fn option_name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "chachapoly",
            Cipher::AesGcm => "aesgcm",
        }
    }
}
