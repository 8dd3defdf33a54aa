//! `verify_bundle` in process next to a bare `verify_strict` loop on every
//! core (the bench's `verify_raw_per_s`), interleaved in rounds, with CPU
//! use (user + system over wall) of each.
//! `cargo run --release -p custody-verifier --example verify_speed -- DIR [N] [ROUNDS]`
//! builds DIR (a bundle of N + 1 entries by one signer) unless it exists.

use std::path::Path;
use std::time::Instant;

use custody_identity::{KeyPair, Signature};
use custody_ledger::actions;
use custody_ledger::authority::TrustRoots;
use custody_ledger::bundle::BundleWriter;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::{entry_hash, ActionType, ActorKind, Entry, EntryHash, Event, Seq, Timestamp};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn build(dir: &Path, n: u64) {
    let ledger = KeyPair::from_seed(&[1; 32]);
    let human = KeyPair::from_seed(&[2; 32]);
    // Sign on every core, write in order.
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1) as u64;
    let signed: Vec<Vec<(u64, custody_ledger::SignedEvent)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cores)
            .map(|c| {
                let human = &human;
                s.spawn(move || {
                    (1..=n)
                        .filter(|i| i % cores == c)
                        .map(|i| {
                            let mut e = Event::new(
                                human.did(),
                                ActorKind::Human,
                                ActionType::new("prompt").unwrap(),
                            );
                            e.details.insert("i".into(), i.into());
                            (i, e.sign(human).unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<_> = signed.into_iter().flatten().collect();
    all.sort_by_key(|x| x.0);
    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS).unwrap(),
    );
    g.details = TrustRoots {
        admins: [human.did()].into(),
        delegators: [human.did()].into(),
        ..Default::default()
    }
    .to_details();
    let mut w = BundleWriter::create(dir).unwrap();
    let mut range = CompactRange::new();
    let mut prev = EntryHash::ZERO;
    let events = std::iter::once(g.sign(&ledger).unwrap()).chain(all.into_iter().map(|x| x.1));
    for (seq, s) in events.enumerate() {
        let at = Timestamp::from_unix_millis(1_800_000_000_000 + seq as i128).unwrap();
        let entry = Entry::new(Seq(seq as u64), prev, at, s);
        let line = entry.to_line().unwrap();
        prev = entry_hash(&line);
        range.push(Hash(prev.0));
        w.push_line(&line, |_| None).unwrap();
    }
    let origin = Origin::for_ledger(&ledger.did());
    let head = TreeHead {
        size: n + 1,
        root: range.root(),
    };
    let cp =
        SignedCheckpoint::sign(&ledger, &origin, head, time::OffsetDateTime::now_utc()).unwrap();
    w.finish(
        &ledger.did(),
        origin.as_str(),
        &hash_to_hex(&range.root()),
        &[(n + 1, cp.to_bytes())],
    )
    .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    if !dir.join("manifest.json").exists() {
        let t = Instant::now();
        build(dir, n);
        eprintln!(
            "built {} entries in {:.1}s",
            n + 1,
            t.elapsed().as_secs_f64()
        );
    }
    if std::env::var_os("PARSE_ONLY").is_some() {
        // One thread: reading a line as the verifier does (parse, JCS
        // check, entry hash), and the signed message.
        let text = std::fs::read(dir.join("entries.jsonl")).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for _ in 0..rounds {
            let t = Instant::now();
            let mut ok = 0;
            for l in &lines {
                let d = Entry::read_line(l).unwrap();
                ok += d.canonical as usize;
            }
            let parse = t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
            let t = Instant::now();
            for l in &lines {
                let _ = custody_ledger::entry_hash(l);
            }
            let hash = t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
            let t = Instant::now();
            for l in &lines {
                let _: serde_json::Value = serde_json::from_slice(l).unwrap();
            }
            let value = t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
            let t = Instant::now();
            for l in &lines {
                let _: Entry = serde_json::from_slice(l).unwrap();
            }
            let pl = t.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
            println!("read_line {parse:.2} us ({ok} canonical), deserialize only {pl:.2} us, as Value {value:.2} us, entry_hash {hash:.2} us");
        }
        return;
    }
    let ledger = KeyPair::from_seed(&[1; 32]).did();
    let human = KeyPair::from_seed(&[2; 32]).public();
    // The signed messages, for the raw loop.
    let verify_only = std::env::var_os("VERIFY_ONLY").is_some();
    let text = if verify_only {
        Vec::new()
    } else {
        std::fs::read(dir.join("entries.jsonl")).unwrap()
    };
    let sigs: Vec<(Vec<u8>, Signature)> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .skip(1)
        .map(|l| {
            let e = Entry::parse_line(l).unwrap();
            (e.event.signing_input().unwrap(), e.sig)
        })
        .collect();
    let entries = if verify_only {
        n as usize + 1
    } else {
        sigs.len() + 1
    };
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let pk = human;
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (c0, t0) = (cpu_seconds(), Instant::now());
        let v = custody_verifier::verify_bundle(
            dir,
            &custody_verifier::VerifyOptions {
                ledger_key: Some(ledger.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let (vw, vc) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        assert!(v.valid);
        if verify_only {
            println!(
                "round {round}: verify {:.0}/s (cpu {:.2} cores, {:.1} us cpu/entry)",
                entries as f64 / vw,
                vc / vw,
                vc * 1e6 / entries as f64
            );
            continue;
        }
        let (c0, t0) = (cpu_seconds(), Instant::now());
        let ok: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..cores)
                .map(|c| {
                    let sigs = &sigs;
                    s.spawn(move || {
                        sigs.iter()
                            .skip(c)
                            .step_by(cores)
                            .filter(|(m, sig)| pk.verify(m, sig).is_ok())
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let (rw, rc) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        assert_eq!(ok, sigs.len());
        let (vr, rr) = (entries as f64 / vw, sigs.len() as f64 / rw);
        ratios.push(vr / rr);
        println!(
            "round {round}: verify {vr:.0}/s (cpu {:.2} cores, {:.1} us cpu/entry)  raw {rr:.0}/s (cpu {:.2} cores, {:.1} us cpu/sig)  ratio {:.2}",
            vc / vw,
            vc * 1e6 / entries as f64,
            rc / rw,
            rc * 1e6 / sigs.len() as f64,
            vr / rr
        );
    }
    if ratios.is_empty() {
        return;
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "entries {entries}, rounds {rounds}: ratio median {:.2}, range {:.2}-{:.2}",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
