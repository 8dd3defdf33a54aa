//! Who may append what, and when: the ledger's rules as a state machine.
//!
//! [`Authority`] is fed every entry in sequence order. [`Authority::check`]
//! decides whether an event may be appended at a receive time and returns an
//! [`Admitted`] — the role that signed it, the table row that allowed it and
//! what it changes; [`Authority::apply`] folds exactly that into the state. A
//! refused event changes nothing ([`Authority::skip`] only moves the position).
//! The broker runs these rules as the store's admission gate and the offline
//! verifier runs them over an export, so a ledger the broker accepted and a
//! ledger the verifier accepts are the same set.
//!
//! The order of the checks is the same for every event (FORMAT.md §9):
//! 1. **A2 nonces** — no nonce twice.
//! 2. **The action table** ([`crate::actions::ACTION_TABLE`]) — the row for the
//!    action names the roles that may sign it and their `actor_kind`; a name in
//!    a reserved namespace without a row is refused for everyone. Nothing
//!    below runs for an event the table refuses.
//! 3. **A3 revocation** — a revoked signer (or a session whose delegator is
//!    revoked) may append nothing from the revocation's effective time on.
//! 4. **A4 sessions** — a session's events carry its session id, delegator
//!    and context, fall inside its validity window and delegated scopes, and
//!    come before its `session.end`.
//! 5. **The row's constraint** — genesis, trust update, session start,
//!    revocation (see [`crate::actions::Constraint`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use custody_identity::{Delegation, Did, Revocation};
use serde_json::Value;

use crate::actions::{self, ActionRule, Constraint, Role};
pub use crate::denial::{Denial, DenialCode};
use crate::entry::Entry;
use crate::event::{ActorKind, Event, SignedEvent};
use crate::time::Timestamp;
use crate::types::{Nonce, Seq};

fn deny(code: DenialCode, message: impl Into<String>) -> Denial {
    Denial::new(code, message)
}

/// A started session: the delegation it runs under.
#[derive(Clone, Debug)]
pub struct SessionGrant {
    pub delegation: Delegation,
    pub started_at: Seq,
    /// Its `session.end`, after which it may do nothing.
    pub ended_at: Option<Seq>,
}

/// A revocation recorded in the ledger.
///
/// It takes effect at the later of its `effective_at` and the receive time of
/// its `identity.revoke` entry: an append-only ledger cannot take back what it
/// accepted before the revocation reached it, so a backdated revocation does
/// not retroactively invalidate entries — and an admin's skewed clock cannot
/// either. A future `effective_at` schedules the cut-off. When a DID is
/// revoked more than once, the revocation that takes effect earliest holds.
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
                    DenialCode::TrustInvalid,
                    format!("trust details need a `{key}` array"),
                )
            })?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| {
                            deny(DenialCode::TrustInvalid, format!("`{key}` holds DIDs"))
                        })
                        .and_then(|s| {
                            Did::parse(s).map_err(|e| {
                                deny(DenialCode::TrustInvalid, format!("`{key}`: {e}"))
                            })
                        })
                })
                .collect()
        };
        Ok(Self {
            admins: list("admins")?,
            delegators: list("delegators")?,
        })
    }

    fn names(&self, did: &Did) -> bool {
        self.admins.contains(did) || self.delegators.contains(did)
    }
}

/// What the rules accepted an event as: who signed it, which row of the
/// action table allowed it, and the change it makes to the state. Only
/// [`Authority::check`] builds one, so [`Authority::apply`] can only fold in
/// what the rules accepted.
#[derive(Clone, Debug)]
pub struct Admitted {
    role: Role,
    rule: &'static ActionRule,
    change: Change,
}

impl Admitted {
    /// The role the signer held when the event was accepted.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The row of the action table that allowed it.
    pub fn rule(&self) -> &'static ActionRule {
        self.rule
    }
}

/// What an accepted event changes.
#[derive(Clone, Debug)]
enum Change {
    Nothing,
    Genesis { ledger: Box<Did>, trust: TrustRoots },
    Trust(TrustRoots),
    Session(Box<Delegation>),
    SessionEnd,
    Revocation(Box<Revocation>, String),
}

