//! Into the SIEM (docs/SIEM.md), against a real broker and OpenBao: the
//! entry feed (`GET /v1/entries`) is for auditors and admins only, an
//! auditor can read and do nothing else, and `custody tail` — killed with
//! SIGKILL at random moments while the broker appends, restarted with
//! `--state` — leaves real Splunk HEC and OTLP/HTTP receivers holding every
//! entry exactly once by its idempotency key, in order, none missing; every
//! OCSF event they received validates against the OCSF schema, and
//! `custody-verify check-event` proves a received event against the ledger
//! (and refuses an edited one). The OCSF mapping table of docs/SIEM.md is the
//! code's.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_identity::{Delegation, Did, KeyPair};
use custody_ledger::{
    actions, entry_hash, ActionType, ActorKind, Context, Entry, EntryHash, Event, Seq, SessionId,
    Timestamp,
};
use custody_tests::broker::Harness;
use custody_tests::siem::{exactly_once_by_key, validate_ocsf, Receiver};
use custody_wire::api::{FeedPage, FeedQuery, PolicyCheck};
use serde_json::{json, Value};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn refused_with(e: ClientError, status: u16, code: &str) {
    match &e {
        ClientError::Api {
            status: s, code: c, ..
        } if *s == status && c == code => {}
        other => panic!("expected {status} {code}, got {other}"),
    }
}

/// The whole ledger through the feed, as the auditor.
async fn all_entries(c: &Client, auditor: &KeyPair) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page: FeedPage = c
            .feed(
                auditor,
                &FeedQuery {
                    after,
                    ..Default::default()
                },
            )
            .await
            .expect("the auditor reads the feed");
        if page.entries.is_empty() {
            return out;
        }
        for e in page.entries {
            after = Some(e.seq);
            out.push((e.seq, e.hash, e.line));
        }
    }
}

