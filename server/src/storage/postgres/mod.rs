//! The PostgreSQL backend: every piece of broker state in one database, so
//! any number of brokers with the same configuration serve the same ledger
//! and none keeps anything on its disk that another needs (the pattern of
//! Trillian's and Tessera's SQL drivers).
//!
//! - `schema.rs`: the tables, as versioned migrations applied on start.
//! - `sequencer.rs`: each broker's group commit, one transaction per batch
//!   under the head row's lock; what an acknowledgement means.
//! - `rules.rs`: the rules' state, restored from its tables on start and
//!   caught up with other brokers' entries.
//! - this file: opening, reads (lines, proofs, export), checkpoints, payload
//!   bodies and the broker's records, and the background tasks: catching up
//!   on `LISTEN custody_changes` and every [`CATCH_UP_EVERY`] (and the head
//!   size on `LISTEN custody_head`, which wakes the feed), the checkpoint
//!   signer's advisory lock.
//! - `nonces.rs`: the shared signed-request nonce set.
//!
//! The driver is tokio-postgres with a deadpool pool for reads and records;
//! the sequencer, the listener and the signer lock each hold a connection of
//! their own. Connection strings may hold a password: they are never logged
//! nor put in an error (see [`crate::config::PgUrl`]).
//!
//! Over 800 lines: this is the [`Storage`] implementation, one method
//! per trait item; sequencing, rules' state, export and migration are already
//! in their own modules. Next seam: the broker records (accessors, ingest,
//! payloads) into `records.rs`.

mod export;
pub mod migrate;
mod nonces;
mod rules;
pub mod schema;
mod sequencer;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use custody_identity::{Did, KeyPair};
use custody_ledger::authority::Authority;
use custody_ledger::canonical::to_canonical;
use custody_ledger::checkpoint::Origin;
use custody_ledger::denial::{Denial, DenialCode};
use custody_ledger::merkle::{Hash, HashReader, TreeHead};
use custody_ledger::store::{unkept, CheckpointInfo, RetentionPolicy, MAX_PAYLOAD_BYTES};
use custody_ledger::{PayloadDigest, SignedEvent};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

use super::{AppendFailure, AppendResults, PayloadItem, RequestNonce, Storage, StorageError};
use crate::config::PgUrl;
use rules::Head;
use sequencer::{Request, Sequencer};

pub use sequencer::MAX_BATCH;

/// How often each broker checks for entries other brokers appended, even
/// without a notification: the bound on how stale a cached decision
/// (policy check, OTLP ingest) can be if a `NOTIFY` is lost.
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(250);
/// The channel every committed batch notifies with the new head size.
pub(crate) const HEAD_CHANNEL: &str = "custody_head";
/// How often a broker that does not sign checkpoints tries for the signer's
/// lock, and the signer checks that its lock's connection is alive.
const SIGNER_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Key of the session-level advisory lock held by the checkpoint signer.
const SIGNER_LOCK: i64 = 0x0063_7573_746f_6479 + 1;
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool (reads, records).
const POOL_SIZE: usize = 16;
/// Entries per query when exporting or migrating.
pub(crate) const CHUNK: i64 = 4096;
/// Events of one append whose signatures are checked on the request's own
/// thread rather than on the blocking pool.
const INLINE_SIGNATURE_CHECKS: usize = 4;

/// The cause of a database error, for messages: the server's own message
/// when it sent one, the driver's otherwise (neither holds the URL).
pub(crate) fn cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn unavailable(e: tokio_postgres::Error) -> StorageError {
    StorageError::Unavailable(format!("ledger database: {}", cause(&e)))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => unavailable(e),
        e => StorageError::Unavailable(format!("ledger database: {e}")),
    }
}

fn load_error(e: rules::LoadError) -> StorageError {
    match e {
        rules::LoadError::Db(m) => StorageError::Unavailable(format!("ledger database: {m}")),
        e => StorageError::Failed(e.to_string()),
    }
}

