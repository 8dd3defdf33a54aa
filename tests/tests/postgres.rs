//! Three brokers on one PostgreSQL ledger (a real cluster started by the
//! test, a real OpenBao, real `custody serve` processes on loopback),
//! clients spread over them: one contiguous, verifying ledger; a session
//! that moves between brokers; a revocation on one broker that holds on all;
//! nonces that cannot be replayed on another broker; an embedded ledger
//! migrated byte for byte; a person's approval and the policy's hold that
//! a broker started after them still knows.

use std::time::Duration;

use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_identity::Revocation;
use custody_ledger::{actions, Approval, Entry};
use custody_tests::call_claiming;
use custody_tests::cluster::{eventually, Cluster};
use custody_wire::api::{FeedQuery, PolicyCheck, MAX_FEED_WAIT_SECS, PATH_STATUS};
use custody_wire::signing;

fn api_code(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { code, .. }) => Some(code.clone()),
        _ => None,
    }
}

async fn log(c: &Client, s: &SessionFile, n: u64) -> anyhow::Result<u64> {
    let mut ev = session_event(s, actions::TOOL_CALL)?;
    ev.details.insert("tool".into(), "Bash".into());
    ev.details.insert("n".into(), n.into());
    Ok(c.log(s, ev).await?.seq)
}

