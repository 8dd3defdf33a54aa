//! custody's ledger next to the audit chain of Microsoft's Agent Governance
//! Toolkit (`agent-governance-toolkit-core` on PyPI, installed into `.venv` by
//! `scripts/bench`), on the same number of events of the same shape, in the
//! same run. `bench/agt_bench.py` measures the toolkit and prints JSON; if it
//! cannot run, the reason is recorded as `agt_error` and no figure is made up.

use std::path::PathBuf;
use std::time::Instant;

use custody_identity::KeyPair;
use custody_ledger::checkpoint::Origin;
use custody_ledger::export::export_bundle;
use custody_ledger::ActorKind;
use serde_json::{json, Value};

use crate::util::{ratio, round, run_verifier, tool_call, Results};
use crate::verify::{append_all, open_ledger};
use crate::Args;

/// Events per `append_many` call in the custody figure.
const BATCH: usize = 100;

/// Which toolkit version `scripts/bench` installs (keep the two in step).
pub const AGT_VERSION: &str = "5.0.0";

/// Callers in the concurrent comparison (both sides).
const THREADS: usize = 64;

/// The pairs: (custody key, AGT key, ratio key). Each pair is the same
/// shape on both sides (README of docs/PERFORMANCE.md's method table).
const PAIRS: &[(&str, &str, &str)] = &[
    (
        "custody_single_append_per_s",
        "agt_append_single_per_s",
        "custody_vs_agt_single_ratio",
    ),
    (
        "custody_single_append_per_s",
        "agt_append_single_fsync_per_s",
        "custody_vs_agt_single_fsync_ratio",
    ),
    (
        "custody_threads_append_per_s",
        "agt_append_threads_per_s",
        "custody_vs_agt_threads_ratio",
    ),
    (
        "custody_batch_append_per_s",
        "agt_append_batch_per_s",
        "custody_vs_agt_batch_ratio",
    ),
    (
        "custody_verify_1core_per_s",
        "agt_verify_1core_per_s",
        "custody_vs_agt_verify_1core_ratio",
    ),
    (
        "custody_verify_1core_per_s",
        "agt_verify_chain_1core_per_s",
        "custody_vs_agt_hash_only_1core_ratio",
    ),
    (
        "custody_verify_2core_per_s",
        "agt_verify_1core_per_s",
        "custody_2core_vs_agt_verify_ratio",
    ),
    (
        "custody_verify_hashes_1core_per_s",
        "agt_verify_chain_1core_per_s",
        "custody_vs_agt_hashes_1core_ratio",
    ),
    (
        "custody_verify_sig_bound_1core_per_s",
        "agt_verify_chain_1core_per_s",
        "custody_sig_bound_vs_agt_hash_only_ratio",
    ),
];

