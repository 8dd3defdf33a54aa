//! # custody-siem
//!
//! A ledger entry as the security team's tools see it. Owns:
//!
//! - the **OCSF mapping** ([`ocsf`]): one OCSF 1.1.0 event per entry, its
//!   class and activity chosen by one table ([`ocsf::MAPPING`], printed in
//!   docs/SIEM.md and held to it by a test), every field derived from the
//!   entry alone, so the same entry always gives the same event;
//! - **provenance** ([`provenance`]): what every event carries so that it can
//!   be proven to be the ledger's entry with an inclusion proof (the ledger
//!   DID, the entry's `seq` and entry hash, the tree size it was read at),
//!   reading it back, and comparing a SIEM's copy of an event with the event
//!   the proof's entry maps to (`custody-verify check-event`).
//!
//! The event carries the whole entry (its canonical JSON under
//! `unmapped.custody.entry`); payload bodies never: only their salted digests,
//! as in the ledger. No async runtime and no network code: the offline
//! verifier links this crate.

pub mod ocsf;
pub mod provenance;

pub use ocsf::{to_ocsf, MAPPING, OCSF_VERSION};
pub use provenance::{compare, provenance, Comparison, Provenance};

/// Why an entry could not be mapped, or an event not read back.
#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    #[error("not a ledger entry: {0}")]
    Entry(String),
    #[error("not a custody SIEM event: {0}")]
    Event(String),
}
