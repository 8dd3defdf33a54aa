//! Every event the ledger key signs: one constructor per ledger-key row of
//! the action table (FORMAT.md §9.1), so what the broker attests has one
//! shape wherever it is recorded. Signing and appending are the state's
//! business ([`crate::state::AppState::append_attested`]).

use custody_identity::{Delegation, Did};
use custody_ledger::actions;
use custody_ledger::authority::TrustRoots;
use custody_ledger::denial::DenialCode;
use custody_ledger::{
    ActionType, ActorKind, Approval, Context, Event, LedgerError, PayloadDigest, PayloadRef,
    SessionId,
};
use serde_json::{json, Value};

use crate::otlp::{self, Classified, Decider};

/// How much of a refusal's reason the ledger keeps.
const MAX_REASON_CHARS: usize = 500;

/// Builds the ledger key's events.
pub struct Attest {
    ledger: Did,
}

/// A token the broker minted, as `credential.mint` records it.
pub struct MintRecord<'a> {
    pub session: &'a Delegation,
    pub scope: &'a str,
    pub policies: &'a [String],
    pub ttl_seconds: u64,
    /// The token's own accessor hash: known when the entry is written after
    /// OpenBao answered (tokens minted without a parent).
    pub accessor_sha256: Option<&'a str>,
    /// The session's parent token's accessor hash: a token minted under a
    /// parent is recorded while OpenBao creates it, before its own accessor
    /// exists; the kill switch reaches it through this parent.
    pub parent_accessor_sha256: Option<&'a str>,
    /// The nonce of the session's `credential.request`.
    pub request_nonce: String,
}

/// Tokens the broker revoked, as `credential.revoke` records them.
pub struct RevokeRecord<'a> {
    pub subject: &'a Did,
    /// The entry that caused it (a revocation, a session's end), if any.
    pub because_seq: Option<u64>,
    pub reason: &'a str,
    pub sessions: &'a [Did],
    pub accessor_sha256: &'a [String],
    pub tokens_revoked: u64,
    /// Parent tokens revoked, each with every child.
    pub parents_revoked: u64,
    pub failures: &'a [String],
}

/// The pre-tool policy's decision, as `policy.decision` records it.
pub struct PolicyRecord<'a> {
    pub tool: &'a str,
    pub allow: bool,
    pub policies: &'a [String],
    pub resource_kind: &'a str,
    pub errors: &'a [String],
    /// The command, path or URL as a salted digest (it may hold secrets).
    pub resource: PayloadRef,
}

fn truncated(s: &str) -> String {
    s.chars().take(MAX_REASON_CHARS).collect()
}

impl Attest {
    pub fn new(ledger: Did) -> Self {
        Self { ledger }
    }

    fn event(&self, action: &'static str) -> Event {
        // The table's own action names are valid action types (checked by
        // `every_constructor_is_a_ledger_key_row` below).
        let action = ActionType::new(action).expect("an action name of the table");
        Event::new(self.ledger.clone(), ActorKind::Service, action)
    }

    /// An event about a session's activity: it names the session, its
    /// context and delegator, as the session's own events do.
    fn about_session(&self, mut e: Event, d: &Delegation) -> Result<Event, LedgerError> {
        e.session = Some(SessionId::new(d.id.clone())?);
        e.context = Some(Context::new(d.context.clone())?);
        e.on_behalf_of = Some(d.issuer.clone());
        e.details
            .insert("session_did".into(), d.session.as_str().into());
        Ok(e)
    }

    /// `ledger.genesis` (an empty ledger) or `trust.update`.
    pub fn trust(&self, genesis: bool, trust: &TrustRoots) -> Event {
        let mut e = self.event(if genesis {
            actions::GENESIS
        } else {
            actions::TRUST_UPDATE
        });
        e.details = trust.to_details();
        e
    }

