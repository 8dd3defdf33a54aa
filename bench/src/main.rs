//! `custody-bench`: the figures of the benchmark issues, each measured next to
//! its baseline in the same run (the machine is shared and noisy, so ratios
//! matter more than absolute numbers). Prints a table and writes
//! `bench/results.json`. `--only a,b` runs a subset.
//!
//! | bench | module | figure vs baseline |
//! |---|---|---|
//! | append | [`append`] | group-commit appends vs one fdatasync per append; ack latency |
//! | verify, proof | [`verify`] | `custody-verify verify` vs bare `verify_strict`; peak RSS; inclusion proofs |
//! | mint, killswitch, http | [`broker`] | through a real broker and OpenBao vs vaultrs direct; batched appends over HTTP vs in process |
//! | policy | [`policy`] | Cedar `Policy::decide` vs a string check on the same inputs |
//! | agt | [`agt`] | custody's ledger vs the Agent Governance Toolkit's audit chain on 10k events |
//! | hook | [`broker`] | `custody hook claude-code` on PreToolUse (policy + durable entry) vs the same process answering without the broker |
//! | feed | [`feed`] | the entry feed's entries/s; appends/s with a slow follower attached vs none, same run |

mod agt;
mod append;
mod broker;
mod feed;
mod policy;
mod util;
mod verify;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};

use crate::util::{ratio, round};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bench {
    Append,
    Verify,
    Proof,
    Mint,
    Killswitch,
    Http,
    Policy,
    Agt,
    Hook,
    Feed,
}

const ALL: [Bench; 10] = [
    Bench::Append,
    Bench::Verify,
    Bench::Proof,
    Bench::Mint,
    Bench::Killswitch,
    Bench::Http,
    Bench::Policy,
    Bench::Agt,
    Bench::Hook,
    Bench::Feed,
];

#[derive(Parser)]
#[command(
    name = "custody-bench",
    about = "custody benchmarks with side-by-side baselines"
)]
pub struct Args {
    /// Run only these benchmarks (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Bench>,
    /// Entries appended in the append benchmarks.
    #[arg(long, default_value_t = 50_000)]
    pub appends: usize,
    /// Entries in the bundle the verifier and proof benchmarks use (the figure is 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    pub verify_entries: usize,
    /// Mints measured against OpenBao.
    #[arg(long, default_value_t = 200)]
    pub mints: usize,
    /// Kill-switch repetitions, each with a fresh session and fresh tokens.
    #[arg(long, default_value_t = 50)]
    pub killswitch_runs: usize,
    /// Live tokens the session holds when it is revoked.
    #[arg(long, default_value_t = 100)]
    pub killswitch_tokens: usize,
    /// Events appended over HTTP, in total.
    #[arg(long, default_value_t = 60_000)]
    pub http_events: usize,
    /// Concurrent HTTP clients, each a session of its own.
    #[arg(long, default_value_t = 8)]
    pub http_clients: usize,
    /// Events per `POST /v1/events/batch`.
    #[arg(long, default_value_t = 250)]
    pub http_batch: usize,
    /// Policy decisions measured.
    #[arg(long, default_value_t = 100_000)]
    pub policy_decisions: usize,
    /// `custody hook claude-code` processes timed (PreToolUse, and as many baseline runs).
    #[arg(long, default_value_t = 200)]
    pub hook_calls: usize,
    /// Entries in the ledger the feed benchmark reads back.
    #[arg(long, default_value_t = 50_000)]
    pub feed_entries: usize,
    /// Events appended per phase of the feed benchmark (with and without a follower).
    #[arg(long, default_value_t = 30_000)]
    pub feed_appends: usize,
    /// Events in the comparison with the Agent Governance Toolkit.
    #[arg(long, default_value_t = 10_000)]
    pub agt_events: usize,
    /// Where to write results.json.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Keep the figures already in --out that this run does not measure
    /// (with --only: update one benchmark's figures in place).
    #[arg(long)]
    merge: bool,
}

