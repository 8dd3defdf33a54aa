//! The ledger's rules judged by their outcomes, against a model written from
//! the specification (FORMAT.md §9, issue "authorization the agent cannot
//! rewrite"), not from the code's table:
//!
//! - for random sequences of events by random roles, the rules (the broker's
//!   gate) accept exactly what the model allows, and the offline verifier,
//!   given every event as a ledger, flags exactly the ones the model refuses;
//! - no event by anyone but an admin changes the revocation state, and no
//!   event by anyone but the ledger key changes the trust roots; a refused
//!   event changes nothing at all;
//! - an admin that nobody with authority revoked can always revoke any
//!   session.

use std::collections::{BTreeMap, BTreeSet};

use custody_identity::{Delegation, Did, KeyPair, Revocation};
use custody_ledger::actions::{self, Role};
use custody_ledger::authority::{Authority, RevocationRecord, SessionGrant, TrustRoots};
use custody_ledger::bundle::BundleWriter;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::{
    entry_hash, ActionType, ActorKind, Context, Entry, EntryHash, Event, Seq, SessionId,
    SignedEvent, Timestamp,
};
use proptest::prelude::*;
use time::OffsetDateTime;

// ---- the cast -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Ledger,
    Admin1,
    Admin2,
    /// Admin and delegator.
    AdminDelegator,
    Delegator,
    Session1,
    Session2,
    Stranger,
}

const EVERYONE: [Who; 8] = [
    Who::Ledger,
    Who::Admin1,
    Who::Admin2,
    Who::AdminDelegator,
    Who::Delegator,
    Who::Session1,
    Who::Session2,
    Who::Stranger,
];

fn key(w: Who) -> KeyPair {
    KeyPair::from_seed(&[w as u8 + 1; 32])
}

fn did(w: Who) -> Did {
    key(w).did()
}

/// Unix seconds of the first event; every step is a second later.
const T0: i64 = 1_800_000_000;

fn at(step: usize) -> Timestamp {
    Timestamp::from_unix_millis((T0 as i128 + step as i128) * 1000).unwrap()
}