/// Parses a connection string without ever echoing it.
pub fn pg_config(url: &PgUrl) -> Result<tokio_postgres::Config, StorageError> {
    let mut cfg = tokio_postgres::Config::from_str(url.expose()).map_err(|_| {
        StorageError::Failed(format!(
            "ledger.url ({}) is not a valid PostgreSQL connection string",
            url.redacted()
        ))
    })?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("custody");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    // Every statement planned for its parameters. The statements are
    // prepared once per connection, and a generic plan made while
    // `custody_entries` was small (a new ledger) stays a sequential scan on
    // that connection as the table grows: measured, the first broker on a
    // fresh database fell from ~8,500 to ~950 appends/s within a minute,
    // PostgreSQL busy scanning for nonces. Planning these statements costs
    // microseconds. (PostgreSQL 12 or later.)
    let options = cfg
        .get_options()
        .map(|o| format!("{o} "))
        .unwrap_or_default();
    cfg.options(format!("{options}-c plan_cache_mode=force_custom_plan"));
    // A dead peer (a killed server, a failover) is noticed by the kernel.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    Ok(cfg)
}

/// Opens a connection and drives it on the runtime.
pub(crate) async fn connect(cfg: &tokio_postgres::Config) -> Result<Client, StorageError> {
    let (client, conn) = cfg.connect(NoTls).await.map_err(unavailable)?;
    tokio::spawn(async move {
        // Its end (an error included) shows as the client's failures.
        let _ = conn.await;
    });
    Ok(client)
}

/// The rules' state this broker holds.
pub(crate) struct Local {
    pub authority: Authority,
    /// Folded in a batch that was not committed: rebuild from the database
    /// before admitting anything.
    pub dirty: bool,
}

/// What the sequencer, the background tasks and the storage calls share.
pub(crate) struct Shared {
    cfg: tokio_postgres::Config,
    pool: deadpool_postgres::Pool,
    local: Mutex<Local>,
    /// Held while the rules' state is caught up or a batch is admitted and
    /// committed, so the two never interleave.
    pub fold: Arc<tokio::sync::Mutex<()>>,
    /// When the last catch-up asked for by a request started (see
    /// `Storage::catch_up_since`); held while one runs, so overlapping
    /// requests share it.
    caught_up: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Entries this broker knows to be committed.
    size: AtomicU64,
    /// The same, for the feed's long polls to wait on.
    size_changes: tokio::sync::watch::Sender<u64>,
    /// Whether this broker holds the checkpoint signer's lock.
    signer: AtomicBool,
    closed: AtomicBool,
}

impl Shared {
    pub fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn connect(&self) -> Result<Client, StorageError> {
        connect(&self.cfg).await
    }

    pub fn acknowledged(&self, size: u64) {
        self.size.fetch_max(size, Ordering::SeqCst);
        // Under the channel's lock, so a smaller size never follows a larger.
        self.size_changes.send_if_modified(|s| {
            let moved = size > *s;
            if moved {
                *s = size;
            }
            moved
        });
    }

    /// Brings the rules' state up to the database's head, outside any
    /// append (the catch-up task).
    async fn catch_up(&self) -> Result<(), StorageError> {
        let _folding = self.fold.lock().await;
        let mut c = self.pool.get().await.map_err(pool_error)?;
        let dirty = self.local().dirty;
        if dirty {
            // A consistent snapshot of the head and the state tables.
            let client: &mut Client = &mut c;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(unavailable)?;
            let head = rules::read_head(&tx, false)
                .await
                .map_err(load_error)?
                .ok_or_else(|| StorageError::Failed("no head row".into()))?;
            let a = rules::load_authority(&tx, &head)
                .await
                .map_err(load_error)?;
            tx.commit().await.map_err(unavailable)?;
            let mut l = self.local();
            l.authority = a;
            l.dirty = false;
            drop(l);
            self.acknowledged(head.size);
            return Ok(());
        }
        let size: i64 = c
            .query_one("SELECT size FROM custody_head WHERE id = 1", &[])
            .await
            .map_err(unavailable)?
            .get(0);
        let size = size as u64;
        let next = self.local().authority.next_seq().0;
        if size > next {
            let changes = rules::state_changes(&**c, next, size)
                .await
                .map_err(load_error)?;
            rules::fold(&mut self.local().authority, &changes, next, size);
        }
        self.acknowledged(size);
        Ok(())
    }
}

/// The PostgreSQL backend. See the module documentation.
pub struct Postgres {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    nonces: mpsc::Sender<nonces::Ask>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    retention: RetentionPolicy,
}

/// What opening found.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("ledger database: {0}")]
    Migrate(#[from] schema::MigrateError),
    #[error("the ledger database holds the ledger of {found}, but this broker's ledger key is {ours}: point ledger.url at that ledger's database, or give this broker that ledger's key")]
    OtherLedger { found: Box<Did>, ours: Box<Did> },
}

