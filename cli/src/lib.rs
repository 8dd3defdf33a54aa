//! # custody-cli
//!
//! The `custody` command (`src/main.rs`): argument parsing and dispatch to
//! the agent side (`custody-agent`: sessions, tokens, log, hooks, git) and to
//! the broker (`custody-server`: `custody serve`). Beside them, two ways to
//! try custody without setting anything up: [`dev`] spawns a real OpenBao dev
//! server and a broker (with `--postgres`, on a PostgreSQL cluster of its own
//! from [`pgcluster`]), and [`demo`] runs the whole scenario end to end.
//! [`run`] runs an agent under custody (`custody run`), and [`install`]
//! writes the managed configuration an administrator deploys.

pub mod demo;
pub mod dev;
pub mod install;
pub mod pgcluster;
pub mod run;
