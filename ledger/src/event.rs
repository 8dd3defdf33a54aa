//! Events: what an actor signs.
//!
//! An event says who acted (`actor`, a did:key, and its `actor_kind`), in which
//! session, on whose behalf, where (`context`), what (`action` and `details`), who
//! approved it (`approval`, an attribute recorded at the time, never inferred
//! later), a salted digest of any payload, the actor's clock and a nonce.
//!
//! The actor's signature covers `EVENT_SIGNING_PREFIX ‖ JCS(event)`. The prefix
//! separates this use of the key from every other thing a DID key signs (JWS
//! credentials, signed requests), so a signature cannot be lifted from one
//! context into another.

use custody_identity::{Did, KeyPair, Signature};
use serde::{Deserialize, Serialize};

use crate::canonical::to_canonical;
use crate::time::Timestamp;
use crate::types::{ActionType, Context, Nonce, PayloadDigest, SessionId};
use crate::LedgerError;

/// Version of the event format this build writes and reads.
pub const EVENT_VERSION: u64 = 1;
/// Domain separation for event signatures.
pub const EVENT_SIGNING_PREFIX: &[u8] = b"custody/event/v1\n";
/// Upper bound on an event's canonical size: keeps entries small enough to stream
/// and to put in a proof; large bodies belong in payloads.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Who is acting. Approvals and activity reports are split along this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Agent,
    Human,
    Service,
}

impl ActorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ActorKind::Agent => "agent",
            ActorKind::Human => "human",
            ActorKind::Service => "service",
        }
    }
}

/// Who approved an action, recorded when it happened.
///
/// `seq` names the entry that backs the claim (FORMAT.md §3.1): for `human`
/// and `auto_review` the `approval` entry, for `policy` the ledger key's
/// `policy.decision`. An agent session's `tool.call` claiming any of the
/// three must name it, and the rules check that it exists, matches the call
/// and was not used before; without `seq` the claim is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum Approval {
    /// A person approved it; `approver` is their DID.
    Human {
        approver: Did,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A policy rule allowed it. With neither `policy` nor `seq` (written
    /// `{"by":"policy"}`), the call was decided with it: the entry just
    /// before the call is the ledger key's `policy.decision` that allowed
    /// it (FORMAT.md §3.3), which the broker appends with the call in one
    /// commit.
    Policy {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        policy: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// An automated reviewer allowed it; `reviewer` is the reviewer's DID
    /// when `seq` names its `approval` entry.
    AutoReview {
        reviewer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Nothing approved it: it ran under the session's standing permissions.
    None,
}

impl Approval {
    pub fn kind(&self) -> &'static str {
        match self {
            Approval::Human { .. } => "human",
            Approval::Policy { .. } => "policy",
            Approval::AutoReview { .. } => "auto_review",
            Approval::None => "none",
        }
    }

    /// A policy claim decided with the call: `{"by":"policy"}`, naming
    /// neither the policy nor the decision, which is the entry just before.
    pub fn decided_with_call() -> Approval {
        Approval::Policy {
            policy: String::new(),
            seq: None,
        }
    }

    /// Whether this is [`Approval::decided_with_call`].
    pub fn is_decided_with_call(&self) -> bool {
        matches!(self, Approval::Policy { policy, seq: None } if policy.is_empty())
    }

    /// The entry that backs the claim of the entry at `at`: the one it
    /// names, or for a claim decided with the call the entry just before.
    pub fn backing_seq(&self, at: u64) -> Option<u64> {
        match self.seq() {
            Some(s) => Some(s),
            None if self.is_decided_with_call() => at.checked_sub(1),
            None => None,
        }
    }

    /// The entry that backs the claim, if it names one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Approval::Human { seq, .. }
            | Approval::Policy { seq, .. }
            | Approval::AutoReview { seq, .. } => *seq,
            Approval::None => None,
        }
    }
}

/// A reference to a payload kept beside the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRef {
    /// `SHA-256(salt ‖ body)`; the 32-byte salt lives with the body, not here,
    /// so deleting the body also deletes what a guesser would need.
    pub digest: PayloadDigest,
    /// Size of the body in bytes.
    pub size: u64,
}

/// What an actor signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields in JCS order (by key), so plain serde_json writes them the way JCS
// does and `to_canonical_fast` can skip the canonicalizer (the verifier's
// check that a line is its JCS form). Only speed depends on this order.
pub struct Event {
    pub action: ActionType,
    pub actor: Did,
    pub actor_kind: ActorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    pub client_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Action-specific facts; always a JSON object (empty when there are none).
    pub details: serde_json::Map<String, serde_json::Value>,
    pub nonce: Nonce,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<Did>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    pub v: u64,
}

impl Event {
    /// A new event with a fresh nonce and the current time.
    pub fn new(actor: Did, actor_kind: ActorKind, action: ActionType) -> Self {
        Self {
            v: EVENT_VERSION,
            actor,
            actor_kind,
            session: None,
            on_behalf_of: None,
            context: None,
            action,
            details: serde_json::Map::new(),
            approval: None,
            payload: None,
            client_time: Timestamp::now(),
            nonce: Nonce::random(),
        }
    }

