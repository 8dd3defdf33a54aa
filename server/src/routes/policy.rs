//! The pre-tool policy: may this session's tool call run? The decision is
//! recorded (`policy.decision`, by the ledger key) with the ids of the
//! policies that made it and the call's action digest; the command, path or
//! URL only as a salted digest.
//!
//! A call a hold rule (`@approval`) fired on is allowed only through an
//! approval the rules hold open for this session and this exact call
//! (`custody_ledger::oversight`): then the answer names the approval the
//! call's `tool.call` must claim. Otherwise it is `approval_required`, kept
//! for the people who may decide it ([`super::approvals`]). A person's
//! refusal of the exact call denies it until someone approves it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_ledger::denial::DenialCode;
use custody_ledger::oversight::{self, ApprovedBy};
use custody_ledger::{actions, Approval, SignedEvent, Timestamp};
use custody_wire::api::{AppendEvent, HeldAction, PolicyCheck, PolicyDecision, PATH_POLICY_CHECK};
use custody_wire::error::ErrorCode;

use super::{events, Routes};
use crate::attest::PolicyRecord;
use crate::auth::Signed;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Decision, Outcome, Query, Resource};
use crate::state::{AppState, HeldEntry, MAX_HELD};
use crate::storage::PayloadItem;

/// Longest tool name the policy is asked about.
const MAX_TOOL_NAME: usize = 128;
/// Longest call id kept.
const MAX_CALL_ID: usize = 256;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_POLICY_CHECK, post(policy_check))
}

/// What an approval lookup found for a held call.
enum Found {
    Approved {
        seq: u64,
        by: ApprovedBy,
        signer: String,
    },
    Refused(u64),
    Nothing,
}

