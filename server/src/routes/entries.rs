//! The entry feed, `GET /v1/entries`: canonical entries in order, for the
//! auditors of the config and the ledger's admins, so a SIEM forwarder
//! (`custody tail`) can follow the ledger without exporting it whole.
//!
//! It must never cost the appenders anything, however slowly a consumer
//! reads:
//! - a page is read through the storage seam on the blocking pool, one
//!   line at a time by index, taking no lock the writer or the rules gate
//!   need; at most [`MAX_FEED_READERS`] pages are read at once;
//! - a page holds at most [`MAX_FEED_PAGE`] entries and stops growing at
//!   [`MAX_FEED_PAGE_BYTES`];
//! - a caller has at most [`MAX_FEED_PER_CALLER`] feed requests open,
//!   counted until its answer has been handed to the connection, so a
//!   reader that does not read holds at most that many pages;
//! - follow mode is a long poll (`wait`, at most [`MAX_FEED_WAIT_SECS`]):
//!   a waiting request holds no page and no permit, and is woken by the
//!   next append (or shutdown).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use custody_ledger::denial::DenialCode;
use custody_ledger::entry_hash;
use custody_ledger::merkle::hash_to_hex;
use custody_wire::api::{
    FeedEntry, FeedPage, FeedQuery, MAX_FEED_PAGE, MAX_FEED_PAGE_BYTES, MAX_FEED_WAIT_SECS,
    PATH_ENTRIES,
};
use custody_wire::error::ErrorCode;

use super::Routes;
use crate::auth::SignedQuery;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, FeedSlot};
#[cfg(doc)]
use crate::state::{MAX_FEED_PER_CALLER, MAX_FEED_READERS};

pub(super) fn routes(r: Routes) -> Routes {
    r.signed(Method::GET, PATH_ENTRIES, get(entries))
}

/// The action a refused read is recorded under (`request.denied`).
const READ_ACTION: &str = "entries.read";

/// Bytes handed to the connection at a time: the answer's slot is given back
/// when the last chunk has been taken, i.e. once the connection has accepted
/// nearly all of it.
const CHUNK: usize = 64 * 1024;

async fn entries(
    State(s): State<Arc<AppState>>,
    req: SignedQuery<FeedQuery>,
) -> ApiResult<Response> {
    let caller = req.caller();
    if let Err(why) = s.check_auditor(caller) {
        return Err(s
            .refuse(caller, READ_ACTION, DenialCode::NotAuditor, why)
            .await);
    }
    let slot = s.feed_slot(caller).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "{caller} already has {} feed requests open; wait for their answers",
                crate::state::MAX_FEED_PER_CALLER
            ),
        )
    })?;
    let q = req.query();
    let from = match q.after {
        None => 0,
        Some(a) => a
            .checked_add(1)
            .ok_or_else(|| ApiError::new(ErrorCode::Malformed, "after is out of range"))?,
    };
    let limit = q.limit.unwrap_or(MAX_FEED_PAGE).clamp(1, MAX_FEED_PAGE);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_FEED_WAIT_SECS));
    if !wait.is_zero() {
        s.wait_for_entries(from, wait).await;
    }
    let page = {
        let _permit = s
            .feed
            .readers
            .acquire()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        read_page(&s, from, limit).await?
    };
    let json = serde_json::to_vec(&page).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::new(PageBody {
            rest: Bytes::from(json),
            slot: Some(slot),
        }),
    )
        .into_response())
}

/// Reads the page of entries `from..` (the checkpoint first, so its size is
/// at most the page's `size`), with the consistency proof from the
/// checkpoint to the entries before the page when it is behind them.
async fn read_page(s: &AppState, from: u64, limit: usize) -> ApiResult<FeedPage> {
    let latest = s.storage.latest_checkpoint().await?;
    let size = s.storage.visible_size().await?;
    let consistency = match &latest {
        Some((cs, _)) if *cs >= 1 && *cs < from && from <= size => Some(
            s.storage
                .consistency_proof(*cs, from)
                .await?
                .iter()
                .map(hash_to_hex)
                .collect(),
        ),
        _ => None,
    };
    let checkpoint = latest.map(|(_, note)| String::from_utf8_lossy(&note).into_owned());
    let lines = if from < size {
        let n = limit.min(usize::try_from(size - from).unwrap_or(usize::MAX));
        s.storage.lines(from, n, MAX_FEED_PAGE_BYTES).await?
    } else {
        Vec::new()
    };
    let mut entries = Vec::with_capacity(lines.len());
    for (seq, line) in (from..).zip(lines) {
        let hash = entry_hash(&line).to_hex();
        let line = String::from_utf8(line)
            .map_err(|_| ApiError::internal(format!("entry {seq} is not UTF-8")))?;
        entries.push(FeedEntry { seq, hash, line });
    }
    Ok(FeedPage {
        ledger: s.ledger_key.did().to_string(),
        size,
        entries,
        checkpoint,
        consistency,
    })
}

/// A page's bytes in chunks, holding the caller's feed slot until the last
/// chunk is taken or the connection goes away.
struct PageBody {
    rest: Bytes,
    slot: Option<FeedSlot>,
}

impl http_body::Body for PageBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.slot = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK);
        let chunk = self.rest.split_to(n);
        if self.rest.is_empty() {
            self.slot = None;
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}
