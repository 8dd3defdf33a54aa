//! A state rebuilt the way a broker on PostgreSQL starts — the trust roots,
//! sessions and revocations from tables ([`Authority::restore`]), the
//! oversight records from the last two days of entries
//! ([`Authority::restore_oversight`]) — decides every later event as a
//! replay of the whole ledger does: approvals, holds, the policy's allows,
//! their use, refusals and expiries, over ledgers that span several days.

use custody_identity::{Delegation, Did, KeyPair};
use custody_ledger::actions;
use custody_ledger::authority::{Authority, DenialCode, TrustRoots};
use custody_ledger::oversight::{action_digest, Requires, RESTORE_HORIZON_MS};
use custody_ledger::{
    entry_hash, ActionType, ActorKind, Approval, Context, Entry, EntryHash, Event, Seq, SessionId,
    SignedEvent, Timestamp,
};
use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Ledger,
    Admin,
    Developer,
    Approver,
    Reviewer,
    Session,
}

const EVERYONE: [Who; 6] = [
    Who::Ledger,
    Who::Admin,
    Who::Developer,
    Who::Approver,
    Who::Reviewer,
    Who::Session,
];

fn key(w: Who) -> &'static KeyPair {
    static KEYS: std::sync::OnceLock<Vec<KeyPair>> = std::sync::OnceLock::new();
    &KEYS.get_or_init(|| {
        EVERYONE
            .iter()
            .map(|w| KeyPair::from_seed(&[*w as u8 + 41; 32]))
            .collect()
    })[w as usize]
}

fn did(w: Who) -> Did {
    static DIDS: std::sync::OnceLock<Vec<Did>> = std::sync::OnceLock::new();
    DIDS.get_or_init(|| EVERYONE.iter().map(|w| key(*w).did()).collect())[w as usize].clone()
}

const T0: i64 = 1_800_000_000;
const HOUR: i64 = 3600 * 1000;

fn digest(which: u8) -> String {
    static DIGESTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DIGESTS.get_or_init(|| {
        ["terraform destroy", "git push --force", "rm -rf /srv"]
            .iter()
            .map(|cmd| {
                action_digest(&did(Who::Session), "Bash", &json!({"command": cmd}), "/w").unwrap()
            })
            .collect()
    })[which as usize]
        .clone()
}

/// A ledger written through the rules, with a clock the test moves.
struct L {
    authority: Authority,
    entries: Vec<Entry>,
    /// Per entry: whether the rules marked it as one the oversight rebuild
    /// reads (`Admitted::restores_oversight`), as the PostgreSQL sequencer
    /// stores it.
    marked: Vec<bool>,
    prev: EntryHash,
    delegation: Delegation,
    now: Timestamp,
}

impl L {
    fn new() -> Self {
        let delegation = Delegation::new(
            did(Who::Developer),
            did(Who::Session),
            "claude-code".into(),
            vec!["repo-read".into()],
            "chat".into(),
            OffsetDateTime::from_unix_timestamp(T0 - 60).unwrap(),
            OffsetDateTime::from_unix_timestamp(T0 + 90 * 24 * 3600).unwrap(),
        )
        .unwrap();
        let mut l = L {
            authority: Authority::new(Some(did(Who::Ledger))),
            entries: Vec::new(),
            marked: Vec::new(),
            prev: EntryHash::ZERO,
            delegation,
            now: Timestamp::from_unix_millis(T0 as i128 * 1000).unwrap(),
        };
        let mut g = Event::new(
            did(Who::Ledger),
            ActorKind::Service,
            ActionType::new(actions::GENESIS).unwrap(),
        );
        g.details = TrustRoots {
            admins: [did(Who::Admin)].into(),
            delegators: [did(Who::Developer)].into(),
            approvers: [did(Who::Approver)].into(),
            reviewers: [did(Who::Reviewer)].into(),
        }
        .to_details();
        l.push(g.sign(key(Who::Ledger)).unwrap()).unwrap();
        let jws = l.delegation.issue(key(Who::Developer)).unwrap();
        let mut s = l.session_event(actions::SESSION_START);
        s.details.insert("delegation".into(), jws.into());
        l.push(s.sign(key(Who::Session)).unwrap()).unwrap();
        l
    }

