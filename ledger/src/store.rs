//! The durable ledger store: append-only segment files, group-committed with
//! `fdatasync`, and an index that can always be rebuilt from them.
//!
//! ```text
//! DATA/
//!   LOCK                                  held exclusively while open
//!   segments/<first seq, 20 digits>.jsonl one canonical entry line + '\n' each
//!   index/                                sled: actor index, payloads, how far the index goes
//!   index/hashes.table                    RFC 6962 stored hashes, 32 bytes each, tlog order
//!   index/offsets.table                   seq → (segment, offset, length), 20 bytes each
//!   checkpoints/<size, 20 digits>.checkpoint
//!   torn/<seq, 20 digits>-<unix ms>.bin   tails cut by recovery, kept as evidence
//! ```
//!
//! **Durability.** The segment lines are the truth. One writer thread drains
//! every queued append (up to [`MAX_BATCH`]), asks the [`Gate`] whether each
//! event may be appended — in sequence order, atomically with sequencing, so an
//! append checked before a concurrent revocation cannot land after it — writes
//! the admitted lines with one `write`, calls `fdatasync` once (once per
//! [`MAX_BATCH`] lines if the gathered requests hold more), and only then answers
//! every caller of the batch. An indexer thread then updates the
//! index while the writer is already on the next batch; readers wait for it to
//! reach the acknowledged size, so a read after an acknowledgement finds the
//! entry. sled's own `flush` uses
//! `sync_file_range`, which does not survive power loss, so the index only holds
//! what the segments can rebuild: seq → location and the RFC 6962 stored hashes
//! (for O(log n) roots and proofs) in two fixed-width tables, actor DID → seqs
//! and payload bodies in sled. About once a second the indexer syncs the
//! tables and then records in sled how far they go; on open that claim is
//! checked against the segments (the root at the claimed size) and anything
//! past it is indexed again.
//!
//! **Failure.** If a write or sync fails (a full disk, a read-only file
//! system), nothing of that batch is acknowledged: the segment is cut back to
//! what was acknowledged, the gate is rebuilt from it, the batch is answered
//! [`StoreError::WriteFailed`] and later appends are tried again. Only if that
//! undo fails is the store poisoned until it is reopened. If updating the
//! index fails after the sync, the appends stand (they are durable), readers
//! keep seeing the size last indexed, and the writer reopens the index (sled's
//! I/O errors are sticky until then) and catches it up from the segments.
//!
//! **Recovery on open.** Every segment line is parsed and checked (seq
//! contiguity, `prev` chain) and replayed through the gate, so its state is
//! rebuilt from the ledger. The index is brought up to date, and rebuilt
//! from scratch if its root disagrees with the segments.
//!
//! Where the lines stop being complete, canonical, correctly chained
//! entries before the end of the files, what follows is either the torn
//! tail of a write that was never acknowledged or damage to acknowledged
//! entries, and the two are told apart by what can be in flight.
//! Acknowledgement follows the `fdatasync`, and the writer syncs at least
//! every [`MAX_BATCH`] lines, so at any moment at most [`MAX_TORN_BYTES`]
//! bytes of the last segment are written but not yet synced. After a power
//! loss those bytes can be missing, zero-filled (ext4 and XFS can make the
//! file's new size durable before its data) or a mix of written and
//! unwritten pages. The index's durable claim (`Index::claimed`: entries the
//! indexer had synced, which it only ever does for entries already synced
//! in the segments) is a floor below which everything was acknowledged. So
//! the damaged region, from the start of the first bad line to the end of
//! the file, is **repaired** exactly when
//!
//! - it is in the last segment,
//! - it starts at or after the claimed floor (the first bad line's seq is
//!   at least the claim), and
//! - it is at most [`MAX_TORN_BYTES`] long.
//!
//! Repairing copies the region to `torn/<seq, 20 digits>-<unix ms>.bin`
//! (synced, with its directory) before cutting the segment back to the last
//! good line (synced): nothing is destroyed, and [`Store::recovered`] says
//! what was cut for the caller to log. Complete lines after the damage (a
//! zero-filled page in the middle of the batch) go with it: they belong to
//! the same unacknowledged batch. Anything else is **refused**
//! ([`StoreError::Corrupt`] naming the seq, the files untouched): damage in
//! an earlier segment, damage below the claim, a region longer than a batch
//! could leave, and segments that end cleanly short of the claim.
//! Acknowledged entries are never silently dropped. What remains: an
//! acknowledged entry past the claim (the index syncs about once a second)
//! damaged by the medium itself would be moved aside like a torn tail rather
//! than refused; its bytes are then in `torn/`, not lost. Without an index
//! (deleted, or a new one) the claim is 0 and only the length bound remains.
//!
//! Every directory the store creates is synced with its parent
//! ([`crate::fsutil::create_dir_durable`]), so a file's name survives power
//! loss along with its bytes.
//!
//! Checkpoints are thinned over the ledger's life ([`RetentionPolicy`]; the
//! rule is in `checkpoint_store.rs`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use custody_identity::Did;

use crate::canonical::to_canonical;
use crate::checkpoint_store::Checkpoints;
pub use crate::checkpoint_store::{RetentionPolicy, DEFAULT_KEEP_RECENT, MAX_KEEP_RECENT};
use crate::denial::{Denial, DenialCode};
use crate::entry::{entry_hash, Entry, MAX_ENTRY_BYTES};
use crate::event::SignedEvent;
use crate::fsutil::{create_dir_durable, sync_dir};
use crate::merkle::{self, CompactRange, Hash, HashReader, TreeHead};
use crate::table::Table;
use crate::time::Timestamp;
use crate::types::{EntryHash, PayloadDigest, Seq};

/// Most appends one sync covers. Large enough that a sync (~0.2 ms here) is
/// amortized over hundreds of entries, small enough to bound a batch's memory.
pub const MAX_BATCH: usize = 1024;
/// A new segment file starts once the current one passes this size, so no
/// single file grows without bound and old segments can be archived.
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Most bytes the writer ever has written past its last completed
/// `fdatasync`: it syncs at least every [`MAX_BATCH`] lines, and a line is at
/// most [`MAX_ENTRY_BYTES`] plus its newline. A damaged region at the end of
/// the last segment longer than this cannot be a torn write (see the module
/// documentation).
pub const MAX_TORN_BYTES: u64 = MAX_BATCH as u64 * (MAX_ENTRY_BYTES as u64 + 1);
/// How often the writer tries to catch up an index that missed an update
/// while no append comes.
const INDEX_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to catch up the index.
const INDEX_RETRY_MAX: Duration = Duration::from_secs(1);
/// Writer batches queued for the indexer before the writer waits for it:
/// bounds the memory and the lag of the index behind the segments.
const INDEX_QUEUE: usize = 64;
/// How often the indexer records how far the index goes (syncing the
/// tables): what a crash leaves to re-index on the next open.
const INDEX_PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Most entries the indexer takes in one go.
const MAX_INDEX_BATCH: usize = 4 * MAX_BATCH;
/// Longest a reader waits for the index to reach the acknowledged size
/// before it answers with what is indexed (only if the indexer is stuck).
const VISIBLE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Upper bound on a payload body kept beside the chain.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

