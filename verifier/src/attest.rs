//! Attestation reports: what a verified bundle proves, in the terms of the EU
//! AI Act articles an audit ledger speaks to.
//!
//! The report is computed only from the bundle and the verifier's result. When
//! the bundle does not verify, `verification.valid` is false, every article's
//! status is `unverified`, and the counts below are marked as claims of an
//! unverified record. Each article says what the ledger proves and, plainly,
//! what it cannot. The schema is documented in `docs/REPORT.md`.
//!
//! Over 800 lines: one report built in one pass over the verified
//! entries; its rendering is in `render.rs`. Next seam: the oversight section
//! (held calls, approvals, escape hatch) into `attest/oversight.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use custody_ledger::actions::Role;
use custody_ledger::{actions, ActorKind, Approval, Entry, Timestamp};
use serde::{Deserialize, Serialize};

use crate::report::Verification;
use crate::verify::{verify_bundle_with, VerifyError, VerifyOptions};

pub const REPORT_FORMAT: &str = "custody-attestation-report";
pub const REPORT_VERSION: u64 = 1;
/// Six months, the minimum retention of Art. 19 / 26(6), in days.
pub const RETENTION_DAYS: i64 = 183;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub format: String,
    pub version: u64,
    pub verification: VerificationSummary,
    pub period: Period,
    pub identities: Vec<Identity>,
    pub activity: Activity,
    /// Commits made inside agent sessions (`git.commit` entries).
    #[serde(default)]
    pub commits: Vec<CommitLine>,
    pub credentials: Vec<CredentialLine>,
    pub oversight: Oversight,
    pub exceptions: Exceptions,
    pub articles: Vec<Article>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VerificationSummary {
    pub valid: bool,
    pub ledger: String,
    pub ledger_key_pinned: bool,
    pub root: String,
    pub tree_size: u64,
    pub checks: Vec<CheckLine>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub failing_seqs: Vec<u64>,
    pub failure_count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Period {
    pub first: Option<String>,
    pub last: Option<String>,
    pub days: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub did: String,
    /// `agent`, `human`, `service`.
    pub kind: String,
    /// `ledger`, `admin`, `delegator`, `admin+delegator`, `session`, `unknown`.
    pub role: String,
    pub entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub agent: String,
    pub delegated_by: String,
    pub scopes: Vec<String>,
    pub context: String,
    pub not_before: String,
    pub not_after: String,
    pub start_seq: u64,
    pub revoked_at_seq: Option<u64>,
}

/// A commit an agent session made, bound by `custody git install`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitLine {
    pub seq: u64,
    pub commit: String,
    pub session: String,
    pub agent: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub intent_seq: Option<u64>,
    pub at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Activity {
    /// Accepted entries per signer (see [`signer_class`]): `agent` (agent
    /// sessions), `human` and `service` (admins and delegators, by the kind
    /// the rules accepted them as: people, CI identities), `ledger` (the
    /// ledger key's attestations). The headline: who signed, as verified.
    pub by_kind: BTreeMap<String, u64>,
    /// What entries *claim* a person did, though a session or the broker
    /// signed them, with who attests each claim (see [`Claim`]).
    #[serde(default)]
    pub claims: Vec<Claim>,
    /// Prompts typed by a person and relayed, signed, by the agent session's
    /// hook (a claim; also in `claims`).
    #[serde(default)]
    pub human_relayed_by_agent: u64,
    /// Telemetry entries the broker signed with the ledger key from a
    /// session's OTLP export (what the agent reported).
    #[serde(default)]
    pub broker_attested: u64,
    /// Pre-tool policy decisions signed by the ledger key: allow / deny.
    #[serde(default)]
    pub policy_decisions: BTreeMap<String, u64>,
    /// Accepted entries per signer and action type.
    pub by_kind_action: BTreeMap<String, BTreeMap<String, u64>>,
    /// Agent tool calls by who the agent says approved them: human, policy,
    /// auto_review, none, unrecorded (the agent's own claim).
    pub agent_approvals: BTreeMap<String, u64>,
    /// `approval` entries signed by people with their own keys: approve / deny.
    pub human_decisions: BTreeMap<String, u64>,
    /// Accepted entries per time bucket and signer, for the timeline.
    pub timeline: Vec<Bucket>,
    pub bucket_seconds: i64,
}

/// Something entries claim a person did, with who vouches for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub claim: String,
    pub count: u64,
    /// Who signed the entries that make the claim.
    pub attested_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    pub start: String,
    pub agent: u64,
    pub human: u64,
    pub service: u64,
    #[serde(default)]
    pub ledger: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CredentialLine {
    pub seq: u64,
    pub action: String,
    pub subject: String,
    pub scope: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub tokens_revoked: Option<u64>,
    pub at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Oversight {
    pub revocations: Vec<RevocationLine>,
    pub approvals: u64,
    pub denials: u64,
    /// Agent tool calls whose approval the rules verified (FORMAT.md §9.2
    /// A8: the entry the claim names exists, matches and was unused), by
    /// `human`, `auto_review`, `policy`.
    #[serde(default)]
    pub verified_approvals: BTreeMap<String, u64>,
    /// Approvals only reported, never signed by who decided: the agent's
    /// telemetry (attested by the ledger key), by kind.
    #[serde(default)]
    pub claimed_approvals: BTreeMap<String, u64>,
    /// Calls the policy held for approval, who decided each and how fast.
    #[serde(default)]
    pub held: Vec<HeldLine>,
    /// Refusals: `approval` entries that said no.
    #[serde(default)]
    pub refusals: Vec<RefusalLine>,
    /// Spans during which an agent ran in a mode that skips its own
    /// permission prompts (`bypassPermissions`): its escape hatch.
    #[serde(default)]
    pub escape_hatch: Vec<EscapeSpan>,
}

/// A call the policy held (`approval_required`), and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeldLine {
    /// The `policy.decision` that held it.
    pub seq: u64,
    pub at: String,
    pub session: String,
    pub agent: String,
    pub tool: String,
    pub rules: Vec<String>,
    /// `human` or `review`.
    pub requires: String,
    pub call_id: Option<String>,
    /// `approved`, `refused` or `pending`.
    pub outcome: String,
    /// The `approval` entry that decided it.
    pub decided_seq: Option<u64>,
    pub decided_by: Option<String>,
    /// `human` or `auto_review`.
    pub decided_as: Option<String>,
    /// Milliseconds from the hold to the decision.
    pub decision_ms: Option<i64>,
    /// The `tool.call` that ran on the approval.
    pub ran_seq: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefusalLine {
    pub seq: u64,
    pub at: String,
    pub by: String,
    pub session: String,
    pub tool: Option<String>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EscapeSpan {
    pub session: String,
    pub agent: String,
    pub mode: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub from: String,
    pub to: String,
    /// Entries the session recorded in that mode.
    pub entries: u64,
}

/// Permission modes in which an agent skips its own prompts.
const ESCAPE_MODES: &[&str] = &["bypassPermissions"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevocationLine {
    pub seq: u64,
    pub at: String,
    /// When it took effect (FORMAT.md §9, A3).
    #[serde(default)]
    pub effective: String,
    pub admin: String,
    pub subject: String,
    pub reason: String,
    /// Refused attempts by the subject (or sessions it delegated) afterwards.
    pub refused_after: u64,
    /// Milliseconds from the revocation to the last refused attempt.
    pub last_refusal_after_ms: Option<i64>,
    /// Entries by the subject after the revocation that verified (must be 0).
    pub accepted_after: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Exceptions {
    pub denied: Vec<DeniedLine>,
    pub redactions: Vec<u64>,
    pub payloads_redacted: u64,
    pub sessions_without_end: Vec<String>,
    pub results_without_call: u64,
    /// Entries the rules refused (only in a bundle that does not verify).
    #[serde(default)]
    pub refused: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeniedLine {
    pub seq: u64,
    pub actor: String,
    pub attempted: String,
    pub code: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Article {
    pub article: String,
    pub title: String,
    /// `met`, `partial`, `not_met`, `not_applicable`, or `unverified`.
    pub status: String,
    pub reasoning: String,
    pub evidence: Vec<String>,
    pub cannot_prove: String,
}

/// Builds the report for `dir`: one verification pass, whose verdict on
/// each entry (the role the rules accepted its signer as, or a refusal) is
/// what the report counts.
pub fn build_report(
    dir: &Path,
    opts: &VerifyOptions,
) -> Result<(Report, Verification), VerifyError> {
    let mut acc = Acc::default();
    let v = verify_bundle_with(dir, opts, |e, role| acc.add(e, role))?;
    acc.payloads_redacted = v.stats.payloads_redacted;
    Ok((acc.finish(&v), v))
}

/// The signer classes of `activity.by_kind`.
pub fn signer_class(role: Role, kind: ActorKind) -> &'static str {
    match role {
        Role::Session | Role::NewSession => "agent",
        Role::Ledger => "ledger",
        Role::Admin | Role::Delegator | Role::Approver | Role::Reviewer => match kind {
            ActorKind::Service => "service",
            _ => "human",
        },
    }
}

#[derive(Default)]
struct Acc {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    ledger: Option<String>,
    admins: BTreeSet<String>,
    delegators: BTreeSet<String>,
    kinds: BTreeMap<String, String>,
    /// The role the rules accepted each signer as, first seen.
    roles: BTreeMap<String, Role>,
    counts: BTreeMap<String, u64>,
    sessions: BTreeMap<String, SessionInfo>,
    session_ends: BTreeSet<String>,
    by_kind: BTreeMap<String, u64>,
    by_kind_action: BTreeMap<String, BTreeMap<String, u64>>,
    approvals: BTreeMap<String, u64>,
    decisions: BTreeMap<String, u64>,
    times: Vec<(i128, &'static str)>,
    human_relayed: u64,
    human_telemetry: u64,
    approval_claims: u64,
    attested: u64,
    policy_decisions: BTreeMap<String, u64>,
    commits: Vec<CommitLine>,
    credentials: Vec<CredentialLine>,
    revocations: Vec<(RevocationLine, Timestamp)>,
    denied: Vec<(DeniedLine, Timestamp)>,
    redactions: Vec<u64>,
    tool_calls: BTreeMap<String, u64>,
    results_without_call: u64,
    payloads_redacted: u64,
    accepted_after: BTreeMap<String, u64>,
    refused: Vec<u64>,
    approvers: BTreeSet<String>,
    reviewers: BTreeSet<String>,
    verified_approvals: BTreeMap<String, u64>,
    claimed_approvals: BTreeMap<String, u64>,
    held: Vec<(HeldLine, Timestamp)>,
    /// (session, digest) → the latest held line still pending.
    pending_held: BTreeMap<(String, String), usize>,
    /// approval seq → held line it decided.
    decided_held: BTreeMap<u64, usize>,
    refusals: Vec<RefusalLine>,
    escape: Vec<EscapeSpan>,
    /// session → index of its open escape span.
    open_escape: BTreeMap<String, usize>,
}

impl Acc {
    /// Counts one entry by what the rules made of it: `role` is the role its
    /// signer was accepted as, `None` when the rules refused it (then it
    /// counts for nothing but the list of refusals).
    fn add(&mut self, e: &Entry, role: Option<Role>) {
        let ev = &e.event;
        let Some(role) = role else {
            self.refused.push(e.seq.0);
            return;
        };
        let actor = ev.actor.to_string();
        let signer = signer_class(role, ev.actor_kind);
        let action = ev.action.as_str();
        let by_ledger = role == Role::Ledger;
        let telemetry = by_ledger && action.starts_with(actions::TELEMETRY_PREFIX);
        let origin_human = ev.detail_str("origin") == Some("human");
        if telemetry {
            self.attested += 1;
            if origin_human {
                self.human_telemetry += 1;
            }
        } else if role == Role::Session && action == actions::PROMPT && origin_human {
            self.human_relayed += 1;
        }
        self.first.get_or_insert(e.received_at);
        self.last = Some(e.received_at);
        self.kinds
            .entry(actor.clone())
            .or_insert_with(|| ev.actor_kind.as_str().to_string());
        self.roles.entry(actor.clone()).or_insert(role);
        *self.counts.entry(actor.clone()).or_default() += 1;
        *self.by_kind.entry(signer.to_string()).or_default() += 1;
        *self
            .by_kind_action
            .entry(signer.to_string())
            .or_default()
            .entry(action.to_string())
            .or_default() += 1;
        self.times.push((e.received_at.unix_millis(), signer));
        let s = |k: &str| ev.detail_str(k).map(str::to_string);
        let list = |k: &str| -> Vec<String> {
            ev.details
                .get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Activity by a revoked identity once its revocation took effect
        // (the rules refuse it, so only an invalid ledger has any).
        for (r, effective) in &self.revocations {
            let by_subject = r.subject == actor
                || self
                    .sessions
                    .get(&actor)
                    .is_some_and(|si| si.delegated_by == r.subject);
            if by_subject && e.received_at >= *effective {
                *self.accepted_after.entry(r.subject.clone()).or_default() += 1;
            }
        }
        if telemetry {
            if let Some(a) = &ev.approval {
                *self
                    .claimed_approvals
                    .entry(a.kind().to_string())
                    .or_default() += 1;
            }
        }
        if role == Role::Session {
            if let Some(mode) = ev.detail_str("permission_mode") {
                self.track_mode(&actor, mode, e);
            }
        }
        match (role, action) {
            (Role::Ledger, actions::GENESIS | actions::TRUST_UPDATE) => {
                self.ledger.get_or_insert(actor.clone());
                self.admins = list("admins").into_iter().collect();
                self.delegators = list("delegators").into_iter().collect();
                self.approvers = list("approvers").into_iter().collect();
                self.reviewers = list("reviewers").into_iter().collect();
            }
            (Role::NewSession, actions::SESSION_START) => {
                if let Some(d) = ev
                    .detail_str("delegation")
                    .and_then(|j| custody_identity::Delegation::verify(j).ok())
                {
                    self.sessions.insert(
                        actor.clone(),
                        SessionInfo {
                            id: d.id.clone(),
                            agent: d.agent.clone(),
                            delegated_by: d.issuer.to_string(),
                            scopes: d.scopes.clone(),
                            context: d.context.clone(),
                            not_before: custody_identity::delegation::format_time(d.not_before),
                            not_after: custody_identity::delegation::format_time(d.not_after),
                            start_seq: e.seq.0,
                            revoked_at_seq: None,
                        },
                    );
                }
            }
            (Role::Session, actions::SESSION_END | actions::AGENT_SESSION_END) => {
                self.session_ends.insert(actor.clone());
            }
            (Role::Session, actions::TOOL_CALL) => {
                let k = match &ev.approval {
                    Some(a) => a.kind(),
                    None => "unrecorded",
                };
                if matches!(ev.approval, Some(Approval::Human { .. })) {
                    self.approval_claims += 1;
                }
                // Accepted by the rules with the entry it names: verified.
                if let Some(seq) = ev.approval.as_ref().and_then(|a| a.backing_seq(e.seq.0)) {
                    *self.verified_approvals.entry(k.to_string()).or_default() += 1;
                    if let Some(i) = self.decided_held.get(&seq) {
                        self.held[*i].0.ran_seq.get_or_insert(e.seq.0);
                    }
                }
                *self.approvals.entry(k.to_string()).or_default() += 1;
                *self.tool_calls.entry(actor.clone()).or_default() += 1;
            }
            (Role::Session, actions::TOOL_RESULT) => match self.tool_calls.get_mut(&actor) {
                Some(n) if *n > 0 => *n -= 1,
                _ => self.results_without_call += 1,
            },
            (
                Role::Admin | Role::Delegator | Role::Approver | Role::Reviewer,
                actions::APPROVAL,
            ) => {
                let d = s("decision").unwrap_or_else(|| "unknown".into());
                let reviewer = role == Role::Reviewer;
                if !reviewer {
                    *self.decisions.entry(d.clone()).or_default() += 1;
                }
                let key = (
                    s("session").unwrap_or_default(),
                    s("action_digest").unwrap_or_default(),
                );
                if let Some(i) = self.pending_held.remove(&key) {
                    let (h, held_at) = &mut self.held[i];
                    h.outcome = if d == "approve" {
                        "approved"
                    } else {
                        "refused"
                    }
                    .into();
                    h.decided_seq = Some(e.seq.0);
                    h.decided_by = Some(actor.clone());
                    h.decided_as = Some(if reviewer { "auto_review" } else { "human" }.into());
                    h.decision_ms =
                        Some((e.received_at.unix_millis() - held_at.unix_millis()) as i64);
                    self.decided_held.insert(e.seq.0, i);
                }
                if d == "deny" {
                    self.refusals.push(RefusalLine {
                        seq: e.seq.0,
                        at: e.received_at.to_string(),
                        by: actor.clone(),
                        session: key.0,
                        tool: s("tool"),
                        reason: s("reason"),
                    });
                }
            }
            (Role::Ledger, actions::POLICY_DECISION) => {
                let d = s("decision").unwrap_or_else(|| "unknown".into());
                if d == "approval_required" {
                    let session = s("session_did").unwrap_or_default();
                    let line = HeldLine {
                        seq: e.seq.0,
                        at: e.received_at.to_string(),
                        agent: self
                            .sessions
                            .get(&session)
                            .map(|si| si.agent.clone())
                            .unwrap_or_default(),
                        session: session.clone(),
                        tool: s("tool").unwrap_or_default(),
                        rules: list("policies"),
                        requires: s("requires").unwrap_or_default(),
                        call_id: s("call_id"),
                        outcome: "pending".into(),
                        decided_seq: None,
                        decided_by: None,
                        decided_as: None,
                        decision_ms: None,
                        ran_seq: None,
                    };
                    self.pending_held.insert(
                        (session, s("action_digest").unwrap_or_default()),
                        self.held.len(),
                    );
                    self.held.push((line, e.received_at));
                }
                *self.policy_decisions.entry(d).or_default() += 1;
            }
            (Role::Session, "git.commit") => {
                if let Some(commit) = s("commit") {
                    self.commits.push(CommitLine {
                        seq: e.seq.0,
                        commit,
                        session: actor.clone(),
                        agent: self
                            .sessions
                            .get(&actor)
                            .map(|si| si.agent.clone())
                            .unwrap_or_default(),
                        repo: s("repo"),
                        branch: s("branch"),
                        intent_seq: ev.details.get("intent_seq").and_then(|v| v.as_u64()),
                        at: e.received_at.to_string(),
                    });
                }
            }
            (Role::Ledger, actions::CREDENTIAL_MINT | actions::CREDENTIAL_REVOKE) => {
                self.credentials.push(CredentialLine {
                    seq: e.seq.0,
                    action: action.to_string(),
                    subject: s("subject").unwrap_or_else(|| actor.clone()),
                    scope: s("scope"),
                    ttl_seconds: ev.details.get("ttl_seconds").and_then(|v| v.as_u64()),
                    tokens_revoked: ev.details.get("tokens_revoked").and_then(|v| v.as_u64()),
                    at: e.received_at.to_string(),
                });
            }
            (Role::Admin, actions::IDENTITY_REVOKE) => {
                if let Some(r) = ev
                    .detail_str("revocation")
                    .and_then(|j| custody_identity::Revocation::verify(j).ok())
                {
                    let subject = r.subject.to_string();
                    let effective = Timestamp::from_datetime(r.effective_at).max(e.received_at);
                    if let Some(si) = self.sessions.get_mut(&subject) {
                        si.revoked_at_seq.get_or_insert(e.seq.0);
                    }
                    for si in self.sessions.values_mut() {
                        if si.delegated_by == subject {
                            si.revoked_at_seq.get_or_insert(e.seq.0);
                        }
                    }
                    self.revocations.push((
                        RevocationLine {
                            seq: e.seq.0,
                            at: e.received_at.to_string(),
                            effective: effective.to_string(),
                            admin: actor.clone(),
                            subject,
                            reason: r.reason.clone(),
                            refused_after: 0,
                            last_refusal_after_ms: None,
                            accepted_after: 0,
                        },
                        effective,
                    ));
                }
            }
            (Role::Ledger, actions::REQUEST_DENIED) => {
                let who = s("actor").unwrap_or_default();
                let line = DeniedLine {
                    seq: e.seq.0,
                    actor: who.clone(),
                    attempted: s("attempted_action").unwrap_or_default(),
                    code: s("code").unwrap_or_default(),
                };
                for (r, effective) in &mut self.revocations {
                    let by_subject = r.subject == who
                        || self
                            .sessions
                            .get(&who)
                            .is_some_and(|si| si.delegated_by == r.subject);
                    if by_subject && e.received_at >= *effective {
                        r.refused_after += 1;
                        r.last_refusal_after_ms =
                            Some((e.received_at.unix_millis() - effective.unix_millis()) as i64);
                    }
                }
                self.denied.push((line, e.received_at));
            }
            (Role::Ledger, actions::PAYLOAD_REDACT) => self.redactions.push(e.seq.0),
            _ => {}
        }
    }

    /// Opens, extends or closes the session's escape-hatch span.
    fn track_mode(&mut self, session: &str, mode: &str, e: &Entry) {
        let escape = ESCAPE_MODES.contains(&mode);
        match (self.open_escape.get(session).copied(), escape) {
            (Some(i), true) => {
                let span = &mut self.escape[i];
                span.to_seq = e.seq.0;
                span.to = e.received_at.to_string();
                span.entries += 1;
            }
            (Some(_), false) => {
                self.open_escape.remove(session);
            }
            (None, true) => {
                self.open_escape
                    .insert(session.to_string(), self.escape.len());
                self.escape.push(EscapeSpan {
                    session: session.to_string(),
                    agent: self
                        .sessions
                        .get(session)
                        .map(|si| si.agent.clone())
                        .unwrap_or_default(),
                    mode: mode.to_string(),
                    from_seq: e.seq.0,
                    to_seq: e.seq.0,
                    from: e.received_at.to_string(),
                    to: e.received_at.to_string(),
                    entries: 1,
                });
            }
            (None, false) => {}
        }
    }

    fn claims(&self) -> Vec<Claim> {
        vec![
            Claim {
                claim: "prompts a person typed, relayed by the agent's hook".into(),
                count: self.human_relayed,
                attested_by: "the agent session (its own signature)".into(),
            },
            Claim {
                claim: "a person's prompts or permission decisions in agent telemetry".into(),
                count: self.human_telemetry,
                attested_by: "the ledger key, recording what the agent's OTLP export reported"
                    .into(),
            },
            Claim {
                claim: "tool calls the agent says a person approved".into(),
                count: self.approval_claims,
                attested_by: "the agent session (its own signature)".into(),
            },
        ]
    }

    fn finish(mut self, v: &Verification) -> Report {
        let claims = self.claims();
        let valid = v.valid;
        for (r, _) in &mut self.revocations {
            r.accepted_after = self.accepted_after.get(&r.subject).copied().unwrap_or(0);
        }
        let days = match (self.first, self.last) {
            (Some(a), Some(b)) => (b.unix_millis() - a.unix_millis()) as f64 / 86_400_000.0,
            _ => 0.0,
        };
        let identities: Vec<Identity> = self
            .counts
            .iter()
            .map(|(did, n)| {
                let role = match self.roles.get(did) {
                    Some(Role::Ledger) => "ledger",
                    Some(Role::Session | Role::NewSession) => "session",
                    _ => match (self.admins.contains(did), self.delegators.contains(did)) {
                        (true, true) => "admin+delegator",
                        (true, false) => "admin",
                        (false, true) => "delegator",
                        _ if self.approvers.contains(did) => "approver",
                        _ if self.reviewers.contains(did) => "reviewer",
                        _ => "unknown",
                    },
                };
                Identity {
                    did: did.clone(),
                    kind: self.kinds.get(did).cloned().unwrap_or_default(),
                    role: role.into(),
                    entries: *n,
                    session: self.sessions.get(did).cloned(),
                }
            })
            .collect();
        let (timeline, bucket_seconds) = timeline(&self.times);
        let sessions_without_end: Vec<String> = self
            .sessions
            .keys()
            .filter(|d| !self.session_ends.contains(*d))
            .cloned()
            .collect();
        let revocations: Vec<RevocationLine> = self.revocations.into_iter().map(|r| r.0).collect();
        let denied: Vec<DeniedLine> = self.denied.into_iter().map(|d| d.0).collect();
        let activity = Activity {
            by_kind: self.by_kind,
            claims,
            human_relayed_by_agent: self.human_relayed,
            broker_attested: self.attested,
            policy_decisions: self.policy_decisions,
            by_kind_action: self.by_kind_action,
            agent_approvals: self.approvals,
            human_decisions: self.decisions.clone(),
            timeline,
            bucket_seconds,
        };
        let oversight = Oversight {
            revocations,
            approvals: self.decisions.get("approve").copied().unwrap_or(0),
            denials: self.decisions.get("deny").copied().unwrap_or(0),
            verified_approvals: self.verified_approvals,
            claimed_approvals: self.claimed_approvals,
            held: self.held.into_iter().map(|h| h.0).collect(),
            refusals: self.refusals,
            escape_hatch: self.escape,
        };
        let exceptions = Exceptions {
            denied,
            redactions: self.redactions,
            payloads_redacted: self.payloads_redacted,
            sessions_without_end,
            results_without_call: self.results_without_call,
            refused: self.refused,
        };
        let verification = VerificationSummary {
            valid,
            ledger: v.ledger.clone().unwrap_or_default(),
            ledger_key_pinned: v.ledger_key_pinned,
            root: v.root.clone().unwrap_or_default(),
            tree_size: v.tree_size,
            checks: v
                .checks
                .iter()
                .map(|c| CheckLine {
                    name: c.name.to_string(),
                    ok: c.ok,
                    failing_seqs: c.failing_seqs(),
                    failure_count: c.failure_count,
                })
                .collect(),
        };
        let period = Period {
            first: self.first.map(|t| t.to_string()),
            last: self.last.map(|t| t.to_string()),
            days,
        };
        let max_ttl = self.credentials.iter().filter_map(|c| c.ttl_seconds).max();
        let articles = articles(
            &verification,
            &period,
            &identities,
            &activity,
            &oversight,
            &exceptions,
            v,
            max_ttl,
        );
        Report {
            format: REPORT_FORMAT.into(),
            version: REPORT_VERSION,
            verification,
            period,
            identities,
            activity,
            commits: self.commits,
            credentials: self.credentials,
            oversight,
            exceptions,
            articles,
        }
    }
}

/// Buckets entries by time: at most about 24 buckets over the period.
fn timeline(times: &[(i128, &str)]) -> (Vec<Bucket>, i64) {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return (Vec::new(), 60);
    };
    let span_s = ((last.0 - first.0) / 1000).max(1) as i64;
    let steps = [
        1,
        5,
        10,
        30,
        60,
        300,
        900,
        3600,
        6 * 3600,
        86_400,
        7 * 86_400,
        30 * 86_400,
    ];
    let bucket = steps
        .iter()
        .copied()
        .find(|s| span_s / s <= 24)
        .unwrap_or(30 * 86_400);
    let start = (first.0 / 1000) as i64 / bucket * bucket;
    let n = ((last.0 / 1000) as i64 - start) / bucket + 1;
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start: Timestamp::from_unix_millis(((start + i * bucket) as i128) * 1000)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            agent: 0,
            human: 0,
            service: 0,
            ledger: 0,
        })
        .collect();
    for (t, k) in times {
        let i = (((t / 1000) as i64 - start) / bucket) as usize;
        if let Some(b) = out.get_mut(i) {
            match *k {
                "agent" => b.agent += 1,
                "human" => b.human += 1,
                "service" => b.service += 1,
                _ => b.ledger += 1,
            }
        }
    }
    (out, bucket)
}

#[allow(clippy::too_many_arguments)]
fn articles(
    ver: &VerificationSummary,
    period: &Period,
    ids: &[Identity],
    act: &Activity,
    ov: &Oversight,
    ex: &Exceptions,
    v: &Verification,
    max_ttl: Option<u64>,
) -> Vec<Article> {
    let art = |article: &str,
               title: &str,
               status: &str,
               reasoning: String,
               evidence: Vec<String>,
               cannot: &str| Article {
        article: article.into(),
        title: title.into(),
        status: if ver.valid {
            status.into()
        } else {
            "unverified".into()
        },
        reasoning: if ver.valid {
            reasoning
        } else {
            format!("The bundle does not verify, so nothing below is proven. (Unverified claim: {reasoning})")
        },
        evidence,
        cannot_prove: cannot.into(),
    };
    let sessions: Vec<&Identity> = ids.iter().filter(|i| i.session.is_some()).collect();
    let agents: BTreeSet<&str> = sessions
        .iter()
        .filter_map(|i| i.session.as_ref().map(|s| s.agent.as_str()))
        .collect();
    let failing: Vec<&str> = ver
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    let accepted_after: u64 = ov.revocations.iter().map(|r| r.accepted_after).sum();
    let unrecorded = act.agent_approvals.get("unrecorded").copied().unwrap_or(0);
    let mut out = Vec::new();

    let coverage_gaps = ex.sessions_without_end.len() as u64 + ex.results_without_call;
    out.push(art(
        "12",
        "Record-keeping",
        if coverage_gaps == 0 { "met" } else { "partial" },
        format!(
            "{} entries over {:.2} days are signed by their actors, sequenced, hash-chained and covered by {} signed checkpoint(s); the whole record verifies. Coverage signals: {} session(s) without a recorded end, {} tool result(s) without a matching call.",
            ver.tree_size, period.days, v.stats.checkpoints, ex.sessions_without_end.len(), ex.results_without_call
        ),
        vec![format!("root {} at tree size {}", ver.root, ver.tree_size)],
        "That every action of an agent was logged: an agent acting outside its hooks leaves no entry.",
    ));
    out.push(art(
        "13",
        "Transparency to deployers",
        if sessions.is_empty() { "not_applicable" } else { "met" },
        format!(
            "{} agent session(s) of {} agent(s) ({}) ran under signed delegations naming scopes and contexts; the bundle format (docs/FORMAT.md) and this verifier are the documented way to interpret the logs.",
            sessions.len(),
            agents.len(),
            agents.iter().copied().collect::<Vec<_>>().join(", ")
        ),
        sessions
            .iter()
            .filter_map(|i| i.session.as_ref().map(|s| format!("seq {}: {} for {} in {} scopes {:?}", s.start_seq, s.agent, s.delegated_by, s.context, s.scopes)))
            .collect(),
        "The quality of the provider's instructions for use.",
    ));
    let kill = ov.revocations.len();
    out.push(art(
        "14",
        "Human oversight",
        if accepted_after > 0 {
            "not_met"
        } else if kill > 0 || ov.approvals + ov.denials > 0 || !ov.held.is_empty() {
            "met"
        } else {
            "partial"
        },
        format!(
            "{} call(s) held for approval ({} approved, {} refused, {} pending); {} escape-hatch span(s) (agent prompts bypassed). Approvals verified against the entries they name: human {}, auto-review {}, policy {}; reported only: {}. {} human approval(s) and {} denial(s) recorded; agent tool calls approved by human {}, policy {}, auto-review {}, nobody {}, unrecorded {}. {} kill-switch use(s); every later attempt by a revoked identity was refused ({} refused, {} accepted).",
            ov.held.len(),
            ov.held.iter().filter(|h| h.outcome == "approved").count(),
            ov.held.iter().filter(|h| h.outcome == "refused").count(),
            ov.held.iter().filter(|h| h.outcome == "pending").count(),
            ov.escape_hatch.len(),
            ov.verified_approvals.get("human").copied().unwrap_or(0),
            ov.verified_approvals.get("auto_review").copied().unwrap_or(0),
            ov.verified_approvals.get("policy").copied().unwrap_or(0),
            ov.claimed_approvals.values().sum::<u64>(),
            ov.approvals,
            ov.denials,
            act.agent_approvals.get("human").copied().unwrap_or(0),
            act.agent_approvals.get("policy").copied().unwrap_or(0),
            act.agent_approvals.get("auto_review").copied().unwrap_or(0),
            act.agent_approvals.get("none").copied().unwrap_or(0),
            unrecorded,
            kill,
            ov.revocations.iter().map(|r| r.refused_after).sum::<u64>(),
            accepted_after
        ),
        ov.revocations
            .iter()
            .map(|r| format!("seq {}: {} revoked {} ({}); last refusal {} ms later", r.seq, r.admin, r.subject, r.reason, r.last_refusal_after_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into())))
            .chain(ov.held.iter().map(|h| format!(
                "seq {}: {} call held by {} (needs {}): {}{}",
                h.seq,
                h.tool,
                h.rules.join(", "),
                h.requires,
                h.outcome,
                match (&h.decided_by, h.decided_seq, h.decision_ms) {
                    (Some(by), Some(s), Some(ms)) => format!(" by {by} at seq {s}, {ms} ms later"),
                    _ => String::new(),
                }
            )))
            .chain(ov.escape_hatch.iter().map(|x| format!(
                "seq {}..{}: {} ran in {} from {} to {}",
                x.from_seq, x.to_seq, x.session, x.mode, x.from, x.to
            )))
            .collect(),
        "That the humans understood what they approved (automation bias).",
    ));
    out.push(art(
        "15",
        "Accuracy, robustness and cybersecurity",
        if failing.is_empty() { "met" } else { "not_met" },
        format!(
            "Integrity: {} of {} checks pass (chain, Merkle tree, checkpoints, Ed25519 signatures checked strictly). {} request(s) were refused and recorded. {}",
            ver.checks.len() - failing.len(),
            ver.checks.len(),
            ex.denied.len(),
            match max_ttl {
                Some(t) => format!("Credentials were minted per scope with TTLs of at most {t} s."),
                None => "No credentials were minted.".into(),
            }
        ),
        ex.denied.iter().take(50).map(|d| format!("seq {}: {} refused for {} ({})", d.seq, d.actor, d.attempted, d.code)).collect(),
        "Model accuracy.",
    ));
    let retention_days = period.days;
    out.push(art(
        "19, 26(6)",
        "Log retention (at least six months)",
        if retention_days >= RETENTION_DAYS as f64 { "met" } else { "partial" },
        format!(
            "The bundle covers {retention_days:.2} days ({} to {}); six months is {RETENTION_DAYS} days. {} payload(s) redacted with the chain still valid.",
            period.first.clone().unwrap_or_default(),
            period.last.clone().unwrap_or_default(),
            ex.payloads_redacted
        ),
        ex.redactions.iter().map(|s| format!("seq {s}: payload redaction recorded")).collect(),
        "Retention beyond the bundle handed over.",
    ));
    out.push(art(
        "72",
        "Post-market monitoring",
        if ex.denied.is_empty() && kill == 0 { "partial" } else { "met" },
        format!(
            "The ledger records {} refused attempt(s), {} revocation(s) and {} redaction(s) over the period, per agent session, as the data source for monitoring.",
            ex.denied.len(),
            kill,
            ex.redactions.len()
        ),
        vec![format!("{} agent entries, {} human entries", act.by_kind.get("agent").copied().unwrap_or(0), act.by_kind.get("human").copied().unwrap_or(0))],
        "That the analysis was done.",
    ));
    out
}
