//! Signed HTTP requests: how every caller proves which DID it is.
//!
//! The caller signs, with its did:key's Ed25519 key,
//!
//! ```text
//! custody/request/v1\n
//! <METHOD>\n
//! <path and query, as sent>\n
//! <timestamp: unix milliseconds, decimal>\n
//! <nonce: 32 lowercase hex>\n
//! <SHA-256 of the body: 64 lowercase hex>
//! ```
//!
//! (lines joined by `\n`, no trailing newline) and sends the pieces in headers:
//! `Custody-Did`, `Custody-Timestamp`, `Custody-Nonce`, `Custody-Signature`
//! (unpadded base64url). The broker refuses a stale or future timestamp beyond
//! the allowed skew, a nonce it has seen within the window, a DID that does not
//! parse or a signature that does not verify strictly. The body digest binds the
//! body; method and path bind the endpoint, so a signature cannot be replayed
//! against another route. `docs/API.md` documents the same.

use custody_identity::{Did, KeyPair, Signature};
use sha2::{Digest, Sha256};

pub const HEADER_DID: &str = "custody-did";
pub const HEADER_TIMESTAMP: &str = "custody-timestamp";
pub const HEADER_NONCE: &str = "custody-nonce";
pub const HEADER_SIGNATURE: &str = "custody-signature";
/// Domain separation from event and credential signatures.
pub const REQUEST_SIGNING_PREFIX: &str = "custody/request/v1";

/// The headers a client attaches.
#[derive(Clone, Debug)]
pub struct SignedHeaders {
    pub did: String,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

/// The exact bytes signed for a request.
pub fn signing_input(
    method: &str,
    path: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    format!("{REQUEST_SIGNING_PREFIX}\n{method}\n{path}\n{timestamp_ms}\n{nonce}\n{digest}")
        .into_bytes()
}

/// Signs a request as `key`.
pub fn sign_request(key: &KeyPair, method: &str, path: &str, body: &[u8]) -> SignedHeaders {
    let ts = now_ms();
    let nonce = custody_ledger::Nonce::random().to_hex();
    let sig = key.sign(&signing_input(method, path, ts, &nonce, body));
    SignedHeaders {
        did: key.did().to_string(),
        timestamp: ts.to_string(),
        nonce,
        signature: sig.to_base64url(),
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Why a signed request is refused (all map to 401, except where noted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestAuthError {
    #[error("missing header {0}: requests must be signed (see docs/API.md)")]
    Missing(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    #[error("Custody-Did: {0}")]
    BadDid(String),
    #[error("timestamp is {0} ms away from the broker's clock (allowed: {1} ms)")]
    Stale(i64, i64),
    #[error("nonce was already used")]
    Replayed,
    #[error("signature does not verify for {0}")]
    BadSignature(String),
}

/// The parts a server extracts before checking.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub did: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// Checks everything but nonce freshness (which needs the server's memory):
/// returns the caller's DID, the timestamp and the nonce.
pub fn verify_request(
    p: &RequestParts<'_>,
    now_ms: i64,
    max_skew_ms: i64,
) -> Result<(Did, i64, [u8; 16]), RequestAuthError> {
    let did = p.did.ok_or(RequestAuthError::Missing(HEADER_DID))?;
    let ts = p
        .timestamp
        .ok_or(RequestAuthError::Missing(HEADER_TIMESTAMP))?;
    let nonce = p.nonce.ok_or(RequestAuthError::Missing(HEADER_NONCE))?;
    let sig = p
        .signature
        .ok_or(RequestAuthError::Missing(HEADER_SIGNATURE))?;
    let did = Did::parse(did).map_err(|e| RequestAuthError::BadDid(e.to_string()))?;
    if ts.is_empty() || ts.len() > 16 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestAuthError::Malformed(HEADER_TIMESTAMP));
    }
    let ts_ms: i64 = ts
        .parse()
        .map_err(|_| RequestAuthError::Malformed(HEADER_TIMESTAMP))?;
    let nonce_bytes = custody_ledger::Nonce::from_hex(nonce)
        .map_err(|_| RequestAuthError::Malformed(HEADER_NONCE))?;
    let sig = Signature::from_base64url(sig)
        .map_err(|_| RequestAuthError::Malformed(HEADER_SIGNATURE))?;
    let skew = (now_ms - ts_ms).abs();
    if skew > max_skew_ms {
        return Err(RequestAuthError::Stale(now_ms - ts_ms, max_skew_ms));
    }
    let msg = signing_input(p.method, p.path, ts_ms, nonce, p.body);
    did.public_key()
        .verify(&msg, &sig)
        .map_err(|_| RequestAuthError::BadSignature(did.to_string()))?;
    Ok((did, ts_ms, nonce_bytes.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(
        h: &'a SignedHeaders,
        method: &'a str,
        path: &'a str,
        body: &'a [u8],
    ) -> RequestParts<'a> {
        RequestParts {
            method,
            path,
            did: Some(&h.did),
            timestamp: Some(&h.timestamp),
            nonce: Some(&h.nonce),
            signature: Some(&h.signature),
            body,
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let k = KeyPair::generate();
        let h = sign_request(&k, "POST", "/v1/events", b"{}");
        let now = now_ms();
        let (did, _, _) =
            verify_request(&parts(&h, "POST", "/v1/events", b"{}"), now, 60_000).unwrap();
        assert_eq!(did, k.did());
        for (m, p, b) in [
            ("GET", "/v1/events", &b"{}"[..]),
            ("POST", "/v1/tokens", b"{}"),
            ("POST", "/v1/events", b"{ }"),
        ] {
            assert!(matches!(
                verify_request(&parts(&h, m, p, b), now, 60_000),
                Err(RequestAuthError::BadSignature(_))
            ));
        }
    }

    #[test]
    fn stale_and_missing() {
        let k = KeyPair::generate();
        let h = sign_request(&k, "POST", "/x", b"");
        let now = now_ms() + 120_000;
        assert!(matches!(
            verify_request(&parts(&h, "POST", "/x", b""), now, 60_000),
            Err(RequestAuthError::Stale(..))
        ));
        let mut p = parts(&h, "POST", "/x", b"");
        p.signature = None;
        assert_eq!(
            verify_request(&p, now_ms(), 60_000).unwrap_err(),
            RequestAuthError::Missing(HEADER_SIGNATURE)
        );
    }

    #[test]
    fn did_confusion_refused() {
        // The header names one DID, the signature is by another key.
        let k = KeyPair::generate();
        let other = KeyPair::generate();
        let mut h = sign_request(&k, "POST", "/x", b"");
        h.did = other.did().to_string();
        assert!(matches!(
            verify_request(&parts(&h, "POST", "/x", b""), now_ms(), 60_000),
            Err(RequestAuthError::BadSignature(_))
        ));
    }
}
