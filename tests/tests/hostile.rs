//! Hostile clients against the real broker: a real OpenBao dev server, a real
//! `custody serve` process, raw HTTP (requests built and tampered with here) and
//! raw TCP for slow-loris.
//!
//! Every refusal is checked for its status and error code, and for what it left
//! in the ledger: nothing for a 400, 401 or 429; for an authenticated request
//! refused with 403, exactly its `request.denied` record (caller and code), as
//! docs/API.md promises. The bad requests `tests/tests/broker.rs` already covers
//! (unsigned, stale by minutes, replayed request nonce, a random key signing for
//! the developer's DID, 413) are not repeated here.

use std::time::{Duration, Instant};

use custody_agent::client::session_event;
use custody_agent::sessionfile::SessionFile;
use custody_identity::{Did, KeyPair, Signature};
use custody_ledger::{actions, ActionType, ActorKind, Entry, Event, SignedEvent};
use custody_tests::broker::Harness;
use custody_wire::api::{self, AppendBatch, AppendEvent, MintRequest, RevokeRequest};
use custody_wire::signing::{self, SignedHeaders};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Headers = Vec<(&'static str, String)>;

fn as_headers(h: SignedHeaders) -> Headers {
    vec![
        (signing::HEADER_DID, h.did),
        (signing::HEADER_TIMESTAMP, h.timestamp),
        (signing::HEADER_NONCE, h.nonce),
        (signing::HEADER_SIGNATURE, h.signature),
    ]
}

/// A POST to `path` signed by `key`, as the client library signs it.
fn signed(key: &KeyPair, path: &str, body: &[u8]) -> Headers {
    as_headers(signing::sign_request(key, "POST", path, body))
}

/// A POST to `path` signed by `key` with a chosen timestamp.
fn signed_at(key: &KeyPair, path: &str, ts_ms: i64, body: &[u8]) -> Headers {
    let nonce = custody_ledger::Nonce::random().to_hex();
    let sig = key.sign(&signing::signing_input("POST", path, ts_ms, &nonce, body));
    vec![
        (signing::HEADER_DID, key.did().to_string()),
        (signing::HEADER_TIMESTAMP, ts_ms.to_string()),
        (signing::HEADER_NONCE, nonce),
        (signing::HEADER_SIGNATURE, sig.to_base64url()),
    ]
}

fn set(hs: &mut Headers, name: &str, value: String) {
    hs.iter_mut().find(|(k, _)| *k == name).expect("header").1 = value;
}

fn get<'a>(hs: &'a Headers, name: &str) -> &'a str {
    &hs.iter().find(|(k, _)| *k == name).expect("header").1
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends a raw POST; returns the status and the JSON body (Null if none).
async fn post(url: &str, path: &str, hs: &Headers, body: &[u8]) -> (u16, Value) {
    let mut req = http()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json");
    for (k, v) in hs {
        req = req.header(*k, v);
    }
    let r = req.body(body.to_vec()).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Asserts a refusal's status and error code, and that it explains itself.
#[track_caller]
fn refused(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got.0, got.1["error"].as_str()),
        (status, Some(code)),
        "{}",
        got.1
    );
    assert!(
        !got.1["message"].as_str().unwrap_or_default().is_empty(),
        "a refusal says why: {}",
        got.1
    );
}

/// The JSON bytes of a request body.
macro_rules! to_json {
    ($body:expr) => {
        serde_json::to_vec(&$body).unwrap()
    };
}

