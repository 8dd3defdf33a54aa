//! Rule A8 (FORMAT.md §9.2) judged by its outcomes: approvals bound to one
//! action, the policy's holds and allows, and what a session's `tool.call`
//! may claim. One test per way a claim can fail, each checked at append
//! (the broker's gate) and offline (the verifier over a bundle), and a
//! property test against a model written from the specification.

use std::collections::BTreeMap;

use custody_identity::{Delegation, Did, KeyPair};
use custody_ledger::actions::{self};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::bundle::BundleWriter;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::oversight::action_digest;
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
    OtherDelegator,
    Approver,
    Reviewer,
    Session,
    Stranger,
}

fn key(w: Who) -> KeyPair {
    KeyPair::from_seed(&[w as u8 + 11; 32])
}

fn did(w: Who) -> Did {
    key(w).did()
}

const T0: i64 = 1_800_000_000;

/// Step `n` is `n` seconds after T0.
fn at(n: usize) -> Timestamp {
    Timestamp::from_unix_millis((T0 as i128 + n as i128) * 1000).unwrap()
}

/// The two actions of the tests.
fn digest(which: u8) -> String {
    let cmd = if which == 0 {
        "terraform destroy"
    } else {
        "terraform destroY"
    };
    action_digest(&did(Who::Session), "Bash", &json!({"command": cmd}), "/w").unwrap()
}

struct L {
    authority: Authority,
    entries: Vec<Entry>,
    prev: EntryHash,
    delegation: Delegation,
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
            OffsetDateTime::from_unix_timestamp(T0 + 24 * 3600).unwrap(),
        )
        .unwrap();
        let mut l = L {
            authority: Authority::new(Some(did(Who::Ledger))),
            entries: Vec::new(),
            prev: EntryHash::ZERO,
            delegation,
        };
        let mut g = Event::new(
            did(Who::Ledger),
            ActorKind::Service,
            ActionType::new(actions::GENESIS).unwrap(),
        );
        g.details = TrustRoots {
            admins: [did(Who::Admin)].into(),
            delegators: [did(Who::Developer), did(Who::OtherDelegator)].into(),
            approvers: [did(Who::Approver)].into(),
            reviewers: [did(Who::Reviewer)].into(),
        }
        .to_details();
        assert!(l.push(g.sign(&key(Who::Ledger)).unwrap()).is_ok());
        let jws = l.delegation.issue(&key(Who::Developer)).unwrap();
        let mut s = l.session_event(actions::SESSION_START);
        s.details.insert("delegation".into(), jws.into());
        assert!(l.push(s.sign(&key(Who::Session)).unwrap()).is_ok());
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

    /// Appends through the rules at the next step; the refusal's code, or
    /// the seq.
    fn push(&mut self, signed: SignedEvent) -> Result<u64, String> {
        let n = self.entries.len();
        let verdict = self.authority.check(&signed, at(n));
        let entry = Entry::new(Seq(n as u64), self.prev, at(n), signed);
        self.prev = entry_hash(&entry.to_line().unwrap());
        self.entries.push(entry.clone());
        match verdict {
            Ok(a) => {
                self.authority.apply(&entry, a);
                Ok(n as u64)
            }
            Err(d) => {
                self.authority.skip();
                Err(d.code.as_str().to_string())
            }
        }
    }

    fn approval(&mut self, who: Who, which: u8, ttl_s: i64, approve: bool) -> Result<u64, String> {
        let kind = if who == Who::Reviewer {
            ActorKind::Service
        } else if who == Who::Session || who == Who::Stranger {
            ActorKind::Agent
        } else {
            ActorKind::Human
        };
        let mut e = Event::new(did(who), kind, ActionType::new(actions::APPROVAL).unwrap());
        let n = self.entries.len();
        let d = &mut e.details;
        d.insert(
            "decision".into(),
            if approve { "approve" } else { "deny" }.into(),
        );
        d.insert("action_digest".into(), digest(which).into());
        d.insert("session".into(), did(Who::Session).as_str().into());
        d.insert(
            "expires_at".into(),
            at(n).plus_millis(ttl_s * 1000).to_string().into(),
        );
        d.insert("single_use".into(), true.into());
        if who == Who::Session {
            e = self.rewrap(e);
        }
        let signed = e.sign(&key(who)).unwrap();
        self.push(signed)
    }

    fn rewrap(&self, mut e: Event) -> Event {
        let s = self.session_event(actions::APPROVAL);
        e.session = s.session;
        e.on_behalf_of = s.on_behalf_of;
        e.context = s.context;
        e
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
        let signed = e.sign(&key(Who::Ledger)).unwrap();
        self.push(signed)
    }

    fn call(&mut self, which: u8, approval: Approval) -> Result<u64, String> {
        let mut e = self.session_event(actions::TOOL_CALL);
        e.details.insert("tool".into(), "Bash".into());
        e.details
            .insert("action_digest".into(), digest(which).into());
        e.approval = Some(approval);
        let signed = e.sign(&key(Who::Session)).unwrap();
        self.push(signed)
    }

    /// Verifies the whole ledger offline; the seqs `authorization` fails.
    fn offline(&self) -> Vec<u64> {
        let t = tempfile::tempdir().unwrap();
        let mut w = BundleWriter::create(t.path()).unwrap();
        let mut range = CompactRange::new();
        for e in &self.entries {
            let line = e.to_line().unwrap();
            range.push(Hash(entry_hash(&line).0));
            w.push_line(&line, |_| None).unwrap();
        }
        let origin = Origin::for_ledger(&did(Who::Ledger));
        let head = TreeHead {
            size: self.entries.len() as u64,
            root: range.root(),
        };
        let cp =
            SignedCheckpoint::sign(&key(Who::Ledger), &origin, head, OffsetDateTime::now_utc())
                .unwrap();
        w.finish(
            &did(Who::Ledger),
            origin.as_str(),
            &hash_to_hex(&range.root()),
            &[(head.size, cp.to_bytes())],
        )
        .unwrap();
        let v = custody_verifier::verify_bundle(
            t.path(),
            &custody_verifier::VerifyOptions {
                ledger_key: Some(did(Who::Ledger)),
                ..Default::default()
            },
        )
        .unwrap();
        v.checks
            .iter()
            .find(|c| c.name == "authorization")
            .unwrap()
            .failing_seqs()
    }
}

