//! The storage seam: everything a route keeps or reads — the ledger (appends
//! through the rules, entries, proofs, checkpoints and their cosignatures,
//! payload bodies, exports) and the broker's own records (token accessors,
//! ingest credentials) — goes through [`Storage`]. Routes never touch a file,
//! a sled tree or a database: a second backend plugs in here without
//! touching them.
//!
//! [`embedded::Embedded`] is the single-node backend: the segment-log store
//! of `custody-ledger` (fdatasync group commit) and a sled database for the
//! broker's records, each call run on the blocking pool.
//! [`postgres::Postgres`] keeps all of it in a PostgreSQL database that any
//! number of brokers share (`[ledger] backend = "postgres"`).

use std::path::Path;

use async_trait::async_trait;
use custody_identity::{Did, KeyPair};
use custody_ledger::authority::{Authority, Denial};
use custody_ledger::checkpoint::Origin;
use custody_ledger::merkle::{Hash, TreeHead};
use custody_ledger::store::Appended;
use custody_ledger::{PayloadDigest, SignedEvent};

pub mod embedded;
pub mod postgres;

/// Why storage could not do what it was asked. Nothing of the request was
/// stored in either case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Retry later: a full disk, a read-only directory, a database that is
    /// down. The broker answers 503.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (the broker answers 500).
    #[error("{0}")]
    Failed(String),
}

/// Why one event of an append was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendFailure {
    /// The ledger's rules refused it.
    #[error("refused: {0}")]
    Refused(Denial),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The signed request that carried it was a replay (its nonce was
    /// already used): nothing of that request was appended or judged.
    #[error("this request's nonce was already used")]
    ReplayedRequest,
}

/// A signed request's nonce and when it may be forgotten (unix ms), for
/// [`Storage::append_for_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestNonce {
    pub nonce: [u8; 16],
    pub forget_at_ms: i64,
}

/// One result per event, in order.
pub type AppendResults = Vec<Result<Appended, AppendFailure>>;

/// A payload body kept beside the chain: its digest, salt and bytes.
pub type PayloadItem = (PayloadDigest, [u8; 32], Vec<u8>);

#[async_trait]
pub trait Storage: Send + Sync {
    // ---- the ledger ----------------------------------------------------------------

