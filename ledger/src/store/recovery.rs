//! What opening the store does with the segments: scan and check them,
//! cut a torn tail, and index again what the index lacks.
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
//! every [`MAX_BATCH`](super::MAX_BATCH) lines, so at any moment at most
//! [`MAX_TORN_BYTES`] bytes of the last segment are written but not yet
//! synced. After a power
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
//! good line (synced): nothing is destroyed, and
//! [`Store::recovered`](super::Store::recovered) says
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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::entry::{entry_hash, Entry, MAX_ENTRY_BYTES};
use crate::fsutil::{create_dir_durable, sync_dir};
use crate::merkle::{CompactRange, Hash};
use crate::time::Timestamp;
use crate::types::{EntryHash, Seq};

use super::indexer::{Index, IndexItem};
use super::segments::{list_segments, segment_name};
use super::{io, Gate, Recovered, StoreError, MAX_TORN_BYTES, SEGMENTS, TORN};

/// Attempts at a free name in `torn/` when one is taken (the same seq cut
/// twice within a millisecond, or a clock set back).
const TORN_NAME_TRIES: u64 = 1000;

/// What scanning the segments found.
pub(super) struct Scan {
    pub(super) entries: u64,
    pub(super) prev: EntryHash,
    pub(super) last_time: Option<Timestamp>,
    pub(super) last_segment: (u64, u64),
    /// Root after each prefix that sled claims to have indexed.
    pub(super) range_at_indexed: Option<Hash>,
    /// The torn tail cut from the last segment, if there was one.
    pub(super) recovered: Option<Recovered>,
}

/// Reads every segment, checks it, replays the gate, and cuts a torn tail
/// of the last segment (see the module documentation for which damage that
/// is). `acked` is a floor of the acknowledged entries (damage below it is
/// refused); `claimed` is where the index says it goes (its root is taken
/// there).
pub(super) fn scan_segments<G: Gate>(
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
pub(super) fn reindex(ix: &Index, dir: &Path, from: u64) -> Result<(), StoreError> {
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
