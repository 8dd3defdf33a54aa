//! # custody-ledger
//!
//! The tamper-evident record. An actor builds an [`Event`] and signs it
//! ([`SignedEvent`], Ed25519 over `custody/event/v1\n ‖ JCS(event)`); the ledger
//! wraps it in an [`Entry`] with a sequence number, the previous entry's hash and a
//! receive time. Each entry's canonical JSON line is hashed as an RFC 6962 leaf:
//! the hash chain (`prev`) and the Merkle tree ([`merkle`]) share that one hash, and
//! the ledger key signs tree heads as C2SP checkpoints ([`checkpoint`]).
//! [`authority`] holds the rules that decide whether an actor may do what an event
//! says at the time it was received; the broker applies them before appending and
//! the verifier re-applies them to an export. [`store`] makes appends durable
//! (segment file + fdatasync group commit, sled indexes) and [`bundle`] writes and
//! reads the export directory specified in `docs/FORMAT.md`. [`witness`] holds
//! the C2SP cosignatures that anchor a ledger against wholesale replacement.
//!
//! This crate has no async runtime and no network code: the offline verifier
//! uses it.

pub mod actions;
pub mod authority;
pub mod bundle;
pub mod canonical;
pub mod checkpoint;
pub mod denial;
pub mod entry;
mod error;
pub mod event;
#[cfg(feature = "store")]
pub mod export;
pub mod fsutil;
pub mod merkle;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
mod table;
pub mod time;
pub mod types;
pub mod witness;

pub use entry::{entry_hash, Entry, ENTRY_VERSION, MAX_ENTRY_BYTES};
pub use error::LedgerError;
pub use event::{ActorKind, Approval, Event, PayloadRef, SignedEvent, EVENT_VERSION};
pub use time::Timestamp;
pub use types::{ActionType, Context, EntryHash, Nonce, PayloadDigest, Scope, Seq, SessionId};
