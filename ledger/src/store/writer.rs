//! The writer thread: group commit, the batch bound, undoing a failed write
//! or sync, and segment rotation.
//!
//! **Durability.** The segment lines are the truth. One writer thread drains
//! every queued append (up to [`MAX_BATCH`]), asks the [`Gate`] whether each
//! event may be appended — in sequence order, atomically with sequencing, so an
//! append checked before a concurrent revocation cannot land after it — writes
//! the admitted lines with one `write`, calls `fdatasync` once (once per
//! [`MAX_BATCH`] lines if the gathered requests hold more), and only then answers
//! every caller of the batch. The index follows (`indexer.rs`).
//!
//! **Failure.** If a write or sync fails (a full disk, a read-only file
//! system), nothing of that batch is acknowledged: the segment is cut back to
//! what was acknowledged, the gate is rebuilt from it, the batch is answered
//! [`StoreError::WriteFailed`] and later appends are tried again. Only if that
//! undo fails is the store poisoned until it is reopened. A failed index
//! update is repaired by this thread too (see `indexer.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::denial::{Denial, DenialCode};
use crate::entry::{entry_hash, Entry, MAX_ENTRY_BYTES};
use crate::event::SignedEvent;
use crate::fsutil::sync_dir;
use crate::time::Timestamp;
use crate::types::{EntryHash, Seq};

use super::indexer::{IndexItem, IndexJob, INDEX_RETRY};
use super::recovery::scan_segments;
use super::shared::Shared;
use super::{io, AppendError, Appended, Gate, StoreError, MAX_BATCH, SEGMENTS};

type Reply = mpsc::SyncSender<Vec<Result<Appended, AppendError>>>;

pub(super) struct Request {
    /// Events that passed [`Gate::precheck`], with their canonical JSON.
    pub(super) events: Vec<(SignedEvent, Vec<u8>)>,
    pub(super) reply: Reply,
}

/// What the writer thread owns.
pub(super) struct Writer<G: Gate> {
    pub(super) shared: Arc<Shared>,
    pub(super) gate: Arc<Mutex<G>>,
    pub(super) rx: mpsc::Receiver<Request>,
    /// Where durable lines go to be indexed, in seq order.
    pub(super) index_tx: Option<mpsc::SyncSender<IndexJob>>,
    pub(super) indexer: Option<JoinHandle<()>>,
    pub(super) next: u64,
    pub(super) prev: EntryHash,
    pub(super) last_time: Option<Timestamp>,
    pub(super) segment: File,
    pub(super) segment_first: u64,
    pub(super) segment_len: u64,
    pub(super) max_segment_bytes: u64,
    /// No new attempt to reopen the index before this.
    pub(super) index_retry_at: Option<Instant>,
}

impl<G: Gate> Writer<G> {
    pub(super) fn run(mut self) {
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
    /// more than [`MAX_TORN_BYTES`](super::MAX_TORN_BYTES) ever being written
    /// past the last completed sync. Nothing is acknowledged before the last
    /// sync.
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
