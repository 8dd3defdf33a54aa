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
//! The segment lines are the truth. Where each part of the store lives; the
//! durability notes are at the top of the module that owns them:
//!
//! - `writer.rs`: appends. The writer thread's group commit (what is synced
//!   when, what an acknowledgement means), the batch bound, undoing a failed
//!   write or sync, segment rotation.
//! - `indexer.rs`: the index (sled trees and the fixed-width tables of
//!   `table.rs`), the indexer thread, how far the index durably goes (its
//!   claim), and reopening it after sled's sticky I/O errors.
//! - `recovery.rs`: what opening does with the segments: scanning them, the
//!   torn-tail rule (what is repaired, what is refused, what risk remains),
//!   re-indexing.
//! - `shared.rs`: the state the two threads and readers share, and how a
//!   read waits until every acknowledged entry is visible.
//! - `segments.rs`: segment file names, listing, streaming their lines.
//! - `checkpoints.rs`: checkpoint files and which of them are kept.
//!
//! This file holds the public API: [`Store`] (opening, appending, reading,
//! proofs, payloads, checkpoints, closing), the [`Gate`] it asks, and their
//! types and limits.
//!
//! Every directory the store creates is synced with its parent
//! ([`crate::fsutil::create_dir_durable`]), so a file's name survives power
//! loss along with its bytes.
//!
//! Checkpoints are thinned over the ledger's life ([`RetentionPolicy`]; the
//! rule is in `checkpoints.rs`).

mod checkpoints;
mod indexer;
mod recovery;
mod segments;
mod shared;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use custody_identity::Did;

use crate::canonical::to_canonical;
use crate::denial::{Denial, DenialCode};
use crate::entry::{Entry, MAX_ENTRY_BYTES};
use crate::event::SignedEvent;
use crate::fsutil::{create_dir_durable, sync_dir};
use crate::merkle::{self, Hash, TreeHead};
use crate::time::Timestamp;
use crate::types::{EntryHash, PayloadDigest, Seq};

use checkpoints::Checkpoints;
pub use checkpoints::{RetentionPolicy, DEFAULT_KEEP_RECENT, MAX_KEEP_RECENT};
use indexer::{run_indexer, Index, INDEX_QUEUE};
use recovery::scan_segments;
use segments::{list_segments, segment_name, SegmentLines};
use shared::{Progress, Shared};
use writer::{Request, Writer};

/// Most appends one sync covers. Large enough that a sync (~0.2 ms here) is
/// amortized over hundreds of entries, small enough to bound a batch's memory.
pub const MAX_BATCH: usize = 1024;
/// A new segment file starts once the current one passes this size, so no
/// single file grows without bound and old segments can be archived.
pub const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Most bytes the writer ever has written past its last completed
/// `fdatasync`: it syncs at least every [`MAX_BATCH`] lines, and a line is at
/// most [`MAX_ENTRY_BYTES`] plus its newline. A damaged region at the end of
/// the last segment longer than this cannot be a torn write (see the
/// documentation of `store/recovery.rs`).
pub const MAX_TORN_BYTES: u64 = MAX_BATCH as u64 * (MAX_ENTRY_BYTES as u64 + 1);
/// Upper bound on a payload body kept beside the chain.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

const SEGMENTS: &str = "segments";
const INDEX: &str = "index";
const CHECKPOINTS: &str = "checkpoints";
/// Where recovery puts the bytes it cuts from a torn segment tail.
pub const TORN: &str = "torn";
const LOCK: &str = "LOCK";

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
/// documentation of `store/recovery.rs`): never acknowledged, kept aside in
/// `saved_to`.
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

/// The durable store. `Send + Sync`: share it behind an `Arc`.
pub struct Store<G: Gate> {
    shared: Arc<Shared>,
    gate: Arc<Mutex<G>>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpoints: Mutex<Checkpoints>,
    _lock: File,
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