const SEGMENTS: &str = "segments";
const INDEX: &str = "index";
const CHECKPOINTS: &str = "checkpoints";
/// Where recovery puts the bytes it cuts from a torn segment tail.
pub const TORN: &str = "torn";
/// Attempts at a free name in `torn/` when one is taken (the same seq cut
/// twice within a millisecond, or a clock set back).
const TORN_NAME_TRIES: u64 = 1000;
const LOCK: &str = "LOCK";
const META_INDEXED: &[u8] = b"indexed_upto";
const HASHES_TABLE: &str = "hashes.table";
const OFFSETS_TABLE: &str = "offsets.table";

/// Why the gate refused an event: the rules' own [`Denial`] (a stable code
/// and a message for people), so a refusal keeps its type from the rules to
/// the HTTP answer.
pub type Rejection = Denial;

/// Decides, in sequence order, whether an event may be appended.
pub trait Gate: Send + 'static {
    /// What an admission carries from [`admit`](Gate::admit) to
    /// [`applied`](Gate::applied): the change the accepted event makes.
    type Admitted: Send;
    /// The checks that do not depend on the ledger's state (signatures). They
    /// run in the appending caller's thread, in parallel, before the event is
    /// queued, so the single writer thread only does what must be sequential.
    /// `canonical` is the event's JCS form, which the signature covers.
    fn precheck(event: &SignedEvent, canonical: &[u8]) -> Result<(), Rejection>
    where
        Self: Sized;
    /// Whether `event` may be appended with this receive time. Must not change
    /// state: a rejected event changes nothing.
    fn admit(
        &mut self,
        event: &SignedEvent,
        received_at: Timestamp,
    ) -> Result<Self::Admitted, Rejection>;
    /// Folds an admitted entry into the state.
    fn applied(&mut self, entry: &Entry, admitted: Self::Admitted);
    /// Folds a stored entry into the state on reopen, checking it again: an
    /// entry today's rules refuse changes nothing.
    fn replay(&mut self, entry: &Entry);
    /// An empty gate with the same configuration. After a failed write the
    /// store rebuilds the state from the ledger into one, since the batch had
    /// already been folded in.
    fn fresh(&self) -> Self
    where
        Self: Sized;
}

/// A gate that only checks the actor's signature (tests and tools).
#[derive(Debug, Default)]
pub struct AcceptAll;

impl Gate for AcceptAll {
    type Admitted = ();

    fn precheck(event: &SignedEvent, canonical: &[u8]) -> Result<(), Rejection> {
        event
            .verify_canonical(canonical)
            .map_err(|e| Denial::new(DenialCode::BadSignature, e.to_string()))
    }
    fn admit(&mut self, _: &SignedEvent, _: Timestamp) -> Result<(), Rejection> {
        Ok(())
    }
    fn applied(&mut self, _: &Entry, _: ()) {}

    fn replay(&mut self, _: &Entry) {}

    fn fresh(&self) -> Self {
        AcceptAll
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The OS error is in the message (not a `source`, which would print it
    /// twice in an error chain).
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} is in use by another process (lock held on {0}/LOCK)")]
    Locked(PathBuf),
    #[error("segment {path}: entry {seq}: {reason}")]
    Corrupt {
        path: PathBuf,
        seq: u64,
        reason: String,
    },
    #[error("index: {0}")]
    Index(String),
    #[error("checkpoint at size {size}: {reason}")]
    Checkpoint { size: u64, reason: String },
    #[error(
        "the store hit a failure it could not undo and refuses appends until it is reopened: {0}"
    )]
    Poisoned(String),
    /// Nothing of the request was stored; later appends are tried again.
    #[error("writing the ledger failed, nothing of this request was stored: {0}")]
    WriteFailed(String),
    #[error("no entry {0}")]
    NoSuchEntry(u64),
    #[error("payload: {0}")]
    Payload(String),
    #[error("merkle: {0}")]
    Merkle(#[from] merkle::MerkleError),
    #[error("the store is closed")]
    Closed,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn idx(e: sled::Error) -> StoreError {
    StoreError::Index(e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("refused: {0}")]
    Rejected(Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An acknowledged (durable) append.
#[derive(Clone, Debug)]
pub struct Appended {
    pub seq: Seq,
    pub hash: EntryHash,
    pub entry: Entry,
}

/// A torn tail that opening the store cut from the last segment (see the
/// module documentation): never acknowledged, kept aside in `saved_to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The first seq the cut bytes would have held.
    pub seq: u64,
    /// The segment they were cut from.
    pub segment: PathBuf,
    /// How many bytes were cut.
    pub bytes: u64,
    /// The file holding exactly those bytes.
    pub saved_to: PathBuf,
    /// What was wrong with the first cut line.
    pub reason: String,
}

/// How to open a [`Store`]; [`Store::open`] uses the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// A new segment starts once the current one has reached this many
    /// bytes (a batch is never split across segments).
    pub max_segment_bytes: u64,
    /// Which checkpoints are kept.
    pub retention: RetentionPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: MAX_SEGMENT_BYTES,
            retention: RetentionPolicy::default(),
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    pub appends: u64,
    pub syncs: u64,
    pub batches: u64,
}

/// A payload's salt and body.
pub type SaltedPayload = ([u8; 32], Vec<u8>);

type Reply = mpsc::SyncSender<Vec<Result<Appended, AppendError>>>;

struct Request {
    /// Events that passed [`Gate::precheck`], with their canonical JSON.
    events: Vec<(SignedEvent, Vec<u8>)>,
    reply: Reply,
}

/// The index: derived from the segments (payload bodies aside). Merkle
/// stored hashes and line locations are fixed-width tables (see
/// [`crate::table`]); the actor index and payload bodies live in sled.
struct Index {
    /// Stored hashes recently read or written by the indexer.
    hash_cache: Mutex<HashMap<u64, Hash>>,
    /// RFC 6962 stored hashes in tlog order.
    hashes: Table<32>,
    /// seq → where its line is (see [`encode_location`]).
    offsets: Table<20>,
    db: sled::Db,
    by_actor: sled::Tree,
    payloads: sled::Tree,
    /// How many entries the index holds durably ([`META_INDEXED`]).
    meta: sled::Tree,
}

/// How far the segments and the index have got.
struct Progress {
    /// Entries durable in the segments (acknowledged or being acknowledged).
    durable: u64,
    /// Entries in the index; readers see up to here.
    indexed: u64,
    /// An index update failed: until the writer has reopened the index and
    /// caught it up from the segments, readers see `indexed` without waiting
    /// and the indexer drops the updates it is sent.
    behind: bool,
}

/// What the writer hands the indexer: the entries from `start` on.
struct IndexJob {
    start: u64,
    items: Vec<IndexItem>,
}

/// What the index keeps of one entry.
struct IndexItem {
    /// First seq of the segment holding the line.
    segment: u64,
    /// Byte offset of the line in that segment.
    offset: u64,
    len: u32,
    hash: EntryHash,
    actor: Did,
}

/// State shared by the writer thread, the indexer thread and readers.
struct Shared {
    dir: PathBuf,
    /// `None` only while the writer reopens it after a failure: sled's I/O
    /// errors are sticky, every later operation fails until it is reopened.
    index: RwLock<Option<Arc<Index>>>,
    progress: Mutex<Progress>,
    /// Signalled whenever `progress` changes.
    progressed: Condvar,
    poisoned: Mutex<Option<String>>,
    /// Torn tails cut since the store was opened.
    recovered: Mutex<Vec<Recovered>>,
    closed: AtomicBool,
    appends: AtomicU64,
    syncs: AtomicU64,
    batches: AtomicU64,
}

/// The durable store. `Send + Sync`: share it behind an `Arc`.
pub struct Store<G: Gate> {
    shared: Arc<Shared>,
    gate: Arc<Mutex<G>>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpoints: Mutex<Checkpoints>,
    _lock: File,
}

/// Where an entry's line lives: segment (by first seq), byte offset, length.
fn encode_location(segment: u64, offset: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&segment.to_be_bytes());
    b[8..16].copy_from_slice(&offset.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

fn decode_location(b: &[u8]) -> Option<(u64, u64, u32)> {
    if b.len() != 20 {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..16].try_into().ok()?),
        u32::from_be_bytes(b[16..].try_into().ok()?),
    ))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

