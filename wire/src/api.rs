//! Request and response bodies of the broker's HTTP API (`docs/API.md`), shared
//! by the server and the client so the two cannot drift apart.

use custody_ledger::{Approval, SignedEvent};
use serde::{Deserialize, Serialize};

pub const PATH_HEALTH: &str = "/v1/health";
pub const PATH_SESSIONS: &str = "/v1/sessions";
pub const PATH_TOKENS: &str = "/v1/tokens";
pub const PATH_EVENTS: &str = "/v1/events";
pub const PATH_EVENTS_BATCH: &str = "/v1/events/batch";
pub const PATH_REVOKE: &str = "/v1/revoke";
pub const PATH_EXPORT: &str = "/v1/export";
pub const PATH_CHECKPOINT: &str = "/v1/checkpoint";
pub const PATH_PROOF_INCLUSION: &str = "/v1/proof/inclusion";
pub const PATH_PROOF_CONSISTENCY: &str = "/v1/proof/consistency";
pub const PATH_STATUS: &str = "/v1/session/status";
pub const PATH_REDACT: &str = "/v1/redact";
pub const PATH_COSIGNATURE: &str = "/v1/checkpoint/cosignature";
pub const PATH_POLICY_CHECK: &str = "/v1/policy/check";
/// A person or reviewer submits an `approval` event (signed by them).
pub const PATH_APPROVALS: &str = "/v1/approvals";
/// Held actions the caller may decide (signed by a person or reviewer).
pub const PATH_APPROVALS_PENDING: &str = "/v1/approvals/pending";
/// Whether a session's held action was decided (signed by the session).
pub const PATH_APPROVAL_STATUS: &str = "/v1/approvals/status";
/// OTLP/HTTP logs (the standard path, so exporters need only the base URL).
pub const PATH_OTLP_LOGS: &str = "/v1/logs";
/// The entry feed: canonical entries in order, for auditors and admins.
pub const PATH_ENTRIES: &str = "/v1/entries";

/// Most entries one page of the feed carries.
pub const MAX_FEED_PAGE: usize = 1000;
/// A page stops growing once its lines reach this many bytes (it always
/// carries at least one entry when there is one): with the per-caller cap on
/// requests in flight this bounds what the broker holds for slow readers.
pub const MAX_FEED_PAGE_BYTES: usize = 4 << 20;
/// Longest a follow request (`wait`) is held open waiting for a new entry.
pub const MAX_FEED_WAIT_SECS: u64 = 30;

/// Most events one batch request may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Every error the API returns: a stable code and a message for people.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// `POST /v1/sessions`, signed by the delegator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// The delegation credential (compact JWS) naming the session key.
    pub delegation: String,
    /// The session's own `session.start` event, signed by the session key.
    pub start: SignedEvent,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionStarted {
    pub seq: u64,
    pub session_id: String,
    pub session_did: String,
    pub expires_at: String,
    /// X.509 client certificate for the session key (SAN URI = session DID).
    pub certificate_pem: String,
    pub ca_pem: String,
    /// Bearer token for the OTLP receiver; dies with the session.
    pub ingest_token: String,
}

/// `POST /v1/tokens`, signed by the session: a `credential.request` event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub request: SignedEvent,
}

#[derive(Serialize, Deserialize)]
pub struct Minted {
    /// The Vault/OpenBao token. Shown once, never stored by the broker.
    pub token: String,
    pub ttl_seconds: u64,
    pub policies: Vec<String>,
    pub accessor_sha256: String,
    pub request_seq: u64,
    pub mint_seq: u64,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"<redacted>")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/events`, signed by the event's actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendEvent {
    pub event: SignedEvent,
    /// The body behind `event.payload`, kept beside the chain (redactable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadBody>,
}

/// A payload body and its salt, unpadded base64url.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadBody {
    pub salt: String,
    pub body: String,
}

/// `POST /v1/redact`, signed by an admin: delete a payload body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRequest {
    pub digest: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
    pub received_at: String,
}

/// `POST /v1/events/batch`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBatch {
    pub events: Vec<SignedEvent>,
}

/// One result per event, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<BatchItem>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchItem {
    Ok(Appended),
    Err(ErrorBody),
}

/// `POST /v1/revoke`, signed by an admin: an `identity.revoke` event carrying
/// the revocation statement.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub event: SignedEvent,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    pub seq: u64,
    pub subject: String,
    /// Sessions cut by the revocation (the subject itself, or those it delegated).
    pub sessions: Vec<String>,
    pub tokens_revoked: u64,
    /// Per-session parent tokens revoked, each with all its children
    /// (`[vault] parent_policy`); 0 when tokens are revoked one by one.
    #[serde(default)]
    pub parents_revoked: u64,
}

/// `POST /v1/export`, signed by an admin. The answer is a tar of the bundle.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {}

#[derive(Debug, Serialize, Deserialize)]
pub struct InclusionProofBody {
    pub seq: u64,
    pub tree_size: u64,
    pub entry: String,
    pub path: Vec<String>,
    pub checkpoint: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConsistencyProofBody {
    pub old_size: u64,
    pub new_size: u64,
    pub path: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub ledger: String,
    pub entries: u64,
    pub vault: String,
}

/// `GET /v1/entries?after=SEQ&limit=N&wait=SECS`, signed by an auditor or
/// an admin (method, path and query signed, empty body).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Entries after this seq; absent: from entry 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many entries (capped at [`MAX_FEED_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Follow mode: when there is no entry after `after` yet, wait up to this
    /// many seconds (capped at [`MAX_FEED_WAIT_SECS`]) for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

