//! The state the writer thread, the indexer thread and readers share: how
//! far the segments and the index have got, and how a read waits until it
//! may see every acknowledged entry.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::indexer::{decode_location, Index};
use super::recovery::Scan;
use super::segments::segment_name;
use super::{io, Recovered, StoreError, SEGMENTS};

/// Longest a reader waits for the index to reach the acknowledged size
/// before it answers with what is indexed (only if the indexer is stuck).
const VISIBLE_WAIT_MAX: Duration = Duration::from_secs(10);

/// How far the segments and the index have got.
pub(super) struct Progress {
    /// Entries durable in the segments (acknowledged or being acknowledged).
    pub(super) durable: u64,
    /// Entries in the index; readers see up to here.
    pub(super) indexed: u64,
    /// An index update failed: until the writer has reopened the index and
    /// caught it up from the segments, readers see `indexed` without waiting
    /// and the indexer drops the updates it is sent.
    pub(super) behind: bool,
}

/// State shared by the writer thread, the indexer thread and readers.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    /// `None` only while the writer reopens it after a failure: sled's I/O
    /// errors are sticky, every later operation fails until it is reopened.
    pub(super) index: RwLock<Option<Arc<Index>>>,
    pub(super) progress: Mutex<Progress>,
    /// Signalled whenever `progress` changes.
    pub(super) progressed: Condvar,
    pub(super) poisoned: Mutex<Option<String>>,
    /// Torn tails cut since the store was opened.
    pub(super) recovered: Mutex<Vec<Recovered>>,
    pub(super) closed: AtomicBool,
    pub(super) appends: AtomicU64,
    pub(super) syncs: AtomicU64,
    pub(super) batches: AtomicU64,
}

impl Shared {
    pub(super) fn index(&self) -> Result<Arc<Index>, StoreError> {
        self.index.read().expect("lock").clone().ok_or_else(|| {
            StoreError::Index("the index is unavailable until it is reopened".into())
        })
    }

    pub(super) fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(SEGMENTS).join(segment_name(first))
    }

    /// Entries readers may see: every acknowledged entry, so a read that
    /// follows an acknowledgement finds it. Waits for the indexer to catch up
    /// with the segments, unless the index is being repaired (then it is the
    /// size last indexed).
    pub(super) fn visible(&self) -> u64 {
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

    /// Keeps what a scan cut, for [`Store::recovered`](super::Store::recovered).
    pub(super) fn note_recovered(&self, scan: &Scan) {
        if let Some(r) = &scan.recovered {
            self.recovered.lock().expect("lock").push(r.clone());
        }
    }

    pub(super) fn update_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().expect("lock"));
        self.progressed.notify_all();
    }

    pub(super) fn read_line(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
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
