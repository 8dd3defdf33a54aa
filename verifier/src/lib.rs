//! # custody-verifier
//!
//! Offline verification of custody export bundles: no network, no server, no
//! Vault — only the bundle directory and, ideally, the ledger DID the auditor
//! pins. [`verify::verify_bundle`] streams `entries.jsonl` once and reports every
//! check with the entries that fail it ([`report::Verification`]); [`proof`]
//! builds and checks self-contained inclusion proofs for single entries, and
//! [`event`] checks a SIEM's event (`custody tail`'s OCSF or entry form)
//! against one;
//! [`attest`] turns a verified bundle into an EU AI Act attestation report,
//! rendered by [`render`] and signed as a DSSE envelope by [`dsse`]; [`witness`]
//! cosigns checkpoints that extend what it saw before, and `--witness` pins
//! require such cosignatures.
//!
//! Exit codes of `custody-verify`: 0 valid, 1 invalid, 2 unreadable or bad usage.

pub mod attest;
pub mod dsse;
pub mod event;
pub mod proof;
pub mod render;
pub mod report;
pub mod verify;
pub mod witness;

pub use report::{Check, Verification};
pub use verify::{verify_bundle, VerifyError, VerifyOptions};
