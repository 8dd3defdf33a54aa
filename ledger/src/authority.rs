//! Who may append what, and when.
//!
//! [`Authority`] is a state machine fed every entry in sequence order. Before an
//! event is appended, [`Authority::check`] decides whether its actor may do what
//! it says at the receive time; [`Authority::apply`] then folds the entry into the
//! state. The broker runs it as the store's admission gate; the offline verifier
//! runs the same rules over an export, so a ledger the broker accepted and a
//! ledger the verifier accepts are the same set.
//!
//! The rules (also in `docs/FORMAT.md`):
//! 1. Entry 0 is `ledger.genesis`, signed by the ledger key (actor kind
//!    `service`), naming the admins and delegators. `trust.update` by the ledger
//!    key replaces them later.
//! 2. The ledger key (kind `service`) may record anything: attestations such as
//!    `request.denied` or `credential.mint`.
//! 3. A human or CI identity listed as admin or delegator acts directly with kind
//!    `human` or `service`. Only admins may `identity.revoke`.
//! 4. An agent session acts with kind `agent` after its `session.start`, which it
//!    signs itself and which carries a delegation credential from a delegator
//!    naming this session key. Each later event must carry the same session id,
//!    `on_behalf_of` the delegator and the delegation's context, be received
//!    inside the validity window, and stay within the delegated scopes when it
//!    names a `scope`.
//! 5. An identity revoked by an admin may do nothing once the revocation is
//!    effective — from the later of its `effective_at` and the receive time of
//!    its `identity.revoke` entry; revoking a delegator also cuts every session
//!    it delegated.
//! 6. No nonce is used twice.

use std::collections::{BTreeSet, HashMap, HashSet};

use custody_identity::{Delegation, Did, Revocation};
use serde_json::Value;

use crate::actions;
use crate::entry::Entry;
use crate::event::{ActorKind, Event, SignedEvent};
use crate::time::Timestamp;
use crate::types::{Nonce, Seq};

/// Why an event is refused. `code` is stable (for APIs and reports); the message
/// names the problem for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub code: DenialCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialCode {
    BadSignature,
    ReplayedNonce,
    NoGenesis,
    UnknownActor,
    WrongActorKind,
    NotAdmin,
    NoSession,
    DelegationInvalid,
    ContextMismatch,
    OutOfScope,
    NotYetValid,
    Expired,
    Revoked,
    Malformed,
}

impl DenialCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            DenialCode::BadSignature => "bad_signature",
            DenialCode::ReplayedNonce => "replayed_nonce",
            DenialCode::NoGenesis => "no_genesis",
            DenialCode::UnknownActor => "unknown_actor",
            DenialCode::WrongActorKind => "wrong_actor_kind",
            DenialCode::NotAdmin => "not_admin",
            DenialCode::NoSession => "no_session",
            DenialCode::DelegationInvalid => "delegation_invalid",
            DenialCode::ContextMismatch => "context_mismatch",
            DenialCode::OutOfScope => "out_of_scope",
            DenialCode::NotYetValid => "not_yet_valid",
            DenialCode::Expired => "expired",
            DenialCode::Revoked => "revoked",
            DenialCode::Malformed => "malformed",
        }
    }
}

fn deny(code: DenialCode, message: impl Into<String>) -> Denial {
    Denial {
        code,
        message: message.into(),
    }
}

/// A started session: the delegation it runs under.
#[derive(Clone, Debug)]
pub struct SessionGrant {
    pub delegation: Delegation,
    pub started_at: Seq,
}

/// A revocation recorded in the ledger.
///
/// It takes effect at the later of its `effective_at` and the receive time of
/// its `identity.revoke` entry: an append-only ledger cannot take back what it
/// accepted before the revocation reached it, so a backdated revocation does
/// not retroactively invalidate entries — and an admin's skewed clock cannot
/// either. A future `effective_at` schedules the cut-off.
#[derive(Clone, Debug)]
pub struct RevocationRecord {
    pub revocation: Revocation,
    pub jws: String,
    /// The `identity.revoke` entry.
    pub seq: Seq,
    /// When it takes effect.
    pub effective: Timestamp,
}

/// The trust roots named by `ledger.genesis` / `trust.update`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustRoots {
    pub admins: BTreeSet<Did>,
    pub delegators: BTreeSet<Did>,
}

