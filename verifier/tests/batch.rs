//! Batch signature verification agrees with `verify_strict` on everything the
//! project's vectors and random signatures produce: valid signatures, any
//! changed byte, non-canonical `S` (S + L), all eight small-order points as
//! `R`, and keys with a torsion component. And through the whole verifier: a
//! bundle with one bad signature among thousands names exactly that entry.

use custody_identity::batch::{verify_batch_strict, BatchItem, TorsionFreeKeys};
use custody_identity::{KeyPair, PublicKey, Signature};
use proptest::prelude::*;

const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
];

/// The same points spelled non-canonically, which `CompressedEdwardsY`
/// still decompresses: x = 0 with the sign bit set (the identity, the point
/// of order 2), and y + p for y = 0 and y = 1, each sign bit.
const SMALL_ORDER_NON_CANONICAL: [&str; 6] = [
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// Every small-order encoding, canonical or not.
fn small_order_encodings() -> impl Iterator<Item = &'static str> {
    SMALL_ORDER.into_iter().chain(SMALL_ORDER_NON_CANONICAL)
}

/// The group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

struct Signed {
    key: PublicKey,
    msg: Vec<u8>,
    sig: Signature,
}

fn signed(seed: u8, msg: &[u8]) -> Signed {
    let k = KeyPair::from_seed(&[seed; 32]);
    Signed {
        key: k.public(),
        msg: msg.to_vec(),
        sig: k.sign(msg),
    }
}

fn strict_all(v: &[Signed]) -> bool {
    v.iter().all(|s| s.key.verify(&s.msg, &s.sig).is_ok())
}

fn batch_all(v: &[Signed]) -> bool {
    let items: Vec<BatchItem<'_>> = v
        .iter()
        .map(|s| BatchItem {
            key: &s.key,
            msg: &s.msg,
            sig: &s.sig,
        })
        .collect();
    verify_batch_strict(&items, &mut TorsionFreeKeys::default()).is_ok()
}

fn add_l(s: &mut [u8]) {
    let mut carry = 0u16;
    for i in 0..32 {
        let x = s[i] as u16 + L[i] as u16 + carry;
        s[i] = x as u8;
        carry = x >> 8;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random batches, with at most one signature tampered in one of the
    /// ways the project's vectors use: the batch accepts exactly when every
    /// signature verifies strictly.
    #[test]
    fn batch_accepts_exactly_what_verify_strict_accepts(
        n in 1usize..48,
        seeds in prop::collection::vec(1u8..250, 48),
        msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 48),
        tamper in prop::option::of((0usize..48, 0u8..5, any::<u8>())),
    ) {
        let mut v: Vec<Signed> = (0..n).map(|i| signed(seeds[i], &msgs[i])).collect();
        if let Some((at, how, b)) = tamper {
            let s = &mut v[at % n];
            match how {
                0 => { let i = b as usize % 64; s.sig.0[i] ^= 1 | b; }
                1 => { s.msg.push(b); }
                2 => add_l(&mut s.sig.0[32..]),
                3 => {
                    let all: Vec<&str> = small_order_encodings().collect();
                    let p = hex::decode(all[b as usize % all.len()]).unwrap();
                    s.sig.0[..32].copy_from_slice(&p);
                }
                _ => { s.key = KeyPair::from_seed(&[b.max(1); 32]).public(); }
            }
        }
        prop_assert_eq!(batch_all(&v), strict_all(&v));
    }
}

/// All eight small-order points as `R`, canonically encoded or not, with
/// `S` anything: refused by both, including the universal forgery
/// (R = identity, S = 0) that a non-strict verifier would accept for a
/// small-order key.
#[test]
fn small_order_r_is_refused_by_both() {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let base = signed(7, b"tool.call");
    for p in small_order_encodings() {
        let bytes: [u8; 32] = hex::decode(p).unwrap().try_into().unwrap();
        let point = CompressedEdwardsY(bytes).decompress().unwrap();
        assert!(point.is_small_order(), "{p}");
        for s_zero in [false, true] {
            let mut x = Signed {
                key: base.key,
                msg: base.msg.clone(),
                sig: base.sig,
            };
            x.sig.0[..32].copy_from_slice(&hex::decode(p).unwrap());
            if s_zero {
                x.sig.0[32..].fill(0);
            }
            let v = vec![x];
            assert!(!strict_all(&v) && !batch_all(&v), "{p}");
        }
    }
}

