//! Action types with a meaning the ledger's rules or the reports depend on.
//! Any other well-formed action type (`tool.call`, `git.commit`, …) is recorded
//! as it is.

/// Entry 0: the ledger key states the ledger's DID and its trust roots.
pub const GENESIS: &str = "ledger.genesis";
/// The ledger key changes the trust roots (admins, delegators).
pub const TRUST_UPDATE: &str = "trust.update";
/// A session key starts a session; `details.delegation` carries the credential.
pub const SESSION_START: &str = "session.start";
pub const SESSION_END: &str = "session.end";
/// An admin revokes an identity; `details.revocation` carries the statement.
pub const IDENTITY_REVOKE: &str = "identity.revoke";
/// The ledger records a request it refused (a denied attempt is evidence).
pub const REQUEST_DENIED: &str = "request.denied";
pub const CREDENTIAL_MINT: &str = "credential.mint";
pub const CREDENTIAL_REVOKE: &str = "credential.revoke";
pub const TOOL_CALL: &str = "tool.call";
pub const TOOL_RESULT: &str = "tool.result";
/// A human's decision on an agent's request (`details.decision`: approve | deny).
pub const APPROVAL: &str = "approval";
pub const PROMPT: &str = "prompt";
/// The broker's pre-tool policy decided a session's tool call (`details.decision`,
/// `details.policies`).
pub const POLICY_DECISION: &str = "policy.decision";
/// Prefix of broker-attested agent telemetry (`telemetry.claude_code.tool_decision`, …).
pub const TELEMETRY_PREFIX: &str = "telemetry.";
