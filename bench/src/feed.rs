//! The entry feed (`GET /v1/entries`) against a broker serving in this
//! process: how fast an auditor reads the ledger through it, and whether a
//! follower slows the appenders down.
//!
//! - `feed_per_s`: `--feed-entries` entries appended first, then read from
//!   seq 0 in pages of 1000 by one client (signed GETs, JSON decoded).
//! - `feed_append_per_s` vs `feed_append_slow_follower_per_s`, same broker,
//!   same run, interleaved (none, follower, none, follower): `--feed-appends`
//!   events appended in batches by `--http-clients` sessions, once with no
//!   reader and once with a slow follower attached — one that long-polls
//!   from the head and reads each answer a few KiB at a time with pauses, so
//!   the broker holds its pages while appends go on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use custody_agent::client::Client;
use custody_agent::sessionfile::SessionFile;
use custody_ledger::SignedEvent;
use custody_wire::api::{
    AppendBatch, BatchItem, BatchResult, FeedQuery, MAX_FEED_PAGE, PATH_EVENTS_BATCH,
};
use serde_json::json;
use tokio::task::JoinSet;

use crate::broker::{runtime, sign_batches, Broker};
use crate::util::{ratio, round, Results};
use crate::Args;

/// Events per batch request in the append phases.
const BATCH: usize = 250;

/// Appends the batches, one request in flight per session; entries/s.
async fn append_all(
    work: &[(Client, SessionFile)],
    batches: Vec<Vec<Vec<SignedEvent>>>,
) -> anyhow::Result<f64> {
    let total: usize = batches.iter().flatten().map(Vec::len).sum();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for ((c, s), mine) in work.iter().zip(batches) {
        let (c, s) = (c.clone(), s.clone());
        set.spawn(async move {
            let key = s.key()?;
            for events in mine {
                let n = events.len();
                let res: BatchResult = c
                    .post(&key, PATH_EVENTS_BATCH, &AppendBatch { events })
                    .await?;
                anyhow::ensure!(res.results.len() == n, "short batch answer");
                if let Some(BatchItem::Err(e)) =
                    res.results.iter().find(|x| matches!(x, BatchItem::Err(_)))
                {
                    bail!("an event was refused: {} {}", e.error, e.message);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(x) = set.join_next().await {
        x??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// A follower that reads slowly: long polls from the head and takes each
/// answer 4 KiB at a time, pausing between reads. Returns entries read.
async fn slow_follower(
    url: String,
    key: custody_identity::KeyPair,
    from: u64,
    stop: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut after = from.checked_sub(1);
    while !stop.load(Ordering::SeqCst) {
        let q = FeedQuery {
            after,
            limit: Some(MAX_FEED_PAGE),
            wait: Some(5),
        };
        let path = q.path_and_query();
        let h = custody_wire::signing::sign_request(&key, "GET", &path, b"");
        let mut resp = http
            .get(format!("{url}{path}"))
            .header(custody_wire::signing::HEADER_DID, h.did)
            .header(custody_wire::signing::HEADER_TIMESTAMP, h.timestamp)
            .header(custody_wire::signing::HEADER_NONCE, h.nonce)
            .header(custody_wire::signing::HEADER_SIGNATURE, h.signature)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "feed: HTTP {}", resp.status());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            for piece in chunk.chunks(4096) {
                body.extend_from_slice(piece);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let page: custody_wire::api::FeedPage = serde_json::from_slice(&body)?;
        if let Some(last) = page.entries.last() {
            after = Some(last.seq);
            read.fetch_add(page.entries.len() as u64, Ordering::SeqCst);
        }
    }
    Ok(())
}

pub fn bench(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let b = Broker::start().await?;
        let clients = a.http_clients.max(1);
        let mut work = Vec::new();
        for k in 0..clients {
            let c = b.client()?;
            let s = b.session(&c, &format!("bench-feed-{k}")).await?;
            work.push((c, s));
        }
        // The ledger the feed is read from.
        let per_client = a.feed_entries / clients;
        let pre = sign_batches(&work, per_client, BATCH)?;
        append_all(&work, pre).await?;
        let reader = b.client()?;
        let t0 = Instant::now();
        let (mut after, mut read) = (None, 0u64);
        loop {
            let page = reader
                .feed(
                    &b.auditor,
                    &FeedQuery {
                        after,
                        limit: Some(MAX_FEED_PAGE),
                        wait: None,
                    },
                )
                .await?;
            let Some(last) = page.entries.last() else {
                break;
            };
            after = Some(last.seq);
            read += page.entries.len() as u64;
        }
        let took = t0.elapsed();
        r.insert("feed_entries".into(), json!(read));
        r.insert(
            "feed_per_s".into(),
            json!((read as f64 / took.as_secs_f64()).round()),
        );

        // Appends without and with a slow follower, twice each, interleaved.
        let per_client = a.feed_appends / clients;
        let (mut none, mut with) = (Vec::new(), Vec::new());
        let mut followed = 0u64;
        for round_no in 0..4 {
            let batches = sign_batches(&work, per_client, BATCH)?;
            let size = reader.health().await?.entries;
            if round_no % 2 == 0 {
                none.push(append_all(&work, batches).await?);
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let follower = tokio::spawn(slow_follower(
                b.url.clone(),
                b.auditor.clone(),
                size,
                stop.clone(),
                count.clone(),
            ));
            with.push(append_all(&work, batches).await?);
            stop.store(true, Ordering::SeqCst);
            follower.await??;
            followed += count.load(Ordering::SeqCst);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (n, w) = (mean(&none), mean(&with));
        r.insert("feed_append_per_s".into(), json!(n.round()));
        r.insert("feed_append_slow_follower_per_s".into(), json!(w.round()));
        r.insert("feed_follower_vs_none_ratio".into(), json!(ratio(w, n)));
        r.insert("feed_follower_read".into(), json!(followed));
        r.insert("feed_appends".into(), json!(per_client * clients));
        r.insert(
            "feed_read_seconds".into(),
            json!(round(took.as_secs_f64(), 2)),
        );
        b.stop().await
    })
}
