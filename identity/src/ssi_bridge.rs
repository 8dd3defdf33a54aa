//! Interoperability with SpruceID's `ssi` (cargo feature `ssi`, turned on by the
//! broker): resolving did:key with ssi's resolver and issuing credentials with
//! ssi's JWS signer.
//!
//! The offline verifier never compiles this: `ssi` pulls an async runtime and
//! HTTP clients (for its network DID methods). The point of the bridge is the
//! tests below, which hold the lean path to the reference implementation: what
//! ssi issues, [`crate::Delegation::verify`] accepts; any changed byte makes it
//! reject; and ssi's did:key resolution names the same key as [`crate::Did`].

use ssi::claims::jws::{encode_sign_custom_header, Header};
use ssi::dids::{DIDKey, DIDResolver, DID};
use ssi::jwk::Algorithm;
use ssi::jwk::{Base64urlUInt, OctetParams, Params, JWK};

use crate::{Did, IdentityError, KeyPair};

fn err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::InvalidCredential(format!("ssi: {e}"))
}

/// The key as a private JWK (OKP, Ed25519) for ssi's signer.
fn private_jwk(key: &KeyPair) -> JWK {
    JWK::from(Params::OKP(OctetParams {
        curve: "Ed25519".to_string(),
        public_key: Base64urlUInt(key.public().to_bytes().to_vec()),
        private_key: Some(Base64urlUInt(key.seed().to_vec())),
    }))
}

/// The did:key ssi derives for this key.
pub fn ssi_did(key: &KeyPair) -> Result<String, IdentityError> {
    let jwk = JWK::from(*key.public().dalek());
    DIDKey::generate(&jwk).map(|d| d.to_string()).map_err(err)
}

/// Signs `payload` as a compact JWS with ssi (alg EdDSA, kid = the signer's
/// did:key verification method, the given `typ`).
pub fn sign_with_ssi(
    key: &KeyPair,
    typ: &str,
    payload: &serde_json::Value,
) -> Result<String, IdentityError> {
    let header = Header {
        algorithm: Algorithm::EdDSA,
        key_id: Some(key.did().verification_method()),
        type_: Some(typ.to_string()),
        ..Default::default()
    };
    let text = serde_json::to_string(payload).map_err(err)?;
    encode_sign_custom_header(&text, &private_jwk(key), &header).map_err(err)
}

/// Resolves a did:key with ssi's resolver; returns the DID document as JSON.
pub async fn resolve_with_ssi(did: &Did) -> Result<serde_json::Value, IdentityError> {
    let d = DID::new(did.as_str().as_bytes()).map_err(|e| err(format!("{e:?}")))?;
    let out = DIDKey.resolve(d).await.map_err(err)?;
    serde_json::to_value(out.document.into_document()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Delegation;
    use base64::Engine;
    use time::OffsetDateTime;

    fn delegation(human: &KeyPair, session: &KeyPair) -> Delegation {
        let now = OffsetDateTime::now_utc();
        Delegation::new(
            human.did(),
            session.did(),
            "claude-code".into(),
            vec!["ci-read".into()],
            "ci".into(),
            now - time::Duration::minutes(1),
            now + time::Duration::hours(1),
        )
        .unwrap()
    }

    #[test]
    fn ssi_issued_delegation_is_accepted_by_the_lean_path_and_every_byte_matters() {
        let (human, session) = (KeyPair::generate(), KeyPair::generate());
        let d = delegation(&human, &session);
        let lean = d.issue(&human).unwrap();
        let (_, payload_b64, _) = {
            let mut p = lean.split('.');
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
        };
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload_b64)
                .unwrap(),
        )
        .unwrap();
        let jws = sign_with_ssi(&human, crate::delegation::DELEGATION_TYP, &payload).unwrap();
        assert_eq!(Delegation::verify(&jws).unwrap(), d);
        let bytes = jws.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(b) {
                assert!(
                    Delegation::verify(&s).is_err(),
                    "byte {i} changed and still verified"
                );
            }
        }
        // ssi's signer with the agent's key, claiming the human as issuer.
        let forged = sign_with_ssi(&session, crate::delegation::DELEGATION_TYP, &payload).unwrap();
        assert!(Delegation::verify(&forged).is_err());
    }

    #[test]
    fn ssi_derives_the_same_did() {
        let k = KeyPair::generate();
        assert_eq!(ssi_did(&k).unwrap(), k.did().as_str());
    }

    #[tokio::test]
    async fn ssi_resolution_names_the_same_key() {
        let k = KeyPair::generate();
        let doc = resolve_with_ssi(&k.did()).await.unwrap();
        assert_eq!(doc["id"], k.did().as_str());
        let vm = &doc["verificationMethod"][0];
        assert_eq!(vm["id"], k.did().verification_method());
        let key_bytes = if let Some(mb) = vm["publicKeyMultibase"].as_str() {
            let raw = bs58::decode(&mb[1..]).into_vec().unwrap();
            raw[2..].to_vec()
        } else if let Some(x) = vm["publicKeyJwk"]["x"].as_str() {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .unwrap()
        } else {
            let b58 = vm["publicKeyBase58"]
                .as_str()
                .expect("a key in the document");
            bs58::decode(b58).into_vec().unwrap()
        };
        assert_eq!(key_bytes, k.public().to_bytes());
    }
}