/// `POST /v1/policy/check`, signed by the session.
async fn policy_check(
    State(s): State<Arc<AppState>>,
    req: Signed<PolicyCheck>,
) -> ApiResult<Json<PolicyDecision>> {
    let (caller, mut req) = req.into_parts();
    if req.tool.is_empty() || req.tool.len() > MAX_TOOL_NAME {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("`tool` must be 1..{MAX_TOOL_NAME} characters"),
        ));
    }
    if req.call_id.as_ref().is_some_and(|c| c.len() > MAX_CALL_ID) {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("`call_id` must be at most {MAX_CALL_ID} characters"),
        ));
    }
    let session = match s.active_session(&caller) {
        Ok(d) => d,
        Err(why) => {
            return Err(s
                .refuse(
                    &caller,
                    actions::POLICY_DECISION,
                    DenialCode::SessionInactive,
                    why,
                )
                .await)
        }
    };
    let resource = Resource::of(&req.tool, &req.input);
    let preimage = oversight::action_preimage(&caller, &req.tool, &req.input, &req.cwd)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, e.to_string()))?;
    let digest = oversight::digest_of_preimage(&preimage);
    let decision = match &s.policy {
        None => Decision {
            outcome: Outcome::Allow,
            policies: vec!["policy-disabled".into()],
            errors: Vec::new(),
        },
        Some(p) => p
            .decide(&Query {
                session: &session,
                tool: &req.tool,
                resource: &resource,
                cwd: &req.cwd,
                branch: &req.branch,
            })
            .map_err(|e| ApiError::internal(e.to_string()))?,
    };
    // A held call: is there a decision by someone its rule accepts?
    let mut outcome = decision.outcome;
    let found = match outcome {
        Outcome::ApprovalRequired(requires) => {
            let now = Timestamp::now();
            s.rules(|a| {
                let o = a.oversight();
                if let Some(r) = o.refusal(&caller, &digest, now) {
                    return Found::Refused(r.seq);
                }
                match o.open_approval(&caller, &digest, now, requires) {
                    Some(r) => Found::Approved {
                        seq: r.seq,
                        by: r.by,
                        signer: r.signer.to_string(),
                    },
                    None => Found::Nothing,
                }
            })
        }
        _ => Found::Nothing,
    };
    let requires = match outcome {
        Outcome::ApprovalRequired(r) => Some(r),
        _ => None,
    };
    let (mut approval_seq, mut refused_by) = (None, None);
    match &found {
        Found::Approved { seq, .. } => {
            outcome = Outcome::Allow;
            approval_seq = Some(*seq);
        }
        Found::Refused(seq) => {
            outcome = Outcome::Deny;
            refused_by = Some(*seq);
        }
        Found::Nothing => {}
    }
    // The call's tool.call sent with the check: appended right after an
    // allow by the policy alone (a call let through by an approval claims
    // the approval, so it comes separately). Checked before anything is
    // stored.
    let record = match (req.record.take(), outcome, &found) {
        (Some(r), Outcome::Allow, Found::Nothing) => {
            Some(checked_record(&s, &caller, &digest, r).await?)
        }
        _ => None,
    };
    // The command or path may hold secrets: a redactable digest, not the
    // text. A held call keeps its canonical form, whose SHA-256 is the
    // action digest a person approves.
    let body = if matches!(outcome, Outcome::ApprovalRequired(_)) {
        preimage
    } else {
        resource.text.as_bytes().to_vec()
    };
    let (pref, salt) = custody_ledger::bundle::salted_payload_ref(&body);
    let mut bodies = vec![(pref.digest, salt, body)];
    // The call's body, unless an earlier entry holds the same (then it must
    // not be taken back if the call is refused).
    let mut fresh = None;
    let record = match record {
        Some((call, Some(item))) => {
            if s.storage.payload(item.0).await?.is_none() {
                fresh = Some(item.0);
                bodies.push(item);
            }
            Some(call)
        }
        Some((call, None)) => Some(call),
        None => None,
    };
    s.storage.put_payloads(bodies).await?;
    let e = s
        .attest
        .policy_decision(
            &session,
            PolicyRecord {
                tool: &req.tool,
                decision: outcome.as_str(),
                policies: &decision.policies,
                resource_kind: resource.kind,
                errors: &decision.errors,
                resource: pref,
                action_digest: Some(&digest),
                requires: if matches!(outcome, Outcome::ApprovalRequired(_)) {
                    requires
                } else {
                    None
                },
                approval_seq,
                refused_by,
                call_id: req.call_id.as_deref(),
            },
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (appended, recorded) = match record {
        None => (s.append_attested_one(e).await?, None),
        Some(call) => {
            let both = s.append_attested_then(e, call).await;
            let recorded = match &both {
                Ok((_, Ok(c))) => Some(events::appended_body(c)),
                // Refused: the caller sends its tool.call itself and
                // learns why.
                _ => {
                    if let Some(d) = fresh {
                        let _ = s.storage.redact(d).await;
                    }
                    None
                }
            };
            (both?.0, recorded)
        }
    };
    let seq = appended.seq.0;
    let approval = match (&outcome, found) {
        (Outcome::Allow, Found::Approved { seq, by, signer }) => Some(match by {
            ApprovedBy::Human => Approval::Human {
                approver: custody_identity::Did::parse(&signer)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                seq: Some(seq),
            },
            ApprovedBy::AutoReview => Approval::AutoReview {
                reviewer: signer,
                seq: Some(seq),
            },
        }),
        (Outcome::Allow, _) => decision.policies.first().map(|p| Approval::Policy {
            policy: p.clone(),
            seq: Some(seq),
        }),
        _ => None,
    };
    if let (Outcome::ApprovalRequired(r), Some(_)) = (outcome, requires) {
        let action = HeldAction {
            decision_seq: seq,
            held_at: appended.entry.received_at.to_string(),
            session_did: caller.to_string(),
            session_id: session.id.clone(),
            agent: session.agent.clone(),
            context: session.context.clone(),
            delegator: session.issuer.to_string(),
            tool: req.tool.clone(),
            input: req.input.clone(),
            cwd: req.cwd.clone(),
            call_id: req.call_id.clone(),
            rules: decision.policies.clone(),
            requires: r.as_str().into(),
            action_digest: digest.clone(),
            state: "pending".into(),
        };
        let mut held = s.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(
            seq,
            HeldEntry {
                action,
                session: session.clone(),
                requires: r,
                at: Instant::now(),
            },
        );
        while held.len() > MAX_HELD {
            held.pop_first();
        }
    }
    Ok(Json(PolicyDecision {
        allow: outcome == Outcome::Allow,
        decision: outcome.as_str().into(),
        policies: decision.policies,
        seq,
        action_digest: Some(digest),
        requires: match outcome {
            Outcome::ApprovalRequired(r) => Some(r.as_str().into()),
            _ => None,
        },
        approval,
        refused_by,
        recorded,
    }))
}

/// The `tool.call` sent with a check: by the caller, for this very call
/// (`details.action_digest`), claiming the decision it is sent with; its
/// body checked against it. The signature is the rules' to check, when it
/// is appended.
async fn checked_record(
    s: &Arc<AppState>,
    caller: &custody_identity::Did,
    digest: &str,
    r: AppendEvent,
) -> ApiResult<(SignedEvent, Option<PayloadItem>)> {
    let ev = &r.event.event;
    if ev.actor != *caller {
        let why = format!(
            "the request is signed by {caller} but the record's actor is {}",
            ev.actor
        );
        return Err(s
            .refuse(caller, actions::TOOL_CALL, DenialCode::DidMismatch, why)
            .await);
    }
    let bad = |m: String| ApiError::new(ErrorCode::Malformed, m);
    if ev.action.as_str() != actions::TOOL_CALL {
        return Err(bad(format!(
            "`record` is the call's tool.call, not a {}",
            ev.action
        )));
    }
    if !ev
        .approval
        .as_ref()
        .is_some_and(Approval::is_decided_with_call)
    {
        return Err(bad(
            "`record` claims {\"by\":\"policy\"}, the decision it is sent with".into(),
        ));
    }
    if ev.detail_str("action_digest") != Some(digest) {
        return Err(bad(format!(
            "`record` names another action than this call (digest {digest})"
        )));
    }
    let body = match &r.payload {
        Some(p) => Some(events::checked_payload(ev, p)?),
        None => None,
    };
    Ok((r.event, body))
}