fn human(seq: u64) -> Approval {
    Approval::Human {
        approver: did(Who::Developer),
        seq: Some(seq),
    }
}

#[test]
fn each_way_an_approval_claim_fails() {
    let mut l = L::new();
    let mut refused = Vec::new();
    let mut expect_refused = |l: &mut L, r: Result<u64, String>, code: &str| {
        assert_eq!(r.as_ref().err().map(String::as_str), Some(code), "{r:?}");
        refused.push(l.entries.len() as u64 - 1);
    };
    l.decision(0, "approval_required", Some("human")).unwrap();
    // Later than the call: the call names a seq no approval holds yet.
    let next = l.entries.len() as u64 + 1;
    let r = l.call(0, human(next));
    expect_refused(&mut l, r, "approval_unverified");
    let a = l.approval(Who::Developer, 0, 600, true).unwrap();
    // Wrong digest: the approval is for another action.
    let r = l.call(1, human(a));
    expect_refused(&mut l, r, "approval_unverified");
    // Wrong approver named.
    let r = l.call(
        0,
        Approval::Human {
            approver: did(Who::Admin),
            seq: Some(a),
        },
    );
    expect_refused(&mut l, r, "approval_unverified");
    // No seq at all.
    let r = l.call(
        0,
        Approval::Human {
            approver: did(Who::Developer),
            seq: None,
        },
    );
    expect_refused(&mut l, r, "approval_unverified");
    // A reviewer's approval never counts for a call held for a person.
    let r = l.approval(Who::Reviewer, 0, 600, true);
    expect_refused(&mut l, r, "human_approval_required");
    // Another session's delegator may not approve; neither may the session.
    let r = l.approval(Who::OtherDelegator, 0, 600, true);
    expect_refused(&mut l, r, "not_approver");
    let r = l.approval(Who::Session, 0, 600, true);
    expect_refused(&mut l, r, "human_only");
    // Valid: once.
    let ok = l.call(0, human(a)).unwrap();
    assert!(ok > a);
    // Reused.
    let r = l.call(0, human(a));
    expect_refused(&mut l, r, "approval_unverified");
    // Expired: a 2 s approval, used 3 steps (s) later.
    let short = l.approval(Who::Approver, 0, 2, true).unwrap();
    l.decision(1, "deny", None).unwrap();
    l.decision(1, "deny", None).unwrap();
    let r = l.call(
        0,
        Approval::Human {
            approver: did(Who::Approver),
            seq: Some(short),
        },
    );
    expect_refused(&mut l, r, "approval_unverified");
    // Held and claimed by nobody, or by policy: refused.
    let r = l.call(0, Approval::None);
    expect_refused(&mut l, r, "human_approval_required");
    let allow = l.decision(0, "allow", None).unwrap();
    let r = l.call(
        0,
        Approval::Policy {
            policy: "rule-a".into(),
            seq: Some(allow),
        },
    );
    expect_refused(&mut l, r, "human_approval_required");
    // An action not held: the policy's allow backs one call.
    let allow1 = l.decision(1, "allow", None).unwrap();
    let p = Approval::Policy {
        policy: "rule-a".into(),
        seq: Some(allow1),
    };
    l.call(1, p.clone()).unwrap();
    let r = l.call(1, p);
    expect_refused(&mut l, r, "approval_unverified");
    // Only a tool.call may claim an approval.
    let mut e = l.session_event("tool.result");
    e.approval = Some(human(a));
    let r = l.push(e.sign(&key(Who::Session)).unwrap());
    expect_refused(&mut l, r, "approval_unverified");
    // Offline, the verifier refuses exactly the same entries.
    assert_eq!(l.offline(), refused);
}

