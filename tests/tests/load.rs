//! Hostile load, bounded and on loopback: a flood of signed requests from
//! fresh DIDs (keys cost nothing) must leave the broker's memory within a
//! stated bound and must not keep a real session from being served; polling
//! the unauthenticated checkpoint endpoints during appends must not add
//! checkpoints beyond the configured period.
//!
//! `CUSTODY_FLOOD_REQUESTS` sets the flood's size (default 200,000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_agent::client::session_event;
use custody_identity::KeyPair;
use custody_ledger::{ActionType, ActorKind, Event};
use custody_tests::broker::Harness;
use custody_wire::api::{AppendEvent, PATH_EVENTS};
use custody_wire::signing;

/// Growth of the broker's resident memory (high-water mark) the flood may
/// cause: the replay cache holds at most the strangers' budget × the nonce
/// lifetime (200/s × ~2 min ≈ 24,000 nonces, ~1 MB), the rate limiter no
/// stranger at all, and refusals of strangers are recorded within 60 a
/// minute. The rest is allocator slack and the connections in flight.
const RSS_GROWTH_BOUND_MB: u64 = 64;
const FLOOD_CONCURRENCY: usize = 64;

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn checkpoint_files(h: &Harness) -> usize {
    std::fs::read_dir(h.data().join("ledger/checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".checkpoint"))
        })
        .count()
}

/// One request as a stranger: a fresh key signs an event and the request.
async fn stranger_request(http: &reqwest::Client, url: &str) -> u16 {
    let key = KeyPair::generate();
    let ev = Event::new(
        key.did(),
        ActorKind::Agent,
        ActionType::new("tool.call").unwrap(),
    );
    let body = serde_json::to_vec(&AppendEvent {
        event: ev.sign(&key).unwrap(),
        payload: None,
    })
    .unwrap();
    let h = signing::sign_request(&key, "POST", PATH_EVENTS, &body);
    match http
        .post(format!("{url}{PATH_EVENTS}"))
        .header("content-type", "application/json")
        .header(signing::HEADER_DID, h.did)
        .header(signing::HEADER_TIMESTAMP, h.timestamp)
        .header(signing::HEADER_NONCE, h.nonce)
        .header(signing::HEADER_SIGNATURE, h.signature)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fresh_identities_is_bounded_and_sessions_are_served() {
    let total: u64 = std::env::var("CUSTODY_FLOOD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let h = Harness::start().await;
    let pid = h.broker.as_ref().unwrap().pid();
    let (s, _) = h.session("claude-code", "chat", "legit").await;
    let c = h.client();
    for _ in 0..50 {
        c.log(&s, session_event(&s, "tool.call").unwrap())
            .await
            .unwrap();
    }
    // Let the periodic checkpoint catch up before counting.
    c.checkpoint_now(&h.admin).await.unwrap();
    let rss_before = rss_kb(pid, "VmRSS:");
    let checkpoints_before = checkpoint_files(&h);
    let started = Instant::now();

    // The real session keeps working, and polls the checkpoint and proof
    // endpoints, while the flood runs.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let legit = {
        let (done, served, c, s, url) = (
            done.clone(),
            served.clone(),
            h.client(),
            s.clone(),
            h.url.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut failures = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match c.log(&s, session_event(&s, "tool.call").unwrap()).await {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
                for path in ["/v1/checkpoint", "/v1/proof/inclusion?seq=0"] {
                    let st = http
                        .get(format!("{url}{path}"))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert!(st.is_success(), "GET {path}: {st}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };

    let codes: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Default::default();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..FLOOD_CONCURRENCY {
        let (codes, next, url) = (codes.clone(), next.clone(), h.url.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut local = std::collections::BTreeMap::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                *local
                    .entry(stranger_request(&http, &url).await)
                    .or_insert(0u64) += 1;
            }
            let mut all = codes.lock().unwrap();
            for (k, v) in local {
                *all.entry(k).or_default() += v;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let flood_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let failures = legit.await.unwrap();
    let rss_peak = rss_kb(pid, "VmHWM:");
    let rss_after = rss_kb(pid, "VmRSS:");
    let codes = codes.lock().unwrap().clone();
    let served = served.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let checkpoints_added = checkpoint_files(&h) - checkpoints_before;
    println!(
        "flood: {total} requests from fresh DIDs in {flood_secs:.1} s ({:.0}/s), answers {codes:?}; \
         the real session was served {served} times meanwhile; broker RSS {} MB before, {} MB after, peak {} MB; \
         {checkpoints_added} checkpoint(s) signed in {:.0} s",
        total as f64 / flood_secs,
        rss_before / 1024,
        rss_after / 1024,
        rss_peak / 1024,
        elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "the real session was refused: {failures:?}"
    );
    assert!(served > 0);
    assert_eq!(codes.values().sum::<u64>(), total);
    assert_eq!(codes.get(&0), None, "no connection failed");
    assert!(
        codes.keys().all(|c| matches!(c, 403 | 429)),
        "strangers are refused (403) or over budget (429): {codes:?}"
    );
    assert!(
        rss_peak.saturating_sub(rss_before) / 1024 <= RSS_GROWTH_BOUND_MB,
        "broker memory grew by {} MB (bound {RSS_GROWTH_BOUND_MB} MB)",
        rss_peak.saturating_sub(rss_before) / 1024
    );
    // Checkpoints: one per `checkpoint.every` (30 s in the test config) or
    // per 1000 entries at most, however often the endpoints were polled.
    let allowed = elapsed.as_secs() / 30 + (served + 60) / 1000 + 1;
    assert!(
        (checkpoints_added as u64) <= allowed,
        "{checkpoints_added} checkpoints for {} s and {served} appends",
        elapsed.as_secs()
    );
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
}