/// The ledger DID a database holds, if it holds one (creating the schema if
/// needed): lets a broker refuse to create a new ledger key for a database
/// that already has a ledger.
pub async fn ledger_of(url: &PgUrl) -> Result<Option<Did>, OpenError> {
    let cfg = pg_config(url)?;
    let mut c = connect(&cfg).await?;
    schema::migrate(&mut c).await?;
    Ok(rules::read_head(&c, false)
        .await
        .map_err(load_error)?
        .map(|h| h.ledger))
}

impl Postgres {
    /// Connects, applies the schema's migrations, makes sure the database
    /// holds `ledger`'s ledger (creating its head row if it holds none),
    /// loads the rules' state from its tables (and its oversight records
    /// from the last two days of entries) and starts the sequencer and the
    /// background tasks. Start-up grows with the entries of two days, not
    /// with the ledger.
    pub async fn open(url: &PgUrl, ledger: Did, keep_recent: usize) -> Result<Self, OpenError> {
        let cfg = pg_config(url)?;
        let mut c = connect(&cfg).await?;
        schema::migrate(&mut c).await?;
        c.execute(
            "INSERT INTO custody_head (id, ledger, size, prev, root, last_received_at, trust)
             VALUES (1, $1, 0, $2, $3, NULL, '{}') ON CONFLICT (id) DO NOTHING",
            &[
                &ledger.as_str(),
                &sequencer::NO_PREV.0.as_slice(),
                &custody_ledger::merkle::EMPTY_HASH.0.as_slice(),
            ],
        )
        .await
        .map_err(unavailable)?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(unavailable)?;
        let head: Head = rules::read_head(&tx, false)
            .await
            .map_err(load_error)?
            .ok_or_else(|| StorageError::Failed("no head row".into()))?;
        if head.ledger != ledger {
            return Err(OpenError::OtherLedger {
                found: Box::new(head.ledger),
                ours: Box::new(ledger),
            });
        }
        let authority = rules::load_authority(&tx, &head)
            .await
            .map_err(load_error)?;
        tx.commit().await.map_err(unavailable)?;
        drop(c);

        let mgr = deadpool_postgres::Manager::from_config(
            cfg.clone(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Failed(format!("ledger database pool: {e}")))?;
        let shared = Arc::new(Shared {
            cfg,
            pool,
            local: Mutex::new(Local {
                authority,
                dirty: false,
            }),
            fold: Arc::new(tokio::sync::Mutex::new(())),
            caught_up: tokio::sync::Mutex::new(None),
            size: AtomicU64::new(head.size),
            size_changes: tokio::sync::watch::Sender::new(head.size),
            signer: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer = tokio::spawn(Sequencer::new(shared.clone(), rx).run());
        let (ntx, nrx) = mpsc::channel(4 * nonces::BATCH);
        let tasks = vec![
            tokio::spawn(watch(shared.clone())),
            tokio::spawn(hold_signer_lock(shared.clone())),
            tokio::spawn(nonces::remember(shared.clone(), nrx)),
            tokio::spawn(nonces::sweep(shared.clone())),
        ];
        Ok(Self {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            nonces: ntx,
            tasks,
            retention: RetentionPolicy { keep_recent },
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        self.shared.pool.get().await.map_err(pool_error)
    }

    /// The stored hashes at `indexes`.
    async fn hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, StorageError> {
        let want: Vec<i64> = indexes.iter().map(|i| *i as i64).collect();
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT idx, hash FROM custody_hashes WHERE idx = ANY($1)",
                &[&want],
            )
            .await
            .map_err(unavailable)?;
        let mut found = std::collections::HashMap::new();
        for r in rows {
            let h: &[u8] = r.get(1);
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| StorageError::Failed("a stored hash is not 32 bytes".into()))?;
            found.insert(r.get::<_, i64>(0) as u64, Hash(h));
        }
        indexes
            .iter()
            .map(|i| {
                found.get(i).copied().ok_or_else(|| {
                    StorageError::Failed(format!("ledger database: stored hash {i} is missing"))
                })
            })
            .collect()
    }

    /// Runs a `tlog_tiles` computation that reads stored hashes once: first
    /// to learn which, then again with them fetched.
    async fn with_hashes<T>(
        &self,
        f: impl Fn(&dyn HashReader) -> Result<T, String>,
    ) -> Result<T, StorageError> {
        struct Wanted(Mutex<Vec<u64>>);
        impl HashReader for Wanted {
            fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(indexes);
                Err(tlog_tiles::Error::IndexesNotInTree)
            }
        }
        let wanted = Wanted(Mutex::new(Vec::new()));
        if let Ok(v) = f(&wanted) {
            return Ok(v);
        }
        let indexes = wanted.0.into_inner().unwrap_or_else(|p| p.into_inner());
        let hashes = self.hashes(&indexes).await?;
        let known: std::collections::HashMap<u64, Hash> = indexes.into_iter().zip(hashes).collect();
        f(&sequencer::MapReader(&known)).map_err(StorageError::Failed)
    }

    /// Refuses a tree size the committed head has not reached.
    async fn within_head(&self, size: u64) -> Result<(), StorageError> {
        if size > self.db_head().await?.size {
            return Err(StorageError::Failed(format!("no entry {size}")));
        }
        Ok(())
    }

    async fn db_head(&self) -> Result<Head, StorageError> {
        let c = self.client().await?;
        let head = rules::read_head(&**c, false)
            .await
            .map_err(load_error)?
            .ok_or_else(|| StorageError::Failed("no head row".into()))?;
        self.shared.acknowledged(head.size);
        Ok(head)
    }
}

/// `dyn HashReader` as a sized reader for `tlog_tiles`.
struct Dyn<'a>(&'a dyn HashReader);

impl HashReader for Dyn<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        self.0.read_hashes(indexes)
    }
}

