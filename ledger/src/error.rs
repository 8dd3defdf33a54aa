use thiserror::Error;

/// Errors of the ledger's data model. Storage and bundle errors have their own
/// types in their modules; all of them name what is wrong and never carry secrets.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("invalid timestamp {0}")]
    InvalidTimestamp(String),
    #[error("invalid {what}: expected {expected} lowercase hex digits")]
    InvalidHex { what: &'static str, expected: usize },
    #[error("invalid {what} {value:?}")]
    InvalidName { what: &'static str, value: String },
    #[error("canonical JSON: {0}")]
    Canonical(String),
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("not in canonical form (RFC 8785): {0}")]
    NotCanonical(&'static str),
    #[error("unsupported {what} version {found} (this build reads {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u64,
        supported: u64,
    },
    #[error("signature by {actor} does not verify")]
    BadSignature { actor: String },
    #[error(transparent)]
    Identity(#[from] custody_identity::IdentityError),
}
