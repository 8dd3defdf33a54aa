//! Batch verification of Ed25519 signatures, for the offline verifier's
//! throughput, with the strict per-signature rules kept where they can be
//! kept cheaply.
//!
//! [`verify_batch_strict`] checks many signatures with one random linear
//! combination (`ed25519_dalek::verify_batch`): about half the work of
//! verifying each. It first applies the strict pre-checks that
//! `verify_strict` applies — `S` canonical (`S < L`), `R` not of small order,
//! the key not of small order (refused when the DID is parsed) — and refuses
//! keys with a torsion component (checked once per key: [`TorsionFreeKeys`]).
//!
//! What can still differ from `verify_strict` (FORMAT.md §2.2, SECURITY.md):
//! a signature whose `R` has a torsion component *and* whose prime-order part
//! satisfies the verification equation. `verify_strict` refuses it (it
//! compares `R` byte for byte with `[s]B − [k]A`); the batch equation, which
//! is not multiplied by the cofactor, accepts it only when the random
//! coefficient happens to cancel the torsion (probability 1/8 per batch).
//! Producing such a signature needs the private key (the prime-order part
//! must verify, and `k` depends on the altered `R`), so it can never make one
//! identity's entry pass as another's: only a key's holder can make its own
//! signature verify under one rule and not the other. The broker checks
//! every event with `verify_strict` before appending, so no ledger it built
//! holds such a signature; a caller that needs the strict verdict for a
//! signature the batch accepted can call [`crate::PublicKey::verify`].

use std::collections::HashSet;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;

use crate::{IdentityError, PublicKey, Signature};

/// One signature to check in a batch.
pub struct BatchItem<'a> {
    pub key: &'a PublicKey,
    pub msg: &'a [u8],
    pub sig: &'a Signature,
}

/// Keys already found free of torsion (the check costs a scalar
/// multiplication, so it is done once per key, not per signature).
#[derive(Default)]
pub struct TorsionFreeKeys(HashSet<[u8; 32]>);

impl TorsionFreeKeys {
    /// Whether `key` has no small-order component, remembering the answer.
    pub fn check(&mut self, key: &PublicKey) -> bool {
        let bytes = key.to_bytes();
        if self.0.contains(&bytes) {
            return true;
        }
        if key.dalek().to_edwards().is_torsion_free() {
            self.0.insert(bytes);
            true
        } else {
            false
        }
    }
}

/// The per-signature pre-checks of `verify_strict` that the batch equation
/// does not make: `S` canonical, `R` a point not of small order.
fn strict_shape(sig: &Signature) -> bool {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&sig.0[..32]);
    s.copy_from_slice(&sig.0[32..]);
    if Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).is_none() {
        return false;
    }
    match CompressedEdwardsY(r).decompress() {
        Some(point) => !point.is_small_order(),
        None => false,
    }
}

/// Verifies every item at once. `Err` when any signature fails (a pre-check
/// or the batch equation); the caller then checks the items one by one
/// (`PublicKey::verify`) to name the failing ones.
pub fn verify_batch_strict(
    items: &[BatchItem<'_>],
    keys: &mut TorsionFreeKeys,
) -> Result<(), IdentityError> {
    if items
        .iter()
        .any(|i| !strict_shape(i.sig) || !keys.check(i.key))
    {
        return Err(IdentityError::BadSignature);
    }
    let msgs: Vec<&[u8]> = items.iter().map(|i| i.msg).collect();
    let sigs: Vec<ed25519_dalek::Signature> = items
        .iter()
        .map(|i| ed25519_dalek::Signature::from_bytes(&i.sig.0))
        .collect();
    let vks: Vec<ed25519_dalek::VerifyingKey> = items.iter().map(|i| *i.key.dalek()).collect();
    ed25519_dalek::verify_batch(&msgs, &sigs, &vks).map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    fn signed(n: usize) -> Vec<(PublicKey, Vec<u8>, Signature)> {
        (0..n)
            .map(|i| {
                let k = KeyPair::generate();
                let msg = format!("message {i}").into_bytes();
                let sig = k.sign(&msg);
                (k.public(), msg, sig)
            })
            .collect()
    }

    fn items(v: &[(PublicKey, Vec<u8>, Signature)]) -> Vec<BatchItem<'_>> {
        v.iter()
            .map(|(key, msg, sig)| BatchItem { key, msg, sig })
            .collect()
    }

    #[test]
    fn agrees_with_verify_strict_on_valid_and_tampered_signatures() {
        let mut keys = TorsionFreeKeys::default();
        let mut v = signed(64);
        verify_batch_strict(&items(&v), &mut keys).unwrap();
        // Any one changed byte of a message, R or S makes the batch fail,
        // as it makes verify_strict fail.
        for (which, at) in [(0usize, 0usize), (17, 5), (63, 40)] {
            let orig = v[which].clone();
            v[which].2 .0[at] ^= 1;
            assert!(v[which].0.verify(&v[which].1, &v[which].2).is_err());
            assert!(verify_batch_strict(&items(&v), &mut keys).is_err());
            v[which] = orig.clone();
            v[which].1[0] ^= 1;
            assert!(verify_batch_strict(&items(&v), &mut keys).is_err());
            v[which] = orig;
        }
        verify_batch_strict(&items(&v), &mut keys).unwrap();
    }

    #[test]
    fn non_canonical_s_and_small_order_r_are_refused_before_the_batch() {
        let mut keys = TorsionFreeKeys::default();
        let mut v = signed(8);
        // S + L: the same scalar, a non-canonical encoding (malleability).
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s = [0u8; 32];
        s.copy_from_slice(&v[3].2 .0[32..]);
        let mut carry = 0u16;
        for i in 0..32 {
            let x = s[i] as u16 + l[i] as u16 + carry;
            s[i] = x as u8;
            carry = x >> 8;
        }
        v[3].2 .0[32..].copy_from_slice(&s);
        assert!(v[3].0.verify(&v[3].1, &v[3].2).is_err());
        assert!(verify_batch_strict(&items(&v), &mut keys).is_err());
        // A small-order R (the identity point's encoding).
        let mut w = signed(8);
        let mut id = [0u8; 32];
        id[0] = 1;
        w[2].2 .0[..32].copy_from_slice(&id);
        assert!(verify_batch_strict(&items(&w), &mut keys).is_err());
    }
}
