//! Anchoring against whole-ledger replacement: an independent witness
//! cosigns the broker's checkpoints (only ones that extend what it cosigned
//! before), the broker keeps the cosignatures, and `custody-verify verify
//! --witness` refuses a ledger rewritten by someone holding the ledger key.

use custody_agent::client::session_event;
use custody_identity::KeyPair;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{leaf_hash, TreeHead};
use custody_tests::broker::Harness;
use custody_tests::{forge_bundle, read_entries, run, verify_json};

async fn get(h: &Harness, path: &str) -> Vec<u8> {
    let r = reqwest::get(format!("{}{path}", h.url)).await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.bytes().await.unwrap().to_vec()
}

async fn post_cosigned(h: &Harness, note: Vec<u8>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/checkpoint/cosignature", h.url))
        .body(note)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or_default())
}

/// Runs the witness CLI; returns (exit code, stderr).
fn cosign(h: &Harness, cp: &[u8], ledger: &str, proof: Option<&[u8]>, name: &str) -> (i32, String) {
    let p = h.path();
    std::fs::write(p.join(format!("{name}.in")), cp).unwrap();
    let mut args = vec![
        "cosign".to_string(),
        p.join(format!("{name}.in")).display().to_string(),
        "--key".into(),
        p.join("witness.key").display().to_string(),
        "--ledger-key".into(),
        ledger.into(),
        "--state".into(),
        p.join("witness-state").display().to_string(),
        "--out".into(),
        p.join(format!("{name}.out")).display().to_string(),
    ];
    if let Some(pr) = proof {
        std::fs::write(p.join(format!("{name}.proof")), pr).unwrap();
        args.push("--consistency".into());
        args.push(p.join(format!("{name}.proof")).display().to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run("custody-verify", &a);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn size_of(note: &[u8]) -> u64 {
    SignedCheckpoint::parse(note).unwrap().head().size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnessed_checkpoints_anchor_the_ledger() {
    let witness = KeyPair::generate();
    let h = Harness::start_with(&format!("\n[witnesses]\nkeys = [\"{}\"]\n", witness.did())).await;
    witness.save(&h.path().join("witness.key")).unwrap();
    let ledger = h.broker.as_ref().unwrap().ledger.clone();
    let c = h.client();
    let (s, _) = h.session("claude-code", "chat", "session").await;
    for _ in 0..3 {
        c.log(&s, session_event(&s, "tool.call").unwrap())
            .await
            .unwrap();
    }

    // First sight: trusted on first use.
    // An admin has one signed now; the unauthenticated GET only reads it.
    h.client().checkpoint_now(&h.admin).await.unwrap();
    let cp1 = get(&h, "/v1/checkpoint").await;
    let n1 = size_of(&cp1);
    let (code, err) = cosign(&h, &cp1, &ledger, None, "c1");
    assert_eq!(code, 0, "{err}");
    let (st, v) = post_cosigned(&h, std::fs::read(h.path().join("c1.out")).unwrap()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["witnesses"], serde_json::json!([witness.did().as_str()]));
    assert!(v["seq"].is_u64(), "{v}");
    // Posting the same cosigned note again adds nothing.
    let size = h.client().health().await.unwrap().entries;
    let (st, again) = post_cosigned(&h, std::fs::read(h.path().join("c1.out")).unwrap()).await;
    assert_eq!(st, 200, "{again}");
    assert!(again.get("seq").is_none(), "{again}");
    assert_eq!(h.client().health().await.unwrap().entries, size);

    // The ledger grows; the witness wants proof that it only grew.
    for _ in 0..4 {
        c.log(&s, session_event(&s, "tool.call").unwrap())
            .await
            .unwrap();
    }
    h.client().checkpoint_now(&h.admin).await.unwrap();
    let cp2 = get(&h, "/v1/checkpoint").await;
    let n2 = size_of(&cp2);
    assert!(n2 > n1);
    let (code, err) = cosign(&h, &cp2, &ledger, None, "c2");
    assert_eq!(code, 1);
    assert!(err.contains("consistency proof"), "{err}");
    let proof = get(&h, &format!("/v1/proof/consistency?old={n1}&new={n2}")).await;
    let wrong = get(&h, &format!("/v1/proof/consistency?old=1&new={n2}")).await;
    let (code, err) = cosign(&h, &cp2, &ledger, Some(&wrong), "c2");
    assert_eq!(code, 1, "a proof from another size is refused: {err}");
    let (code, err) = cosign(&h, &cp2, &ledger, Some(&proof), "c2");
    assert_eq!(code, 0, "{err}");
    let (st, v) = post_cosigned(&h, std::fs::read(h.path().join("c2.out")).unwrap()).await;
    assert_eq!(st, 200, "{v}");

    // The witness refuses to go back or to sign a fork, even from the ledger key.
    let (code, err) = cosign(&h, &cp1, &ledger, None, "back");
    assert_eq!(code, 1);
    assert!(err.contains("rollback"), "{err}");
    let ledger_key = KeyPair::load(&h.path().join("data/ledger.key")).unwrap();
    let origin = Origin::for_ledger(&ledger_key.did());
    let fork = SignedCheckpoint::sign(
        &ledger_key,
        &origin,
        TreeHead {
            size: n2,
            root: leaf_hash(b"another history"),
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (code, err) = cosign(&h, &fork.to_bytes(), &ledger, None, "fork");
    assert_eq!(code, 1);
    assert!(err.contains("fork"), "{err}");

    // The broker keeps only what it can check.
    let stranger = KeyPair::generate();
    let mut odd = SignedCheckpoint::parse(&cp2).unwrap();
    odd.cosign(&stranger, time::OffsetDateTime::now_utc())
        .unwrap();
    let (st, v) = post_cosigned(&h, odd.to_bytes()).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"], "unknown_witness");
    let mut forged = fork;
    forged
        .cosign(&witness, time::OffsetDateTime::now_utc())
        .unwrap();
    let (st, v) = post_cosigned(&h, forged.to_bytes()).await;
    assert_eq!(st, 409, "{v}");

    // The export carries the cosignatures; pinning the witness passes.
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let bundle = h.path().join("bundle");
    let w = witness.did().to_string();
    let o = run(
        "custody-verify",
        &[
            "verify",
            bundle.to_str().unwrap(),
            "--ledger-key",
            &ledger,
            "--witness",
            &w,
            "--json",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stats"]["witnessed"][w.as_str()], n2);
    // A witness that never saw this ledger fails the check.
    let other = KeyPair::generate().did().to_string();
    let o = run(
        "custody-verify",
        &["verify", bundle.to_str().unwrap(), "--witness", &other],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pinned witness"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Whole-ledger replacement by someone holding the ledger key: drop an
    // entry, re-link and re-sign everything. Alone it verifies; against the
    // witness it does not.
    let mut entries = read_entries(&bundle);
    entries.remove(3);
    let rewritten = h.path().join("rewritten");
    forge_bundle(&bundle, entries, &ledger_key, &rewritten);
    let (code, v) = verify_json(&rewritten);
    assert_eq!(code, 0, "the forgery is self-consistent: {v:#}");
    let o = run(
        "custody-verify",
        &[
            "verify",
            rewritten.to_str().unwrap(),
            "--ledger-key",
            &ledger,
            "--witness",
            &w,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Keeping the witnessed checkpoints does not help: their roots no longer match.
    for (name, note) in std::fs::read_dir(bundle.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
    {
        if String::from_utf8_lossy(&note).contains(w.as_str()) {
            std::fs::write(rewritten.join("checkpoints").join(name), note).unwrap();
        }
    }
    let o = run(
        "custody-verify",
        &[
            "verify",
            rewritten.to_str().unwrap(),
            "--ledger-key",
            &ledger,
            "--witness",
            &w,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn bad_witness_pins_are_usage_errors() {
    let d = custody_tests::DemoRun::new();
    let o = run(
        "custody-verify",
        &[
            "verify",
            d.bundle().to_str().unwrap(),
            "--witness",
            "not-a-key",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--witness"));
}