fn check() -> PolicyCheck {
    PolicyCheck {
        tool: "Bash".into(),
        input: serde_json::json!({"command": "cargo test"}),
        cwd: "/work".into(),
        branch: "main".into(),
        call_id: None,
        record: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_on_three_brokers_make_one_verifying_ledger() {
    let c = Cluster::start(3).await;
    const SESSIONS: usize = 12;
    const EACH: u64 = 25;
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let s = c.session(i % 3, "chat").await;
        let clients: Vec<Client> = (0..3).map(|b| c.client(b)).collect();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..EACH {
                // Each session's appends go round the brokers.
                let b = (i + n as usize) % 3;
                seqs.push(log(&clients[b], &s, n).await.expect("append"));
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    let before = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), before, "two appends were given the same seq");

    let (code, v) = c.export_and_verify(1, "bundle-1").await;
    assert_eq!(code, 0, "{v:#}");
    let size = v["tree_size"].as_u64().expect("tree_size");
    // Genesis, the session starts, the appends (and whatever the brokers
    // recorded besides): every acknowledged seq is in the one ledger.
    assert!(acked.iter().all(|s| *s < size));
    assert!(size > (SESSIONS as u64) * (EACH + 1));
    // Another broker exports the same ledger: the same entries, byte for byte.
    let (code, v2) = c.export_and_verify(2, "bundle-2").await;
    assert_eq!(code, 0, "{v2:#}");
    let a = std::fs::read(c.path().join("bundle-1/entries.jsonl")).unwrap();
    let b = std::fs::read(c.path().join("bundle-2/entries.jsonl")).unwrap();
    assert!(
        b.starts_with(&a),
        "broker 2's export does not extend broker 1's"
    );
    // The URL's password is in no log.
    assert!(!c.logs().contains(c.pg.password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_started_on_one_broker_mints_on_another_and_logs_on_a_third() {
    let c = Cluster::start(3).await;
    let s = c.session(0, "chat").await;
    let minted = c.client(1).mint(&s, "repo-read").await.expect("mint on B");
    let (status, data) = c
        .bao
        .read_secret(&minted.token, "repo/github")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(data.is_some());
    let seq = log(&c.client(2), &s, 1).await.expect("log on C");
    assert!(seq > minted.mint_seq);
    let (code, v) = c.export_and_verify(0, "bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

/// A session is usable on every broker as soon as its start is
/// acknowledged on one: a broker that does not know a caller catches up
/// with the shared ledger before it judges it. Before, a policy check or a
/// mint on B right after the start on A was refused until B's notification
/// or periodic catch-up came; on a quiet machine the notification usually
/// wins that race, so this passes without the catch-up too, and fails only
/// under load (the pg benchmark's `pg_session_visible_p99_ms` measured the
/// window at up to 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_is_usable_on_another_broker_as_soon_as_it_starts() {
    let c = Cluster::start(2).await;
    for i in 0..20 {
        let s = c.session(0, "chat").await;
        let d = c
            .client(1)
            .policy_check(&s, &check())
            .await
            .unwrap_or_else(|e| panic!("session {i}, its first request on B: {e:#}"));
        assert!(d.allow);
        log(&c.client(1), &s, 0).await.expect("log on B");
    }
    let (code, v) = c.export_and_verify(1, "bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

/// A call held on one broker is listed on another, as `custody approve`
/// needs behind a load balancer: rebuilt from the ledger (the decision and
/// the action's canonical form kept as its payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_held_on_one_broker_is_listed_on_another() {
    let c = Cluster::start(2).await;
    let s = c.session(0, "chat").await;
    let held = c.client(0).policy_check(&s, &destroy("/w")).await.unwrap();
    assert_eq!(held.decision, "approval_required");
    // Listed on B without asking for it (what `custody approve` shows)...
    let listed = |list: &custody_wire::api::PendingList| {
        list.held.iter().any(|h| {
            h.decision_seq == held.seq && Some(&h.action_digest) == held.action_digest.as_ref()
        })
    };
    let all = c.client(1).pending(&c.developer, None).await.unwrap();
    assert!(listed(&all), "{all:?}");
    let by_admin = c.client(1).pending(&c.admin, None).await.unwrap();
    assert!(
        listed(&by_admin),
        "an admin sees every held call: {by_admin:?}"
    );
    // ...and asked for by its seq.
    let list = c
        .client(1)
        .pending(&c.developer, Some(held.seq))
        .await
        .expect("B lists the call A held");
    let a = &list.held[0];
    assert_eq!(a.decision_seq, held.seq);
    assert_eq!(a.input["command"], "terraform destroy -auto-approve");
    assert_eq!(a.cwd, "/w");
    assert_eq!(Some(&a.action_digest), held.action_digest.as_ref());
    assert_eq!(a.session_did, s.did.to_string());
    assert_eq!(a.delegator, c.developer.did().to_string());
    assert_eq!(
        (a.requires.as_str(), a.state.as_str()),
        ("human", "pending")
    );
    // An entry that held nothing is no held call, there or anywhere.
    let e = c
        .client(1)
        .pending(&c.developer, Some(0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("no_such_entry"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_broker_holds_on_every_broker() {
    let c = Cluster::start(3).await;
    let s = c.session(0, "chat").await;
    let other = c.session(2, "chat").await;
    // Tokens minted through every broker, and a decision cached on C.
    let mut tokens = Vec::new();
    for b in 0..3 {
        tokens.push(c.client(b).mint(&s, "repo-read").await.unwrap().token);
    }
    c.client(2)
        .policy_check(&s, &check())
        .await
        .expect("allowed before");
    let did = s.did.clone();

    // How long a revocation on A takes to reach C's cached decisions
    // (LISTEN/NOTIFY; the periodic catch-up bounds it if a notification is
    // lost): printed, not asserted.
    let probe = c.session(1, "chat").await;
    let cc = c.client(2);
    cc.policy_check(&probe, &check())
        .await
        .expect("allowed before");
    c.client(0)
        .revoke(&c.admin, &probe.did, "probe")
        .await
        .expect("revoke the probe on A");
    let t0 = std::time::Instant::now();
    let followed = eventually(Duration::from_secs(10), || async {
        cc.policy_check(&probe, &check()).await.is_err()
    })
    .await;
    assert!(
        followed,
        "broker C still allows the revoked probe's tool calls"
    );
    eprintln!(
        "revocation on A reached C's cached decisions {:?} after A answered",
        t0.elapsed()
    );

    let r = c
        .client(0)
        .revoke(&c.admin, &did, "kill switch")
        .await
        .expect("revoke on A");
    // At least one token each, or (with `[vault] parent_policy`) one parent
    // per broker; what counts is that every token is dead (below).
    assert!(r.tokens_revoked + r.parents_revoked >= 3, "{r:?}");
    // B's next append and C's next mint refuse, at once: the head lock
    // serialized them after the revocation.
    let e = log(&c.client(1), &s, 1).await.unwrap_err();
    assert_eq!(api_code(&e).as_deref(), Some("revoked"), "{e}");
    let e = c.client(2).mint(&s, "repo-read").await.unwrap_err();
    assert_eq!(api_code(&e).as_deref(), Some("revoked"), "{e}");
    // Every token is dead in OpenBao, whichever broker minted it.
    for t in &tokens {
        assert!(c.bao.lookup(t).await.unwrap().is_err(), "a token survived");
    }
    // C's cached decisions catch up too (LISTEN/NOTIFY, or its periodic
    // catch-up): the policy check refuses.
    let cc = c.client(2);
    let refused = eventually(Duration::from_secs(10), || async {
        cc.policy_check(&s, &check()).await.is_err()
    })
    .await;
    assert!(
        refused,
        "broker C still allows the revoked session's tool calls"
    );
    // Another session is untouched.
    log(&c.client(1), &other, 1)
        .await
        .expect("others keep working");
    let (code, v) = c.export_and_verify(1, "bundle").await;
    assert_eq!(code, 0, "{v:#}");
}

/// An agent session holding only its own key, started on A, sends a
/// revocation of the admin it signed itself to B — after C appended, so B
/// admits it in a batch that first catches up with another broker's
/// entries. Refused (`not_admin`) on every broker; nothing of it is in the
/// ledger; the admin still revokes the session, on C.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_session_cannot_revoke_the_admin_through_any_broker() {
    let c = Cluster::start(3).await;
    let s = c.session(0, "chat").await;
    let bystander = c.session(2, "chat").await;
    let admin = c.admin.did();
    for b in 0..3 {
        // Another broker's entry first: the hostile batch follows it.
        log(&c.client((b + 2) % 3), &bystander, b as u64)
            .await
            .unwrap();
        let revocation = Revocation::new(
            s.did.clone(),
            admin.clone(),
            "pwned".into(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap()
        .issue(&s.key().unwrap())
        .unwrap();
        let mut ev = session_event(&s, actions::IDENTITY_REVOKE).unwrap();
        ev.details.insert("revocation".into(), revocation.into());
        ev.details.insert("subject".into(), admin.as_str().into());
        let e = c
            .client(b)
            .log(&s, ev)
            .await
            .expect_err("the session revoked the admin");
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api { status, code, .. }) => {
                assert_eq!((*status, code.as_str()), (403, "not_admin"), "broker {b}")
            }
            _ => panic!("broker {b}: {e}"),
        }
    }
    // The admin is not revoked anywhere: it revokes the session on C, and
    // the session is refused on A.
    c.client(2)
        .revoke(&c.admin, &s.did, "hostile session")
        .await
        .expect("the admin can still revoke");
    let e = log(&c.client(0), &s, 9).await.unwrap_err();
    assert_eq!(api_code(&e).as_deref(), Some("revoked"), "{e}");
    let (code, v) = c.export_and_verify(1, "hostile").await;
    assert_eq!(code, 0, "{v:#}");
    let lines = std::fs::read_to_string(c.path().join("hostile/entries.jsonl")).unwrap();
    let revokes: Vec<Entry> = lines
        .lines()
        .map(|l| Entry::parse_line(l.as_bytes()).unwrap())
        .filter(|e| e.event.action.as_str() == actions::IDENTITY_REVOKE)
        .collect();
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0].event.actor, admin, "only the admin's revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_replayed_on_another_broker_is_refused() {
    let c = Cluster::start(3).await;
    let s = c.session(0, "chat").await;
    let key = s.key().unwrap();
    let mut ev = session_event(&s, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), "Bash".into());
    let signed = ev.sign(&key).unwrap();
    c.client(0)
        .log_as(&key, signed.clone(), None)
        .await
        .expect("first time");
    // The same signed event on B: its nonce is in the ledger.
    let e = c.client(1).log_as(&key, signed, None).await.unwrap_err();
    match &e {
        ClientError::Api { code, .. } => assert_eq!(code, "replayed_nonce", "{e}"),
        other => panic!("{other}"),
    }

    // A signed request captured on its way to A, replayed to C.
    let body = serde_json::to_vec(&serde_json::json!({})).unwrap();
    let h = signing::sign_request(&key, "POST", PATH_STATUS, &body);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |url: String| {
        http.post(format!("{url}{PATH_STATUS}"))
            .header("content-type", "application/json")
            .header(signing::HEADER_DID, h.did.clone())
            .header(signing::HEADER_TIMESTAMP, h.timestamp.clone())
            .header(signing::HEADER_NONCE, h.nonce.clone())
            .header(signing::HEADER_SIGNATURE, h.signature.clone())
            .body(body.clone())
            .send()
    };
    assert_eq!(send(c.url(0)).await.unwrap().status(), 200);
    let again = send(c.url(2)).await.unwrap();
    assert_eq!(again.status(), 401);
    let text = again.text().await.unwrap();
    assert!(text.contains("replayed_request"), "{text}");
}

/// A signed request as captured on the wire: path, body, headers.
struct Captured {
    path: &'static str,
    body: Vec<u8>,
    headers: signing::SignedHeaders,
}

impl Captured {
    fn new(key: &custody_identity::KeyPair, path: &'static str, body: serde_json::Value) -> Self {
        let body = serde_json::to_vec(&body).unwrap();
        let headers = signing::sign_request(key, "POST", path, &body);
        Captured {
            path,
            body,
            headers,
        }
    }

    /// `POST /v1/events` of one event, signed by `key`.
    fn event(key: &custody_identity::KeyPair, event: custody_ledger::SignedEvent) -> Self {
        let body = custody_wire::api::AppendEvent {
            event,
            payload: None,
        };
        Self::new(
            key,
            custody_wire::api::PATH_EVENTS,
            serde_json::to_value(body).unwrap(),
        )
    }

    /// Sends it, byte for byte, to `url`: the status and the error code.
    async fn send(&self, url: &str) -> (u16, Option<String>) {
        let h = &self.headers;
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{url}{}", self.path))
            .header("content-type", "application/json")
            .header(signing::HEADER_DID, h.did.clone())
            .header(signing::HEADER_TIMESTAMP, h.timestamp.clone())
            .header(signing::HEADER_NONCE, h.nonce.clone())
            .header(signing::HEADER_SIGNATURE, h.signature.clone())
            .body(self.body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        (status, v["error"].as_str().map(String::from))
    }
}

/// Brokers keep an append request's nonce in the transaction that
/// appends its events (one transaction per request). A signed append
/// captured on its way to one broker and sent again — to another broker,
/// to the same one, to two at once — is refused as a replay and appends and
/// records nothing, whether the first was accepted, refused by the handler
/// (another actor's event) or refused by the rules (a session revoking the
/// admin), single or batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_request_replayed_to_any_broker_appends_and_records_nothing() {
    use custody_wire::api::{AppendBatch, PATH_EVENTS_BATCH};
    let c = Cluster::start(3).await;
    let s = c.session(0, "chat").await;
    let key = s.key().unwrap();
    let event = |n: u64| {
        let mut ev = session_event(&s, actions::TOOL_CALL).unwrap();
        ev.details.insert("n".into(), n.into());
        ev.sign(&key).unwrap()
    };
    let replayed = (401, Some("replayed_request".to_string()));

    // Accepted on A; refused everywhere after.
    let one = event(1);
    let accepted = Captured::event(&key, one.clone());
    assert_eq!(accepted.send(&c.url(0)).await, (200, None));
    for b in [1, 2, 0] {
        assert_eq!(accepted.send(&c.url(b)).await, replayed, "broker {b}");
    }

    // Refused by the handler (the session's event, signed by the
    // developer), recorded once.
    let other = Captured::event(&c.developer, event(2));
    assert_eq!(
        other.send(&c.url(0)).await,
        (403, Some("did_mismatch".into()))
    );
    assert_eq!(other.send(&c.url(1)).await, replayed);

    // Refused by the rules in the sequencer's transaction, recorded once.
    let revocation = Revocation::new(
        s.did.clone(),
        c.admin.did(),
        "pwned".into(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .issue(&key)
    .unwrap();
    let mut ev = session_event(&s, actions::IDENTITY_REVOKE).unwrap();
    ev.details.insert("revocation".into(), revocation.into());
    ev.details
        .insert("subject".into(), c.admin.did().as_str().into());
    let hostile = Captured::event(&key, ev.sign(&key).unwrap());
    assert_eq!(
        hostile.send(&c.url(1)).await,
        (403, Some("not_admin".into()))
    );
    assert_eq!(hostile.send(&c.url(2)).await, replayed);
    assert_eq!(hostile.send(&c.url(1)).await, replayed);

    // A batch, accepted on C, replayed on A.
    let (three, four) = (event(3), event(4));
    let batch = Captured::new(
        &key,
        PATH_EVENTS_BATCH,
        serde_json::to_value(AppendBatch {
            events: vec![three.clone(), four.clone()],
        })
        .unwrap(),
    );
    assert_eq!(batch.send(&c.url(2)).await, (200, None));
    assert_eq!(batch.send(&c.url(0)).await, replayed);

    // Sent to A and B at once: one of them appends it.
    let five = event(5);
    let raced = Captured::event(&key, five.clone());
    let (a, b) = (c.url(0), c.url(1));
    let (x, y) = tokio::join!(raced.send(&a), raced.send(&b));
    let mut answers = vec![x, y];
    answers.sort();
    assert_eq!(answers, vec![(200, None), replayed.clone()]);

    // The ledger: each accepted event once, each refusal recorded once.
    let (code, v) = c.export_and_verify(2, "replays").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = custody_tests::read_entries(&c.path().join("replays"));
    for (ev, what) in [
        (&one, "one"),
        (&three, "three"),
        (&four, "four"),
        (&five, "five"),
    ] {
        let n = entries
            .iter()
            .filter(|e| e.event.nonce == ev.event.nonce)
            .count();
        assert_eq!(n, 1, "event {what} is in the ledger {n} times");
    }
    let denied = |code: &str| {
        entries
            .iter()
            .filter(|e| {
                e.event.action.as_str() == actions::REQUEST_DENIED
                    && e.event.details.get("code").and_then(|c| c.as_str()) == Some(code)
            })
            .count()
    };
    assert_eq!(denied("did_mismatch"), 1);
    assert_eq!(denied("not_admin"), 1);
    assert_eq!(denied("replayed_request"), 0);
    assert!(entries
        .iter()
        .all(|e| e.event.action.as_str() != actions::IDENTITY_REVOKE));

    // The admin is untouched: it revokes the session on B, and the
    // session's next append is refused on C.
    c.client(1)
        .revoke(&c.admin, &s.did, "replayed hostile requests")
        .await
        .expect("the admin can still revoke");
    let e = log(&c.client(2), &s, 6).await.unwrap_err();
    assert_eq!(api_code(&e).as_deref(), Some("revoked"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_follower_on_one_broker_wakes_for_an_entry_appended_on_another() {
    let c = Cluster::start(2).await;
    let s = c.session(0, "chat").await;
    log(&c.client(0), &s, 0).await.expect("log on A");
    let size = c.client(0).health().await.unwrap().entries;
    let b = c.client(1);
    let caught_up = eventually(Duration::from_secs(10), || async {
        b.health().await.is_ok_and(|h| h.entries >= size)
    })
    .await;
    assert!(caught_up, "B never learned of A's entries");
    // The admin follows the feed on B from the head, with the longest wait.
    let follower = {
        let (b, admin) = (c.client(1), c.admin.clone());
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let q = FeedQuery {
                after: Some(size - 1),
                limit: None,
                wait: Some(MAX_FEED_WAIT_SECS),
            };
            (b.feed(&admin, &q).await, t0.elapsed())
        })
    };
    // Let the follower's request reach B and wait there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq = log(&c.client(0), &s, 1).await.expect("log on A");
    let (page, took) = follower.await.unwrap();
    let page = page.expect("the admin follows the feed on B");
    assert!(
        page.entries.iter().any(|e| e.seq == seq),
        "B's page lacks the entry appended on A: {:?}",
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert!(
        took < Duration::from_secs(MAX_FEED_WAIT_SECS),
        "the follower on B only returned at the long-poll timeout"
    );
}

/// `terraform destroy`, which the default policy holds for a person.
fn destroy(cwd: &str) -> PolicyCheck {
    PolicyCheck {
        tool: "Bash".into(),
        input: serde_json::json!({"command": "terraform destroy -auto-approve"}),
        cwd: cwd.into(),
        branch: "main".into(),
        call_id: Some("toolu_01".into()),
        record: None,
    }
}

/// The `tool.call`s in an export that name the action `digest`.
fn calls_of(c: &Cluster, bundle: &str, digest: &str) -> Vec<custody_ledger::Entry> {
    custody_tests::read_entries(&c.path().join(bundle))
        .into_iter()
        .filter(|e| {
            e.event.action.as_str() == actions::TOOL_CALL
                && e.event
                    .details
                    .get("action_digest")
                    .and_then(|d| d.as_str())
                    == Some(digest)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_given_while_a_broker_was_down_lets_the_call_run_there_once() {
    let mut c = Cluster::start(2).await;
    let s = c.session(0, "chat").await;
    let held = c
        .client(0)
        .policy_check(&s, &destroy("/work"))
        .await
        .unwrap();
    assert_eq!(held.decision, "approval_required", "{held:?}");
    let digest = held.action_digest.clone().unwrap();

    // B is down while the delegator approves on A, with their own key.
    c.kill_broker(1);
    let list = c
        .client(0)
        .pending(&c.developer, Some(held.seq))
        .await
        .unwrap();
    let ev = custody_agent::approve::approval_event(
        &c.developer,
        &list.held[0],
        true,
        Duration::from_secs(600),
        false,
        None,
    )
    .unwrap();
    let approval = c
        .client(0)
        .submit_approval(&c.developer, ev.sign(&c.developer).unwrap())
        .await
        .unwrap();
    c.start_broker(1);

    // The retried identical call, sent to B: allowed, on that approval.
    let d = c
        .client(1)
        .policy_check(&s, &destroy("/work"))
        .await
        .unwrap();
    assert!(d.allow, "B forgot the approval: {d:?}");
    let claim = d.approval.clone().expect("the allow names the approval");
    assert_eq!(claim.seq(), Some(approval.seq));
    let ran = call_claiming(&c.client(1), &s, &digest, claim.clone())
        .await
        .expect("the approved call is appended on B");
    // Once: a second use is refused on either broker, and B holds the call
    // again.
    for b in [1, 0] {
        let e = call_claiming(&c.client(b), &s, &digest, claim.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("approval_unverified"), "{e}");
        assert!(e.to_string().contains("was used by entry"), "{e}");
    }
    let again = c
        .client(1)
        .policy_check(&s, &destroy("/work"))
        .await
        .unwrap();
    assert_eq!(again.decision, "approval_required", "{again:?}");

    let (code, v) = c.export_and_verify(1, "bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let calls = calls_of(&c, "bundle", &digest);
    assert_eq!(calls.len(), 1, "exactly one call ran");
    assert_eq!(calls[0].seq.0, ran.seq);
    assert_eq!(
        calls[0].event.approval.as_ref().and_then(|a| a.seq()),
        Some(approval.seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_survives_a_brokers_restart() {
    let mut c = Cluster::start(2).await;
    let s = c.session(0, "chat").await;
    let held = c
        .client(0)
        .policy_check(&s, &destroy("/srv"))
        .await
        .unwrap();
    assert_eq!(held.decision, "approval_required", "{held:?}");
    let digest = held.action_digest.clone().unwrap();
    c.kill_broker(1);
    c.start_broker(1);
    // B, started after the hold, lists it for the person to decide.
    let list = c.client(1).pending(&c.developer, None).await.unwrap();
    assert!(
        list.held.iter().any(|h| h.decision_seq == held.seq),
        "{list:?}"
    );

    // The agent, holding its own key, sends B a call the policy held on A:
    // with no approval, with a forged one, with none behind it.
    for (approval, code) in [
        (Approval::None, "human_approval_required"),
        (
            Approval::Human {
                approver: c.developer.did(),
                seq: Some(held.seq),
            },
            "approval_unverified",
        ),
        (
            Approval::Human {
                approver: c.developer.did(),
                seq: None,
            },
            "approval_unverified",
        ),
        (
            Approval::Policy {
                policy: held.policies[0].clone(),
                seq: Some(held.seq),
            },
            "human_approval_required",
        ),
    ] {
        let e = call_claiming(&c.client(1), &s, &digest, approval.clone())
            .await
            .expect_err("B let a held call through");
        assert_eq!(e.code(), Some(code), "{approval:?}: {e}");
    }
    // Nothing of it is stored, and the ledger verifies.
    let (code, v) = c.export_and_verify(1, "bundle").await;
    assert_eq!(code, 0, "{v:#}");
    assert!(calls_of(&c, "bundle", &digest).is_empty());
}