fn actor_key(did: &Did, seq: u64) -> Vec<u8> {
    let mut k = did.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Reads stored hashes from the hash table, with an overlay for those
/// computed in the current batch but not yet written.
struct TableHashes<'a> {
    table: &'a Table<32>,
    overlay: &'a HashMap<u64, Hash>,
    /// Stored hashes read or written recently (see [`HASH_CACHE_MAX`]).
    cache: Option<&'a Mutex<HashMap<u64, Hash>>>,
}

/// Stored hashes kept in memory by the index. Appending record `n` and
/// computing the root read the same few subtree roots (the tree's right
/// frontier) over and over; caching them takes sled reads off the writer's
/// path. Cleared when full, since the frontier refills it on demand.
const HASH_CACHE_MAX: usize = 1 << 16;

impl HashReader for TableHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let mut cache = self.cache.map(|c| c.lock().expect("lock"));
        indexes
            .iter()
            .map(|i| {
                if let Some(h) = self.overlay.get(i) {
                    return Ok(*h);
                }
                if let Some(h) = cache.as_ref().and_then(|c| c.get(i)) {
                    return Ok(*h);
                }
                match self.table.get(*i) {
                    Ok(Some(h)) => {
                        if let Some(c) = cache.as_mut() {
                            c.insert(*i, Hash(h));
                        }
                        Ok(Hash(h))
                    }
                    _ => Err(tlog_tiles::Error::IndexesNotInTree),
                }
            })
            .collect()
    }
}

static EMPTY_OVERLAY: std::sync::LazyLock<HashMap<u64, Hash>> =
    std::sync::LazyLock::new(HashMap::new);

fn open_table<const W: usize>(dir: &Path, name: &str) -> Result<Table<W>, StoreError> {
    let path = dir.join(INDEX).join(name);
    Table::open(&path).map_err(io(&path))
}

impl Index {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(INDEX);
        create_dir_durable(&path).map_err(io(&path))?;
        let db = open_index(&path)?;
        // Before the tables, sled held these; nothing reads them now.
        for old in ["offsets", "hashes"] {
            db.drop_tree(old).map_err(idx)?;
        }
        let tree = |name: &str| db.open_tree(name).map_err(idx);
        Ok(Self {
            hash_cache: Mutex::new(HashMap::new()),
            hashes: open_table(dir, HASHES_TABLE)?,
            offsets: open_table(dir, OFFSETS_TABLE)?,
            by_actor: tree("by_actor")?,
            payloads: tree("payloads")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn reader(&self) -> TableHashes<'_> {
        TableHashes {
            table: &self.hashes,
            overlay: &EMPTY_OVERLAY,
            cache: None,
        }
    }

    /// How many entries the index says it holds durably.
    fn claimed(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(META_INDEXED)
            .map_err(idx)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Brings the index up to the segments `scan` read: keeps the prefix it
    /// claims if the tables hold it and its root agrees with the segments,
    /// else rebuilds it from scratch.
    fn catch_up(&self, dir: &Path, scan: &Scan, claimed: u64) -> Result<(), StoreError> {
        let hashes_len = self.hashes.len().map_err(io(self.hashes.path()))?;
        let offsets_len = self.offsets.len().map_err(io(self.offsets.path()))?;
        let index_ok = claimed <= scan.entries
            && offsets_len >= claimed
            && hashes_len >= tlog_tiles::stored_hash_count(claimed)
            && match (claimed, scan.range_at_indexed) {
                (0, _) => true,
                (_, Some(r)) => tlog_tiles::tree_hash(claimed, &self.reader()).ok() == Some(r),
                _ => false,
            };
        let from = if index_ok { claimed } else { 0 };
        if !index_ok {
            for t in [&self.by_actor, &self.meta] {
                t.clear().map_err(idx)?;
            }
        }
        // Whatever lies past the claim was never synced: write it again.
        self.hashes
            .truncate(tlog_tiles::stored_hash_count(from))
            .map_err(io(self.hashes.path()))?;
        self.offsets
            .truncate(from)
            .map_err(io(self.offsets.path()))?;
        if from < scan.entries {
            reindex(self, dir, from)?;
            self.persist(scan.entries)?;
        }
        Ok(())
    }

    /// Indexes entries: their stored hashes and line locations as one write
    /// per table, their actors as one sled batch. `start` is the seq of
    /// `items[0]`. Not durable until [`Index::persist`].
    fn index_entries(&self, start: u64, items: &[IndexItem]) -> Result<(), StoreError> {
        let mut overlay = HashMap::new();
        let mut hashes = Vec::with_capacity(items.len() * 2 * 32);
        let mut offsets = Vec::with_capacity(items.len() * 20);
        let mut ab = sled::Batch::default();
        for (i, item) in items.iter().enumerate() {
            let n = start + i as u64;
            let reader = TableHashes {
                table: &self.hashes,
                overlay: &overlay,
                cache: Some(&self.hash_cache),
            };
            let new = tlog_tiles::stored_hashes_for_record_hash(n, Hash(item.hash.0), &reader)
                .map_err(|e| StoreError::Index(format!("stored hashes for {n}: {e}")))?;
            let first_index = tlog_tiles::stored_hash_count(n);
            for (k, h) in new.into_iter().enumerate() {
                overlay.insert(first_index + k as u64, h);
                hashes.extend_from_slice(&h.0);
            }
            offsets.extend_from_slice(&encode_location(item.segment, item.offset, item.len));
            ab.insert(actor_key(&item.actor, n), &[]);
        }
        // Stored hashes of consecutive records are consecutive in the table.
        self.hashes
            .put(tlog_tiles::stored_hash_count(start), &hashes)
            .map_err(io(self.hashes.path()))?;
        self.offsets
            .put(start, &offsets)
            .map_err(io(self.offsets.path()))?;
        self.by_actor.apply_batch(ab).map_err(idx)?;
        let mut c = self.hash_cache.lock().expect("lock");
        if c.len() + overlay.len() > HASH_CACHE_MAX {
            c.clear();
        }
        c.extend(overlay);
        Ok(())
    }

    /// Makes the first `upto` indexed entries durable and records that they
    /// are: the tables are synced before sled says how far they go.
    fn persist(&self, upto: u64) -> Result<(), StoreError> {
        self.hashes.sync().map_err(io(self.hashes.path()))?;
        self.offsets.sync().map_err(io(self.offsets.path()))?;
        self.meta
            .insert(META_INDEXED, &upto.to_be_bytes())
            .map_err(idx)?;
        self.db.flush().map_err(idx)?;
        Ok(())
    }
}

impl Shared {
    fn index(&self) -> Result<Arc<Index>, StoreError> {
        self.index.read().expect("lock").clone().ok_or_else(|| {
            StoreError::Index("the index is unavailable until it is reopened".into())
        })
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(SEGMENTS).join(segment_name(first))
    }

    /// Entries readers may see: every acknowledged entry, so a read that
    /// follows an acknowledgement finds it. Waits for the indexer to catch up
    /// with the segments, unless the index is being repaired (then it is the
    /// size last indexed).
    fn visible(&self) -> u64 {
        let deadline = Instant::now() + VISIBLE_WAIT_MAX;
        let mut p = self.progress.lock().expect("lock");
        while p.indexed < p.durable && !p.behind {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            p = self.progressed.wait_timeout(p, left).expect("lock").0;
        }
        p.indexed
    }

    /// Keeps what a scan cut, for [`Store::recovered`].
    fn note_recovered(&self, scan: &Scan) {
        if let Some(r) = &scan.recovered {
            self.recovered.lock().expect("lock").push(r.clone());
        }
    }

    fn update_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().expect("lock"));
        self.progressed.notify_all();
    }

