//! What every route shares: the configuration, the storage seam, the ledger
//! key, the session CA, OpenBao, the pre-tool policy, and the bounded state
//! that authentication keeps (replay cache, rate limits). Also the few
//! things every route does the same way: read the rules' state, append, sign
//! and append as the ledger key, refuse and record the refusal, checkpoint.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_identity::cert::SessionCa;
use custody_identity::{Delegation, Did, KeyPair};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::denial::DenialCode;
use custody_ledger::store::Appended;
use custody_ledger::{Event, SignedEvent, Timestamp};
use time::OffsetDateTime;

use crate::attest::Attest;
use crate::auth::UnspentNonce;
use crate::config::{Backend, Config};
use crate::error::{ApiError, ApiResult};
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::replay::ReplayCache;
use crate::storage::{self, embedded::Embedded, postgres, AppendFailure, AppendResults, Storage};
use crate::vault::Vault;
use crate::BoxFuture;

/// Refusals of identities the ledger does not know, recorded per minute.
const STRANGER_DENIALS_PER_MINUTE: u32 = 60;

/// Broker state shared by the routes.
pub struct AppState {
    pub cfg: Config,
    pub storage: Arc<dyn Storage>,
    pub ledger_key: KeyPair,
    pub origin: Origin,
    pub vault: Option<Vault>,
    pub ca: SessionCa,
    pub attest: Attest,
    /// The pre-tool policy; `None` when `[policy] enabled = false`.
    pub policy: Option<Policy>,
    /// Signed-request nonces while their timestamps are acceptable.
    pub(crate) nonces: ReplayCache,
    pub(crate) rate: RateLimiter,
    stranger_denials: Mutex<(Instant, u32)>,
    /// A mint holds it shared from its authorization until its token is
    /// recorded; a revocation or a session's end takes it exclusively, so no
    /// token minted before or during either survives it.
    pub(crate) mint_lock: Arc<tokio::sync::RwLock<()>>,
    /// Sessions' parent tokens held by this process (`[vault] parent_policy`).
    pub(crate) parents: crate::parents::Parents,
    /// Size and time of the last checkpoint signed.
    checkpointed: Mutex<(u64, Instant)>,
    /// Calls the policy held, by their `policy.decision`'s seq, so a person
    /// deciding one sees the exact input (`POST /v1/approvals/pending`).
    /// Bounded ([`MAX_HELD`], a day); lost on restart, when the agent's
    /// retry is held again.
    pub(crate) held: Mutex<std::collections::BTreeMap<u64, HeldEntry>>,
    /// What the entry feed's readers wait on and share.
    pub(crate) feed: FeedSignals,
}

/// Most held calls kept for people to decide.
pub const MAX_HELD: usize = 10_000;

/// A held call as the broker keeps it for the people who decide it.
#[derive(Clone, Debug)]
pub struct HeldEntry {
    pub action: custody_wire::api::HeldAction,
    pub session: Delegation,
    pub requires: custody_ledger::oversight::Requires,
    pub at: Instant,
}

/// Feed pages read at once (on the blocking pool). Reads take no lock the
/// writer needs; this keeps many followers from crowding the appends off the
/// disk and the blocking pool.
pub const MAX_FEED_READERS: usize = 2;
/// Feed requests one caller may have open at once (waiting, being read, or
/// being sent): with [`custody_wire::api::MAX_FEED_PAGE_BYTES`] this bounds
/// what a slow reader makes the broker hold.
pub const MAX_FEED_PER_CALLER: u32 = 2;

/// How feed requests learn of new entries and of shutdown, and the permits
/// that bound them.
pub(crate) struct FeedSignals {
    /// The ledger's size after each append through this broker.
    pub appended: tokio::sync::watch::Sender<u64>,
    /// Set when the broker begins to shut down: followers answer at once.
    pub closing: tokio::sync::watch::Sender<bool>,
    pub readers: tokio::sync::Semaphore,
    pub open: Mutex<std::collections::HashMap<Did, u32>>,
}

