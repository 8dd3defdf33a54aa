//! # custody-agent
//!
//! What runs next to an agent, on a developer's machine or in CI: the
//! session file an agent runs with ([`sessionfile`]), the client that signs
//! every request with the session's or a person's did:key and speaks the
//! broker's API ([`client`]), the Claude Code and Codex hook adapters with
//! their spool for when the broker is unreachable ([`hook`]), the git
//! integration that binds commits to sessions ([`git`]), and `custody tail`,
//! which follows the ledger's entry feed as an auditor and forwards it to a
//! SIEM ([`tail`]).
//!
//! `custody hook` runs on every tool call of every agent, so this crate links
//! no HTTP server, no storage engine, no Vault client and no policy engine
//! (scripts/test checks its dependency tree).

/// The future of an entry point the `custody` binary awaits (a hook run, a
/// request to the broker), boxed in this crate: an `async fn`'s body is
/// otherwise compiled in whichever crate first polls it, so the binaries
/// compiled reqwest's and this crate's async code again, once per request
/// and answer type. The same type as `custody_server::BoxFuture`.
pub use futures_util::future::BoxFuture;

pub mod approve;
pub mod client;
pub mod git;
pub mod hook;
pub mod sessionfile;
pub mod tail;
