//! Property tests for every parser in custody-identity that takes outside
//! input (issue #8): DIDs, public keys, signatures, compact JWS, delegation and
//! revocation credentials, key files.
//!
//! Two kinds of property: arbitrary input never panics (and, where a parser
//! accepts, what it accepted is the one canonical form), and valid values
//! round-trip while any single changed byte of a valid token is rejected.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custody_identity::delegation::{format_time, DELEGATION_TYP};
use custody_identity::jws::{sign_compact, verify_compact};
use custody_identity::revocation::REVOCATION_TYP;
use custody_identity::{Delegation, Did, KeyPair, PublicKey, Revocation, Signature};
use proptest::prelude::*;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const B58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(&[seed; 32])
}

/// Replaces byte `pos % len` with `new` (if that changes it) and returns the
/// result when it is still UTF-8 — the token parsers take `&str`, so a
/// non-UTF-8 change cannot even reach them.
fn change_byte(token: &str, pos: usize, new: u8) -> Option<String> {
    let mut b = token.as_bytes().to_vec();
    let i = pos % b.len();
    if b[i] == new {
        return None;
    }
    b[i] = new;
    String::from_utf8(b).ok()
}

/// Arbitrary JSON, biased towards the shapes credentials have.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        rfc3339().prop_map(Value::from),
        Just(Value::from(
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        )),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// RFC 3339 date-times, including the edges of what `time` can represent
/// (years 0000 and 9999, large offsets, leap seconds, fractions).
fn rfc3339() -> impl Strategy<Value = String> {
    // The first and last days `time` represents are drawn often: converting
    // them to another offset is where an out-of-range date appears.
    let date = prop_oneof![
        2 => Just((0u32, 1u32, 1u32)),
        2 => Just((9999, 12, 31)),
        4 => (
            prop_oneof![Just(0u32), Just(1), 1970u32..2100, Just(9998), Just(9999)],
            1u32..=12,
            1u32..=31,
        ),
    ];
    (
        date,
        0u32..=23,
        0u32..=59,
        prop_oneof![0u32..=59, Just(60)],
        prop_oneof![Just(String::new()), "\\.[0-9]{1,9}"],
        prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            (any::<bool>(), 0u32..=23, 0u32..=59)
                .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ],
    )
        .prop_map(|((y, mo, d), h, mi, s, frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

/// A delegation payload with every member drawn from valid and invalid values.
fn delegation_payload(issuer: &Did, session: &Did) -> impl Strategy<Value = Value> {
    let issuer = issuer.to_string();
    let session = session.to_string();
    (
        prop_oneof![
            3 => Just(json!(["https://www.w3.org/ns/credentials/v2"])),
            1 => json_value(),
        ],
        prop_oneof![
            3 => Just(json!(["VerifiableCredential", "CustodyDelegation"])),
            1 => json_value(),
        ],
        prop_oneof![3 => Just(json!("urn:uuid:1")), 1 => json_value()],
        prop_oneof![3 => Just(json!(issuer)), 1 => json_value()],
        prop_oneof![3 => Just(json!(session)), 1 => json_value()],
        prop_oneof![
            3 => prop::collection::vec("[a-z0-9][a-z0-9._:-]{0,8}", 0..4).prop_map(Value::from),
            1 => json_value(),
        ],
        prop_oneof![3 => "[!-~]{1,10}".prop_map(Value::from), 1 => json_value()],
        prop_oneof![4 => rfc3339().prop_map(Value::from), 1 => json_value()],
        prop_oneof![4 => rfc3339().prop_map(Value::from), 1 => json_value()],
    )
        .prop_map(|(ctx, ty, id, iss, sub, scopes, label, from, until)| {
            json!({
                "@context": ctx,
                "type": ty,
                "id": id,
                "issuer": iss,
                "validFrom": from,
                "validUntil": until,
                "credentialSubject": {
                    "id": sub,
                    "agent": label,
                    "scopes": scopes,
                    "context": label,
                }
            })
        })
}

/// Whole seconds between 1970 and ~2255, as a UTC date-time.
fn utc_time() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..9_000_000_000).prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
}

