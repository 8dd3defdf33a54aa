//! `custody-bench`: the figures of the benchmark issue, each measured next to
//! its baseline in the same run (the machine is shared and noisy, so ratios
//! matter more than absolute numbers). Prints a table and writes
//! `bench/results.json`.
//!
//! Measured here (first increment): durable appends with group commit vs one
//! fdatasync per entry, ack latency, verification of a bundle vs a bare
//! `verify_strict` loop over the same signatures on all cores, the verifier's
//! peak memory, inclusion proof size and check time, and `custody token` mint
//! latency through the broker vs vaultrs directly against the same OpenBao.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use custody_identity::KeyPair;
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::checkpoint::Origin;
use custody_ledger::export::export_bundle;
use custody_ledger::store::{AcceptAll, Store};
use custody_ledger::{actions, ActionType, ActorKind, Event, SignedEvent};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(
    name = "custody-bench",
    about = "custody benchmarks with side-by-side baselines"
)]
struct Args {
    /// Entries appended in the append benchmarks.
    #[arg(long, default_value_t = 50_000)]
    appends: usize,
    /// Entries in the bundle the verifier benchmark checks (the figure is 1,000,000).
    #[arg(long, default_value_t = 200_000)]
    verify_entries: usize,
    /// Mints measured against OpenBao.
    #[arg(long, default_value_t = 200)]
    mints: usize,
    /// Where to write results.json.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
}

fn events(n: usize) -> Vec<SignedEvent> {
    let keys: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate()).collect();
    (0..n)
        .map(|i| {
            let k = &keys[i % keys.len()];
            let mut e = Event::new(
                k.did(),
                ActorKind::Human,
                ActionType::new("tool.call").expect("valid"),
            );
            e.details.insert("i".into(), i.into());
            e.details.insert("tool".into(), "Bash".into());
            e.sign(k).expect("sign")
        })
        .collect()
}

/// The p-quantile of sorted latencies, in milliseconds to 3 decimals.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i].as_secs_f64() * 1e6).round() / 1000.0
}

/// `writers` threads append `evs` concurrently; returns (appends/s, latencies).
fn append_run(
    dir: &Path,
    evs: Vec<SignedEvent>,
    writers: usize,
) -> anyhow::Result<(f64, Vec<Duration>, u64)> {
    let store = Arc::new(Store::open(dir, AcceptAll)?);
    let n = evs.len();
    let chunks: Vec<Vec<SignedEvent>> = {
        let mut cs: Vec<Vec<SignedEvent>> = (0..writers).map(|_| Vec::new()).collect();
        for (i, e) in evs.into_iter().enumerate() {
            cs[i % writers].push(e);
        }
        cs
    };
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
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let syncs = store.stats().syncs;
    lat.sort();
    Ok((rate, lat, syncs))
}

fn bench_appends(a: &Args, r: &mut Map<String, Value>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let n = a.appends;
    let (rate, _, syncs) = append_run(&tmp.path().join("group"), events(n), 64)?;
    r.insert("append_durable_per_s".into(), json!(rate.round()));
    r.insert("append_durable_syncs".into(), json!(syncs));
    let (half_rate, lat, _) = append_run(&tmp.path().join("half"), events(n / 2), 32)?;
    r.insert("append_p50_ms".into(), json!(percentile(&lat, 0.5)));
    r.insert("append_p99_ms".into(), json!(percentile(&lat, 0.99)));
    r.insert("append_half_load_per_s".into(), json!(half_rate.round()));
    // Baseline: one writer, so every append is its own batch and its own fdatasync.
    let base_n = (n / 10).max(1000);
    let (base, _, base_syncs) = append_run(&tmp.path().join("each"), events(base_n), 1)?;
    r.insert("append_flush_each_per_s".into(), json!(base.round()));
    r.insert("append_flush_each_syncs".into(), json!(base_syncs));
    r.insert(
        "append_group_commit_ratio".into(),
        json!((rate / base * 100.0).round() / 100.0),
    );
    Ok(())
}

