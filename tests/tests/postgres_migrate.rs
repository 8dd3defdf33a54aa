//! `custody migrate --from DATA --to postgres://…`: a real broker's embedded
//! data directory copied into a real PostgreSQL; a broker started on it
//! serves the same ledger, byte for byte (the exports of both verify with
//! the same root), keeps enforcing a hold recorded before the migration,
//! and the migration refuses a database that holds a ledger already.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use custody_agent::client::{session_event, Client};
use custody_cli::dev::{postgres_config, write_secret_file};
use custody_cli::pgcluster::PgCluster;
use custody_ledger::{actions, Approval};
use custody_tests::broker::Harness;
use custody_tests::call_claiming;
use custody_wire::api::PolicyCheck;

/// `terraform destroy`, which the default policy holds for a person.
fn destroy() -> PolicyCheck {
    PolicyCheck {
        tool: "Bash".into(),
        input: serde_json::json!({"command": "terraform destroy -auto-approve"}),
        cwd: "/srv".into(),
        branch: "main".into(),
        call_id: Some("toolu_01".into()),
        record: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_ledger_migrates_byte_for_byte() {
    let mut h = Harness::start().await;
    let (s, _) = h.session("claude-code", "chat", "s1").await;
    let c = h.client();
    for n in 0..20u64 {
        let mut ev = session_event(&s, actions::TOOL_CALL).unwrap();
        ev.details.insert("n".into(), n.into());
        c.log(&s, ev).await.unwrap();
    }
    let token = c.mint(&s, "repo-read").await.unwrap().token;
    // A call the policy holds for a person, not yet approved: the broker on
    // PostgreSQL must still hold it (the migration marks the entries its
    // oversight rebuild reads).
    let held = c.policy_check(&s, &destroy()).await.unwrap();
    assert_eq!(held.decision, "approval_required", "{held:?}");
    let digest = held.action_digest.clone().unwrap();
    let (code, v) = h.export_and_verify("embedded").await;
    assert_eq!(code, 0, "{v:#}");
    h.broker.take().unwrap().stop();

    let pg = PgCluster::start(h.path(), "pg").await.expect("PostgreSQL");
    let out = h.custody(&[
        "migrate",
        "--from",
        h.data().to_str().unwrap(),
        "--to",
        &pg.url(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(pg.password()), "{text}");
    assert!(text.contains(v["root"].as_str().unwrap()), "{text}");
    // Again: the target holds a ledger now.
    let again = h.custody(&[
        "migrate",
        "--from",
        h.data().to_str().unwrap(),
        "--to",
        &pg.url(),
    ]);
    let text = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success());
    assert!(text.contains("already holds a ledger"), "{text}");
    assert!(!text.contains(pg.password()), "{text}");

    // A broker on PostgreSQL with the same keys serves the same ledger.
    let url_file = h.path().join("pg-url");
    write_secret_file(&url_file, &pg.url()).unwrap();
    let cfg = std::fs::read_to_string(h.config()).unwrap() + &postgres_config(&url_file);
    let pg_cfg = h.path().join("custody-pg.toml");
    std::fs::write(&pg_cfg, cfg).unwrap();
    let mut child = Command::new(custody_tests::bin("custody"))
        .args(["serve", "--config", pg_cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    let out = h.path().join("postgres");
    let pc = Client::new(&h.url, None).unwrap();
    pc.export(&h.admin, &out).await.unwrap();
    let (code, v2) = custody_tests::verify_json(&out);
    assert_eq!(code, 0, "{v2:#}");
    assert_eq!(v2["root"], v["root"]);
    assert_eq!(v2["tree_size"], v["tree_size"]);
    assert_eq!(
        std::fs::read(h.path().join("embedded/entries.jsonl")).unwrap(),
        std::fs::read(out.join("entries.jsonl")).unwrap(),
        "entries differ"
    );
    // The records came along: the session keeps working, and the kill
    // switch finds the token minted before the migration.
    let mut ev = session_event(&s, actions::TOOL_CALL).unwrap();
    ev.details.insert("after".into(), true.into());
    pc.log(&s, ev)
        .await
        .expect("the session acts on the new backend");
    // The agent sends the held call to the new backend, claiming nothing or
    // the policy: still held.
    for approval in [
        Approval::None,
        Approval::Policy {
            policy: held.policies[0].clone(),
            seq: Some(held.seq),
        },
    ] {
        let e = call_claiming(&pc, &s, &digest, approval.clone())
            .await
            .expect_err("the migrated ledger forgot a hold");
        assert_eq!(
            e.code(),
            Some("human_approval_required"),
            "{approval:?}: {e}"
        );
    }
    let r = pc
        .revoke(&h.admin, &s.did, "after migration")
        .await
        .unwrap();
    assert!(r.tokens_revoked + r.parents_revoked >= 1, "{r:?}");
    assert!(h.bao.lookup(&token).await.unwrap().is_err());
    // The first batches on PostgreSQL read the tree's right edge from the
    // stored hashes (the migration leaves the head row without it), later
    // ones from the head row: the ledger still verifies, with the copied
    // entries unchanged at its start.
    let (s2, _) = h.session("claude-code", "chat", "s2").await;
    for i in 0..3 {
        let mut ev = session_event(&s2, actions::TOOL_CALL).unwrap();
        ev.details.insert("after".into(), i.into());
        pc.log(&s2, ev).await.unwrap();
    }
    let again = h.path().join("postgres-after");
    pc.export(&h.admin, &again).await.unwrap();
    let (code, v3) = custody_tests::verify_json(&again);
    assert_eq!(code, 0, "{v3:#}");
    assert!(
        v3["tree_size"].as_u64().unwrap() > v2["tree_size"].as_u64().unwrap(),
        "{v3:#}"
    );
    let before = std::fs::read(out.join("entries.jsonl")).unwrap();
    let after = std::fs::read(again.join("entries.jsonl")).unwrap();
    assert!(after.starts_with(&before), "the copied entries changed");
    let _ = child.kill();
    let _ = child.wait();
}
