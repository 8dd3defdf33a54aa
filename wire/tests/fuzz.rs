//! Property tests for the signed-request headers (issue #8): arbitrary
//! headers and times never panic, and a valid signed request changed in any
//! byte is refused.

use custody_identity::KeyPair;
use custody_wire::signing::{
    sign_request, signing_input, verify_request, RequestAuthError, RequestParts,
};
use proptest::prelude::*;

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i; 32])
}

// ---- signed requests ------------------------------------------------------------------

/// Realistic broker clock (1970..2096), so `now - timestamp` is meaningful.
const MAX_NOW_MS: i64 = 4_000_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_headers_never_panic(
        did in prop::option::of(".{0,80}|did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{40,46}"),
        timestamp in prop::option::of(".{0,20}|[0-9]{0,20}"),
        nonce in prop::option::of(".{0,40}|[0-9a-fA-F]{30,34}"),
        signature in prop::option::of(".{0,100}|[A-Za-z0-9_-]{84,88}"),
        method in ".{0,8}",
        path in ".{0,30}",
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in 0..MAX_NOW_MS,
        skew in 0..MAX_NOW_MS,
    ) {
        let p = RequestParts {
            method: &method,
            path: &path,
            did: did.as_deref(),
            timestamp: timestamp.as_deref(),
            nonce: nonce.as_deref(),
            signature: signature.as_deref(),
            body: &body,
        };
        // Nothing here was signed by the DID's key.
        prop_assert!(verify_request(&p, now, skew).is_err());
    }

    /// A correctly signed request with a stale or future timestamp, or the
    /// largest 16-digit timestamp: refused, no overflow.
    #[test]
    fn request_times_never_panic(ts in prop_oneof![0i64..=9_999_999_999_999_999, Just(9_999_999_999_999_999)], now in 0..MAX_NOW_MS, skew in 0..MAX_NOW_MS) {
        let k = key(1);
        let nonce = "00112233445566778899aabbccddeeff";
        let sig = k.sign(&signing_input("POST", "/x", ts, nonce, b""));
        let did = k.did().to_string();
        let ts_text = ts.to_string();
        let sig_text = sig.to_base64url();
        let p = RequestParts {
            method: "POST", path: "/x", did: Some(&did), timestamp: Some(&ts_text),
            nonce: Some(nonce), signature: Some(&sig_text), body: b"",
        };
        match verify_request(&p, now, skew) {
            Ok((d, t, _)) => {
                prop_assert_eq!(d, k.did());
                prop_assert_eq!(t, ts);
                prop_assert!((now - ts).abs() <= skew);
            }
            Err(e) => prop_assert!(matches!(e, RequestAuthError::Stale(..)), "{}", e),
        }
    }

    /// Any single changed byte in any header, the method, the path or the
    /// body of a valid signed request makes it fail.
    #[test]
    fn any_changed_request_byte_is_refused(
        seed in any::<u8>(),
        method in "GET|POST|DELETE",
        path in "/v1/[a-z/]{0,20}(\\?[a-z=&0-9]{0,10})?",
        body in prop::collection::vec(any::<u8>(), 0..64),
        field in 0usize..7,
        pos in any::<usize>(),
        new in any::<u8>(),
    ) {
        let k = key(seed);
        let h = sign_request(&k, &method, &path, &body);
        let now = h.timestamp.parse::<i64>().unwrap();
        let mut fields: Vec<Vec<u8>> = vec![
            h.did.clone().into_bytes(),
            h.timestamp.clone().into_bytes(),
            h.nonce.clone().into_bytes(),
            h.signature.clone().into_bytes(),
            method.clone().into_bytes(),
            path.clone().into_bytes(),
            body.clone(),
        ];
        let ok = {
            let p = RequestParts {
                method: &method, path: &path, did: Some(&h.did), timestamp: Some(&h.timestamp),
                nonce: Some(&h.nonce), signature: Some(&h.signature), body: &body,
            };
            verify_request(&p, now, 60_000)
        };
        let (d, t, n) = ok.unwrap();
        prop_assert_eq!(d, k.did());
        prop_assert_eq!(t, now);
        prop_assert_eq!(hex::encode(n), h.nonce.clone());

        let f = &mut fields[field];
        if f.is_empty() {
            f.push(new);
        } else {
            let i = pos % f.len();
            if f[i] == new {
                return Ok(());
            }
            f[i] = new;
        }
        let text = |i: usize| String::from_utf8(fields[i].clone()).ok();
        let (Some(did), Some(ts), Some(nonce), Some(sig), Some(m), Some(pa)) =
            (text(0), text(1), text(2), text(3), text(4), text(5))
        else {
            return Ok(()); // HTTP header values reach us as &str
        };
        let p = RequestParts {
            method: &m, path: &pa, did: Some(&did), timestamp: Some(&ts),
            nonce: Some(&nonce), signature: Some(&sig), body: &fields[6],
        };
        prop_assert!(verify_request(&p, now, i64::from(u32::MAX)).is_err(), "field {} accepted", field);
    }
}
