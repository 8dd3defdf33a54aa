//! # custody-server
//!
//! `custody serve`: the broker agents and admins talk to (tokio + axum). It
//! authenticates signed requests, holds the replay and rate-limit state that
//! bounds what a flood can cost ([`replay`], [`ratelimit`]), runs the ledger's
//! rules as the store's admission gate, mints and revokes OpenBao/Vault tokens
//! ([`vault`]) whose accessors it keeps ([`brokerdb`]), decides tool calls with
//! the Cedar pre-tool policy ([`policy`]), records agents' OpenTelemetry logs
//! ([`otlp`]), and reads its configuration from `custody.toml` ([`config`]).

pub mod brokerdb;
pub mod config;
pub mod otlp;
pub mod policy;
pub mod ratelimit;
pub mod replay;
pub mod server;
pub mod vault;

/// Makes sure a rustls crypto provider is installed (reqwest, vaultrs and
/// axum-server are built without one, so custody picks ring everywhere).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