/// The group order L of Ed25519, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The signature with S replaced by S + L (little-endian addition; S < L < 2^253,
/// so it fits in 32 bytes): the same scalar mod L, which a verifier that does
/// not insist on canonical S accepts as a second valid signature.
fn malleate(sig: &Signature) -> Signature {
    let mut out = *sig;
    let mut carry = 0u16;
    for (s, l) in out.0[32..].iter_mut().zip(L) {
        let v = *s as u16 + l as u16 + carry;
        *s = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// The encodings of the eight points of small order on Ed25519 (the
/// identity, the point of order 2, two of order 4, four of order 8).
const SMALL_ORDER: [&str; 8] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
];

/// `did:key` text for raw key bytes (multicodec 0xed01, base58btc).
fn did_text(point: &[u8]) -> String {
    let mut b = vec![0xed, 0x01];
    b.extend_from_slice(point);
    format!("did:key:z{}", bs58::encode(b).into_string())
}

/// R = the identity point, S = 0. For the identity key, [S]B = R + [k]A holds
/// for every message: a verifier that let that key in would take this as a
/// signature on anything.
fn universal_forgery() -> Signature {
    let mut s = [0u8; 64];
    s[0] = 1;
    Signature(s)
}

async fn ledger_size(h: &Harness) -> u64 {
    h.client().health().await.unwrap().entries
}

/// The entries from `from` on, read through the unauthenticated proof
/// endpoint after an admin has a checkpoint signed that covers them.
async fn entries_since(h: &Harness, from: u64) -> Vec<Entry> {
    let c = h.client();
    c.checkpoint_now(&h.admin).await.unwrap();
    let size = ledger_size(h).await;
    let mut out = Vec::new();
    for seq in from..size {
        let p: api::InclusionProofBody = c
            .get(&format!("{}?seq={seq}", api::PATH_PROOF_INCLUSION))
            .await
            .unwrap();
        out.push(Entry::parse_line(p.entry.as_bytes()).unwrap());
    }
    out
}

fn detail<'a>(e: &'a Entry, key: &str) -> Option<&'a str> {
    e.event.details.get(key).and_then(Value::as_str)
}