    /// The exact bytes the actor signs.
    pub fn signing_input(&self) -> Result<Vec<u8>, LedgerError> {
        signing_message(&to_canonical(self)?)
    }

    /// Signs with `key`, which must be the actor's.
    pub fn sign(self, key: &KeyPair) -> Result<SignedEvent, LedgerError> {
        if key.did() != self.actor {
            return Err(LedgerError::Malformed {
                what: "event",
                reason: format!("signing key {} is not the actor {}", key.did(), self.actor),
            });
        }
        if self.v != EVENT_VERSION {
            return Err(LedgerError::UnsupportedVersion {
                what: "event",
                found: self.v,
                supported: EVENT_VERSION,
            });
        }
        let sig = key.sign(&self.signing_input()?);
        Ok(SignedEvent { event: self, sig })
    }

    /// Checks `sig` as the actor's signature over this event (`verify_strict`).
    pub fn verify_signature(&self, sig: &Signature) -> Result<(), LedgerError> {
        self.verify_signature_canonical(sig, &to_canonical(self)?)
    }

    /// [`Event::verify_signature`] given `canonical`, this event's JCS bytes,
    /// when the caller already has them (the store, the verifier).
    pub fn verify_signature_canonical(
        &self,
        sig: &Signature,
        canonical: &[u8],
    ) -> Result<(), LedgerError> {
        let msg = signing_message(canonical)?;
        self.actor
            .public_key()
            .verify(&msg, sig)
            .map_err(|_| LedgerError::BadSignature {
                actor: self.actor.to_string(),
            })
    }

    /// A string detail, if present.
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.details.get(key).and_then(|v| v.as_str())
    }
}

/// What an actor signs, given the event's canonical bytes:
/// `EVENT_SIGNING_PREFIX ‖ canonical`, within [`MAX_EVENT_BYTES`].
pub(crate) fn signing_message(canonical: &[u8]) -> Result<Vec<u8>, LedgerError> {
    if canonical.len() > MAX_EVENT_BYTES {
        return Err(LedgerError::TooLarge {
            what: "event",
            size: canonical.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let mut msg = Vec::with_capacity(EVENT_SIGNING_PREFIX.len() + canonical.len());
    msg.extend_from_slice(EVENT_SIGNING_PREFIX);
    msg.extend_from_slice(canonical);
    Ok(msg)
}

/// An event with its actor's signature, as submitted to the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedEvent {
    pub event: Event,
    pub sig: Signature,
}

impl SignedEvent {
    /// Checks the signature against the actor's did:key (`verify_strict`).
    pub fn verify(&self) -> Result<(), LedgerError> {
        self.verify_canonical(&to_canonical(&self.event)?)
    }

    /// [`SignedEvent::verify`] given `canonical`, the event's JCS bytes
    /// (computed once by the caller, who also needs them for the entry line).
    pub fn verify_canonical(&self, canonical: &[u8]) -> Result<(), LedgerError> {
        if self.event.v != EVENT_VERSION {
            return Err(LedgerError::UnsupportedVersion {
                what: "event",
                found: self.event.v,
                supported: EVENT_VERSION,
            });
        }
        self.event.verify_signature_canonical(&self.sig, canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &KeyPair) -> Event {
        let mut e = Event::new(
            key.did(),
            ActorKind::Agent,
            ActionType::new("tool.call").unwrap(),
        );
        e.details.insert("tool".into(), "Bash".into());
        e.approval = Some(Approval::Policy {
            policy: "allow-read".into(),
            seq: None,
        });
        e
    }

    #[test]
    fn sign_verify_and_tamper() {
        let k = KeyPair::generate();
        let se = sample(&k).sign(&k).unwrap();
        se.verify().unwrap();
        let mut t = se.clone();
        t.event.actor_kind = ActorKind::Human;
        assert!(t.verify().is_err());
        let mut t = se.clone();
        t.event.details.insert("tool".into(), "Write".into());
        assert!(t.verify().is_err());
    }

    #[test]
    fn wrong_key_refused() {
        let k = KeyPair::generate();
        let other = KeyPair::generate();
        assert!(sample(&k).sign(&other).is_err());
    }

    #[test]
    fn json_shape() {
        let k = KeyPair::from_seed(&[3u8; 32]);
        let mut e = sample(&k);
        e.nonce = Nonce([0u8; 16]);
        e.client_time = Timestamp::parse("2026-11-24T19:20:00.000Z").unwrap();
        let text = String::from_utf8(to_canonical(&e).unwrap()).unwrap();
        assert!(text.starts_with("{\"action\":\"tool.call\",\"actor\":\"did:key:z6Mk"));
        assert!(text.contains("\"approval\":{\"by\":\"policy\",\"policy\":\"allow-read\"}"));
        assert!(!text.contains("null"));
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_fields_rejected() {
        let k = KeyPair::generate();
        let e = sample(&k);
        let mut v = serde_json::to_value(&e).unwrap();
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<Event>(v).is_err());
    }
}
