//! Batch verification of Ed25519 signatures, for the offline verifier's
//! throughput, with the strict per-signature rules kept where they can be
//! kept cheaply.
//!
//! [`verify_batch_strict`] checks many signatures with one random linear
//! combination (`ed25519_dalek::verify_batch`): in batches of 256, about a
//! third of the work of verifying each. It first applies the strict
//! pre-checks that `verify_strict` applies ([`prechecks`]) — `S` canonical
//! (`S < L`), `R` canonically encoded and not of small order (compared as
//! bytes with the small-order encodings, so `R` is decompressed once, by the
//! batch), the key not of small order (refused when the DID is parsed) — and
//! refuses keys with a torsion component (checked once per key:
//! [`TorsionFreeKeys`]).
//!
//! What can still differ from `verify_strict` (FORMAT.md §2.2, SECURITY.md):
//! a signature whose `R` has a torsion component *and* whose prime-order part
//! satisfies the verification equation. `verify_strict` refuses it (it
//! compares `R` byte for byte with `[s]B − [k]A`); the batch equation, which
//! is not multiplied by the cofactor, accepts it when the batch's coefficient
//! for it is a multiple of the torsion's order (2, 4 or 8) — derived from the
//! batch's contents, so deterministic for a given batch. Producing such a
//! signature needs the private key (the prime-order part must verify, and `k`
//! depends on the altered `R`), so it can never make one identity's entry
//! pass as another's: only a key's holder can make its own signature verify
//! under one rule and not the other. The broker checks every event with
//! `verify_strict` before appending, so no ledger it built holds such a
//! signature; a caller that needs the strict verdict for a signature the
//! batch accepted can call [`crate::PublicKey::verify`].

use std::collections::HashSet;

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

/// The y-coordinates (little-endian, sign bit clear) of the eight points of
/// small order: the identity (y = 1), the point of order 2 (y = −1), the two
/// of order 4 (y = 0) and the four of order 8 (y = ±c). Every encoding of a
/// small-order point with a canonical y (y < p) is one of these, with either
/// sign bit (libsodium's `has_small_order` list, whose two further entries
/// p and p + 1 are the non-canonical spellings of 0 and 1, refused here as
/// non-canonical). The tests derive the list again by decompressing.
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [
        0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [0; 32],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
];

/// Whether the 32-byte encoding `r` has a canonical y (y < p = 2^255 − 19;
/// the sign bit is not part of y).
fn canonical_y(r: &[u8; 32]) -> bool {
    // y ≥ p only when y is p + k for k < 19: bytes 1..31 all 0xff, the top
    // byte 0x7f without the sign bit, and the low byte at least 0xed.
    let high_all_ones = r[1..31].iter().all(|b| *b == 0xff) && r[31] & 0x7f == 0x7f;
    !(high_all_ones && r[0] >= 0xed)
}

/// Whether the encoding `r` (canonical y) is one of a small-order point.
fn small_order_encoding(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

/// The per-signature pre-checks of `verify_strict` that the batch equation
/// does not make, by comparing bytes (the batch decompresses `R` itself):
/// `S` canonical (`S < L`), `R` canonically encoded and not of small order.
/// `verify_strict` refuses all of these too: a non-canonical `R` can never
/// equal the encoding of `[s]B − [k]A` it compares with.
fn strict_shape(sig: &Signature) -> bool {
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&sig.0[..32]);
    s.copy_from_slice(&sig.0[32..]);
    Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).is_some()
        && canonical_y(&r)
        && !small_order_encoding(&r)
}

/// Whether `item` passes the strict pre-checks ([`strict_shape`], and its key
/// free of torsion). An item that fails them cannot be part of a batch that
/// verifies: a caller can check it with `verify_strict` on its own and keep
/// it out of the batch, so the other signatures are still checked together.
pub fn prechecks(item: &BatchItem<'_>, keys: &mut TorsionFreeKeys) -> bool {
    strict_shape(item.sig) && keys.check(item.key)
}

