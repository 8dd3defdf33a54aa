//! Human oversight as ledger state: the action digest that binds a person's
//! approval to one exact tool call, and what the rules remember about held
//! actions, approvals and the pre-tool policy's decisions (FORMAT.md §3.3).
//!
//! The **action digest** is computed the same way by the agent's hook, the
//! broker and any verifier ([`action_digest`]): SHA-256 over the JCS form of
//! `{"cwd", "input", "session", "tool", "v": 1}`, in lowercase hex. The
//! session is the agent session's DID, so an approval for one session's call
//! is worth nothing to another session.
//!
//! [`Oversight`] is the part of [`crate::authority::Authority`] that holds
//! what a later `tool.call` may reference: open approvals (an `approval` entry
//! by an allowed approver, until it is used or expires), the ledger key's
//! `allow` decisions (until used, or [`DECISION_TTL_MS`] after them), and the
//! actions the policy held for a person ([`HOLD_TTL_MS`]). Every record has an
//! end, so the state stays bounded by what happens within a day, not by the
//! ledger's length; a reference to a record that is gone (used, expired) is
//! refused, which is how an offline verifier knows an approval was unused.

use std::collections::{BTreeMap, HashMap};

use custody_identity::Did;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical;
use crate::time::Timestamp;
use crate::LedgerError;

/// Version of the action digest's preimage (its `v` member).
pub const ACTION_DIGEST_VERSION: u64 = 1;
/// Longest an approval may stay valid after the ledger received it.
pub const MAX_APPROVAL_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a `policy.decision` that allowed a call may be referenced by the
/// call's `tool.call` (`approval.by = "policy"`).
pub const DECISION_TTL_MS: i64 = 3600 * 1000;
/// How long a held action keeps needing an approval, counted from the
/// decision that held it (longer than any approval can live).
pub const HOLD_TTL_MS: i64 = MAX_APPROVAL_TTL_MS;
/// How far back in receive time the entries reach that decide what the
/// rules hold about oversight at the ledger's end: a record answers for at
/// most a day ([`MAX_APPROVAL_TTL_MS`], [`HOLD_TTL_MS`]), and whether an
/// approval of the last day was accepted can depend on a hold recorded up
/// to a day before it (see
/// [`crate::authority::Authority::restore_oversight`]).
pub const RESTORE_HORIZON_MS: i64 = HOLD_TTL_MS + MAX_APPROVAL_TTL_MS;

/// The canonical bytes the action digest is computed over:
/// `JCS({"cwd": cwd, "input": input, "session": session DID, "tool": tool, "v": 1})`.
pub fn action_preimage(
    session: &Did,
    tool: &str,
    input: &Value,
    cwd: &str,
) -> Result<Vec<u8>, LedgerError> {
    to_canonical(&json!({
        "cwd": cwd,
        "input": input,
        "session": session.as_str(),
        "tool": tool,
        "v": ACTION_DIGEST_VERSION,
    }))
}

/// SHA-256 of [`action_preimage`], 64 lowercase hex digits.
pub fn action_digest(
    session: &Did,
    tool: &str,
    input: &Value,
    cwd: &str,
) -> Result<String, LedgerError> {
    Ok(digest_of_preimage(&action_preimage(
        session, tool, input, cwd,
    )?))
}

/// The digest of a preimage someone else computed (to check it).
pub fn digest_of_preimage(preimage: &[u8]) -> String {
    hex::encode(Sha256::digest(preimage))
}

/// Whether `s` has the form of an action digest.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Who a held action needs (a policy rule's `@approval` annotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requires {
    /// A person only: the hard floor for irreversible actions.
    Human,
    /// A person or a listed automated reviewer.
    Review,
}

impl Requires {
    pub fn as_str(&self) -> &'static str {
        match self {
            Requires::Human => "human",
            Requires::Review => "review",
        }
    }

    pub fn parse(s: &str) -> Option<Requires> {
        match s {
            "human" => Some(Requires::Human),
            "review" => Some(Requires::Review),
            _ => None,
        }
    }

    /// Whether an approval by `by` satisfies this requirement.
    pub fn accepts(&self, by: ApprovedBy) -> bool {
        matches!((self, by), (_, ApprovedBy::Human) | (Requires::Review, _))
    }
}

