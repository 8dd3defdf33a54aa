//! The routes anyone may call, all of them here: health, the latest
//! checkpoint, inclusion and consistency proofs, and witness cosignatures
//! (whose body carries its own proof: signatures by configured witnesses
//! over one of this ledger's checkpoints). They only read, or keep what
//! verifies; none signs a checkpoint on demand, so polling them adds nothing
//! to the ledger.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use custody_ledger::checkpoint::{CheckpointError, SignedCheckpoint};
use custody_ledger::merkle::hash_to_hex;
use custody_wire::api::*;
use custody_wire::error::ErrorCode;
use serde::Deserialize;

use super::{Access, Routes};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.add(Access::Public, Method::GET, PATH_HEALTH, get(health))
        .add(
            Access::Public,
            Method::GET,
            PATH_CHECKPOINT,
            get(checkpoint),
        )
        .add(
            Access::Public,
            Method::GET,
            PATH_PROOF_INCLUSION,
            get(inclusion),
        )
        .add(
            Access::Public,
            Method::GET,
            PATH_PROOF_CONSISTENCY,
            get(consistency),
        )
        .add(
            Access::Public,
            Method::POST,
            PATH_COSIGNATURE,
            post(cosignature),
        )
}

async fn health(State(s): State<Arc<AppState>>) -> ApiResult<Json<Health>> {
    let vault = match &s.vault {
        None => "not configured".to_string(),
        Some(v) => match v.health().await {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        },
    };
    Ok(Json(Health {
        status: "ok".into(),
        ledger: s.ledger_key.did().to_string(),
        entries: s.storage.visible_size().await?,
        vault,
    }))
}

/// The latest stored checkpoint and its size.
pub(super) async fn latest_checkpoint(s: &AppState) -> ApiResult<(u64, Vec<u8>)> {
    s.storage
        .latest_checkpoint()
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NoCheckpoint, "no checkpoint yet"))
}

pub(super) fn note_response(note: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        note,
    )
        .into_response()
}

/// `GET /v1/checkpoint`: the latest signed checkpoint, read only.
async fn checkpoint(State(s): State<Arc<AppState>>) -> ApiResult<Response> {
    let (_, note) = latest_checkpoint(&s).await?;
    Ok(note_response(note))
}

#[derive(Deserialize)]
struct InclusionQuery {
    seq: u64,
}

async fn inclusion(
    State(s): State<Arc<AppState>>,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Json<InclusionProofBody>> {
    let (size, note) = latest_checkpoint(&s).await?;
    if q.seq >= size {
        return Err(ApiError::new(
            ErrorCode::NoSuchEntry,
            format!(
                "seq {} is not covered by the latest checkpoint (size {size}); the next is signed within checkpoint.every",
                q.seq
            ),
        ));
    }
    let path = s.storage.inclusion_proof(q.seq, size).await?;
    let entry = s.storage.line(q.seq).await?;
    Ok(Json(InclusionProofBody {
        seq: q.seq,
        tree_size: size,
        entry: String::from_utf8_lossy(&entry).into_owned(),
        path: path.iter().map(hash_to_hex).collect(),
        checkpoint: String::from_utf8_lossy(&note).into_owned(),
    }))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

async fn consistency(
    State(s): State<Arc<AppState>>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyProofBody>> {
    let size = s.storage.visible_size().await?;
    if q.old == 0 || q.old > q.new || q.new > size {
        return Err(ApiError::new(
            ErrorCode::BadSizes,
            format!("need 1 <= old <= new <= {size}"),
        ));
    }
    let path = s.storage.consistency_proof(q.old, q.new).await?;
    Ok(Json(ConsistencyProofBody {
        old_size: q.old,
        new_size: q.new,
        path: path.iter().map(hash_to_hex).collect(),
    }))
}

fn conflict(message: String) -> ApiError {
    ApiError::with_status(StatusCode::CONFLICT, ErrorCode::NotOurCheckpoint, message)
}

/// `POST /v1/checkpoint/cosignature`: a witness (or whoever relays for it)
/// hands back one of our checkpoints with cosignatures. Cosignatures by
/// configured witnesses are verified and kept with the checkpoint, so exports
/// carry them; the event is recorded. A replayed note adds nothing.
async fn cosignature(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult<Json<Cosigned>> {
    let posted = SignedCheckpoint::parse(&body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedCheckpoint, e.to_string()))?;
    let (ledger_public, witnesses) = (s.ledger_key.public(), &s.cfg.witnesses);
    let (cosigners, unknown) = posted
        .verify_with_witnesses(&ledger_public, witnesses)
        .map_err(|e| match e {
            CheckpointError::BadCosignature(_) => {
                ApiError::new(ErrorCode::BadCosignature, e.to_string())
            }
            e => ApiError::new(ErrorCode::NotOurCheckpoint, e.to_string()),
        })?;
    if !unknown.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UnknownWitness,
            format!(
                "signatures by {} are not from a witness in [witnesses] keys",
                unknown.join(", ")
            ),
        ));
    }
    if cosigners.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NoCosignature,
            "the checkpoint carries no cosignature by a configured witness",
        ));
    }
    let size = posted.head().size;
    let stored = s
        .storage
        .checkpoint(size)
        .await?
        .ok_or_else(|| conflict(format!("this ledger has no checkpoint at size {size}")))?;
    let mut cp = SignedCheckpoint::parse(&stored).map_err(|e| ApiError::internal(e.to_string()))?;
    let (had, _) = cp
        .verify_with_witnesses(&ledger_public, witnesses)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    cp.merge_signatures(&posted).map_err(|_| {
        conflict(format!(
            "the checkpoint at size {size} here has another root or time"
        ))
    })?;
    if cosigners.iter().all(|w| had.contains(w)) {
        return Ok(Json(Cosigned {
            size,
            witnesses: had,
            seq: None,
        }));
    }
    s.storage.save_checkpoint(size, cp.to_bytes()).await?;
    let (all, _) = cp
        .verify_with_witnesses(&ledger_public, witnesses)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let e = s
        .attest
        .checkpoint_cosigned(size, &hash_to_hex(&cp.head().root), &cosigners);
    let appended = s.append_attested_one(e).await?;
    Ok(Json(Cosigned {
        size,
        witnesses: all,
        seq: Some(appended.seq.0),
    }))
}