/// Catches the rules' state up when another broker appends something that
/// changes it (`LISTEN custody_changes`), and every [`CATCH_UP_EVERY`]
/// whatever happens to notifications; takes every other broker's new head
/// size as it commits (`LISTEN custody_head`), for the feed.
async fn watch(shared: Arc<Shared>) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(CATCH_UP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warning: Option<Instant> = None;
    while !shared.closed.load(Ordering::SeqCst) {
        // A listening connection, driven here so its notifications arrive.
        let (notified_tx, mut notified) = mpsc::channel::<()>(1);
        let listening = async {
            let (client, mut conn) = shared.cfg.connect(NoTls).await.map_err(unavailable)?;
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            let heads = shared.clone();
            let driver = tokio::spawn(async move {
                while let Some(m) = messages.next().await {
                    match m {
                        // Another broker committed entries: the feed's long
                        // polls wake now, not at their next re-check.
                        Ok(tokio_postgres::AsyncMessage::Notification(n))
                            if n.channel() == HEAD_CHANNEL =>
                        {
                            if let Ok(size) = n.payload().parse::<u64>() {
                                heads.acknowledged(size);
                            }
                        }
                        Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                            let _ = notified_tx.try_send(());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN custody_changes; LISTEN {HEAD_CHANNEL}"))
                .await
                .map_err(unavailable)?;
            Ok::<_, StorageError>((client, driver))
        }
        .await;
        let (client, driver) = match listening {
            Ok(x) => x,
            Err(e) => {
                warn_now_and_then(&mut last_warning, &e);
                // Without notifications the periodic catch-up still bounds
                // staleness.
                tick.tick().await;
                if let Err(e) = shared.catch_up().await {
                    warn_now_and_then(&mut last_warning, &e);
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                n = notified.recv() => if n.is_none() { break },
            }
            if shared.closed.load(Ordering::SeqCst) || client.is_closed() {
                break;
            }
            if let Err(e) = shared.catch_up().await {
                warn_now_and_then(&mut last_warning, &e);
            }
        }
        driver.abort();
    }
}

fn warn_now_and_then(last: &mut Option<Instant>, e: &StorageError) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        tracing::warn!("ledger database: catching up with other brokers failed: {e}");
        *last = Some(Instant::now());
    }
}

/// Holds the checkpoint signer's session-level advisory lock when no other
/// broker does. PostgreSQL releases it when the holder's connection ends —
/// a killed broker included — and another broker takes it within
/// [`SIGNER_CHECK_EVERY`].
async fn hold_signer_lock(shared: Arc<Shared>) {
    let mut holder: Option<Client> = None;
    while !shared.closed.load(Ordering::SeqCst) {
        let held = match &holder {
            Some(c) => c.simple_query("SELECT 1").await.is_ok(),
            None => match shared.connect().await {
                Ok(c) => {
                    let got = c
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&SIGNER_LOCK])
                        .await
                        .map(|r| r.get::<_, bool>(0))
                        .unwrap_or(false);
                    if got {
                        tracing::info!("ledger database: this broker signs the checkpoints");
                        holder = Some(c);
                    }
                    got
                }
                Err(_) => false,
            },
        };
        if !held {
            holder = None;
        }
        shared.signer.store(held, Ordering::SeqCst);
        tokio::time::sleep(SIGNER_CHECK_EVERY).await;
    }
    shared.signer.store(false, Ordering::SeqCst);
    if let Some(c) = holder {
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&SIGNER_LOCK])
            .await;
    }
}