fn datetime(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

struct SessionSpec {
    who: Who,
    delegator: Who,
    delegation: Delegation,
    jws: String,
}

fn session_spec(who: Who, delegator: Who) -> SessionSpec {
    let delegation = Delegation::new(
        did(delegator),
        did(who),
        "claude-code".into(),
        vec!["ci-read".into()],
        "chat".into(),
        datetime(T0 - 60),
        datetime(T0 + 24 * 3600),
    )
    .unwrap();
    let jws = delegation.issue(&key(delegator)).unwrap();
    SessionSpec {
        who,
        delegator,
        delegation,
        jws,
    }
}

fn admins() -> BTreeSet<Did> {
    [Who::Admin1, Who::Admin2, Who::AdminDelegator]
        .into_iter()
        .map(did)
        .collect()
}

fn delegators() -> BTreeSet<Did> {
    [Who::Delegator, Who::AdminDelegator]
        .into_iter()
        .map(did)
        .collect()
}

// ---- steps --------------------------------------------------------------------------

/// Actions the steps draw from: every row of the table, names the table does
/// not define in reserved namespaces, and free ones.
const ACTIONS: &[&str] = &[
    actions::GENESIS,
    actions::TRUST_UPDATE,
    actions::CREDENTIAL_REQUEST,
    actions::CREDENTIAL_MINT,
    actions::CREDENTIAL_REVOKE,
    actions::POLICY_DECISION,
    actions::REQUEST_DENIED,
    actions::CHECKPOINT_COSIGNED,
    "telemetry.claude_code.user_prompt",
    actions::PAYLOAD_REDACT,
    actions::IDENTITY_REVOKE,
    actions::IDENTITY_REVOKE,
    actions::IDENTITY_REVOKE,
    actions::APPROVAL,
    actions::SESSION_START,
    actions::SESSION_END,
    "identity.rotate",
    "ledger.reset",
    "session.resume",
    "trust.add",
    "approval.auto",
    actions::TOOL_CALL,
    "git.commit",
    actions::PROMPT,
];

#[derive(Clone, Debug)]
struct Step {
    signer: Who,
    action: &'static str,
    kind: ActorKind,
    /// identity.revoke: whom, signed by whom, effective when (seconds after
    /// the step; `None` = year 9999).
    subject: Who,
    statement_by: Who,
    effective_in: Option<i64>,
    /// trust.update: drop this admin from the admins (if any).
    drop_admin: Option<Who>,
    /// trust.update: also name this DID as an admin.
    add_admin: Option<Who>,
}

fn who() -> impl Strategy<Value = Who> {
    prop::sample::select(EVERYONE.to_vec())
}

fn step() -> impl Strategy<Value = Step> {
    (
        who(),
        prop::sample::select(ACTIONS.to_vec()),
        prop::sample::select(vec![ActorKind::Agent, ActorKind::Human, ActorKind::Service]),
        who(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop_oneof![
            Just(Some(-3600i64)),
            Just(Some(0)),
            Just(Some(5)),
            Just(None)
        ],
        prop::option::of(who()),
        prop::option::weighted(0.2, who()),
    )
        .prop_map(
            |(signer, action, kind, subject, own_statement, effective_in, drop, add)| Step {
                signer,
                action,
                kind,
                subject,
                statement_by: if own_statement {
                    signer
                } else {
                    Who::AdminDelegator
                },
                effective_in,
                drop_admin: drop,
                add_admin: add,
            },
        )
}

/// A plausible kind for the signer most of the time, so the later rules are
/// reached; the drawn kind otherwise.
fn kind_for(s: &Step, n: usize) -> ActorKind {
    if n % 4 == 3 {
        return s.kind;
    }
    match s.signer {
        Who::Ledger => ActorKind::Service,
        Who::Session1 | Who::Session2 | Who::Stranger => ActorKind::Agent,
        _ => ActorKind::Human,
    }
}

struct World {
    s1: SessionSpec,
    s2: SessionSpec,
    /// A fresh key with a delegation, for `session.start` by the stranger.
    stranger: SessionSpec,
}

impl World {
    fn new() -> Self {
        Self {
            s1: session_spec(Who::Session1, Who::Delegator),
            s2: session_spec(Who::Session2, Who::AdminDelegator),
            stranger: session_spec(Who::Stranger, Who::Delegator),
        }
    }

    fn spec(&self, w: Who) -> Option<&SessionSpec> {
        match w {
            Who::Session1 => Some(&self.s1),
            Who::Session2 => Some(&self.s2),
            Who::Stranger => Some(&self.stranger),
            _ => None,
        }
    }

    fn event(&self, s: &Step, n: usize, trust: &TrustRoots) -> SignedEvent {
        let k = key(s.signer);
        let mut e = Event::new(k.did(), kind_for(s, n), ActionType::new(s.action).unwrap());
        e.client_time = at(n);
        if let Some(spec) = self.spec(s.signer) {
            e.session = Some(SessionId::new(spec.delegation.id.clone()).unwrap());
            e.on_behalf_of = Some(did(spec.delegator));
            e.context = Some(Context::new("chat").unwrap());
        }
        match s.action {
            actions::GENESIS | actions::TRUST_UPDATE => {
                let mut t = trust.clone();
                if let Some(d) = s.drop_admin {
                    t.admins.remove(&did(d));
                }
                if let Some(a) = s.add_admin {
                    t.admins.insert(did(a));
                }
                e.details = t.to_details();
            }
            actions::SESSION_START => {
                let jws = self
                    .spec(s.signer)
                    .map(|x| x.jws.clone())
                    .unwrap_or_else(|| self.s1.jws.clone());
                e.details.insert("delegation".into(), jws.into());
            }
            actions::CREDENTIAL_REQUEST => {
                e.details.insert("scope".into(), "ci-read".into());
            }
            // A person's decision not bound to an action (rule A8 binds and
            // checks those; verifier/tests/approvals.rs models them).
            actions::APPROVAL => {
                e.details.insert("decision".into(), "approve".into());
            }
            actions::IDENTITY_REVOKE => {
                let effective = match s.effective_in {
                    Some(d) => datetime(T0 + n as i64 + d),
                    None => datetime(253_402_300_799),
                };
                let rev = Revocation::new(
                    did(s.statement_by),
                    did(s.subject),
                    "test".into(),
                    effective,
                )
                .unwrap();
                let jws = rev.issue(&key(s.statement_by)).unwrap();
                e.details.insert("revocation".into(), jws.into());
                e.details
                    .insert("subject".into(), did(s.subject).as_str().into());
            }
            _ => {}
        }
        e.sign(&k).unwrap()
    }
}

// ---- the model ----------------------------------------------------------------------

/// The specification, restated: the state and what it allows.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    admins: BTreeSet<Did>,
    delegators: BTreeSet<Did>,
    /// Started sessions and whether they ended.
    sessions: BTreeMap<Did, bool>,
    /// DID → when its (earliest effective) revocation takes effect, unix s.
    revoked: BTreeMap<Did, i64>,
}

enum Outcome {
    Refused,
    Accepted(Box<Change>),
}

enum Change {
    None,
    Trust(BTreeSet<Did>),
    SessionStart(Did),
    SessionEnd(Did),
    Revoke(Did, i64),
}

impl Model {
    fn is_revoked(&self, d: &Did, now: i64) -> bool {
        self.revoked.get(d).is_some_and(|t| *t <= now)
    }

    fn role(&self, d: &Did) -> &'static str {
        if *d == did(Who::Ledger) {
            "ledger"
        } else if self.sessions.contains_key(d) {
            "session"
        } else if self.admins.contains(d) || self.delegators.contains(d) {
            "person"
        } else {
            "new"
        }
    }

    fn decide(&self, w: &World, s: &Step, ev: &Event, now: i64) -> Outcome {
        use ActorKind::*;
        let me = &ev.actor;
        let role = self.role(me);
        let kind = ev.actor_kind;
        let admin = self.admins.contains(me);
        let person = role == "person";
        let ledger_only = [
            actions::TRUST_UPDATE,
            actions::CREDENTIAL_MINT,
            actions::CREDENTIAL_REVOKE,
            actions::POLICY_DECISION,
            actions::REQUEST_DENIED,
            actions::CHECKPOINT_COSIGNED,
            "telemetry.claude_code.user_prompt",
            actions::PAYLOAD_REDACT,
        ];
        let free = [actions::TOOL_CALL, "git.commit", actions::PROMPT];
        // Who may sign it, with which kind.
        let permitted = match s.action {
            a if ledger_only.contains(&a) => role == "ledger" && kind == Service,
            actions::IDENTITY_REVOKE => admin && matches!(kind, Human | Service),
            actions::APPROVAL => person && kind == Human,
            actions::SESSION_START => role == "new" && kind == Agent,
            actions::SESSION_END | actions::CREDENTIAL_REQUEST => {
                role == "session" && kind == Agent
            }
            a if free.contains(&a) => {
                (role == "session" && kind == Agent) || (person && matches!(kind, Human | Service))
            }
            // genesis after entry 0, and names the table does not define.
            _ => false,
        };
        if !permitted {
            return Outcome::Refused;
        }
        // Revocation of the signer, or of a session's delegator.
        if self.is_revoked(me, now) {
            return Outcome::Refused;
        }
        if role == "session" {
            if self.sessions[me] {
                return Outcome::Refused; // ended
            }
            let spec = w.spec(s.signer).unwrap();
            if self.is_revoked(&did(spec.delegator), now) {
                return Outcome::Refused;
            }
        }
        match s.action {
            actions::TRUST_UPDATE => {
                let t = TrustRoots::from_details(&ev.details).unwrap();
                let names_bad = |d: &Did| *d == did(Who::Ledger) || self.sessions.contains_key(d);
                if t.admins.iter().chain(t.delegators.iter()).any(names_bad) {
                    return Outcome::Refused;
                }
                Outcome::Accepted(Box::new(Change::Trust(t.admins)))
            }
            actions::SESSION_START => {
                // A key that is no session of this world (a former admin)
                // carries another session's delegation (`World::event`'s
                // fallback), which names another subject.
                let Some(spec) = w.spec(s.signer) else {
                    return Outcome::Refused;
                };
                let delegator = did(spec.delegator);
                if !self.delegators.contains(&delegator) || self.is_revoked(&delegator, now) {
                    return Outcome::Refused;
                }
                Outcome::Accepted(Box::new(Change::SessionStart(me.clone())))
            }
            actions::SESSION_END => Outcome::Accepted(Box::new(Change::SessionEnd(me.clone()))),
            actions::IDENTITY_REVOKE => {
                if s.statement_by != s.signer {
                    return Outcome::Refused;
                }
                let subject = did(s.subject);
                if subject == did(Who::Ledger) {
                    return Outcome::Refused;
                }
                if self.admins.contains(&subject)
                    && !self
                        .admins
                        .iter()
                        .any(|a| *a != subject && !self.revoked.contains_key(a))
                {
                    return Outcome::Refused;
                }
                let effective = match s.effective_in {
                    Some(d) => (now + d).max(now),
                    None => 253_402_300_799,
                };
                Outcome::Accepted(Box::new(Change::Revoke(subject, effective)))
            }
            _ => Outcome::Accepted(Box::new(Change::None)),
        }
    }

    fn apply(&mut self, c: Change) {
        match c {
            Change::None => {}
            Change::Trust(admins) => self.admins = admins,
            Change::SessionStart(d) => {
                self.sessions.insert(d, false);
            }
            Change::SessionEnd(d) => {
                self.sessions.insert(d, true);
            }
            Change::Revoke(d, t) => {
                let e = self.revoked.entry(d).or_insert(t);
                *e = (*e).min(t);
            }
        }
    }
}

