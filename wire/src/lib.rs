//! # custody-wire
//!
//! What the agent side (`custody-agent`) and the broker (`custody-server`)
//! agree on, and nothing else: the HTTP paths and the JSON bodies of the
//! broker's API ([`api`], specified in `docs/API.md`), how a request is signed
//! by its caller's did:key and checked ([`signing`]), and how a tool call is
//! read — its group and the command, path or URL it touches ([`tool`]) — so
//! the hook and the pre-tool policy read it the same way.
//!
//! No async runtime and no HTTP stack: both sides bring their own.

pub mod api;
pub mod error;
pub mod signing;
pub mod tool;
