//! Human oversight of held calls: the people (and listed reviewers) who may
//! decide a session's held actions see them with their exact input, and
//! submit their decision as an `approval` event signed with their own key;
//! the session whose call was held asks whether it was decided.
//!
//! Who may decide what is the ledger's rule (A8, `custody_ledger::authority`):
//! the listing shows a caller what the rules would let it decide, and the
//! rules decide the submitted event, so the two cannot disagree.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_ledger::actions::{self, Role};
use custody_ledger::denial::DenialCode;
use custody_ledger::oversight::{self, Requires};
use custody_ledger::{Entry, Timestamp};
use custody_wire::api::{
    ApprovalRecorded, ApprovalStatus, ApprovalStatusQuery, HeldAction, PendingList, PendingQuery,
    SubmitApproval, PATH_APPROVALS, PATH_APPROVALS_PENDING, PATH_APPROVAL_STATUS,
};
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::auth::Signed;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, HeldEntry};

/// How long a held call stays listed.
const HELD_FOR: Duration = Duration::from_secs(24 * 3600);

/// Held calls one listing rebuilds from the ledger at most (each is a read
/// of its entry and its payload); later listings add the rest.
const MAX_REBUILT: usize = 500;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_APPROVALS, post(submit))
        .signed(Method::POST, PATH_APPROVALS_PENDING, post(pending))
        .signed(Method::POST, PATH_APPROVAL_STATUS, post(status))
}

/// `POST /v1/approvals`, signed by the approver: their own `approval` event.
/// The rules decide it (who may approve this session's actions, the action
/// it binds, its expiry, the floor for reviewers); a refusal is recorded.
async fn submit(
    State(s): State<Arc<AppState>>,
    req: Signed<SubmitApproval>,
) -> ApiResult<Json<ApprovalRecorded>> {
    let (caller, req) = req.into_parts();
    let ev = &req.event.event;
    if ev.actor != caller || ev.action.as_str() != actions::APPROVAL {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "the body must be the caller's own approval event",
        ));
    }
    let decision = ev.detail_str("decision").unwrap_or_default().to_string();
    let expires_at = ev.detail_str("expires_at").unwrap_or_default().to_string();
    let a = s.append_one(req.event).await?;
    Ok(Json(ApprovalRecorded {
        seq: a.seq.0,
        decision,
        expires_at,
    }))
}

/// `POST /v1/approvals/pending`: the held calls the caller may decide (all
/// of them for an admin, an approver or a reviewer — a reviewer only those
/// its approval can lift —, its own sessions' for a delegator), newest last.
async fn pending(
    State(s): State<Arc<AppState>>,
    req: Signed<PendingQuery>,
) -> ApiResult<Json<PendingList>> {
    let roles = req.roles().to_vec();
    let (caller, q) = req.into_parts();
    let all = roles
        .iter()
        .any(|r| matches!(r, Role::Admin | Role::Approver));
    let reviewer = roles.contains(&Role::Reviewer);
    let delegator = roles.contains(&Role::Delegator);
    if !(all || reviewer || delegator) {
        return Err(s
            .refuse(
                &caller,
                "approval.pending",
                DenialCode::NotApprover,
                format!("{caller} decides no session's actions (a delegator, an admin, an approver or a reviewer does)"),
            )
            .await);
    }
    // Holds another broker recorded a moment ago are listed too: the rules'
    // state catches up with the shared ledger first (a no-op on a ledger
    // only this process appends to).
    s.storage.catch_up_since(std::time::Instant::now()).await?;
    let now = Timestamp::now();
    // Calls held by another broker sharing the ledger, or by this one
    // before it restarted, are rebuilt from the ledger: the one asked for,
    // or every hold in force that the rules' state knows of (each broker
    // folds in every `policy.decision`) and this broker has not listed yet.
    let wanted = match q.decision_seq {
        Some(want) => vec![want],
        None => s.rules(|a| a.oversight().holding_decisions(now)),
    };
    let missing: Vec<u64> = {
        let held = s.held.lock().unwrap_or_else(|p| p.into_inner());
        wanted
            .into_iter()
            .filter(|seq| !held.contains_key(seq))
            .collect()
    };
    // The newest, when there are more than a page of them.
    for seq in missing.into_iter().rev().take(MAX_REBUILT) {
        if let Some(h) = held_from_ledger(&s, seq, now).await? {
            s.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, h);
        }
    }
    let mut held = s.held.lock().unwrap_or_else(|p| p.into_inner());
    held.retain(|_, h| h.at.elapsed() < HELD_FOR);
    let mut out = Vec::new();
    for (seq, h) in held.iter() {
        if q.decision_seq.is_some_and(|want| want != *seq) {
            continue;
        }
        let mine = all
            || (delegator && h.session.issuer == caller)
            || (reviewer && h.requires == Requires::Review);
        if !mine {
            continue;
        }
        let mut a = h.action.clone();
        a.state = s
            .rules(|r| {
                let o = r.oversight();
                let did = &h.session.session;
                if o.refusal(did, &a.action_digest, now).is_some() {
                    "refused"
                } else if o
                    .open_approval(did, &a.action_digest, now, h.requires)
                    .is_some()
                {
                    "approved"
                } else {
                    "pending"
                }
            })
            .into();
        out.push(a);
    }
    if let (Some(want), true) = (q.decision_seq, out.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::NoSuchEntry,
            format!("entry {want} is no held call you may decide (not held, older than a day, its payload redacted, or another delegator's session)"),
        ));
    }
    Ok(Json(PendingList { held: out }))
}