    /// Appends events in order, each checked by the rules in sequence order;
    /// returns once every admitted one is durable.
    async fn append(&self, events: Vec<SignedEvent>) -> AppendResults;
    /// Entries in the ledger (acknowledged). May wait (briefly, on the
    /// embedded backend, for its index to take the last batch): a caller
    /// on the async runtime asks [`visible_size`](Self::visible_size).
    fn size(&self) -> u64;
    /// [`size`](Self::size) for a caller on the async runtime: any wait
    /// happens off the caller's thread, so a request that only reads the
    /// size does not hold up the others a runtime thread serves.
    async fn visible_size(&self) -> Result<u64, StorageError> {
        Ok(self.size())
    }
    /// Reads the rules' state consistently (no append is admitted meanwhile).
    fn with_rules(&self, f: &mut dyn FnMut(&Authority));
    /// Brings the rules' state up to the shared ledger's head as it was at
    /// least at `asked` (a request's arrival), for a caller this broker does
    /// not know yet: a session another broker started a moment ago. Calls
    /// that overlap share one catch-up. A ledger only this process appends
    /// to is always current.
    async fn catch_up_since(&self, asked: std::time::Instant) -> Result<(), StorageError> {
        let _ = asked;
        Ok(())
    }
    async fn head(&self) -> Result<TreeHead, StorageError>;
    /// The canonical line of entry `seq`.
    async fn line(&self, seq: u64) -> Result<Vec<u8>, StorageError>;
    /// The lines of entries `from..`, in order: at most `max_count` of them,
    /// and no more once they add up to `max_bytes` (at least one when entry
    /// `from` exists). A page of the entry feed; reading takes no lock that
    /// appends need.
    async fn lines(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError>;
    async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StorageError>;
    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError>;
    /// Writes the export bundle of the whole ledger into `out` (signing a
    /// checkpoint at its size first if there is none).
    async fn export(
        &self,
        ledger_key: &KeyPair,
        origin: &Origin,
        out: &Path,
    ) -> Result<(), StorageError>;

    // ---- checkpoints ---------------------------------------------------------------

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError>;
    async fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// Keeps a signed note (a new checkpoint, or one with cosignatures added).
    async fn save_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StorageError>;

    // ---- payload bodies ------------------------------------------------------------

    async fn put_payloads(&self, items: Vec<PayloadItem>) -> Result<(), StorageError>;
    async fn payload(
        &self,
        digest: PayloadDigest,
    ) -> Result<Option<([u8; 32], Vec<u8>)>, StorageError>;
    /// Deletes a body and its salt; whether there was one.
    async fn redact(&self, digest: PayloadDigest) -> Result<bool, StorageError>;

    // ---- the broker's records ------------------------------------------------------

    /// Keeps a minted token's accessor (needed to revoke it) durably before
    /// the token is handed out.
    async fn record_accessor(
        &self,
        session: &Did,
        accessor: &str,
        expires_unix: i64,
    ) -> Result<(), StorageError>;
    /// Every recorded accessor of these sessions.
    async fn accessors_of(&self, sessions: &[Did]) -> Result<Vec<(Did, String)>, StorageError>;
    async fn forget_accessor(&self, session: &Did, accessor: &str) -> Result<(), StorageError>;
    /// A session's OTLP ingest credential, by the SHA-256 of its token.
    async fn record_ingest(&self, token_sha256: &str, session: &Did) -> Result<(), StorageError>;
    async fn ingest_session(&self, token_sha256: &str) -> Result<Option<Did>, StorageError>;
    /// Tidies the ingest credentials of sessions that may no longer act (the
    /// rules' state refuses them anyway).
    async fn forget_ingest_of(&self, sessions: &[Did]) -> Result<(), StorageError>;

    // ---- sharing the ledger with other brokers ---------------------------------------

    /// Remembers a signed request's nonce where every broker of this ledger
    /// sees it: `Some(Ok(true))` if it is new, `Some(Ok(false))` if it was
    /// already used. `None` (the default): this backend has one broker,
    /// whose own memory holds them ([`crate::replay`]).
    async fn remember_request_nonce(&self, _n: RequestNonce) -> Option<Result<bool, StorageError>> {
        None
    }

    /// Whether [`append_for_request`](Self::append_for_request) remembers a
    /// request's nonce in the transaction that appends its events (one
    /// transaction per append request instead of two). When not, an append
    /// request's nonce is remembered when it is authenticated, like any
    /// other's.
    fn nonce_with_append(&self) -> bool {
        false
    }

    /// Appends the events of a signed request whose nonce is not remembered
    /// yet, and remembers it in the same transaction. If it was already
    /// used, nothing of the request is appended and every event answers
    /// [`AppendFailure::ReplayedRequest`]. The nonce is kept whatever the
    /// rules say of the events, so a refused request sent again is refused
    /// as a replay, not judged (and its refusal recorded) a second time.
    /// Only called when [`nonce_with_append`](Self::nonce_with_append) says
    /// so; otherwise it refuses the request rather than skip the nonce.
    async fn append_for_request(
        &self,
        events: Vec<SignedEvent>,
        _request: RequestNonce,
    ) -> AppendResults {
        events
            .iter()
            .map(|_| {
                Err(AppendFailure::Storage(StorageError::Failed(
                    "this backend keeps request nonces in the broker's memory".into(),
                )))
            })
            .collect()
    }

    /// Whether other brokers append to the same ledger. A token's accessor
    /// is then recorded before its entries are appended (not beside them):
    /// a revocation on another broker reads the accessors after its own
    /// entry commits, so it finds every token whose mint entry precedes it.
    fn shared(&self) -> bool {
        false
    }

    /// Whether this broker signs the periodic checkpoints. With one broker,
    /// always; brokers sharing a ledger elect one.
    fn signs_checkpoints(&self) -> bool {
        true
    }

    /// [`Storage::size`] as it moves, when entries can arrive that this
    /// broker did not append (another broker of a shared ledger): the feed's
    /// long polls wake on it. `None` when every append goes through this
    /// broker, which wakes them itself.
    fn size_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Drains what is queued and makes everything durable (shutdown).
    async fn close(&self) -> Result<(), StorageError>;
}

/// Reads the rules' state of `storage` through a closure with a result.
pub fn rules<R>(storage: &dyn Storage, f: impl FnOnce(&Authority) -> R) -> R {
    let mut f = Some(f);
    let mut out = None;
    storage.with_rules(&mut |a| {
        if let Some(f) = f.take() {
            out = Some(f(a));
        }
    });
    out.expect("with_rules calls its closure once")
}