    fn read_line(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        if seq >= self.visible() {
            return Err(StoreError::NoSuchEntry(seq));
        }
        let ix = self.index()?;
        let loc = ix
            .offsets
            .get(seq)
            .map_err(io(ix.offsets.path()))?
            .ok_or(StoreError::NoSuchEntry(seq))?;
        let (segment, offset, len) = decode_location(&loc)
            .ok_or_else(|| StoreError::Index(format!("bad location for {seq}")))?;
        let path = self.segment_path(segment);
        let f = File::open(&path).map_err(io(&path))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(io(&path))?;
        Ok(buf)
    }
}

/// What the writer thread owns.
struct Writer<G: Gate> {
    shared: Arc<Shared>,
    gate: Arc<Mutex<G>>,
    rx: mpsc::Receiver<Request>,
    /// Where durable lines go to be indexed, in seq order.
    index_tx: Option<mpsc::SyncSender<IndexJob>>,
    indexer: Option<JoinHandle<()>>,
    next: u64,
    prev: EntryHash,
    last_time: Option<Timestamp>,
    segment: File,
    segment_first: u64,
    segment_len: u64,
    max_segment_bytes: u64,
    /// No new attempt to reopen the index before this.
    index_retry_at: Option<Instant>,
}

impl<G: Gate> Writer<G> {
    fn run(mut self) {
        loop {
            // Wakes up now and then so an index that fell behind is caught up
            // even if no append comes.
            match self.rx.recv_timeout(INDEX_RETRY) {
                Ok(first) => {
                    let mut count = first.events.len();
                    let mut batch = vec![first];
                    while count < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(r) => {
                                count += r.events.len();
                                batch.push(r);
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.index_behind() {
                self.catch_up_index();
            }
        }
        // Lets the indexer finish what it was sent.
        drop(self.index_tx.take());
        if let Some(h) = self.indexer.take() {
            let _ = h.join();
        }
    }

    fn index_behind(&self) -> bool {
        self.shared.progress.lock().expect("lock").behind
    }

    fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.lock().expect("lock").clone()
    }

    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(why) = self.poisoned() {
            for r in batch {
                let n = r.events.len();
                let _ = r.reply.send(
                    (0..n)
                        .map(|_| Err(AppendError::Store(StoreError::Poisoned(why.clone()))))
                        .collect(),
                );
            }
            return;
        }
        if let Err(e) = self.maybe_rotate() {
            // Nothing was folded into the gate yet: refuse this batch only.
            let why = e.to_string();
            for r in batch {
                let n = r.events.len();
                let _ = r.reply.send(
                    (0..n)
                        .map(|_| Err(AppendError::Store(StoreError::WriteFailed(why.clone()))))
                        .collect(),
                );
            }
            return;
        }
        let mut gate = self.gate.lock().expect("gate lock");
        let mut buf = Vec::new();
        // Where buf is synced: after every MAX_BATCH lines (see `write_synced`).
        let mut sync_points = Vec::new();
        let mut unsynced_lines = 0usize;
        let mut results: Vec<Vec<Option<Result<Appended, AppendError>>>> = Vec::new();
        let mut index_items = Vec::new();
        let start = self.next;
        let (mut next, mut prev, mut last_time) = (self.next, self.prev, self.last_time);
        let mut replies = Vec::with_capacity(batch.len());
        for r in batch {
            let mut rs = Vec::with_capacity(r.events.len());
            replies.push(r.reply);
            for (ev, canonical) in r.events {
                let now = Timestamp::now();
                let at = match last_time {
                    Some(t) if t > now => t,
                    _ => now,
                };
                let admitted = match gate.admit(&ev, at) {
                    Ok(a) => a,
                    Err(rej) => {
                        rs.push(Some(Err(AppendError::Rejected(rej))));
                        continue;
                    }
                };
                let entry = Entry::new(Seq(next), prev, at, ev);
                let line = match entry.to_line_with_event(&canonical) {
                    Ok(l) if l.len() <= MAX_ENTRY_BYTES => l,
                    Ok(l) => {
                        rs.push(Some(Err(AppendError::Rejected(Denial::new(
                            DenialCode::TooLarge,
                            format!(
                                "entry would be {} bytes; the limit is {MAX_ENTRY_BYTES}",
                                l.len()
                            ),
                        )))));
                        continue;
                    }
                    Err(e) => {
                        rs.push(Some(Err(AppendError::Rejected(Denial::new(
                            DenialCode::Malformed,
                            e.to_string(),
                        )))));
                        continue;
                    }
                };
                let hash = entry_hash(&line);
                let offset = self.segment_len + buf.len() as u64;
                buf.extend_from_slice(&line);
                buf.push(b'\n');
                unsynced_lines += 1;
                if unsynced_lines == MAX_BATCH {
                    sync_points.push(buf.len());
                    unsynced_lines = 0;
                }
                index_items.push(IndexItem {
                    segment: self.segment_first,
                    offset,
                    len: line.len() as u32,
                    hash,
                    actor: entry.event.actor.clone(),
                });
                gate.applied(&entry, admitted);
                prev = hash;
                last_time = Some(at);
                next += 1;
                rs.push(Some(Ok(Appended {
                    seq: entry.seq,
                    hash,
                    entry,
                })));
            }
            results.push(rs);
        }
        drop(gate);

        if !buf.is_empty() {
            let path = self.shared.segment_path(self.segment_first);
            let written = self.write_synced(&buf, &sync_points);
            if let Err(e) = written {
                let why = format!("{}: {e}", path.display());
                // Unacknowledged lines may be partly on disk and the gate has
                // folded them in: undo both, or stop taking appends.
                let (undone, why) = match self.recover() {
                    Ok(()) => (true, why),
                    Err(e2) => {
                        let why = format!("{why}; undoing it failed: {e2}");
                        self.poison(why.clone());
                        (false, why)
                    }
                };
                for (reply, rs) in replies.into_iter().zip(results) {
                    let _ = reply.send(
                        rs.into_iter()
                            .map(|x| match x {
                                Some(Err(AppendError::Rejected(rej))) => {
                                    Err(AppendError::Rejected(rej))
                                }
                                _ => Err(AppendError::Store(if undone {
                                    StoreError::WriteFailed(why.clone())
                                } else {
                                    StoreError::Poisoned(why.clone())
                                })),
                            })
                            .collect(),
                    );
                }
                return;
            }
            self.segment_len += buf.len() as u64;
            self.next = next;
            self.prev = prev;
            self.last_time = last_time;
            self.shared.update_progress(|p| p.durable = next);
            self.shared
                .appends
                .fetch_add(next - start, Ordering::Relaxed);
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        for (reply, rs) in replies.into_iter().zip(results) {
            let _ = reply.send(rs.into_iter().flatten().collect());
        }
        // The lines are durable and acknowledged. The index is derived state,
        // updated by the indexer thread while the next batch is written;
        // readers wait for it (see `Shared::visible`).
        if !index_items.is_empty() {
            if let Some(tx) = &self.index_tx {
                let _ = tx.send(IndexJob {
                    start,
                    items: index_items,
                });
            }
        }
    }

    /// Appends `buf` to the segment and syncs it: at each of `sync_points`
    /// and at the end. One gathered batch can hold more than [`MAX_BATCH`]
    /// lines (several requests, or one large one), and recovery relies on no
    /// more than [`MAX_TORN_BYTES`] ever being written past the last
    /// completed sync. Nothing is acknowledged before the last sync.
    fn write_synced(&mut self, buf: &[u8], sync_points: &[usize]) -> std::io::Result<()> {
        let mut from = 0;
        for &to in sync_points.iter().chain([buf.len()].iter()) {
            if to == from {
                continue;
            }
            self.segment.write_all(&buf[from..to])?;
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
            self.segment.sync_data()?;
            from = to;
        }
        Ok(())
    }

    /// After a failed index update: reopens the index and catches it up, then
    /// lets readers see every acknowledged entry. Retried with later appends
    /// and every [`INDEX_RETRY`] meanwhile, backing off in proportion to what
    /// a failed attempt cost (it may read every segment), up to
    /// [`INDEX_RETRY_MAX`].
    fn catch_up_index(&mut self) {
        let started = Instant::now();
        if self.index_retry_at.is_some_and(|t| started < t) {
            return;
        }
        match self.repair_index() {
            Ok(()) => {
                self.index_retry_at = None;
                let next = self.next;
                self.shared.update_progress(|p| {
                    p.indexed = next;
                    p.behind = false;
                });
            }
            Err(_) => {
                let wait = (started.elapsed() * 10).min(INDEX_RETRY_MAX);
                self.index_retry_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Reopens the index and catches it up with the segments. sled's I/O
    /// errors are sticky (after a full disk has been freed, every operation
    /// still fails), so retrying on the same handle would never succeed.
    fn repair_index(&mut self) -> Result<(), StoreError> {
        // Closes the old handle (open_index waits for sled to let go of it).
        drop(self.shared.index.write().expect("lock").take());
        let ix = Index::open(&self.shared.dir)?;
        let claimed = ix.claimed()?;
        // Everything up to `next` is acknowledged; past it nothing is.
        let scan = scan_segments(&self.shared.dir, &mut AcceptAll, claimed, self.next)?;
        self.shared.note_recovered(&scan);
        if scan.entries != self.next || scan.prev != self.prev {
            return Err(StoreError::Corrupt {
                path: self.shared.segment_path(self.segment_first),
                seq: scan.entries,
                reason: format!(
                    "reopening the index found {} entries, expected {}",
                    scan.entries, self.next
                ),
            });
        }
        ix.catch_up(&self.shared.dir, &scan, claimed)?;
        *self.shared.index.write().expect("lock") = Some(Arc::new(ix));
        Ok(())
    }

    fn poison(&self, why: String) {
        let mut p = self.shared.poisoned.lock().expect("lock");
        if p.is_none() {
            *p = Some(why);
        }
    }

    /// After a failed write: cuts the segment back to what was acknowledged
    /// and rebuilds the gate from the ledger on disk.
    fn recover(&mut self) -> Result<(), StoreError> {
        let path = self.shared.segment_path(self.segment_first);
        self.segment.set_len(self.segment_len).map_err(io(&path))?;
        let mut fresh = self.gate.lock().expect("gate lock").fresh();
        let scan = scan_segments(&self.shared.dir, &mut fresh, self.next, self.next)?;
        self.shared.note_recovered(&scan);
        if scan.entries != self.next || scan.prev != self.prev {
            return Err(StoreError::Corrupt {
                path,
                seq: scan.entries,
                reason: format!(
                    "after undoing a failed write the ledger holds {} entries, expected {}",
                    scan.entries, self.next
                ),
            });
        }
        *self.gate.lock().expect("gate lock") = fresh;
        Ok(())
    }

    fn maybe_rotate(&mut self) -> Result<(), StoreError> {
        // An empty segment is never left behind: the next one would have the
        // same name (its first seq).
        if self.segment_len == 0 || self.segment_len < self.max_segment_bytes {
            return Ok(());
        }
        let path = self.shared.segment_path(self.next);
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let dir = self.shared.dir.join(SEGMENTS);
        sync_dir(&dir).map_err(io(&dir))?;
        self.segment = f;
        self.segment_first = self.next;
        self.segment_len = 0;
        Ok(())
    }
}

/// The indexer thread: indexes durable lines in seq order, several batches
/// of the writer at a time, so sled's work overlaps the next `fdatasync`
/// instead of following it. After a failure it marks the index behind and
/// drops what it is sent until the writer has repaired the index: the repair
/// reads the segments, which only the writer may do safely (it truncates a
/// torn tail).
fn run_indexer(shared: &Shared, rx: mpsc::Receiver<IndexJob>, mut persisted: u64) {
    let mut persisted_at = Instant::now();
    loop {
        let first = match rx.recv_timeout(INDEX_PERSIST_EVERY) {
            Ok(j) => j,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                persist_indexed(shared, &mut persisted);
                persisted_at = Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        let mut count = jobs[0].items.len();
        while count < MAX_INDEX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    count += j.items.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut runs: Vec<IndexJob> = Vec::new();
        for j in jobs {
            match runs.last_mut() {
                Some(r) if r.start + r.items.len() as u64 == j.start => r.items.extend(j.items),
                _ => runs.push(j),
            }
        }
        for run in runs {
            let Some(IndexJob { start, items }) = unindexed_part(shared, run) else {
                continue;
            };
            let done = shared
                .index()
                .and_then(|ix| ix.index_entries(start, &items));
            let end = start + items.len() as u64;
            shared.update_progress(|p| match done {
                Ok(()) => p.indexed = end,
                Err(_) => p.behind = true,
            });
        }
        if persisted_at.elapsed() >= INDEX_PERSIST_EVERY {
            persist_indexed(shared, &mut persisted);
            persisted_at = Instant::now();
        }
    }
    persist_indexed(shared, &mut persisted);
}

/// The part of `run` the index does not hold yet, or `None` if there is
/// nothing for the indexer to do: all of it is indexed, or the index is
/// behind and a repair from the segments will cover it. A run that starts
/// past the index (a gap) marks it behind.
fn unindexed_part(shared: &Shared, mut run: IndexJob) -> Option<IndexJob> {
    let mut p = shared.progress.lock().expect("lock");
    let end = run.start + run.items.len() as u64;
    if p.behind || end <= p.indexed {
        return None;
    }
    if run.start > p.indexed {
        p.behind = true;
        drop(p);
        shared.progressed.notify_all();
        return None;
    }
    run.items.drain(..(p.indexed - run.start) as usize);
    run.start = p.indexed;
    Some(run)
}

/// Records durably how far the index goes, so the next open only indexes
/// what came after. A failure sends the index to the writer for repair.
fn persist_indexed(shared: &Shared, persisted: &mut u64) {
    let upto = {
        let p = shared.progress.lock().expect("lock");
        if p.behind || p.indexed == *persisted {
            return;
        }
        p.indexed
    };
    match shared.index().and_then(|ix| ix.persist(upto)) {
        Ok(()) => *persisted = upto,
        Err(_) => shared.update_progress(|p| p.behind = true),
    }
}

/// What scanning the segments found.
struct Scan {
    entries: u64,
    prev: EntryHash,
    last_time: Option<Timestamp>,
    last_segment: (u64, u64),
    /// Root after each prefix that sled claims to have indexed.
    range_at_indexed: Option<Hash>,
    /// The torn tail cut from the last segment, if there was one.
    recovered: Option<Recovered>,
}

impl<G: Gate> Store<G> {
    /// Opens (or creates) the store in `dir`, recovers it, and replays every
    /// entry through `gate`, with the default [`StoreOptions`].
    pub fn open(dir: &Path, gate: G) -> Result<Self, StoreError> {
        Self::open_with(dir, gate, StoreOptions::default())
    }

    /// [`Store::open`] with `options`.
    pub fn open_with(dir: &Path, mut gate: G, options: StoreOptions) -> Result<Self, StoreError> {
        for d in [dir.to_path_buf(), dir.join(SEGMENTS)] {
            create_dir_durable(&d).map_err(io(&d))?;
        }
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let checkpoints = Checkpoints::open(&dir.join(CHECKPOINTS), options.retention)?;

        let index = Index::open(dir)?;
        let claimed = index.claimed()?;
        let scan = scan_segments(dir, &mut gate, claimed, claimed)?;
        let (segment_first, segment_len) = scan.last_segment;
        let seg_path = dir.join(SEGMENTS).join(segment_name(segment_first));
        let segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seg_path)
            .map_err(io(&seg_path))?;
        // The scan accepted every complete line it found, and after a crash
        // (not a power loss) those may be in the page cache only: they must
        // be durable before the index may claim them, or the claim would not
        // be a floor of what is on disk. And the first segment may have just
        // been created: its name must be durable before any entry in it is
        // acknowledged.
        segment.sync_data().map_err(io(&seg_path))?;
        let seg_dir = dir.join(SEGMENTS);
        sync_dir(&seg_dir).map_err(io(&seg_dir))?;
        index.catch_up(dir, &scan, claimed)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            index: RwLock::new(Some(Arc::new(index))),
            progress: Mutex::new(Progress {
                durable: scan.entries,
                indexed: scan.entries,
                behind: false,
            }),
            progressed: Condvar::new(),
            poisoned: Mutex::new(None),
            recovered: Mutex::new(scan.recovered.into_iter().collect()),
            closed: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });

        let (index_tx, index_rx) = mpsc::sync_channel(INDEX_QUEUE);
        let indexer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("custody-ledger-indexer".into())
                .spawn(move || run_indexer(&shared, index_rx, scan.entries))
                .map_err(io(dir))?
        };
        let gate = Arc::new(Mutex::new(gate));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            gate: gate.clone(),
            rx,
            index_tx: Some(index_tx),
            indexer: Some(indexer),
            next: scan.entries,
            prev: scan.prev,
            last_time: scan.last_time,
            segment,
            segment_first,
            segment_len,
            max_segment_bytes: options.max_segment_bytes,
            index_retry_at: None,
        };
        let handle = std::thread::Builder::new()
            .name("custody-ledger-writer".into())
            .spawn(move || writer.run())
            .map_err(io(dir))?;
        Ok(Self {
            shared,
            gate,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            checkpoints: Mutex::new(checkpoints),
            _lock: lock,
        })
    }

    /// The torn tails cut from the last segment since the store was opened
    /// (on open, or when the writer reread the segments after a failure), in
    /// the order they were cut. Each was never acknowledged and is kept in
    /// its `saved_to` file; the caller should log them.
    pub fn recovered(&self) -> Vec<Recovered> {
        self.shared.recovered.lock().expect("lock").clone()
    }

    /// Appends one event; returns once it is durable.
    pub fn append(&self, signed: SignedEvent) -> Result<Appended, AppendError> {
        self.append_many(vec![signed])
            .pop()
            .unwrap_or(Err(AppendError::Store(StoreError::Closed)))
    }

    /// Appends events in order, in one batch; one result per event.
    ///
    /// The gate's stateless checks (signatures) run here, in the caller's
    /// thread; only events that pass them reach the writer.
    pub fn append_many(&self, events: Vec<SignedEvent>) -> Vec<Result<Appended, AppendError>> {
        let n = events.len();
        let mut results: Vec<Option<Result<Appended, AppendError>>> =
            (0..n).map(|_| None).collect();
        let mut queued = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        for (i, ev) in events.into_iter().enumerate() {
            let checked = to_canonical(&ev.event)
                .map_err(|e| Denial::new(DenialCode::Malformed, e.to_string()))
                .and_then(|canonical| G::precheck(&ev, &canonical).map(|()| canonical));
            match checked {
                Ok(canonical) => {
                    positions.push(i);
                    queued.push((ev, canonical));
                }
                Err(rej) => results[i] = Some(Err(AppendError::Rejected(rej))),
            }
        }
        if !queued.is_empty() {
            let k = queued.len();
            let closed = || {
                (0..k)
                    .map(|_| Err(AppendError::Store(StoreError::Closed)))
                    .collect::<Vec<_>>()
            };
            let (reply, rx) = mpsc::sync_channel(1);
            let sent = {
                let tx = self.tx.lock().expect("lock");
                tx.as_ref().is_some_and(|tx| {
                    tx.send(Request {
                        events: queued,
                        reply,
                    })
                    .is_ok()
                })
            };
            let answers = if sent {
                rx.recv().unwrap_or_else(|_| closed())
            } else {
                closed()
            };
            for (i, a) in positions.into_iter().zip(answers) {
                results[i] = Some(a);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(AppendError::Store(StoreError::Closed))))
            .collect()
    }

    /// Reads the gate's state consistently (no batch is being admitted meanwhile).
    pub fn with_gate<R>(&self, f: impl FnOnce(&G) -> R) -> R {
        let g: MutexGuard<'_, G> = self.gate.lock().expect("gate lock");
        f(&g)
    }

    /// Number of acknowledged entries.
    pub fn len(&self) -> u64 {
        self.shared.visible()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size and root of the acknowledged tree.
    pub fn head(&self) -> Result<TreeHead, StoreError> {
        let size = self.len();
        Ok(TreeHead {
            size,
            root: self.root_at(size)?,
        })
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        if size > self.len() {
            return Err(StoreError::NoSuchEntry(size));
        }
        tlog_tiles::tree_hash(size, &self.shared.index()?.reader())
            .map_err(|e| StoreError::Index(e.to_string()))
    }

    pub fn line(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.shared.read_line(seq)
    }

    pub fn entry(&self, seq: u64) -> Result<Entry, StoreError> {
        let line = self.line(seq)?;
        Entry::parse_line(&line).map_err(|e| StoreError::Corrupt {
            path: self.shared.dir.join(SEGMENTS),
            seq,
            reason: e.to_string(),
        })
    }

    /// All acknowledged lines in order, read sequentially from the segments.
    pub fn lines(&self) -> Result<impl Iterator<Item = Result<Vec<u8>, StoreError>>, StoreError> {
        let upto = self.len();
        let segments = list_segments(&self.shared.dir)?;
        Ok(SegmentLines {
            segments: segments.into_iter(),
            current: None,
            remaining: upto,
        })
    }

    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<Vec<Hash>, StoreError> {
        if tree_size > self.len() {
            return Err(StoreError::NoSuchEntry(tree_size));
        }
        Ok(merkle::inclusion_proof(
            &self.shared.index()?.reader(),
            tree_size,
            seq,
        )?)
    }

    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        if new_size > self.len() {
            return Err(StoreError::NoSuchEntry(new_size));
        }
        Ok(merkle::consistency_proof(
            &self.shared.index()?.reader(),
            new_size,
            old_size,
        )?)
    }

    /// Seqs of the entries `did` signed.
    pub fn seqs_for_actor(&self, did: &Did) -> Result<Vec<Seq>, StoreError> {
        let mut prefix = did.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.shared.index()?.by_actor.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(idx)?;
            let seq = k[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Index("bad actor key".into()))?;
            out.push(Seq(seq));
        }
        Ok(out)
    }