/// The state rebuilt from what a store keeps beside the ledger: the trust
/// roots, each session's delegation credential (parsed again from its JWS,
/// as a store reads it back) and the revocation that holds per subject.
fn restore(a: &Authority) -> Authority {
    let sessions: Vec<(Did, SessionGrant)> =
        a.sessions().map(|(d, g)| (d.clone(), g.clone())).collect();
    let revocations: Vec<RevocationRecord> = a
        .revocations()
        .map(|(_, r)| RevocationRecord {
            revocation: Revocation::verify(&r.jws).expect("a kept revocation verifies"),
            ..r.clone()
        })
        .collect();
    let r = Authority::restore(
        a.ledger().cloned().expect("genesis accepted"),
        a.trust().clone(),
        sessions,
        revocations,
        a.next_seq(),
    );
    assert!(!r.tracks_nonces());
    r
}

/// What the rules' state says, in the model's terms.
fn observed(a: &Authority) -> Model {
    Model {
        admins: a.trust().admins.clone(),
        delegators: a.trust().delegators.clone(),
        sessions: a
            .sessions()
            .map(|(d, g)| (d.clone(), g.ended_at.is_some()))
            .collect(),
        revoked: a
            .revocations()
            .map(|(d, r)| (d.clone(), (r.effective.unix_millis() / 1000) as i64))
            .collect(),
    }
}