impl Postgres {
    /// Checks the events' signatures (in parallel with other requests) and
    /// hands what passes, with the request's nonce if it is to be
    /// remembered with them, to the sequencer.
    async fn append_with(
        &self,
        events: Vec<SignedEvent>,
        request: Option<RequestNonce>,
    ) -> AppendResults {
        let n = events.len();
        let check = move |events: Vec<SignedEvent>| {
            events
                .into_iter()
                .map(|ev| {
                    to_canonical(&ev.event)
                        .map_err(|e| Denial::new(DenialCode::Malformed, e.to_string()))
                        .and_then(|c| {
                            custody_ledger::authority::check_signature_canonical(&ev, &c)
                                .map(|()| (ev, c))
                        })
                })
                .collect::<Vec<_>>()
        };
        // A few signatures (~50 µs each) are checked on this thread: the
        // hop to the blocking pool and back would cost more.
        let checked = if n <= INLINE_SIGNATURE_CHECKS {
            check(events)
        } else {
            match tokio::task::spawn_blocking(move || check(events)).await {
                Ok(c) => c,
                Err(e) => {
                    return (0..n)
                        .map(|_| Err(AppendFailure::Storage(StorageError::Failed(e.to_string()))))
                        .collect()
                }
            }
        };
        let mut results: Vec<Option<Result<_, AppendFailure>>> = (0..n).map(|_| None).collect();
        let mut queued = Vec::new();
        let mut positions = Vec::new();
        for (i, c) in checked.into_iter().enumerate() {
            match c {
                Ok(ev) => {
                    positions.push(i);
                    queued.push(ev);
                }
                Err(d) => results[i] = Some(Err(AppendFailure::Refused(d))),
            }
        }
        // A request whose events all failed their signature check still
        // has its nonce kept.
        if !queued.is_empty() || request.is_some() {
            let closed = || StorageError::Unavailable("the broker is shutting down".into());
            let (reply, answer) = oneshot::channel();
            let sender = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let sent = match sender {
                Some(tx) => tx
                    .send(Request {
                        events: queued,
                        nonce: request,
                        reply,
                    })
                    .await
                    .is_ok(),
                None => false,
            };
            let answer = if sent { answer.await.ok() } else { None };
            match answer {
                Some(a) if a.replayed => {
                    return (0..n)
                        .map(|_| Err(AppendFailure::ReplayedRequest))
                        .collect()
                }
                Some(a) => {
                    for (i, r) in positions.into_iter().zip(a.results) {
                        results[i] = Some(r);
                    }
                }
                None => {
                    for i in positions {
                        results[i] = Some(Err(AppendFailure::Storage(closed())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(AppendFailure::Storage(StorageError::Failed(
                    "no append result".into(),
                ))))
            })
            .collect()
    }
}

#[async_trait]
impl Storage for Postgres {
    async fn catch_up_since(&self, asked: std::time::Instant) -> Result<(), StorageError> {
        let mut last = self.shared.caught_up.lock().await;
        if last.is_some_and(|started| started >= asked) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.shared.catch_up().await?;
        *last = Some(started);
        Ok(())
    }

    async fn append(&self, events: Vec<SignedEvent>) -> AppendResults {
        self.append_with(events, None).await
    }

    fn nonce_with_append(&self) -> bool {
        true
    }

    async fn append_for_request(
        &self,
        events: Vec<SignedEvent>,
        request: RequestNonce,
    ) -> AppendResults {
        self.append_with(events, Some(request)).await
    }

    fn size(&self) -> u64 {
        self.shared.size.load(Ordering::SeqCst)
    }

    fn size_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.size_changes.subscribe())
    }

    fn with_rules(&self, f: &mut dyn FnMut(&Authority)) {
        f(&self.shared.local().authority)
    }

    async fn head(&self) -> Result<TreeHead, StorageError> {
        let h = self.db_head().await?;
        Ok(TreeHead {
            size: h.size,
            root: Hash(h.root),
        })
    }

    async fn line(&self, seq: u64) -> Result<Vec<u8>, StorageError> {
        let c = self.client().await?;
        c.query_opt(
            "SELECT line FROM custody_entries WHERE seq = $1",
            &[&(seq as i64)],
        )
        .await
        .map_err(unavailable)?
        .map(|r| r.get::<_, Vec<u8>>(0))
        .ok_or_else(|| StorageError::Failed(format!("no entry {seq}")))
    }

    async fn lines(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        // Committed rows only: an entry is acknowledged after its commit.
        let end = from.saturating_add(max_count as u64);
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT line FROM custody_entries WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                &[&(from as i64), &(end.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in rows {
            let line: Vec<u8> = r.get(0);
            bytes += line.len();
            out.push(line);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        self.within_head(size).await?;
        self.with_hashes(|r| {
            custody_ledger::merkle::inclusion_proof(&Dyn(r), size, seq).map_err(|e| e.to_string())
        })
        .await
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        self.within_head(new).await?;
        self.with_hashes(|r| {
            custody_ledger::merkle::consistency_proof(&Dyn(r), new, old).map_err(|e| e.to_string())
        })
        .await
    }

    async fn export(
        &self,
        ledger_key: &KeyPair,
        origin: &Origin,
        out: &Path,
    ) -> Result<(), StorageError> {
        export::export(self, ledger_key, origin, out).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT size, note FROM custody_checkpoints ORDER BY size DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(unavailable)?
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1))))
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT note FROM custody_checkpoints WHERE size = $1",
            &[&(size as i64)],
        )
        .await
        .map_err(unavailable)?
        .map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn save_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StorageError> {
        let info = CheckpointInfo::of(size, &note).map_err(|reason| {
            StorageError::Failed(format!("checkpoint at size {size}: {reason}"))
        })?;
        let signatures = custody_ledger::checkpoint::SignedCheckpoint::parse(&note)
            .map(|c| c.signature_count() as i32)
            .unwrap_or(1);
        let day = info.day.map(|d| d.to_julian_day());
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(unavailable)?;
        // A note replaces one of the same size only if it carries more
        // signatures (a cosignature merged in): two brokers signing the same
        // size must not drop a witness's cosignature.
        tx.execute(
            "INSERT INTO custody_checkpoints (size, note, day, cosigned, signatures) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note, day = EXCLUDED.day, cosigned = EXCLUDED.cosigned, signatures = EXCLUDED.signatures
             WHERE custody_checkpoints.signatures < EXCLUDED.signatures",
            &[&(size as i64), &note, &day, &info.cosigned, &signatures],
        )
        .await
        .map_err(unavailable)?;
        // The embedded store's retention rule (FORMAT.md §6).
        let known: Vec<(u64, CheckpointInfo)> = tx
            .query(
                "SELECT size, day, cosigned FROM custody_checkpoints ORDER BY size",
                &[],
            )
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|r| {
                let day = r
                    .get::<_, Option<i32>>(1)
                    .and_then(|d| time::Date::from_julian_day(d).ok());
                (
                    r.get::<_, i64>(0) as u64,
                    CheckpointInfo {
                        day,
                        cosigned: r.get(2),
                    },
                )
            })
            .collect();
        let gone: Vec<i64> = unkept(known.iter().copied(), &self.retention)
            .into_iter()
            .map(|s| s as i64)
            .collect();
        if !gone.is_empty() {
            tx.execute(
                "DELETE FROM custody_checkpoints WHERE size = ANY($1)",
                &[&gone],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn put_payloads(&self, items: Vec<PayloadItem>) -> Result<(), StorageError> {
        for (digest, salt, body) in &items {
            if body.len() > MAX_PAYLOAD_BYTES {
                return Err(StorageError::Failed(format!(
                    "payload: {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                    body.len()
                )));
            }
            if custody_ledger::bundle::payload_digest(salt, body) != *digest {
                return Err(StorageError::Failed(
                    "payload: SHA-256(salt ‖ body) does not match the digest".into(),
                ));
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let digests: Vec<&[u8]> = items.iter().map(|(d, _, _)| d.0.as_slice()).collect();
        let salts: Vec<&[u8]> = items.iter().map(|(_, s, _)| s.as_slice()).collect();
        let bodies: Vec<&[u8]> = items.iter().map(|(_, _, b)| b.as_slice()).collect();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO custody_payloads (digest, salt, body)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[])
             ON CONFLICT (digest) DO UPDATE SET salt = EXCLUDED.salt, body = EXCLUDED.body",
            &[&digests, &salts, &bodies],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn payload(
        &self,
        digest: PayloadDigest,
    ) -> Result<Option<([u8; 32], Vec<u8>)>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT salt, body FROM custody_payloads WHERE digest = $1",
                &[&digest.0.as_slice()],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.and_then(|r| {
            let salt: &[u8] = r.get(0);
            Some((salt.try_into().ok()?, r.get::<_, Vec<u8>>(1)))
        }))
    }

    async fn redact(&self, digest: PayloadDigest) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(c.execute(
            "DELETE FROM custody_payloads WHERE digest = $1",
            &[&digest.0.as_slice()],
        )
        .await
        .map_err(unavailable)?
            > 0)
    }

    async fn record_accessor(
        &self,
        session: &Did,
        accessor: &str,
        expires_unix: i64,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO custody_accessors (session, accessor, expires) VALUES ($1, $2, $3)
             ON CONFLICT (session, accessor) DO UPDATE SET expires = EXCLUDED.expires",
            &[&session.as_str(), &accessor, &expires_unix],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn accessors_of(&self, sessions: &[Did]) -> Result<Vec<(Did, String)>, StorageError> {
        let dids: Vec<&str> = sessions.iter().map(|d| d.as_str()).collect();
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT session, accessor FROM custody_accessors WHERE session = ANY($1)",
                &[&dids],
            )
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|r| {
                let did: String = r.get(0);
                let did = Did::parse(&did)
                    .map_err(|e| StorageError::Failed(format!("custody_accessors.session: {e}")))?;
                Ok((did, r.get::<_, String>(1)))
            })
            .collect()
    }