pub fn bench(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    let n = a.agt_events.max(1);
    custody_side(n, r)?;
    // The toolkit pinned to one core, so its verification is per core like
    // custody's pinned figure (its appends are single-threaded Python anyway).
    match agt_side(n, true) {
        Ok(v) => {
            for (k, key) in [
                ("append_single_per_s", "agt_append_single_per_s"),
                ("append_single_fsync_per_s", "agt_append_single_fsync_per_s"),
                ("append_threads_per_s", "agt_append_threads_per_s"),
                ("append_batch_per_s", "agt_append_batch_per_s"),
                ("verify_per_s", "agt_verify_1core_per_s"),
                ("append_inmemory_per_s", "agt_append_inmemory_per_s"),
                ("verify_chain_per_s", "agt_verify_chain_1core_per_s"),
                ("version", "agt_version"),
                ("python", "agt_python"),
                ("tamper_detected", "agt_tamper_detected"),
            ] {
                if let Some(x) = v.get(k) {
                    r.insert(key.into(), x.clone());
                }
            }
            for (ours, theirs, key) in PAIRS {
                let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                let x = ratio(f(ours), f(theirs));
                r.insert((*key).into(), json!(x));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("agt: {msg}");
            r.insert("agt_error".into(), json!(msg));
        }
    }
    Ok(())
}

/// Events signed (Ed25519) by 64 human identities, each checked (signature,
/// the ledger's rules) and made durable (fdatasync) through the store, in
/// three shapes: one thread one event per call, [`THREADS`] threads one event
/// per call, one producer in batches of [`BATCH`]. Then the export of the
/// batch ledger verified by the `custody-verify` process pinned to one core
/// (`taskset -c 0`) and on every core, and in process.
fn custody_side(n: usize, r: &mut Results) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ledger = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate()).collect();
    let refs: Vec<&KeyPair> = keys.iter().collect();
    let event = |i: usize| {
        let k = &keys[i % keys.len()];
        tool_call(k, ActorKind::Human, i).sign(k)
    };

    // One thread, one event per call: each append its own fdatasync. Fewer
    // events, as on the toolkit's fsync side.
    let n_single = (n / 10).max(1);
    let store = open_ledger(&tmp.path().join("single"), &ledger, &refs)?;
    let t0 = Instant::now();
    for i in 0..n_single {
        append_all(&store, vec![event(i)?])?;
    }
    let single = n_single as f64 / t0.elapsed().as_secs_f64();
    drop(store);

    // Many callers, one event per call: group commit.
    let store = std::sync::Arc::new(open_ledger(&tmp.path().join("threads"), &ledger, &refs)?);
    let signed: Vec<_> = (0..n).map(event).collect::<Result<_, _>>()?;
    let mut shares: Vec<Vec<_>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, e) in signed.into_iter().enumerate() {
        shares[i % THREADS].push(e);
    }
    let t0 = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let s = store.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for e in share {
                    append_all(&s, vec![e])?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a caller panicked"))??;
    }
    let threads = n as f64 / t0.elapsed().as_secs_f64();
    drop(store);

    // One producer, batches of BATCH (signing included, as the toolkit's
    // batch side builds and HMACs its entries inside the timed loop).
    let store = open_ledger(&tmp.path().join("data"), &ledger, &refs)?;
    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        batch.push(event(i)?);
        if batch.len() == BATCH {
            append_all(&store, std::mem::take(&mut batch))?;
        }
    }
    append_all(&store, batch)?;
    let batched = n as f64 / t0.elapsed().as_secs_f64();
    let bundle = tmp.path().join("bundle");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &bundle)?;
    drop(store);

    let t1 = Instant::now();
    let v = custody_verifier::verify_bundle(
        &bundle,
        &custody_verifier::VerifyOptions {
            ledger_key: Some(ledger.did()),
            ..Default::default()
        },
    )?;
    let in_process = t1.elapsed();
    anyhow::ensure!(v.valid, "the 10k bundle did not verify");
    let (_, two_cores) = run_verifier(&bundle, ledger.did().as_str())?;
    let one_core = run_verifier_pinned(&bundle, ledger.did().as_str())?;
    let per_s = |d: std::time::Duration| json!(((n + 1) as f64 / d.as_secs_f64()).round());
    r.insert("custody_10k_events".into(), json!(n));
    r.insert("custody_single_append_per_s".into(), json!(single.round()));
    r.insert(
        "custody_threads_append_per_s".into(),
        json!(threads.round()),
    );
    r.insert("custody_batch_append_per_s".into(), json!(batched.round()));
    r.insert("custody_verify_2core_per_s".into(), per_s(two_cores));
    r.insert("custody_verify_1core_per_s".into(), per_s(one_core));
    r.insert("custody_10k_verify_per_s".into(), per_s(in_process));
    r.insert(
        "custody_10k_verify_seconds".into(),
        json!(round(in_process.as_secs_f64(), 3)),
    );
    hash_only_and_signature_bound(&bundle, r)?;
    Ok(())
}

