//! `custody-bench`: the figures of the benchmark issues, each measured next to
//! its baseline in the same run (the machine is shared and noisy, so ratios
//! matter more than absolute numbers). Prints a table and writes
//! `bench/results.json`. `--only a,b` runs a subset. Each benchmark runs
//! `--repeat` times (3 by default): a figure is the median of its runs and
//! `ranges` holds each figure's lowest and highest; a `_ratio` whose range
//! holds 1 is called parity (listed under `parity`).
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
//! | pg | [`pg`] | 1, 2, 3 `custody serve` processes on one PostgreSQL vs one embedded process: appends, ack latency, kill switch, start-up by ledger size |

mod agt;
mod append;
mod broker;
mod feed;
mod pg;
mod policy;
mod util;
mod verify;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};

use crate::util::{ratio, round, Results};

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
    Pg,
}

const ALL: [Bench; 11] = [
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
    Bench::Pg,
];

/// Run only when named in `--only`: the PostgreSQL benchmark builds and
/// migrates a 1M-entry ledger and starts brokers on it (about 9 minutes with
/// three repeats), which would take the default run past its 10-minute
/// budget on a fresh clone.
const OPT_IN: [Bench; 1] = [Bench::Pg];

#[derive(Parser)]
#[command(
    name = "custody-bench",
    about = "custody benchmarks with side-by-side baselines"
)]
pub struct Args {
    /// Run only these benchmarks (comma-separated); all but `pg` by default.
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
    #[arg(long, default_value_t = 15)]
    pub killswitch_runs: usize,
    /// Live tokens the session holds when it is revoked.
    #[arg(long, default_value_t = 100)]
    pub killswitch_tokens: usize,
    /// Events appended over HTTP, in total.
    #[arg(long, default_value_t = 40_000)]
    pub http_events: usize,
    /// Concurrent HTTP clients, each a session of its own.
    #[arg(long, default_value_t = 8)]
    pub http_clients: usize,
    /// Events per `POST /v1/events/batch`.
    #[arg(long, default_value_t = 250)]
    pub http_batch: usize,
    /// Policy decisions measured.
    #[arg(long, default_value_t = 15_000)]
    pub policy_decisions: usize,
    /// `custody hook claude-code` processes timed (PreToolUse, and as many baseline runs).
    #[arg(long, default_value_t = 200)]
    pub hook_calls: usize,
    /// Entries in the ledger the feed benchmark reads back.
    #[arg(long, default_value_t = 20_000)]
    pub feed_entries: usize,
    /// Events appended per phase of the feed benchmark (with and without a follower).
    #[arg(long, default_value_t = 12_000)]
    pub feed_appends: usize,
    /// Events in the comparison with the Agent Governance Toolkit.
    #[arg(long, default_value_t = 10_000)]
    pub agt_events: usize,
    /// Entries in the largest ledger the PostgreSQL benchmark starts brokers
    /// on (built once per run, copied in with `custody migrate`).
    #[arg(long, default_value_t = 1_000_000)]
    pub pg_entries: usize,
    /// Kill switches across brokers per run of the PostgreSQL benchmark.
    #[arg(long, default_value_t = 15)]
    pub pg_killswitch_runs: usize,
    /// Runs of each benchmark; figures are medians, with ranges.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the Markdown table of an existing results.json and exit.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
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
    (
        "append_64w_p99_ms",
        "",
        "ack latency p99, the 64 closed-loop writers (p50 in append_64w_p50_ms)",
    ),
    (
        "append_open_loop_rate_per_s",
        "",
        "open loop: arrivals/s on a fixed schedule, half the 64-writer rate",
    ),
    (
        "append_p50_ms",
        "",
        "ack latency p50 at that rate, from scheduled arrival",
    ),
    ("append_p99_ms", "≤ 10 ms", "the same, p99"),
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
        "hook_event_p50_ms",
        "",
        "the same on an event recorded without a policy check (one durable append), p50 (ms)",
    ),
    ("hook_event_p99_ms", "", "the same, p99 (ms)"),
    (
        "hook_baseline_p50_ms",
        "(baseline)",
        "the same binary starting and exiting (`custody --version`), p50 (ms)",
    ),
    ("hook_baseline_p99_ms", "(baseline)", "the same, p99 (ms)"),
    ("hook_overhead_ratio", "", "hook / baseline, p50"),
    ("mint_p50_ms", "≤ 5", "custody token via broker, p50 (ms)"),
    ("mint_p99_ms", "≤ 20", "custody token via broker, p99 (ms)"),
    (
        "mint_direct_p50_ms",
        "(baseline)",
        "vaultrs direct, a service token through the role, p50 (ms)",
    ),
    (
        "mint_direct_batch_p50_ms",
        "(baseline)",
        "the broker's own OpenBao call direct: a batch token made with a parent token through the role, p50 (ms)",
    ),
    (
        "mint_overhead_ratio",
        "≤ 1.5",
        "broker / the same call direct, p50",
    ),
    (
        "mint_vs_service_ratio",
        "",
        "broker / vaultrs service token direct, p50",
    ),
    (
        "killswitch_p50_ms",
        "",
        "revoke → every token refused by OpenBao + next append refused, p50 (ms)",
    ),
    (
        "killswitch_p99_ms",
        "≤ 20",
        "the same, p99 (ms; of killswitch_runs runs)",
    ),
    (
        "killswitch_revoke_call_p50_ms",
        "",
        "the revoke request alone, p50 (ms)",
    ),
    (
        "killswitch_revoke_call_p99_ms",
        "",
        "the revoke request alone, p99 (ms)",
    ),
    (
        "killswitch_late_reads",
        "0",
        "reads a revoked token still got served after the revoke request returned (all runs)",
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
        "(baseline)",
        "the best direct: 16 revocations in flight (the broker's per-token concurrency), p50 (ms)",
    ),
    (
        "killswitch_vs_direct_ratio",
        "≤ 0.5",
        "kill switch / best direct, p50",
    ),
    (
        "killswitch_vs_serial_ratio",
        "",
        "kill switch / one-by-one direct, p50",
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
        "policy_with_approvals_p50_us",
        "",
        "action digest + Cedar + refusal/open-approval lookups for held calls, p50 (µs)",
    ),
    (
        "policy_with_approvals_p99_us",
        "≤ 1000",
        "the same, p99 (µs)",
    ),
    (
        "policy_with_approvals_vs_eval_p99",
        "",
        "with approvals / Cedar alone (policy_eval_p99_us), p99",
    ),
    (
        "policy_held_share",
        "",
        "share of the mix held for approval",
    ),
    (
        "policy_open_approvals",
        "",
        "open approvals in the state looked up",
    ),
    (
        "custody_single_append_per_s",
        "",
        "custody: 1 thread, 1 event per call, signed + checked + fdatasync each",
    ),
    (
        "agt_append_single_per_s",
        "(compare)",
        "AGT: 1 thread, 1 log() per event, FileAuditSink (HMAC, no fsync)",
    ),
    (
        "custody_vs_agt_single_ratio",
        "",
        "custody / AGT (AGT not durable)",
    ),
    (
        "agt_append_single_fsync_per_s",
        "(compare)",
        "AGT: the same with an fsync per entry (added by the harness)",
    ),
    (
        "custody_vs_agt_single_fsync_ratio",
        "",
        "custody / AGT, both durable",
    ),
    (
        "custody_threads_append_per_s",
        "",
        "custody: 64 threads, 1 event per call (group commit)",
    ),
    (
        "agt_append_threads_per_s",
        "(compare)",
        "AGT: 64 threads, 1 log() per event, one FileAuditSink",
    ),
    ("custody_vs_agt_threads_ratio", "", "custody / AGT"),
    (
        "custody_batch_append_per_s",
        "",
        "custody: 1 producer, batches of 100 (append_many)",
    ),
    (
        "agt_append_batch_per_s",
        "(compare)",
        "AGT: batches of 100 (FileAuditSink.write_batch)",
    ),
    ("custody_vs_agt_batch_ratio", "", "custody / AGT"),
    (
        "custody_verify_1core_per_s",
        "",
        "custody-verify process pinned to 1 core (taskset), 10k entries",
    ),
    (
        "agt_verify_1core_per_s",
        "(compare)",
        "AGT FileAuditSink.verify_integrity(), pinned to 1 core",
    ),
    (
        "custody_vs_agt_verify_1core_ratio",
        "",
        "custody / AGT, per core",
    ),
    (
        "agt_verify_chain_1core_per_s",
        "(compare)",
        "AGT in-memory AuditLog.verify_integrity() (hashes only), 1 core",
    ),
    (
        "custody_vs_agt_hash_only_1core_ratio",
        "≥ 2",
        "custody (Ed25519 signatures) / AGT hash-only, per core",
    ),
    (
        "custody_verify_2core_per_s",
        "",
        "custody-verify process on both cores",
    ),
    (
        "custody_2core_vs_agt_verify_ratio",
        "",
        "custody on 2 cores / AGT on 1",
    ),
    (
        "custody_10k_verify_per_s",
        "",
        "verify_bundle of the batch ledger in process",
    ),
    (
        "custody_verify_hashes_1core_per_s",
        "",
        "custody hash-only part (leaf hashes, prev chain, Merkle root), in memory, 1 thread",
    ),
    (
        "custody_vs_agt_hashes_1core_ratio",
        "",
        "custody hash-only / AGT hash-only, per core (like for like)",
    ),
    (
        "custody_sig_strict_us_1core",
        "",
        "one verify_strict, 1 thread (µs)",
    ),
    (
        "custody_sig_batch_us_1core",
        "",
        "one signature in the verifier's batches, 1 thread (µs)",
    ),
    (
        "custody_verify_sig_bound_1core_per_s",
        "",
        "bound on full verification per core from signatures alone (1e6 / batch µs)",
    ),
    (
        "custody_sig_bound_vs_agt_hash_only_ratio",
        "",
        "that bound / AGT hash-only: the most a signed ledger can reach",
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
    (
        "pg_1_broker_per_s",
        "",
        "PostgreSQL backend, 1 custody serve process: appends/s, the http load (sessions round-robin over the brokers)",
    ),
    (
        "pg_2_brokers_per_s",
        "≥ 10,000",
        "the same, 2 brokers on one PostgreSQL",
    ),
    (
        "pg_2_brokers_cores_brokers",
        "",
        "of 2 cores, during the 2-broker line: the broker processes",
    ),
    (
        "pg_2_brokers_cores_postgres",
        "",
        "the same: PostgreSQL (postmaster and backends)",
    ),
    (
        "pg_2_brokers_cores_loadgen",
        "",
        "the same: the load generator (this process)",
    ),
    ("pg_3_brokers_per_s", "", "the same, 3 brokers"),
    (
        "pg_embedded_http_per_s",
        "(baseline)",
        "the same load on 1 custody serve process, embedded backend",
    ),
    (
        "pg_embedded_cores_brokers",
        "",
        "of 2 cores, during the embedded line: the broker process (pg_embedded_cores_loadgen: this process)",
    ),
    (
        "pg_2_brokers_vs_embedded_ratio",
        "",
        "2 brokers on PostgreSQL / embedded",
    ),
    (
        "pg_1_broker_vs_embedded_ratio",
        "",
        "1 broker on PostgreSQL / embedded",
    ),
    ("pg_3_vs_1_brokers_ratio", "", "3 brokers / 1 broker"),
    (
        "pg_single_2_brokers_per_s",
        "",
        "single-event appends/s over 2 brokers, 64 in flight (saturation)",
    ),
    (
        "pg_ack_rate_per_s",
        "",
        "open loop: single-event arrivals/s over 2 brokers, half that saturation",
    ),
    (
        "pg_ack_p50_ms",
        "",
        "ack latency p50 at that rate, from scheduled arrival",
    ),
    ("pg_ack_p99_ms", "≤ 20", "the same, p99"),
    (
        "pg_ack_embedded_p99_ms",
        "(baseline)",
        "the same arrivals on 1 embedded process, p99",
    ),
    (
        "pg_feed_wake_p50_ms",
        "",
        "a feed follower long-polling on B, an entry appended on A: from A's answer to B's page, p50 (ms)",
    ),
    ("pg_feed_wake_p99_ms", "", "the same, p99 (ms)"),
    (
        "pg_feed_wake_same_broker_p50_ms",
        "(baseline)",
        "follower and append on the same broker, p50 (ms)",
    ),
    (
        "pg_killswitch_p50_ms",
        "",
        "session started on A, tokens minted on B and C, revoked on A → every token refused by OpenBao and B refuses its next append, p50 (ms)",
    ),
    ("pg_killswitch_p99_ms", "≤ 100", "the same, p99 (ms)"),
    (
        "pg_killswitch_embedded_p50_ms",
        "(baseline)",
        "the same on 1 embedded process, p50 (ms)",
    ),
    (
        "pg_killswitch_vs_embedded_ratio",
        "",
        "across brokers / 1 embedded process, p50",
    ),
    (
        "pg_revoke_visible_ms",
        "",
        "revoke on A → B refuses the session's append, p99 (ms; p50 in pg_revoke_visible_p50_ms)",
    ),
    (
        "pg_cached_revoke_p99_ms",
        "≤ 250 + revoke",
        "revoke on A → C's policy check (cached rules' state, LISTEN/NOTIFY) refuses, p99 (ms)",
    ),
    (
        "pg_session_visible_p99_ms",
        "",
        "a session started on A → B and C both accept its requests (their catch-up), p99 (ms)",
    ),
    (
        "pg_startup_10k_ms",
        "",
        "custody serve on PostgreSQL, spawn → first /v1/health answer, 10k entries (ms)",
    ),
    ("pg_startup_100k_ms", "", "the same, 100k entries (ms)"),
    ("pg_startup_1m_ms", "≤ 1000", "the same, 1M entries (ms)"),
    (
        "pg_embedded_startup_10k_ms",
        "(baseline)",
        "embedded backend (replays the ledger), 10k entries (ms)",
    ),
    (
        "pg_embedded_startup_100k_ms",
        "(baseline)",
        "the same, 100k entries (ms)",
    ),
    (
        "pg_embedded_startup_1m_ms",
        "(baseline)",
        "the same, 1M entries (ms; measured once per run, its first start)",
    ),
    (
        "pg_startup_vs_embedded_100k_ratio",
        "",
        "PostgreSQL / embedded start-up at 100k",
    ),
    (
        "pg_migrate_1m_s",
        "",
        "custody migrate of the 1M-entry embedded ledger into PostgreSQL (s, once per run)",
    ),
    (
        "pg_2_brokers_at_1m_per_s",
        "",
        "2 brokers, the same load, with 1M entries already in the ledger",
    ),
    (
        "pg_2_brokers_big_vs_small_ratio",
        "",
        "at 1M / on the small ledger (pg_2_brokers_per_s)",
    ),
    ("agt_version", "", "agent-governance-toolkit-core version"),
    ("agt_error", "", "why the AGT figures are missing"),
];