/// `POST /v1/approvals/status`, signed by the session: whether its held call
/// (by action digest) was approved or refused. Reads the rules' state only;
/// nothing is recorded, so a hook may ask while it waits.
async fn status(
    State(s): State<Arc<AppState>>,
    req: Signed<ApprovalStatusQuery>,
) -> ApiResult<Json<ApprovalStatus>> {
    let (caller, q) = req.into_parts();
    if !oversight::is_digest(&q.action_digest) {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "`action_digest` is 64 lowercase hex digits",
        ));
    }
    if let Err(why) = s.active_session(&caller) {
        return Err(s
            .refuse(&caller, "approval.status", DenialCode::SessionInactive, why)
            .await);
    }
    let now = Timestamp::now();
    let (state, seq) = s.rules(|a| {
        let o = a.oversight();
        let requires = o
            .hold(&caller, &q.action_digest, now)
            .map(|h| h.requires)
            .unwrap_or(Requires::Human);
        if let Some(r) = o.refusal(&caller, &q.action_digest, now) {
            ("refused", Some(r.seq))
        } else if let Some(r) = o.open_approval(&caller, &q.action_digest, now, requires) {
            ("approved", Some(r.seq))
        } else {
            ("pending", None)
        }
    });
    Ok(Json(ApprovalStatus {
        state: state.into(),
        seq,
    }))
}

/// The call the ledger key's `policy.decision` at `seq` held, from that
/// entry and the action's canonical form kept as its payload (FORMAT.md
/// §3.3), checked against the entry's action digest; `None` when the entry
/// is no hold, is older than a day, or its payload was redacted.
async fn held_from_ledger(
    s: &Arc<AppState>,
    seq: u64,
    now: Timestamp,
) -> ApiResult<Option<HeldEntry>> {
    if seq >= s.storage.visible_size().await? {
        return Ok(None);
    }
    let line = s.storage.line(seq).await?;
    let Ok(entry) = Entry::parse_line(&line) else {
        return Ok(None);
    };
    let ev = &entry.event;
    let ledger = s.rules(|a| a.ledger().cloned());
    if ev.action.as_str() != actions::POLICY_DECISION
        || Some(&ev.actor) != ledger.as_ref()
        || ev.detail_str("decision") != Some("approval_required")
    {
        return Ok(None);
    }
    let age_ms = (now.unix_millis() - entry.received_at.unix_millis()).max(0);
    let age = Duration::from_millis(age_ms as u64);
    let (Some(requires), Some(digest), Some(session_did), Some(pref)) = (
        ev.detail_str("requires").and_then(Requires::parse),
        ev.detail_str("action_digest"),
        ev.detail_str("session_did")
            .and_then(|d| custody_identity::Did::parse(d).ok()),
        ev.payload.as_ref(),
    ) else {
        return Ok(None);
    };
    if age >= HELD_FOR {
        return Ok(None);
    }
    let Some((_, body)) = s.storage.payload(pref.digest).await? else {
        return Ok(None);
    };
    if oversight::digest_of_preimage(&body) != digest {
        return Ok(None);
    }
    let Ok(pre) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Ok(None);
    };
    let Some(session) = s.rules(|a| a.session(&session_did).map(|g| g.delegation.clone())) else {
        return Ok(None);
    };
    let text = |k: &str| pre[k].as_str().unwrap_or_default().to_string();
    let action = HeldAction {
        decision_seq: seq,
        held_at: entry.received_at.to_string(),
        session_did: session_did.to_string(),
        session_id: session.id.clone(),
        agent: session.agent.clone(),
        context: session.context.clone(),
        delegator: session.issuer.to_string(),
        tool: text("tool"),
        input: pre["input"].clone(),
        cwd: text("cwd"),
        call_id: ev.detail_str("call_id").map(str::to_string),
        rules: ev
            .details
            .get("policies")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        requires: requires.as_str().into(),
        action_digest: digest.to_string(),
        state: "pending".into(),
    };
    Ok(Some(HeldEntry {
        action,
        session,
        requires,
        at: std::time::Instant::now()
            .checked_sub(age)
            .unwrap_or_else(std::time::Instant::now),
    }))
}
