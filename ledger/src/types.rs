//! Small validated newtypes used across the ledger: a bare `u64` or `String` in an
//! entry would let a caller build an entry that the verifier must later reject.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Position of an entry in the ledger, 0-based and contiguous.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// Defines a fixed-size byte string whose text form is lowercase hex.
macro_rules! hex_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn from_hex(text: &str) -> Result<Self, LedgerError> {
                if text.len() != 2 * $len || text.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(LedgerError::InvalidHex {
                        what: stringify!($name),
                        expected: 2 * $len,
                    });
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(text, &mut out).map_err(|_| LedgerError::InvalidHex {
                    what: stringify!($name),
                    expected: 2 * $len,
                })?;
                Ok(Self(out))
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(
    /// A 128-bit random value chosen by the signer, unique per (actor, event).
    Nonce,
    16
);
hex_bytes!(
    /// A SHA-256 hash of an entry: the RFC 6962 leaf hash `SHA-256(0x00 ‖ entry)`.
    /// `prev` links use this same value, so one hash serves chain and tree.
    EntryHash,
    32
);
hex_bytes!(
    /// `SHA-256(salt ‖ payload)`: commits to a payload that may later be deleted.
    PayloadDigest,
    32
);

impl Nonce {
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Self(b)
    }
}

impl EntryHash {
    /// `prev` of entry 0.
    pub const ZERO: EntryHash = EntryHash([0u8; 32]);
}

/// Checks a short identifier-like string: printable ASCII from a safe set.
fn check_name(
    what: &'static str,
    text: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
) -> Result<(), LedgerError> {
    if text.is_empty() || text.len() > max || !text.chars().all(ok) {
        return Err(LedgerError::InvalidName {
            what,
            value: text.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// Defines a validated string newtype.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:expr, $max:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn new(text: impl Into<String>) -> Result<Self, LedgerError> {
                let text = text.into();
                check_name($what, &text, $max, $ok)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
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

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = LedgerError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// An action type such as `tool.call` or `credential.mint`: dot-separated
    /// lowercase words.
    ActionType,
    "action type",
    64,
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_'
);
name_type!(
    /// A session id (the delegation credential's id, e.g. `urn:uuid:…`).
    SessionId,
    "session id",
    128,
    |c: char| c.is_ascii_alphanumeric() || ":-._".contains(c)
);
name_type!(
    /// Where the agent runs: `chat`, `ci`, `ide`, …
    Context,
    "context",
    64,
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)
);
name_type!(
    /// A scope name from the broker's config, e.g. `ci-read`.
    Scope,
    "scope",
    64,
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:".contains(c)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_strict() {
        assert!(EntryHash::from_hex(&"ab".repeat(32)).is_ok());
        assert!(EntryHash::from_hex(&"AB".repeat(32)).is_err());
        assert!(EntryHash::from_hex(&"ab".repeat(31)).is_err());
        assert!(EntryHash::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(ActionType::new("tool.call").is_ok());
        assert!(ActionType::new("Tool.Call").is_err());
        assert!(ActionType::new("").is_err());
        assert!(Context::new("ci").is_ok());
        assert!(Context::new("c i").is_err());
        assert!(SessionId::new("urn:uuid:0f0e").is_ok());
        assert!(SessionId::new("a\nb").is_err());
    }
}