/// One open feed request of a caller; dropped when its answer is sent (or
/// its connection closes).
pub(crate) struct FeedSlot {
    state: Arc<AppState>,
    caller: Did,
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut open = self
            .state
            .feed
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

fn io_ctx(p: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", p.display())
}

/// Loads the key at `path`, creating it on first start.
pub(crate) fn load_or_create_key(path: &Path) -> anyhow::Result<KeyPair> {
    if path.exists() {
        Ok(KeyPair::load(path)?)
    } else {
        let k = KeyPair::generate();
        k.save(path)?;
        // The key's name must survive a power loss before anything it signs
        // is acknowledged: a ledger whose key is gone cannot be verified.
        if let Some(dir) = path.parent() {
            custody_ledger::fsutil::sync_dir(dir).map_err(|e| io_ctx(dir, e))?;
        }
        Ok(k)
    }
}

/// Whether the store at `dir` holds any entry (a non-empty segment file).
fn holds_entries(dir: &Path) -> anyhow::Result<bool> {
    let segments = dir.join("segments");
    let items = match std::fs::read_dir(&segments) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_ctx(&segments, e)),
    };
    for item in items {
        let item = item.map_err(|e| io_ctx(&segments, e))?;
        if item.file_name().to_string_lossy().ends_with(".jsonl")
            && item.metadata().map(|m| m.len() > 0).unwrap_or(true)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where the broker's own Vault token comes from.
pub fn vault_from_config(cfg: &Config) -> anyhow::Result<Option<Vault>> {
    let Some(v) = &cfg.vault else { return Ok(None) };
    let token = match &v.token_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| io_ctx(p, e))?
            .trim()
            .to_string(),
        None => std::env::var("VAULT_TOKEN")
            .map_err(|_| anyhow::anyhow!("[vault] needs token_file or VAULT_TOKEN"))?,
    };
    Ok(Some(
        Vault::new(&v.addr, &token, v.role.clone())?.with_parent_policy(v.parent_policy.clone())?,
    ))
}

