//! Sessions: a delegator starts one for an agent's fresh key; a session asks
//! whether it may still act. (A session ends itself with a `session.end`
//! event: see [`super::events`].)

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_identity::Delegation;
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_wire::api::*;
use custody_wire::error::ErrorCode;
use time::OffsetDateTime;

use super::Routes;
use crate::auth::{sha256_hex, Signed};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Slack between the delegation's TTL and a scope's `max_ttl`, for clocks.
const TTL_SLACK: time::Duration = time::Duration::seconds(5);
/// Longest life of a session certificate.
const MAX_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_SESSIONS, post(start_session))
        .signed(Method::POST, PATH_STATUS, post(session_status))
}

/// `POST /v1/sessions`, signed by the delegator: checks the delegation
/// against the config's scopes, appends the session's own `session.start`
/// (the rules check it again), then issues the session certificate and its
/// OTLP ingest credential.
async fn start_session(
    State(s): State<Arc<AppState>>,
    req: Signed<StartSession>,
) -> ApiResult<Json<SessionStarted>> {
    let (caller, req) = req.into_parts();
    let what = actions::SESSION_START;
    let refuse = |code: DenialCode, why: String| {
        let (s, caller) = (s.clone(), caller.clone());
        async move { s.refuse(&caller, what, code, why).await }
    };
    let d = match Delegation::verify(&req.delegation) {
        Ok(d) => d,
        Err(e) => return Err(refuse(DenialCode::DelegationInvalid, e.to_string()).await),
    };
    if d.issuer != caller {
        let why = format!(
            "the request is signed by {caller}, not by the delegation's issuer {}",
            d.issuer
        );
        return Err(refuse(DenialCode::DelegationInvalid, why).await);
    }
    if !s.rules(|a| a.trust().delegators.contains(&caller)) {
        let why = format!("{caller} is not in [trust] delegators");
        return Err(refuse(DenialCode::NotDelegator, why).await);
    }
    let now = OffsetDateTime::now_utc();
    if d.not_after <= now {
        let why = "the delegation has already expired".to_string();
        return Err(refuse(DenialCode::Expired, why).await);
    }
    if d.scopes.is_empty() {
        let why = "the delegation grants no scope".to_string();
        return Err(refuse(DenialCode::OutOfScope, why).await);
    }
    let ttl = d.not_after - now.max(d.not_before);
    for name in &d.scopes {
        let Some(sc) = s.cfg.scope(name) else {
            let why = format!("scope {name:?} is not defined in the broker's config");
            return Err(refuse(DenialCode::UnknownScope, why).await);
        };
        if !sc.contexts.iter().any(|c| c.as_str() == d.context) {
            let why = format!("scope {name:?} is not allowed in context {:?}", d.context);
            return Err(refuse(DenialCode::ContextMismatch, why).await);
        }
        if ttl > time::Duration::try_from(sc.max_ttl).unwrap_or(time::Duration::MAX) + TTL_SLACK {
            let why = format!(
                "session TTL {}s exceeds scope {name:?} max_ttl {}s",
                ttl.whole_seconds(),
                sc.max_ttl.as_secs()
            );
            return Err(refuse(DenialCode::TtlTooLong, why).await);
        }
    }
    let start = &req.start.event;
    if start.action.as_str() != actions::SESSION_START
        || start.detail_str("delegation") != Some(req.delegation.as_str())
    {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "`start` must be the session's session.start event carrying the same delegation",
        ));
    }
    let appended = s.append_one(req.start).await?;
    let cert_ttl = Duration::from_secs(ttl.whole_seconds().max(1) as u64).min(MAX_CERT_TTL);
    let ingest_token = random_token();
    s.storage
        .record_ingest(&sha256_hex(&ingest_token), &d.session)
        .await?;
    let (s2, session_did) = (s.clone(), d.session.clone());
    let certificate_pem =
        tokio::task::spawn_blocking(move || s2.ca.issue_session_cert(&session_did, cert_ttl))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(SessionStarted {
        seq: appended.seq.0,
        session_id: d.id.clone(),
        session_did: d.session.to_string(),
        expires_at: custody_identity::delegation::format_time(d.not_after),
        certificate_pem,
        ca_pem: s.ca.ca_cert_pem().to_string(),
        ingest_token,
    }))
}

/// A fresh bearer token: 32 random bytes, base64url.
fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `POST /v1/session/status`, signed by the session: may it still act?
async fn session_status(
    State(s): State<Arc<AppState>>,
    req: Signed<serde_json::Value>,
) -> ApiResult<Json<SessionStatus>> {
    let caller = req.caller();
    let expires_at = s.rules(|a| {
        a.session(caller)
            .map(|g| custody_identity::delegation::format_time(g.delegation.not_after))
    });
    Ok(Json(match s.active_session(caller) {
        Ok(_) => SessionStatus {
            active: true,
            reason: None,
            expires_at,
        },
        Err(why) => SessionStatus {
            active: false,
            reason: Some(why),
            expires_at,
        },
    }))
}
