//! # custody-broker
//!
//! The `custody` command: the broker that agents and admins talk to
//! ([`server`], tokio + axum), and the client commands of the public contract
//! ([`client`]). Requests are signed by the caller's did:key ([`signing`]); the
//! API's bodies live in [`api`]; [`replay`] and [`ratelimit`] bound what a
//! flood of signed requests can make the broker remember; [`config`] reads `custody.toml`; [`vault`]
//! mints and revokes OpenBao/Vault tokens, whose accessors [`brokerdb`] keeps;
//! [`sessionfile`] is what an agent runs with. Agents are wired in through
//! [`hook`] (Claude Code / Codex hooks), [`otlp`] (their OpenTelemetry logs,
//! recorded as broker-attested telemetry), [`policy`] (the Cedar pre-tool
//! policy) and [`git`] (commit trailers). [`dev`] spawns an OpenBao dev server
//! for trying it out; [`demo`] runs the whole scenario.

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
pub mod ratelimit;
pub mod replay;
pub mod server;
pub mod sessionfile;
pub mod signing;
pub mod vault;