    /// Keeps a payload body beside the chain. Payloads are deletable by design,
    /// so they are kept in sled (flushed) rather than under the segments'
    /// fdatasync guarantee.
    pub fn put_payload(
        &self,
        digest: PayloadDigest,
        salt: [u8; 32],
        body: &[u8],
    ) -> Result<(), StoreError> {
        self.put_payloads(&[(digest, salt, body)])
    }

    /// [`Store::put_payload`] for several bodies, with one flush. All are
    /// checked before any is kept.
    pub fn put_payloads(
        &self,
        items: &[(PayloadDigest, [u8; 32], &[u8])],
    ) -> Result<(), StoreError> {
        for (digest, salt, body) in items {
            if body.len() > MAX_PAYLOAD_BYTES {
                return Err(StoreError::Payload(format!(
                    "{} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                    body.len()
                )));
            }
            if crate::bundle::payload_digest(salt, body) != *digest {
                return Err(StoreError::Payload(
                    "SHA-256(salt ‖ body) does not match the digest".into(),
                ));
            }
        }
        let ix = self.shared.index()?;
        for (digest, salt, body) in items {
            let mut v = salt.to_vec();
            v.extend_from_slice(body);
            ix.payloads.insert(digest.0, v).map_err(idx)?;
        }
        ix.db.flush().map_err(idx)?;
        Ok(())
    }

