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
//!    revocation, and the oversight rule A8: approvals bound to one action,
//!    the policy's decisions, and the approval a session's event claims
//!    (see [`crate::actions::Constraint`] and [`crate::oversight`]).
//!
//! Over 800 lines on purpose: check and apply are the two halves of
//! one state machine, and an auditor should read every rule and the state it
//! changes in one place. What could leave it without splitting a rule: the
//! oversight checks (A8) into `oversight.rs`, which already holds their state.

use std::collections::{BTreeSet, HashMap, HashSet};

use custody_identity::{Delegation, Did, Revocation};
use serde_json::Value;

use crate::actions::{self, ActionRule, Constraint, Role};
pub use crate::denial::{Denial, DenialCode};
use crate::entry::Entry;
use crate::event::{ActorKind, Approval, Event, SignedEvent};
use crate::oversight::{
    self, ApprovalRecord, ApprovedBy, DecisionRecord, HoldRecord, Oversight, Requires,
};
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
///
/// `approvers` and `reviewers` are optional members of the details (absent
/// means none), so the genesis of a ledger written before they existed reads
/// the same, and a ledger that names none writes the same bytes as before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustRoots {
    pub admins: BTreeSet<Did>,
    pub delegators: BTreeSet<Did>,
    /// People who may approve any session's held actions.
    pub approvers: BTreeSet<Did>,
    /// Automated reviewers (service identities) whose approvals count as
    /// `auto_review`, never for an action held for a person.
    pub reviewers: BTreeSet<Did>,
}

impl TrustRoots {
    /// The `details` object of a genesis or trust-update event.
    pub fn to_details(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        let list = |set: &BTreeSet<Did>| -> Value {
            set.iter().map(|d| Value::from(d.as_str())).collect()
        };
        m.insert("admins".into(), list(&self.admins));
        m.insert("delegators".into(), list(&self.delegators));
        if !self.approvers.is_empty() {
            m.insert("approvers".into(), list(&self.approvers));
        }
        if !self.reviewers.is_empty() {
            m.insert("reviewers".into(), list(&self.reviewers));
        }
        m
    }