    /// `request.denied`: a refused request by an authenticated caller.
    pub fn request_denied(
        &self,
        actor: &Did,
        attempted: &str,
        code: DenialCode,
        reason: &str,
    ) -> Event {
        let mut e = self.event(actions::REQUEST_DENIED);
        e.details.insert("actor".into(), actor.as_str().into());
        e.details
            .insert("attempted_action".into(), truncated(attempted).into());
        e.details.insert("code".into(), code.as_str().into());
        e.details.insert("reason".into(), truncated(reason).into());
        e
    }

    pub fn credential_mint(&self, m: &MintRecord<'_>) -> Event {
        let mut e = self.event(actions::CREDENTIAL_MINT);
        let d = &mut e.details;
        d.insert("subject".into(), m.session.session.as_str().into());
        d.insert("session".into(), m.session.id.clone().into());
        d.insert("scope".into(), m.scope.into());
        d.insert("policies".into(), json!(m.policies));
        d.insert("ttl_seconds".into(), m.ttl_seconds.into());
        if let Some(h) = m.accessor_sha256 {
            d.insert("accessor_sha256".into(), h.into());
        }
        if let Some(h) = m.parent_accessor_sha256 {
            d.insert("parent_accessor_sha256".into(), h.into());
        }
        d.insert("request_nonce".into(), m.request_nonce.clone().into());
        e
    }

