//! Appends: one event (with its payload body, kept beside the chain), a
//! batch, and a session's own end. The rules decide every event
//! (`custody_ledger::authority`, through the storage's admission gate); a
//! refusal is answered with its code and recorded.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use base64::Engine;
use custody_identity::Did;
use custody_ledger::actions;
use custody_ledger::denial::DenialCode;
use custody_ledger::store::Appended as StoreAppended;
use custody_ledger::{Event, PayloadDigest, SignedEvent};
use custody_wire::api::*;
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::auth::SignedAppend;
use crate::credentials;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::{AppendFailure, PayloadItem};

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::POST, PATH_EVENTS, post(append_event))
        .signed(Method::POST, PATH_EVENTS_BATCH, post(append_batch))
}

pub(super) fn appended_body(a: &StoreAppended) -> Appended {
    Appended {
        seq: a.seq.0,
        hash: a.hash.to_hex(),
        received_at: a.entry.received_at.to_string(),
    }
}

/// `POST /v1/events`, signed by the event's actor.
async fn append_event(
    State(s): State<Arc<AppState>>,
    req: SignedAppend<AppendEvent>,
) -> ApiResult<Json<Appended>> {
    let (caller, req, nonce) = req.into_parts();
    let ev = &req.event.event;
    if ev.actor != caller {
        nonce.spend(&s).await?;
        let why = format!(
            "the request is signed by {caller} but the event's actor is {}",
            ev.actor
        );
        let what = ev.action.to_string();
        return Err(s.refuse(&caller, &what, DenialCode::DidMismatch, why).await);
    }
    if ev.action.as_str() == actions::SESSION_END {
        nonce.spend(&s).await?;
        return end_session(&s, &caller, req.event).await;
    }
    let Some(p) = &req.payload else {
        let a = s.append_one_for_request(req.event, nonce).await?;
        return Ok(Json(appended_body(&a)));
    };
    let item = match checked_payload(ev, p) {
        Ok(item) => item,
        Err(e) => {
            nonce.spend(&s).await?;
            return Err(e);
        }
    };
    // Kept first so an acknowledged entry never lacks its body; taken back
    // if the entry is refused, or the request was a replay (see
    // `fresh_payload`).
    let fresh = fresh_payload(&s, item).await?;
    let appended = s.append_one_for_request(req.event, nonce).await;
    if let (Err(_), Some(digest)) = (&appended, fresh) {
        let _ = s.storage.redact(digest).await;
    }
    Ok(Json(appended_body(&appended?)))
}

/// The body sent for `ev.payload`, decoded and checked against the event's
/// digest and size.
pub(super) fn checked_payload(ev: &Event, p: &PayloadBody) -> ApiResult<PayloadItem> {
    let Some(r) = &ev.payload else {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "a payload was sent for an event without `payload`",
        ));
    };
    let dec = |x: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x);
    let (Ok(salt), Ok(body)) = (dec(&p.salt), dec(&p.body)) else {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "payload salt and body must be unpadded base64url",
        ));
    };
    let Ok(salt) = <[u8; 32]>::try_from(salt.as_slice()) else {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "payload salt must be 32 bytes",
        ));
    };
    if body.len() as u64 != r.size {
        return Err(ApiError::new(
            ErrorCode::PayloadMismatch,
            "payload size differs from the event's",
        ));
    }
    if custody_ledger::bundle::payload_digest(&salt, &body) != r.digest {
        return Err(ApiError::new(
            ErrorCode::PayloadMismatch,
            "payload digest differs from the event's",
        ));
    }
    Ok((r.digest, salt, body))
}

/// Keeps a body unless the store holds it already; returns its digest when
/// it was new, to be taken back if its entry is refused (a replayed event
/// must not delete the original's body).
pub(super) async fn fresh_payload(
    s: &Arc<AppState>,
    item: PayloadItem,
) -> ApiResult<Option<PayloadDigest>> {
    let digest = item.0;
    if s.storage.payload(digest).await?.is_some() {
        return Ok(None);
    }
    s.storage.put_payloads(vec![item]).await?;
    Ok(Some(digest))
}

/// A session's own `session.end`: once appended the rules refuse everything
/// the session sends, and its tokens are revoked, as a kill switch would
/// (mints in flight finish and record their tokens first).
async fn end_session(
    s: &Arc<AppState>,
    caller: &Did,
    event: SignedEvent,
) -> ApiResult<Json<Appended>> {
    let _exclusive = s.mint_lock.write().await;
    let a = s.append_one(event).await?;
    credentials::kill(
        s,
        caller,
        std::slice::from_ref(caller),
        a.seq.0,
        "session ended",
    )
    .await;
    Ok(Json(appended_body(&a)))
}

/// `POST /v1/events/batch`: up to [`MAX_BATCH_EVENTS`] events by the caller,
/// one durable commit; one result per event.
async fn append_batch(
    State(s): State<Arc<AppState>>,
    req: SignedAppend<AppendBatch>,
) -> ApiResult<Json<BatchResult>> {
    let (caller, req, nonce) = req.into_parts();
    if req.events.len() > MAX_BATCH_EVENTS
        || req
            .events
            .iter()
            .any(|e| e.event.actor != caller || e.event.action.as_str() == actions::SESSION_END)
    {
        // Refused below before anything is appended: the nonce is kept
        // first, so a replay of it is refused as one.
        nonce.spend(&s).await?;
        return Err(refuse_batch(&s, &caller, &req).await);
    }
    let what: Vec<String> = req
        .events
        .iter()
        .map(|e| e.event.action.to_string())
        .collect();
    let results = s.append_for_request(req.events, nonce).await;
    if let Some(Err(AppendFailure::ReplayedRequest)) = results.first() {
        // Every event of a replayed request answers so; nothing was appended.
        return Err(AppendFailure::ReplayedRequest.into());
    }
    let mut out = Vec::with_capacity(results.len());
    for (r, action) in results.into_iter().zip(what) {
        out.push(match r {
            Ok(a) => BatchItem::Ok(appended_body(&a)),
            Err(AppendFailure::Refused(d)) => {
                let e = s.refuse(&caller, &action, d.code, d.message).await;
                BatchItem::Err(ErrorBody {
                    error: e.code.as_str().into(),
                    message: e.message,
                })
            }
            Err(e) => {
                let e = ApiError::from(e);
                BatchItem::Err(ErrorBody {
                    error: e.code.as_str().into(),
                    message: e.message,
                })
            }
        });
    }
    Ok(Json(BatchResult { results: out }))
}

/// Why a batch is refused as a whole: too many events, an event by another
/// actor than the signer (recorded), or a `session.end` inside it.
async fn refuse_batch(s: &Arc<AppState>, caller: &Did, req: &AppendBatch) -> ApiError {
    if req.events.len() > MAX_BATCH_EVENTS {
        return ApiError::new(
            ErrorCode::TooManyEvents,
            format!("at most {MAX_BATCH_EVENTS} events per batch"),
        );
    }
    if let Some(e) = req.events.iter().find(|e| e.event.actor != *caller) {
        let why = format!(
            "the request is signed by {caller} but an event's actor is {}",
            e.event.actor
        );
        let what = e.event.action.to_string();
        return s.refuse(caller, &what, DenialCode::DidMismatch, why).await;
    }
    ApiError::new(
        ErrorCode::Malformed,
        "a session ends with its own request (POST /v1/events), not inside a batch",
    )
}
