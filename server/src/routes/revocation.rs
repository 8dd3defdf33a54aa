//! The kill switch: an admin's signed `identity.revoke`. Once it is appended
//! the rules refuse every mint and append by the subject and by every
//! session it delegated; then their tokens are revoked in OpenBao.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use custody_identity::Revocation;
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_wire::api::{RevokeRequest, Revoked, PATH_REVOKE};
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::auth::Signed;
use crate::credentials::{self, Killed};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_REVOKE, post(revoke))
}

/// `POST /v1/revoke`, signed by an admin.
async fn revoke(
    State(s): State<Arc<AppState>>,
    req: Signed<RevokeRequest>,
) -> ApiResult<Json<Revoked>> {
    let (caller, req) = req.into_parts();
    let what = actions::IDENTITY_REVOKE;
    if let Err(why) = s.check_admin(&caller) {
        return Err(s.refuse(&caller, what, DenialCode::NotAdmin, why).await);
    }
    let ev = &req.event.event;
    if ev.actor != caller || ev.action.as_str() != actions::IDENTITY_REVOKE {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "the body must be the caller's own identity.revoke event",
        ));
    }
    let rev = ev
        .detail_str("revocation")
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Malformed,
                "identity.revoke needs details.revocation",
            )
        })
        .and_then(|j| {
            Revocation::verify(j).map_err(|e| ApiError::new(ErrorCode::Malformed, e.to_string()))
        })?;
    // Exclusive: in-flight mints finish (and record their tokens) first;
    // once the revocation is appended the rules refuse new ones.
    let _exclusive = s.mint_lock.write().await;
    let appended = s.append_one(req.event).await?;
    let subject = rev.subject;
    let mut targets = vec![subject.clone()];
    s.rules(|a| {
        for (did, g) in a.sessions() {
            if g.delegation.issuer == subject {
                targets.push(did.clone());
            }
        }
    });
    let Killed {
        revoked,
        parents,
        failures,
    } = credentials::kill(&s, &subject, &targets, appended.seq.0, "identity revoked").await;
    if !failures.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Vault,
            format!(
                "revocation recorded (seq {}), but {} token(s) could not be revoked: {}",
                appended.seq,
                failures.len(),
                failures.join("; ")
            ),
        ));
    }
    Ok(Json(Revoked {
        seq: appended.seq.0,
        subject: subject.to_string(),
        sessions: targets.iter().map(|d| d.to_string()).collect(),
        tokens_revoked: revoked,
        parents_revoked: parents,
    }))
}