/// Who decided, as the rules accepted the `approval` entry's signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApprovedBy {
    /// A person (the session's delegator, an admin, a listed approver).
    Human,
    /// A listed automated reviewer (a service identity).
    AutoReview,
}

impl ApprovedBy {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApprovedBy::Human => "human",
            ApprovedBy::AutoReview => "auto_review",
        }
    }
}

/// A person's or reviewer's decision on one action, as the rules keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The `approval` entry.
    pub seq: u64,
    pub session: Did,
    pub digest: String,
    /// `true`: approve; `false`: deny (a recorded refusal).
    pub approve: bool,
    pub expires: Timestamp,
    pub by: ApprovedBy,
    pub signer: Did,
    pub received: Timestamp,
    /// The `tool.call` that used it (single use).
    pub used_at: Option<u64>,
}

/// A `policy.decision` that allowed a call, referenceable by its `tool.call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRecord {
    pub seq: u64,
    pub session: Did,
    pub digest: String,
    pub policies: Vec<String>,
    pub received: Timestamp,
    pub used_at: Option<u64>,
}

/// An action the policy held for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    /// The `policy.decision` that held it (the latest one).
    pub seq: u64,
    pub requires: Requires,
    pub received: Timestamp,
}

type ActionKey = (Did, String);

/// What the rules remember about approvals, decisions and holds.
#[derive(Clone, Debug, Default)]
pub struct Oversight {
    approvals: BTreeMap<u64, ApprovalRecord>,
    /// (session, digest) → approval seqs, oldest first.
    by_action: HashMap<ActionKey, Vec<u64>>,
    decisions: BTreeMap<u64, DecisionRecord>,
    holds: HashMap<ActionKey, HoldRecord>,
    /// Hold seqs in order, to drop them when they end.
    hold_order: BTreeMap<u64, ActionKey>,
}

impl Oversight {
    /// The approval entry at `seq`, while the rules still hold it.
    pub fn approval(&self, seq: u64) -> Option<&ApprovalRecord> {
        self.approvals.get(&seq)
    }

    /// The allowing decision at `seq`, if it may still be referenced at
    /// `at` (less than [`DECISION_TTL_MS`] old).
    ///
    /// Lifetimes are checked against `at` here rather than left to
    /// pruning, so an answer does not depend on which entries
    /// a state has seen since the record: a broker that folds in only the
    /// entries that change the rules' state, or only the last two days of
    /// them, answers as a full replay does.
    pub fn decision(&self, seq: u64, at: Timestamp) -> Option<&DecisionRecord> {
        self.decisions
            .get(&seq)
            .filter(|d| at < d.received.plus_millis(DECISION_TTL_MS))
    }

    /// Whether the policy held this session's action at `at` (less than
    /// [`HOLD_TTL_MS`] ago), and for whom.
    pub fn hold(&self, session: &Did, digest: &str, at: Timestamp) -> Option<&HoldRecord> {
        self.holds
            .get(&(session.clone(), digest.to_string()))
            .filter(|h| at < h.received.plus_millis(HOLD_TTL_MS))
    }