/// Any instant `time` can represent (years -9999..=9999).
fn any_time() -> impl Strategy<Value = OffsetDateTime> {
    (-377_705_116_800i64..253_402_300_799)
        .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // ---- DIDs -----------------------------------------------------------------

    #[test]
    fn did_parse_never_panics(s in ".{0,160}") {
        if let Ok(d) = Did::parse(&s) {
            prop_assert_eq!(d.as_str(), s.as_str());
        }
    }

    #[test]
    fn did_parse_base58_never_panics(body in "[1-9A-HJ-NP-Za-km-z]{0,60}", prefix in prop_oneof![
        Just("did:key:z"), Just("did:key:z6Mk"), Just("did:key:"), Just("did:key:z6M")
    ]) {
        let s = format!("{prefix}{body}");
        if let Ok(d) = Did::parse(&s) {
            // The one encoding of the key: what parsed prints back identically.
            prop_assert_eq!(d.as_str(), s.as_str());
            prop_assert_eq!(Did::from_public_key(&d.public_key()), d.clone());
            prop_assert!(d.as_str().starts_with("did:key:z6Mk"));
        }
    }

    #[test]
    fn did_round_trips(seed in any::<[u8; 32]>()) {
        let k = KeyPair::from_seed(&seed);
        let d = k.did();
        let back = Did::parse(d.as_str()).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(back.public_key(), k.public());
        let doc = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Did>(&doc).unwrap(), d);
    }

    #[test]
    fn did_any_changed_char_is_another_did_or_rejected(seed in any::<[u8; 32]>(), pos in any::<usize>(), c in 0usize..58) {
        let d = KeyPair::from_seed(&seed).did();
        let s = d.as_str();
        let i = pos % s.len();
        let mut b = s.as_bytes().to_vec();
        b[i] = B58.as_bytes()[c];
        let t = String::from_utf8(b).unwrap();
        match Did::parse(&t) {
            Ok(other) => {
                prop_assert_eq!(other.as_str(), t.as_str());
                if t != s {
                    prop_assert_ne!(other.public_key(), d.public_key());
                }
            }
            Err(_) => prop_assert_ne!(t.as_str(), s),
        }
    }

    #[test]
    fn did_from_json_never_panics(v in json_value()) {
        let _ = serde_json::from_value::<Did>(v);
    }

    // ---- keys and signatures --------------------------------------------------

    #[test]
    fn public_key_from_bytes_never_panics(b in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(k) = PublicKey::from_bytes(&b) {
            prop_assert_eq!(b.len(), 32);
            prop_assert_eq!(&k.to_bytes()[..], &b[..]);
            let d = Did::from_public_key(&k);
            prop_assert_eq!(Did::parse(d.as_str()).unwrap().public_key(), k);
        }
    }

    #[test]
    fn public_key_32_bytes_never_panics(b in any::<[u8; 32]>(), msg in prop::collection::vec(any::<u8>(), 0..64), sig in any::<[u8; 32]>()) {
        if let Ok(k) = PublicKey::from_bytes(&b) {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&sig);
            s[32..].copy_from_slice(&sig);
            // A random signature for a random key does not verify.
            prop_assert!(k.verify(&msg, &Signature(s)).is_err());
        }
    }

    #[test]
    fn signature_from_base64url_never_panics(s in ".{0,120}") {
        if let Ok(sig) = Signature::from_base64url(&s) {
            prop_assert_eq!(sig.to_base64url(), s);
        }
    }

    #[test]
    fn signature_from_base64url_alphabet(s in "[A-Za-z0-9_=+/-]{84,88}") {
        if let Ok(sig) = Signature::from_base64url(&s) {
            // One text form per signature: no padding, no trailing bits.
            prop_assert_eq!(sig.to_base64url(), s);
        }
    }

    #[test]
    fn signature_round_trips(b in prop::collection::vec(any::<u8>(), 64..=64)) {
        let sig = Signature::from_slice(&b).unwrap();
        prop_assert_eq!(Signature::from_base64url(&sig.to_base64url()).unwrap(), sig);
        let j = serde_json::to_string(&sig).unwrap();
        prop_assert_eq!(serde_json::from_str::<Signature>(&j).unwrap(), sig);
    }

    #[test]
    fn signature_from_slice_never_panics(b in prop::collection::vec(any::<u8>(), 0..130)) {
        prop_assert_eq!(Signature::from_slice(&b).is_ok(), b.len() == 64);
    }

    #[test]
    fn any_changed_message_or_signature_byte_fails(seed in any::<u8>(), msg in prop::collection::vec(any::<u8>(), 1..100), pos in any::<usize>(), x in 1u8..=255) {
        let k = key(seed);
        let sig = k.sign(&msg);
        prop_assert!(k.public().verify(&msg, &sig).is_ok());
        let mut m = msg.clone();
        let i = pos % m.len();
        m[i] ^= x;
        prop_assert!(k.public().verify(&m, &sig).is_err());
        let mut s = sig;
        s.0[pos % 64] ^= x;
        prop_assert!(k.public().verify(&msg, &s).is_err());
    }

    // ---- compact JWS ----------------------------------------------------------

    #[test]
    fn jws_never_panics(s in ".{0,400}", typ in ".{0,12}") {
        let _ = verify_compact(&s, &typ);
    }

    #[test]
    fn jws_dotted_never_panics(
        parts in prop::collection::vec("[A-Za-z0-9_=-]{0,120}", 0..5),
    ) {
        let _ = verify_compact(&parts.join("."), "t");
    }

    #[test]
    fn jws_arbitrary_header_and_payload_never_panic(header in json_value(), payload in json_value(), sig in prop::collection::vec(any::<u8>(), 0..70)) {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        let s = URL_SAFE_NO_PAD.encode(&sig);
        let token = format!("{h}.{p}.{s}");
        prop_assert!(verify_compact(&token, "t").is_err());
    }

    #[test]
    fn jws_round_trips(seed in any::<u8>(), payload in json_value(), typ in "[!-~]{1,20}") {
        let k = key(seed);
        let jws = sign_compact(&k, &typ, &payload).unwrap();
        let v = verify_compact(&jws, &typ).unwrap();
        prop_assert_eq!(v.signer, k.did());
        // The payload is JCS; parsing it back gives the same JSON (numbers
        // compare as JSON numbers: JCS writes them as IEEE doubles).
        let again = serde_json_canonicalizer::to_vec(&v.payload).unwrap();
        prop_assert_eq!(again, serde_json_canonicalizer::to_vec(&payload).unwrap());
        let other = format!("{typ}x");
        prop_assert!(verify_compact(&jws, &other).is_err());
    }

    #[test]
    fn jws_any_changed_byte_is_rejected(seed in any::<u8>(), payload in json_value(), pos in any::<usize>(), new in any::<u8>()) {
        let k = key(seed);
        let jws = sign_compact(&k, "t", &payload).unwrap();
        if let Some(bad) = change_byte(&jws, pos, new) {
            prop_assert!(verify_compact(&bad, "t").is_err(), "accepted {}", bad);
        }
    }

    // ---- delegations ----------------------------------------------------------

    #[test]
    fn delegation_verify_never_panics(s in ".{0,300}") {
        prop_assert!(Delegation::verify(&s).is_err());
    }

    /// Correctly signed JWS (so parsing reaches every member) with arbitrary
    /// members: verify, and whatever it accepts must be usable without a panic.
    #[test]
    fn delegation_signed_arbitrary_payload_never_panics(
        payload in delegation_payload(&key(1).did(), &key(2).did()),
        at in any_time(),
        signer in prop_oneof![Just(1u8), Just(2u8)],
    ) {
        let jws = sign_compact(&key(signer), DELEGATION_TYP, &payload).unwrap();
        if let Ok(d) = Delegation::verify(&jws) {
            prop_assert_eq!(&d.issuer, &key(signer).did());
            prop_assert!(d.not_before < d.not_after);
            // Verified times are UTC, so later conversions cannot overflow.
            prop_assert!(d.not_before.offset().is_utc() && d.not_after.offset().is_utc());
            let _ = d.is_valid_at(at);
            let _ = format_time(d.not_before);
            let _ = format_time(d.not_after);
            let _ = d.allows_scope("x");
        }
    }

    #[test]
    fn delegation_round_trips(
        scopes in prop::collection::vec("[a-z0-9][a-z0-9._:-]{0,20}", 0..5),
        agent in "[!-~]{1,64}",
        context in "[!-~]{1,64}",
        from in utc_time(),
        len in 1i64..10_000_000,
    ) {
        let (h, s) = (key(1), key(2));
        let until = from + time::Duration::seconds(len);
        let d = Delegation::new(h.did(), s.did(), agent, scopes, context, from, until).unwrap();
        let jws = d.issue(&h).unwrap();
        let back = Delegation::verify(&jws).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert!(back.is_valid_at(from).is_ok());
        prop_assert!(back.is_valid_at(until).is_err());
        prop_assert!(back.is_valid_at(from - time::Duration::seconds(1)).is_err());
        // Only the issuer can issue it.
        prop_assert!(d.issue(&s).is_err());
    }

    #[test]
    fn delegation_any_changed_byte_is_rejected(
        scopes in prop::collection::vec("[a-z0-9]{1,8}", 0..3),
        from in utc_time(),
        pos in any::<usize>(),
        new in any::<u8>(),
    ) {
        let (h, s) = (key(1), key(2));
        let d = Delegation::new(h.did(), s.did(), "claude-code".into(), scopes, "ci".into(), from, from + time::Duration::hours(1)).unwrap();
        let jws = d.issue(&h).unwrap();
        if let Some(bad) = change_byte(&jws, pos, new) {
            prop_assert!(Delegation::verify(&bad).is_err(), "accepted {}", bad);
        }
    }

    // ---- revocations ----------------------------------------------------------

    #[test]
    fn revocation_verify_never_panics(s in ".{0,300}") {
        prop_assert!(Revocation::verify(&s).is_err());
    }

    #[test]
    fn revocation_signed_arbitrary_payload_never_panics(
        ty in prop_oneof![3 => Just(json!("CustodyRevocation")), 1 => json_value()],
        issuer in prop_oneof![3 => Just(json!(key(1).did().to_string())), 1 => json_value()],
        subject in prop_oneof![3 => Just(json!(key(2).did().to_string())), 1 => json_value()],
        reason in prop_oneof![3 => ".{0,40}".prop_map(Value::from), 1 => json_value()],
        effective in prop_oneof![4 => rfc3339().prop_map(Value::from), 1 => json_value()],
    ) {
        let payload = json!({"type": ty, "issuer": issuer, "subject": subject, "reason": reason, "effective_at": effective});
        let jws = sign_compact(&key(1), REVOCATION_TYP, &payload).unwrap();
        if let Ok(r) = Revocation::verify(&jws) {
            prop_assert_eq!(&r.issuer, &key(1).did());
            prop_assert!(r.effective_at.offset().is_utc());
            let _ = format_time(r.effective_at);
        }
    }

    #[test]
    fn revocation_round_trips_and_any_changed_byte_is_rejected(
        reason in "[^\\p{Cc}]{0,60}",
        at in utc_time(),
        pos in any::<usize>(),
        new in any::<u8>(),
    ) {
        let (admin, agent) = (key(3), key(4));
        let r = Revocation::new(admin.did(), agent.did(), reason, at).unwrap();
        let jws = r.issue(&admin).unwrap();
        prop_assert_eq!(Revocation::verify(&jws).unwrap(), r);
        if let Some(bad) = change_byte(&jws, pos, new) {
            prop_assert!(Revocation::verify(&bad).is_err(), "accepted {}", bad);
        }
    }

    // ---- time helpers used on credential fields --------------------------------

    #[test]
    fn format_time_never_panics(t in rfc3339()) {
        if let Ok(t) = OffsetDateTime::parse(&t, &Rfc3339) {
            let _ = format_time(t);
        }
    }
}