/// `{"by":"policy"}`, decided with the call: backed by the entry just
/// before it, and by nothing else (FORMAT.md §3.1).
#[test]
fn a_call_decided_with_its_decision_is_backed_by_the_entry_just_before() {
    let mut l = L::new();
    let mut refused = Vec::new();
    let mut expect_refused = |l: &mut L, r: Result<u64, String>, code: &str| {
        assert_eq!(r.as_ref().err().map(String::as_str), Some(code), "{r:?}");
        refused.push(l.entries.len() as u64 - 1);
    };
    let with = Approval::decided_with_call;
    // Right after the allow for this very call: accepted, and it used it.
    let allow = l.decision(1, "allow", None).unwrap();
    assert_eq!(l.call(1, with()).unwrap(), allow + 1);
    let r = l.call(
        1,
        Approval::Policy {
            policy: "rule-a".into(),
            seq: Some(allow),
        },
    );
    expect_refused(&mut l, r, "approval_unverified");
    // Right after an allow for another action.
    l.decision(0, "allow", None).unwrap();
    let r = l.call(1, with());
    expect_refused(&mut l, r, "approval_unverified");
    // Not right after: an entry between the allow and the call.
    l.decision(1, "allow", None).unwrap();
    l.decision(0, "deny", None).unwrap();
    let r = l.call(1, with());
    expect_refused(&mut l, r, "approval_unverified");
    // Right after a deny, or after nothing of the policy's.
    let r = l.call(1, with());
    expect_refused(&mut l, r, "approval_unverified");
    // A decision's seq without the policy it names.
    let allow = l.decision(1, "allow", None).unwrap();
    let r = l.call(
        1,
        Approval::Policy {
            policy: String::new(),
            seq: Some(allow),
        },
    );
    expect_refused(&mut l, r, "approval_unverified");
    // Right after the allow of a call the policy held for a person: the
    // hard floor holds.
    l.decision(0, "approval_required", Some("human")).unwrap();
    l.decision(0, "allow", None).unwrap();
    let r = l.call(0, with());
    expect_refused(&mut l, r, "human_approval_required");
    // The claim's wire form names neither member.
    assert_eq!(
        serde_json::to_string(&with()).unwrap(),
        r#"{"by":"policy"}"#
    );
    assert_eq!(l.offline(), refused);
}

#[test]
fn a_review_hold_accepts_the_reviewer_and_a_person() {
    let mut l = L::new();
    l.decision(0, "approval_required", Some("review")).unwrap();
    let r = l.approval(Who::Reviewer, 0, 600, true).unwrap();
    l.call(
        0,
        Approval::AutoReview {
            reviewer: did(Who::Reviewer).to_string(),
            seq: Some(r),
        },
    )
    .unwrap();
    let p = l.approval(Who::Admin, 0, 600, true).unwrap();
    // Claimed as the wrong kind: refused.
    assert_eq!(
        l.call(
            0,
            Approval::AutoReview {
                reviewer: did(Who::Admin).to_string(),
                seq: Some(p),
            }
        ),
        Err("approval_unverified".into())
    );
    l.call(
        0,
        Approval::Human {
            approver: did(Who::Admin),
            seq: Some(p),
        },
    )
    .unwrap();
    assert_eq!(l.offline(), vec![l.entries.len() as u64 - 2]);
}

// ---- the model ----------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    Hold(u8, bool),
    Allow(u8),
    Approve(Who, u8, i64),
    Call(u8, Claim),
}