fn main() -> anyhow::Result<()> {
    let t_all = Instant::now();
    let a = Args::parse();
    if let Some(p) = &a.render {
        let r: Results = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        print!("{}", markdown_table(&r));
        return Ok(());
    }
    let selected: Vec<Bench> = if a.only.is_empty() {
        ALL.iter()
            .copied()
            .filter(|b| !OPT_IN.contains(b))
            .collect()
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
    let mut ranges = Map::new();
    let repeat = a.repeat.max(1);
    // Runs one benchmark `repeat` times (or once when it repeats itself and
    // returns its runs), then keeps medians and ranges.
    let mut time =
        |name: &str, r: &mut Map<String, Value>, f: &dyn Fn() -> anyhow::Result<Vec<Results>>| {
            eprintln!("{name}…");
            let t = Instant::now();
            match f() {
                Ok(runs) => merge_runs(&runs, r, &mut ranges),
                Err(e) => {
                    eprintln!("{name} benchmark failed: {e:#}");
                    r.insert(format!("{name}_error"), json!(format!("{e:#}")));
                }
            }
            let s = round(t.elapsed().as_secs_f64(), 1);
            eprintln!("{name}: {s} s");
            seconds.insert(name.into(), json!(s));
        };
    let times = |f: &dyn Fn(&mut Results) -> anyhow::Result<()>| -> anyhow::Result<Vec<Results>> {
        (0..repeat)
            .map(|_| {
                let mut r = Results::new();
                f(&mut r).map(|()| r)
            })
            .collect()
    };
    if on(Bench::Append) {
        time("append", &mut r, &|| times(&|r| append::bench(&a, r)));
    }
    if on(Bench::Verify) || on(Bench::Proof) {
        let name = match (on(Bench::Verify), on(Bench::Proof)) {
            (true, true) => "verify+proof",
            (true, false) => "verify",
            _ => "proof",
        };
        time(name, &mut r, &|| {
            verify::bench(&a, on(Bench::Verify), on(Bench::Proof))
        });
    }
    if on(Bench::Mint) {
        time("mint", &mut r, &|| times(&|r| broker::bench_mint(&a, r)));
    }
    if on(Bench::Killswitch) {
        time("killswitch", &mut r, &|| {
            times(&|r| broker::bench_killswitch(&a, r))
        });
    }
    if on(Bench::Http) {
        time("http", &mut r, &|| times(&|r| broker::bench_http(&a, r)));
    }
    if on(Bench::Policy) {
        time("policy", &mut r, &|| times(&|r| policy::bench(&a, r)));
    }
    if on(Bench::Hook) {
        time("hook", &mut r, &|| times(&|r| broker::bench_hook(&a, r)));
    }
    if on(Bench::Feed) {
        time("feed", &mut r, &|| times(&|r| feed::bench(&a, r)));
    }
    if on(Bench::Pg) {
        time("pg", &mut r, &|| pg::bench(&a));
    }
    if on(Bench::Agt) {
        time("agt", &mut r, &|| times(&|r| agt::bench(&a, r)));
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
    r.insert("repeat".into(), json!(repeat));
    r.insert("run".into(), this_run());
    let parity: Vec<String> = ranges
        .iter()
        .filter(|(k, v)| {
            k.ends_with("_ratio")
                && matches!(v.as_array().map(|x| (x[0].as_f64(), x[1].as_f64())),
                    Some((Some(lo), Some(hi))) if lo <= 1.0 && 1.0 <= hi)
        })
        .map(|(k, _)| k.clone())
        .collect();
    r.insert("parity".into(), json!(parity));
    r.insert("ranges".into(), Value::Object(ranges));

    println!("{:<32} {:>14}  {:<11} what", "key", "value", "target");
    for (k, target, what) in ROWS {
        let v = match r.get(*k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None if k.starts_with("agt_error") => continue,
            None => "-".into(),
        };
        let spread = match r["ranges"].get(*k).and_then(Value::as_array) {
            Some(x) if repeat > 1 => format!(" [{} – {}]", x[0], x[1]),
            _ => String::new(),
        };
        let par = if parity.iter().any(|p| p == k) {
            " (parity)"
        } else {
            ""
        };
        println!("{k:<32} {v:>14}  {target:<11} {what}{spread}{par}");
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
                // Each benchmark's seconds replace the old run's; `total`
                // stays the first run's, and this run's goes with its entry
                // in `merged_runs` below.
                let total = r.get("seconds").and_then(|s| s.get("total")).cloned();
                if let (Some(Value::Object(mut was)), Some(Value::Object(mut now))) =
                    (merged.get("seconds").cloned(), r.get("seconds").cloned())
                {
                    if was.contains_key("total") {
                        now.remove("total");
                    }
                    was.extend(now);
                    r.insert("seconds".into(), Value::Object(was));
                }
                // Ranges and parity of the keys this run measured replace
                // the old run's; the others stay.
                let now_ranges = r.get("ranges").cloned().unwrap_or_else(|| json!({}));
                if let (Some(Value::Object(mut was)), Value::Object(now)) =
                    (merged.get("ranges").cloned(), now_ranges)
                {
                    was.retain(|k, _| r.get(k).is_none());
                    was.extend(now);
                    r.insert("ranges".into(), Value::Object(was));
                }
                if let (Some(Value::Array(was)), Some(Value::Array(now))) =
                    (merged.get("parity").cloned(), r.get("parity").cloned())
                {
                    let mut all: Vec<Value> = was
                        .into_iter()
                        .filter(|k| k.as_str().is_some_and(|k| r.get(k).is_none()))
                        .collect();
                    all.extend(now);
                    r.insert("parity".into(), Value::Array(all));
                }
                // Which figures came from this later run, and how often it
                // ran each; `repeat` stays the first run's.
                let mut runs = match merged.get("merged_runs") {
                    Some(Value::Array(a)) => a.clone(),
                    _ => Vec::new(),
                };
                runs.push(json!({
                    "benches": selected.iter().map(|b| format!("{b:?}").to_lowercase()).collect::<Vec<_>>(),
                    "repeat": repeat,
                    "seconds": total,
                    "run": r.remove("run"),
                }));
                r.insert("merged_runs".into(), Value::Array(runs));
                if let Some(first) = merged.get("repeat").cloned() {
                    r.insert("repeat".into(), first);
                }
                merged.extend(r);
                r = merged;
            }
        }
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&r)? + "\n")?;
    println!("wrote {}", a.out.display());
    // The same table in Markdown, for docs/PERFORMANCE.md's "Latest run"
    // (bench/tests/performance_doc.rs holds the document to results.json).
    let md = a.out.with_extension("md");
    std::fs::write(&md, markdown_table(&r))?;
    println!("wrote {}", md.display());
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// The median of each numeric figure over `runs` into `r`, its lowest and
/// highest into `ranges`; other values from the first run.
/// What was measured, and when: the commit of the working tree (with
/// `-dirty` if it had uncommitted changes) and the start of the write, so
/// a document citing the file can name the run. `null` fields where git is
/// not at hand.
fn this_run() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    json!({
        "commit": git(&["describe", "--always", "--dirty", "--abbrev=7"]),
        "finished_at": at,
    })
}