async fn tool_call(c: &Client, s: &SessionFile, tool: &str, i: u64) -> u64 {
    let mut ev = session_event(s, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), tool.into());
    ev.details.insert("tool_name".into(), tool.into());
    ev.details
        .insert("tool_use_id".into(), format!("toolu_{i}").into());
    ev.details.insert("cwd".into(), "/work/repo".into());
    ev.details.insert("agent".into(), "claude-code".into());
    c.log(s, ev).await.expect("append a tool call").seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_for_auditors_and_admins_and_an_auditor_can_only_read() {
    let h = Harness::start().await;
    let c = h.client();
    let ledger = h.broker.as_ref().unwrap().ledger.clone();
    let (s, _) = h.session("claude-code", "chat", "agent").await;
    for i in 0..5 {
        tool_call(&c, &s, if i % 2 == 0 { "Bash" } else { "Read" }, i).await;
    }

    // The auditor and the admin read the canonical entries, in order.
    let q = FeedQuery::default();
    let page = c.feed(&h.auditor, &q).await.unwrap();
    assert_eq!(page.ledger, ledger);
    assert!(!page.entries.is_empty());
    for (i, e) in page.entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.hash, entry_hash(e.line.as_bytes()).to_hex());
        assert_eq!(Entry::parse_line(e.line.as_bytes()).unwrap().seq.0, e.seq);
    }
    assert_eq!(page.size, page.entries.len() as u64);
    let admin_page = c.feed(&h.admin, &q).await.unwrap();
    assert_eq!(admin_page.entries.len(), page.entries.len());
    let part = c
        .feed(
            &h.auditor,
            &FeedQuery {
                after: Some(1),
                limit: Some(2),
                wait: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        part.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // Caught up, without waiting: an empty page.
    let end = c
        .feed(
            &h.auditor,
            &FeedQuery {
                after: Some(page.size - 1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(end.entries.is_empty());

    // Refused: the delegator, the session, a stranger — and the only trace
    // each leaves is its request.denied entry.
    let before = all_entries(&c, &h.auditor).await;
    let stranger = KeyPair::generate();
    let session_key = s.key().unwrap();
    for key in [&h.developer, &session_key, &stranger] {
        refused_with(c.feed(key, &q).await.unwrap_err(), 403, "not_auditor");
    }
    let after = all_entries(&c, &h.auditor).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "the ledger was rewritten"
    );
    let added: Vec<Entry> = after[before.len()..]
        .iter()
        .map(|(_, _, l)| Entry::parse_line(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(added.len(), 3, "one request.denied per refused read");
    for (e, key) in added.iter().zip([&h.developer, &session_key, &stranger]) {
        assert_eq!(e.event.action.as_str(), actions::REQUEST_DENIED);
        assert_eq!(e.event.details["code"], "not_auditor");
        assert_eq!(e.event.details["attempted_action"], "entries.read");
        assert_eq!(e.event.details["actor"], key.did().as_str());
    }

    // Unsigned, and signed for another query: 401, nothing recorded.
    let n = after.len();
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v1/entries", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let hdr = custody_wire::signing::sign_request(&h.auditor, "GET", "/v1/entries?after=0", b"");
    let r = http
        .get(format!("{}/v1/entries?after=3", h.url))
        .header("custody-did", hdr.did)
        .header("custody-timestamp", hdr.timestamp)
        .header("custody-nonce", hdr.nonce)
        .header("custody-signature", hdr.signature)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_signature");
    assert_eq!(all_entries(&c, &h.auditor).await.len(), n);

    // The auditor may read and nothing else: it holds no role in the
    // ledger. Each attempt is refused and recorded, and changes nothing.
    let mut ev = Event::new(
        h.auditor.did(),
        ActorKind::Human,
        ActionType::new("note").unwrap(),
    );
    ev.details
        .insert("text".into(), "an auditor writing".into());
    let signed = ev.sign(&h.auditor).unwrap();
    refused_with(
        c.log_as(&h.auditor, signed, None).await.unwrap_err(),
        403,
        "unknown_actor",
    );
    let e = c.revoke(&h.auditor, &s.did, "auditor").await.unwrap_err();
    refused_with(e.downcast::<ClientError>().unwrap(), 403, "not_admin");
    let e = c
        .export(&h.auditor, &h.path().join("by-auditor"))
        .await
        .unwrap_err();
    refused_with(e.downcast::<ClientError>().unwrap(), 403, "not_admin");
    assert!(!h.path().join("by-auditor").exists());
    refused_with(
        c.checkpoint_now(&h.auditor).await.unwrap_err(),
        403,
        "not_admin",
    );
    let e = c
        .start_session(
            &h.auditor,
            "claude-code",
            &["repo-read".to_string()],
            "chat",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    refused_with(e.downcast::<ClientError>().unwrap(), 403, "not_delegator");
    let now = all_entries(&c, &h.auditor).await;
    assert_eq!(now[..n], after[..n]);
    for (_, _, l) in &now[n..] {
        let e = Entry::parse_line(l.as_bytes()).unwrap();
        assert_eq!(e.event.action.as_str(), actions::REQUEST_DENIED, "{l}");
        assert_eq!(e.event.details["actor"], h.auditor.did().as_str());
    }
    // The session it tried to revoke still acts; the export verifies and no
    // entry is the auditor's.
    tool_call(&c, &s, "Bash", 99).await;
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v}");
    assert!(custody_tests::read_entries(&h.path().join("bundle"))
        .iter()
        .all(|e| e.event.actor != h.auditor.did()));

    // A revocation in the ledger closes the feed to an auditor too.
    c.revoke(&h.admin, &h.auditor.did(), "rotated out")
        .await
        .unwrap();
    refused_with(
        c.feed(&h.auditor, &q).await.unwrap_err(),
        403,
        "not_auditor",
    );
    assert!(c.feed(&h.admin, &q).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_answered_by_the_next_append() {
    let h = Harness::start().await;
    let c = h.client();
    let (s, _) = h.session("claude-code", "chat", "agent").await;
    let size = c
        .feed(&h.auditor, &FeedQuery::default())
        .await
        .unwrap()
        .size;
    let follow = FeedQuery {
        after: Some(size - 1),
        limit: None,
        wait: Some(30),
    };
    let waiting = {
        let (c, a) = (h.client(), h.auditor.clone());
        let q = follow.clone();
        tokio::spawn(async move { c.feed(&a, &q).await })
    };
    // Whenever the follower's request gets there, the entry reaches it: it
    // is either appended while it waits or already there when it asks.
    let seq = tool_call(&c, &s, "Bash", 1).await;
    let page = waiting.await.unwrap().unwrap();
    assert_eq!(page.entries.first().map(|e| e.seq), Some(seq));
    // A caller has at most two feed requests open.
    let follow2 = FeedQuery {
        after: Some(seq),
        limit: None,
        wait: Some(30),
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let (c, a, q) = (h.client(), h.auditor.clone(), follow2.clone());
        open.push(tokio::spawn(async move { c.feed(&a, &q).await }));
    }
    // The third is refused only if both are still waiting; either way
    // nothing is appended by it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match c.feed(&h.auditor, &follow2).await {
        Err(e) => refused_with(e, 429, "rate_limited"),
        Ok(p) => assert!(p.entries.len() <= 1),
    }
    tool_call(&c, &s, "Read", 2).await;
    for o in open {
        let p = o.await.unwrap().unwrap();
        assert_eq!(p.entries.first().map(|e| e.seq), Some(seq + 1));
    }
}

/// A small deterministic generator (the seed is printed, so a failing run
/// can be repeated).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Appends a mix of what agents, people and the broker record: tool calls
/// of every group, results that failed, prompts, policy decisions, mints,
/// refusals.
async fn append_mix(c: Client, s: SessionFile, dev: KeyPair, n: u64, seed: u64) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut appended = 0;
    for i in 0..n {
        match rng.below(10) {
            0..=3 => {
                let tool = ["Bash", "Read", "Edit", "WebFetch", "mcp__x"][rng.below(5) as usize];
                tool_call(&c, &s, tool, i).await;
            }
            4 => {
                let mut ev = session_event(&s, actions::TOOL_RESULT).unwrap();
                ev.details.insert("tool".into(), "Bash".into());
                ev.details.insert("ok".into(), (rng.below(2) == 0).into());
                c.log(&s, ev).await.unwrap();
            }
            5 => {
                c.policy_check(
                    &s,
                    &PolicyCheck {
                        tool: "Bash".into(),
                        input: json!({"command": if rng.below(2) == 0 { "cargo test" } else { "curl x | sh" }}),
                        cwd: "/work/repo".into(),
                        branch: "main".into(),
                        call_id: None,
                        record: None,
                    },
                )
                .await
                .unwrap();
            }
            6 => {
                c.mint(&s, "repo-read").await.unwrap();
            }
            7 => {
                // A session may not write governance: refused, recorded.
                let mut ev = session_event(&s, "trust.update").unwrap();
                ev.details.insert("admins".into(), json!([]));
                let _ = c.log(&s, ev).await.unwrap_err();
            }
            8 => {
                let mut ev = Event::new(
                    dev.did(),
                    ActorKind::Human,
                    ActionType::new(actions::PROMPT).unwrap(),
                );
                ev.details
                    .insert("summary".into(), "fix the flaky test".into());
                c.log_as(&dev, ev.sign(&dev).unwrap(), None).await.unwrap();
            }
            _ => {
                let ev = session_event(&s, "git.commit").unwrap();
                c.log(&s, ev).await.unwrap();
            }
        }
        appended += 1;
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        }
    }
    appended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_tail_killed_at_random_leaves_every_entry_exactly_once_in_hec_and_otlp() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed | 1);
    let h = Harness::start().await;
    let c = h.client();
    let ledger = h.broker.as_ref().unwrap().ledger.clone();
    let (s, _) = h.session("claude-code", "chat", "agent").await;
    let hec_token = "9f2d6a1e-hec-token-for-tests";
    custody_cli::dev::write_secret_file(&h.path().join("hec-token"), hec_token).unwrap();
    // Each receiver answers some requests 503 busy, so retries are exercised.
    let hec = Receiver::splunk_hec(hec_token, 5).await;
    let otlp = Receiver::otlp(7).await;
    let state = h.path().join("tail.state");
    let events_file = h.path().join("events.jsonl");
    let tail = |follow: bool| {
        let mut cmd = Command::new(custody_tests::bin("custody"));
        cmd.args(["tail", "--broker", &h.url, "--as"])
            .arg(h.path().join("auditor.key"))
            .arg("--state")
            .arg(&state)
            .arg("--ledger-key")
            .arg(&ledger)
            .arg("--splunk-hec")
            .arg(&hec.url)
            .arg("--token-file")
            .arg(h.path().join("hec-token"))
            .arg("--otlp")
            .arg(&otlp.url)
            .arg("--file")
            .arg(&events_file)
            // Small pages: many deliveries, many moments to be killed in.
            .args(["--page", "7"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if follow {
            cmd.arg("--follow");
        }
        cmd
    };

    // CI: 240 entries and at least 3 kills; CUSTODY_SIEM_SOAK=N multiplies
    // both (a longer run of the same test).
    let soak: u64 = std::env::var("CUSTODY_SIEM_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let appender = tokio::spawn(append_mix(
        c,
        s.clone(),
        h.developer.clone(),
        240 * soak,
        seed,
    ));
    let mut kills = 0;
    while !appender.is_finished() || kills < 3 * soak {
        let mut child = tail(true).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(500))).await;
        // SIGKILL: no chance to finish a delivery or write its state.
        child.kill().unwrap();
        let _ = child.wait();
        kills += 1;
        if kills > 40 * soak {
            break;
        }
    }
    let appended = appender.await.unwrap();
    assert!(appended > 0);
    // Once more, without --follow: it catches up and stops.
    let out = tail(false).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "{kills} kills; HEC {} requests ({} answered busy), OTLP {} requests ({} busy)",
        hec.requests(),
        hec.refused(),
        otlp.requests(),
        otlp.refused()
    );

    let c = h.client();
    let ledger_entries = all_entries(&c, &h.auditor).await;
    let keys: Vec<(u64, String)> = ledger_entries
        .iter()
        .map(|(seq, hash, _)| (*seq, hash.clone()))
        .collect();
    let (hec_got, otlp_got) = (hec.received(), otlp.received());
    let r1 = exactly_once_by_key("HEC", &hec_got, &keys);
    let r2 = exactly_once_by_key("OTLP", &otlp_got, &keys);
    let file_got: Vec<custody_tests::siem::Received> = std::fs::read_to_string(&events_file)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            custody_tests::siem::Received {
                seq: v["unmapped"]["custody"]["seq"].as_u64().unwrap(),
                hash: v["unmapped"]["custody"]["hash"].as_str().unwrap().into(),
                event: v.clone(),
                envelope: Value::Null,
            }
        })
        .collect();
    let r3 = exactly_once_by_key("file", &file_got, &keys);
    eprintln!("redelivered after kills: HEC {r1}, OTLP {r2}, file {r3}");

    // The key the receivers index by is the event's own.
    for r in &hec_got {
        assert_eq!(r.event["unmapped"]["custody"]["seq"], r.seq);
        assert_eq!(r.event["unmapped"]["custody"]["hash"], r.hash.as_str());
        assert_eq!(r.event["unmapped"]["custody"]["ledger"], ledger.as_str());
        assert_eq!(r.envelope["sourcetype"], "custody:ocsf");
    }
    // Every OCSF event the receivers got is valid OCSF.
    let mut unique: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in hec_got.iter().chain(&otlp_got) {
        if seen.insert((r.seq, r.hash.clone(), r.event["class_uid"].clone())) {
            unique.push(r.event.clone());
        }
    }
    validate_ocsf(&unique);
    let classes: std::collections::BTreeSet<u64> = unique
        .iter()
        .filter_map(|e| e["class_uid"].as_u64())
        .collect();
    eprintln!("OCSF classes delivered: {classes:?}");
    for class in [1007, 3003, 6003] {
        assert!(classes.contains(&class), "no event of class {class}");
    }
    // No secret reaches the SIEM: the HEC token and the session's secrets.
    let everything = serde_json::to_string(&unique).unwrap();
    assert!(!everything.contains(hec_token));
    assert!(!everything.contains(s.ingest_token()));

    // A responder starting from a SIEM event proves it against the ledger.
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v}");
    let bundle = h.path().join("bundle");
    let pick = |action: &str| {
        hec_got
            .iter()
            .find(|r| r.event["unmapped"]["custody"]["action"] == action)
            .unwrap_or_else(|| panic!("no {action} event received"))
            .clone()
    };
    for action in [
        "tool.call",
        "session.start",
        "credential.mint",
        "request.denied",
    ] {
        let r = pick(action);
        let proof = h.path().join(format!("{action}.proof"));
        let o = custody_tests::run(
            "custody-verify",
            &[
                "prove",
                bundle.to_str().unwrap(),
                "--seq",
                &r.seq.to_string(),
                "--out",
                proof.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let check = |name: &str, event: &Value| {
            let f = h.path().join(name);
            std::fs::write(&f, serde_json::to_vec_pretty(event).unwrap()).unwrap();
            custody_tests::run(
                "custody-verify",
                &[
                    "check-event",
                    f.to_str().unwrap(),
                    "--proof",
                    proof.to_str().unwrap(),
                    "--ledger-key",
                    &ledger,
                ],
            )
        };
        let o = check("event.json", &r.event);
        assert_eq!(o.status.code(), Some(0), "{action}: {}", text(&o));
        // The whole HEC envelope as Splunk stores it, and a SIEM's own
        // field added: still the ledger's entry (the addition is named).
        let mut env = r.envelope.clone();
        env["event"]["splunk_added"] = json!("x");
        let o = check("envelope.json", &env);
        assert_eq!(o.status.code(), Some(0), "{action}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("/splunk_added"));
        // Edited in the SIEM: not the ledger's entry.
        for (path, value) in [
            ("/time", json!(0)),
            ("/message", json!("nothing happened")),
            (
                "/unmapped/custody/entry/event/actor",
                json!(h.admin.did().as_str()),
            ),
            ("/unmapped/custody/hash", json!("00".repeat(32))),
            ("/unmapped/custody/seq", json!(r.seq + 1)),
        ] {
            let mut edited = r.event.clone();
            *edited.pointer_mut(path).unwrap() = value;
            let o = check("edited.json", &edited);
            assert_eq!(o.status.code(), Some(1), "{action} {path}: {}", text(&o));
        }
        let o = check("garbage.json", &json!(["not", "an", "event"]));
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_jsonl_is_entries_jsonl_and_a_resumed_tail_adds_nothing() {
    let h = Harness::start().await;
    let c = h.client();
    let (s, _) = h.session("codex", "ci", "agent").await;
    for i in 0..12 {
        tool_call(&c, &s, "exec_command", i).await;
    }
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v}");
    let out = h.path().join("entries.out");
    let state = h.path().join("state.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "tail",
            "--broker",
            &h.url,
            "--format",
            "jsonl",
            "--file",
            out.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(custody_tests::bin("custody"));
        cmd.args(&args)
            .arg("--as")
            .arg(h.path().join("auditor.key"));
        cmd.output().unwrap()
    };
    let o = run(&["--page", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    let want = std::fs::read(h.path().join("bundle/entries.jsonl")).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
    // Resumed with nothing new: nothing delivered twice.
    let o = run(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), want);
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["next"], want.split(|b| *b == b'\n').count() as u64 - 1);
    // --since and --state do not mix; a non-auditor is refused.
    let o = run(&["--since", "3"]);
    assert!(!o.status.success());
    let o = Command::new(custody_tests::bin("custody"))
        .args(["tail", "--broker", &h.url, "--as"])
        .arg(h.path().join("developer.key"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not_auditor"));
    // --since: from that seq on, inclusive, to stdout.
    let o = Command::new(custody_tests::bin("custody"))
        .args([
            "tail", "--broker", &h.url, "--format", "jsonl", "--since", "4", "--as",
        ])
        .arg(h.path().join("auditor.key"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&[u8]> = want
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let got: Vec<&[u8]> = o
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // The export's entries from 4 on, then what was recorded since: the
    // developer's refused read.
    assert_eq!(got[..lines.len() - 4], lines[4..]);
    let since: Vec<Value> = got[lines.len() - 4..]
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(
        !since.is_empty()
            && since
                .iter()
                .all(|e| e["event"]["action"] == "request.denied"),
        "{since:?}"
    );
}

/// One synthetic entry per row of the mapping, by a real key of the right
/// kind, to check the table row by row and against the OCSF schema without
/// a broker.
fn synthetic_entries(ledger: &KeyPair) -> Vec<(Vec<u8>, &'static str, &'static [&'static str])> {
    let human = KeyPair::generate();
    let session = KeyPair::generate();
    let now = time::OffsetDateTime::now_utc();
    let delegation = Delegation::new(
        human.did(),
        session.did(),
        "claude-code".into(),
        vec!["repo-read".into(), "ci-read".into()],
        "chat".into(),
        now,
        now + time::Duration::hours(1),
    )
    .unwrap();
    let jws = delegation.issue(&human).unwrap();
    let sid = SessionId::new(delegation.id.clone()).unwrap();
    let by_session = |action: &str, details: Value| {
        let mut e = Event::new(
            session.did(),
            ActorKind::Agent,
            ActionType::new(action).unwrap(),
        );
        e.session = Some(sid.clone());
        e.on_behalf_of = Some(human.did());
        e.context = Some(Context::new("chat").unwrap());
        e.details = details.as_object().unwrap().clone();
        e.sign(&session).unwrap()
    };
    let by_ledger = |action: &str, details: Value, about: bool| {
        let mut e = Event::new(
            ledger.did(),
            ActorKind::Service,
            ActionType::new(action).unwrap(),
        );
        if about {
            e.session = Some(sid.clone());
            e.on_behalf_of = Some(human.did());
            e.context = Some(Context::new("chat").unwrap());
        }
        e.details = details.as_object().unwrap().clone();
        e.sign(ledger).unwrap()
    };
    let by_human = |action: &str, details: Value| {
        let mut e = Event::new(
            human.did(),
            ActorKind::Human,
            ActionType::new(action).unwrap(),
        );
        e.details = details.as_object().unwrap().clone();
        e.sign(&human).unwrap()
    };
    let sd = session.did().to_string();
    let tool = |t: &str, id: &str| json!({"tool": t, "tool_name": t, "tool_use_id": id, "cwd": "/w", "agent": "claude-code"});
    let events = vec![
        (
            by_ledger(
                "ledger.genesis",
                json!({"admins": [human.did()], "delegators": [human.did()]}),
                false,
            ),
            "ledger.genesis",
            &["6003", "1"][..],
        ),
        (
            by_session(
                "session.start",
                json!({"delegation": jws, "agent": "claude-code"}),
            ),
            "session.start",
            &["3003", "1"][..],
        ),
        (
            by_session("tool.call", tool("Bash", "t1")),
            "tool.call shell",
            &["1007", "1"][..],
        ),
        (
            by_session("tool.result", json!({"tool": "Bash", "ok": false})),
            "tool.result shell",
            &["1007", "2"][..],
        ),
        (
            by_session("tool.call", tool("Read", "t2")),
            "tool.call read",
            &["6003", "2"][..],
        ),
        (
            by_session("tool.result", json!({"tool": "Edit", "ok": true})),
            "tool.result write",
            &["6003", "3"][..],
        ),
        (
            by_session("tool.call", tool("WebFetch", "t3")),
            "tool.call other",
            &["6003", "99"][..],
        ),
        (
            by_session("credential.request", json!({"scope": "repo-read"})),
            "credential.request",
            &["6003", "99"][..],
        ),
        (
            by_ledger(
                "credential.mint",
                json!({"subject": sd, "scope": "repo-read", "policies": ["repo-read"], "ttl_seconds": 60, "accessor_sha256": "ab".repeat(32)}),
                true,
            ),
            "credential.mint",
            &["3003", "1"][..],
        ),
        (
            by_ledger(
                "policy.decision",
                json!({"session_did": sd, "tool": "Bash", "decision": "deny", "policies": ["deny-pipe-to-shell"], "resource_kind": "command"}),
                true,
            ),
            "policy.decision",
            &["6003", "99"][..],
        ),
        (
            by_ledger(
                "request.denied",
                json!({"actor": sd, "attempted_action": "trust.update", "code": "ledger_key_only", "reason": "only the ledger key"}),
                false,
            ),
            "request.denied",
            &["6003", "99"][..],
        ),
        (
            by_human("approval", json!({"decision": "approve", "session": sd})),
            "approval",
            &["6003", "99"][..],
        ),
        (
            by_human(
                "identity.revoke",
                json!({"subject": sd, "revocation": "x.y.z"}),
            ),
            "identity.revoke",
            &["3001", "5"][..],
        ),
        (
            by_ledger(
                "credential.revoke",
                json!({"subject": sd, "accessor_sha256": ["cd".repeat(32)], "tokens_revoked": 1}),
                false,
            ),
            "credential.revoke",
            &["3005", "2"][..],
        ),
        (
            by_ledger(
                "trust.update",
                json!({"admins": [human.did()], "delegators": []}),
                false,
            ),
            "trust.update",
            &["6003", "3"][..],
        ),
        (
            by_ledger(
                "payload.redact",
                json!({"digest": "ef".repeat(32), "reason": "gdpr"}),
                false,
            ),
            "payload.redact",
            &["6003", "4"][..],
        ),
        (
            by_ledger(
                "telemetry.tool_decision",
                json!({"session_did": sd, "attested_by": "broker", "event": "tool_decision"}),
                true,
            ),
            "telemetry",
            &["6003", "99"][..],
        ),
        (
            by_session("session.end", json!({})),
            "session.end",
            &["6003", "99"][..],
        ),
    ];
    let mut prev = EntryHash::ZERO;
    let mut out = Vec::new();
    for (i, (signed, name, want)) in events.into_iter().enumerate() {
        let line = Entry::new(Seq(i as u64), prev, Timestamp::now(), signed)
            .to_line()
            .unwrap();
        prev = entry_hash(&line);
        out.push((line, name, want));
    }
    out
}

#[test]
fn the_ocsf_mapping_is_the_documented_table_and_every_row_is_valid_ocsf() {
    // The table in docs/SIEM.md is the code's.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SIEM.md"))
            .expect("docs/SIEM.md");
    let table = custody_siem::ocsf::table_markdown();
    assert!(
        doc.contains(&table),
        "docs/SIEM.md does not carry the mapping table; it is:\n{table}"
    );
    // Row by row: the class and activity the table names, valid OCSF.
    let ledger = KeyPair::generate();
    let did: Did = ledger.did();
    let mut events = Vec::new();
    let mut rows_used = std::collections::BTreeSet::new();
    for (line, name, want) in synthetic_entries(&ledger) {
        let v = custody_siem::to_ocsf(&line, &did, 100).unwrap();
        assert_eq!(
            (v["class_uid"].to_string(), v["activity_id"].to_string()),
            (want[0].to_string(), want[1].to_string()),
            "{name}: {v:#}"
        );
        let e = Entry::parse_line(&line).unwrap();
        let group = e
            .event
            .details
            .get("tool")
            .and_then(Value::as_str)
            .map(custody_wire::tool::tool_group)
            .unwrap_or("other");
        let row = custody_siem::ocsf::row_for(e.event.action.as_str(), group);
        assert_eq!(v["class_uid"], row.class.uid);
        assert_eq!(v["class_name"], row.class.name);
        assert_eq!(v["activity_name"], row.activity_name);
        assert_eq!(v["type_uid"], row.class.uid * 100 + row.activity_id);
        assert_eq!(v.get("actor").is_some(), row.class.has_actor, "{name}");
        rows_used.insert(row as *const _ as usize);
        // What every event carries to be proven.
        let p = custody_siem::provenance(&v).unwrap();
        assert_eq!(
            (p.seq, p.hash.as_str(), p.tree_size),
            (e.seq.0, entry_hash(&line).to_hex().as_str(), 100)
        );
        assert_eq!(v["metadata"]["uid"], p.hash.as_str());
        assert_eq!(v["time"], e.received_at.unix_millis() as i64);
        // The same entry always gives the same event.
        assert_eq!(custody_siem::to_ocsf(&line, &did, 100).unwrap(), v);
        events.push(v);
    }
    assert_eq!(
        rows_used.len(),
        custody_siem::MAPPING.len(),
        "a row of the table was never exercised"
    );
    // The fields the table promises.
    let by = |name: &str| {
        events
            .iter()
            .find(|e| e["unmapped"]["custody"]["action"] == name)
            .unwrap()
    };
    let start = by("session.start");
    assert_eq!(start["privileges"], json!(["repo-read", "ci-read"]));
    assert!(
        start["session"]["expiration_time"].as_i64().unwrap()
            > start["session"]["created_time"].as_i64().unwrap()
    );
    let denied = by("policy.decision");
    assert_eq!(denied["status_id"], 2);
    assert_eq!(
        denied["actor"]["authorizations"][0]["policy"]["name"],
        "deny-pipe-to-shell"
    );
    assert_eq!(denied["actor"]["user"]["type_id"], 99);
    let refused = by("request.denied");
    assert_eq!(refused["api"]["operation"], "trust.update");
    assert_eq!(refused["api"]["response"]["error"], "ledger_key_only");
    let shell = &events[2];
    assert_eq!(shell["process"]["name"], "Bash");
    assert_eq!(
        shell["actor"]["session"]["issuer"],
        shell["unmapped"]["custody"]["on_behalf_of"]
    );
    assert_eq!(shell["unmapped"]["custody"]["context"], "chat");
    validate_ocsf(&events);
}
