//! Witness cosignatures: anchoring a ledger against wholesale replacement.
//!
//! Whoever holds the ledger key can sign a brand-new, internally consistent
//! ledger. What they cannot do is make an independent witness — a party that
//! remembers the last tree head it saw for this ledger and only signs heads
//! that extend it (checked with a consistency proof) — cosign the rewritten
//! history. So an auditor pins one or more witnesses (`custody-verify verify
//! --witness <DID or vkey>`) and requires a checkpoint cosigned by each.
//!
//! Wire format: C2SP `tlog-cosignature`, `cosignature/v1`. A cosignature is one
//! more signed-note line under the checkpoint:
//!
//! ```text
//! — <witness name> <base64(key id ‖ timestamp ‖ Ed25519 signature)>
//! ```
//!
//! where the timestamp is 8 bytes big-endian (seconds since the epoch), the key
//! id is `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]` and the signature covers
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the checkpoint's text: origin, size, root, extension lines>
//! ```
//!
//! A custody witness's name is its DID (`did:key:z6Mk…`), so pinning the DID
//! pins name and key; witnesses elsewhere are pinned by their verifier key
//! string `<name>+<key id hex>+<base64(0x04 ‖ public key)>`.
//!
//! ```
//! use custody_identity::KeyPair;
//! use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
//! use custody_ledger::merkle::{TreeHead, EMPTY_HASH};
//! use custody_ledger::witness::WitnessKey;
//! let ledger = KeyPair::from_seed(&[1u8; 32]);
//! let witness = KeyPair::from_seed(&[2u8; 32]);
//! let t = time::macros::datetime!(2026-11-24 19:20:00 UTC);
//! let origin = Origin::for_ledger(&ledger.did());
//! let mut cp = SignedCheckpoint::sign(&ledger, &origin, TreeHead { size: 0, root: EMPTY_HASH }, t).unwrap();
//! cp.cosign(&witness, t).unwrap();
//! let pin = WitnessKey::parse(witness.did().as_str()).unwrap();
//! assert_eq!(cp.verify_cosignature(&pin).unwrap(), 1_795_548_000);
//! // The ledger's own signature still verifies; the cosignature is one more line.
//! cp.verify(&ledger.public()).unwrap();
//! assert!(String::from_utf8(cp.to_bytes()).unwrap().contains(&format!("— {} ", witness.did())));
//! ```

use base64::Engine;
use custody_identity::{Did, KeyPair, PublicKey, Signature};

/// signed-note signature type for `cosignature/v1`.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The cosigned message's first line.
pub const COSIGNATURE_HEADER: &str = "cosignature/v1";
/// Timestamp (8) + Ed25519 signature (64).
const COSIGNATURE_LEN: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("invalid witness key {0:?}: expected a did:key or a verifier key <name>+<id hex>+<base64(0x04 ‖ key)>")]
    BadKey(String),
}

/// A pinned witness: its key name and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    key: PublicKey,
}

impl WitnessKey {
    /// A custody witness, named by its DID.
    pub fn from_did(did: &Did) -> Self {
        Self {
            name: did.to_string(),
            key: did.public_key(),
        }
    }

    /// From a did:key or a signed-note verifier key string.
    pub fn parse(text: &str) -> Result<Self, WitnessError> {
        let bad = || WitnessError::BadKey(text.chars().take(100).collect());
        if text.starts_with("did:") && !text.contains('+') {
            return Did::parse(text)
                .map(|d| Self::from_did(&d))
                .map_err(|_| bad());
        }
        // The base64 key may itself contain '+'.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        let (alg, key) = raw.split_first().ok_or_else(bad)?;
        let key = <[u8; 32]>::try_from(key).map_err(|_| bad())?;
        if *alg != ALG_COSIGNATURE_V1 || !signed_note::is_key_name_valid(name) {
            return Err(bad());
        }
        let w = Self {
            name: name.to_string(),
            key: PublicKey::from_bytes(&key).map_err(|_| bad())?,
        };
        if format!("{:08x}", w.key_id()) != id_hex {
            return Err(bad());
        }
        Ok(w)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4]`.
    pub fn key_id(&self) -> u32 {
        let mut k = vec![ALG_COSIGNATURE_V1];
        k.extend_from_slice(&self.key.to_bytes());
        signed_note::key_id(&self.name, &k)
    }

    /// The verifier key string others pin.
    pub fn to_vkey(&self) -> String {
        let mut k = vec![ALG_COSIGNATURE_V1];
        k.extend_from_slice(&self.key.to_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id(),
            base64::engine::general_purpose::STANDARD.encode(k)
        )
    }

    pub(crate) fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            id: self.key_id(),
            key: self.key,
        }
    }
}

/// What a witness signs for a checkpoint text at `time`.
pub fn cosigned_message(checkpoint_text: &[u8], time: u64) -> Vec<u8> {
    let mut m = format!("{COSIGNATURE_HEADER}\ntime {time}\n").into_bytes();
    m.extend_from_slice(checkpoint_text);
    m
}

/// Signs as a witness (a custody witness: named by its DID).
pub(crate) struct Cosigner<'a> {
    pub name: String,
    pub id: u32,
    pub key: &'a KeyPair,
    pub time: u64,
}

impl<'a> Cosigner<'a> {
    pub fn new(key: &'a KeyPair, time: u64) -> Self {
        let w = WitnessKey::from_did(&key.did());
        Self {
            id: w.key_id(),
            name: w.name,
            key,
            time,
        }
    }
}

impl signed_note::Signer for Cosigner<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut out = self.time.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.sign(&cosigned_message(msg, self.time)).0);
        Ok(out)
    }
}

/// Checks a cosignature with `verify_strict`.
pub(crate) struct CosignatureVerifier {
    name: String,
    id: u32,
    key: PublicKey,
}

/// The timestamp of a cosignature's bytes, if they have the right length.
pub(crate) fn cosignature_time(sig: &[u8]) -> Option<u64> {
    (sig.len() == COSIGNATURE_LEN)
        .then(|| <[u8; 8]>::try_from(&sig[..8]).ok().map(u64::from_be_bytes))
        .flatten()
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some(time) = cosignature_time(sig) else {
            return false;
        };
        Signature::from_slice(&sig[8..])
            .map(|s| self.key.verify(&cosigned_message(msg, time), &s).is_ok())
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vkey_round_trip_and_did_pin_agree() {
        let k = KeyPair::generate();
        let w = WitnessKey::from_did(&k.did());
        let back = WitnessKey::parse(&w.to_vkey()).unwrap();
        assert_eq!(back, w);
        assert_eq!(WitnessKey::parse(k.did().as_str()).unwrap(), w);
    }

    #[test]
    fn bad_pins_are_refused() {
        let k = KeyPair::generate();
        let v = WitnessKey::from_did(&k.did()).to_vkey();
        for bad in [
            "",
            "did:key:zNope",
            "name+00000000",
            &v.replacen('+', "+f", 1),
            // A checkpoint (0x01) key is not a cosignature key.
            &custody_identity::Did::from_public_key(&k.public())
                .to_string()
                .replace("did", "x"),
        ] {
            assert!(WitnessKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
