//! Fixed-width record files for the store's derived index.
//!
//! Record `i` of a `Table<W>` is the `W` bytes at offset `i * W`. The store
//! keeps two: the RFC 6962 stored hashes in tlog order (32 bytes each) and the
//! location of each entry's line (20 bytes each). Both only ever grow at the
//! end while the store runs, so one batch of entries is one positioned write,
//! where a B-tree (sled) spent a copy-on-write page update per key — most of
//! the indexer's CPU before.
//!
//! A table holds nothing the segments cannot rebuild. It is not synced per
//! write: the store syncs it before recording in sled how far the index goes,
//! and on open checks that claim against the segments (see `store/indexer.rs`).

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file of `W`-byte records.
pub(crate) struct Table<const W: usize> {
    file: File,
    path: PathBuf,
}

impl<const W: usize> Table<W> {
    /// Opens or creates the table at `path`.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whole records in the file.
    pub(crate) fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len() / W as u64)
    }

    /// Record `i`, or `None` past the end.
    pub(crate) fn get(&self, i: u64) -> std::io::Result<Option<[u8; W]>> {
        let mut b = [0u8; W];
        match self.file.read_exact_at(&mut b, i * W as u64) {
            Ok(()) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes consecutive records from `first` on; `records.len()` must be a
    /// multiple of `W`.
    pub(crate) fn put(&self, first: u64, records: &[u8]) -> std::io::Result<()> {
        debug_assert_eq!(records.len() % W, 0);
        self.file.write_all_at(records, first * W as u64)
    }

    /// Keeps the first `n` records.
    pub(crate) fn truncate(&self, n: u64) -> std::io::Result<()> {
        self.file.set_len(n * W as u64)
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Table::<4>::open(&dir.path().join("t")).expect("open");
        assert_eq!(t.len().expect("len"), 0);
        assert_eq!(t.get(0).expect("get"), None);
        t.put(0, b"aaaabbbb").expect("put");
        t.put(2, b"cccc").expect("put");
        assert_eq!(t.len().expect("len"), 3);
        assert_eq!(t.get(1).expect("get"), Some(*b"bbbb"));
        assert_eq!(t.get(3).expect("get"), None);
        t.truncate(1).expect("truncate");
        assert_eq!(t.len().expect("len"), 1);
        assert_eq!(t.get(1).expect("get"), None);
        // A partial record at the end (a torn write) is not a record.
        t.put(1, b"dd\0\0").expect("put");
        t.truncate(1).expect("truncate");
        std::fs::OpenOptions::new()
            .append(true)
            .open(t.path())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"dd"))
            .expect("append");
        assert_eq!(t.len().expect("len"), 1);
        assert_eq!(t.get(1).expect("get"), None);
        drop(t);
        let t = Table::<4>::open(&dir.path().join("t")).expect("reopen");
        assert_eq!(t.get(0).expect("get"), Some(*b"aaaa"));
    }
}
