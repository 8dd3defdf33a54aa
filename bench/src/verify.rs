//! Offline verification of a bundle (`custody-verify verify`, a separate
//! process) vs a bare `verify_strict` loop over the same signatures (the first
//! 200,000 of them) on every core; the verifier's peak memory; inclusion proof
//! size and check time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use custody_identity::{KeyPair, Signature};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::checkpoint::Origin;
use custody_ledger::export::export_bundle;
use custody_ledger::store::Store;
use custody_ledger::{actions, ActionType, ActorKind, Event, SignedEvent};
use serde_json::json;

use crate::util::{cores, ratio, round, run_verifier, verifier_exe, Results};
use crate::Args;

/// A store with a genesis entry by `ledger` that trusts `delegators` as
/// delegators (and the first of them as admin).
pub fn open_ledger(
    dir: &Path,
    ledger: &KeyPair,
    delegators: &[&KeyPair],
) -> anyhow::Result<Store<Authority>> {
    let store = Store::open(dir, Authority::new(Some(ledger.did())))?;
    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS)?,
    );
    g.details = TrustRoots {
        admins: delegators.iter().take(1).map(|k| k.did()).collect(),
        delegators: delegators.iter().map(|k| k.did()).collect(),
        ..Default::default()
    }
    .to_details();
    store
        .append(g.sign(ledger)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store)
}

/// Appends a batch; fails on the first refused event.
pub fn append_all(store: &Store<Authority>, batch: Vec<SignedEvent>) -> anyhow::Result<()> {
    for x in store.append_many(batch) {
        x.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

struct Bundle {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ledger: KeyPair,
    signer: KeyPair,
    /// (signing input, signature) of every non-genesis entry.
    sigs: Arc<Vec<(Vec<u8>, Signature)>>,
}

/// A bundle of a genesis plus `n` `prompt` entries by one human, signed and
/// appended from every core (the order of the entries does not matter here).
/// Also times reopening the store it was exported from: a broker restart
/// re-reads and replays every entry.
fn build_bundle(n: usize, r: &mut Results) -> anyhow::Result<Bundle> {
    let tmp = tempfile::tempdir()?;
    let ledger = KeyPair::generate();
    let human = KeyPair::generate();
    let data = tmp.path().join("data");
    let store = open_ledger(&data, &ledger, &[&human])?;
    let cores = cores();
    let shares = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..cores)
            .map(|c| {
                let (store, human) = (&store, &human);
                sc.spawn(move || -> anyhow::Result<Vec<(Vec<u8>, Signature)>> {
                    let mut sigs = Vec::with_capacity(n / cores + 1);
                    let mut batch = Vec::with_capacity(1000);
                    for i in (c..n).step_by(cores) {
                        let mut e =
                            Event::new(human.did(), ActorKind::Human, ActionType::new("prompt")?);
                        e.details.insert("i".into(), i.into());
                        let s = e.sign(human)?;
                        sigs.push((s.event.signing_input()?, s.sig));
                        batch.push(s);
                        if batch.len() == 1000 {
                            append_all(store, std::mem::take(&mut batch))?;
                        }
                    }
                    append_all(store, batch)?;
                    Ok(sigs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a bundle builder panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let sigs: Vec<_> = shares.into_iter().flatten().collect();
    let dir = tmp.path().join("bundle");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &dir)?;
    drop(store);
    let t0 = Instant::now();
    let reopened = Store::open(&data, Authority::new(Some(ledger.did())))?;
    let took = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        reopened.len() == n as u64 + 1,
        "reopened store lost entries"
    );
    r.insert("store_reopen_s".into(), json!(round(took, 2)));
    r.insert(
        "store_reopen_per_s".into(),
        json!(((n + 1) as f64 / took).round()),
    );
    Ok(Bundle {
        _tmp: tmp,
        dir,
        ledger,
        signer: human,
        sigs: Arc::new(sigs),
    })
}

/// `verify` and/or `proof`, over one bundle of `--verify-entries` entries
/// built once; the measurements are taken `repeat` times, one map each.
pub fn bench(a: &Args, verify: bool, proof: bool) -> anyhow::Result<Vec<Results>> {
    let n = a.verify_entries;
    let mut base = Results::new();
    let b = build_bundle(n, &mut base)?;
    base.insert("verify_entries".into(), json!(n + 1));
    let mut runs = Vec::new();
    for run in 0..a.repeat.max(1) {
        let mut r = base.clone();
        if verify {
            bench_verify(&b, &mut r)?;
        }
        // A proof's size is fixed by the tree and its check is not a
        // comparison: measured in the first run only, which keeps the
        // repeats to what has a baseline.
        if proof && run == 0 {
            bench_proof(&b, n, &mut r)?;
        }
        runs.push(r);
    }
    Ok(runs)
}

/// Signatures the bare `verify_strict` baseline checks per run.
const RAW_SAMPLE: usize = 100_000;

fn bench_verify(b: &Bundle, r: &mut Results) -> anyhow::Result<()> {
    let (peak_mb, took) = run_verifier(&b.dir, b.ledger.did().as_str())?;
    let verify_rate = (b.sigs.len() + 1) as f64 / took.as_secs_f64();

    // Baseline: the bare signature checks, on every core, over the first
    // RAW_SAMPLE of the same signatures (a rate per signature: every one
    // costs the same, so checking all of them again only lengthens the run).
    let cores = cores();
    let pk = *b.signer.public().dalek();
    let sigs: Arc<Vec<_>> = Arc::new(b.sigs.iter().take(RAW_SAMPLE).cloned().collect());
    let n = sigs.len();
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
    r.insert("verify_per_s".into(), json!(verify_rate.round()));
    r.insert("verify_raw_per_s".into(), json!(raw_rate.round()));
    r.insert("verify_ratio".into(), json!(ratio(verify_rate, raw_rate)));
    r.insert("verify_peak_rss_mb".into(), json!(round(peak_mb, 1)));
    Ok(())
}

fn bench_proof(b: &Bundle, n: usize, r: &mut Results) -> anyhow::Result<()> {
    let verifier = verifier_exe()?;
    let proof_file = b.dir.with_file_name("proof.json");
    let st = std::process::Command::new(&verifier)
        .arg("prove")
        .arg(&b.dir)
        .args(["--seq", &(n / 2).to_string(), "--out"])
        .arg(&proof_file)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "prove failed");
    let p = custody_verifier::proof::read_proof(&proof_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    r.insert("proof_path_hashes".into(), json!(p.path.len()));
    r.insert("proof_bytes".into(), json!(p.path.len() * 32));
    if n + 1 >= 1_000_000 {
        // The names for the figures at one million entries.
        r.insert("proof_bytes_1m".into(), json!(p.path.len() * 32));
    }
    r.insert(
        "proof_file_bytes".into(),
        json!(std::fs::metadata(&proof_file)?.len()),
    );
    let reps = 2000;
    let ledger = b.ledger.did();
    let t0 = Instant::now();
    for _ in 0..reps {
        custody_verifier::proof::check_proof(&p, Some(&ledger))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    r.insert(
        "proof_verify_us".into(),
        json!(round(t0.elapsed().as_secs_f64() / reps as f64 * 1e6, 1)),
    );
    Ok(())
}