/// Verifies every item at once. `Err` when any signature fails (a pre-check
/// or the batch equation); the caller then checks the items one by one
/// (`PublicKey::verify`) to name the failing ones.
pub fn verify_batch_strict(
    items: &[BatchItem<'_>],
    keys: &mut TorsionFreeKeys,
) -> Result<(), IdentityError> {
    if !items.iter().all(|i| prechecks(i, keys)) {
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

    /// What `verify_strict` requires of `R`'s encoding: it decompresses, is
    /// not of small order, and is the canonical encoding of its point (it is
    /// compared byte for byte with the canonical `[s]B − [k]A`).
    fn strict_accepts_r(r: &[u8; 32]) -> bool {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        CompressedEdwardsY(*r)
            .decompress()
            .is_some_and(|p| !p.is_small_order() && p.compress().to_bytes() == *r)
    }

    /// What the byte pre-checks plus the batch (which decompresses `R`)
    /// require of `R`'s encoding.
    fn batch_accepts_r(r: &[u8; 32]) -> bool {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        canonical_y(r) && !small_order_encoding(r) && CompressedEdwardsY(*r).decompress().is_some()
    }

    /// Every encoding that can decompress to a point of small order: the
    /// eight points' canonical encodings, each with either sign bit, and
    /// with y + p where that still fits in 255 bits (y < 19).
    fn small_order_candidates() -> Vec<[u8; 32]> {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut out = Vec::new();
        for t in EIGHT_TORSION {
            let c = t.compress().to_bytes();
            for sign in [0u8, 0x80] {
                let mut e = c;
                e[31] = (e[31] & 0x7f) | sign;
                out.push(e);
                let y_small = e[1..31].iter().all(|b| *b == 0) && e[31] & 0x7f == 0 && e[0] < 19;
                if y_small {
                    // y + p = y + 2^255 − 19: low byte y + 0xed, then all ones.
                    let mut f = [0xffu8; 32];
                    f[0] = e[0] + 0xed;
                    f[31] = 0x7f | sign;
                    out.push(f);
                }
            }
        }
        // The two points of order 4 differ only in x's sign: each spelling
        // appears twice.
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn the_small_order_list_is_exactly_the_small_order_encodings() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let candidates = small_order_candidates();
        // Five y values (1, −1, 0, ±c) × 2 sign bits, plus y + p for y = 0
        // and y = 1 × 2 sign bits: libsodium's seven, each with either sign.
        assert_eq!(candidates.len(), 14);
        for e in &candidates {
            let p = CompressedEdwardsY(*e).decompress().expect("decompresses");
            assert!(p.is_small_order(), "{e:02x?}");
            // Refused by the byte checks, as by verify_strict.
            assert!(!batch_accepts_r(e) && !strict_accepts_r(e), "{e:02x?}");
            // On the list exactly when its y is canonical.
            assert_eq!(small_order_encoding(e), canonical_y(e), "{e:02x?}");
        }
        // Each listed y is a small-order point's, with either sign bit.
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut e = y;
                e[31] |= sign;
                assert!(candidates.contains(&e), "{e:02x?}");
            }
        }
        // Every non-canonical y (p ..= 2^255 − 1), either sign bit: refused
        // by both, whether or not it decompresses.
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut e = [0xffu8; 32];
                e[0] = low;
                e[31] = 0x7f | sign;
                assert!(!canonical_y(&e));
                assert!(!batch_accepts_r(&e) && !strict_accepts_r(&e), "{e:02x?}");
            }
        }
    }

    #[test]
    fn r_checks_agree_with_verify_strict_on_random_and_edge_encodings() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use rand_core::{OsRng, RngCore};
        // R of real signatures: accepted by both.
        for (k, m, sig) in signed(2000) {
            let mut r = [0u8; 32];
            r.copy_from_slice(&sig.0[..32]);
            assert!(batch_accepts_r(&r) && strict_accepts_r(&r));
            assert!(strict_shape(&sig));
            k.verify(&m, &sig).unwrap();
        }
        // Random 32-byte strings (about half decompress), small y values and
        // points with a torsion component: the byte checks plus
        // decompression decide exactly as verify_strict's checks on R.
        let mut encodings: Vec<[u8; 32]> = (0..5000)
            .map(|_| {
                let mut e = [0u8; 32];
                OsRng.fill_bytes(&mut e);
                e
            })
            .collect();
        for y in 0u8..=40 {
            for sign in [0u8, 0x80] {
                let mut e = [0u8; 32];
                e[0] = y;
                e[31] = sign;
                encodings.push(e);
            }
        }
        let t8 = curve25519_dalek::constants::EIGHT_TORSION;
        for (i, (_, _, sig)) in signed(64).into_iter().enumerate() {
            let mut r = [0u8; 32];
            r.copy_from_slice(&sig.0[..32]);
            let p = CompressedEdwardsY(r).decompress().unwrap();
            encodings.push((p + t8[i % 8]).compress().to_bytes());
        }
        for e in &encodings {
            assert_eq!(batch_accepts_r(e), strict_accepts_r(e), "{e:02x?}");
        }
    }

    /// The one difference FORMAT.md §2.2 writes down, made on purpose: the
    /// key's holder signs with `R = [r]B + T` (T of small order) and
    /// `S = r + k·a`, so the prime-order part verifies. `verify_strict`
    /// refuses every such signature; the batch equation accepts it in some
    /// batches (when the batch's coefficient for it cancels T) and not in
    /// others. Nobody without the secret scalar `a` can make one.
    #[test]
    fn a_torsioned_r_from_the_key_holder_is_the_one_difference() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
        use rand_core::{OsRng, RngCore};
        use sha2::{Digest, Sha512};
        let seed = [42u8; 32];
        let k = KeyPair::from_seed(&seed);
        // RFC 8032 §5.1.5: the secret scalar is the clamped first half of SHA-512(seed).
        let h = Sha512::digest(seed);
        let mut a_bytes = [0u8; 32];
        a_bytes.copy_from_slice(&h[..32]);
        a_bytes[0] &= 248;
        a_bytes[31] &= 127;
        a_bytes[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a_bytes);
        assert_eq!((B * a).compress().to_bytes(), k.public().to_bytes());
        let forge = |msg: &[u8], t: usize| {
            let mut wide = [0u8; 64];
            OsRng.fill_bytes(&mut wide);
            let r = Scalar::from_bytes_mod_order_wide(&wide);
            let big_r = (B * r + EIGHT_TORSION[t]).compress().to_bytes();
            let mut hram = Sha512::new();
            hram.update(big_r);
            hram.update(k.public().to_bytes());
            hram.update(msg);
            let c = Scalar::from_bytes_mod_order_wide(&hram.finalize().into());
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&big_r);
            sig[32..].copy_from_slice((r + c * a).as_bytes());
            Signature(sig)
        };
        let pk = k.public();
        let mut keys = TorsionFreeKeys::default();
        // T = identity: an ordinary signature, accepted by both.
        let ok = forge(b"m", 0);
        pk.verify(b"m", &ok).unwrap();
        // T of order 2, 4 and 8: strict refuses each; the batch (this
        // signature among ordinary ones) accepts some batches, not all.
        for t in [4usize, 2, 1] {
            let mut accepted = 0;
            let tries = 200;
            for i in 0..tries {
                let msg = format!("tool.call {i}").into_bytes();
                let sig = forge(&msg, t);
                assert!(pk.verify(&msg, &sig).is_err());
                assert!(strict_shape(&sig), "R is canonical and not of small order");
                let mut v = signed(3);
                v.push((pk, msg, sig));
                accepted += verify_batch_strict(&items(&v), &mut keys).is_ok() as usize;
            }
            assert!(
                accepted > 0 && accepted < tries,
                "T {t}: {accepted}/{tries}"
            );
        }
    }
}