/// The printed table: key, target, what it is. Baselines follow their figure.
const ROWS: &[(&str, &str, &str)] = &[
    (
        "append_durable_per_s",
        "≥ 20,000",
        "durable appends/s, 64 writers, group commit",
    ),
    (
        "append_flush_each_per_s",
        "(baseline)",
        "one fdatasync per append",
    ),
    ("append_group_commit_ratio", "", "group commit / baseline"),
    (
        "append_durable_cores_busy",
        "",
        "of 2 cores, during the 64-writer run",
    ),
    ("append_p99_ms", "≤ 10 ms", "ack latency p99, 32 writers"),
    (
        "verify_per_s",
        "≥ 70% raw",
        "custody-verify verify, entries/s",
    ),
    (
        "verify_raw_per_s",
        "(baseline)",
        "bare verify_strict, all cores",
    ),
    ("verify_ratio", "≥ 0.70", "verify / raw"),
    ("verify_peak_rss_mb", "≤ 200", "verifier peak RSS (MB)"),
    ("proof_bytes", "≤ 1,024", "inclusion path bytes"),
    (
        "proof_verify_us",
        "≤ 200",
        "check-proof (µs, incl. entry and checkpoint signatures)",
    ),
    (
        "store_reopen_s",
        "",
        "reopening the store of that bundle (a broker restart), s",
    ),
    (
        "hook_p50_ms",
        "",
        "custody hook claude-code, PreToolUse: process, policy, durable entry, p50 (ms)",
    ),
    ("hook_p99_ms", "≤ 15", "the same, p99 (ms)"),
    (
        "hook_baseline_p50_ms",
        "(baseline)",
        "the same process answering without the broker, p50 (ms)",
    ),
    ("hook_baseline_p99_ms", "(baseline)", "the same, p99 (ms)"),
    ("hook_overhead_ratio", "", "hook / baseline, p50"),
    ("mint_p50_ms", "≤ 5", "custody token via broker, p50 (ms)"),
    ("mint_p99_ms", "≤ 20", "custody token via broker, p99 (ms)"),
    (
        "mint_direct_p50_ms",
        "(baseline)",
        "vaultrs direct, p50 (ms)",
    ),
    ("mint_overhead_ratio", "≤ 1.5", "broker / direct"),
    (
        "killswitch_p50_ms",
        "",
        "revoke → every token refused by OpenBao + next append refused, p50 (ms)",
    ),
    (
        "killswitch_p99_ms",
        "",
        "the same, p99 (ms; of killswitch_runs runs)",
    ),
    (
        "killswitch_revoke_call_p50_ms",
        "",
        "the revoke request alone, p50 (ms)",
    ),
    (
        "revoke_direct_100_ms",
        "(baseline)",
        "revoke as many tokens by accessor with vaultrs + same check, p50 (ms)",
    ),
    (
        "revoke_direct_100_calls_p50_ms",
        "",
        "baseline's revoke calls alone, p50 (ms)",
    ),
    (
        "revoke_direct_100_parallel_ms",
        "",
        "the same with 8 revocations in flight, p50 (ms)",
    ),
    (
        "killswitch_vs_direct_ratio",
        "",
        "kill switch / direct, p50",
    ),
    (
        "http_append_per_s",
        "≥ 10,000",
        "appends/s through the broker, HTTP batches, concurrent sessions",
    ),
    (
        "append_durable_per_s",
        "(baseline)",
        "in process, 64 writers (the row above)",
    ),
    ("http_vs_inprocess_ratio", "", "HTTP / in process"),
    (
        "append_batched_inprocess_per_s",
        "(baseline)",
        "same events, threads and batches straight into a store, no HTTP",
    ),
    ("http_vs_batched_ratio", "", "HTTP / batched in process"),
    ("http_batch_p99_ms", "", "one batch request, p99 (ms)"),
    (
        "policy_eval_p50_us",
        "",
        "Cedar Policy::decide incl. resource extraction, p50 (µs)",
    ),
    ("policy_eval_p99_us", "", "the same, p99 (µs)"),
    (
        "policy_baseline_p99_us",
        "(baseline)",
        "resource extraction + string checks, p99 (µs)",
    ),
    ("policy_cedar_vs_baseline_p99", "", "Cedar / baseline, p99"),
    ("policy_denied_share", "", "share of the mix Cedar denied"),
    (
        "custody_10k_append_per_s",
        "",
        "custody: sign + check + durable append, 1 producer, batches of 100",
    ),
    (
        "agt_append_per_s",
        "(compare)",
        "AGT AuditLog + FileAuditSink (HMAC, no fsync)",
    ),
    ("custody_vs_agt_append_ratio", "", "custody / AGT"),
    (
        "custody_10k_verify_per_s",
        "",
        "verify_bundle of those entries in process (as AGT verifies inside Python)",
    ),
    (
        "custody_10k_verify_process_per_s",
        "",
        "the same through the custody-verify process, wall time",
    ),
    (
        "agt_verify_per_s",
        "(compare)",
        "AGT FileAuditSink.verify_integrity()",
    ),
    ("custody_vs_agt_verify_ratio", "", "custody / AGT"),
    (
        "agt_verify_chain_per_s",
        "",
        "AGT in-memory AuditLog.verify_integrity() (hashes only)",
    ),
    (
        "feed_per_s",
        "",
        "GET /v1/entries from seq 0, pages of 1000, one auditor (entries/s)",
    ),
    (
        "feed_append_per_s",
        "(baseline)",
        "HTTP batch appends/s, no feed reader",
    ),
    (
        "feed_append_slow_follower_per_s",
        "",
        "the same with a slow follower long-polling the feed",
    ),
    (
        "feed_follower_vs_none_ratio",
        "≈ 1",
        "with follower / without",
    ),
    ("agt_version", "", "agent-governance-toolkit-core version"),
    ("agt_error", "", "why the AGT figures are missing"),
];

