//! JSON bodies of the REST APIs, shared by the servers and the SDK, and the typed byte fields
//! they carry.

pub mod kms;
pub mod round;

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// A field of bytes that is not what it should be.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct BytesError(&'static str);

/// Binary data in a JSON body, as standard base64 (a key share, a release).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl TryFrom<String> for Base64Bytes {
    type Error = BytesError;
    fn try_from(s: String) -> Result<Self, BytesError> {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Self)
            .map_err(|_| BytesError("not standard base64"))
    }
}

impl From<Base64Bytes> for String {
    fn from(b: Base64Bytes) -> String {
        base64::engine::general_purpose::STANDARD.encode(&b.0)
    }
}

macro_rules! hex_array {
    ($(#[$doc:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; $len]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl std::str::FromStr for $name {
            type Err = BytesError;
            fn from_str(s: &str) -> Result<Self, BytesError> {
                let s = s.trim();
                if s.len() != 2 * $len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(BytesError(concat!($what, " is ", stringify!($len), " bytes in hex")));
                }
                let mut out = [0u8; $len];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BytesError("hex"))?;
                }
                Ok(Self(out))
            }
        }

        impl TryFrom<String> for $name {
            type Error = BytesError;
            fn try_from(s: String) -> Result<Self, BytesError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.to_string()
            }
        }
    };
}

hex_array!(
    /// An Ed25519 public key (a roster member's or a key manager's), as 64 hex digits.
    PublicKeyHex,
    32,
    "an Ed25519 public key"
);

hex_array!(
    /// An Ed25519 signature, as 128 hex digits.
    SignatureHex,
    64,
    "an Ed25519 signature"
);
