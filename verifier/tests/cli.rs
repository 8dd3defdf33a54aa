//! `custody-verify` as a user meets it: input it cannot read gets a clear
//! message and exit 2, never a panic; proofs round-trip through files.
//! (`verdicts.rs` holds the readable bundles that fail one check, exit 1.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use custody_identity::KeyPair;
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::checkpoint::Origin;
use custody_ledger::export::export_bundle;
use custody_ledger::store::Store;
use custody_ledger::{actions, ActionType, ActorKind, Event};

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custody-verify"))
        .args(args)
        .output()
        .expect("run custody-verify")
}

/// A small valid bundle: genesis, then `n` human actions, exported.
fn bundle(dir: &Path, n: usize) -> (PathBuf, KeyPair) {
    let ledger = KeyPair::generate();
    let human = KeyPair::generate();
    let store = Store::open(&dir.join("data"), Authority::new(Some(ledger.did()))).unwrap();
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
    store.append(g.sign(&ledger).unwrap()).unwrap();
    for i in 0..n {
        let mut e = Event::new(
            human.did(),
            ActorKind::Human,
            ActionType::new("prompt").unwrap(),
        );
        e.details.insert("i".into(), i.into());
        store.append(e.sign(&human).unwrap()).unwrap();
    }
    let out = dir.join("bundle");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &out).unwrap();
    (out, ledger)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn valid_bundle_exits_0_and_pins() {
    let t = tempfile::tempdir().unwrap();
    let (b, ledger) = bundle(t.path(), 5);
    let o = verify(&["verify", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ledger key not pinned"), "{text}");
    assert!(text.contains("result VALID"));
    let o = verify(&[
        "verify",
        b.to_str().unwrap(),
        "--ledger-key",
        ledger.did().as_str(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("not pinned"));
    let other = KeyPair::generate().did();
    let o = verify(&[
        "verify",
        b.to_str().unwrap(),
        "--ledger-key",
        other.as_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn unreadable_inputs_exit_2_with_a_message() {
    let t = tempfile::tempdir().unwrap();
    let (b, _) = bundle(t.path(), 3);
    let copy = |name: &str| {
        let d = t.path().join(name);
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        for e in walk(&b) {
            let rel = e.strip_prefix(&b).unwrap();
            std::fs::copy(&e, d.join(rel)).unwrap();
        }
        d
    };
    let entries = std::fs::read_to_string(b.join("entries.jsonl")).unwrap();
    let lines: Vec<&str> = entries.lines().collect();

    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "malformed-line",
            Box::new(|d: &Path| {
                let mut t = lines.clone();
                t[2] = "{not json";
                std::fs::write(d.join("entries.jsonl"), t.join("\n") + "\n").unwrap();
            }),
            "not a JSON object",
        ),
        (
            "unknown-entry-version",
            Box::new(|d: &Path| {
                let mut t: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                assert!(t[1].ends_with(",\"v\":1}"));
                t[1] = format!("{},\"v\":9}}", &t[1][..t[1].len() - 7]);
                std::fs::write(d.join("entries.jsonl"), t.join("\n") + "\n").unwrap();
            }),
            "unsupported entry version 9",
        ),
        (
            "truncated-last-line",
            Box::new(|d: &Path| {
                let s = entries.trim_end_matches('\n');
                std::fs::write(d.join("entries.jsonl"), &s[..s.len() - 10]).unwrap();
            }),
            "truncated",
        ),
        (
            "empty-entries",
            Box::new(|d: &Path| std::fs::write(d.join("entries.jsonl"), "").unwrap()),
            "no entries",
        ),
        (
            "missing-entries",
            Box::new(|d: &Path| std::fs::remove_file(d.join("entries.jsonl")).unwrap()),
            "entries.jsonl",
        ),
        (
            "missing-manifest",
            Box::new(|d: &Path| std::fs::remove_file(d.join("manifest.json")).unwrap()),
            "manifest.json",
        ),
        (
            "empty-manifest",
            Box::new(|d: &Path| std::fs::write(d.join("manifest.json"), "").unwrap()),
            "empty",
        ),
        (
            "unknown-bundle-version",
            Box::new(|d: &Path| {
                let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
                std::fs::write(
                    d.join("manifest.json"),
                    m.replace("\"version\":1", "\"version\":2"),
                )
                .unwrap();
            }),
            "unsupported bundle version",
        ),
        (
            // The manifest is read before any check (FORMAT.md §9): its
            // members must have their types and forms.
            "manifest-created-at-without-milliseconds",
            Box::new(|d: &Path| {
                let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
                // "created_at":"YYYY-MM-DDTHH:MM:SS.mmmZ" loses ".mmm".
                let at = m.find("\"created_at\":\"").unwrap() + "\"created_at\":\"".len();
                let bad = format!("{}{}", &m[..at + 19], &m[at + 23..]);
                std::fs::write(d.join("manifest.json"), bad).unwrap();
            }),
            "invalid timestamp",
        ),
    ];
    for (name, damage, expect) in cases {
        let d = copy(name);
        damage(&d);
        let o = verify(&["verify", d.to_str().unwrap()]);
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert_eq!(o.status.code(), Some(2), "{name}: {all}");
        assert!(
            all.contains(expect),
            "{name}: expected {expect:?} in: {all}"
        );
        assert!(!all.contains("panicked"), "{name}: {all}");
    }
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(verify(&[]).status.code(), Some(2));
    assert_eq!(verify(&["verify"]).status.code(), Some(2));
    assert_eq!(verify(&["frobnicate"]).status.code(), Some(2));
    let o = verify(&["verify", "/nonexistent/bundle"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a directory"));
    let t = tempfile::tempdir().unwrap();
    let o = verify(&[
        "verify",
        t.path().to_str().unwrap(),
        "--ledger-key",
        "did:web:x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ledger-key"));
}

#[test]
fn prove_and_check_proof_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (b, ledger) = bundle(t.path(), 40);
    let proof = t.path().join("proof.json");
    let o = verify(&[
        "prove",
        b.to_str().unwrap(),
        "--seq",
        "17",
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Checked on its own: the bundle is gone.
    std::fs::remove_dir_all(&b).unwrap();
    let o = verify(&[
        "check-proof",
        proof.to_str().unwrap(),
        "--ledger-key",
        ledger.did().as_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("entry 17"));
    let size = std::fs::metadata(&proof).unwrap().len();
    assert!(size < 4096, "proof is {size} bytes");

    // Any edit to the entry, the path or the checkpoint is caught.
    let text = std::fs::read_to_string(&proof).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut edits = Vec::new();
    let mut e = v.clone();
    e["entry"] = v["entry"]
        .as_str()
        .unwrap()
        .replace("\"i\":16", "\"i\":99")
        .into();
    edits.push(("entry", e));
    let mut e = v.clone();
    let h = v["path"][0].as_str().unwrap();
    e["path"][0] = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]).into();
    edits.push(("path", e));
    let mut e = v.clone();
    e["seq"] = 18.into();
    edits.push(("seq", e));
    let mut e = v.clone();
    e["checkpoint"] = v["checkpoint"]
        .as_str()
        .unwrap()
        .replacen("\n41\n", "\n40\n", 1)
        .into();
    edits.push(("checkpoint", e));
    for (what, e) in edits {
        let p = t.path().join(format!("proof-{what}.json"));
        std::fs::write(&p, serde_json::to_string(&e).unwrap()).unwrap();
        let o = verify(&[
            "check-proof",
            p.to_str().unwrap(),
            "--ledger-key",
            ledger.did().as_str(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
    }
    let other = KeyPair::generate().did();
    let o = verify(&[
        "check-proof",
        proof.to_str().unwrap(),
        "--ledger-key",
        other.as_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    std::fs::write(t.path().join("junk.json"), "{").unwrap();
    let o = verify(&["check-proof", t.path().join("junk.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