fn merge_runs(runs: &[Results], r: &mut Results, ranges: &mut Map<String, Value>) {
    let Some(first) = runs.first() else { return };
    for (k, v0) in first {
        let mut xs: Vec<f64> = runs
            .iter()
            .filter_map(|run| run.get(k).and_then(Value::as_f64))
            .collect();
        if v0.is_number() && xs.len() == runs.len() {
            xs.sort_by(f64::total_cmp);
            let mid = xs.len() / 2;
            let median = if xs.len() % 2 == 1 {
                xs[mid]
            } else {
                (xs[mid - 1] + xs[mid]) / 2.0
            };
            let keep_int = v0.is_i64() || v0.is_u64();
            let m = if keep_int {
                json!(median.round() as i64)
            } else {
                json!(round(median, 3))
            };
            r.insert(k.clone(), m);
            if runs.len() > 1 {
                ranges.insert(k.clone(), json!([xs[0], xs[xs.len() - 1]]));
            }
        } else {
            r.insert(k.clone(), v0.clone());
        }
    }
}

/// `| key | median | range | target | what |` for every figure of [`ROWS`]
/// the run produced.
fn markdown_table(r: &Results) -> String {
    let mut out = String::from("| key | median | range | target | what |\n|---|---|---|---|---|\n");
    for (k, target, what) in ROWS {
        let Some(v) = r.get(*k) else { continue };
        let v = match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let range = match r
            .get("ranges")
            .and_then(|x| x.get(*k))
            .and_then(Value::as_array)
        {
            Some(x) => format!("{} – {}", x[0], x[1]),
            None => String::new(),
        };
        let parity = r
            .get("parity")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|x| x == *k));
        let what = if parity {
            format!("{what} — **parity** (the range holds 1)")
        } else {
            what.to_string()
        };
        out.push_str(&format!("| `{k}` | {v} | {range} | {target} | {what} |\n"));
    }
    out
}