/// The authorization state of a ledger at some position.
#[derive(Debug)]
pub struct Authority {
    ledger: Option<Did>,
    trust: TrustRoots,
    sessions: HashMap<Did, SessionGrant>,
    revocations: HashMap<Did, RevocationRecord>,
    nonces: HashSet<Nonce>,
    /// Whether A2 (no nonce twice) is checked against `nonces`. A state
    /// built by [`Authority::restore`] leaves it to the store it sequences
    /// for (the broker's PostgreSQL backend holds the nonces in a unique
    /// index), so that it needs neither a replay of the ledger to start nor
    /// memory that grows with every entry.
    track_nonces: bool,
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
            track_nonces: true,
            next: Seq(0),
        }
    }

    /// The state at position `next` rebuilt from what it holds — the
    /// ledger DID, the trust roots, the started sessions and the revocation
    /// that holds for each subject — as a store kept it beside the entries,
    /// without replaying them. Such a state does not remember nonces: the
    /// caller must refuse a nonce already in the ledger before asking
    /// [`check_verified`](Self::check_verified) (see `track_nonces`).
    /// Otherwise it decides exactly as the state replayed up to `next`.
    pub fn restore(
        ledger: Did,
        trust: TrustRoots,
        sessions: impl IntoIterator<Item = (Did, SessionGrant)>,
        revocations: impl IntoIterator<Item = RevocationRecord>,
        next: Seq,
    ) -> Self {
        Self {
            ledger: Some(ledger),
            trust,
            sessions: sessions.into_iter().collect(),
            revocations: revocations
                .into_iter()
                .map(|r| (r.revocation.subject.clone(), r))
                .collect(),
            nonces: HashSet::new(),
            track_nonces: false,
            next,
        }
    }

    /// Whether this state checks nonces itself (false after
    /// [`restore`](Self::restore)).
    pub fn tracks_nonces(&self) -> bool {
        self.track_nonces
    }

    /// Moves a restored state past entries that change nothing in it (see
    /// [`crate::actions::changes_state`]): a broker that shares its ledger
    /// with others folds in only the entries that change the rules' state
    /// and skips the rest. Refused for a state that tracks nonces, whose
    /// nonce set would miss the skipped entries', and never moves back.
    pub fn advance_to(&mut self, next: Seq) {
        assert!(
            !self.track_nonces,
            "advance_to is for a restored state, which does not track nonces"
        );
        if next > self.next {
            self.next = next;
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

    /// The roles `did` holds now; a DID with none of the others is a
    /// [`Role::NewSession`] candidate.
    pub fn roles_of(&self, did: &Did) -> Vec<Role> {
        if self.ledger.as_ref() == Some(did) {
            return vec![Role::Ledger];
        }
        if self.sessions.contains_key(did) {
            return vec![Role::Session];
        }
        let mut roles = Vec::new();
        if self.trust.admins.contains(did) {
            roles.push(Role::Admin);
        }
        if self.trust.delegators.contains(did) {
            roles.push(Role::Delegator);
        }
        if roles.is_empty() {
            roles.push(Role::NewSession);
        }
        roles
    }

    /// Whether the ledger's state names `did` at all (ledger key, admin,
    /// delegator or started session).
    pub fn knows(&self, did: &Did) -> bool {
        self.roles_of(did) != [Role::NewSession]
    }

    /// Whether `did` is an admin that is not revoked at `at`: who may revoke
    /// and export.
    pub fn is_active_admin(&self, did: &Did, at: Timestamp) -> bool {
        self.trust.admins.contains(did) && self.revoked_at(did, at).is_none()
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
    pub fn check(&self, signed: &SignedEvent, at: Timestamp) -> Result<Admitted, Denial> {
        check_signature(signed)?;
        self.check_verified(&signed.event, at)
    }

    /// [`check`](Self::check) for an event whose signature was already
    /// verified: the part that depends on the ledger's state.
    pub fn check_verified(&self, ev: &Event, at: Timestamp) -> Result<Admitted, Denial> {
        // A2: nonces (a restored state's store checks them).
        if self.track_nonces && self.nonces.contains(&ev.nonce) {
            return Err(deny(
                DenialCode::ReplayedNonce,
                format!("nonce {} was already used", ev.nonce),
            ));
        }
        let action = ev.action.as_str();
        if self.next == Seq(0) && action != actions::GENESIS {
            return Err(deny(
                DenialCode::NoGenesis,
                format!("entry 0 must be ledger.genesis, found {action}"),
            ));
        }
        // The table, before anything that depends on who the signer is.
        let rule = actions::rule_for(action).ok_or_else(|| {
            deny(
                DenialCode::ReservedAction,
                format!(
                    "{action} is in a reserved namespace ({}.*) and is not an action of the ledger's table",
                    action.split('.').next().unwrap_or(action)
                ),
            )
        })?;
        let roles = self.signer_roles(ev)?;
        let (role, kinds) = roles
            .iter()
            .find_map(|r| rule.kinds_for(*r).map(|k| (*r, k)))
            .ok_or_else(|| refusal(rule, ev, &roles))?;
        if !kinds.contains(&ev.actor_kind) {
            return Err(deny(
                DenialCode::WrongActorKind,
                format!(
                    "{action} by the {role} acts as {}, not `{}`",
                    kinds
                        .iter()
                        .map(|k| format!("`{}`", k.as_str()))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    ev.actor_kind.as_str()
                ),
            ));
        }
        // A3: revocation.
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
        // A4: a session's events.
        if role == Role::Session {
            let grant = self
                .sessions
                .get(&ev.actor)
                .ok_or_else(|| deny(DenialCode::NoSession, "no such session"))?;
            check_session_event(grant, ev, at)?;
        }
        let change = match rule.constraint {
            Constraint::None if action == actions::SESSION_END => Change::SessionEnd,
            Constraint::None => Change::Nothing,
            Constraint::Genesis => self.check_genesis(ev)?,
            Constraint::TrustUpdate => Change::Trust(self.check_trust(ev)?),
            Constraint::SessionStart => self.check_session_start(ev, at)?,
            Constraint::Revocation => self.check_revocation(ev)?,
        };
        Ok(Admitted { role, rule, change })
    }

    /// The roles the event's signer holds. At entry 0 of a ledger whose DID
    /// is not pinned, the genesis signer is taken as the ledger key.
    fn signer_roles(&self, ev: &Event) -> Result<Vec<Role>, Denial> {
        if self.next == Seq(0) {
            return match &self.ledger {
                Some(l) if l != &ev.actor => Err(deny(
                    DenialCode::UnknownActor,
                    format!(
                        "ledger.genesis is signed by {}, not the ledger key {l}",
                        ev.actor
                    ),
                )),
                _ => Ok(vec![Role::Ledger]),
            };
        }
        if self.ledger.is_none() {
            return Err(deny(
                DenialCode::NoGenesis,
                "the ledger has no accepted genesis entry",
            ));
        }
        Ok(self.roles_of(&ev.actor))
    }

    fn check_genesis(&self, ev: &Event) -> Result<Change, Denial> {
        if self.next != Seq(0) {
            return Err(deny(
                DenialCode::Malformed,
                "ledger.genesis may only be entry 0",
            ));
        }
        let trust = TrustRoots::from_details(&ev.details)?;
        if trust.names(&ev.actor) {
            return Err(deny(
                DenialCode::TrustInvalid,
                "the ledger key cannot be an admin or delegator of its own ledger",
            ));
        }
        Ok(Change::Genesis {
            ledger: Box::new(ev.actor.clone()),
            trust,
        })
    }

    fn check_trust(&self, ev: &Event) -> Result<TrustRoots, Denial> {
        let trust = TrustRoots::from_details(&ev.details)?;
        if trust.names(&ev.actor) {
            return Err(deny(
                DenialCode::TrustInvalid,
                "the ledger key cannot be an admin or delegator of its own ledger",
            ));
        }
        if let Some(s) = self.sessions.keys().find(|s| trust.names(s)) {
            return Err(deny(
                DenialCode::TrustInvalid,
                format!("{s} is an agent session and cannot be an admin or delegator"),
            ));
        }
        Ok(trust)
    }

    fn check_session_start(&self, ev: &Event, at: Timestamp) -> Result<Change, Denial> {
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
            ended_at: None,
        };
        check_session_event(&grant, ev, at)?;
        Ok(Change::Session(Box::new(grant.delegation)))
    }

    /// A3: the signer states the revocation itself; the ledger key is never
    /// its subject; an admin may revoke another admin or itself, but not the
    /// last admin that no revocation names, so someone can always revoke.
    fn check_revocation(&self, ev: &Event) -> Result<Change, Denial> {
        let jws = ev.detail_str("revocation").ok_or_else(|| {
            deny(
                DenialCode::RevocationInvalid,
                "identity.revoke needs `details.revocation` (a compact JWS)",
            )
        })?;
        let rev = Revocation::verify(jws)
            .map_err(|e| deny(DenialCode::RevocationInvalid, e.to_string()))?;
        if rev.issuer != ev.actor {
            return Err(deny(
                DenialCode::RevocationInvalid,
                "the revocation statement is signed by someone other than the event's actor",
            ));
        }
        if let Some(subject) = ev.details.get("subject") {
            if subject.as_str() != Some(rev.subject.as_str()) {
                return Err(deny(
                    DenialCode::RevocationInvalid,
                    "`details.subject` differs from the revocation statement's subject",
                ));
            }
        }
        if self.ledger.as_ref() == Some(&rev.subject) {
            return Err(deny(
                DenialCode::CannotRevokeLedger,
                "the ledger key cannot be revoked: it signs every checkpoint (rotate it as SECURITY.md describes)",
            ));
        }
        if self.trust.admins.contains(&rev.subject) {
            let others = self
                .trust
                .admins
                .iter()
                .filter(|a| **a != rev.subject && !self.revocations.contains_key(*a))
                .count();
            if others == 0 {
                return Err(deny(
                    DenialCode::LastAdmin,
                    format!(
                        "{} is the last admin no revocation names; add another admin first",
                        rev.subject
                    ),
                ));
            }
        }
        Ok(Change::Revocation(Box::new(rev), jws.to_string()))
    }

    /// Folds an accepted entry into the state: what [`check`](Self::check)
    /// admitted, at the next position.
    pub fn apply(&mut self, entry: &Entry, admitted: Admitted) {
        let here = self.next;
        if self.track_nonces {
            self.nonces.insert(entry.event.nonce);
        }
        self.next = here.next();
        let actor = &entry.event.actor;
        match admitted.change {
            Change::Nothing => {}
            Change::Genesis { ledger, trust } => {
                self.ledger = Some(*ledger);
                self.trust = trust;
            }
            Change::Trust(trust) => self.trust = trust,
            Change::Session(delegation) => {
                self.sessions.insert(
                    actor.clone(),
                    SessionGrant {
                        delegation: *delegation,
                        started_at: here,
                        ended_at: None,
                    },
                );
            }
            Change::SessionEnd => {
                if let Some(g) = self.sessions.get_mut(actor) {
                    g.ended_at.get_or_insert(here);
                }
            }
            Change::Revocation(rev, jws) => {
                let effective = Timestamp::from_datetime(rev.effective_at).max(entry.received_at);
                let record = RevocationRecord {
                    revocation: *rev,
                    jws,
                    seq: here,
                    effective,
                };
                // The earliest effective revocation holds: a later admin
                // revocation cuts off an identity that a far-future one named.
                match self.revocations.get(&record.revocation.subject) {
                    Some(r) if r.effective <= record.effective => {}
                    _ => {
                        self.revocations
                            .insert(record.revocation.subject.clone(), record);
                    }
                }
            }
        }
    }

    /// Passes over an entry the rules refused (the verifier reports it): it
    /// changes nothing but the position.
    pub fn skip(&mut self) {
        self.next = self.next.next();
    }

    /// Checks a stored entry again and folds it in if the rules accept it
    /// (reopening a store, whose entries were admitted when appended). A
    /// refused entry changes nothing, so a ledger written under older, looser
    /// rules cannot carry what those rules let through into today's state.
    pub fn replay(&mut self, entry: &Entry) -> Result<Role, Denial> {
        match self.check_verified(&entry.event, entry.received_at) {
            Ok(a) => {
                let role = a.role;
                self.apply(entry, a);
                Ok(role)
            }
            Err(d) => {
                self.skip();
                Err(d)
            }
        }
    }
}

/// The denial for a signer that no signer of `rule` matches.
fn refusal(rule: &ActionRule, ev: &Event, roles: &[Role]) -> Denial {
    let action = ev.action.as_str();
    if roles == [Role::NewSession] && action != actions::SESSION_START {
        return deny(
            DenialCode::UnknownActor,
            format!(
                "{} is neither the ledger, a trusted admin or delegator, nor a started session",
                ev.actor
            ),
        );
    }
    let held: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    deny(
        DenialCode::for_refusal(rule.refusal),
        format!(
            "{action} may be appended by {} only; {} is {}",
            rule.signers_text(),
            ev.actor,
            held.join(" and ")
        ),
    )
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
    if let Some(end) = grant.ended_at {
        return Err(deny(
            DenialCode::SessionEnded,
            format!("session {} ended at entry {end}", ev.actor),
        ));
    }
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

/// The broker runs the rules as the store's admission gate.
#[cfg(feature = "store")]
impl crate::store::Gate for Authority {
    type Admitted = Admitted;

    fn precheck(event: &SignedEvent, canonical: &[u8]) -> Result<(), Denial> {
        check_signature_canonical(event, canonical)
    }

    fn admit(&mut self, event: &SignedEvent, received_at: Timestamp) -> Result<Admitted, Denial> {
        self.check_verified(&event.event, received_at)
    }

    fn applied(&mut self, entry: &Entry, admitted: Admitted) {
        self.apply(entry, admitted)
    }

    fn replay(&mut self, entry: &Entry) {
        // A refusal here means the entry was admitted under older rules; it
        // stays in the ledger (it was acknowledged) and the offline verifier
        // reports it, but it grants nothing now.
        let _ = Authority::replay(self, entry);
    }

    fn fresh(&self) -> Self {
        Authority::new(self.ledger.clone())
    }
}
