//! # custody-identity
//!
//! Who is who in custody. Every principal — a human, a CI identity, an admin, an
//! agent session, the ledger itself — is an Ed25519 `did:key` ([`Did`]), resolvable
//! offline from the DID string alone. This crate owns the keys ([`KeyPair`],
//! [`PublicKey`], [`Signature`]; verification is always `verify_strict` and weak keys
//! are rejected at parse time), key files written 0600 ([`keyfile`]), and the
//! credentials built on them: compact JWS with EdDSA ([`jws`]), delegations — W3C
//! VC 2.0 secured with JOSE, binding an agent session key to a delegator, scopes,
//! context and a validity window ([`Delegation`]) — and admin-signed revocation
//! statements ([`Revocation`]). [`batch`] verifies many signatures at once for
//! the offline verifier, with the strict pre-checks. With the `x509` feature it also issues
//! short-lived session certificates whose SAN URI is the session DID.
//!
//! It is the lean path: the ledger and the offline verifier depend on it with no
//! network, async runtime or JSON-LD processing.

pub mod batch;
#[cfg(feature = "x509")]
pub mod cert;
pub mod delegation;
mod did;
mod error;
pub mod jws;
mod key;
pub mod keyfile;
pub mod revocation;
#[cfg(feature = "ssi")]
pub mod ssi_bridge;

pub use delegation::Delegation;
pub use did::{Did, MAX_DID_LEN};
pub use error::IdentityError;
pub use key::{KeyPair, PublicKey, Signature, PUBLIC_KEY_LEN, SIGNATURE_LEN};
pub use revocation::Revocation;