/// A key with a torsion component (a real key plus a point of order 2): the
/// holder's signature is refused by both (batch: the key is not torsion-free;
/// strict: `R` does not match `[s]B − [k]A`).
#[test]
fn a_key_with_a_torsion_component_is_refused_by_both() {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let k = KeyPair::from_seed(&[9; 32]);
    let a = CompressedEdwardsY(k.public().to_bytes())
        .decompress()
        .unwrap();
    // (0, -1) has order 2.
    let t = CompressedEdwardsY(
        hex::decode("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .decompress()
    .unwrap();
    let mixed = PublicKey::from_bytes(&(a + t).compress().to_bytes()).unwrap();
    let msg = b"tool.call".to_vec();
    let v = vec![Signed {
        key: mixed,
        sig: k.sign(&msg),
        msg,
    }];
    assert!(!strict_all(&v));
    assert!(!batch_all(&v));
}

/// Through the whole verifier: 3,000 entries (many batches on every core),
/// one signature bad — exactly that entry fails `signatures`.
#[test]
fn one_bad_signature_among_thousands_is_named() {
    use custody_ledger::actions;
    use custody_ledger::authority::TrustRoots;
    use custody_ledger::bundle::BundleWriter;
    use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
    use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
    use custody_ledger::{
        entry_hash, ActionType, ActorKind, Entry, EntryHash, Event, Seq, Timestamp,
    };

    let ledger = KeyPair::from_seed(&[1; 32]);
    let human = KeyPair::from_seed(&[2; 32]);
    let bad_at = 1777u64;
    let t = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(t.path()).unwrap();
    let mut range = CompactRange::new();
    let mut prev = EntryHash::ZERO;
    for n in 0..3000u64 {
        let signed = if n == 0 {
            let mut g = Event::new(
                ledger.did(),
                ActorKind::Service,
                ActionType::new(actions::GENESIS).unwrap(),
            );
            g.details = TrustRoots {
                admins: [human.did()].into(),
                delegators: [human.did()].into(),
                ..Default::default()
            }
            .to_details();
            g.sign(&ledger).unwrap()
        } else {
            let mut e = Event::new(
                human.did(),
                ActorKind::Human,
                ActionType::new("tool.call").unwrap(),
            );
            e.details.insert("i".into(), n.into());
            let mut s = e.sign(&human).unwrap();
            if n == bad_at {
                s.sig.0[40] ^= 0x10;
            }
            s
        };
        let at = Timestamp::from_unix_millis(1_800_000_000_000 + n as i128).unwrap();
        let entry = Entry::new(Seq(n), prev, at, signed);
        let line = entry.to_line().unwrap();
        prev = entry_hash(&line);
        range.push(Hash(prev.0));
        w.push_line(&line, |_| None).unwrap();
    }
    let origin = Origin::for_ledger(&ledger.did());
    let head = TreeHead {
        size: 3000,
        root: range.root(),
    };
    let cp =
        SignedCheckpoint::sign(&ledger, &origin, head, time::OffsetDateTime::now_utc()).unwrap();
    w.finish(
        &ledger.did(),
        origin.as_str(),
        &hash_to_hex(&range.root()),
        &[(3000, cp.to_bytes())],
    )
    .unwrap();
    let v = custody_verifier::verify_bundle(
        t.path(),
        &custody_verifier::VerifyOptions {
            ledger_key: Some(ledger.did()),
            ..Default::default()
        },
    )
    .unwrap();
    let sigs = v.checks.iter().find(|c| c.name == "signatures").unwrap();
    assert_eq!(sigs.failing_seqs(), vec![bad_at]);
    assert!(!v.valid);
    for c in v
        .checks
        .iter()
        .filter(|c| !["signatures", "authorization"].contains(&c.name))
    {
        assert!(c.ok, "{}: {:?}", c.name, c.failures);
    }
}