// ---- building a ledger --------------------------------------------------------------

struct Ledger {
    authority: Authority,
    model: Model,
    entries: Vec<Entry>,
    prev: EntryHash,
    /// Which entries the model refused.
    refused: Vec<u64>,
}

impl Ledger {
    /// Genesis and the two sessions' starts, all accepted.
    fn new(w: &World) -> Self {
        let mut l = Ledger {
            authority: Authority::new(Some(did(Who::Ledger))),
            model: Model {
                admins: admins(),
                delegators: delegators(),
                sessions: BTreeMap::new(),
                revoked: BTreeMap::new(),
            },
            entries: Vec::new(),
            prev: EntryHash::ZERO,
            refused: Vec::new(),
        };
        let trust = TrustRoots {
            admins: admins(),
            delegators: delegators(),
            ..Default::default()
        };
        let mut g = Event::new(
            did(Who::Ledger),
            ActorKind::Service,
            ActionType::new(actions::GENESIS).unwrap(),
        );
        g.details = trust.to_details();
        l.push_accepted(g.sign(&key(Who::Ledger)).unwrap());
        for spec in [&w.s1, &w.s2] {
            let mut e = Event::new(
                did(spec.who),
                ActorKind::Agent,
                ActionType::new(actions::SESSION_START).unwrap(),
            );
            e.session = Some(SessionId::new(spec.delegation.id.clone()).unwrap());
            e.on_behalf_of = Some(did(spec.delegator));
            e.context = Some(Context::new("chat").unwrap());
            e.details
                .insert("delegation".into(), spec.jws.clone().into());
            l.push_accepted(e.sign(&key(spec.who)).unwrap());
            l.model.sessions.insert(did(spec.who), false);
        }
        l
    }