    pub fn credential_revoke(&self, r: &RevokeRecord<'_>) -> Event {
        let mut e = self.event(actions::CREDENTIAL_REVOKE);
        let d = &mut e.details;
        d.insert("subject".into(), r.subject.as_str().into());
        if let Some(seq) = r.because_seq {
            d.insert("revocation_seq".into(), seq.into());
        }
        d.insert("reason".into(), truncated(r.reason).into());
        d.insert(
            "sessions".into(),
            json!(r.sessions.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
        );
        d.insert("accessor_sha256".into(), json!(r.accessor_sha256));
        d.insert("tokens_revoked".into(), r.tokens_revoked.into());
        if r.parents_revoked > 0 {
            d.insert("parents_revoked".into(), r.parents_revoked.into());
        }
        if !r.failures.is_empty() {
            d.insert("failures".into(), json!(r.failures));
        }
        e
    }

    pub fn policy_decision(
        &self,
        session: &Delegation,
        p: PolicyRecord<'_>,
    ) -> Result<Event, LedgerError> {
        let mut e = self.about_session(self.event(actions::POLICY_DECISION), session)?;
        let d = &mut e.details;
        d.insert("tool".into(), p.tool.into());
        d.insert(
            "decision".into(),
            if p.allow { "allow" } else { "deny" }.into(),
        );
        d.insert("policies".into(), json!(p.policies));
        d.insert("resource_kind".into(), p.resource_kind.into());
        if !p.errors.is_empty() {
            d.insert("errors".into(), json!(p.errors));
        }
        e.payload = Some(p.resource);
        Ok(e)
    }

    /// `telemetry.*`: one OTLP log record of a session's agent, with the whole
    /// record as a salted payload (`record`). A user's decision reported by
    /// the agent becomes an approval by the session's delegator: the broker's
    /// reading of the agent's report, not the person's signature.
    pub fn telemetry(
        &self,
        session: &Delegation,
        r: &otlp::Record,
        c: &Classified,
        record: PayloadRef,
    ) -> Result<Event, LedgerError> {
        let action = ActionType::new(c.action.clone())?;
        let mut e = self.about_session(
            Event::new(self.ledger.clone(), ActorKind::Service, action),
            session,
        )?;
        let det = &mut e.details;
        det.insert("attested_by".into(), "broker".into());
        det.insert("source".into(), "otlp".into());
        det.insert("event".into(), r.name.clone().into());
        det.insert("origin".into(), c.origin.into());
        det.insert(
            "agent_time_unix_nano".into(),
            r.time_unix_nano.to_string().into(),
        );
        det.insert("attributes".into(), otlp::ledger_attributes(r).into());
        if let Some(dec) = &c.decision {
            det.insert("decision".into(), dec.clone().into());
        }
        if let Some(Decider::User(src) | Decider::Reviewer(src) | Decider::Other(src)) = &c.decider
        {
            det.insert("decision_source".into(), Value::from(src.clone()));
        }
        e.approval = match &c.decider {
            Some(Decider::User(_)) => Some(Approval::Human {
                approver: session.issuer.clone(),
            }),
            Some(Decider::Config) => Some(Approval::Policy {
                policy: "agent-config".into(),
            }),
            Some(Decider::Reviewer(r)) => Some(Approval::AutoReview {
                reviewer: r.clone(),
            }),
            Some(Decider::Other(_)) | None => None,
        };
        e.payload = Some(record);
        Ok(e)
    }

    pub fn checkpoint_cosigned(&self, size: u64, root_hex: &str, witnesses: &[String]) -> Event {
        let mut e = self.event(actions::CHECKPOINT_COSIGNED);
        e.details.insert("size".into(), size.into());
        e.details.insert("root".into(), root_hex.into());
        e.details.insert("witnesses".into(), json!(witnesses));
        e
    }

    pub fn payload_redact(
        &self,
        digest: &PayloadDigest,
        requested_by: &Did,
        reason: &str,
        existed: bool,
    ) -> Event {
        let mut e = self.event(actions::PAYLOAD_REDACT);
        e.details.insert("digest".into(), digest.to_hex().into());
        e.details
            .insert("requested_by".into(), requested_by.as_str().into());
        e.details.insert("reason".into(), truncated(reason).into());
        e.details.insert("existed".into(), existed.into());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_identity::KeyPair;
    use custody_ledger::actions::{rule_for, Role};

    /// Every constructor builds an event the action table lets the ledger
    /// key append, as `service`.
    #[test]
    fn every_constructor_is_a_ledger_key_row() {
        let ledger = KeyPair::generate().did();
        let a = Attest::new(ledger.clone());
        let other = KeyPair::generate().did();
        let d = Delegation::new(
            KeyPair::generate().did(),
            other.clone(),
            "claude-code".into(),
            vec!["repo-read".into()],
            "chat".into(),
            time::OffsetDateTime::now_utc(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
        .unwrap();
        let pref = PayloadRef {
            digest: PayloadDigest([0; 32]),
            size: 0,
        };
        let events = vec![
            a.trust(true, &TrustRoots::default()),
            a.trust(false, &TrustRoots::default()),
            a.request_denied(&other, "tool.call", DenialCode::Revoked, "r"),
            a.credential_mint(&MintRecord {
                session: &d,
                scope: "repo-read",
                policies: &[],
                ttl_seconds: 60,
                accessor_sha256: Some("00"),
                parent_accessor_sha256: None,
                request_nonce: "00".into(),
            }),
            a.credential_revoke(&RevokeRecord {
                subject: &other,
                because_seq: Some(1),
                reason: "r",
                sessions: &[],
                accessor_sha256: &[],
                tokens_revoked: 0,
                parents_revoked: 0,
                failures: &[],
            }),
            a.policy_decision(
                &d,
                PolicyRecord {
                    tool: "Bash",
                    allow: true,
                    policies: &[],
                    resource_kind: "command",
                    errors: &[],
                    resource: pref.clone(),
                },
            )
            .unwrap(),
            a.checkpoint_cosigned(1, "00", &[]),
            a.payload_redact(&PayloadDigest([0; 32]), &other, "r", true),
        ];
        for e in events {
            let rule = rule_for(e.action.as_str()).unwrap();
            assert_eq!(
                rule.kinds_for(Role::Ledger),
                Some(&[ActorKind::Service][..])
            );
            assert_eq!(e.actor, ledger);
        }
    }
}