/// Peak RSS of a child process, from /proc (VmHWM), polled until it exits.
fn run_with_peak_rss(
    cmd: &mut std::process::Command,
) -> anyhow::Result<(std::process::ExitStatus, f64, Duration)> {
    let t0 = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if let Some(st) = child.try_wait()? {
            return Ok((st, peak_kb as f64 / 1024.0, t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bench_verify(a: &Args, r: &mut Map<String, Value>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ledger = KeyPair::generate();
    let human = KeyPair::generate();
    let store = Store::open(&tmp.path().join("data"), Authority::new(Some(ledger.did())))?;
    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS)?,
    );
    g.details = TrustRoots {
        admins: [human.did()].into(),
        delegators: [human.did()].into(),
    }
    .to_details();
    store
        .append(g.sign(&ledger)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = a.verify_entries;
    let mut sigs = Vec::with_capacity(n);
    let mut batch = Vec::new();
    for i in 0..n {
        let mut e = Event::new(human.did(), ActorKind::Human, ActionType::new("prompt")?);
        e.details.insert("i".into(), i.into());
        let s = e.sign(&human)?;
        sigs.push((s.event.signing_input()?, s.sig));
        batch.push(s);
        if batch.len() == 1000 {
            for x in store.append_many(std::mem::take(&mut batch)) {
                x.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    }
    for x in store.append_many(batch) {
        x.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let bundle = tmp.path().join("bundle");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &bundle)?;
    drop(store);

    let exe = std::env::current_exe()?;
    let verifier = exe.with_file_name("custody-verify");
    let (status, peak_mb, took) = run_with_peak_rss(
        std::process::Command::new(&verifier)
            .arg("verify")
            .arg(&bundle)
            .arg("--ledger-key")
            .arg(ledger.did().as_str()),
    )
    .with_context(|| format!("running {}", verifier.display()))?;
    anyhow::ensure!(status.success(), "the benchmark bundle did not verify");
    let verify_rate = (n + 1) as f64 / took.as_secs_f64();

    // Baseline: the bare signature checks, on every core.
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let pk = *human.public().dalek();
    let sigs = Arc::new(sigs);
    let t0 = Instant::now();
    let hs: Vec<_> = (0..cores)
        .map(|c| {
            let sigs = sigs.clone();
            std::thread::spawn(move || {
                let mut ok = 0usize;
                for (msg, sig) in sigs.iter().skip(c).step_by(cores) {
                    let s = ed25519_dalek::Signature::from_bytes(&sig.0);
                    if pk.verify_strict(msg, &s).is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = hs.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    anyhow::ensure!(ok == n, "baseline signatures failed");
    let raw_rate = n as f64 / t0.elapsed().as_secs_f64();
    r.insert("verify_entries".into(), json!(n + 1));
    r.insert("verify_per_s".into(), json!(verify_rate.round()));
    r.insert("verify_raw_per_s".into(), json!(raw_rate.round()));
    r.insert(
        "verify_ratio".into(),
        json!((verify_rate / raw_rate * 100.0).round() / 100.0),
    );
    r.insert(
        "verify_peak_rss_mb".into(),
        json!((peak_mb * 10.0).round() / 10.0),
    );

    // Inclusion proof at this size.
    let proof_file = tmp.path().join("proof.json");
    let st = std::process::Command::new(&verifier)
        .args([
            "prove",
            bundle.to_str().unwrap_or_default(),
            "--seq",
            &(n / 2).to_string(),
            "--out",
        ])
        .arg(&proof_file)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "prove failed");
    let p = custody_verifier::proof::read_proof(&proof_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    r.insert("proof_path_hashes".into(), json!(p.path.len()));
    r.insert("proof_bytes".into(), json!(p.path.len() * 32));
    r.insert(
        "proof_file_bytes".into(),
        json!(std::fs::metadata(&proof_file)?.len()),
    );
    let reps = 2000;
    let t0 = Instant::now();
    for _ in 0..reps {
        custody_verifier::proof::check_proof(&p, Some(&ledger.did()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    r.insert(
        "proof_verify_us".into(),
        json!((t0.elapsed().as_secs_f64() / reps as f64 * 1e6 * 10.0).round() / 10.0),
    );
    Ok(())
}

fn bench_mint(a: &Args, r: &mut Map<String, Value>) -> anyhow::Result<()> {
    use custody_broker::client::Client;
    use custody_broker::dev::{example_config, write_secret_file, OpenBao};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tmp = tempfile::tempdir()?;
        let bao = OpenBao::start(tmp.path()).await?;
        let token = bao.configure_examples().await?;
        write_secret_file(&tmp.path().join("vault-token"), &token)?;
        let dev = KeyPair::generate();
        let admin = KeyPair::generate();
        let cfgp = tmp.path().join("custody.toml");
        std::fs::write(
            &cfgp,
            example_config(
                "127.0.0.1:0",
                &tmp.path().join("data"),
                &bao.addr,
                &tmp.path().join("vault-token"),
                admin.did().as_str(),
                dev.did().as_str(),
            ),
        )?;
        let cfg = custody_broker::config::Config::load(&cfgp)?;
        let vault = custody_broker::server::vault_from_config(&cfg)?;
        let state = custody_broker::server::AppState::open(cfg, vault)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(custody_broker::server::serve(state, listener, async move {
            let _ = rx.await;
        }));
        let c = Client::new(&url, None)?;
        let (session, _) = c
            .start_session(
                &dev,
                "bench",
                &["ci-read".to_string()],
                "ci",
                Duration::from_secs(900),
            )
            .await?;
        let direct = custody_broker::vault::Vault::new(
            &bao.addr,
            &token,
            Some(custody_broker::dev::BROKER_ROLE.into()),
        )?;
        let policies = vec!["ci-read".to_string()];
        let mut broker_lat = Vec::new();
        let mut direct_lat = Vec::new();
        // Interleaved, so both see the same machine load.
        for _ in 0..a.mints {
            let t = Instant::now();
            c.mint(&session, "ci-read").await?;
            broker_lat.push(t.elapsed());
            let t = Instant::now();
            direct
                .mint(
                    &policies,
                    Duration::from_secs(60),
                    Default::default(),
                    "bench",
                )
                .await?;
            direct_lat.push(t.elapsed());
        }
        broker_lat.sort();
        direct_lat.sort();
        r.insert("mint_p50_ms".into(), json!(percentile(&broker_lat, 0.5)));
        r.insert("mint_p99_ms".into(), json!(percentile(&broker_lat, 0.99)));
        r.insert(
            "mint_direct_p50_ms".into(),
            json!(percentile(&direct_lat, 0.5)),
        );
        r.insert(
            "mint_overhead_ratio".into(),
            json!(percentile(&broker_lat, 0.5) / percentile(&direct_lat, 0.5).max(1e-9)),
        );
        let _ = tx.send(());
        server.await??;
        anyhow::Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut r = Map::new();
    r.insert(
        "cores".into(),
        json!(std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1)),
    );
    eprintln!("appends…");
    bench_appends(&a, &mut r)?;
    eprintln!("verify…");
    bench_verify(&a, &mut r)?;
    eprintln!("mint…");
    if let Err(e) = bench_mint(&a, &mut r) {
        eprintln!("mint benchmark skipped: {e:#}");
    }
    let rows = [
        (
            "append_durable_per_s",
            "durable appends/s, 64 writers, group commit",
            "≥ 20,000",
        ),
        (
            "append_flush_each_per_s",
            "baseline: one fdatasync per append",
            "(ratio)",
        ),
        ("append_group_commit_ratio", "group commit / baseline", ""),
        ("append_p99_ms", "ack latency p99, 32 writers", "≤ 10 ms"),
        (
            "verify_per_s",
            "custody-verify verify, entries/s",
            "≥ 70% raw",
        ),
        (
            "verify_raw_per_s",
            "baseline: bare verify_strict, all cores",
            "(limit)",
        ),
        ("verify_ratio", "verify / raw", "≥ 0.70"),
        ("verify_peak_rss_mb", "verifier peak RSS (MB)", "≤ 200"),
        ("proof_bytes", "inclusion path bytes", "≤ 1,024"),
        (
            "proof_verify_us",
            "check-proof (µs, incl. entry and checkpoint signatures)",
            "≤ 200",
        ),
        ("mint_p50_ms", "custody token via broker, p50 (ms)", "≤ 5"),
        ("mint_p99_ms", "custody token via broker, p99 (ms)", "≤ 20"),
        (
            "mint_direct_p50_ms",
            "baseline: vaultrs direct, p50 (ms)",
            "",
        ),
        ("mint_overhead_ratio", "broker / direct", "≤ 1.5"),
    ];
    println!("{:<28} {:>14}  {:<12} what", "key", "value", "target");
    for (k, what, target) in rows {
        let v = r
            .get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        println!("{k:<28} {v:>14}  {target:<12} {what}");
    }
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &a.out,
        serde_json::to_string_pretty(&Value::Object(r))? + "\n",
    )?;
    println!("wrote {}", a.out.display());
    Ok(())
}
