//! What admins take out of the ledger: the export bundle, and payload bodies
//! (redaction deletes one; the entry and the chain stay).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_ledger::PayloadDigest;
use custody_wire::api::{ExportRequest, RedactRequest, PATH_EXPORT, PATH_REDACT};
use custody_wire::error::ErrorCode;
use serde_json::json;
use time::OffsetDateTime;

use super::Routes;
use crate::auth::Signed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_EXPORT, post(export)).signed(
        Method::POST,
        PATH_REDACT,
        post(redact),
    )
}

/// `POST /v1/export`, signed by an admin: a checkpoint at the current size,
/// then the bundle as a tar archive.
async fn export(State(s): State<Arc<AppState>>, req: Signed<ExportRequest>) -> ApiResult<Response> {
    let caller = req.caller();
    if let Err(why) = s.check_admin(caller) {
        return Err(s
            .refuse(caller, "ledger.export", DenialCode::NotAdmin, why)
            .await);
    }
    let dir = s.cfg.data.join("exports").join(format!(
        "export-{}",
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    let parent = s.cfg.data.join("exports");
    std::fs::create_dir_all(&parent)
        .map_err(|e| ApiError::internal(format!("{}: {e}", parent.display())))?;
    s.storage.export(&s.ledger_key, &s.origin, &dir).await?;
    let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all("bundle", &dir)?;
        let out = b.into_inner()?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("export: {e}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Body::from(tar),
    )
        .into_response())
}

/// `POST /v1/redact`, signed by an admin: deletes a payload body and its
/// salt; the redaction is on the record, with who asked and why.
async fn redact(
    State(s): State<Arc<AppState>>,
    req: Signed<RedactRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let (caller, req) = req.into_parts();
    if let Err(why) = s.check_admin(&caller) {
        return Err(s
            .refuse(&caller, actions::PAYLOAD_REDACT, DenialCode::NotAdmin, why)
            .await);
    }
    let digest = PayloadDigest::from_hex(&req.digest)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, e.to_string()))?;
    let had = s.storage.redact(digest).await?;
    let e = s.attest.payload_redact(&digest, &caller, &req.reason, had);
    let a = s.append_attested_one(e).await?;
    Ok(Json(json!({"redacted": had, "seq": a.seq.0})))
}
