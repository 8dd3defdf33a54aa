//! Compact JWS (RFC 7515) with EdDSA (RFC 8037), the lean way: no JOSE library,
//! no algorithm negotiation. The only algorithm is `EdDSA` over Ed25519 with
//! `verify_strict`; the signer is named by `kid`, a did:key verification method,
//! so the key comes from the DID itself and nothing is fetched.
//!
//! ```text
//! BASE64URL(JCS(header)) "." BASE64URL(JCS(payload)) "." BASE64URL(signature)
//! header = {"alg":"EdDSA","kid":"did:key:z6Mk…#z6Mk…","typ":"<typ>"}
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::{Did, IdentityError, KeyPair, Signature};

/// Credentials are small; a bigger JWS is refused before it is decoded.
pub const MAX_JWS_BYTES: usize = 64 * 1024;

/// A JWS whose signature checked out.
#[derive(Clone, Debug)]
pub struct Verified {
    pub header: Value,
    pub payload: Value,
    pub signer: Did,
}

fn bad(why: impl Into<String>) -> IdentityError {
    IdentityError::InvalidCredential(why.into())
}

fn canonical(v: &Value) -> Result<Vec<u8>, IdentityError> {
    serde_json_canonicalizer::to_vec(v).map_err(|e| bad(e.to_string()))
}

/// Signs `payload` as `key` with header `typ`.
pub fn sign_compact(key: &KeyPair, typ: &str, payload: &Value) -> Result<String, IdentityError> {
    let header = json!({"alg": "EdDSA", "kid": key.did().verification_method(), "typ": typ});
    let h = URL_SAFE_NO_PAD.encode(canonical(&header)?);
    let p = URL_SAFE_NO_PAD.encode(canonical(payload)?);
    let signing_input = format!("{h}.{p}");
    let sig = key.sign(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", sig.to_base64url()))
}

/// Verifies a compact JWS of type `expected_typ`.
pub fn verify_compact(jws: &str, expected_typ: &str) -> Result<Verified, IdentityError> {
    if jws.len() > MAX_JWS_BYTES {
        return Err(bad(format!("JWS longer than {MAX_JWS_BYTES} bytes")));
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("a compact JWS has exactly three parts"));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| bad(format!("JWS {what} is not unpadded base64url")))
    };
    let header: Value =
        serde_json::from_slice(&decode(h, "header")?).map_err(|_| bad("JWS header is not JSON"))?;
    let hobj = header
        .as_object()
        .ok_or_else(|| bad("JWS header is not an object"))?;
    if hobj.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err(bad("JWS alg must be EdDSA"));
    }
    for k in hobj.keys() {
        if !["alg", "kid", "typ"].contains(&k.as_str()) {
            // crit, jwk, jku, x5u, … would change how the JWS is processed.
            return Err(bad(format!("JWS header member {k:?} is not accepted")));
        }
    }
    if hobj.get("typ").and_then(Value::as_str) != Some(expected_typ) {
        return Err(bad(format!("JWS typ must be {expected_typ:?}")));
    }
    let kid = hobj
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("JWS header needs a kid (did:key verification method)"))?;
    let (did_text, fragment) = kid
        .split_once('#')
        .ok_or_else(|| bad("JWS kid must be <did>#<multibase>"))?;
    let signer = Did::parse(did_text)?;
    if fragment != signer.multibase() {
        return Err(bad("JWS kid fragment does not match its DID"));
    }
    let sig = Signature::from_slice(&decode(s, "signature")?)?;
    signer
        .public_key()
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| bad("JWS signature does not verify"))?;
    let payload: Value = serde_json::from_slice(&decode(p, "payload")?)
        .map_err(|_| bad("JWS payload is not JSON"))?;
    Ok(Verified {
        header,
        payload,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_every_byte_matters() {
        let k = KeyPair::generate();
        let jws = sign_compact(&k, "t", &json!({"a": 1})).unwrap();
        let v = verify_compact(&jws, "t").unwrap();
        assert_eq!(v.signer, k.did());
        assert_eq!(v.payload, json!({"a": 1}));
        assert!(verify_compact(&jws, "other").is_err());
        let bytes = jws.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20] {
                let mut b = bytes.to_vec();
                b[i] ^= flip;
                if let Ok(s) = String::from_utf8(b) {
                    if s != jws {
                        assert!(verify_compact(&s, "t").is_err(), "byte {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn other_algorithms_refused() {
        let k = KeyPair::generate();
        let jws = sign_compact(&k, "t", &json!({})).unwrap();
        let rest = jws.split_once('.').unwrap().1;
        for alg in ["none", "HS256", "ES256"] {
            let h = URL_SAFE_NO_PAD.encode(
                json!({"alg": alg, "kid": k.did().verification_method(), "typ": "t"}).to_string(),
            );
            assert!(verify_compact(&format!("{h}.{rest}"), "t").is_err());
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = verify_compact(&s, "t");
        }

        #[test]
        fn never_panics_on_dotted(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,80}", c in "[A-Za-z0-9_-]{0,90}") {
            let _ = verify_compact(&format!("{a}.{b}.{c}"), "t");
        }
    }
}