    /// The `policy.decision` seqs of the holds in force at `at` (for each
    /// held action its latest), oldest first: what a broker lists as held
    /// calls when another broker, or this one before a restart, held them.
    pub fn holding_decisions(&self, at: Timestamp) -> Vec<u64> {
        self.hold_order
            .iter()
            .filter(|(seq, key)| {
                self.holds
                    .get(*key)
                    .is_some_and(|h| h.seq == **seq && at < h.received.plus_millis(HOLD_TTL_MS))
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// How many records the rules hold (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.approvals.len() + self.decisions.len() + self.holds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest approval that lets this action run at `at`: approving,
    /// unused, unexpired, by someone `requires` accepts.
    pub fn open_approval(
        &self,
        session: &Did,
        digest: &str,
        at: Timestamp,
        requires: Requires,
    ) -> Option<&ApprovalRecord> {
        self.by_action
            .get(&(session.clone(), digest.to_string()))?
            .iter()
            .filter_map(|s| self.approvals.get(s))
            .find(|a| a.approve && a.used_at.is_none() && at < a.expires && requires.accepts(a.by))
    }

    /// The latest unexpired refusal of this action newer than every open
    /// approval of it: a person said no, and nobody said yes since.
    pub fn refusal(&self, session: &Did, digest: &str, at: Timestamp) -> Option<&ApprovalRecord> {
        let seqs = self.by_action.get(&(session.clone(), digest.to_string()))?;
        let latest = seqs
            .iter()
            .rev()
            .filter_map(|s| self.approvals.get(s))
            .find(|a| at < a.expires && !(a.approve && a.used_at.is_some()))?;
        (!latest.approve).then_some(latest)
    }

    pub(crate) fn add_approval(&mut self, r: ApprovalRecord) {
        self.by_action
            .entry((r.session.clone(), r.digest.clone()))
            .or_default()
            .push(r.seq);
        self.approvals.insert(r.seq, r);
    }

    pub(crate) fn add_decision(&mut self, r: DecisionRecord) {
        self.decisions.insert(r.seq, r);
    }

    pub(crate) fn add_hold(&mut self, session: Did, digest: String, h: HoldRecord) {
        let key = (session, digest);
        if let Some(old) = self.holds.get(&key) {
            self.hold_order.remove(&old.seq);
        }
        self.hold_order.insert(h.seq, key.clone());
        self.holds.insert(key, h);
    }

    pub(crate) fn use_approval(&mut self, seq: u64, by: u64) {
        if let Some(a) = self.approvals.get_mut(&seq) {
            a.used_at.get_or_insert(by);
        }
    }

    pub(crate) fn use_decision(&mut self, seq: u64, by: u64) {
        if let Some(d) = self.decisions.get_mut(&seq) {
            d.used_at.get_or_insert(by);
        }
    }

    /// Drops what can no longer be referenced at `now`: approvals past the
    /// longest lifetime any may have, decisions past [`DECISION_TTL_MS`],
    /// holds past [`HOLD_TTL_MS`]. Records are in seq order, which is
    /// receive order, so only the oldest are looked at.
    pub(crate) fn prune(&mut self, now: Timestamp) {
        while let Some((&seq, a)) = self.approvals.first_key_value() {
            if a.received.plus_millis(MAX_APPROVAL_TTL_MS) > now {
                break;
            }
            let key = (a.session.clone(), a.digest.clone());
            self.approvals.remove(&seq);
            if let Some(v) = self.by_action.get_mut(&key) {
                v.retain(|s| *s != seq);
                if v.is_empty() {
                    self.by_action.remove(&key);
                }
            }
        }
        while let Some((&seq, d)) = self.decisions.first_key_value() {
            if d.received.plus_millis(DECISION_TTL_MS) > now {
                break;
            }
            self.decisions.remove(&seq);
        }
        while let Some((&seq, key)) = self.hold_order.first_key_value() {
            let Some(h) = self.holds.get(key) else {
                self.hold_order.remove(&seq);
                continue;
            };
            if h.received.plus_millis(HOLD_TTL_MS) > now {
                break;
            }
            let key = key.clone();
            self.hold_order.remove(&seq);
            self.holds.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_identity::KeyPair;

    #[test]
    fn the_digest_is_jcs_of_the_fixed_object() {
        let s = KeyPair::from_seed(&[7; 32]).did();
        let input = json!({"description": "x", "command": "terraform destroy"});
        let pre = action_preimage(&s, "Bash", &input, "/work").unwrap();
        let text = String::from_utf8(pre.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"cwd\":\"/work\",\"input\":{{\"command\":\"terraform destroy\",\"description\":\"x\"}},\"session\":\"{s}\",\"tool\":\"Bash\",\"v\":1}}"
            )
        );
        let d = action_digest(&s, "Bash", &input, "/work").unwrap();
        assert!(is_digest(&d));
        assert_eq!(d, digest_of_preimage(&pre));
        // One byte of the command changes it.
        let other = json!({"description": "x", "command": "terraform destroY"});
        assert_ne!(d, action_digest(&s, "Bash", &other, "/work").unwrap());
        assert!(!is_digest(&d.to_uppercase()));
    }
}
