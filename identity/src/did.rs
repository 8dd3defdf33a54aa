//! `did:key` for Ed25519 keys, resolved offline.
//!
//! Encoding (W3C did:key v0.7): `did:key:` ‖ `z` ‖ base58btc(0xed 0x01 ‖ public key).
//! The multicodec prefix `0xed01` is the unsigned-varint form of the Ed25519
//! public key code 0xed, which is why every such DID starts with `did:key:z6Mk`.

use std::fmt;

use serde_json::json;

use crate::{IdentityError, PublicKey};

/// Multicodec prefix for an Ed25519 public key (varint of 0xed).
const ED25519_MULTICODEC: [u8; 2] = [0xed, 0x01];
/// The method prefix.
const PREFIX: &str = "did:key:";
/// Upper bound on a DID's length we accept from outside (an Ed25519 did:key is 56 bytes).
pub const MAX_DID_LEN: usize = 128;

/// A parsed, validated Ed25519 `did:key`. Constructing one checks the key.
#[derive(Clone)]
pub struct Did {
    text: String,
    /// The decompressed key: verifying with it needs no further curve work.
    key: PublicKey,
}

/// DIDs are compared, hashed and ordered by their text (which determines the key).
impl PartialEq for Did {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Did {}
impl std::hash::Hash for Did {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}
impl PartialOrd for Did {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Did {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// Recently parsed DIDs, per thread. Parsing decompresses and checks a curve
/// point, which costs about as much as half a signature check; a ledger has
/// few distinct actors, so the verifier would otherwise redo that work for
/// nearly every entry. The cache maps exact text to the validated result.
const PARSE_CACHE_MAX: usize = 4096;
thread_local! {
    static PARSED: std::cell::RefCell<std::collections::HashMap<String, Did>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Did {
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        if let Some(d) = PARSED.with(|c| c.borrow().get(text).cloned()) {
            return Ok(d);
        }
        let d = Self::parse_uncached(text)?;
        PARSED.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= PARSE_CACHE_MAX {
                c.clear();
            }
            c.insert(text.to_string(), d.clone());
        });
        Ok(d)
    }

    fn parse_uncached(text: &str) -> Result<Self, IdentityError> {
        let err = |reason| IdentityError::InvalidDid {
            did: truncate(text),
            reason,
        };
        if text.len() > MAX_DID_LEN {
            return Err(err("too long"));
        }
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| err("only the did:key method is supported"))?;
        if rest.contains('#') || rest.contains('?') || rest.contains('/') {
            return Err(err("a DID here has no fragment, query or path"));
        }
        let b58 = rest
            .strip_prefix('z')
            .ok_or_else(|| err("multibase must be base58btc ('z')"))?;
        let bytes = bs58::decode(b58)
            .into_vec()
            .map_err(|_| err("not base58btc"))?;
        if bytes.len() != 34 || bytes[..2] != ED25519_MULTICODEC {
            return Err(err("not an Ed25519 public key (multicodec 0xed01)"));
        }
        let pk = PublicKey::from_bytes(&bytes[2..]).map_err(|e| match e {
            IdentityError::InvalidPublicKey(r) => err(r),
            _ => err("invalid key"),
        })?;
        // base58 has one spelling per byte string without leading zero bytes
        // (the multicodec prefix rules those out), so `text` is canonical.
        Ok(Self {
            text: text.to_string(),
            key: pk,
        })
    }

    pub fn from_public_key(key: &PublicKey) -> Self {
        let bytes = key.to_bytes();
        let mut buf = Vec::with_capacity(34);
        buf.extend_from_slice(&ED25519_MULTICODEC);
        buf.extend_from_slice(&bytes);
        Self {
            text: format!("{PREFIX}z{}", bs58::encode(buf).into_string()),
            key: *key,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The multibase part, `z6Mk…`.
    pub fn multibase(&self) -> &str {
        &self.text[PREFIX.len()..]
    }

    /// The key this DID names. Infallible: it was validated when parsed.
    pub fn public_key(&self) -> PublicKey {
        self.key
    }

    /// The verification method id, `did:key:z6Mk…#z6Mk…`.
    pub fn verification_method(&self) -> String {
        format!("{}#{}", self.text, self.multibase())
    }

    /// Offline resolution: the DID document did:key defines for this key.
    pub fn document(&self) -> serde_json::Value {
        let vm = self.verification_method();
        json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": self.text,
            "verificationMethod": [{
                "id": vm,
                "type": "Multikey",
                "controller": self.text,
                "publicKeyMultibase": self.multibase(),
            }],
            "authentication": [vm],
            "assertionMethod": [vm],
            "capabilityDelegation": [vm],
            "capabilityInvocation": [vm],
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({})", self.text)
    }
}

impl std::str::FromStr for Did {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Did {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Did {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    #[test]
    fn w3c_test_vector() {
        // From the did:key spec test vectors (Ed25519).
        let did = Did::parse("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp").unwrap();
        assert_eq!(
            did.multibase(),
            "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
        assert_eq!(Did::from_public_key(&did.public_key()), did);
    }

    #[test]
    fn round_trip() {
        let kp = KeyPair::generate();
        let did = kp.did();
        assert!(did.as_str().starts_with("did:key:z6Mk"));
        assert_eq!(Did::parse(did.as_str()).unwrap(), did);
        assert_eq!(did.public_key(), kp.public());
    }

    #[test]
    fn rejects_bad_dids() {
        for bad in [
            "",
            "did:web:example.com",
            "did:key:",
            "did:key:f6Mk",
            "did:key:z0OIl",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#x",
        ] {
            assert!(Did::parse(bad).is_err(), "{bad}");
        }
    }
}
