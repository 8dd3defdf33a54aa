//! The governance an agent cannot rewrite, through the real `custody` binary
//! against a live broker and OpenBao: a session holding only its own key (as
//! every agent does) tries every reserved action of the action table
//! (FORMAT.md §9.1), each refused with the code that names the rule; then the
//! admin's kill switch still works, the session's token is dead in OpenBao,
//! and its next mint, append and OTLP post are refused. Also: the OTLP ingest
//! credential dies with the session's end, expiry and revocation, whatever
//! crashed when; a broker refuses to start on a ledger whose key is missing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use custody_agent::sessionfile::SessionFile;
use custody_identity::{Did, KeyPair, Revocation};
use custody_ledger::Entry;
use custody_tests::broker::Harness;
use serde_json::{json, Value};
use time::OffsetDateTime;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(h: &Harness, name: &str) -> String {
    h.path().join(name).display().to_string()
}

/// `custody log` of `action` with `detail`, as the session.
fn log(h: &Harness, session: &Path, action: &str, detail: &Value) -> Output {
    h.custody(&[
        "log",
        "--session",
        session.to_str().unwrap(),
        "--action",
        action,
        "--detail",
        &detail.to_string(),
    ])
}

/// A revocation statement signed by the session's own key.
fn forged_revocation(s: &SessionFile, subject: &Did, effective: OffsetDateTime) -> String {
    Revocation::new(s.did.clone(), subject.clone(), "pwned".into(), effective)
        .unwrap()
        .issue(&s.key().unwrap())
        .unwrap()
}

