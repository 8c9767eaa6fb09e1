//! Typed identifiers and digests. An identifier is always valid: 1 to 64 characters from
//! `[A-Za-z0-9._-]`, not starting with `.` — safe in URLs, file names and logs.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// Empty or longer than [`MAX_ID_LEN`].
    #[error("{kind} must be 1 to {MAX_ID_LEN} characters long, got {len}")]
    Length {
        /// Which identifier.
        kind: &'static str,
        /// Length given.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`, or a leading `.`.
    #[error("{kind} may contain only A-Z, a-z, 0-9, '.', '_' and '-', and may not start with '.'")]
    Charset {
        /// Which identifier.
        kind: &'static str,
    },
}

fn check(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length { kind, len: s.len() });
    }
    let ok = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok || s.starts_with('.') {
        return Err(IdError::Charset { kind });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// A federated-learning round, chosen by the operator (e.g. `resnet-2026-11-21-r7`).
    ///
    /// ```
    /// use cryptflow_services::RoundId;
    /// assert_eq!(RoundId::parse("round-7").unwrap().as_str(), "round-7");
    /// assert!(RoundId::parse("../etc").is_err());
    /// ```
    RoundId,
    "round id"
);

string_id!(
    /// A participating client (the `sub` of its tokens), e.g. `hospital-berlin`.
    ///
    /// ```
    /// use cryptflow_services::ClientId;
    /// assert!(ClientId::parse("hospital_3").is_ok());
    /// assert!(ClientId::parse("").is_err());
    /// ```
    ClientId,
    "client id"
);

/// A SHA-256 digest (of an upload, an aggregate, a share, a round spec), serialised as 64
/// lowercase hex digits.
///
/// ```
/// use cryptflow_services::Sha256Digest;
/// let d = Sha256Digest::of(b"abc");
/// assert_eq!(d.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
/// assert!("xyz".parse::<Sha256Digest>().is_err());
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("a SHA-256 digest is 64 hexadecimal digits")]
pub struct DigestError;

impl std::str::FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError);
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| DigestError)?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, DigestError> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_ids_with_reasons() {
        assert!(matches!(RoundId::parse(""), Err(IdError::Length { len: 0, .. })));
        assert!(matches!(RoundId::parse("x".repeat(65)), Err(IdError::Length { len: 65, .. })));
        assert!(matches!(RoundId::parse("a/b"), Err(IdError::Charset { .. })));
        assert!(matches!(RoundId::parse(".hidden"), Err(IdError::Charset { .. })));
        assert!(matches!(ClientId::parse("ü"), Err(IdError::Charset { .. })));
        assert!(RoundId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn serde_validates() {
        let ok: RoundId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(ok.as_str(), "r-1");
        let err = serde_json::from_str::<RoundId>("\"r 1\"").unwrap_err();
        assert!(err.to_string().contains("round id"));
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"r-1\"");
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_safe_charset(s in "\\PC{0,70}") {
            let safe = !s.is_empty() && s.len() <= 64 && !s.starts_with('.')
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            prop_assert_eq!(ClientId::parse(s.clone()).is_ok(), safe);
        }
    }
}
