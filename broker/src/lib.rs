//! # custody-broker
//!
//! The `custody` command: the broker that agents and admins talk to
//! ([`server`], tokio + axum), and the client commands of the public contract
//! ([`client`]). Requests are signed by the caller's did:key ([`signing`]); the
//! API's bodies live in [`api`]; [`config`] reads `custody.toml`; [`vault`] mints
//! and revokes OpenBao/Vault tokens ([`brokerdb`] keeps their accessors); [`sessionfile`] is what an agent runs with;
//! [`otlp`] decodes agents' OpenTelemetry logs (recorded as
//! broker-attested telemetry); [`policy`] is the Cedar pre-tool policy; [`dev`] spawns an OpenBao dev server for trying it out; [`demo`] runs the
//! whole scenario.

pub mod api;
pub mod brokerdb;
pub mod client;
pub mod config;
pub mod demo;
pub mod dev;
pub mod git;
pub mod hook;
pub mod otlp;
pub mod policy;
pub mod server;
pub mod sessionfile;
pub mod signing;
pub mod vault;