    pub fn payload(&self, digest: &PayloadDigest) -> Result<Option<SaltedPayload>, StoreError> {
        Ok(self
            .shared
            .index()?
            .payloads
            .get(digest.0)
            .map_err(idx)?
            .and_then(|v| {
                let salt: [u8; 32] = v.get(..32)?.try_into().ok()?;
                Some((salt, v[32..].to_vec()))
            }))
    }

    /// Deletes a payload's body and salt; the entry and chain are untouched.
    pub fn redact(&self, digest: &PayloadDigest) -> Result<bool, StoreError> {
        let ix = self.shared.index()?;
        let had = ix.payloads.remove(digest.0).map_err(idx)?.is_some();
        ix.db.flush().map_err(idx)?;
        Ok(had)
    }

    /// Stores a signed checkpoint note of tree size `size` (temp file, fsync,
    /// rename, fsync of the directory), replacing one of the same size (to
    /// merge cosignatures), then deletes the checkpoints the
    /// [`RetentionPolicy`] no longer keeps. Refuses a note that is not a
    /// checkpoint of size `size` ([`StoreError::Checkpoint`]); its signatures
    /// are the caller's to check.
    pub fn save_checkpoint(&self, size: u64, note: &[u8]) -> Result<(), StoreError> {
        self.checkpoints.lock().expect("lock").save(size, note)
    }