async fn post_otlp(h: &Harness, token: &str) -> u16 {
    let body = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
        "timeUnixNano": "1700000000000000000",
        "body": {"stringValue": "claude_code.user_prompt"},
        "attributes": [{"key": "event.name", "value": {"stringValue": "user_prompt"}}]
    }]}]}]});
    reqwest::Client::new()
        .post(format!("{}/v1/logs", h.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn entries(bundle: &Path) -> Vec<Entry> {
    custody_tests::read_entries(bundle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_session_cannot_rewrite_the_governance() {
    let h = Harness::start().await;
    let ledger = Did::parse(&h.broker.as_ref().unwrap().ledger).unwrap();
    let (s, path) = h.session("claude-code", "chat", "agent").await;
    s.key().unwrap().save(&h.path().join("agent.key")).unwrap();
    let o = h.custody(&[
        "token",
        "--session",
        &p(&h, "agent.json"),
        "--scope",
        "repo-read",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(
        h.bao.lookup(&token).await.unwrap().is_ok(),
        "the token is live"
    );

    let now = OffsetDateTime::now_utc();
    let far = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap();
    let admin = h.admin.did();
    let stranger_session = KeyPair::generate();
    let attempts: Vec<(&str, Value, &str)> = vec![
        (
            "identity.revoke",
            json!({"revocation": forged_revocation(&s, &admin, now), "subject": admin.as_str()}),
            "not_admin",
        ),
        (
            "identity.revoke",
            json!({"revocation": forged_revocation(&s, &ledger, now), "subject": ledger.as_str()}),
            "not_admin",
        ),
        (
            "identity.revoke",
            json!({"revocation": forged_revocation(&s, &s.did, far), "subject": s.did.as_str()}),
            "not_admin",
        ),
        (
            "trust.update",
            json!({"admins": [s.did.as_str()], "delegators": [s.did.as_str()]}),
            "ledger_key_only",
        ),
        (
            "credential.mint",
            json!({"subject": s.did.as_str(), "scope": "repo-read"}),
            "ledger_key_only",
        ),
        (
            "credential.revoke",
            json!({"subject": s.did.as_str()}),
            "ledger_key_only",
        ),
        (
            "policy.decision",
            json!({"decision": "allow", "tool": "Bash"}),
            "ledger_key_only",
        ),
        (
            "request.denied",
            json!({"actor": admin.as_str(), "code": "x"}),
            "ledger_key_only",
        ),
        ("checkpoint.cosigned", json!({"size": 1}), "ledger_key_only"),
        (
            "approval",
            json!({"decision": "approve", "tool": "Bash"}),
            "human_only",
        ),
        (
            "ledger.genesis",
            json!({"admins": [s.did.as_str()], "delegators": []}),
            "ledger_key_only",
        ),
        (
            "telemetry.claude_code.user_prompt",
            json!({"origin": "human"}),
            "ledger_key_only",
        ),
        ("payload.redact", json!({"digest": "00"}), "ledger_key_only"),
        (
            "session.start",
            json!({"delegation": "x", "for": stranger_session.did().as_str()}),
            "new_session_key_only",
        ),
        ("identity.rotate", json!({}), "reserved_action"),
        ("ledger.reset", json!({}), "reserved_action"),
        ("trust.add", json!({}), "reserved_action"),
    ];
    let before = h.client().health().await.unwrap().entries;
    for (action, detail, code) in &attempts {
        let o = log(&h, &path, action, detail);
        assert!(!o.status.success(), "{action} was accepted: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("403 {code}")),
            "{action}: expected 403 {code}: {}",
            text(&o)
        );
    }
    // The kill switch endpoint itself, with the session's key as the "admin".
    let o = h.custody(&[
        "revoke",
        "--broker",
        &h.url,
        "--as",
        &p(&h, "agent.key"),
        admin.as_str(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403 not_admin"),
        "{}",
        text(&o)
    );
    // Each attempt left exactly its refusal on the record.
    let after = h.client().health().await.unwrap().entries;
    assert_eq!(after - before, attempts.len() as u64 + 1);

    // The admin's kill switch still works: the session is revoked, its token
    // dead in OpenBao, its next mint, append and OTLP post refused.
    let o = h.custody(&[
        "revoke",
        "--broker",
        &h.url,
        "--as",
        &p(&h, "admin.key"),
        s.did.as_str(),
        "--reason",
        "prompt-injected",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        h.bao.lookup(&token).await.unwrap().is_err(),
        "the token must be dead"
    );
    let o = h.custody(&[
        "token",
        "--session",
        &p(&h, "agent.json"),
        "--scope",
        "repo-read",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("revoked"),
        "{}",
        text(&o)
    );
    let o = log(&h, &path, "tool.call", &json!({"tool": "Bash"}));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403 revoked"),
        "{}",
        text(&o)
    );
    assert_eq!(post_otlp(&h, s.ingest_token()).await, 401);

    // The admin can still export; the export verifies, and none of the
    // attempts acts in it: the session signed no reserved action, and every
    // attempt is a request.denied naming its code.
    let o = h.custody(&[
        "export",
        "--broker",
        &h.url,
        "--as",
        &p(&h, "admin.key"),
        "--out",
        &p(&h, "bundle"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (code, v) = custody_tests::verify_json(&h.path().join("bundle"));
    assert_eq!(code, 0, "{v:#}");
    let es = entries(&h.path().join("bundle"));
    let by_session: Vec<&str> = es
        .iter()
        .filter(|e| e.event.actor == s.did)
        .map(|e| e.event.action.as_str())
        .collect();
    assert_eq!(by_session, vec!["session.start", "credential.request"]);
    for (action, _, code) in &attempts {
        assert!(
            es.iter()
                .any(|e| e.event.action.as_str() == "request.denied"
                    && e.event.detail_str("attempted_action") == Some(action)
                    && e.event.detail_str("code") == Some(code)
                    && e.event.detail_str("actor") == Some(s.did.as_str())),
            "no request.denied for {action} ({code})"
        );
    }
    let revs: Vec<&Entry> = es
        .iter()
        .filter(|e| e.event.action.as_str() == "identity.revoke")
        .collect();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].event.actor, admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_credential_dies_with_the_session_whatever_crashed() {
    let mut h = Harness::start().await;
    let c = h.client();

    // Ended: its own session.end closes it; tokens die with it.
    let (ended, ended_path) = h.session("claude-code", "chat", "ended").await;
    assert_eq!(post_otlp(&h, ended.ingest_token()).await, 200);
    let token = c.mint(&ended, "repo-read").await.unwrap().token;
    let o = h.custody(&["session", "end", "--session", ended_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(post_otlp(&h, ended.ingest_token()).await, 401);
    assert!(
        h.bao.lookup(&token).await.unwrap().is_err(),
        "tokens die with the end"
    );
    let o = log(&h, &ended_path, "tool.call", &json!({}));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403 session_ended"),
        "{}",
        text(&o)
    );
    let o = h.custody(&[
        "token",
        "--session",
        ended_path.to_str().unwrap(),
        "--scope",
        "repo-read",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("session_ended"),
        "{}",
        text(&o)
    );

    // Expired: a two-second session.
    let (short, _) = c
        .start_session(
            &h.developer,
            "codex",
            &["repo-read".to_string()],
            "ci",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(post_otlp(&h, short.ingest_token()).await, 200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(post_otlp(&h, short.ingest_token()).await, 401);

    // Revoked, with the broker's side table restored from before the
    // revocation (as a crash between the revocation and the table's tidy-up
    // would leave it): the ledger's state still refuses the token.
    let (revoked, _) = h.session("claude-code", "chat", "revoked").await;
    assert_eq!(post_otlp(&h, revoked.ingest_token()).await, 200);
    h.broker.take().unwrap().stop();
    let table = h.data().join("broker");
    let saved = h.path().join("broker-table-before");
    custody_tests::copy_dir(&table, &saved);
    h.start_broker();
    h.client()
        .revoke(&h.admin, &revoked.did, "kill")
        .await
        .unwrap();
    h.broker.take().unwrap().stop();
    std::fs::remove_dir_all(&table).unwrap();
    custody_tests::copy_dir(&saved, &table);
    h.start_broker();
    assert_eq!(post_otlp(&h, revoked.ingest_token()).await, 401);

    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_without_its_key_does_not_start() {
    let mut h = Harness::start().await;
    let (s, _) = h.session("claude-code", "chat", "s").await;
    h.client()
        .log(
            &s,
            custody_agent::client::session_event(&s, "tool.call").unwrap(),
        )
        .await
        .unwrap();
    h.broker.take().unwrap().stop();
    let key = h.data().join("ledger.key");
    let moved = h.path().join("ledger.key.backup");
    std::fs::rename(&key, &moved).unwrap();
    let o = Command::new(custody_tests::bin("custody"))
        .args(["serve", "--config", h.config().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ledger.key") && err.contains("missing"),
        "{}",
        text(&o)
    );
    assert!(!key.exists(), "no new key was created");
    // With the key restored it starts, on the same ledger.
    std::fs::rename(&moved, &key).unwrap();
    h.start_broker();
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
}