impl TrustRoots {
    /// The `details` object of a genesis or trust-update event.
    pub fn to_details(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "admins".into(),
            self.admins
                .iter()
                .map(|d| Value::from(d.as_str()))
                .collect(),
        );
        m.insert(
            "delegators".into(),
            self.delegators
                .iter()
                .map(|d| Value::from(d.as_str()))
                .collect(),
        );
        m
    }

    pub fn from_details(details: &serde_json::Map<String, Value>) -> Result<Self, Denial> {
        let list = |key: &str| -> Result<BTreeSet<Did>, Denial> {
            let arr = details.get(key).and_then(|v| v.as_array()).ok_or_else(|| {
                deny(
                    DenialCode::Malformed,
                    format!("trust details need a `{key}` array"),
                )
            })?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| deny(DenialCode::Malformed, format!("`{key}` holds DIDs")))
                        .and_then(|s| {
                            Did::parse(s)
                                .map_err(|e| deny(DenialCode::Malformed, format!("`{key}`: {e}")))
                        })
                })
                .collect()
        };
        Ok(Self {
            admins: list("admins")?,
            delegators: list("delegators")?,
        })
    }
}

/// The authorization state of a ledger at some position.
#[derive(Debug)]
pub struct Authority {
    ledger: Option<Did>,
    trust: TrustRoots,
    sessions: HashMap<Did, SessionGrant>,
    revocations: HashMap<Did, RevocationRecord>,
    nonces: HashSet<Nonce>,
    next: Seq,
}

impl Authority {
    /// State before entry 0. `ledger` is the expected ledger DID; `None` lets
    /// the genesis entry name it (the verifier without a pinned key).
    pub fn new(ledger: Option<Did>) -> Self {
        Self {
            ledger,
            trust: TrustRoots::default(),
            sessions: HashMap::new(),
            revocations: HashMap::new(),
            nonces: HashSet::new(),
            next: Seq(0),
        }
    }

    pub fn ledger(&self) -> Option<&Did> {
        self.ledger.as_ref()
    }

    pub fn trust(&self) -> &TrustRoots {
        &self.trust
    }

    pub fn session(&self, did: &Did) -> Option<&SessionGrant> {
        self.sessions.get(did)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&Did, &SessionGrant)> {
        self.sessions.iter()
    }

    pub fn revocations(&self) -> impl Iterator<Item = (&Did, &RevocationRecord)> {
        self.revocations.iter()
    }

    /// Position of the next entry.
    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// The revocation that makes `did` powerless at `at`, if any: its own, or its
    /// delegator's when `did` is a session.
    pub fn revoked_at(&self, did: &Did, at: Timestamp) -> Option<&RevocationRecord> {
        let effective = |d: &Did| self.revocations.get(d).filter(|r| r.effective <= at);
        effective(did).or_else(|| {
            self.sessions
                .get(did)
                .and_then(|g| effective(&g.delegation.issuer))
        })
    }

    /// Whether the actor of `signed` may append it at `at`. Does not change state.
    pub fn check(&self, signed: &SignedEvent, at: Timestamp) -> Result<(), Denial> {
        check_signature(signed)?;
        self.check_verified(&signed.event, at)
    }

