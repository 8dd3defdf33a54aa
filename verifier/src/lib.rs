//! custody-verifier
