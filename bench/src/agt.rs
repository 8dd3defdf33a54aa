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

pub fn bench(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    let n = a.agt_events.max(1);
    custody_side(n, r)?;
    match agt_side(n) {
        Ok(v) => {
            for (k, key) in [
                ("append_per_s", "agt_append_per_s"),
                ("verify_per_s", "agt_verify_per_s"),
                ("append_inmemory_per_s", "agt_append_inmemory_per_s"),
                ("verify_chain_per_s", "agt_verify_chain_per_s"),
                ("version", "agt_version"),
                ("python", "agt_python"),
                ("tamper_detected", "agt_tamper_detected"),
            ] {
                if let Some(x) = v.get(k) {
                    r.insert(key.into(), x.clone());
                }
            }
            let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let append = ratio(f("custody_10k_append_per_s"), f("agt_append_per_s"));
            let verify = ratio(f("custody_10k_verify_per_s"), f("agt_verify_per_s"));
            r.insert("custody_vs_agt_append_ratio".into(), json!(append));
            r.insert("custody_vs_agt_verify_ratio".into(), json!(verify));
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("agt: {msg}");
            r.insert("agt_error".into(), json!(msg));
        }
    }
    Ok(())
}

/// `n` events by 64 human identities: each built, signed (Ed25519), checked
/// (signature, authorization) and made durable (fdatasync) through the store,
/// by one producer in batches of [`BATCH`]; then the export of that ledger
/// verified by `custody_verifier::verify_bundle` in process (and, beside it,
/// by the `custody-verify` process, wall time).
fn custody_side(n: usize, r: &mut Results) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ledger = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate()).collect();
    let refs: Vec<&KeyPair> = keys.iter().collect();
    let store = open_ledger(&tmp.path().join("data"), &ledger, &refs)?;
    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        let k = &keys[i % keys.len()];
        batch.push(tool_call(k, ActorKind::Human, i).sign(k)?);
        if batch.len() == BATCH {
            append_all(&store, std::mem::take(&mut batch))?;
        }
    }
    append_all(&store, batch)?;
    let append_rate = n as f64 / t0.elapsed().as_secs_f64();
    let bundle = tmp.path().join("bundle");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &bundle)?;
    drop(store);
    // In-process, like AGT's verify_integrity() inside Python (whose import is
    // not timed either); the process wall time is recorded beside it.
    let t1 = Instant::now();
    let v = custody_verifier::verify_bundle(
        &bundle,
        &custody_verifier::VerifyOptions {
            ledger_key: Some(ledger.did()),
            ..Default::default()
        },
    )?;
    let took = t1.elapsed();
    anyhow::ensure!(v.valid, "the 10k bundle did not verify");
    let (_, took_process) = run_verifier(&bundle, ledger.did().as_str())?;
    r.insert(
        "custody_10k_verify_process_per_s".into(),
        json!(((n + 1) as f64 / took_process.as_secs_f64()).round()),
    );
    r.insert("custody_10k_events".into(), json!(n));
    r.insert(
        "custody_10k_append_per_s".into(),
        json!(append_rate.round()),
    );
    r.insert(
        "custody_10k_verify_per_s".into(),
        json!(((n + 1) as f64 / took.as_secs_f64()).round()),
    );
    r.insert(
        "custody_10k_verify_seconds".into(),
        json!(round(took.as_secs_f64(), 3)),
    );
    Ok(())
}

/// The workspace root (this crate's parent directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn agt_side(n: usize) -> anyhow::Result<Value> {
    let python = root().join(".venv/bin/python");
    let script = root().join("bench/agt_bench.py");
    anyhow::ensure!(
        python.is_file(),
        "{} not found: run scripts/bench, which makes .venv and installs agent-governance-toolkit-core=={AGT_VERSION} into it",
        python.display()
    );
    anyhow::ensure!(script.is_file(), "{} not found", script.display());
    let tmp = tempfile::tempdir()?;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg("--events")
        .arg(n.to_string())
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
