//! Compact JWS (RFC 7515) with EdDSA (RFC 8037), the lean way: no JOSE library,
//! no algorithm negotiation. The only algorithm is `EdDSA` over Ed25519 with
//! `verify_strict`; the signer is named by `kid`, a did:key verification method,
//! so the key comes from the DID itself and nothing is fetched.
//!
//! ```text
//! BASE64URL(JCS(header)) "." BASE64URL(JCS(payload)) "." BASE64URL(signature)
//! header = {"alg":"EdDSA","kid":"did:key:z6Mk…#z6Mk…","typ":"<typ>"}
//! ```
//!
//! The header is closed: exactly those three members (FORMAT.md §8.1). No
//! object in the header or the payload may name a member twice.

use std::collections::HashSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
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

/// The protected header. Closed and all required: `crit`, `jwk`, `jku`,
/// `x5u`, `b64`, … would each change how the JWS is processed, and serde's
/// derive also refuses a member given twice, which JSON parsers resolve
/// differently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// Fails on any JSON object, at any depth, that names a member twice:
/// serde_json's `Value` would keep the last silently, another verifier
/// might keep the first, and the credential would say two things.
struct UniqueMembers;

impl<'de> Deserialize<'de> for UniqueMembers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueMembersVisitor)
    }
}

struct UniqueMembersVisitor;

impl<'de> Visitor<'de> for UniqueMembersVisitor {
    type Value = UniqueMembers;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_unit<E>(self) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueMembers, A::Error> {
        while seq.next_element::<UniqueMembers>()?.is_some() {}
        Ok(UniqueMembers)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMembers, A::Error> {
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            map.next_value::<UniqueMembers>()?;
            if !seen.insert(name) {
                return Err(A::Error::custom("an object names a member twice"));
            }
        }
        Ok(UniqueMembers)
    }
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
    let header: Header = serde_json::from_slice(&decode(h, "header")?).map_err(|e| {
        bad(format!(
            "JWS header must be a JSON object of exactly alg, kid and typ, each a string once: {e}"
        ))
    })?;
    if header.alg != "EdDSA" {
        return Err(bad("JWS alg must be EdDSA"));
    }
    if header.typ != expected_typ {
        return Err(bad(format!("JWS typ must be {expected_typ:?}")));
    }
    let kid = header.kid.as_str();
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
    let payload_bytes = decode(p, "payload")?;
    serde_json::from_slice::<UniqueMembers>(&payload_bytes)
        .map_err(|e| bad(format!("JWS payload: {e}")))?;
    let payload: Value =
        serde_json::from_slice(&payload_bytes).map_err(|_| bad("JWS payload is not JSON"))?;
    Ok(Verified {
        header: json!({"alg": header.alg, "kid": header.kid, "typ": header.typ}),
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

    /// A JWS signed over `header` (any JSON text) and `payload` by `k`.
    fn signed_raw(k: &KeyPair, header: &str, payload: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(payload);
        let sig = k.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", sig.to_base64url())
    }

    /// FORMAT.md §8.1: the header is exactly alg, kid and typ.
    #[test]
    fn header_is_closed_and_complete() {
        let k = KeyPair::generate();
        let kid = k.did().verification_method();
        let ok = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t"}}"#);
        verify_compact(&signed_raw(&k, &ok, "{}"), "t").unwrap();
        // Member order and spacing are the signer's: the signature covers them.
        let spaced = format!(r#"{{ "typ": "t", "kid": "{kid}", "alg": "EdDSA" }}"#);
        verify_compact(&signed_raw(&k, &spaced, "{}"), "t").unwrap();
        for header in [
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t","crit":["exp"]}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t","cty":"json"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t","b64":false}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#),
            r#"{"alg":"EdDSA","typ":"t"}"#.to_string(),
            format!(r#"{{"kid":"{kid}","typ":"t"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":null}}"#),
            format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}","typ":"t"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t","typ":"t"}}"#),
        ] {
            let e = verify_compact(&signed_raw(&k, &header, "{}"), "t").unwrap_err();
            assert!(e.to_string().contains("JWS header"), "{header}: {e}");
        }
    }

    #[test]
    fn payload_member_named_twice_is_refused() {
        let k = KeyPair::generate();
        let kid = k.did().verification_method();
        let h = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"t"}}"#);
        verify_compact(&signed_raw(&k, &h, r#"{"a":{"b":[{"c":1,"d":2}]}}"#), "t").unwrap();
        for payload in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"{"a":[{"c":1,"c":2}]}"#,
        ] {
            let e = verify_compact(&signed_raw(&k, &h, payload), "t").unwrap_err();
            assert!(e.to_string().contains("twice"), "{payload}: {e}");
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
