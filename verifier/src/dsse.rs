//! Signed reports: a DSSE envelope (Ed25519) over an in-toto Statement v1
//! whose subject is the bundle's ledger at its verified tree size and root.
//!
//! PAE (DSSE v1): `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths
//! in ASCII decimal. The envelope's `keyid` is the signer's did:key; the
//! signature is standard base64 of the 64-byte Ed25519 signature over the PAE.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custody_identity::{Did, KeyPair, Signature};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::attest::Report;

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://custody.dev/attestation-report/v1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The in-toto statement about the ledger the report describes.
pub fn statement(report: &Report) -> serde_json::Value {
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": format!("custody-ledger:{}@{}", report.verification.ledger, report.verification.tree_size),
            "digest": {"sha256": report.verification.root},
            "annotations": {"tree_size": report.verification.tree_size, "merkle": "RFC 6962 root over entries.jsonl"}
        }],
        "predicateType": PREDICATE_TYPE,
        "predicate": report,
    })
}

pub fn sign(report: &Report, key: &KeyPair) -> Result<Envelope, serde_json::Error> {
    let body = serde_json::to_vec(&statement(report))?;
    let sig = key.sign(&pae(PAYLOAD_TYPE, &body));
    Ok(Envelope {
        payload_type: PAYLOAD_TYPE.into(),
        payload: STANDARD.encode(&body),
        signatures: vec![EnvelopeSignature {
            keyid: key.did().to_string(),
            sig: STANDARD.encode(sig.0),
        }],
    })
}

/// Checks every signature on the envelope; returns the signers and the statement.
pub fn verify(env: &Envelope) -> Result<(Vec<Did>, serde_json::Value), String> {
    if env.payload_type != PAYLOAD_TYPE {
        return Err(format!("payloadType must be {PAYLOAD_TYPE}"));
    }
    if env.signatures.is_empty() {
        return Err("the envelope has no signature".into());
    }
    let body = STANDARD
        .decode(&env.payload)
        .map_err(|_| "payload is not base64".to_string())?;
    let msg = pae(&env.payload_type, &body);
    let mut signers = Vec::new();
    for s in &env.signatures {
        let did = Did::parse(&s.keyid).map_err(|e| format!("keyid: {e}"))?;
        let sig = STANDARD
            .decode(&s.sig)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| "sig is not a base64 Ed25519 signature".to_string())?;
        did.public_key()
            .verify(&msg, &sig)
            .map_err(|_| format!("signature by {did} does not verify"))?;
        signers.push(did);
    }
    let st: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("statement: {e}"))?;
    if st["_type"] != STATEMENT_TYPE || st["predicateType"] != PREDICATE_TYPE {
        return Err("not a custody attestation statement".into());
    }
    Ok((signers, st))
}
