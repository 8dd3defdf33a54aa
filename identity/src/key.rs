//! Ed25519 key pairs, public keys and signatures.
//!
//! Verification always goes through `verify_strict`, and public keys of small
//! order ("weak" keys) are rejected when they are parsed, so a signature can
//! never be valid for more than one message/key pair by construction.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;

use crate::{Did, IdentityError};

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 key pair. The secret half is zeroized on drop and never printed.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("did", &self.did().as_str())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut OsRng),
        }
    }

    /// Rebuilds a key pair from its 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed. Callers must keep it out of logs and errors.
    pub fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    pub fn did(&self) -> Did {
        Did::from_public_key(&self.public())
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg).to_bytes())
    }

    /// The dalek signing key, for crates that sign through other interfaces
    /// (signed notes, certificates).
    pub fn dalek(&self) -> &SigningKey {
        &self.signing
    }
}

/// A validated Ed25519 public key: a canonical point that is not of small order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", Did::from_public_key(self))
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let arr: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::InvalidPublicKey("an Ed25519 key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|_| IdentityError::InvalidPublicKey("not a point on the curve"))?;
        if key.is_weak() {
            return Err(IdentityError::InvalidPublicKey(
                "weak key (small-order point) rejected",
            ));
        }
        Ok(Self(key))
    }

    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// Strict verification: rejects non-canonical `S`, small-order `R` and weak keys.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), IdentityError> {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| IdentityError::BadSignature)
    }

    pub fn dalek(&self) -> &VerifyingKey {
        &self.0
    }
}

/// A 64-byte Ed25519 signature. Its text form is unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", self.to_base64url())
    }
}

impl Signature {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityError> {
        let arr: [u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::InvalidSignatureEncoding("a signature is 64 bytes"))?;
        Ok(Self(arr))
    }

    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn from_base64url(text: &str) -> Result<Self, IdentityError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| IdentityError::InvalidSignatureEncoding("not unpadded base64url"))?;
        Self::from_slice(&bytes)
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64url())
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_base64url(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_strict() {
        let kp = KeyPair::generate();
        let sig = kp.sign(b"hello");
        kp.public().verify(b"hello", &sig).unwrap();
        assert!(kp.public().verify(b"hellp", &sig).is_err());
        let mut bad = sig;
        bad.0[0] ^= 1;
        assert!(kp.public().verify(b"hello", &bad).is_err());
    }

    #[test]
    fn rejects_weak_keys() {
        // The identity point (small order) encoded as y = 1.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&weak),
            Err(IdentityError::InvalidPublicKey(_))
        ));
    }

    #[test]
    fn rejects_non_canonical_s() {
        let kp = KeyPair::generate();
        let mut sig = kp.sign(b"m");
        // Adding the group order L to S gives the same value mod L: malleated.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s, l) in sig.0[32..].iter_mut().zip(L) {
            let v = *s as u16 + l as u16 + carry;
            *s = v as u8;
            carry = v >> 8;
        }
        assert!(kp.public().verify(b"m", &sig).is_err());
    }

    #[test]
    fn debug_never_shows_secret() {
        let kp = KeyPair::from_seed(&[7u8; 32]);
        let dbg = format!("{kp:?}");
        assert!(!dbg.contains(&hex_of(&[7u8; 32])));
        assert!(dbg.contains("did:key:z6Mk"));
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