    async fn forget_accessor(&self, session: &Did, accessor: &str) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM custody_accessors WHERE session = $1 AND accessor = $2",
            &[&session.as_str(), &accessor],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn record_ingest(&self, token_sha256: &str, session: &Did) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO custody_ingest (token_sha256, session) VALUES ($1, $2)
             ON CONFLICT (token_sha256) DO UPDATE SET session = EXCLUDED.session",
            &[&token_sha256, &session.as_str()],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn ingest_session(&self, token_sha256: &str) -> Result<Option<Did>, StorageError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT session FROM custody_ingest WHERE token_sha256 = $1",
                &[&token_sha256],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.and_then(|r| Did::parse(&r.get::<_, String>(0)).ok()))
    }

    async fn forget_ingest_of(&self, sessions: &[Did]) -> Result<(), StorageError> {
        let dids: Vec<&str> = sessions.iter().map(|d| d.as_str()).collect();
        let c = self.client().await?;
        c.execute(
            "DELETE FROM custody_ingest WHERE session = ANY($1)",
            &[&dids],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn remember_request_nonce(&self, n: RequestNonce) -> Option<Result<bool, StorageError>> {
        let (reply, answer) = oneshot::channel();
        if self.nonces.send((n, reply)).await.is_err() {
            return Some(Err(StorageError::Unavailable(
                "the broker is shutting down".into(),
            )));
        }
        Some(answer.await.unwrap_or_else(|_| {
            Err(StorageError::Unavailable(
                "the broker is shutting down".into(),
            ))
        }))
    }

    fn shared(&self) -> bool {
        true
    }

    fn signs_checkpoints(&self) -> bool {
        self.shared.signer.load(Ordering::SeqCst)
    }

    async fn close(&self) -> Result<(), StorageError> {
        // Appends already queued are committed (or answered) first.
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn every_connection_plans_statements_for_their_parameters() {
        let cfg = pg_config(&PgUrl::new("postgres://u:p@127.0.0.1:5432/custody")).unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c plan_cache_mode=force_custom_plan")
        );
        // Options the operator set are kept.
        let cfg = pg_config(&PgUrl::new(
            "postgres://u:p@127.0.0.1:5432/custody?options=-c%20statement_timeout%3D5000",
        ))
        .unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c statement_timeout=5000 -c plan_cache_mode=force_custom_plan")
        );
    }
}