/// Asserts that `entries` are exactly `request.denied` records naming these
/// callers and codes, in this order.
#[track_caller]
fn assert_only_denials(entries: &[Entry], want: &[(&Did, &str)]) {
    let got: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e.event.action.to_string(),
                detail(e, "actor").unwrap_or_default().to_string(),
                detail(e, "code").unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(d, c)| {
            (
                actions::REQUEST_DENIED.to_string(),
                d.to_string(),
                c.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
}

/// A session (scope `repo-read`) and its key.
async fn start_session(h: &Harness, context: &str) -> (SessionFile, KeyPair) {
    let name = format!("session-{}", custody_ledger::Nonce::random().to_hex());
    let (s, _) = h.session("claude-code", context, &name).await;
    let key = s.key().unwrap();
    (s, key)
}

fn tool_call(s: &SessionFile, key: &KeyPair) -> SignedEvent {
    let mut e = session_event(s, actions::TOOL_CALL).unwrap();
    e.details.insert("tool".into(), "Bash".into());
    e.sign(key).unwrap()
}

fn credential_request(s: &SessionFile, key: &KeyPair) -> SignedEvent {
    let mut e = session_event(s, "credential.request").unwrap();
    e.details.insert("scope".into(), SCOPE.into());
    e.sign(key).unwrap()
}

fn append_body(e: &SignedEvent) -> Vec<u8> {
    to_json!(AppendEvent {
        event: e.clone(),
        payload: None,
    })
}

fn mint_body(e: &SignedEvent) -> Vec<u8> {
    to_json!(MintRequest { request: e.clone() })
}

/// The scope `Harness::session` delegates, and a secret it may read.
const SCOPE: &str = "repo-read";
const SECRET: &str = "repo/github";

/// How many entries carry this event (by its nonce).
fn count_nonce(entries: &[Entry], e: &SignedEvent) -> usize {
    entries
        .iter()
        .filter(|x| x.event.nonce == e.event.nonce)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_signatures_are_refused_and_store_nothing() {
    let h = Harness::start().await;
    let url = &h.url;
    let (a, key) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;

    // Events whose S was replaced by S + L: appended alone, in a batch, and as
    // a credential request.
    let event = tool_call(&a, &key);
    let mut bad_event = event.clone();
    bad_event.sig = malleate(&event.sig);
    assert_ne!(bad_event.sig, event.sig);
    let b = append_body(&bad_event);
    let r = post(
        url,
        api::PATH_EVENTS,
        &signed(&key, api::PATH_EVENTS, &b),
        &b,
    )
    .await;
    refused(&r, 403, "bad_signature");

    let b = to_json!(AppendBatch {
        events: vec![bad_event.clone()],
    });
    let p = api::PATH_EVENTS_BATCH;
    let (s, v) = post(url, p, &signed(&key, p, &b), &b).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["error"], "bad_signature", "{v}");

    let req = credential_request(&a, &key);
    let mut bad_req = req.clone();
    bad_req.sig = malleate(&req.sig);
    let b = mint_body(&bad_req);
    let r = post(
        url,
        api::PATH_TOKENS,
        &signed(&key, api::PATH_TOKENS, &b),
        &b,
    )
    .await;
    refused(&r, 403, "bad_signature");
    assert!(r.1.get("token").is_none());

    // Nothing but the three refusals is on the record: no event, no mint.
    assert_only_denials(
        &entries_since(&h, before).await,
        &[
            (&a.did, "bad_signature"),
            (&a.did, "bad_signature"),
            (&a.did, "bad_signature"),
        ],
    );

    // The refusals consumed nothing: the canonical originals (same event
    // nonces) are accepted once, and their malleated twins stay refused.
    let before = ledger_size(&h).await;
    let b = append_body(&event);
    let (s, v) = post(
        url,
        api::PATH_EVENTS,
        &signed(&key, api::PATH_EVENTS, &b),
        &b,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let b = mint_body(&req);
    let (s, v) = post(
        url,
        api::PATH_TOKENS,
        &signed(&key, api::PATH_TOKENS, &b),
        &b,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let b = append_body(&bad_event);
    let r = post(
        url,
        api::PATH_EVENTS,
        &signed(&key, api::PATH_EVENTS, &b),
        &b,
    )
    .await;
    refused(&r, 403, "bad_signature");
    let b = mint_body(&bad_req);
    let r = post(
        url,
        api::PATH_TOKENS,
        &signed(&key, api::PATH_TOKENS, &b),
        &b,
    )
    .await;
    refused(&r, 403, "bad_signature");
    let new = entries_since(&h, before).await;
    assert_eq!(count_nonce(&new, &event), 1);
    assert_eq!(count_nonce(&new, &req), 1);
    let mints = new
        .iter()
        .filter(|e| e.event.action.as_str() == actions::CREDENTIAL_MINT)
        .count();
    assert_eq!(mints, 1, "one token for one canonical request");
    assert_only_denials(
        &new[new.len() - 2..],
        &[(&a.did, "bad_signature"), (&a.did, "bad_signature")],
    );

    // The request signature (Custody-Signature) with S + L: 401, nothing stored,
    // and the request nonce is not burnt by the refusal.
    let before = ledger_size(&h).await;
    let e = tool_call(&a, &key);
    let b = append_body(&e);
    let mut hs = signed(&key, api::PATH_EVENTS, &b);
    let good_sig = get(&hs, signing::HEADER_SIGNATURE).to_string();
    let bad_sig = malleate(&Signature::from_base64url(&good_sig).unwrap()).to_base64url();
    set(&mut hs, signing::HEADER_SIGNATURE, bad_sig.clone());
    let r = post(url, api::PATH_EVENTS, &hs, &b).await;
    refused(&r, 401, "bad_signature");
    assert_eq!(ledger_size(&h).await, before);
    set(&mut hs, signing::HEADER_SIGNATURE, good_sig);
    let (s, v) = post(url, api::PATH_EVENTS, &hs, &b).await;
    assert_eq!(s, 200, "{v}");
    // The malleated twin of an accepted request: still a bad signature (not
    // merely a replay), still nothing stored.
    set(&mut hs, signing::HEADER_SIGNATURE, bad_sig);
    let r = post(url, api::PATH_EVENTS, &hs, &b).await;
    refused(&r, 401, "bad_signature");
    let new = entries_since(&h, before).await;
    assert_eq!(new.len(), 1);
    assert_eq!(count_nonce(&new, &e), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_order_keys_are_refused() {
    let h = Harness::start().await;
    let url = &h.url;
    let p = api::PATH_EVENTS;
    let (a, key) = start_session(&h, "chat").await;
    // The encoding is right: it reproduces a real key's DID.
    assert_eq!(did_text(&key.public().to_bytes()), a.did.as_str());
    let before = ledger_size(&h).await;

    for point in SMALL_ORDER {
        let weak = did_text(&hex::decode(point).unwrap());
        // An event of the weak DID, "signed" with the universal forgery: the
        // JSON of a valid session event with actor and signature swapped.
        let mut ev: Value = serde_json::from_slice(&append_body(&tool_call(&a, &key))).unwrap();
        ev["event"]["event"]["actor"] = weak.clone().into();
        ev["event"]["sig"] = universal_forgery().to_base64url().into();
        let b = serde_json::to_vec(&ev).unwrap();

        // In the request header, with the forged signature: 401 bad_did.
        let mut hs = signed(&key, p, &b);
        set(&mut hs, signing::HEADER_DID, weak.clone());
        set(
            &mut hs,
            signing::HEADER_SIGNATURE,
            universal_forgery().to_base64url(),
        );
        let r = post(url, p, &hs, &b).await;
        refused(&r, 401, "bad_did");
        assert!(
            r.1["message"].as_str().unwrap().contains("small-order"),
            "{point}: {}",
            r.1
        );

        // As the event's actor, in a request a real session signed: the body
        // does not parse (400), on every endpoint that takes events.
        let r = post(url, p, &signed(&key, p, &b), &b).await;
        refused(&r, 400, "malformed_json");
        assert!(r.1["message"].as_str().unwrap().contains("small-order"));

        let batch = serde_json::to_vec(&serde_json::json!({"events": [ev["event"]]})).unwrap();
        let pb = api::PATH_EVENTS_BATCH;
        let r = post(url, pb, &signed(&key, pb, &batch), &batch).await;
        refused(&r, 400, "malformed_json");

        let mut m: Value =
            serde_json::from_slice(&mint_body(&credential_request(&a, &key))).unwrap();
        m["request"]["event"]["actor"] = weak.clone().into();
        let m = serde_json::to_vec(&m).unwrap();
        let pt = api::PATH_TOKENS;
        let r = post(url, pt, &signed(&key, pt, &m), &m).await;
        refused(&r, 400, "malformed_json");

        // Nor may it appear as the principal an event acts for.
        let mut ev: Value = serde_json::from_slice(&append_body(&tool_call(&a, &key))).unwrap();
        ev["event"]["event"]["on_behalf_of"] = weak.clone().into();
        let b = serde_json::to_vec(&ev).unwrap();
        let r = post(url, p, &signed(&key, p, &b), &b).await;
        refused(&r, 400, "malformed_json");
    }
    assert_eq!(ledger_size(&h).await, before, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_event_is_refused_and_never_stored_twice() {
    let h = Harness::start().await;
    let url = &h.url;
    let (pe, pt, pb) = (api::PATH_EVENTS, api::PATH_TOKENS, api::PATH_EVENTS_BATCH);
    let (a, ka) = start_session(&h, "chat").await;
    let (b, kb) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;

    // Session A's event (validly signed by A) submitted by B, alone and in a batch.
    let ev = tool_call(&a, &ka);
    let body = append_body(&ev);
    refused(
        &post(url, pe, &signed(&kb, pe, &body), &body).await,
        403,
        "did_mismatch",
    );
    let batch = to_json!(AppendBatch {
        events: vec![ev.clone()],
    });
    refused(
        &post(url, pb, &signed(&kb, pb, &batch), &batch).await,
        403,
        "did_mismatch",
    );
    // A's credential request submitted by B: no token.
    let req = credential_request(&a, &ka);
    let mbody = mint_body(&req);
    let r = post(url, pt, &signed(&kb, pt, &mbody), &mbody).await;
    refused(&r, 403, "did_mismatch");
    assert!(r.1.get("token").is_none());
    assert_only_denials(
        &entries_since(&h, before).await,
        &[
            (&b.did, "did_mismatch"),
            (&b.did, "did_mismatch"),
            (&b.did, "did_mismatch"),
        ],
    );

    // A submits them: accepted once.
    let mid = ledger_size(&h).await;
    let (s, v) = post(url, pe, &signed(&ka, pe, &body), &body).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(url, pt, &signed(&ka, pt, &mbody), &mbody).await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    // A again, in fresh requests (new request nonces): the event nonce was used.
    refused(
        &post(url, pe, &signed(&ka, pe, &body), &body).await,
        403,
        "replayed_nonce",
    );
    let r = post(url, pt, &signed(&ka, pt, &mbody), &mbody).await;
    refused(&r, 403, "replayed_nonce");
    assert!(r.1.get("token").is_none());
    let (s, v) = post(url, pb, &signed(&ka, pb, &batch), &batch).await;
    assert_eq!(
        (s, v["results"][0]["error"].as_str()),
        (200, Some("replayed_nonce")),
        "{v}"
    );
    // B again, after A's were accepted.
    refused(
        &post(url, pe, &signed(&kb, pe, &body), &body).await,
        403,
        "did_mismatch",
    );
    refused(
        &post(url, pt, &signed(&kb, pt, &mbody), &mbody).await,
        403,
        "did_mismatch",
    );

    let new = entries_since(&h, mid).await;
    assert_eq!(count_nonce(&new, &ev), 1, "A's event stored once");
    assert_eq!(count_nonce(&new, &req), 1, "A's request stored once");
    let mints: Vec<&Entry> = new
        .iter()
        .filter(|e| e.event.action.as_str() == actions::CREDENTIAL_MINT)
        .collect();
    assert_eq!(mints.len(), 1, "one token");
    assert_eq!(detail(mints[0], "subject"), Some(a.did.as_str()));
    assert_eq!(
        detail(mints[0], "request_nonce"),
        Some(req.event.nonce.to_hex().as_str())
    );
    assert_eq!(h.bao.read_secret(&token, SECRET).await.unwrap().0, 200);
    // After A's three accepted entries (event, request, mint): only refusals.
    assert_only_denials(
        &new[3..],
        &[
            (&a.did, "replayed_nonce"),
            (&a.did, "replayed_nonce"),
            (&a.did, "replayed_nonce"),
            (&b.did, "did_mismatch"),
            (&b.did, "did_mismatch"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn did_confusion_variants_are_refused() {
    let h = Harness::start().await;
    let url = &h.url;
    let pe = api::PATH_EVENTS;
    let (a, ka) = start_session(&h, "chat").await;
    let (b, kb) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;

    // The header names session A, session B's key signs: with A's event in
    // the body (B posing as A), and with B's own.
    for body in [
        append_body(&tool_call(&a, &ka)),
        append_body(&tool_call(&b, &kb)),
    ] {
        let mut hs = signed(&kb, pe, &body);
        set(&mut hs, signing::HEADER_DID, a.did.to_string());
        refused(&post(url, pe, &hs, &body).await, 401, "bad_signature");
    }
    // The same for a mint: B gets no token in A's name.
    let pt = api::PATH_TOKENS;
    let body = mint_body(&credential_request(&a, &ka));
    let mut hs = signed(&kb, pt, &body);
    set(&mut hs, signing::HEADER_DID, a.did.to_string());
    refused(&post(url, pt, &hs, &body).await, 401, "bad_signature");

    // Two Custody-Did headers, A's first, the signature by B: the broker
    // authenticates the DID it reads and does not go looking for one that verifies.
    let body = append_body(&tool_call(&b, &kb));
    let mut hs = signed(&kb, pe, &body);
    hs.insert(0, (signing::HEADER_DID, a.did.to_string()));
    refused(&post(url, pe, &hs, &body).await, 401, "bad_signature");

    // A session claiming the admin's DID, to revoke its sibling or export:
    // refused before the body is even read.
    let mut e = Event::new(
        a.did.clone(),
        ActorKind::Human,
        ActionType::new(actions::IDENTITY_REVOKE).unwrap(),
    );
    e.details.insert("subject".into(), b.did.as_str().into());
    let body = to_json!(RevokeRequest {
        event: e.sign(&ka).unwrap(),
    });
    for (path, body) in [(api::PATH_REVOKE, body), (api::PATH_EXPORT, b"{}".to_vec())] {
        let mut hs = signed(&ka, path, &body);
        set(&mut hs, signing::HEADER_DID, h.admin.did().to_string());
        refused(&post(url, path, &hs, &body).await, 401, "bad_signature");
    }

    assert_eq!(ledger_size(&h).await, before, "nothing stored");
    let c = h.client();
    assert!(c.status(&b).await.unwrap().active, "B was not revoked");
    assert!(c.status(&a).await.unwrap().active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_enforced_at_its_edges() {
    // The default is 60 s (broker/src/config.rs); 5 s keeps the edges close.
    let h = Harness::start_with("\n[limits]\nclock_skew = \"5s\"\n").await;
    let url = &h.url;
    let pe = api::PATH_EVENTS;
    let (a, key) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;

    // Just inside, behind and ahead of the broker's clock: accepted.
    let mut accepted = Vec::new();
    for offset in [-4_000i64, 4_000] {
        let e = tool_call(&a, &key);
        let b = append_body(&e);
        let (s, v) = post(
            url,
            pe,
            &signed_at(&key, pe, signing::now_ms() + offset, &b),
            &b,
        )
        .await;
        assert_eq!(s, 200, "{offset} ms: {v}");
        accepted.push(e);
    }
    // Just outside: 401 stale_request, naming the allowed skew.
    let mut refused_events = Vec::new();
    for offset in [-6_000i64, 6_000] {
        let e = tool_call(&a, &key);
        let b = append_body(&e);
        let r = post(
            url,
            pe,
            &signed_at(&key, pe, signing::now_ms() + offset, &b),
            &b,
        )
        .await;
        refused(&r, 401, "stale_request");
        assert!(
            r.1["message"]
                .as_str()
                .unwrap()
                .contains("allowed: 5000 ms"),
            "{}",
            r.1
        );
        refused_events.push(e);
    }
    // The extremes the header format allows: the epoch and the largest
    // 16-digit time are stale (no overflow); 17 digits or a sign are malformed.
    for ts in [0i64, 9_999_999_999_999_999] {
        let e = tool_call(&a, &key);
        let b = append_body(&e);
        refused(
            &post(url, pe, &signed_at(&key, pe, ts, &b), &b).await,
            401,
            "stale_request",
        );
        refused_events.push(e);
    }
    for ts in ["10000000000000000", "-1000", "+1000"] {
        let e = tool_call(&a, &key);
        let b = append_body(&e);
        let mut hs = signed(&key, pe, &b);
        set(&mut hs, signing::HEADER_TIMESTAMP, ts.into());
        refused(&post(url, pe, &hs, &b).await, 401, "malformed_signature");
        refused_events.push(e);
    }

    let new = entries_since(&h, before).await;
    assert_eq!(new.len(), accepted.len());
    for e in &accepted {
        assert_eq!(count_nonce(&new, e), 1);
    }
    for e in &refused_events {
        assert_eq!(count_nonce(&new, e), 0);
    }
}

/// The request timeout the slow-loris test configures (`limits.request_timeout`).
const LORIS_TIMEOUT: Duration = Duration::from_secs(3);

/// A raw TCP client: writes `head` at once, then `drip` one byte a second
/// (cycling) and reads until the broker closes the connection. Returns how
/// long the connection lived and what the broker sent, or `None` if it was
/// still open after `give_up`.
async fn loris(
    addr: String,
    head: &'static [u8],
    drip: &'static [u8],
    give_up: Duration,
) -> Option<(Duration, String)> {
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        if wr.write_all(head).await.is_err() {
            return;
        }
        for b in drip.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Nothing to drip: stay connected, silent.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(give_up, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let lived = t0.elapsed();
    writer.abort();
    closed
        .ok()
        .map(|()| (lived, String::from_utf8_lossy(&got).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_loris_is_cut_off_while_others_are_served() {
    let h = Harness::start_with(&format!(
        "\n[limits]\nrequest_timeout = \"{}s\"\n",
        LORIS_TIMEOUT.as_secs()
    ))
    .await;
    let addr = h.url.trim_start_matches("http://").to_string();
    let pe = api::PATH_EVENTS;
    let (a, key) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;
    let give_up = Duration::from_secs(20);
    let t = LORIS_TIMEOUT;

    // (kind, sent at once, then trickled a byte a second, cut off within,
    // what the broker answers first).
    type Loris = (
        &'static str,
        &'static [u8],
        &'static [u8],
        Duration,
        &'static str,
    );
    let kinds: [Loris; 6] = [
        // A request line a byte a second from the first byte: fewer than the
        // 24 bytes hyper-util reads to choose the protocol arrive in time.
        (
            "request line",
            b"",
            b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n",
            t,
            "",
        ),
        // The request line at once, then the headers a byte a second, never
        // finished: hyper's header timeout closes the connection unanswered.
        (
            "headers",
            b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            t,
            "",
        ),
        // Complete headers, then the body a byte a second: 408 request_timeout.
        (
            "body",
            b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n",
            b"{         ",
            t,
            "HTTP/1.1 408",
        ),
        // Connected, silent.
        ("silent", b"", b"", t, ""),
        // The HTTP/2 preface a byte a second.
        ("h2 preface", b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", t, ""),
        // A complete HTTP/2 preface and SETTINGS, then silence: dropped when a
        // ping goes unanswered (ping after `t` idle, then `t` to answer); the
        // broker's own SETTINGS frame comes first.
        (
            "h2 idle",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"",
            2 * t,
            "\x00",
        ),
    ];
    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..3 {
        for (kind, head, drip, within, answer) in kinds {
            let addr = addr.clone();
            lorises.spawn(async move {
                let r = loris(addr, head, drip, give_up).await;
                (kind, within, answer, r)
            });
        }
    }

    // Meanwhile, ordinary requests are served promptly.
    let c = h.client();
    let mut served = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < 2 * LORIS_TIMEOUT + Duration::from_secs(1) {
        let t = Instant::now();
        c.health().await.unwrap();
        let e = tool_call(&a, &key);
        let b = append_body(&e);
        let (s, v) = post(&h.url, pe, &signed(&key, pe, &b), &b).await;
        assert_eq!(s, 200, "{v}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "served in {:?}",
            t.elapsed()
        );
        served.push(e);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    while let Some(r) = lorises.join_next().await {
        let (kind, within, answer, r) = r.unwrap();
        let (lived, got) =
            r.unwrap_or_else(|| panic!("{kind}: the connection was still open after {give_up:?}"));
        // The lower bound shows the timeout did it; the upper, that it bounds.
        let (lo, hi) = (
            within - Duration::from_millis(200),
            within + Duration::from_secs(4),
        );
        assert!(
            lived >= lo && lived <= hi,
            "{kind}: cut off after {lived:?}, want {lo:?}..{hi:?}"
        );
        assert!(got.starts_with(answer), "{kind}: answered {got:?}");
        if kind == "body" {
            assert!(got.contains("\"error\":\"request_timeout\""), "{got}");
        }
    }

    // Only the ordinary requests were stored.
    let new = entries_since(&h, before).await;
    assert_eq!(new.len(), served.len());
    for e in &served {
        assert_eq!(count_nonce(&new, e), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_is_per_did() {
    const LIMIT: usize = 5;
    let h = Harness::start_with(&format!("\n[limits]\nrequests_per_second = {LIMIT}\n")).await;
    let pe = api::PATH_EVENTS;
    let (a, ka) = start_session(&h, "chat").await;
    let (b, kb) = start_session(&h, "chat").await;
    let before = ledger_size(&h).await;

    // A burst from A, signed ahead so that it leaves at once.
    let burst: Vec<(SignedEvent, Headers, Vec<u8>)> = (0..3 * LIMIT)
        .map(|_| {
            let e = tool_call(&a, &ka);
            let body = append_body(&e);
            (e, signed(&ka, pe, &body), body)
        })
        .collect();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (e, hs, body) in burst {
        let url = h.url.clone();
        set.spawn(async move { (e, post(&url, pe, &hs, &body).await) });
    }
    let mut ok = Vec::new();
    let mut limited = Vec::new();
    while let Some(r) = set.join_next().await {
        let (e, r) = r.unwrap();
        if r.0 == 200 {
            ok.push(e);
        } else {
            refused(&r, 429, "rate_limited");
            assert!(r.1["message"].as_str().unwrap().contains(a.did.as_str()));
            limited.push(e);
        }
    }
    let took = t0.elapsed();
    // B, meanwhile, is served.
    let eb = tool_call(&b, &kb);
    let body = append_body(&eb);
    let (s, v) = post(&h.url, pe, &signed(&kb, pe, &body), &body).await;
    assert_eq!(s, 200, "{v}");

    // One 1-second window admits LIMIT; a burst that straddled two, 2 × LIMIT.
    let windows = if took < Duration::from_secs(1) { 1 } else { 2 };
    assert!(
        ok.len() >= LIMIT && ok.len() <= windows * LIMIT,
        "{} accepted in {took:?}",
        ok.len()
    );
    assert!(!limited.is_empty());

    // Nothing of the refused requests was stored.
    let new = entries_since(&h, before).await;
    assert_eq!(new.len(), ok.len() + 1);
    for e in &ok {
        assert_eq!(count_nonce(&new, e), 1);
    }
    for e in &limited {
        assert_eq!(count_nonce(&new, e), 0);
    }
    assert_eq!(count_nonce(&new, &eb), 1);

    // The next window serves A again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = tool_call(&a, &ka);
    let body = append_body(&e);
    let (s, v) = post(&h.url, pe, &signed(&ka, pe, &body), &body).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_racing_mints_leaves_no_live_token() {
    const WORKERS: usize = 8;
    let h = Harness::start().await;
    for round in 0..3u64 {
        let (s, _) = start_session(&h, "ci").await;
        // Workers mint in a loop until they are refused.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let (c, s) = (h.client(), s.clone());
            workers.spawn(async move {
                let mut minted = Vec::new();
                for _ in 0..1000 {
                    match c.mint(&s, SCOPE).await {
                        Ok(m) => minted.push(m),
                        Err(e) => return (minted, e.to_string()),
                    }
                }
                panic!("never refused");
            });
        }
        tokio::time::sleep(Duration::from_millis(100 + 100 * round)).await;
        let r = h
            .client()
            .revoke(&h.admin, &s.did, "revoked while minting")
            .await
            .unwrap();
        let mut tokens = Vec::new();
        while let Some(w) = workers.join_next().await {
            let (minted, err) = w.unwrap();
            assert!(err.contains("(403 revoked)"), "{err}");
            tokens.extend(minted);
        }
        eprintln!(
            "round {round}: {} tokens minted before the revocation",
            tokens.len()
        );
        assert!(!tokens.is_empty());
        assert_eq!(r.tokens_revoked, tokens.len() as u64);
        // Every token any mint handed out is dead in OpenBao.
        for t in &tokens {
            assert_eq!(
                h.bao.read_secret(&t.token, SECRET).await.unwrap().0,
                403,
                "a token minted during the revocation still works"
            );
        }
        // The ledger: every mint for the session precedes the revocation, and
        // the accessor that reaches its token is among those revoked.
        let name = format!("bundle-{round}");
        let (code, v) = h.export_and_verify(&name).await;
        assert_eq!(code, 0, "{v:#}");
        let entries = custody_tests::read_entries(&h.path().join(&name));
        let subject = |e: &&Entry, action: &str| {
            e.event.action.as_str() == action && detail(e, "subject") == Some(s.did.as_str())
        };
        let revocation = entries
            .iter()
            .find(|e| subject(e, actions::IDENTITY_REVOKE))
            .expect("identity.revoke");
        let revoked: Vec<&str> = entries
            .iter()
            .find(|e| subject(e, actions::CREDENTIAL_REVOKE))
            .expect("credential.revoke")
            .event
            .details["accessor_sha256"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mints: Vec<&Entry> = entries
            .iter()
            .filter(|e| subject(e, actions::CREDENTIAL_MINT))
            .collect();
        assert_eq!(mints.len(), tokens.len(), "one mint entry per token");
        for m in &mints {
            assert!(
                m.seq < revocation.seq,
                "mint {} after the revocation",
                m.seq
            );
            // A token recorded one by one is named itself; one minted
            // under the session's parent names the parent.
            let reached = detail(m, "accessor_sha256")
                .or_else(|| detail(m, "parent_accessor_sha256"))
                .unwrap();
            assert!(revoked.contains(&reached));
        }
        for t in &tokens {
            assert!(mints.iter().any(|m| m.seq.0 == t.mint_seq));
            assert!(revoked.contains(&t.accessor_sha256.as_str()));
        }
        assert!(
            !entries.iter().any(|e| e.seq > revocation.seq
                && e.event.actor == s.did
                && e.event.action.as_str() == "credential.request"),
            "no request of the session is admitted after its revocation"
        );
    }
}