/// Found by `revocation_signed_arbitrary_payload_never_panics`: a correctly
/// signed credential whose time lies in year 9999 at a negative offset is in
/// year 10000 in UTC, which `time` cannot represent; converting it to UTC
/// (`format_time`, the ledger's `Timestamp::from_datetime`) panicked. Verify
/// now refuses such times.
#[test]
fn times_beyond_year_9999_in_utc_are_refused() {
    let (admin, agent) = (key(1), key(2));
    let late = "9999-12-31T00:12:00-23:48";
    let rev = sign_compact(
        &admin,
        REVOCATION_TYP,
        &json!({"type": "CustodyRevocation", "issuer": admin.did().to_string(),
                "subject": agent.did().to_string(), "reason": "", "effective_at": late}),
    )
    .unwrap();
    assert!(Revocation::verify(&rev).is_err());
    let del = sign_compact(
        &admin,
        DELEGATION_TYP,
        &json!({"@context": ["https://www.w3.org/ns/credentials/v2"],
                "type": ["VerifiableCredential", "CustodyDelegation"],
                "id": "urn:uuid:1", "issuer": admin.did().to_string(),
                "validFrom": "9999-12-31T00:00:00-23:00", "validUntil": late,
                "credentialSubject": {"id": agent.did().to_string(), "agent": "a",
                                      "scopes": [], "context": "ci"}}),
    )
    .unwrap();
    assert!(Delegation::verify(&del).is_err());
    // A representable instant in another spelling is refused too: credential
    // times take the one form format_time writes (FORMAT.md §8.1).
    let revocation_at = |at: &str| {
        sign_compact(
            &admin,
            REVOCATION_TYP,
            &json!({"type": "CustodyRevocation", "issuer": admin.did().to_string(),
                    "subject": agent.did().to_string(), "reason": "", "effective_at": at}),
        )
        .unwrap()
    };
    assert!(Revocation::verify(&revocation_at("9999-12-31T22:00:00-01:00")).is_err());
    let r = Revocation::verify(&revocation_at("9999-12-31T23:00:00Z")).unwrap();
    assert_eq!(format_time(r.effective_at), "9999-12-31T23:00:00Z");
}

// ---- key files ------------------------------------------------------------------

#[cfg(unix)]
fn write_0600(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(unix)]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn key_file_load_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.key");
        write_0600(&p, &bytes);
        let _ = KeyPair::load(&p);
    }

    #[test]
    fn key_file_changed_byte_never_loads_another_key(seed in any::<[u8; 32]>(), pos in any::<usize>(), new in any::<u8>()) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.key");
        let k = KeyPair::from_seed(&seed);
        k.save(&p).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        prop_assert_eq!(KeyPair::load(&p).unwrap().did(), k.did());
        let i = pos % bytes.len();
        bytes[i] = new;
        write_0600(&p, &bytes);
        // Either refused, or (a change the JSON parser ignores) the same key:
        // the file's DID must match its seed.
        if let Ok(other) = KeyPair::load(&p) {
            prop_assert_eq!(other.did(), k.did());
        }
    }
}
