//! The pre-tool policy: may this session's tool call run? The decision is
//! recorded (`policy.decision`, by the ledger key) with the ids of the
//! policies that made it; the command, path or URL only as a salted digest.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_wire::api::{PolicyCheck, PolicyDecision, PATH_POLICY_CHECK};
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::attest::PolicyRecord;
use crate::auth::Signed;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Decision, Query, Resource};
use crate::state::AppState;

/// Longest tool name the policy is asked about.
const MAX_TOOL_NAME: usize = 128;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_POLICY_CHECK, post(policy_check))
}

/// `POST /v1/policy/check`, signed by the session.
async fn policy_check(
    State(s): State<Arc<AppState>>,
    req: Signed<PolicyCheck>,
) -> ApiResult<Json<PolicyDecision>> {
    let (caller, req) = req.into_parts();
    if req.tool.is_empty() || req.tool.len() > MAX_TOOL_NAME {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("`tool` must be 1..{MAX_TOOL_NAME} characters"),
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
    let decision = match &s.policy {
        None => Decision {
            allow: true,
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
    // The command or path may hold secrets: a redactable digest, not the text.
    let body = resource.text.as_bytes().to_vec();
    let (pref, salt) = custody_ledger::bundle::salted_payload_ref(&body);
    s.storage
        .put_payloads(vec![(pref.digest, salt, body)])
        .await?;
    let e = s
        .attest
        .policy_decision(
            &session,
            PolicyRecord {
                tool: &req.tool,
                allow: decision.allow,
                policies: &decision.policies,
                resource_kind: resource.kind,
                errors: &decision.errors,
                resource: pref,
            },
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let appended = s.append_attested_one(e).await?;
    Ok(Json(PolicyDecision {
        allow: decision.allow,
        policies: decision.policies,
        seq: appended.seq.0,
    }))
}