    fn session_event(&self, action: &str) -> Event {
        let mut e = Event::new(
            did(Who::Session),
            ActorKind::Agent,
            ActionType::new(action).unwrap(),
        );
        e.session = Some(SessionId::new(self.delegation.id.clone()).unwrap());
        e.on_behalf_of = Some(did(Who::Developer));
        e.context = Some(Context::new("chat").unwrap());
        e
    }

    /// Appends through the rules now: the seq, or the refusal's code.
    fn push(&mut self, signed: SignedEvent) -> Result<u64, String> {
        let n = self.entries.len() as u64;
        let verdict = self.authority.check(&signed, self.now);
        let entry = Entry::new(Seq(n), self.prev, self.now, signed);
        self.prev = entry_hash(&entry.to_line().unwrap());
        self.entries.push(entry.clone());
        let mut marked = verdict.as_ref().is_ok_and(|a| a.restores_oversight());
        // As the PostgreSQL sequencer does for an allow and the call that
        // uses it appended together (here: the entry just before).
        if let Some(d) = verdict.as_ref().ok().and_then(|a| a.used_decision()) {
            if d + 1 == n {
                self.marked[d as usize] = false;
                marked = false;
            }
        }
        self.marked.push(marked);
        match verdict {
            Ok(a) => {
                self.authority.apply(&entry, a);
                Ok(n)
            }
            Err(d) => {
                self.authority.skip();
                Err(d.code.as_str().to_string())
            }
        }
    }

    fn wait(&mut self, ms: i64) {
        self.now = self.now.plus_millis(ms);
    }

    fn approval_event(&self, who: Who, which: u8, ttl_ms: i64, approve: bool) -> Event {
        let kind = if who == Who::Reviewer {
            ActorKind::Service
        } else {
            ActorKind::Human
        };
        let mut e = Event::new(did(who), kind, ActionType::new(actions::APPROVAL).unwrap());
        let d = &mut e.details;
        d.insert(
            "decision".into(),
            if approve { "approve" } else { "deny" }.into(),
        );
        d.insert("action_digest".into(), digest(which).into());
        d.insert("session".into(), did(Who::Session).as_str().into());
        d.insert(
            "expires_at".into(),
            self.now.plus_millis(ttl_ms).to_string().into(),
        );
        d.insert("single_use".into(), true.into());
        e
    }

    fn approval(&mut self, who: Who, which: u8, ttl_ms: i64, approve: bool) -> Result<u64, String> {
        let e = self.approval_event(who, which, ttl_ms, approve);
        self.push(e.sign(key(who)).unwrap())
    }

    fn decision(
        &mut self,
        which: u8,
        decision: &str,
        requires: Option<&str>,
    ) -> Result<u64, String> {
        let mut e = Event::new(
            did(Who::Ledger),
            ActorKind::Service,
            ActionType::new(actions::POLICY_DECISION).unwrap(),
        );
        e.session = Some(SessionId::new(self.delegation.id.clone()).unwrap());
        e.on_behalf_of = Some(did(Who::Developer));
        e.context = Some(Context::new("chat").unwrap());
        let d = &mut e.details;
        d.insert("session_did".into(), did(Who::Session).as_str().into());
        d.insert("tool".into(), "Bash".into());
        d.insert("decision".into(), decision.into());
        d.insert("policies".into(), json!(["rule-a"]));
        d.insert("action_digest".into(), digest(which).into());
        if let Some(r) = requires {
            d.insert("requires".into(), r.into());
        }
        self.push(e.sign(key(Who::Ledger)).unwrap())
    }

    fn call_event(&self, which: u8, approval: Approval) -> Event {
        let mut e = self.session_event(actions::TOOL_CALL);
        e.details.insert("tool".into(), "Bash".into());
        e.details
            .insert("action_digest".into(), digest(which).into());
        e.approval = Some(approval);
        e
    }

    fn call(&mut self, which: u8, approval: Approval) -> Result<u64, String> {
        let e = self.call_event(which, approval);
        self.push(e.sign(key(Who::Session)).unwrap())
    }