fn main() -> anyhow::Result<()> {
    let t_all = Instant::now();
    let a = Args::parse();
    let selected: Vec<Bench> = if a.only.is_empty() {
        ALL.to_vec()
    } else {
        ALL.iter().copied().filter(|b| a.only.contains(b)).collect()
    };
    let on = |b: Bench| selected.contains(&b);
    let mut r = Map::new();
    r.insert("cores".into(), json!(util::cores()));
    r.insert(
        "benches".into(),
        json!(selected
            .iter()
            .map(|b| format!("{b:?}").to_lowercase())
            .collect::<Vec<_>>()),
    );
    let mut seconds = Map::new();
    let mut time = |name: &str,
                    r: &mut Map<String, Value>,
                    f: &dyn Fn(&mut Map<String, Value>) -> anyhow::Result<()>| {
        eprintln!("{name}…");
        let t = Instant::now();
        if let Err(e) = f(r) {
            eprintln!("{name} benchmark failed: {e:#}");
            r.insert(format!("{name}_error"), json!(format!("{e:#}")));
        }
        let s = round(t.elapsed().as_secs_f64(), 1);
        eprintln!("{name}: {s} s");
        seconds.insert(name.into(), json!(s));
    };
    if on(Bench::Append) {
        time("append", &mut r, &|r| append::bench(&a, r));
    }
    if on(Bench::Verify) || on(Bench::Proof) {
        let name = match (on(Bench::Verify), on(Bench::Proof)) {
            (true, true) => "verify+proof",
            (true, false) => "verify",
            _ => "proof",
        };
        time(name, &mut r, &|r| {
            verify::bench(&a, r, on(Bench::Verify), on(Bench::Proof))
        });
    }
    if on(Bench::Mint) {
        time("mint", &mut r, &|r| broker::bench_mint(&a, r));
    }
    if on(Bench::Killswitch) {
        time("killswitch", &mut r, &|r| broker::bench_killswitch(&a, r));
    }
    if on(Bench::Http) {
        time("http", &mut r, &|r| broker::bench_http(&a, r));
    }
    if on(Bench::Policy) {
        time("policy", &mut r, &|r| policy::bench(&a, r));
    }
    if on(Bench::Hook) {
        time("hook", &mut r, &|r| broker::bench_hook(&a, r));
    }
    if on(Bench::Feed) {
        time("feed", &mut r, &|r| feed::bench(&a, r));
    }
    if on(Bench::Agt) {
        time("agt", &mut r, &|r| agt::bench(&a, r));
    }
    for (key, num, den) in [
        (
            "http_vs_inprocess_ratio",
            "http_append_per_s",
            "append_durable_per_s",
        ),
        (
            "http_vs_batched_ratio",
            "http_append_per_s",
            "append_batched_inprocess_per_s",
        ),
    ] {
        let f = |k: &str| r.get(k).and_then(Value::as_f64);
        if let (Some(x), Some(y)) = (f(num), f(den)) {
            r.insert(key.into(), json!(ratio(x, y)));
        }
    }
    let total = round(t_all.elapsed().as_secs_f64(), 1);
    seconds.insert("total".into(), json!(total));
    r.insert("seconds".into(), Value::Object(seconds));

    println!("{:<32} {:>14}  {:<11} what", "key", "value", "target");
    for (k, target, what) in ROWS {
        let v = match r.get(*k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None if k.starts_with("agt_error") => continue,
            None => "-".into(),
        };
        println!("{k:<32} {v:>14}  {target:<11} {what}");
    }
    for (k, v) in &r {
        if k.ends_with("_error") && k != "agt_error" {
            println!("{k}: {v}");
        }
    }
    println!("custody-bench took {total} s");
    let failed: Vec<String> = r
        .keys()
        .filter(|k| k.ends_with("_error") && *k != "agt_error")
        .cloned()
        .collect();
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if a.merge {
        if let Ok(text) = std::fs::read_to_string(&a.out) {
            if let Ok(Value::Object(old)) = serde_json::from_str::<Value>(&text) {
                let mut merged = old;
                if let (Some(Value::Array(was)), Some(Value::Array(now))) =
                    (merged.get("benches").cloned(), r.get("benches").cloned())
                {
                    let mut all = was;
                    for b in now {
                        if !all.contains(&b) {
                            all.push(b);
                        }
                    }
                    r.insert("benches".into(), Value::Array(all));
                }
                if let (Some(Value::Object(mut was)), Some(Value::Object(now))) =
                    (merged.get("seconds").cloned(), r.get("seconds").cloned())
                {
                    was.extend(now);
                    r.insert("seconds".into(), Value::Object(was));
                }
                merged.extend(r);
                r = merged;
            }
        }
    }
    std::fs::write(
        &a.out,
        serde_json::to_string_pretty(&Value::Object(r))? + "\n",
    )?;
    println!("wrote {}", a.out.display());
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}