impl FeedQuery {
    /// The path and query a client sends and signs: `/v1/entries?after=…`.
    pub fn path_and_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.after {
            parts.push(format!("after={a}"));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(w) = self.wait {
            parts.push(format!("wait={w}"));
        }
        if parts.is_empty() {
            PATH_ENTRIES.to_string()
        } else {
            format!("{PATH_ENTRIES}?{}", parts.join("&"))
        }
    }
}

/// One page of the feed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedPage {
    /// The ledger's DID (its key signs the checkpoints).
    pub ledger: String,
    /// Entries in the ledger when the page was read; every `seq` is below it.
    pub size: u64,
    /// Consecutive entries from the first after `after`, in order.
    pub entries: Vec<FeedEntry>,
    /// The latest signed checkpoint note (FORMAT.md §6), when there is one.
    /// A consumer holding every entry from 0 checks what it received against
    /// it: by its root when it reaches its size, or by [`Self::consistency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// When the checkpoint's size is below the page's first seq (`after + 1`):
    /// the RFC 9162 consistency proof from the checkpoint's tree to the tree
    /// of the entries before the page, hex, so the consumer can check the
    /// entries it already has against the signed root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Vec<String>>,
}

/// One entry of the feed: its canonical line exactly as in `entries.jsonl`
/// and its entry hash (`SHA-256(0x00 ‖ line)`, FORMAT.md §5).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeedEntry {
    pub seq: u64,
    pub hash: String,
    pub line: String,
}

/// `GET /v1/session/status`, signed by the session: whether it may still act.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionStatus {
    pub active: bool,
    pub reason: Option<String>,
    pub expires_at: Option<String>,
}

/// `POST /v1/policy/check`, signed by the session before a tool runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheck {
    /// The agent's tool name (`Bash`, `Read`, `exec_command`, …).
    pub tool: String,
    /// The tool's input as the agent gave it.
    pub input: serde_json::Value,
    #[serde(default)]
    pub cwd: String,
    /// The checked-out git branch in `cwd`, or empty.
    #[serde(default)]
    pub branch: String,
    /// The agent's own id of the call (`tool_use_id`, `call_id`), recorded
    /// with the decision so a refusal joins the agent's transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The call's `tool.call`, signed by the session and claiming
    /// `{"by":"policy"}` (decided with the call, FORMAT.md §3.3): when the
    /// policy alone allows the call, the broker appends it right after the
    /// decision, in the same commit, and answers `recorded`. Otherwise it
    /// is not stored and the caller sends its `tool.call` as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<AppendEvent>,
}

/// The decision, recorded as a `policy.decision` entry at `seq`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// Whether the call may run now.
    pub allow: bool,
    /// `allow`, `deny` or `approval_required`.
    #[serde(default)]
    pub decision: String,
    /// Ids of the policies that determined the decision.
    pub policies: Vec<String>,
    pub seq: u64,
    /// The call's action digest (FORMAT.md §3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_digest: Option<String>,
    /// For `approval_required`: `human` or `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    /// When allowed: what the call's `tool.call` claims approved it, naming
    /// the entry that backs the claim (this decision, or a person's or
    /// reviewer's `approval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// When a person refused this exact call: their `approval` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<u64>,
    /// The `tool.call` sent as `record`, appended right after the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Appended>,
}

/// `POST /v1/approvals`, signed by the approver: their own `approval` event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitApproval {
    pub event: SignedEvent,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalRecorded {
    pub seq: u64,
    pub decision: String,
    pub expires_at: String,
}

/// `POST /v1/approvals/pending`: every held action the caller may decide,
/// or the one held by the `policy.decision` at `decision_seq`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_seq: Option<u64>,
}

/// An action the policy held, as a person deciding it sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldAction {
    /// The `policy.decision` that held it.
    pub decision_seq: u64,
    pub held_at: String,
    pub session_did: String,
    pub session_id: String,
    pub agent: String,
    pub context: String,
    pub delegator: String,
    pub tool: String,
    /// The tool's input exactly as the agent gave it.
    pub input: serde_json::Value,
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The rules that held it.
    pub rules: Vec<String>,
    /// `human` or `review`.
    pub requires: String,
    pub action_digest: String,
    /// `pending`, `approved` (an unused approval waits) or `refused`.
    pub state: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PendingList {
    pub held: Vec<HeldAction>,
}

/// `POST /v1/approvals/status`, signed by the session whose call was held.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStatusQuery {
    pub action_digest: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalStatus {
    /// `pending`, `approved` or `refused`.
    pub state: String,
    /// The deciding `approval` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// The answer to `POST /v1/checkpoint/cosignature`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Cosigned {
    pub size: u64,
    /// Every configured witness that has now cosigned this checkpoint.
    pub witnesses: Vec<String>,
    /// The `checkpoint.cosigned` entry; absent when the posted cosignatures
    /// were all kept already (a replay adds nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_query_is_sent_as_signed() {
        assert_eq!(FeedQuery::default().path_and_query(), "/v1/entries");
        let q = FeedQuery {
            after: Some(41),
            limit: Some(10),
            wait: Some(30),
        };
        assert_eq!(q.path_and_query(), "/v1/entries?after=41&limit=10&wait=30");
    }
}