    /// All kept checkpoints, ascending by size.
    pub fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.checkpoints.lock().expect("lock").all()
    }

    /// The stored checkpoint at `size`, if there is one.
    pub fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.checkpoints.lock().expect("lock").get(size)
    }

    /// The checkpoint with the largest size: one file read, no directory
    /// listing (HTTP handlers call it).
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.checkpoints.lock().expect("lock").latest()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            appends: self.shared.appends.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
        }
    }

    /// The reason appends are refused, if a write or sync failed.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.lock().expect("lock").clone()
    }

    /// Drains queued appends, stops the writer and flushes the index.
    pub fn close(&self) -> Result<(), StoreError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        drop(self.tx.lock().expect("lock").take());
        if let Some(h) = self.writer.lock().expect("lock").take() {
            let _ = h.join();
        }
        self.shared.index()?.db.flush().map_err(idx)?;
        Ok(())
    }
}

impl<G: Gate> Drop for Store<G> {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Opens the sled index. sled releases its own file lock from background
/// threads a moment after the previous handle in this process is dropped (a
/// restart in the same process, as in tests), so a held lock is retried briefly;
/// our own LOCK file already guarantees no other store has the directory.
fn open_index(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(idx(e)),
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let sdir = dir.join(SEGMENTS);
    let mut out = Vec::new();
    for item in fs::read_dir(&sdir).map_err(io(&sdir))? {
        let item = item.map_err(io(&sdir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(".jsonl")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every segment, checks it, replays the gate, and cuts a torn tail
/// of the last segment (see the module documentation for which damage that
/// is). `acked` is a floor of the acknowledged entries (damage below it is
/// refused); `claimed` is where the index says it goes (its root is taken
/// there).
fn scan_segments<G: Gate>(
    dir: &Path,
    gate: &mut G,
    claimed: u64,
    acked: u64,
) -> Result<Scan, StoreError> {
    let segments = list_segments(dir)?;
    let mut n = 0u64;
    let mut prev = EntryHash::ZERO;
    let mut last_time = None;
    let mut range = CompactRange::new();
    let mut range_at_indexed = if claimed == 0 {
        Some(range.root())
    } else {
        None
    };
    let mut last_segment = (0u64, 0u64);
    let mut recovered = None;
    let count = segments.len();
    for (i, (first, path)) in segments.into_iter().enumerate() {
        let is_last = i + 1 == count;
        if first != n {
            return Err(StoreError::Corrupt {
                path,
                seq: n,
                reason: format!("segment starts at seq {first}, expected {n}"),
            });
        }
        let f = File::open(&path).map_err(io(&path))?;
        let file_len = f.metadata().map_err(io(&path))?.len();
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut offset = 0u64;
        // Why the lines stop being chained entries at `offset`, if they do.
        let damage = loop {
            let mut line = Vec::new();
            let k = (&mut r)
                .take(MAX_ENTRY_BYTES as u64 + 2)
                .read_until(b'\n', &mut line)
                .map_err(io(&path))?;
            if k == 0 {
                break None;
            }
            if line.last() != Some(&b'\n') {
                break Some(if line.len() > MAX_ENTRY_BYTES {
                    "no newline within the longest entry".to_string()
                } else {
                    "a line without its newline".to_string()
                });
            }
            line.pop();
            let entry = match Entry::parse_line(&line) {
                Ok(e) => e,
                Err(e) => break Some(e.to_string()),
            };
            if entry.seq != Seq(n) {
                break Some(format!("holds seq {}", entry.seq));
            }
            if entry.prev != prev {
                break Some("prev does not link to the entry before".into());
            }
            prev = entry_hash(&line);
            range.push(Hash(prev.0));
            last_time = Some(entry.received_at);
            gate.replay(&entry);
            offset += line.len() as u64 + 1;
            n += 1;
            if n == claimed {
                range_at_indexed = Some(range.root());
            }
        };
        drop(r);
        if let Some(reason) = damage {
            let corrupt = |reason: String| StoreError::Corrupt {
                path: path.clone(),
                seq: n,
                reason,
            };
            let cut = file_len.saturating_sub(offset);
            if !is_last {
                return Err(corrupt(format!(
                    "{reason}, in a segment before the last (only the last can hold a torn write)"
                )));
            }
            if n < acked {
                return Err(corrupt(format!(
                    "{reason}; the index had synced {acked} entries, so this one was acknowledged"
                )));
            }
            if cut > MAX_TORN_BYTES {
                return Err(corrupt(format!(
                    "{reason}; the {cut} bytes from there to the end are more than one \
                     unsynced batch can be ({MAX_TORN_BYTES})"
                )));
            }
            recovered = Some(cut_torn_tail(dir, &path, n, offset, cut, reason)?);
        }
        last_segment = (first, offset);
    }
    if n < acked {
        return Err(StoreError::Corrupt {
            path: dir.join(SEGMENTS).join(segment_name(last_segment.0)),
            seq: n,
            reason: format!(
                "the segments end at seq {n}, but the index had synced {acked} entries, \
                 all acknowledged"
            ),
        });
    }
    Ok(Scan {
        entries: n,
        prev,
        last_time,
        last_segment,
        range_at_indexed,
        recovered,
    })
}

/// Moves the last `len` bytes of `segment`, from `offset` (a torn tail
/// whose first line would have been entry `seq`), to a new file in
/// `DIR/torn/`, and cuts the segment back to `offset`. The copy is synced,
/// with its directory, before the segment is cut: a crash in between
/// leaves the tail in both places, and the next open moves it again.
fn cut_torn_tail(
    dir: &Path,
    segment: &Path,
    seq: u64,
    offset: u64,
    len: u64,
    reason: String,
) -> Result<Recovered, StoreError> {
    let torn = dir.join(TORN);
    create_dir_durable(&torn).map_err(io(&torn))?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut attempt = 0;
    let (saved_to, mut out) = loop {
        let path = torn.join(format!("{seq:020}-{}.bin", ms + attempt));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => break (path, f),
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < TORN_NAME_TRIES =>
            {
                attempt += 1;
            }
            Err(e) => return Err(io(&path)(e)),
        }
    };
    let mut src = File::open(segment).map_err(io(segment))?;
    src.seek(SeekFrom::Start(offset)).map_err(io(segment))?;
    let copied = std::io::copy(&mut src.take(len), &mut out).map_err(io(&saved_to))?;
    if copied != len {
        return Err(StoreError::Corrupt {
            path: segment.to_path_buf(),
            seq,
            reason: format!(
                "the segment shrank while its torn tail was copied ({copied} of {len} bytes)"
            ),
        });
    }
    out.sync_all().map_err(io(&saved_to))?;
    sync_dir(&torn).map_err(io(&torn))?;
    let f = OpenOptions::new()
        .write(true)
        .open(segment)
        .map_err(io(segment))?;
    f.set_len(offset).map_err(io(segment))?;
    f.sync_all().map_err(io(segment))?;
    Ok(Recovered {
        seq,
        segment: segment.to_path_buf(),
        bytes: len,
        saved_to,
        reason,
    })
}

/// Indexes every entry from `from` on, reading the segments again.
fn reindex(ix: &Index, dir: &Path, from: u64) -> Result<(), StoreError> {
    let mut items = Vec::new();
    let mut n = 0u64;
    let mut start = from;
    for (first, path) in list_segments(dir)? {
        let f = File::open(&path).map_err(io(&path))?;
        let r = BufReader::with_capacity(1 << 20, f);
        let mut offset = 0u64;
        for line in r.split(b'\n') {
            let line = line.map_err(io(&path))?;
            if n >= from {
                let entry = Entry::parse_line(&line).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    seq: n,
                    reason: e.to_string(),
                })?;
                items.push(IndexItem {
                    segment: first,
                    offset,
                    len: line.len() as u32,
                    hash: entry_hash(&line),
                    actor: entry.event.actor.clone(),
                });
                if items.len() >= 4096 {
                    ix.index_entries(start, &items)?;
                    start += items.len() as u64;
                    items.clear();
                }
            }
            offset += line.len() as u64 + 1;
            n += 1;
        }
    }
    if !items.is_empty() {
        ix.index_entries(start, &items)?;
    }
    Ok(())
}

/// Streams lines from the segment files.
struct SegmentLines {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, std::io::Split<BufReader<File>>)>,
    remaining: u64,
}

impl Iterator for SegmentLines {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            if self.current.is_none() {
                let (_, path) = self.segments.next()?;
                match File::open(&path) {
                    Ok(f) => {
                        self.current =
                            Some((path, BufReader::with_capacity(1 << 20, f).split(b'\n')))
                    }
                    Err(e) => return Some(Err(io(&path)(e))),
                }
            }
            let (path, lines) = self.current.as_mut()?;
            match lines.next() {
                Some(Ok(l)) => {
                    self.remaining -= 1;
                    return Some(Ok(l));
                }
                Some(Err(e)) => return Some(Err(io(path)(e))),
                None => self.current = None,
            }
        }
    }
}