    /// What a broker on PostgreSQL starts with: the tables' state, and the
    /// oversight records from the entries received within the horizon
    /// before the last one that the rules marked when admitting them, those
    /// whose line says they may change oversight.
    fn restored(&self) -> Authority {
        let full = &self.authority;
        let mut a = Authority::restore(
            full.ledger().unwrap().clone(),
            full.trust().clone(),
            full.sessions().map(|(d, g)| (d.clone(), g.clone())),
            full.revocations().map(|(_, r)| r.clone()),
            full.next_seq(),
        );
        let last = self.entries.last().unwrap().received_at;
        let since = last.plus_millis(-RESTORE_HORIZON_MS);
        let window: Vec<Entry> = self
            .entries
            .iter()
            .zip(&self.marked)
            .filter(|(e, marked)| **marked && e.received_at >= since)
            .map(|(e, _)| e)
            .filter(|e| Authority::may_change_oversight(&e.to_line().unwrap()))
            .cloned()
            .collect();
        a.restore_oversight(&window);
        a
    }

    /// Every claim a call could make on the ledger's entries (as the
    /// signer of each approval, by policy, by nobody), a reviewer's and a
    /// person's approval of each action, and the oversight queries the
    /// broker's routes make.
    fn probes(&self, at: Timestamp) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        for which in 0..3u8 {
            out.push((
                format!("{which} nobody"),
                self.call_event(which, Approval::None),
            ));
            out.push((
                format!("{which} policy none"),
                self.call_event(
                    which,
                    Approval::Policy {
                        policy: "rule-a".into(),
                        seq: None,
                    },
                ),
            ));
            for e in &self.entries {
                let seq = Some(e.seq.0);
                let claim = if e.event.actor == did(Who::Reviewer) {
                    Approval::AutoReview {
                        reviewer: did(Who::Reviewer).to_string(),
                        seq,
                    }
                } else if e.event.action.as_str() == actions::APPROVAL {
                    Approval::Human {
                        approver: e.event.actor.clone(),
                        seq,
                    }
                } else {
                    Approval::Policy {
                        policy: "rule-a".into(),
                        seq,
                    }
                };
                out.push((
                    format!("{which} claims {}", e.seq.0),
                    self.call_event(which, claim),
                ));
            }
            let mut reviewer = self.approval_event(Who::Reviewer, which, 600_000, true);
            reviewer.details.insert(
                "expires_at".into(),
                at.plus_millis(600_000).to_string().into(),
            );
            out.push((format!("{which} reviewer approves"), reviewer));
        }
        out
    }
}

fn verdicts(a: &Authority, l: &L, at: Timestamp) -> Vec<(String, Result<(), String>)> {
    let mut out: Vec<(String, Result<(), String>)> = l
        .probes(at)
        .into_iter()
        .map(|(name, ev)| {
            let v = a
                .check_verified(&ev, at)
                .map(|_| ())
                .map_err(|d| d.code.as_str().to_string());
            (name, v)
        })
        .collect();
    let o = a.oversight();
    let s = did(Who::Session);
    for which in 0..3u8 {
        let d = digest(which);
        let hold = o.hold(&s, &d, at).map(|h| (h.seq, h.requires));
        let requires = hold.map(|h| h.1).unwrap_or(Requires::Human);
        let open = o.open_approval(&s, &d, at, requires).map(|r| r.seq);
        let refused = o.refusal(&s, &d, at).map(|r| r.seq);
        out.push((
            format!("{which} hold {hold:?} open {open:?} refused {refused:?}"),
            Ok(()),
        ));
    }
    out
}

