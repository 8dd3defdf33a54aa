//! # custody-server
//!
//! `custody serve`: the broker agents and admins talk to (tokio + axum).
//! A request's path through it, top to bottom:
//!
//! - [`listener`] accepts connections (HTTPS with the broker's own CA beyond
//!   loopback) and bounds how long a client may take to send a request;
//! - [`routes`] holds the HTTP API, one module per resource; every route is
//!   registered with how it is authenticated, and the public ones live
//!   together in [`routes::public`];
//! - [`auth`] builds the only values an authenticated route can take:
//!   [`auth::Signed`] (a request signed by its caller's did:key, within its
//!   budget ([`ratelimit`]) and never replayed ([`replay`])), its bodiless
//!   `GET` form [`auth::SignedQuery`] (the entry feed) and [`auth::Ingest`]
//!   (a session's OTLP bearer token);
//! - [`state`] is what routes share: configuration ([`config`]), the ledger
//!   key, the session CA, OpenBao ([`vault`]), the Cedar pre-tool policy
//!   ([`policy`]); refusals are typed ([`error`]) and recorded;
//! - [`credentials`] mints tokens as explicit steps and revokes them, with
//!   each session's tokens under a parent token ([`parents`]) when configured;
//!   [`attest`] builds every event the ledger key signs; [`otlp`] reads
//!   agents' telemetry;
//! - [`storage`] is the one interface to everything kept: the ledger (whose
//!   rules decide every append) and the broker's records ([`brokerdb`]).

pub mod attest;
pub mod auth;
pub mod brokerdb;
pub mod config;
pub mod credentials;
pub mod error;
pub mod listener;
pub mod otlp;
pub mod parents;
pub mod policy;
pub mod ratelimit;
pub mod replay;
pub mod routes;
pub mod state;
pub mod storage;
pub mod vault;

pub use listener::{serve, shutdown_signal};
pub use state::{vault_from_config, AppState};

/// The future of an entry point other crates await (opening a broker,
/// serving, migrating), boxed in this crate: an `async fn`'s body is
/// otherwise compiled in whichever crate first polls it — every binary and
/// test that starts a broker compiled the server's async code again, which
/// was most of a release build of each of them.
pub type BoxFuture<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// Makes sure a rustls crypto provider is installed (reqwest, vaultrs and
/// axum-server are built without one, so custody picks ring everywhere).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
