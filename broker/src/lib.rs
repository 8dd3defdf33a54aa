//! # custody-broker
//!
//! The `custody` command: the broker that agents and admins talk to, and the
//! client commands of the public contract. This first part holds key generation
//! and the embedded demo ([`demo`]), which runs the whole scenario against a real
//! durable ledger store in-process and verifies the bundle it exports.

pub mod demo;
