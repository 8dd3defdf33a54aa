use thiserror::Error;

/// Everything that can go wrong with keys, DIDs and credentials.
///
/// Messages name the problem and never include key material.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("invalid DID {did:?}: {reason}")]
    InvalidDid { did: String, reason: &'static str },
    #[error("invalid public key: {0}")]
    InvalidPublicKey(&'static str),
    #[error("invalid signature encoding: {0}")]
    InvalidSignatureEncoding(&'static str),
    #[error("signature does not verify")]
    BadSignature,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    #[error("certificate: {0}")]
    Certificate(String),
}
