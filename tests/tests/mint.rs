//! Each failure path of the mint (server/src/credentials.rs), against a real
//! OpenBao, in both modes: tokens recorded one by one (no `parent_policy`)
//! and tokens minted under a per-session parent. Tokens one by one: when
//! OpenBao is down, nothing is recorded and no token exists; when the
//! accessor cannot be kept, the token is revoked and the revocation recorded;
//! when the ledger cannot record the mint, the token is revoked and its
//! accessor forgotten. Under a parent: when the parent's accessor cannot be
//! kept, the parent is revoked and nothing is minted; when the ledger cannot
//! record, the parent is revoked with every child (a batch token cannot be
//! revoked alone); when OpenBao refuses the child after the
//! mint was recorded, the ledger says no token was made. In no case does a
//! live token remain that the ledger does not record or the kill switch
//! cannot reach. Storage failures are injected by wrapping the
//! broker's real storage (the only stand-in here: OpenBao, HTTP and the
//! ledger are real).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use custody_identity::{Did, KeyPair};
use custody_ledger::authority::Authority;
use custody_ledger::checkpoint::Origin;
use custody_ledger::merkle::{Hash, TreeHead};
use custody_ledger::{PayloadDigest, SignedEvent};
use custody_server::config::Config;
use custody_server::storage::embedded::Embedded;
use custody_server::storage::{AppendFailure, AppendResults, PayloadItem, Storage, StorageError};
use custody_server::AppState;
use custody_tests::broker::Harness;

/// The broker's real storage, with failures switched on by the test.
struct Faulty {
    inner: Embedded,
    accessor_fails: AtomicBool,
    mint_entry_fails: AtomicBool,
}

#[async_trait]
impl Storage for Faulty {
    async fn append(&self, events: Vec<SignedEvent>) -> AppendResults {
        let mint = events
            .iter()
            .any(|e| e.event.action.as_str() == "credential.mint");
        if mint && self.mint_entry_fails.load(Ordering::SeqCst) {
            return events
                .iter()
                .map(|_| {
                    Err(AppendFailure::Storage(StorageError::Unavailable(
                        "injected: the disk is full".into(),
                    )))
                })
                .collect();
        }
        self.inner.append(events).await
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn with_rules(&self, f: &mut dyn FnMut(&Authority)) {
        self.inner.with_rules(f)
    }
    async fn head(&self) -> Result<TreeHead, StorageError> {
        self.inner.head().await
    }
    async fn line(&self, seq: u64) -> Result<Vec<u8>, StorageError> {
        self.inner.line(seq).await
    }
    async fn lines(&self, from: u64, n: usize, bytes: usize) -> Result<Vec<Vec<u8>>, StorageError> {
        self.inner.lines(from, n, bytes).await
    }
    async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        self.inner.inclusion_proof(seq, size).await
    }
    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        self.inner.consistency_proof(old, new).await
    }
    async fn export(&self, k: &KeyPair, o: &Origin, out: &Path) -> Result<(), StorageError> {
        self.inner.export(k, o, out).await
    }
    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        self.inner.latest_checkpoint().await
    }
    async fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.checkpoint(size).await
    }
    async fn save_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StorageError> {
        self.inner.save_checkpoint(size, note).await
    }
    async fn put_payloads(&self, items: Vec<PayloadItem>) -> Result<(), StorageError> {
        self.inner.put_payloads(items).await
    }
    async fn payload(&self, d: PayloadDigest) -> Result<Option<([u8; 32], Vec<u8>)>, StorageError> {
        self.inner.payload(d).await
    }
    async fn redact(&self, d: PayloadDigest) -> Result<bool, StorageError> {
        self.inner.redact(d).await
    }
    async fn record_accessor(&self, s: &Did, a: &str, exp: i64) -> Result<(), StorageError> {
        if self.accessor_fails.load(Ordering::SeqCst) {
            return Err(StorageError::Failed(
                "injected: sled refused the write".into(),
            ));
        }
        self.inner.record_accessor(s, a, exp).await
    }
    async fn accessors_of(&self, s: &[Did]) -> Result<Vec<(Did, String)>, StorageError> {
        self.inner.accessors_of(s).await
    }
    async fn forget_accessor(&self, s: &Did, a: &str) -> Result<(), StorageError> {
        self.inner.forget_accessor(s, a).await
    }
    async fn record_ingest(&self, t: &str, s: &Did) -> Result<(), StorageError> {
        self.inner.record_ingest(t, s).await
    }
    async fn ingest_session(&self, t: &str) -> Result<Option<Did>, StorageError> {
        self.inner.ingest_session(t).await
    }
    async fn forget_ingest_of(&self, s: &[Did]) -> Result<(), StorageError> {
        self.inner.forget_ingest_of(s).await
    }
    async fn close(&self) -> Result<(), StorageError> {
        self.inner.close().await
    }
}

struct Broker {
    h: Harness,
    faulty: Arc<Faulty>,
    _server: tokio::task::JoinHandle<()>,
}

