//! Signing a checkpoint on an admin's request (e.g. before handing it to a
//! witness). Reading checkpoints is public ([`super::public`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use axum::routing::post;
use custody_ledger::denial::DenialCode;
use custody_wire::api::PATH_CHECKPOINT;

use super::public::{latest_checkpoint, note_response};
use super::Routes;
use crate::auth::Signed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_CHECKPOINT, post(sign_checkpoint))
}

/// `POST /v1/checkpoint`, signed by an admin: signs one now if entries were
/// appended since the last, and answers the latest note.
async fn sign_checkpoint(
    State(s): State<Arc<AppState>>,
    req: Signed<serde_json::Value>,
) -> ApiResult<Response> {
    let caller = req.caller();
    if let Err(why) = s.check_admin(caller) {
        return Err(s
            .refuse(caller, "checkpoint.sign", DenialCode::NotAdmin, why)
            .await);
    }
    s.maybe_checkpoint(true)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (_, note) = latest_checkpoint(&s).await?;
    Ok(note_response(note))
}
