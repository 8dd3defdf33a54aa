//! Durable appends to a `Store` in a temp dir: group commit with many writers
//! vs one fdatasync per append; ack latency at 64 closed-loop writers, and
//! open loop: appends arriving on a fixed schedule at half the rate the
//! 64-writer run reached, each latency counted from its scheduled arrival
//! (so a stall delays every arrival behind it, as it would real callers —
//! closed-loop writers stop arriving while they wait and hide that).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_ledger::store::{AcceptAll, Store};
use custody_ledger::SignedEvent;
use serde_json::json;

use crate::util::{events, percentile, ratio, round, Results};
use crate::Args;

/// What one run measured.
struct Run {
    per_s: f64,
    /// Sorted ack latencies.
    latencies: Vec<Duration>,
    syncs: u64,
    /// CPU time of the whole process over wall time: how many of the cores
    /// the run kept busy.
    cores_busy: f64,
}

impl Run {
    /// The run that began at `t0` (process CPU time `c0`) and acknowledged
    /// appends after `latencies`.
    fn of(store: &Store<AcceptAll>, mut latencies: Vec<Duration>, t0: Instant, c0: f64) -> Self {
        let wall = t0.elapsed().as_secs_f64();
        latencies.sort();
        Run {
            per_s: latencies.len() as f64 / wall,
            cores_busy: (crate::util::cpu_seconds() - c0) / wall,
            syncs: store.stats().syncs,
            latencies,
        }
    }
}

/// `writers` threads append `evs` concurrently.
fn append_run(dir: &Path, evs: Vec<SignedEvent>, writers: usize) -> anyhow::Result<Run> {
    let store = Arc::new(Store::open(dir, AcceptAll)?);
    let n = evs.len();
    let chunks: Vec<Vec<SignedEvent>> = {
        let mut cs: Vec<Vec<SignedEvent>> = (0..writers).map(|_| Vec::new()).collect();
        for (i, e) in evs.into_iter().enumerate() {
            cs[i % writers].push(e);
        }
        cs
    };
    let c0 = crate::util::cpu_seconds();
    let t0 = Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|c| {
            let s = store.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(c.len());
                for e in c {
                    let t = Instant::now();
                    s.append(e).expect("append");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("writer panicked"))?);
    }
    Ok(Run::of(&store, lat, t0, c0))
}

/// Threads serving the open-loop arrivals: enough that arrivals never wait
/// for a free caller at half load (each blocks for one group commit).
const OPEN_LOOP_CALLERS: usize = 256;

/// Appends `evs` arriving at `rate` per second on a fixed schedule, whatever
/// the store's answers; latency = ack time − scheduled arrival time.
fn open_loop_run(dir: &Path, evs: Vec<SignedEvent>, rate: f64) -> anyhow::Result<Run> {
    use std::sync::mpsc;
    use std::sync::Mutex;
    let store = Arc::new(Store::open(dir, AcceptAll)?);
    let n = evs.len();
    let (tx, rx) = mpsc::channel::<(SignedEvent, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let callers: Vec<_> = (0..OPEN_LOOP_CALLERS)
        .map(|_| {
            let (s, rx) = (store.clone(), rx.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                loop {
                    // The lock is held only while taking the next arrival.
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok((e, due))) = next else { break };
                    s.append(e).expect("append");
                    lat.push(due.elapsed());
                }
                lat
            })
        })
        .collect();
    let c0 = crate::util::cpu_seconds();
    let start = Instant::now() + Duration::from_millis(20);
    let gap = Duration::from_secs_f64(1.0 / rate);
    for (i, e) in evs.into_iter().enumerate() {
        let due = start + gap * i as u32;
        // Sleep most of the way, then yield: the schedule must not drift.
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > Duration::from_micros(300) {
                std::thread::sleep(left - Duration::from_micros(200));
            } else {
                std::thread::yield_now();
            }
        }
        tx.send((e, due))?;
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n);
    for c in callers {
        lat.extend(c.join().map_err(|_| anyhow::anyhow!("caller panicked"))?);
    }
    Ok(Run::of(&store, lat, start, c0))
}

pub fn bench(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let n = a.appends;
    let group = append_run(&tmp.path().join("group"), events(n), 64)?;
    r.insert("append_durable_per_s".into(), json!(group.per_s.round()));
    r.insert("append_durable_syncs".into(), json!(group.syncs));
    r.insert(
        "append_durable_cores_busy".into(),
        json!(round(group.cores_busy, 2)),
    );
    r.insert(
        "append_64w_p50_ms".into(),
        json!(percentile(&group.latencies, 0.5)),
    );
    r.insert(
        "append_64w_p99_ms".into(),
        json!(percentile(&group.latencies, 0.99)),
    );
    // Half the saturation rate just measured, on a fixed schedule.
    let rate = (group.per_s / 2.0).max(1.0);
    let half = open_loop_run(&tmp.path().join("half"), events(n / 2), rate)?;
    r.insert("append_open_loop_rate_per_s".into(), json!(rate.round()));
    r.insert(
        "append_p50_ms".into(),
        json!(percentile(&half.latencies, 0.5)),
    );
    r.insert(
        "append_p99_ms".into(),
        json!(percentile(&half.latencies, 0.99)),
    );
    r.insert("append_half_load_per_s".into(), json!(half.per_s.round()));
    // Baseline: one writer, so every append is its own batch and its own fdatasync.
    let base_n = (n / 10).max(1000);
    let base = append_run(&tmp.path().join("each"), events(base_n), 1)?;
    r.insert("append_flush_each_per_s".into(), json!(base.per_s.round()));
    r.insert("append_flush_each_syncs".into(), json!(base.syncs));
    r.insert(
        "append_group_commit_ratio".into(),
        json!(ratio(group.per_s, base.per_s)),
    );
    Ok(())
}

/// `threads` threads each append their share of `evs` in `append_many` calls
/// of `batch` events (the shape of the HTTP benchmark, without HTTP); returns
/// appends/s.
pub fn batched_run(
    dir: &Path,
    evs: Vec<SignedEvent>,
    threads: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let store = Arc::new(Store::open(dir, AcceptAll)?);
    let n = evs.len();
    let mut shares: Vec<Vec<SignedEvent>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, e) in evs.into_iter().enumerate() {
        shares[i % threads].push(e);
    }
    let t0 = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let s = store.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                while !share.is_empty() {
                    let rest = share.split_off(share.len().min(batch));
                    for x in s.append_many(std::mem::replace(&mut share, rest)) {
                        x.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}
