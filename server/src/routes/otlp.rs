//! The OTLP/HTTP logs receiver: an export from a session's agent,
//! authenticated by the session's ingest token ([`crate::auth::Ingest`]).
//! Each record becomes one `telemetry.*` entry the ledger key signs
//! (broker-attested, see [`crate::otlp`] and docs/SECURITY.md §8).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use custody_wire::api::PATH_OTLP_LOGS;
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::auth::Ingest;
use crate::error::{ApiError, ApiResult};
use crate::otlp::{self, Encoding};
use crate::state::AppState;

pub(super) fn routes(r: Routes) -> Routes {
    r.ingest(
        Method::POST,
        PATH_OTLP_LOGS,
        post(otlp_logs).layer(tower_http::decompression::RequestDecompressionLayer::new()),
    )
}

/// `POST /v1/logs`.
async fn otlp_logs(
    State(s): State<Arc<AppState>>,
    ingest: Ingest,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let session = ingest.session();
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let enc = Encoding::from_content_type(ct)
        .map_err(|e| ApiError::new(ErrorCode::UnsupportedMediaType, e.to_string()))?;
    let records = otlp::decode(enc, &body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedOtlp, e.to_string()))?;
    let mut bodies = Vec::with_capacity(records.len());
    let mut events = Vec::with_capacity(records.len());
    for r in &records {
        let body = otlp::payload_of(r);
        let (pref, salt) = custody_ledger::bundle::salted_payload_ref(&body);
        let e = s
            .attest
            .telemetry(session, r, &otlp::classify(r), pref.clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        bodies.push((pref.digest, salt, body));
        events.push(e);
    }
    let digests: Vec<_> = bodies.iter().map(|(d, _, _)| *d).collect();
    // One flush for the whole export, not one per record.
    s.storage.put_payloads(bodies).await?;
    let results = s.append_attested(events).await?;
    // A refused record keeps nothing, not even its body beside the chain.
    for (r, d) in results.iter().zip(&digests) {
        if r.is_err() {
            let _ = s.storage.redact(*d).await;
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let msg = failed.first().cloned().unwrap_or_default();
    Ok((
        [(axum::http::header::CONTENT_TYPE, enc.content_type())],
        otlp::response(enc, failed.len() as i64, msg),
    )
        .into_response())
}
