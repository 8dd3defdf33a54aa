//! The codes of the broker's error answers (`{"error": code, "message": …}`,
//! docs/API.md), typed from the place a refusal is decided to the client
//! that reads it. A refusal of an authenticated request is a
//! [`DenialCode`] — the same code its `request.denied` entry records.

use custody_ledger::denial::DenialCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 403: refused by the ledger's rules or the broker, and recorded.
    Denied(DenialCode),
    // 401: who is asking could not be established.
    Unsigned,
    MalformedSignature,
    BadDid,
    StaleRequest,
    ReplayedRequest,
    BadSignature,
    BadIngestToken,
    // 400: the request is malformed.
    MalformedJson,
    Malformed,
    MalformedBody,
    PayloadMismatch,
    TooManyEvents,
    MalformedOtlp,
    MalformedCheckpoint,
    BadCosignature,
    NoCosignature,
    NotOurCheckpoint,
    BadSizes,
    /// 403, not recorded: cosignatures by keys not in `[witnesses]`.
    UnknownWitness,
    // 404
    NoCheckpoint,
    NoSuchEntry,
    // Limits and failures.
    RequestTimeout,
    TooLarge,
    UnsupportedMediaType,
    RateLimited,
    Busy,
    LedgerUnavailable,
    NoVault,
    Vault,
    Internal,
}

/// Every code but the denials, for [`ErrorCode::parse`].
const OTHERS: &[ErrorCode] = &[
    ErrorCode::Unsigned,
    ErrorCode::MalformedSignature,
    ErrorCode::BadDid,
    ErrorCode::StaleRequest,
    ErrorCode::ReplayedRequest,
    ErrorCode::BadSignature,
    ErrorCode::BadIngestToken,
    ErrorCode::MalformedJson,
    ErrorCode::Malformed,
    ErrorCode::MalformedBody,
    ErrorCode::PayloadMismatch,
    ErrorCode::TooManyEvents,
    ErrorCode::MalformedOtlp,
    ErrorCode::MalformedCheckpoint,
    ErrorCode::BadCosignature,
    ErrorCode::NoCosignature,
    ErrorCode::NotOurCheckpoint,
    ErrorCode::BadSizes,
    ErrorCode::UnknownWitness,
    ErrorCode::NoCheckpoint,
    ErrorCode::NoSuchEntry,
    ErrorCode::RequestTimeout,
    ErrorCode::TooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::RateLimited,
    ErrorCode::Busy,
    ErrorCode::LedgerUnavailable,
    ErrorCode::NoVault,
    ErrorCode::Vault,
    ErrorCode::Internal,
];

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Denied(d) => d.as_str(),
            ErrorCode::Unsigned => "unsigned",
            ErrorCode::MalformedSignature => "malformed_signature",
            ErrorCode::BadDid => "bad_did",
            ErrorCode::StaleRequest => "stale_request",
            ErrorCode::ReplayedRequest => "replayed_request",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::BadIngestToken => "bad_ingest_token",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::Malformed => "malformed",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::PayloadMismatch => "payload_mismatch",
            ErrorCode::TooManyEvents => "too_many_events",
            ErrorCode::MalformedOtlp => "malformed_otlp",
            ErrorCode::MalformedCheckpoint => "malformed_checkpoint",
            ErrorCode::BadCosignature => "bad_cosignature",
            ErrorCode::NoCosignature => "no_cosignature",
            ErrorCode::NotOurCheckpoint => "not_our_checkpoint",
            ErrorCode::BadSizes => "bad_sizes",
            ErrorCode::UnknownWitness => "unknown_witness",
            ErrorCode::NoCheckpoint => "no_checkpoint",
            ErrorCode::NoSuchEntry => "no_such_entry",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Busy => "busy",
            ErrorCode::LedgerUnavailable => "ledger_unavailable",
            ErrorCode::NoVault => "no_vault",
            ErrorCode::Vault => "vault",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status this code is answered with, unless a route says
    /// otherwise (a checkpoint conflict is 409 `not_our_checkpoint`).
    pub fn status(&self) -> u16 {
        use ErrorCode::*;
        match self {
            Denied(_) | UnknownWitness => 403,
            Unsigned | MalformedSignature | BadDid | StaleRequest | ReplayedRequest
            | BadSignature | BadIngestToken => 401,
            MalformedJson | Malformed | MalformedBody | PayloadMismatch | TooManyEvents
            | MalformedOtlp | MalformedCheckpoint | BadCosignature | NoCosignature
            | NotOurCheckpoint | BadSizes => 400,
            NoCheckpoint | NoSuchEntry => 404,
            RequestTimeout => 408,
            TooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited => 429,
            Vault => 502,
            Busy | LedgerUnavailable | NoVault => 503,
            Internal => 500,
        }
    }

    /// The code a client read in an answer; a denial when it names one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        OTHERS
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .or_else(|| DenialCode::parse(s).map(ErrorCode::Denied))
    }
}

impl From<DenialCode> for ErrorCode {
    fn from(d: DenialCode) -> Self {
        ErrorCode::Denied(d)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