    /// [`check`](Self::check) for an event whose signature was already
    /// verified: the part that depends on the ledger's state.
    pub fn check_verified(&self, ev: &Event, at: Timestamp) -> Result<(), Denial> {
        if self.nonces.contains(&ev.nonce) {
            return Err(deny(
                DenialCode::ReplayedNonce,
                format!("nonce {} was already used", ev.nonce),
            ));
        }
        if self.next == Seq(0) {
            return self.check_genesis(ev);
        }
        let action = ev.action.as_str();
        if action == actions::GENESIS {
            return Err(deny(
                DenialCode::Malformed,
                "ledger.genesis may only be entry 0",
            ));
        }
        let ledger = self
            .ledger
            .as_ref()
            .ok_or_else(|| deny(DenialCode::NoGenesis, "the ledger has no genesis entry"))?;
        if let Some(r) = self.revoked_at(&ev.actor, at) {
            return Err(deny(
                DenialCode::Revoked,
                format!(
                    "{} was revoked by {} (effective {}, entry {}): {}",
                    r.revocation.subject,
                    r.revocation.issuer,
                    r.effective,
                    r.seq,
                    r.revocation.reason
                ),
            ));
        }
        if &ev.actor == ledger {
            return match ev.actor_kind {
                ActorKind::Service => {
                    if action == actions::TRUST_UPDATE {
                        TrustRoots::from_details(&ev.details).map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                _ => Err(deny(
                    DenialCode::WrongActorKind,
                    "the ledger key acts as `service` only",
                )),
            };
        }
        if action == actions::SESSION_START {
            return self.check_session_start(ev, at);
        }
        if let Some(grant) = self.sessions.get(&ev.actor) {
            return check_session_event(grant, ev, at);
        }
        let is_admin = self.trust.admins.contains(&ev.actor);
        let is_delegator = self.trust.delegators.contains(&ev.actor);
        if is_admin || is_delegator {
            if ev.actor_kind == ActorKind::Agent {
                return Err(deny(
                    DenialCode::WrongActorKind,
                    format!(
                        "{} is a human/CI identity and cannot act as `agent`",
                        ev.actor
                    ),
                ));
            }
            if action == actions::IDENTITY_REVOKE {
                if !is_admin {
                    return Err(deny(
                        DenialCode::NotAdmin,
                        format!("{} is not an admin", ev.actor),
                    ));
                }
                parse_revocation(ev)?;
            }
            return Ok(());
        }
        Err(deny(
            DenialCode::UnknownActor,
            format!(
                "{} is neither the ledger, a trusted admin or delegator, nor a started session",
                ev.actor
            ),
        ))
    }

    fn check_genesis(&self, ev: &Event) -> Result<(), Denial> {
        if ev.action.as_str() != actions::GENESIS {
            return Err(deny(
                DenialCode::NoGenesis,
                format!("entry 0 must be ledger.genesis, found {}", ev.action),
            ));
        }
        if ev.actor_kind != ActorKind::Service {
            return Err(deny(
                DenialCode::WrongActorKind,
                "ledger.genesis is signed by the ledger key as `service`",
            ));
        }
        if let Some(ledger) = &self.ledger {
            if &ev.actor != ledger {
                return Err(deny(
                    DenialCode::UnknownActor,
                    format!(
                        "ledger.genesis is signed by {}, not the ledger key {}",
                        ev.actor, ledger
                    ),
                ));
            }
        }
        TrustRoots::from_details(&ev.details).map(|_| ())
    }

    fn check_session_start(&self, ev: &Event, at: Timestamp) -> Result<(), Denial> {
        if self.sessions.contains_key(&ev.actor) {
            return Err(deny(
                DenialCode::Malformed,
                format!("session {} was already started", ev.actor),
            ));
        }
        let delegation = parse_delegation(ev)?;
        if delegation.session != ev.actor {
            return Err(deny(
                DenialCode::DelegationInvalid,
                format!(
                    "the delegation names session {}, not the signer {}",
                    delegation.session, ev.actor
                ),
            ));
        }
        if !self.trust.delegators.contains(&delegation.issuer) {
            return Err(deny(
                DenialCode::DelegationInvalid,
                format!("{} is not a trusted delegator", delegation.issuer),
            ));
        }
        if let Some(r) = self.revoked_at(&delegation.issuer, at) {
            return Err(deny(
                DenialCode::Revoked,
                format!("the delegator {} was revoked", r.revocation.subject),
            ));
        }
        let grant = SessionGrant {
            delegation,
            started_at: self.next,
        };
        check_session_event(&grant, ev, at)
    }

    /// Folds an appended entry into the state. The entry must have passed
    /// [`check`](Self::check) (the verifier also applies entries that failed, to
    /// keep going; the state then reflects what the entry claims).
    pub fn apply(&mut self, entry: &Entry) {
        let ev = &entry.event;
        self.nonces.insert(ev.nonce);
        self.next = entry.seq.next();
        match ev.action.as_str() {
            actions::GENESIS if entry.seq == Seq(0) => {
                if self.ledger.is_none() {
                    self.ledger = Some(ev.actor.clone());
                }
                if let Ok(t) = TrustRoots::from_details(&ev.details) {
                    self.trust = t;
                }
            }
            actions::TRUST_UPDATE if Some(&ev.actor) == self.ledger.as_ref() => {
                if let Ok(t) = TrustRoots::from_details(&ev.details) {
                    self.trust = t;
                }
            }
            actions::SESSION_START => {
                if let Ok(d) = parse_delegation(ev) {
                    if d.session == ev.actor && !self.sessions.contains_key(&ev.actor) {
                        self.sessions.insert(
                            ev.actor.clone(),
                            SessionGrant {
                                delegation: d,
                                started_at: entry.seq,
                            },
                        );
                    }
                }
            }
            actions::IDENTITY_REVOKE => {
                if let Ok((rev, jws)) = parse_revocation(ev) {
                    let stated = Timestamp::from_datetime(rev.effective_at);
                    let effective = stated.max(entry.received_at);
                    // The first revocation of an identity stands.
                    self.revocations
                        .entry(rev.subject.clone())
                        .or_insert(RevocationRecord {
                            revocation: rev,
                            jws,
                            seq: entry.seq,
                            effective,
                        });
                }
            }
            _ => {}
        }
    }
}

/// The stateless part of the rules: the actor's signature.
pub fn check_signature(signed: &SignedEvent) -> Result<(), Denial> {
    signed
        .verify()
        .map_err(|e| deny(DenialCode::BadSignature, e.to_string()))
}

/// [`check_signature`] with the event's canonical bytes already computed.
pub fn check_signature_canonical(signed: &SignedEvent, canonical: &[u8]) -> Result<(), Denial> {
    signed
        .verify_canonical(canonical)
        .map_err(|e| deny(DenialCode::BadSignature, e.to_string()))
}

fn check_session_event(grant: &SessionGrant, ev: &Event, at: Timestamp) -> Result<(), Denial> {
    let d = &grant.delegation;
    if ev.actor_kind != ActorKind::Agent {
        return Err(deny(
            DenialCode::WrongActorKind,
            format!("session {} acts as `agent` only", ev.actor),
        ));
    }
    if ev.session.as_ref().map(|s| s.as_str()) != Some(d.id.as_str()) {
        return Err(deny(
            DenialCode::NoSession,
            format!("event must carry session id {}", d.id),
        ));
    }
    if ev.on_behalf_of.as_ref() != Some(&d.issuer) {
        return Err(deny(
            DenialCode::DelegationInvalid,
            format!("event must be on behalf of the delegator {}", d.issuer),
        ));
    }
    if ev.context.as_ref().map(|c| c.as_str()) != Some(d.context.as_str()) {
        return Err(deny(
            DenialCode::ContextMismatch,
            format!("the delegation is for context {:?}", d.context),
        ));
    }
    if at < Timestamp::from_datetime(d.not_before) {
        return Err(deny(
            DenialCode::NotYetValid,
            format!(
                "the delegation is valid from {}",
                Timestamp::from_datetime(d.not_before)
            ),
        ));
    }
    if at >= Timestamp::from_datetime(d.not_after) {
        return Err(deny(
            DenialCode::Expired,
            format!(
                "the delegation expired at {}",
                Timestamp::from_datetime(d.not_after)
            ),
        ));
    }
    if let Some(scope) = ev.details.get("scope") {
        let scope = scope
            .as_str()
            .ok_or_else(|| deny(DenialCode::Malformed, "`scope` must be a string"))?;
        if !d.allows_scope(scope) {
            return Err(deny(
                DenialCode::OutOfScope,
                format!(
                    "scope {scope:?} is not delegated (delegated: {:?})",
                    d.scopes
                ),
            ));
        }
    }
    Ok(())
}

fn parse_delegation(ev: &Event) -> Result<Delegation, Denial> {
    let jws = ev.detail_str("delegation").ok_or_else(|| {
        deny(
            DenialCode::DelegationInvalid,
            "session.start needs `details.delegation` (a compact JWS)",
        )
    })?;
    Delegation::verify(jws).map_err(|e| deny(DenialCode::DelegationInvalid, e.to_string()))
}

fn parse_revocation(ev: &Event) -> Result<(Revocation, String), Denial> {
    let jws = ev.detail_str("revocation").ok_or_else(|| {
        deny(
            DenialCode::Malformed,
            "identity.revoke needs `details.revocation` (a compact JWS)",
        )
    })?;
    let rev = Revocation::verify(jws).map_err(|e| deny(DenialCode::Malformed, e.to_string()))?;
    if rev.issuer != ev.actor {
        return Err(deny(
            DenialCode::Malformed,
            "the revocation statement is signed by someone other than the event's actor",
        ));
    }
    Ok((rev, jws.to_string()))
}

/// The broker runs the rules as the store's admission gate.
#[cfg(feature = "store")]
impl crate::store::Gate for Authority {
    fn precheck(event: &SignedEvent, canonical: &[u8]) -> Result<(), crate::store::Rejection> {
        check_signature_canonical(event, canonical).map_err(|d| crate::store::Rejection {
            code: d.code.as_str().to_string(),
            message: d.message,
        })
    }

    fn admit(
        &mut self,
        event: &SignedEvent,
        received_at: Timestamp,
    ) -> Result<(), crate::store::Rejection> {
        self.check_verified(&event.event, received_at)
            .map_err(|d| crate::store::Rejection {
                code: d.code.as_str().to_string(),
                message: d.message,
            })
    }

    fn applied(&mut self, entry: &Entry) {
        self.apply(entry)
    }

    fn fresh(&self) -> Self {
        Authority::new(self.ledger.clone())
    }
}
