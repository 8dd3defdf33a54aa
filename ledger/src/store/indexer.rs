//! The index: derived from the segments (payload bodies aside), and the
//! indexer thread that keeps it.
//!
//! **Durability.** The writer answers a batch once its lines are synced in
//! the segments (`writer.rs`). An indexer thread then updates the
//! index while the writer is already on the next batch; readers wait for it to
//! reach the acknowledged size, so a read after an acknowledgement finds the
//! entry (`Shared::visible`, in `shared.rs`). sled's own `flush` uses
//! `sync_file_range`, which does not survive power loss, so the index only holds
//! what the segments can rebuild: seq → location and the RFC 6962 stored hashes
//! (for O(log n) roots and proofs) in two fixed-width tables, actor DID → seqs
//! and payload bodies in sled. About once a second the indexer syncs the
//! tables and then records in sled how far they go; on open that claim is
//! checked against the segments (the root at the claimed size) and anything
//! past it is indexed again.
//!
//! **Failure.** If updating the index fails after the sync, the appends stand
//! (they are durable), readers keep seeing the size last indexed, and the
//! writer reopens the index (sled's I/O errors are sticky until then) and
//! catches it up from the segments (`Writer::repair_index`, at the end of
//! this file).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_identity::Did;

use crate::fsutil::create_dir_durable;
use crate::merkle::{Hash, HashReader};
use crate::table::Table;
use crate::types::EntryHash;

use super::recovery::{reindex, scan_segments, Scan};
use super::shared::Shared;
use super::writer::Writer;
use super::{idx, io, AcceptAll, Gate, StoreError, INDEX, MAX_BATCH};

/// How often the writer tries to catch up an index that missed an update
/// while no append comes.
pub(super) const INDEX_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to catch up the index.
const INDEX_RETRY_MAX: Duration = Duration::from_secs(1);
/// Writer batches queued for the indexer before the writer waits for it:
/// bounds the memory and the lag of the index behind the segments.
pub(super) const INDEX_QUEUE: usize = 64;
/// How often the indexer records how far the index goes (syncing the
/// tables): what a crash leaves to re-index on the next open.
const INDEX_PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Most entries the indexer takes in one go.
const MAX_INDEX_BATCH: usize = 4 * MAX_BATCH;

const META_INDEXED: &[u8] = b"indexed_upto";
const HASHES_TABLE: &str = "hashes.table";
const OFFSETS_TABLE: &str = "offsets.table";

/// The index: derived from the segments (payload bodies aside). Merkle
/// stored hashes and line locations are fixed-width tables (see
/// [`crate::table`]); the actor index and payload bodies live in sled.
pub(super) struct Index {
    /// Stored hashes recently read or written by the indexer.
    hash_cache: Mutex<HashMap<u64, Hash>>,
    /// RFC 6962 stored hashes in tlog order.
    hashes: Table<32>,
    /// seq → where its line is (see [`encode_location`]).
    pub(super) offsets: Table<20>,
    pub(super) db: sled::Db,
    pub(super) by_actor: sled::Tree,
    pub(super) payloads: sled::Tree,
    /// How many entries the index holds durably ([`META_INDEXED`]).
    meta: sled::Tree,
}

/// What the writer hands the indexer: the entries from `start` on.
pub(super) struct IndexJob {
    pub(super) start: u64,
    pub(super) items: Vec<IndexItem>,
}

/// What the index keeps of one entry.
pub(super) struct IndexItem {
    /// First seq of the segment holding the line.
    pub(super) segment: u64,
    /// Byte offset of the line in that segment.
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) hash: EntryHash,
    pub(super) actor: Did,
}

/// Where an entry's line lives: segment (by first seq), byte offset, length.
fn encode_location(segment: u64, offset: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&segment.to_be_bytes());
    b[8..16].copy_from_slice(&offset.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

pub(super) fn decode_location(b: &[u8]) -> Option<(u64, u64, u32)> {
    if b.len() != 20 {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..16].try_into().ok()?),
        u32::from_be_bytes(b[16..].try_into().ok()?),
    ))
}

fn actor_key(did: &Did, seq: u64) -> Vec<u8> {
    let mut k = did.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Reads stored hashes from the hash table, with an overlay for those
/// computed in the current batch but not yet written.
pub(super) struct TableHashes<'a> {
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
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
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

    pub(super) fn reader(&self) -> TableHashes<'_> {
        TableHashes {
            table: &self.hashes,
            overlay: &EMPTY_OVERLAY,
            cache: None,
        }
    }

    /// How many entries the index says it holds durably.
    pub(super) fn claimed(&self) -> Result<u64, StoreError> {
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
    pub(super) fn catch_up(&self, dir: &Path, scan: &Scan, claimed: u64) -> Result<(), StoreError> {
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
    pub(super) fn index_entries(&self, start: u64, items: &[IndexItem]) -> Result<(), StoreError> {
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

/// The indexer thread: indexes durable lines in seq order, several batches
/// of the writer at a time, so sled's work overlaps the next `fdatasync`
/// instead of following it. After a failure it marks the index behind and
/// drops what it is sent until the writer has repaired the index: the repair
/// reads the segments, which only the writer may do safely (it truncates a
/// torn tail).
pub(super) fn run_indexer(shared: &Shared, rx: mpsc::Receiver<IndexJob>, mut persisted: u64) {
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

// Repairing the index after a failed update. This runs on the writer thread:
// the repair reads the segments, which only the writer may do safely (see
// `run_indexer`).
impl<G: Gate> Writer<G> {
    /// After a failed index update: reopens the index and catches it up, then
    /// lets readers see every acknowledged entry. Retried with later appends
    /// and every [`INDEX_RETRY`] meanwhile, backing off in proportion to what
    /// a failed attempt cost (it may read every segment), up to
    /// [`INDEX_RETRY_MAX`].
    pub(super) fn catch_up_index(&mut self) {
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
}