#[test]
fn lines_that_may_change_oversight_are_told_by_their_start() {
    let mut l = L::new();
    l.decision(0, "approval_required", Some("human")).unwrap();
    l.approval(Who::Developer, 0, HOUR, true).unwrap();
    l.call(0, Approval::None).unwrap_err();
    let mut e = l.session_event(actions::CREDENTIAL_REQUEST);
    e.details.insert("scope".into(), "repo-read".into());
    l.push(e.sign(key(Who::Session)).unwrap()).unwrap();
    let told: Vec<(String, bool)> = l
        .entries
        .iter()
        .map(|e| {
            (
                e.event.action.as_str().to_string(),
                Authority::may_change_oversight(&e.to_line().unwrap()),
            )
        })
        .collect();
    let want = [
        (actions::GENESIS, false),
        (actions::SESSION_START, false),
        (actions::POLICY_DECISION, true),
        (actions::APPROVAL, true),
        (actions::TOOL_CALL, true),
        (actions::CREDENTIAL_REQUEST, false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(a, b)| (a.to_string(), *b)).collect();
    assert_eq!(told, want);
    // What does not start like a canonical line is parsed and judged.
    assert!(Authority::may_change_oversight(b" {\"event\":{}}"));
}

/// When, after the ledger's last entry, the two states are asked.
const LATER: [i64; 8] = [
    0,
    1000,
    30 * 60 * 1000,
    HOUR + 1,
    12 * HOUR,
    24 * HOUR - 1,
    24 * HOUR,
    25 * HOUR,
];

fn assert_same(l: &L) {
    let restored = l.restored();
    let last = l.entries.last().unwrap().received_at;
    for later in LATER {
        let at = last.plus_millis(later);
        assert_eq!(
            verdicts(&restored, l, at),
            verdicts(&l.authority, l, at),
            "asked {later} ms after the last entry"
        );
    }
}

#[test]
fn a_restored_state_keeps_the_holds_approvals_and_uses_of_the_last_day() {
    let mut l = L::new();
    // Two days ago: a hold and an approval that are over by now.
    l.decision(2, "approval_required", Some("human")).unwrap();
    let old = l.approval(Who::Developer, 2, 20 * HOUR, true).unwrap();
    l.wait(30 * HOUR);
    // A hold for a person 23 hours ago, approved, the approval used once.
    let held = l.decision(0, "approval_required", Some("human")).unwrap();
    l.wait(HOUR);
    let used = l.approval(Who::Developer, 0, 23 * HOUR, true).unwrap();
    l.call(
        0,
        Approval::Human {
            approver: did(Who::Developer),
            seq: Some(used),
        },
    )
    .unwrap();
    // Approved again, not used yet.
    let open = l.approval(Who::Approver, 0, 23 * HOUR, true).unwrap();
    // Another call held for review, refused by a person.
    l.decision(1, "approval_required", Some("review")).unwrap();
    let no = l.approval(Who::Admin, 1, 22 * HOUR, false).unwrap();
    l.wait(21 * HOUR);
    // The hold of 23 hours ago still holds: no claim, no call.
    assert_eq!(
        l.call(0, Approval::None),
        Err("human_approval_required".into())
    );
    let h = did(Who::Session);
    assert!(l
        .authority
        .oversight()
        .hold(&h, &digest(0), l.now)
        .is_some());

    let restored = l.restored();
    let at = l.now;
    let o = restored.oversight();
    assert_eq!(o.hold(&h, &digest(0), at).map(|x| x.seq), Some(held));
    assert_eq!(
        o.open_approval(&h, &digest(0), at, Requires::Human)
            .map(|r| r.seq),
        Some(open)
    );
    assert_eq!(o.approval(used).and_then(|r| r.used_at), Some(used + 1));
    assert_eq!(o.refusal(&h, &digest(1), at).map(|r| r.seq), Some(no));
    assert!(
        o.approval(old).is_none(),
        "a record of two days ago is gone"
    );
    assert_same(&l);

    // What a broker started before this change did: no hold, so a call the
    // policy held passes with no approval, and the open approval is lost.
    let bare = Authority::restore(
        l.authority.ledger().unwrap().clone(),
        l.authority.trust().clone(),
        l.authority.sessions().map(|(d, g)| (d.clone(), g.clone())),
        l.authority.revocations().map(|(_, r)| r.clone()),
        l.authority.next_seq(),
    );
    let ev = l.call_event(0, Approval::None);
    assert!(bare.check_verified(&ev, at).is_ok());
    assert!(restored.check_verified(&ev, at).is_err());
}

/// The policy's allow is used once: a call that used it before the restart
/// leaves it used after (the call is among the entries the rebuild reads),
/// and an allow not used yet can still back its call.
#[test]
fn a_used_allow_stays_used_after_a_restore() {
    let mut l = L::new();
    let claim = |seq| Approval::Policy {
        policy: "rule-a".into(),
        seq: Some(seq),
    };
    // Used by the entry just after it (appended together: neither is
    // marked), and used two entries later (both marked).
    let paired = l.decision(0, "allow", None).unwrap();
    l.call(0, claim(paired)).unwrap();
    let used = l.decision(2, "allow", None).unwrap();
    l.decision(1, "deny", None).unwrap();
    l.call(2, claim(used)).unwrap();
    assert_eq!(
        (l.marked[paired as usize], l.marked[paired as usize + 1]),
        (false, false)
    );
    assert!(l.marked[used as usize] && *l.marked.last().unwrap());
    let open = l.decision(1, "allow", None).unwrap();
    l.wait(60_000);
    let restored = l.restored();
    let at = l.now;
    for seq in [paired, used] {
        let again = l.call_event(if seq == paired { 0 } else { 2 }, claim(seq));
        let code = |a: &Authority| a.check_verified(&again, at).map(|_| ()).map_err(|d| d.code);
        assert_eq!(code(&l.authority), Err(DenialCode::ApprovalUnverified));
        assert_eq!(
            code(&restored),
            Err(DenialCode::ApprovalUnverified),
            "allow {seq}, used, was fresh again after the restore"
        );
    }
    assert!(restored
        .check_verified(&l.call_event(1, claim(open)), at)
        .is_ok());
    assert_same(&l);
}

/// Why two days: a reviewer's approval of a call held for a person is
/// refused, so it never backs a call, even after the hold has ended. A
/// broker that had forgotten the hold (as brokers restarted before
/// `restore_oversight` did) may have stored one; folding only the last day
/// would let it count, the two days refuse it as a full replay does.
#[test]
fn a_hold_of_the_day_before_still_decides_an_approval_of_the_last_day() {
    let mut l = L::new();
    l.decision(0, "approval_required", Some("human")).unwrap();
    l.wait(23 * HOUR);
    let r = l.approval(Who::Reviewer, 0, 20 * HOUR, true);
    assert_eq!(r, Err("human_approval_required".into()));
    // The hold has ended; the approval is of the last day.
    l.wait(2 * HOUR);
    l.decision(1, "deny", None).unwrap();
    assert_same(&l);
}

#[derive(Clone, Debug)]
enum Step {
    Wait(i64),
    Hold(u8, bool),
    Allow(u8),
    /// An allow and the call that uses it, appended together (the hook's
    /// call decided with its check).
    Decided(u8),
    Deny(u8),
    Approve(Who, u8, i64, bool),
    /// A call claiming the i-th entry so far (modulo), as the probes do.
    Call(u8, Option<usize>),
    /// An event A8 does not look at (no claim, not in the window's read).
    Credential,
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop::sample::select(vec![
        Who::Admin,
        Who::Developer,
        Who::Approver,
        Who::Reviewer,
    ]);
    let gap = prop::sample::select(vec![
        1000,
        20 * 60 * 1000,
        50 * 60 * 1000,
        2 * HOUR,
        13 * HOUR,
        23 * HOUR,
        24 * HOUR,
    ]);
    let ttl = prop::sample::select(vec![2000, 30 * 60 * 1000, 20 * HOUR, 24 * HOUR]);
    prop_oneof![
        3 => gap.prop_map(Step::Wait),
        2 => (0u8..3, any::<bool>()).prop_map(|(d, h)| Step::Hold(d, h)),
        1 => (0u8..3).prop_map(Step::Allow),
        1 => (0u8..3).prop_map(Step::Decided),
        1 => (0u8..3).prop_map(Step::Deny),
        3 => (who, 0u8..3, ttl, prop::bool::weighted(0.8))
            .prop_map(|(w, d, t, a)| Step::Approve(w, d, t, a)),
        3 => (0u8..3, prop::option::weighted(0.8, 0usize..64)).prop_map(|(d, c)| Step::Call(d, c)),
        1 => Just(Step::Credential),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_restored_state_decides_as_a_full_replay(steps in prop::collection::vec(step(), 1..40)) {
        let mut l = L::new();
        for s in &steps {
            let _ = match s {
                Step::Wait(ms) => {
                    l.wait(*ms);
                    Ok(0)
                }
                Step::Hold(d, h) => l.decision(*d, "approval_required", Some(if *h { "human" } else { "review" })),
                Step::Allow(d) => l.decision(*d, "allow", None),
                Step::Decided(d) => match l.decision(*d, "allow", None) {
                    Ok(seq) => l.call(*d, Approval::Policy { policy: "rule-a".into(), seq: Some(seq) }),
                    e => e,
                },
                Step::Deny(d) => l.decision(*d, "deny", None),
                Step::Approve(w, d, ttl, a) => l.approval(*w, *d, *ttl, *a),
                Step::Call(d, None) => l.call(*d, Approval::None),
                Step::Call(d, Some(i)) => {
                    let e = &l.entries[i % l.entries.len()];
                    let seq = Some(e.seq.0);
                    let claim = if e.event.actor == did(Who::Reviewer) {
                        Approval::AutoReview { reviewer: did(Who::Reviewer).to_string(), seq }
                    } else if e.event.action.as_str() == actions::APPROVAL {
                        Approval::Human { approver: e.event.actor.clone(), seq }
                    } else {
                        Approval::Policy { policy: "rule-a".into(), seq }
                    };
                    l.call(*d, claim)
                }
                Step::Credential => {
                    let mut e = l.session_event(actions::CREDENTIAL_REQUEST);
                    e.details.insert("scope".into(), "repo-read".into());
                    l.push(e.sign(key(Who::Session)).unwrap())
                }
            };
        }
        assert_same(&l);
    }
}

/// What the fold costs a broker's start, printed (never asserted): the
/// entries of two busy days (`CUSTODY_RESTORE_ENTRIES`, default 50,000:
/// agent events, tool calls, the policy's decisions, some holds and
/// approvals) parsed from their canonical lines, as the broker reads them
/// from `custody_entries`, and folded in. Signatures and nonces are not
/// checked by the fold, so a few signed events are reused. Run with
/// `cargo test --release -p custody-ledger --test oversight_restore -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn restore_cost() {
    let n: usize = std::env::var("CUSTODY_RESTORE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut l = L::new();
    l.decision(0, "approval_required", Some("human")).unwrap();
    let a = l.approval(Who::Developer, 0, 20 * HOUR, true).unwrap();
    let sign = |e: Event, w: Who| e.sign(key(w)).unwrap();
    let mut prompt = l.session_event("prompt");
    prompt
        .details
        .insert("summary".into(), "fix the flaky test".into());
    let templates = [
        sign(prompt, Who::Session),
        sign(l.call_event(1, Approval::None), Who::Session),
        sign(l.session_event("tool.result"), Who::Session),
        SignedEvent {
            event: l.entries[2].event.clone(),
            sig: l.entries[2].sig,
        },
        sign(
            l.approval_event(Who::Approver, 2, 20 * HOUR, true),
            Who::Approver,
        ),
        sign(
            l.call_event(
                0,
                Approval::Human {
                    approver: did(Who::Developer),
                    seq: Some(a),
                },
            ),
            Who::Session,
        ),
    ];
    let start = l.entries.len();
    let step = (2 * 24 * HOUR) / n as i64;
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        // Mostly agent events; a policy decision or an approval now and then.
        let t = match i % 50 {
            0 => 3,
            25 => 4,
            49 if i == n - 1 => 5,
            k => k % 3,
        };
        l.wait(step);
        let e = Entry::new(
            Seq((start + i) as u64),
            EntryHash::ZERO,
            l.now,
            templates[t].clone(),
        );
        lines.push(e.to_line().unwrap());
    }
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let next = Seq((start + n) as u64);
    let t0 = std::time::Instant::now();
    let entries: Vec<Entry> = lines
        .iter()
        .filter(|b| Authority::may_change_oversight(b))
        .map(|b| Entry::parse_line(b).unwrap())
        .collect();
    let parsed = t0.elapsed();
    let full = &l.authority;
    let mut r = Authority::restore(
        full.ledger().unwrap().clone(),
        full.trust().clone(),
        full.sessions().map(|(d, g)| (d.clone(), g.clone())),
        Vec::new(),
        next,
    );
    let t1 = std::time::Instant::now();
    let done = r.restore_oversight(&entries);
    let folded = t1.elapsed();
    println!(
        "{n} entries ({} MB of lines): filter and parse {parsed:?}, fold {folded:?} ({} parsed, {} records kept)",
        bytes / 1_000_000,
        done.entries,
        r.oversight().len()
    );
}