    pub fn from_details(details: &serde_json::Map<String, Value>) -> Result<Self, Denial> {
        let list = |key: &str, required: bool| -> Result<BTreeSet<Did>, Denial> {
            let arr = match details.get(key) {
                None if !required => return Ok(BTreeSet::new()),
                v => v.and_then(|v| v.as_array()),
            };
            let arr = arr.ok_or_else(|| {
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
            admins: list("admins", true)?,
            delegators: list("delegators", true)?,
            approvers: list("approvers", false)?,
            reviewers: list("reviewers", false)?,
        })
    }

    fn names(&self, did: &Did) -> bool {
        self.admins.contains(did)
            || self.delegators.contains(did)
            || self.approvers.contains(did)
            || self.reviewers.contains(did)
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

    /// The allowing `policy.decision` this `tool.call` used, if any. A store
    /// that appends the decision and the call in one transaction (the
    /// hook's call decided with its check) need not mark either for
    /// [`Authority::restore_oversight`]: a used allow backs no later call,
    /// and a claim on it is refused the same way (`approval_unverified`)
    /// whether the state knows it as used or not at all.
    pub fn used_decision(&self) -> Option<u64> {
        match self.change {
            Change::UsedDecision(seq) => Some(seq),
            _ => None,
        }
    }

    /// Whether [`Authority::restore_oversight`] needs this entry: it made,
    /// or used, an oversight record (an approval, an allowing or holding
    /// decision, a call that used one), or it set the trust roots (before
    /// which no approval is restored). A store that marks these when it
    /// appends them reads only them on start, not every entry of the window.
    pub fn restores_oversight(&self) -> bool {
        match self.change {
            Change::Approval(_)
            | Change::Allowed(_)
            | Change::Held(_)
            | Change::UsedApproval(_)
            | Change::UsedDecision(_)
            | Change::Genesis { .. }
            | Change::Trust(_) => true,
            Change::Nothing | Change::Session(_) | Change::SessionEnd | Change::Revocation(..) => {
                false
            }
        }
    }
}

/// What [`Authority::restore_oversight`] folded in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoredOversight {
    /// Entries read (before the restored position).
    pub entries: usize,
    /// Approvals recorded before the last `trust.update` among them, not
    /// restored (fail closed: the call is held again).
    pub forgotten_approvals: usize,
}

/// What an accepted event changes.
#[derive(Clone, Debug)]
enum Change {
    Nothing,
    Genesis {
        ledger: Box<Did>,
        trust: TrustRoots,
    },
    Trust(TrustRoots),
    Session(Box<Delegation>),
    SessionEnd,
    Revocation(Box<Revocation>, String),
    /// An `approval` bound to one action.
    Approval(Box<ApprovalRecord>),
    /// A policy decision that allowed a call (referenceable by it).
    Allowed(Box<DecisionRecord>),
    /// A policy decision that held a call for an approval.
    Held(Box<(Did, String, HoldRecord)>),
    /// A `tool.call` that used an approval, or an allowing decision.
    UsedApproval(u64),
    UsedDecision(u64),
}

/// The authorization state of a ledger at some position.
#[derive(Debug)]
pub struct Authority {
    ledger: Option<Did>,
    trust: TrustRoots,
    sessions: HashMap<Did, SessionGrant>,
    revocations: HashMap<Did, RevocationRecord>,
    nonces: HashSet<Nonce>,
    oversight: Oversight,
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
            oversight: Oversight::default(),
            track_nonces: true,
            next: Seq(0),
        }
    }

    /// What the rules hold about approvals, decisions and held actions.
    pub fn oversight(&self) -> &Oversight {
        &self.oversight
    }

    /// The state at position `next` rebuilt from what it holds — the
    /// ledger DID, the trust roots, the started sessions and the revocation
    /// that holds for each subject — as a store kept it beside the entries,
    /// without replaying them. Such a state does not remember nonces: the
    /// caller must refuse a nonce already in the ledger before asking
    /// [`check_verified`](Self::check_verified) (see `track_nonces`). Nor
    /// does it hold the oversight records (approvals, holds, allowing
    /// decisions, their use) until
    /// [`restore_oversight`](Self::restore_oversight) rebuilds them from the
    /// ledger's last two days; with them, it decides exactly as the state
    /// replayed up to `next`.
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
            // Approvals, decisions and holds are not kept beside the
            // entries: they come from the ledger's last two days, through
            // `restore_oversight`. Until then the state knows those recorded
            // after `next` only and refuses a claim on an earlier one, but
            // it does not know an earlier hold either.
            oversight: Oversight::default(),
            track_nonces: false,
            next,
        }
    }

    /// Gives a [`restore`](Self::restore)d state the oversight records
    /// (rule A8: open approvals and refusals, the ledger key's allowing
    /// decisions, held actions, and which calls used what) that a replay of
    /// the whole ledger would hold at `next`, from the entries received
    /// within [`oversight::RESTORE_HORIZON_MS`] before the last one.
    ///
    /// `entries` are those entries before `next` in seq order (any others
    /// are passed over); entries that A8 does not check may be left out.
    /// Each is checked by the same A8 code that
    /// [`check_verified`](Self::check_verified) runs, at its own
    /// `received_at`, and only its oversight effect is kept: sessions,
    /// revocations and the trust roots come from the store's tables. The rules before A8 (nonces, the
    /// signer's revocation, the session's window) are not checked again:
    /// the store checked them against those same tables when it sequenced
    /// the entry.
    ///
    /// Why the horizon is enough: every record ends (an approval 24 hours
    /// after it is recorded at the latest, a hold 24 hours, an allow one),
    /// and every lookup checks that end against the time it is asked at, so
    /// records older than a day answer nothing from `next` on. Whether a
    /// record of the last day exists at all can depend on a hold recorded up
    /// to a day before it (a reviewer's approval of a call held for a
    /// person is refused), hence two days.
    ///
    /// The one state this cannot rebuild is the trust roots before a
    /// `trust.update` within the entries: an approval recorded before the
    /// last such update is forgotten (counted in the result), since who
    /// signed it as what is not known. That fails closed: the call is held
    /// again and a person approves it again.
    pub fn restore_oversight(&mut self, entries: &[Entry]) -> RestoredOversight {
        assert!(
            !self.track_nonces,
            "restore_oversight is for a restored state"
        );
        let before = |e: &&Entry| e.seq < self.next;
        let trust_since = entries
            .iter()
            .filter(before)
            .filter(|e| {
                matches!(
                    e.event.action.as_str(),
                    actions::GENESIS | actions::TRUST_UPDATE
                )
            })
            .map(|e| e.seq)
            .max();
        let mut done = RestoredOversight::default();
        let mut last: Option<Seq> = None;
        for e in entries {
            if e.seq >= self.next || last.is_some_and(|l| e.seq <= l) {
                continue;
            }
            last = Some(e.seq);
            done.entries += 1;
            let Ok((rule, role)) = self.row_and_role(&e.event) else {
                continue;
            };
            if !rule.constraint.is_oversight() {
                continue;
            }
            if rule.constraint == Constraint::Approval && trust_since.is_some_and(|t| e.seq < t) {
                done.forgotten_approvals += 1;
                continue;
            }
            // A refusal here is one a full replay makes too: it folds nothing.
            if let Ok(change) = self.check_constraint(rule, role, &e.event, e.received_at) {
                self.oversight.prune(e.received_at);
                self.apply_oversight(e.seq, change);
            }
        }
        done
    }

    /// Whether a stored entry's line can change what
    /// [`restore_oversight`](Self::restore_oversight) rebuilds: an
    /// `approval`, a `policy.decision` or a `tool.call` (for any other
    /// event A8 changes nothing). Read from the fixed start of a canonical
    /// line, `{"event":{"action":"…"` (JCS sorts `event` first among the
    /// entry's members and `action` first among the event's), so a store
    /// skips parsing the rest; a line that does not start so is kept, to be
    /// parsed and judged.
    pub fn may_change_oversight(line: &[u8]) -> bool {
        const START: &[u8] = b"{\"event\":{\"action\":\"";
        let Some(rest) = line.strip_prefix(START) else {
            return true;
        };
        let Some(end) = rest.iter().position(|b| *b == b'"') else {
            return true;
        };
        matches!(
            std::str::from_utf8(&rest[..end]),
            Ok(actions::APPROVAL | actions::POLICY_DECISION | actions::TOOL_CALL) | Err(_)
        )
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
        if self.trust.approvers.contains(did) {
            roles.push(Role::Approver);
        }
        if self.trust.reviewers.contains(did) {
            roles.push(Role::Reviewer);
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
        let (rule, role) = self.row_and_role(ev)?;
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
        let change = self.check_constraint(rule, role, ev, at)?;
        Ok(Admitted { role, rule, change })
    }

    /// The action table's row for the event and the role its signer signs
    /// it as: the table before anything that depends on who the signer is,
    /// then the row's signers and their `actor_kind`.
    fn row_and_role(&self, ev: &Event) -> Result<(&'static ActionRule, Role), Denial> {
        let action = ev.action.as_str();
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
        // A DID may hold several roles (a delegator that is also a
        // reviewer): the row's signer that allows the event's actor_kind
        // decides, else the first the row names (for the refusal).
        let (role, kinds) = roles
            .iter()
            .find_map(|r| {
                rule.kinds_for(*r)
                    .filter(|k| k.contains(&ev.actor_kind))
                    .map(|k| (*r, k))
            })
            .or_else(|| {
                roles
                    .iter()
                    .find_map(|r| rule.kinds_for(*r).map(|k| (*r, k)))
            })
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
        Ok((rule, role))
    }

    /// Step 5: the row's constraint, and what the event changes.
    fn check_constraint(
        &self,
        rule: &'static ActionRule,
        role: Role,
        ev: &Event,
        at: Timestamp,
    ) -> Result<Change, Denial> {
        Ok(match rule.constraint {
            Constraint::None if ev.action.as_str() == actions::SESSION_END => Change::SessionEnd,
            Constraint::None => Change::Nothing,
            Constraint::Genesis => self.check_genesis(ev)?,
            Constraint::TrustUpdate => Change::Trust(self.check_trust(ev)?),
            Constraint::SessionStart => self.check_session_start(ev, at)?,
            Constraint::Revocation => self.check_revocation(ev)?,
            Constraint::Approval => self.check_approval(ev, role, at)?,
            Constraint::PolicyDecision => self.check_policy_decision(ev, at)?,
            Constraint::ApprovalClaims if role == Role::Session => {
                self.check_approval_claim(ev, at)?
            }
            // People sign their own actions: what they say approved them is
            // their own word, under their own key.
            Constraint::ApprovalClaims => Change::Nothing,
        })
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

    /// A8: an `approval` bound to one action of a started session, by
    /// someone who may decide that session's actions. A reviewer's approval
    /// is `auto_review` and never counts for an action held for a person.
    fn check_approval(&self, ev: &Event, role: Role, at: Timestamp) -> Result<Change, Denial> {
        let invalid = |m: String| deny(DenialCode::ApprovalInvalid, m);
        let approve = match ev.detail_str("decision") {
            Some("approve") => true,
            Some("deny") => false,
            _ => {
                return Err(invalid(
                    "an approval's `details.decision` is \"approve\" or \"deny\"".into(),
                ))
            }
        };
        let by = if role == Role::Reviewer {
            ApprovedBy::AutoReview
        } else {
            ApprovedBy::Human
        };
        let Some(digest) = ev.details.get("action_digest") else {
            // A person's decision not bound to an action (as ledgers wrote
            // before approvals were): kept, but it backs no tool call.
            if by == ApprovedBy::AutoReview {
                return Err(invalid(
                    "a reviewer's approval names the action it decides (`details.action_digest`)"
                        .into(),
                ));
            }
            return Ok(Change::Nothing);
        };
        let digest = digest
            .as_str()
            .filter(|d| oversight::is_digest(d))
            .ok_or_else(|| invalid("`details.action_digest` is 64 lowercase hex digits".into()))?;
        let session = ev
            .detail_str("session")
            .and_then(|s| Did::parse(s).ok())
            .ok_or_else(|| {
                invalid(
                    "`details.session` is the DID of the session whose action is decided".into(),
                )
            })?;
        let grant = self
            .sessions
            .get(&session)
            .ok_or_else(|| invalid(format!("{session} is not a started session")))?;
        let expires = ev
            .detail_str("expires_at")
            .and_then(|t| Timestamp::parse(t).ok())
            .ok_or_else(|| invalid("`details.expires_at` is a timestamp (FORMAT.md §2)".into()))?;
        if expires <= at {
            return Err(invalid(format!(
                "the approval expires at {expires}, before the ledger received it ({at})"
            )));
        }
        if expires > at.plus_millis(oversight::MAX_APPROVAL_TTL_MS) {
            return Err(invalid(format!(
                "an approval is valid for at most 24 hours after it is recorded; this one says {expires}"
            )));
        }
        if ev.details.get("single_use") != Some(&Value::Bool(true)) {
            return Err(invalid(
                "`details.single_use` must be true: an approval lets one call through".into(),
            ));
        }
        // Who may decide this session's actions: any admin or listed
        // approver, the session's own delegator, or a listed reviewer.
        let roles = self.roles_of(&ev.actor);
        let may = match by {
            ApprovedBy::AutoReview => roles.contains(&Role::Reviewer),
            ApprovedBy::Human => {
                roles.contains(&Role::Admin)
                    || roles.contains(&Role::Approver)
                    || (roles.contains(&Role::Delegator) && grant.delegation.issuer == ev.actor)
            }
        };
        if !may {
            return Err(deny(
                DenialCode::NotApprover,
                format!(
                    "{} may not decide the actions of session {session}: its delegator {}, an admin or a listed approver may",
                    ev.actor, grant.delegation.issuer
                ),
            ));
        }
        if let Some(h) = self.oversight.hold(&session, digest, at) {
            if !h.requires.accepts(by) {
                return Err(deny(
                    DenialCode::HumanApprovalRequired,
                    format!(
                        "the policy held this action for a person (entry {}); an automated reviewer cannot approve it",
                        h.seq
                    ),
                ));
            }
        }
        Ok(Change::Approval(Box::new(ApprovalRecord {
            seq: 0,
            session,
            digest: digest.to_string(),
            approve,
            expires,
            by,
            signer: ev.actor.clone(),
            received: at,
            used_at: None,
        })))
    }

    /// A8: a `policy.decision` that names its action (`details.action_digest`,
    /// `details.session_did`): an allow can back that call's `tool.call`, an
    /// `approval_required` makes the action need an approval. A decision
    /// without a digest (as ledgers wrote before) changes nothing.
    fn check_policy_decision(&self, ev: &Event, at: Timestamp) -> Result<Change, Denial> {
        let Some(digest) = ev.details.get("action_digest") else {
            return Ok(Change::Nothing);
        };
        let bad = |m: &str| deny(DenialCode::Malformed, format!("policy.decision: {m}"));
        let digest = digest
            .as_str()
            .filter(|d| oversight::is_digest(d))
            .ok_or_else(|| bad("`action_digest` is 64 lowercase hex digits"))?
            .to_string();
        let session = ev
            .detail_str("session_did")
            .and_then(|s| Did::parse(s).ok())
            .filter(|s| self.sessions.contains_key(s))
            .ok_or_else(|| bad("`session_did` names no started session"))?;
        match ev.detail_str("decision") {
            Some("allow") => {
                let policies = ev
                    .details
                    .get("policies")
                    .and_then(|p| p.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Change::Allowed(Box::new(DecisionRecord {
                    seq: 0,
                    session,
                    digest,
                    policies,
                    received: at,
                    used_at: None,
                })))
            }
            Some("approval_required") => {
                let requires = ev
                    .detail_str("requires")
                    .and_then(Requires::parse)
                    .ok_or_else(|| bad("`requires` is \"human\" or \"review\""))?;
                Ok(Change::Held(Box::new((
                    session,
                    digest,
                    HoldRecord {
                        seq: 0,
                        requires,
                        received: at,
                    },
                ))))
            }
            Some("deny") => Ok(Change::Nothing),
            _ => Err(bad(
                "`decision` is \"allow\", \"deny\" or \"approval_required\"",
            )),
        }
    }

    /// A8: what a session's event says approved it. Only a `tool.call` may
    /// claim an approval, and the claim must name the entry that backs it
    /// (`approval.seq`): an open approval by the person or reviewer it names,
    /// for this session and this action (`details.action_digest`), unexpired
    /// and unused; or the ledger key's allowing `policy.decision` for the
    /// same. An action the policy held needs an approval that its rule
    /// accepts, whatever the call claims.
    fn check_approval_claim(&self, ev: &Event, at: Timestamp) -> Result<Change, Denial> {
        let unverified = |m: String| deny(DenialCode::ApprovalUnverified, m);
        let claim = match &ev.approval {
            None | Some(Approval::None) => None,
            Some(a) => Some(a),
        };
        if ev.action.as_str() != actions::TOOL_CALL {
            return match claim {
                Some(c) => Err(unverified(format!(
                    "only a tool.call may claim an approval; this {} claims one by {}",
                    ev.action,
                    c.kind()
                ))),
                None => Ok(Change::Nothing),
            };
        }
        let digest =
            match ev.details.get("action_digest") {
                None => None,
                Some(v) => Some(v.as_str().filter(|d| oversight::is_digest(d)).ok_or_else(
                    || unverified("`details.action_digest` is 64 lowercase hex digits".into()),
                )?),
            };
        let hold = digest.and_then(|d| self.oversight.hold(&ev.actor, d, at));
        let floor = |h: &HoldRecord, what: &str| {
            deny(
                DenialCode::HumanApprovalRequired,
                format!(
                    "the policy held this action for {} (entry {}); {what}",
                    match h.requires {
                        Requires::Human => "a person's approval",
                        Requires::Review => "an approval",
                    },
                    h.seq
                ),
            )
        };
        let Some(claim) = claim else {
            return match hold {
                Some(h) => Err(floor(h, "the call names no approval")),
                None => Ok(Change::Nothing),
            };
        };
        let digest = digest.ok_or_else(|| {
            unverified(format!(
                "the tool.call claims approval by {} but does not name its action (`details.action_digest`)",
                claim.kind()
            ))
        })?;
        let seq = claim.backing_seq(self.next.0).ok_or_else(|| {
            unverified(format!(
                "the tool.call claims approval by {} but names no entry that backs it (`approval.seq`)",
                claim.kind()
            ))
        })?;
        match claim {
            Approval::Human { .. } | Approval::AutoReview { .. } => {
                let r = self.oversight.approval(seq).ok_or_else(|| {
                    unverified(format!(
                        "entry {seq} is not an approval this call can use (not an approval bound to an action, later than the call, or expired)"
                    ))
                })?;
                if r.session != ev.actor {
                    return Err(unverified(format!(
                        "approval {seq} decides an action of session {}, not of this one",
                        r.session
                    )));
                }
                if r.digest != digest {
                    return Err(unverified(format!(
                        "approval {seq} is for another action (digest {}), not this call's ({digest})",
                        r.digest
                    )));
                }
                if !r.approve {
                    return Err(unverified(format!(
                        "entry {seq} refused this action, by {}",
                        r.signer
                    )));
                }
                if let Some(u) = r.used_at {
                    return Err(unverified(format!(
                        "approval {seq} was used by entry {u}; an approval lets one call through"
                    )));
                }
                if at >= r.expires {
                    return Err(unverified(format!(
                        "approval {seq} expired at {}",
                        r.expires
                    )));
                }
                let (claimed_by, claimed) = match claim {
                    Approval::Human { approver, .. } => (ApprovedBy::Human, approver.as_str()),
                    Approval::AutoReview { reviewer, .. } => {
                        (ApprovedBy::AutoReview, reviewer.as_str())
                    }
                    _ => unreachable!("matched above"),
                };
                if r.by != claimed_by || r.signer.as_str() != claimed {
                    return Err(unverified(format!(
                        "approval {seq} is by {} ({}), not by {} ({claimed})",
                        r.by.as_str(),
                        r.signer,
                        claimed_by.as_str()
                    )));
                }
                if let Some(h) = hold {
                    if !h.requires.accepts(r.by) {
                        return Err(floor(h, "an automated reviewer's approval does not count"));
                    }
                }
                Ok(Change::UsedApproval(seq))
            }
            Approval::Policy { policy, .. } => {
                if let Some(h) = hold {
                    return Err(floor(h, "a policy cannot approve it"));
                }
                if policy.is_empty() && !claim.is_decided_with_call() {
                    return Err(unverified(format!(
                        "the tool.call claims approval by policy decision {seq} but names no policy (only a call decided with its decision, the entry just before it, names neither)"
                    )));
                }
                let d = self.oversight.decision(seq, at).ok_or_else(|| {
                    unverified(format!(
                        "entry {seq} is not a policy decision that allowed this call (not the ledger key's allow for an action, later than the call, or older than an hour)"
                    ))
                })?;
                if d.session != ev.actor || d.digest != digest {
                    return Err(unverified(format!(
                        "policy decision {seq} allowed another call (session {}, digest {})",
                        d.session, d.digest
                    )));
                }
                if let Some(u) = d.used_at {
                    return Err(unverified(format!(
                        "policy decision {seq} was used by entry {u}"
                    )));
                }
                if !policy.is_empty() && !d.policies.iter().any(|p| p == policy) {
                    return Err(unverified(format!(
                        "policy decision {seq} names {:?}, not {policy:?}",
                        d.policies
                    )));
                }
                Ok(Change::UsedDecision(seq))
            }
            Approval::None => Ok(Change::Nothing),
        }
    }

    /// Folds an accepted entry into the state: what [`check`](Self::check)
    /// admitted, at the next position.
    pub fn apply(&mut self, entry: &Entry, admitted: Admitted) {
        let here = self.next;
        if self.track_nonces {
            self.nonces.insert(entry.event.nonce);
        }
        self.next = here.next();
        self.oversight.prune(entry.received_at);
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
            oversight => self.apply_oversight(here, oversight),
        }
    }

    /// The part of [`apply`](Self::apply) that changes [`Oversight`]: an
    /// A8 change of the entry at `here`. Other changes are not A8's.
    fn apply_oversight(&mut self, here: Seq, change: Change) {
        match change {
            Change::Approval(mut r) => {
                r.seq = here.0;
                self.oversight.add_approval(*r);
            }
            Change::Allowed(mut r) => {
                r.seq = here.0;
                self.oversight.add_decision(*r);
            }
            Change::Held(h) => {
                let (session, digest, mut hold) = *h;
                hold.seq = here.0;
                self.oversight.add_hold(session, digest, hold);
            }
            Change::UsedApproval(seq) => self.oversight.use_approval(seq, here.0),
            Change::UsedDecision(seq) => self.oversight.use_decision(seq, here.0),
            Change::Nothing
            | Change::Genesis { .. }
            | Change::Trust(_)
            | Change::Session(_)
            | Change::SessionEnd
            | Change::Revocation(..) => {}
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