    fn push_accepted(&mut self, signed: SignedEvent) {
        let n = self.entries.len();
        let a = self
            .authority
            .check(&signed, at(n))
            .expect("set-up accepted");
        let entry = Entry::new(Seq(n as u64), self.prev, at(n), signed);
        self.prev = entry_hash(&entry.to_line().unwrap());
        self.authority.apply(&entry, a);
        self.entries.push(entry);
    }
}

fn write_bundle(entries: &[Entry], dir: &std::path::Path) {
    let mut w = BundleWriter::create(dir).unwrap();
    let mut range = CompactRange::new();
    for e in entries {
        let line = e.to_line().unwrap();
        range.push(Hash(entry_hash(&line).0));
        w.push_line(&line, |_| None).unwrap();
    }
    let origin = Origin::for_ledger(&did(Who::Ledger));
    let head = TreeHead {
        size: entries.len() as u64,
        root: range.root(),
    };
    let cp = SignedCheckpoint::sign(&key(Who::Ledger), &origin, head, OffsetDateTime::now_utc())
        .unwrap();
    w.finish(
        &did(Who::Ledger),
        origin.as_str(),
        &hash_to_hex(&range.root()),
        &[(head.size, cp.to_bytes())],
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn the_rules_accept_exactly_what_the_table_allows(steps in prop::collection::vec(step(), 1..40)) {
        let w = World::new();
        let mut l = Ledger::new(&w);
        // Half-way, the state is also rebuilt from what a store keeps beside
        // the ledger (as the broker's PostgreSQL backend starts), and from
        // then on must decide every step exactly as the replayed one.
        let restore_at = steps.len() / 2;
        let mut restored: Option<Authority> = None;
        for (i, s) in steps.iter().enumerate() {
            if i == restore_at {
                restored = Some(restore(&l.authority));
            }
            let n = l.entries.len();
            let now = T0 + n as i64;
            let signed = w.event(s, n, l.authority.trust());
            let expected = l.model.decide(&w, s, &signed.event, now);
            let before = observed(&l.authority);
            let verdict = l.authority.check(&signed, at(n));
            if let Some(r) = restored.as_mut() {
                let again = r.check(&signed, at(n));
                prop_assert_eq!(
                    again.as_ref().map(|a| a.role()).map_err(|d| d.code),
                    verdict.as_ref().map(|a| a.role()).map_err(|d| d.code),
                    "step {} {:?}: the restored state decides otherwise", n, s
                );
                let entry = Entry::new(Seq(n as u64), l.prev, at(n), signed.clone());
                match again {
                    // What a broker folds in from another broker's entries:
                    // only those that change the state, the rest skipped.
                    Ok(_) if !actions::changes_state(signed.event.action.as_str()) => {
                        r.advance_to(Seq(n as u64 + 1))
                    }
                    Ok(a) => r.apply(&entry, a),
                    Err(_) => r.skip(),
                }
            }
            let entry = Entry::new(Seq(n as u64), l.prev, at(n), signed);
            l.prev = entry_hash(&entry.to_line().unwrap());
            match (verdict, expected) {
                (Ok(a), Outcome::Accepted(change)) => {
                    let role = a.role();
                    l.authority.apply(&entry, a);
                    l.model.apply(*change);
                    let after = observed(&l.authority);
                    prop_assert_eq!(&after, &l.model, "step {} {:?}", n, s);
                    // Only admins change the revocation state; only the
                    // ledger key changes the trust roots.
                    if role != Role::Admin {
                        prop_assert_eq!(&after.revoked, &before.revoked, "step {} {:?}", n, s);
                    }
                    if role != Role::Ledger {
                        prop_assert_eq!(&after.admins, &before.admins);
                        prop_assert_eq!(&after.delegators, &before.delegators);
                    }
                }
                (Err(_), Outcome::Refused) => {
                    l.authority.skip();
                    l.refused.push(n as u64);
                    // A refused event changes nothing.
                    prop_assert_eq!(&observed(&l.authority), &before);
                }
                (Ok(_), Outcome::Refused) => {
                    prop_assert!(false, "step {n}: the rules accepted what the model refuses: {s:?}");
                }
                (Err(d), Outcome::Accepted(_)) => {
                    prop_assert!(false, "step {n}: the rules refused ({}: {}) what the model allows: {s:?}", d.code, d.message);
                }
            }
            l.entries.push(entry);
            if let Some(r) = &restored {
                prop_assert_eq!(observed(r), observed(&l.authority), "step {}: restored state differs", n);
                prop_assert_eq!(r.next_seq(), l.authority.next_seq());
            }

            // An admin that no accepted revocation names can revoke any session now.
            for admin in l.model.admins.clone() {
                if l.model.revoked.contains_key(&admin) {
                    continue;
                }
                let admin_key = EVERYONE.iter().copied().find(|x| did(*x) == admin).map(key).unwrap();
                for session in l.model.sessions.keys() {
                    let rev = Revocation::new(admin.clone(), session.clone(), "kill".into(), datetime(now)).unwrap();
                    let mut e = Event::new(admin.clone(), ActorKind::Human, ActionType::new(actions::IDENTITY_REVOKE).unwrap());
                    e.details.insert("revocation".into(), rev.issue(&admin_key).unwrap().into());
                    let signed = e.sign(&admin_key).unwrap();
                    let v = l.authority.check(&signed, at(l.entries.len()));
                    prop_assert!(v.is_ok(), "admin {} could not revoke {}: {:?}", admin, session, v.err());
                }
            }
        }

        // The offline verifier, given all of it as a ledger (re-chained and
        // signed with the ledger key), flags exactly the refused entries.
        let t = tempfile::tempdir().unwrap();
        write_bundle(&l.entries, t.path());
        let v = custody_verifier::verify_bundle(t.path(), &custody_verifier::VerifyOptions {
            ledger_key: Some(did(Who::Ledger)),
            ..Default::default()
        }).unwrap();
        let auth = v.checks.iter().find(|c| c.name == "authorization").unwrap();
        prop_assert_eq!(auth.failing_seqs(), l.refused.clone());
        prop_assert_eq!(v.valid, l.refused.is_empty());
        for c in v.checks.iter().filter(|c| c.name != "authorization") {
            prop_assert!(c.ok, "{} failed: {:?}", c.name, c.failures);
        }
    }
}

/// The attacks of the review, one by one, against the rules: an agent
/// session holding only its own key tries every reserved action; the state
/// afterwards is unchanged and the admin can still revoke it.
#[test]
fn an_agent_session_cannot_rewrite_the_governance() {
    let w = World::new();
    let mut l = Ledger::new(&w);
    let attempts: Vec<Step> = [
        (actions::IDENTITY_REVOKE, Who::Admin1, Some(0)),
        (actions::IDENTITY_REVOKE, Who::Ledger, Some(0)),
        (actions::IDENTITY_REVOKE, Who::Session1, None),
        (actions::TRUST_UPDATE, Who::Admin1, None),
        (actions::CREDENTIAL_MINT, Who::Admin1, None),
        (actions::CREDENTIAL_REVOKE, Who::Admin1, None),
        (actions::POLICY_DECISION, Who::Admin1, None),
        (actions::REQUEST_DENIED, Who::Admin1, None),
        (actions::CHECKPOINT_COSIGNED, Who::Admin1, None),
        (actions::APPROVAL, Who::Admin1, None),
        (actions::GENESIS, Who::Admin1, None),
        ("telemetry.claude_code.user_prompt", Who::Admin1, None),
        (actions::PAYLOAD_REDACT, Who::Admin1, None),
        (actions::SESSION_START, Who::Admin1, None),
        ("identity.rotate", Who::Admin1, None),
    ]
    .into_iter()
    .map(|(action, subject, effective_in)| Step {
        signer: Who::Session1,
        action,
        kind: ActorKind::Agent,
        subject,
        statement_by: Who::Session1,
        effective_in,
        drop_admin: Some(Who::Admin1),
        add_admin: Some(Who::Session1),
    })
    .collect();
    let start = observed(&l.authority);
    for (i, s) in attempts.iter().enumerate() {
        for kind in [ActorKind::Agent, ActorKind::Human, ActorKind::Service] {
            let n = l.entries.len();
            // kind_for keeps the agent kind on n % 4 != 3; force each kind.
            let mut ev = w.event(s, n, l.authority.trust()).event;
            ev.actor_kind = kind;
            let signed = ev.sign(&key(Who::Session1)).unwrap();
            let d = l.authority.check(&signed, at(n)).expect_err(&format!(
                "attempt {i} ({}) as {kind:?} was accepted",
                s.action
            ));
            assert!(
                !matches!(d.code.as_str(), "bad_signature" | "replayed_nonce"),
                "{}: refused for the wrong reason: {d:?}",
                s.action
            );
        }
    }
    assert_eq!(observed(&l.authority), start);
    // The admin revokes the session; the session can do nothing after.
    let rev = Revocation::new(
        did(Who::Admin1),
        did(Who::Session1),
        "kill".into(),
        datetime(T0),
    )
    .unwrap();
    let mut e = Event::new(
        did(Who::Admin1),
        ActorKind::Human,
        ActionType::new(actions::IDENTITY_REVOKE).unwrap(),
    );
    e.details.insert(
        "revocation".into(),
        rev.issue(&key(Who::Admin1)).unwrap().into(),
    );
    l.push_accepted(e.sign(&key(Who::Admin1)).unwrap());
    let n = l.entries.len();
    let tool = Step {
        signer: Who::Session1,
        action: actions::TOOL_CALL,
        kind: ActorKind::Agent,
        subject: Who::Session1,
        statement_by: Who::Session1,
        effective_in: None,
        drop_admin: None,
        add_admin: None,
    };
    let d = l
        .authority
        .check(&w.event(&tool, n, l.authority.trust()), at(n))
        .unwrap_err();
    assert_eq!(d.code.as_str(), "revoked");
}

/// A forged far-future revocation by an admin (say a compromised one) does
/// not outlive a later admin's revocation effective now: the earliest holds.
#[test]
fn the_earliest_effective_revocation_holds() {
    let w = World::new();
    let mut l = Ledger::new(&w);
    for (admin, when) in [(Who::Admin1, 253_402_300_799), (Who::Admin2, T0 + 3)] {
        let rev =
            Revocation::new(did(admin), did(Who::Session1), "r".into(), datetime(when)).unwrap();
        let mut e = Event::new(
            did(admin),
            ActorKind::Human,
            ActionType::new(actions::IDENTITY_REVOKE).unwrap(),
        );
        e.details
            .insert("revocation".into(), rev.issue(&key(admin)).unwrap().into());
        l.push_accepted(e.sign(&key(admin)).unwrap());
    }
    let r = l
        .authority
        .revocations()
        .find(|(d, _)| **d == did(Who::Session1))
        .unwrap()
        .1;
    assert_eq!(r.revocation.issuer, did(Who::Admin2));
    assert!(l
        .authority
        .revoked_at(&did(Who::Session1), at(10))
        .is_some());
}