impl AppState {
    /// Opens the broker on the backend `[ledger]` names: the data directory's
    /// segment log and sled (embedded), or a PostgreSQL database shared with
    /// other brokers.
    pub fn open(
        cfg: Config,
        vault: Option<Vault>,
    ) -> BoxFuture<'static, anyhow::Result<Arc<Self>>> {
        Box::pin(Self::open_body(cfg, vault))
    }

    /// [`open`](Self::open)'s body.
    async fn open_body(cfg: Config, vault: Option<Vault>) -> anyhow::Result<Arc<Self>> {
        let (ledger_key, storage): (KeyPair, Arc<dyn Storage>) = match &cfg.backend {
            Backend::Embedded => {
                let ledger_key = Self::ledger_key(&cfg)?;
                // Opening replays the ledger through the rules: blocking work.
                let (data, did, keep) = (
                    cfg.data.clone(),
                    ledger_key.did(),
                    cfg.checkpoint.keep_recent,
                );
                let storage =
                    tokio::task::spawn_blocking(move || Embedded::open(&data, did, keep)).await??;
                (ledger_key, Arc::new(storage))
            }
            Backend::Postgres(url) => {
                // A new key may only start a new ledger: never for a database
                // that already holds one.
                let key_path = cfg.data.join("ledger.key");
                if !key_path.exists() {
                    if let Some(found) = postgres::ledger_of(url).await? {
                        anyhow::bail!(
                            "the ledger database ({}) holds the ledger of {found}, but {} is missing: give this broker that ledger's key (every broker of a ledger holds the same key; see docs/DEPLOYMENT.md)",
                            url.redacted(),
                            key_path.display()
                        );
                    }
                }
                let ledger_key = Self::ledger_key(&cfg)?;
                let pg =
                    postgres::Postgres::open(url, ledger_key.did(), cfg.checkpoint.keep_recent)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e} ({})", url.redacted()))?;
                (ledger_key, Arc::new(pg))
            }
        };
        Self::with_storage(cfg, vault, ledger_key, storage).await
    }

    /// The ledger key in the data directory, created on the first start. A
    /// new key would start a second ledger on top of the first — neither key
    /// would verify what is there — so a ledger without its key is refused.
    pub fn ledger_key(cfg: &Config) -> anyhow::Result<KeyPair> {
        custody_ledger::fsutil::create_dir_durable(&cfg.data).map_err(|e| io_ctx(&cfg.data, e))?;
        let key_path = cfg.data.join("ledger.key");
        if !key_path.exists() && holds_entries(&cfg.data.join("ledger"))? {
            anyhow::bail!(
                "{} holds a ledger but {} is missing: restore the ledger key from its backup (custody will not create a new key for an existing ledger)",
                cfg.data.join("ledger").display(),
                key_path.display()
            );
        }
        load_or_create_key(&key_path)
    }

    /// Opens the broker on `storage`: keys, CA, the policy; writes the
    /// genesis entry, or a trust update when the config's trust roots differ
    /// from the ledger's.
    pub fn with_storage(
        cfg: Config,
        vault: Option<Vault>,
        ledger_key: KeyPair,
        storage: Arc<dyn Storage>,
    ) -> BoxFuture<'static, anyhow::Result<Arc<Self>>> {
        Box::pin(Self::with_storage_body(cfg, vault, ledger_key, storage))
    }

    /// [`with_storage`](Self::with_storage)'s body.
    async fn with_storage_body(
        cfg: Config,
        vault: Option<Vault>,
        ledger_key: KeyPair,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<Arc<Self>> {
        let ca_key = load_or_create_key(&cfg.data.join("ca.key"))?;
        let ca_pem_path = cfg.data.join("ca.pem");
        let ca = if ca_pem_path.exists() {
            let pem = std::fs::read_to_string(&ca_pem_path).map_err(|e| io_ctx(&ca_pem_path, e))?;
            SessionCa::from_key(ca_key, "custody session CA", pem)?
        } else {
            let ca = SessionCa::generate(ca_key, "custody session CA")?;
            std::fs::write(&ca_pem_path, ca.ca_cert_pem()).map_err(|e| io_ctx(&ca_pem_path, e))?;
            ca
        };
        let attest = Attest::new(ledger_key.did());
        let want = TrustRoots {
            admins: cfg.admins.iter().cloned().collect(),
            delegators: cfg.delegators.iter().cloned().collect(),
            approvers: cfg.approvers.iter().cloned().collect(),
            reviewers: cfg.reviewers.iter().cloned().collect(),
        };
        let empty = storage.size() == 0;
        if empty || storage::rules(&*storage, |a| a.trust() != &want) {
            let event = attest.trust(empty, &want).sign(&ledger_key)?;
            let appended = storage.append(vec![event]).await;
            match appended.into_iter().next() {
                Some(Ok(_)) => {}
                // Another broker of the same ledger, starting with the same
                // configuration, wrote them first.
                Some(Err(AppendFailure::Refused(_)))
                    if storage.shared()
                        && storage.size() > 0
                        && storage::rules(&*storage, |a| a.trust() == &want) => {}
                Some(Err(e)) => anyhow::bail!("writing the trust roots: {e}"),
                None => anyhow::bail!("writing the trust roots: no result"),
            }
        }
        let policy = match (&cfg.policy.enabled, &cfg.policy.file) {
            (false, _) => None,
            (true, None) => Some(Policy::default_set()),
            (true, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| io_ctx(f, e))?;
                Some(Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?)
            }
        };
        let size = storage.size();
        let rate = RateLimiter::new(cfg.limits.requests_per_second);
        Ok(Arc::new(Self {
            origin: Origin::for_ledger(&ledger_key.did()),
            policy,
            cfg,
            storage,
            ledger_key,
            vault,
            ca,
            attest,
            nonces: ReplayCache::default(),
            rate,
            stranger_denials: Mutex::new((Instant::now(), 0)),
            mint_lock: Arc::new(tokio::sync::RwLock::new(())),
            parents: Default::default(),
            checkpointed: Mutex::new((size, Instant::now())),
            held: Mutex::new(Default::default()),
            feed: FeedSignals {
                appended: tokio::sync::watch::Sender::new(size),
                closing: tokio::sync::watch::Sender::new(false),
                readers: tokio::sync::Semaphore::new(MAX_FEED_READERS),
                open: Mutex::new(std::collections::HashMap::new()),
            },
        }))
    }

    /// Reads the rules' state.
    pub fn rules<R>(&self, f: impl FnOnce(&Authority) -> R) -> R {
        storage::rules(&*self.storage, f)
    }

    /// Whether `did` is someone this broker knows: a role in the ledger's
    /// state, or an auditor of the config (who has none there). Strangers
    /// share one request budget and one budget of recorded refusals.
    pub fn knows(&self, did: &Did) -> bool {
        self.cfg.auditors.contains(did) || self.rules(|a| a.knows(did))
    }

    /// Who may read the entry feed: an auditor of the config or an admin of
    /// the ledger's trust state, not revoked. A revocation in the ledger
    /// applies to auditors too, though they hold no role there.
    pub fn check_auditor(&self, caller: &Did) -> Result<(), String> {
        let now = Timestamp::now();
        let auditor = self.cfg.auditors.contains(caller);
        self.rules(|a| {
            if !auditor && !a.trust().admins.contains(caller) {
                return Err(format!(
                    "{caller} is neither an auditor ([trust] auditors) nor an admin of this ledger"
                ));
            }
            match a.revoked_at(caller, now) {
                Some(r) => Err(format!(
                    "{caller} has been revoked (entry {}: {})",
                    r.seq, r.revocation.reason
                )),
                None => Ok(()),
            }
        })
    }

    /// Takes one of the caller's [`MAX_FEED_PER_CALLER`] feed slots.
    pub(crate) fn feed_slot(self: &Arc<Self>, caller: &Did) -> Option<FeedSlot> {
        let mut open = self.feed.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(caller.clone()).or_insert(0);
        if *n >= MAX_FEED_PER_CALLER {
            return None;
        }
        *n += 1;
        Some(FeedSlot {
            state: self.clone(),
            caller: caller.clone(),
        })
    }

    /// Waits until the ledger holds more than `size` entries, `wait` has
    /// passed, or the broker begins to shut down. Appends through this
    /// broker wake it at once, and so do other brokers' on a shared backend
    /// (its [`Storage::size_changes`]); the periodic re-check covers a lost
    /// notification.
    pub(crate) async fn wait_for_entries(&self, size: u64, wait: Duration) {
        const RECHECK: Duration = Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait;
        let mut appended = self.feed.appended.subscribe();
        let mut closing = self.feed.closing.subscribe();
        let mut elsewhere = self.storage.size_changes();
        while !*closing.borrow() {
            // A size it cannot read ends the wait: the page read that
            // follows answers the error.
            if self.storage.visible_size().await.map_or(true, |n| n > size) {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let nap = RECHECK.min(deadline - now);
            tokio::select! {
                r = appended.changed() => if r.is_err() { tokio::time::sleep(nap).await },
                r = closing.changed() => if r.is_err() { tokio::time::sleep(nap).await },
                r = async {
                    match elsewhere.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => if r.is_err() { elsewhere = None },
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Answers every waiting feed request now (shutdown).
    pub fn close_feed(&self) {
        self.feed.closing.send_replace(true);
    }

    /// An unrevoked admin of the ledger's trust state may revoke, export,
    /// redact and sign checkpoints. The ledger's state decides, not the
    /// config file: it is what the rules and the offline verifier hold it to.
    pub fn check_admin(&self, caller: &Did) -> Result<(), String> {
        let now = Timestamp::now();
        self.rules(|a| {
            if !a.trust().admins.contains(caller) {
                return Err(format!(
                    "{caller} is not an admin of this ledger ([trust] admins)"
                ));
            }
            match a.revoked_at(caller, now) {
                Some(r) => Err(format!(
                    "{caller} has been revoked (entry {}: {})",
                    r.seq, r.revocation.reason
                )),
                None => Ok(()),
            }
        })
    }

    /// The delegation of a session that may still act now, or why not:
    /// started, not revoked (nor its delegator), inside its validity window
    /// and not ended. The same state the rules hold appends to, so a cached
    /// credential (the OTLP ingest token) dies exactly when appends do.
    pub fn active_session(&self, did: &Did) -> Result<Delegation, String> {
        let now = Timestamp::now();
        self.rules(|a| {
            if let Some(r) = a.revoked_at(did, now) {
                return Err(format!("revoked: {}", r.revocation.reason));
            }
            let g = a
                .session(did)
                .ok_or_else(|| "no such session".to_string())?;
            if let Some(end) = g.ended_at {
                return Err(format!("the session ended (entry {end})"));
            }
            g.delegation
                .is_valid_at(now.datetime())
                .map_err(|e| e.to_string())?;
            Ok(g.delegation.clone())
        })
    }

    /// Appends events signed by their actors; wakes the feed's followers.
    pub async fn append(&self, events: Vec<SignedEvent>) -> AppendResults {
        let results = self.storage.append(events).await;
        self.appended(results)
    }

    /// Appends the events of a signed append request, with its nonce when
    /// the backend remembers it in the same transaction
    /// ([`crate::auth::SignedAppend`]).
    pub async fn append_for_request(
        &self,
        events: Vec<SignedEvent>,
        nonce: UnspentNonce,
    ) -> AppendResults {
        let results = match nonce.take() {
            Some(n) => self.storage.append_for_request(events, n).await,
            None => self.storage.append(events).await,
        };
        self.appended(results)
    }

    fn appended(&self, results: AppendResults) -> AppendResults {
        // Feed followers wake on the size the answers name. Not
        // `storage.size()`: on the embedded backend that waits for the
        // index to take the batch, and the caller would wait with it.
        let end = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.seq.0 + 1)
            .max();
        if let Some(end) = end {
            self.feed.appended.send_if_modified(|n| {
                let grew = end > *n;
                *n = (*n).max(end);
                grew
            });
        }
        results
    }

    /// Signs events with the ledger key (on a blocking thread) and appends
    /// them.
    pub async fn append_attested(self: &Arc<Self>, events: Vec<Event>) -> ApiResult<AppendResults> {
        let signed = self.attest_signed(events).await?;
        Ok(self.append(signed).await)
    }

    /// Signs events with the ledger key, on a blocking thread.
    async fn attest_signed(self: &Arc<Self>, events: Vec<Event>) -> ApiResult<Vec<SignedEvent>> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            events
                .into_iter()
                .map(|e| e.sign(&s.ledger_key))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Appends `attested` (signed with the ledger key) and `then` (signed
    /// by its actor) in one request, so `then` lands right after it in the
    /// same commit: a policy decision and the call it allowed. Each result
    /// with the refusal handling of [`append_one`](Self::append_one).
    pub async fn append_attested_then(
        self: &Arc<Self>,
        attested: Event,
        then: SignedEvent,
    ) -> ApiResult<(Appended, ApiResult<Appended>)> {
        let first = (attested.actor.clone(), attested.action.to_string());
        let second = (then.event.actor.clone(), then.event.action.to_string());
        let mut signed = self.attest_signed(vec![attested]).await?;
        signed.push(then);
        let mut results = self.append(signed).await;
        let then_result = results.pop().into_iter().collect();
        let decided = self.one_result(&first.0, &first.1, results).await;
        let then_appended = self.one_result(&second.0, &second.1, then_result).await;
        Ok((decided?, then_appended))
    }

    /// Appends one event; a refusal is recorded and answered 403.
    pub async fn append_one(self: &Arc<Self>, event: SignedEvent) -> ApiResult<Appended> {
        let (actor, action) = (event.event.actor.clone(), event.event.action.to_string());
        let r = self.append(vec![event]).await;
        self.one_result(&actor, &action, r).await
    }

    /// [`append_one`](Self::append_one) for the event of a signed append
    /// request, with its nonce ([`append_for_request`](Self::append_for_request)).
    pub async fn append_one_for_request(
        self: &Arc<Self>,
        event: SignedEvent,
        nonce: UnspentNonce,
    ) -> ApiResult<Appended> {
        let (actor, action) = (event.event.actor.clone(), event.event.action.to_string());
        let r = self.append_for_request(vec![event], nonce).await;
        self.one_result(&actor, &action, r).await
    }

    /// [`append_attested`](Self::append_attested) for one event, with the
    /// refusal handling of [`append_one`](Self::append_one).
    pub async fn append_attested_one(self: &Arc<Self>, event: Event) -> ApiResult<Appended> {
        let (actor, action) = (event.actor.clone(), event.action.to_string());
        let r = self.append_attested(vec![event]).await?;
        self.one_result(&actor, &action, r).await
    }

    async fn one_result(
        self: &Arc<Self>,
        actor: &Did,
        action: &str,
        mut results: AppendResults,
    ) -> ApiResult<Appended> {
        match results.pop() {
            Some(Ok(a)) => Ok(a),
            Some(Err(AppendFailure::Refused(d))) => {
                Err(self.refuse(actor, action, d.code, d.message).await)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(ApiError::internal("no append result")),
        }
    }

    /// Refuses an authenticated request: records it (`request.denied`, by
    /// the ledger key) and answers 403 with the code.
    pub async fn refuse(
        self: &Arc<Self>,
        caller: &Did,
        attempted: &str,
        code: DenialCode,
        message: String,
    ) -> ApiError {
        self.record_denial(caller, attempted, code, &message).await;
        ApiError::new(code.into(), message)
    }

    /// Records a refused request by an authenticated caller. Keys cost
    /// nothing, so refusals of identities the ledger does not know are
    /// recorded only up to a global budget: probing is evidence, but a
    /// stranger must not be able to grow the ledger without bound.
    async fn record_denial(
        self: &Arc<Self>,
        actor: &Did,
        attempted: &str,
        code: DenialCode,
        reason: &str,
    ) {
        if !self.knows(actor) {
            let mut b = self
                .stranger_denials
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if b.0.elapsed() >= Duration::from_secs(60) {
                *b = (Instant::now(), 0);
            }
            b.1 += 1;
            if b.1 > STRANGER_DENIALS_PER_MINUTE {
                tracing::warn!(%actor, attempted, code = code.as_str(), "refusal not recorded: over the budget for unknown identities");
                return;
            }
        }
        let e = self.attest.request_denied(actor, attempted, code, reason);
        match self.append_attested(vec![e]).await {
            Ok(mut rs) => {
                if let Some(Err(err)) = rs.pop() {
                    tracing::error!("recording a denial failed: {err}");
                }
            }
            Err(err) => tracing::error!("recording a denial failed: {}", err.message),
        }
    }

    /// Signs a checkpoint if the period says one is due (or `force`), and
    /// entries were appended since the last.
    pub async fn maybe_checkpoint(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        // Brokers sharing a ledger sign one at a time: the one the storage
        // elected. Its period starts from the newest stored checkpoint,
        // whoever signed it.
        if !self.storage.signs_checkpoints() {
            return Ok(());
        }
        let head = self.storage.head().await?;
        if self.storage.shared() {
            if let Some((size, note)) = self.storage.latest_checkpoint().await? {
                let at = SignedCheckpoint::parse(&note)
                    .map(|c| c.time())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                let age = (OffsetDateTime::now_utc() - at)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                let mut last = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
                *last = (
                    size,
                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                );
            }
        }
        let due = {
            let last = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
            head.size > last.0
                && (force
                    || head.size - last.0 >= self.cfg.checkpoint.every_entries
                    || last.1.elapsed() >= self.cfg.checkpoint.every)
        };
        if !due {
            return Ok(());
        }
        let s = self.clone();
        let note = tokio::task::spawn_blocking(move || {
            SignedCheckpoint::sign(&s.ledger_key, &s.origin, head, OffsetDateTime::now_utc())
                .map(|cp| cp.to_bytes())
        })
        .await??;
        self.storage.save_checkpoint(head.size, note).await?;
        let mut last = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        if head.size > last.0 {
            *last = (head.size, Instant::now());
        }
        Ok(())
    }
}