#[derive(Clone, Debug)]
enum Claim {
    Nobody,
    /// The i-th approval recorded so far (modulo), as its signer.
    Approval(usize),
    /// The i-th allowing decision so far (modulo).
    Policy(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop::sample::select(vec![
        Who::Admin,
        Who::Developer,
        Who::OtherDelegator,
        Who::Approver,
        Who::Reviewer,
        Who::Session,
    ]);
    prop_oneof![
        (0u8..2, any::<bool>()).prop_map(|(d, h)| Step::Hold(d, h)),
        (0u8..2).prop_map(Step::Allow),
        (who, 0u8..2, prop_oneof![Just(0i64), Just(2), Just(600)])
            .prop_map(|(w, d, t)| Step::Approve(w, d, t)),
        (
            0u8..2,
            prop_oneof![
                Just(Claim::Nobody),
                (0usize..4).prop_map(Claim::Approval),
                (0usize..4).prop_map(Claim::Policy)
            ]
        )
            .prop_map(|(d, c)| Step::Call(d, c)),
    ]
}

/// The specification restated: approvals (seq → digest, human?, signer,
/// expiry step, used), allows (seq → digest, used), holds (digest → human?).
#[derive(Default)]
struct Model {
    approvals: BTreeMap<u64, (u8, bool, Who, usize, bool)>,
    allows: BTreeMap<u64, (u8, bool)>,
    holds: BTreeMap<u8, bool>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn approval_claims_are_accepted_exactly_as_specified(steps in prop::collection::vec(step(), 1..30)) {
        let mut l = L::new();
        let mut m = Model::default();
        let mut refused = Vec::new();
        for s in &steps {
            let n = l.entries.len();
            let (got, want) = match s {
                Step::Hold(d, h) => {
                    let got = l.decision(*d, "approval_required", Some(if *h { "human" } else { "review" }));
                    m.holds.insert(*d, *h);
                    (got.is_ok(), true)
                }
                Step::Allow(d) => {
                    let got = l.decision(*d, "allow", None);
                    m.allows.insert(n as u64, (*d, false));
                    (got.is_ok(), true)
                }
                Step::Approve(who, d, ttl) => {
                    let is_human = matches!(who, Who::Admin | Who::Developer | Who::Approver);
                    let ok = *ttl > 0
                        && (is_human || (*who == Who::Reviewer && m.holds.get(d) != Some(&true)));
                    let got = l.approval(*who, *d, *ttl, true);
                    if ok {
                        // Expires `ttl` s after step n: usable while step < n + ttl.
                        m.approvals.insert(n as u64, (*d, is_human, *who, n + *ttl as usize, false));
                    }
                    (got.is_ok(), ok)
                }
                Step::Call(d, claim) => {
                    let hold = m.holds.get(d).copied();
                    let (approval, ok) = match claim {
                        Claim::Nobody => (Approval::None, hold.is_none()),
                        Claim::Approval(i) if !m.approvals.is_empty() => {
                            let (&seq, &(ad, is_human, who, exp, used)) =
                                m.approvals.iter().nth(i % m.approvals.len()).unwrap();
                            let ok = ad == *d && !used && n < exp
                                && (is_human || hold != Some(true));
                            if ok {
                                m.approvals.get_mut(&seq).unwrap().4 = true;
                            }
                            let a = if is_human {
                                Approval::Human { approver: did(who), seq: Some(seq) }
                            } else {
                                Approval::AutoReview { reviewer: did(who).to_string(), seq: Some(seq) }
                            };
                            (a, ok)
                        }
                        Claim::Policy(i) if !m.allows.is_empty() => {
                            let (&seq, &(ad, used)) = m.allows.iter().nth(i % m.allows.len()).unwrap();
                            let ok = ad == *d && !used && hold.is_none();
                            if ok {
                                m.allows.get_mut(&seq).unwrap().1 = true;
                            }
                            (Approval::Policy { policy: "rule-a".into(), seq: Some(seq) }, ok)
                        }
                        // Nothing to name: a claim of an entry that is not one.
                        _ => (Approval::Human { approver: did(Who::Developer), seq: Some(0) }, false),
                    };
                    (l.call(*d, approval).is_ok(), ok)
                }
            };
            prop_assert_eq!(got, want, "step {} {:?}", n, s);
            if !got {
                refused.push(n as u64);
            }
        }
        prop_assert_eq!(l.offline(), refused);
    }
}
