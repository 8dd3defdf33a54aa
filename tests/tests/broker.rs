//! The broker end to end: a real OpenBao dev server, a real `custody serve`
//! process, real HTTP. Flows, the tokens' real permissions in OpenBao, every
//! kind of bad request, and restart.

use std::time::Duration;

use custody_agent::client::session_event;
use custody_identity::{Delegation, KeyPair};
use custody_ledger::{actions, ActionType, ActorKind, Event};
use custody_tests::broker::Harness;
use custody_tests::{check_ok, failing_seqs};
use custody_wire::api;
use custody_wire::signing;
use time::OffsetDateTime;

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mint_revoke_end_to_end() {
    let h = Harness::start().await;
    let c = h.client();
    let (session, _) = c
        .start_session(
            &h.developer,
            "claude-code",
            &scopes(&["ci-read", "repo-read"]),
            "chat",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    // The certificate names the session.
    assert!(session.certificate_pem.contains("BEGIN CERTIFICATE"));

    let m = c.mint(&session, "ci-read").await.unwrap();
    assert_eq!(m.policies, vec!["ci-read".to_string()]);
    // TTL bounded by the scope's max (15m) and the session's remaining life (5m).
    assert!(
        m.ttl_seconds <= 300 && m.ttl_seconds > 250,
        "ttl {}",
        m.ttl_seconds
    );
    let (policies, ttl, meta) = h.bao.lookup(&m.token).await.unwrap().unwrap();
    assert_eq!(
        policies,
        vec!["ci-read".to_string()],
        "exactly the scope's policies, no default"
    );
    assert!(ttl <= 300);
    assert_eq!(
        meta.get("custody_session_did").map(String::as_str),
        Some(session.did.as_str())
    );
    // Real permissions in OpenBao.
    assert_eq!(
        h.bao.read_secret(&m.token, "ci/database").await.unwrap().0,
        200
    );
    assert_eq!(
        h.bao.read_secret(&m.token, "prod/root").await.unwrap().0,
        403
    );
    assert_eq!(
        h.bao
            .read_secret(&m.token, "staging/deploy")
            .await
            .unwrap()
            .0,
        403
    );

    // Agent actions are appended.
    let mut ev = session_event(&session, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), "Bash".into());
    let a = c.log(&session, ev).await.unwrap();
    assert!(a.seq > 0);

    // Scope escalation: a scope that exists but was not delegated.
    let e = c
        .mint(&session, "deploy-staging")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("out_of_scope"), "{e}");

    // The kill switch.
    let t0 = std::time::Instant::now();
    let r = c.revoke(&h.admin, &session.did, "test").await.unwrap();
    eprintln!("revoke took {:?}", t0.elapsed());
    assert_eq!(r.tokens_revoked, 1);
    assert_eq!(
        h.bao.read_secret(&m.token, "ci/database").await.unwrap().0,
        403,
        "token dead in OpenBao"
    );
    let mut ev = session_event(&session, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), "Bash".into());
    let e = c.log(&session, ev).await.unwrap_err().to_string();
    assert!(e.contains("403") && e.contains("revoked"), "{e}");
    let e = c.mint(&session, "ci-read").await.unwrap_err().to_string();
    assert!(e.contains("revoked"), "{e}");
    let st = c.status(&session).await.unwrap();
    assert!(!st.active);

    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    // Denied attempts are evidence.
    assert!(
        v["stats"]["denied_requests"].as_u64().unwrap() >= 3,
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_delegator_cascades_to_its_sessions() {
    let h = Harness::start().await;
    let c = h.client();
    let (s1, _) = c
        .start_session(
            &h.developer,
            "codex",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    let (s2, _) = c
        .start_session(
            &h.developer,
            "claude-code",
            &scopes(&["ci-read"]),
            "chat",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    let t1 = c.mint(&s1, "ci-read").await.unwrap();
    let t2 = c.mint(&s2, "ci-read").await.unwrap();
    let r = c
        .revoke(&h.admin, &h.developer.did(), "laptop stolen")
        .await
        .unwrap();
    assert_eq!(r.sessions.len(), 3);
    assert_eq!(r.tokens_revoked, 2);
    for t in [&t1.token, &t2.token] {
        assert_eq!(h.bao.read_secret(t, "ci/database").await.unwrap().0, 403);
    }
    assert!(c
        .log(&s1, session_event(&s1, "tool.call").unwrap())
        .await
        .is_err());
    // The revoked developer can no longer delegate.
    let e = c
        .start_session(
            &h.developer,
            "x",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

/// Sends a raw request with custom headers and body.
async fn raw(
    url: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

fn signed_headers(key: &KeyPair, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let h = signing::sign_request(key, "POST", path, body);
    vec![
        (signing::HEADER_DID, h.did),
        (signing::HEADER_TIMESTAMP, h.timestamp),
        (signing::HEADER_NONCE, h.nonce),
        (signing::HEADER_SIGNATURE, h.signature),
    ]
}

fn human_event(key: &KeyPair) -> Vec<u8> {
    let mut e = Event::new(
        key.did(),
        ActorKind::Human,
        ActionType::new("prompt").unwrap(),
    );
    e.details.insert("summary".into(), "hello".into());
    serde_json::to_vec(&api::AppendEvent {
        event: e.sign(key).unwrap(),
        payload: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_change_nothing() {
    let h = Harness::start().await;
    let c = h.client();
    let url = &h.url;
    let p = api::PATH_EVENTS;
    let before = c.health().await.unwrap().entries;

    // Unsigned.
    let (s, v) = raw(url, p, &[], human_event(&h.developer)).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unsigned")), "{v}");
    // Signed by a different key than the header names (DID confusion).
    let body = human_event(&h.developer);
    let mut hs = signed_headers(&KeyPair::generate(), p, &body);
    hs[0].1 = h.developer.did().to_string();
    let (s, v) = raw(url, p, &hs, body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("bad_signature")),
        "{v}"
    );
    // Replayed nonce.
    let body = human_event(&h.developer);
    let hs = signed_headers(&h.developer, p, &body);
    let (s, _) = raw(url, p, &hs, body.clone()).await;
    assert_eq!(s, 200);
    let (s, v) = raw(url, p, &hs, body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("replayed_request")),
        "{v}"
    );
    // Stale timestamp.
    let body = human_event(&h.developer);
    let ts = signing::now_ms() - 10 * 60 * 1000;
    let nonce = custody_ledger::Nonce::random().to_hex();
    let sig = h
        .developer
        .sign(&signing::signing_input("POST", p, ts, &nonce, &body));
    let hs = vec![
        (signing::HEADER_DID, h.developer.did().to_string()),
        (signing::HEADER_TIMESTAMP, ts.to_string()),
        (signing::HEADER_NONCE, nonce),
        (signing::HEADER_SIGNATURE, sig.to_base64url()),
    ];
    let (s, v) = raw(url, p, &hs, body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("stale_request")),
        "{v}"
    );
    // Malformed JSON.
    let body = b"{\"event\": ".to_vec();
    let (s, v) = raw(url, p, &signed_headers(&h.developer, p, &body), body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );
    // Oversized body.
    let body = vec![b' '; 2 << 20];
    let (s, _) = raw(url, p, &signed_headers(&h.developer, p, &body), body).await;
    assert_eq!(s, 413);
    // An unknown key appending.
    let stranger = KeyPair::generate();
    let body = human_event(&stranger);
    let (s, v) = raw(url, p, &signed_headers(&stranger, p, &body), body).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("unknown_actor")),
        "{v}"
    );

    // Delegator not trusted.
    let e = c
        .start_session(
            &stranger,
            "a",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("not_delegator"), "{e}");
    // TTL escalation: deploy-staging allows 10m.
    let e = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["deploy-staging"]),
            "ci",
            Duration::from_secs(3600),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttl_too_long"), "{e}");
    // Context not allowed for the scope.
    let e = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["deploy-staging"]),
            "chat",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("context_mismatch"), "{e}");
    // Undefined scope.
    let e = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["root"]),
            "ci",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown_scope"), "{e}");
    // Expired delegation.
    let session = KeyPair::generate();
    let now = OffsetDateTime::now_utc();
    let d = Delegation::new(
        h.developer.did(),
        session.did(),
        "a".into(),
        scopes(&["ci-read"]),
        "ci".into(),
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    )
    .unwrap();
    let jws = d.issue(&h.developer).unwrap();
    let mut ev = Event::new(
        session.did(),
        ActorKind::Agent,
        ActionType::new(actions::SESSION_START).unwrap(),
    );
    ev.session = Some(custody_ledger::SessionId::new(d.id.clone()).unwrap());
    ev.on_behalf_of = Some(h.developer.did());
    ev.context = Some(custody_ledger::Context::new("ci").unwrap());
    ev.details.insert("delegation".into(), jws.clone().into());
    let body = serde_json::to_vec(&api::StartSession {
        delegation: jws,
        start: ev.sign(&session).unwrap(),
    })
    .unwrap();
    let (s, v) = raw(
        url,
        api::PATH_SESSIONS,
        &signed_headers(&h.developer, api::PATH_SESSIONS, &body),
        body,
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("expired")), "{v}");

    // Non-admin revoke and export.
    let (s1, _) = c
        .start_session(
            &h.developer,
            "codex",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let e = c
        .revoke(&h.developer, &s1.did, "not mine to revoke")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("not_admin"), "{e}");
    let e = c
        .export(&h.developer, &h.path().join("nope"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not_admin"), "{e}");
    // A session posting an event whose actor is another session.
    let (s2, _) = c
        .start_session(
            &h.developer,
            "other",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let ev = session_event(&s2, "tool.call")
        .unwrap()
        .sign(&s2.key().unwrap())
        .unwrap();
    let e = c
        .log_as(&s1.key().unwrap(), ev, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("did_mismatch"), "{e}");

    // Nothing of the refused requests is in the ledger except the refusals,
    // and the ledger still verifies.
    let after = c.health().await.unwrap().entries;
    assert!(after > before);
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    assert!(check_ok(&v, "authorization"));
    assert!(failing_seqs(&v, "authorization").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_ledger_sessions_and_revocations() {
    let mut h = Harness::start().await;
    let c = h.client();
    let (alive, _) = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    let (dead, _) = c
        .start_session(
            &h.developer,
            "b",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    c.revoke(&h.admin, &dead.did, "test").await.unwrap();
    let n = c.health().await.unwrap().entries;
    let ledger = h.broker.as_ref().unwrap().ledger.clone();

    h.broker.take().unwrap().stop();
    h.start_broker();
    let c = h.client();
    let health = c.health().await.unwrap();
    assert_eq!(health.ledger, ledger, "same ledger key");
    assert!(health.entries >= n, "{} < {n}", health.entries);
    // The live session still works, the revoked one is still refused.
    c.log(&alive, session_event(&alive, "tool.call").unwrap())
        .await
        .unwrap();
    c.mint(&alive, "ci-read").await.unwrap();
    let e = c
        .log(&dead, session_event(&dead, "tool.call").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");

    // Even after SIGKILL.
    h.broker.take().unwrap().crash();
    h.start_broker();
    let c = h.client();
    c.log(&alive, session_event(&alive, "tool.call").unwrap())
        .await
        .unwrap();
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_work_against_the_broker() {
    let h = Harness::start().await;
    let p = |x: &str| h.path().join(x).display().to_string();
    let o = h.custody(&[
        "session",
        "start",
        "--broker",
        &h.url,
        "--as",
        &p("developer.key"),
        "--agent",
        "claude-code",
        "--scope",
        "ci-read,repo-read",
        "--context",
        "chat",
        "--ttl",
        "10m",
        "--out",
        &p("s.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let did = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = h.custody(&["token", "--session", &p("s.json"), "--scope", "ci-read"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8(o.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.lines().count(), 1, "only the token on stdout");
    assert_eq!(
        h.bao.read_secret(token, "ci/database").await.unwrap().0,
        200
    );
    let o = h.custody(&[
        "log",
        "--session",
        &p("s.json"),
        "--action",
        "tool.call",
        "--detail",
        "{\"tool\":\"Read\"}",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = h.custody(&[
        "log",
        "--session",
        &p("s.json"),
        "--action",
        "tool.call",
        "--detail",
        "[1]",
    ]);
    assert!(!o.status.success());
    let o = h.custody(&["session", "env", "--session", &p("s.json")]);
    let env = String::from_utf8(o.stdout).unwrap();
    assert!(
        env.contains("OTEL_EXPORTER_OTLP_HEADERS='Authorization=Bearer "),
        "{env}"
    );
    let o = h.custody(&[
        "revoke",
        "--broker",
        &h.url,
        "--as",
        &p("admin.key"),
        &did,
        "--reason",
        "done",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        h.bao.read_secret(token, "ci/database").await.unwrap().0,
        403
    );
    let o = h.custody(&["token", "--session", &p("s.json"), "--scope", "ci-read"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("revoked"));
    let o = h.custody(&[
        "export",
        "--broker",
        &h.url,
        "--as",
        &p("admin.key"),
        "--out",
        &p("bundle"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, v) = custody_tests::verify_json(&h.path().join("bundle"));
    assert_eq!(code, 0, "{v:#}");
    // The token never reached the ledger.
    let entries = std::fs::read_to_string(h.path().join("bundle/entries.jsonl")).unwrap();
    assert!(!entries.contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_brokers_own_ca() {
    let h = Harness::start_with("\n[tls]\nenabled = true\n").await;
    assert!(h.url.starts_with("https://"));
    let c = h.client();
    let (s, _) = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(s.broker.starts_with("https://"));
    c.mint(&s, "ci-read").await.unwrap();
    // Without the CA the client refuses the broker's certificate.
    let plain = custody_agent::client::Client::new(&h.url, None).unwrap();
    let e = plain.health().await.unwrap_err().to_string();
    assert!(e.contains("cannot reach"), "{e}");
    // The CLI reads the CA from the session file.
    let p = h.path().join("s.json");
    s.save(&p).unwrap();
    let o = h.custody(&[
        "token",
        "--session",
        p.to_str().unwrap(),
        "--scope",
        "ci-read",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_dev_serves_and_cleans_up() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = custody_cli::dev::free_port().unwrap();
    /// Kills `custody dev` (and so OpenBao) even when an assertion fails.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg(self.0.id().to_string())
                .status();
            let _ = self.0.wait();
        }
    }
    let mut child = Guard(
        std::process::Command::new(custody_tests::bin("custody"))
            .args([
                "dev",
                "--dir",
                dir.path().to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("CUSTODY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("Ctrl-C") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
    }
    assert!(text.contains("custody session start"), "{text}");
    let bao_pid: u32 = text
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("OpenBao pid printed");
    let url = format!("http://127.0.0.1:{port}");
    let c = custody_agent::client::Client::new(&url, None).unwrap();
    assert_eq!(c.health().await.unwrap().vault, "ok");
    let dev = custody_identity::KeyPair::load(&dir.path().join("developer.key")).unwrap();
    let (s, _) = c
        .start_session(
            &dev,
            "claude-code",
            &scopes(&["ci-read"]),
            "chat",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    c.mint(&s, "ci-read").await.unwrap();
    // SIGTERM: the broker flushes and OpenBao is killed with it.
    std::process::Command::new("kill")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{bao_pid}")).exists(),
        "OpenBao still running"
    );
}

/// Every file below `dir`, recursively.
fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_ledger_bundle_or_report() {
    use base64::Engine;
    let h = Harness::start().await;
    let c = h.client();
    let (s, _) = c
        .start_session(
            &h.developer,
            "a",
            &scopes(&["ci-read"]),
            "ci",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    let m1 = c.mint(&s, "ci-read").await.unwrap();
    let m2 = c.mint(&s, "ci-read").await.unwrap();
    let mut ev = session_event(&s, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), "Bash".into());
    c.log(&s, ev).await.unwrap();
    c.revoke(&h.admin, &s.did, "done").await.unwrap();
    let _ = c.mint(&s, "ci-read").await;
    let bundle = h.path().join("bundle");
    c.export(&h.admin, &bundle).await.unwrap();
    let report = h.path().join("report.html");
    let o = custody_tests::run(
        "custody-verify",
        &[
            "report",
            bundle.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let o = custody_tests::run(
        "custody-verify",
        &[
            "report",
            bundle.to_str().unwrap(),
            "--out",
            h.path().join("report.json").to_str().unwrap(),
        ],
    );
    assert!(o.status.success());

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut secrets: Vec<(String, String)> = vec![
        ("vault token 1".into(), m1.token.clone()),
        ("vault token 2".into(), m2.token.clone()),
        (
            "broker's vault token".into(),
            std::fs::read_to_string(h.path().join("vault-token")).unwrap(),
        ),
        ("OpenBao root token".into(), h.bao.root_token().to_string()),
        ("session seed".into(), b64.encode(*s.key().unwrap().seed())),
        (
            "session seed (hex)".into(),
            hex::encode(*s.key().unwrap().seed()),
        ),
        ("developer seed".into(), b64.encode(*h.developer.seed())),
        ("admin seed".into(), b64.encode(*h.admin.seed())),
        ("ingest token".into(), s.ingest_token().to_string()),
    ];
    let ledger = custody_identity::KeyPair::load(&h.path().join("data/ledger.key")).unwrap();
    secrets.push(("ledger seed".into(), b64.encode(*ledger.seed())));
    // Where secrets must never appear: logs, the ledger's segments, the bundle, the reports.
    let mut places = all_files(&bundle);
    places.extend(all_files(&h.path().join("data/ledger/segments")));
    places.extend(all_files(&h.path().join("data/ledger/checkpoints")));
    places.push(h.path().join("broker.log"));
    places.push(report);
    places.push(h.path().join("report.json"));
    let mut searched = 0;
    for p in &places {
        let Ok(bytes) = std::fs::read(p) else {
            continue;
        };
        searched += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} appears in {}",
                p.display()
            );
        }
    }
    assert!(searched >= 8, "searched only {searched} files");
}