/// The like-for-like pair for AGT's in-memory `AuditLog.verify_integrity()`
/// (SHA-256 only, one core): custody's hash-only part of verification over
/// the same ledger, in memory, on one thread — each entry's leaf hash, the
/// `prev` chain, the Merkle root compared with the manifest's. And what
/// bounds the full verification per core: the measured cost of one
/// signature check on one thread, strict and in the verifier's batches
/// (`1e6 / µs` entries/s at most, whatever else the verifier did in no time).
fn hash_only_and_signature_bound(bundle: &std::path::Path, r: &mut Results) -> anyhow::Result<()> {
    use custody_identity::batch::{verify_batch_strict, BatchItem, TorsionFreeKeys};
    use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash};
    use custody_ledger::{entry_hash, Entry, EntryHash};

    let b = custody_ledger::bundle::Bundle::open(bundle)?;
    let text = std::fs::read(bundle.join(custody_ledger::bundle::ENTRIES))?;
    // Parsed before the clock starts: AGT's chain is in memory as objects.
    let lines: Vec<&[u8]> = text
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let entries: Vec<Entry> = lines
        .iter()
        .map(|l| Entry::parse_line(l))
        .collect::<Result<_, _>>()?;
    let reps = 5;
    let t0 = Instant::now();
    for _ in 0..reps {
        let mut range = CompactRange::new();
        let mut prev = EntryHash::ZERO;
        for (line, e) in lines.iter().zip(&entries) {
            anyhow::ensure!(e.prev == prev, "chain broken at seq {}", e.seq);
            prev = entry_hash(line);
            range.push(Hash(prev.0));
        }
        anyhow::ensure!(
            hash_to_hex(&range.root()) == b.manifest.root,
            "root differs"
        );
    }
    let hashes = (reps * lines.len()) as f64 / t0.elapsed().as_secs_f64();

    // Signatures, one thread: verify_strict, then in the verifier's batches.
    let signed: Vec<(
        custody_identity::PublicKey,
        Vec<u8>,
        custody_identity::Signature,
    )> = entries
        .iter()
        .map(|e| Ok((e.event.actor.public_key(), e.event.signing_input()?, e.sig)))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    for (k, m, s) in &signed {
        k.verify(m, s)?;
    }
    let strict_us = t0.elapsed().as_secs_f64() * 1e6 / signed.len() as f64;
    let mut keys = TorsionFreeKeys::default();
    let t0 = Instant::now();
    for c in signed.chunks(custody_verifier::verify::SIGNATURE_BATCH) {
        let items: Vec<BatchItem<'_>> = c
            .iter()
            .map(|(key, msg, sig)| BatchItem { key, msg, sig })
            .collect();
        verify_batch_strict(&items, &mut keys)?;
    }
    let batch_us = t0.elapsed().as_secs_f64() * 1e6 / signed.len() as f64;
    r.insert(
        "custody_verify_hashes_1core_per_s".into(),
        json!(hashes.round()),
    );
    r.insert(
        "custody_sig_strict_us_1core".into(),
        json!(round(strict_us, 1)),
    );
    r.insert(
        "custody_sig_batch_us_1core".into(),
        json!(round(batch_us, 1)),
    );
    r.insert(
        "custody_verify_sig_bound_1core_per_s".into(),
        json!((1e6 / batch_us).round()),
    );
    Ok(())
}

/// `custody-verify verify` pinned to one core (`taskset -c 0`), wall time.
fn run_verifier_pinned(
    bundle: &std::path::Path,
    ledger: &str,
) -> anyhow::Result<std::time::Duration> {
    let verifier = crate::util::verifier_exe()?;
    let t = Instant::now();
    let out = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(&verifier)
        .arg("verify")
        .arg(bundle)
        .arg("--ledger-key")
        .arg(ledger)
        .output()?;
    let took = t.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "pinned custody-verify did not verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// The workspace root (this crate's parent directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn agt_side(n: usize, pinned: bool) -> anyhow::Result<Value> {
    let python = root().join(".venv/bin/python");
    let script = root().join("bench/agt_bench.py");
    anyhow::ensure!(
        python.is_file(),
        "{} not found: run scripts/bench, which makes .venv and installs agent-governance-toolkit-core=={AGT_VERSION} into it",
        python.display()
    );
    anyhow::ensure!(script.is_file(), "{} not found", script.display());
    let tmp = tempfile::tempdir()?;
    let mut cmd = if pinned {
        let mut c = std::process::Command::new("taskset");
        c.args(["-c", "0"]).arg(&python);
        c
    } else {
        std::process::Command::new(&python)
    };
    let out = cmd
        .arg(&script)
        .arg("--events")
        .arg(n.to_string())
        .arg("--threads")
        .arg(THREADS.to_string())
        .arg("--batch")
        .arg(BATCH.to_string())
        .arg("--dir")
        .arg(tmp.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    let v: Option<Value> = last.and_then(|l| serde_json::from_str(l).ok());
    match v {
        Some(v) if out.status.success() && v.get("error").is_none() => Ok(v),
        Some(v) if v.get("error").is_some() => {
            anyhow::bail!("agt_bench.py: {}", v["error"].as_str().unwrap_or_default())
        }
        _ => {
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            anyhow::bail!(
                "agt_bench.py exited with {}: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}
