//! # custody-identity
//!
//! Who is who in custody. Every principal — a human, a CI identity, an admin, an
//! agent session, the ledger itself — is an Ed25519 `did:key` ([`Did`]), resolvable
//! offline from the DID string alone. This crate owns the keys ([`KeyPair`],
//! [`PublicKey`], [`Signature`]; verification is always `verify_strict` and weak keys
//! are rejected at parse time), the DIDs, and the modules built on them.
//!
//! It is the lean path: the ledger and the offline verifier depend on it with no
//! network, async runtime or JSON-LD processing. Optional features add what only
//! the broker needs.

mod did;
mod error;
mod key;

pub use did::{Did, MAX_DID_LEN};
pub use error::IdentityError;
pub use key::{KeyPair, PublicKey, Signature, PUBLIC_KEY_LEN, SIGNATURE_LEN};