/// A broker on the faulty storage; `parents` keeps the example config's
/// `parent_policy`, otherwise tokens are recorded one by one.
async fn broker(parents: bool) -> Broker {
    let h = Harness::prepare("").await;
    let mut cfg = Config::load(&h.config()).unwrap();
    if !parents {
        if let Some(v) = cfg.vault.as_mut() {
            v.parent_policy = None;
        }
    }
    assert_eq!(
        cfg.vault.as_ref().map(|v| v.parent_policy.is_some()),
        Some(parents)
    );
    let key = AppState::ledger_key(&cfg).unwrap();
    let faulty = Arc::new(Faulty {
        inner: Embedded::open(&cfg.data, key.did(), cfg.checkpoint.keep_recent).unwrap(),
        accessor_fails: AtomicBool::new(false),
        mint_entry_fails: AtomicBool::new(false),
    });
    let vault = custody_server::vault_from_config(&cfg).unwrap();
    let listen = cfg.listen;
    let state = AppState::with_storage(cfg, vault, key, faulty.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let server = tokio::spawn(async move {
        let _ = custody_server::serve(state, listener, std::future::pending()).await;
    });
    Broker {
        h,
        faulty,
        _server: server,
    }
}

/// Every live OpenBao token with an accessor minted for `session` (looked up
/// as root): tokens recorded one by one, or the session's parent (batch
/// children have no accessor; they are checked by using them).
async fn live_tokens_of(h: &Harness, session: &Did) -> Vec<String> {
    let http = reqwest::Client::new();
    let root = h.bao.root_token();
    let list: serde_json::Value = http
        .get(format!("{}/v1/auth/token/accessors?list=true", h.bao.addr))
        .header("X-Vault-Token", root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for a in list["data"]["keys"].as_array().cloned().unwrap_or_default() {
        let r: serde_json::Value = http
            .post(format!("{}/v1/auth/token/lookup-accessor", h.bao.addr))
            .header("X-Vault-Token", root)
            .json(&serde_json::json!({"accessor": a}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["data"]["meta"]["custody_session_did"].as_str() == Some(session.as_str()) {
            out.push(a.as_str().unwrap_or_default().to_string());
        }
    }
    out
}

fn actions_in(h: &Harness, bundle: &str) -> Vec<(String, serde_json::Value)> {
    custody_tests::read_entries(&h.path().join(bundle))
        .into_iter()
        .map(|e| {
            (
                e.event.action.to_string(),
                serde_json::Value::Object(e.event.details),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_accessor_cannot_be_kept_is_revoked_and_the_revocation_recorded() {
    let b = broker(false).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    b.faulty.accessor_fails.store(true, Ordering::SeqCst);
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(format!("{err:#}").contains("500 internal"), "{err:#}");
    assert!(live_tokens_of(&b.h, &s.did).await.is_empty());
    b.faulty.accessor_fails.store(false, Ordering::SeqCst);
    // The next mint works and its token is live.
    let m = b.h.client().mint(&s, "repo-read").await.unwrap();
    assert_eq!(live_tokens_of(&b.h, &s.did).await.len(), 1);
    let (code, v) = b.h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = actions_in(&b.h, "bundle");
    let revokes: Vec<_> = entries
        .iter()
        .filter(|(a, _)| a == "credential.revoke")
        .collect();
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].1["reason"], "its accessor could not be recorded");
    assert_eq!(revokes[0].1["tokens_revoked"], 1);
    let mints = entries
        .iter()
        .filter(|(a, _)| a == "credential.mint")
        .count();
    assert_eq!(mints, 2, "both mints are on the record");
    assert_ne!(
        revokes[0].1["accessor_sha256"][0],
        m.accessor_sha256.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_ledger_cannot_record_is_revoked_and_its_accessor_forgotten() {
    let b = broker(false).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    b.faulty.mint_entry_fails.store(true, Ordering::SeqCst);
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("503 ledger_unavailable"),
        "{err:#}"
    );
    assert!(live_tokens_of(&b.h, &s.did).await.is_empty());
    assert!(b
        .faulty
        .accessors_of(std::slice::from_ref(&s.did))
        .await
        .unwrap()
        .is_empty());
    b.faulty.mint_entry_fails.store(false, Ordering::SeqCst);
    let (code, v) = b.h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    assert!(!actions_in(&b.h, "bundle")
        .iter()
        .any(|(a, _)| a == "credential.mint" || a == "credential.request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_openbao_is_down_nothing_is_minted_or_recorded() {
    for parents in [false, true] {
        when_openbao_is_down(parents).await;
    }
}

async fn when_openbao_is_down(parents: bool) {
    let b = broker(parents).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    let before = b.h.client().health().await.unwrap().entries;
    // Kill OpenBao by its PID.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &b.h.bao.pid().to_string()])
        .status();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(format!("{err:#}").contains("502 vault"), "{err:#}");
    assert_eq!(b.h.client().health().await.unwrap().entries, before);
    assert!(b
        .faulty
        .accessors_of(std::slice::from_ref(&s.did))
        .await
        .unwrap()
        .is_empty());
}

fn kill_bao(h: &Harness) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &h.bao.pid().to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_accessor_cannot_be_kept_is_revoked_and_nothing_is_minted() {
    let b = broker(true).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    let before = b.h.client().health().await.unwrap().entries;
    b.faulty.accessor_fails.store(true, Ordering::SeqCst);
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(format!("{err:#}").contains("500 internal"), "{err:#}");
    assert!(
        live_tokens_of(&b.h, &s.did).await.is_empty(),
        "neither the parent nor a child lives"
    );
    assert_eq!(b.h.client().health().await.unwrap().entries, before);
    b.faulty.accessor_fails.store(false, Ordering::SeqCst);
    // The next mint makes a parent, records it, and hands out a child.
    let m = b.h.client().mint(&s, "repo-read").await.unwrap();
    assert_eq!(reads(&b.h, &m.token).await, 200);
    assert_eq!(live_tokens_of(&b.h, &s.did).await.len(), 1, "the parent");
    let recorded = b
        .faulty
        .accessors_of(std::slice::from_ref(&s.did))
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1, "only the parent is recorded");
    assert!(recorded[0].1.starts_with("parent:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_the_ledger_cannot_record_takes_its_parent_down() {
    let b = broker(true).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    let earlier = b.h.client().mint(&s, "repo-read").await.unwrap();
    assert_eq!(reads(&b.h, &earlier.token).await, 200);
    b.faulty.mint_entry_fails.store(true, Ordering::SeqCst);
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("503 ledger_unavailable"),
        "{err:#}"
    );
    // The unrecorded child is a batch token: only its parent can take it
    // down, and it did, with the session's earlier token.
    assert!(live_tokens_of(&b.h, &s.did).await.is_empty());
    assert_eq!(reads(&b.h, &earlier.token).await, 403);
    assert!(b
        .faulty
        .accessors_of(std::slice::from_ref(&s.did))
        .await
        .unwrap()
        .is_empty());
    b.faulty.mint_entry_fails.store(false, Ordering::SeqCst);
    // The next mint makes a new parent; revoking the session kills it.
    let m = b.h.client().mint(&s, "repo-read").await.unwrap();
    assert_eq!(reads(&b.h, &m.token).await, 200);
    let r = b.h.client().revoke(&b.h.admin, &s.did, "test").await;
    let r = r.unwrap();
    assert_eq!((r.tokens_revoked, r.parents_revoked), (1, 1));
    assert!(live_tokens_of(&b.h, &s.did).await.is_empty());
    assert_eq!(reads(&b.h, &m.token).await, 403);
    let (code, v) = b.h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = actions_in(&b.h, "bundle");
    let mints: Vec<_> = entries
        .iter()
        .filter(|(a, _)| a == "credential.mint")
        .collect();
    assert_eq!(mints.len(), 2, "the refused mint is not on the record");
    let revokes: Vec<_> = entries
        .iter()
        .filter(|(a, _)| a == "credential.revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "the dropped parent, then the kill switch");
    for ((_, mint), (_, revoke)) in mints.iter().zip(&revokes) {
        let parent = mint["parent_accessor_sha256"].as_str().unwrap();
        assert_eq!(revoke["accessor_sha256"][0], parent);
        assert_eq!(revoke["parents_revoked"], 1);
    }
    assert_eq!(
        revokes[0].1["reason"],
        "a token under this parent could not be recorded"
    );
    assert_eq!(
        m.accessor_sha256,
        mints[1].1["parent_accessor_sha256"].as_str().unwrap(),
        "a batch token is reached through its parent's accessor"
    );
}

/// The status of reading the example secret the `repo-read` scope may read.
async fn reads(h: &Harness, token: &str) -> u16 {
    h.bao.read_secret(token, "repo/github").await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_openbao_refuses_after_it_was_recorded_is_marked_as_never_made() {
    let b = broker(true).await;
    let (s, _) = b.h.session("claude-code", "chat", "s").await;
    // The parent exists; then OpenBao goes away while the next mint is
    // recorded side by side with the child's creation.
    b.h.client().mint(&s, "repo-read").await.unwrap();
    kill_bao(&b.h);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = b.h.client().mint(&s, "repo-read").await.unwrap_err();
    assert!(format!("{err:#}").contains("502 vault"), "{err:#}");
    let (code, v) = b.h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = actions_in(&b.h, "bundle");
    let mint_seqs: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, (a, _))| a == "credential.mint")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(mint_seqs.len(), 2);
    let (_, rev) = entries
        .iter()
        .find(|(a, _)| a == "credential.revoke")
        .expect("the failed mint is answered on the record");
    assert_eq!(rev["revocation_seq"], mint_seqs[1] as u64);
    assert_eq!(rev["tokens_revoked"], 0);
    assert!(rev["reason"]
        .as_str()
        .unwrap()
        .starts_with("OpenBao did not create the token"));
}
