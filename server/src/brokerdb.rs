//! The broker's own small database (`DATA/broker`, sled): token accessors,
//! raw, because revoking a token needs them (never in the ledger, which holds
//! only their SHA-256), and sessions' OTLP ingest tokens, hashed.
//!
//! sled's I/O errors are sticky: after one (a full disk, say) every later
//! operation on the same handle fails, even once space is back. So an
//! operation that fails reopens the database once and is tried again; the
//! broker recovers without a restart when the disk does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a reopen waits for sled to release its file lock (its background
/// threads let go of a dropped handle a moment later).
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// The open trees.
pub struct Trees {
    pub db: sled::Db,
    /// `<session DID> 0x00 <accessor>` → expiry (unix seconds, big-endian).
    pub accessors: sled::Tree,
    /// `hex(SHA-256(ingest token))` → session DID.
    pub ingest: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> sled::Result<Self> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Self {
            accessors: db.open_tree("accessors")?,
            ingest: db.open_tree("ingest")?,
            db,
        })
    }
}

pub struct BrokerDb {
    path: PathBuf,
    /// The handle and a generation number; `None` while being reopened.
    trees: RwLock<(u64, Option<Arc<Trees>>)>,
}

fn reopening() -> sled::Error {
    sled::Error::Io(std::io::Error::other(
        "the broker database is being reopened after an I/O error",
    ))
}

impl BrokerDb {
    pub fn open(path: &Path) -> sled::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            trees: RwLock::new((0, Some(Arc::new(Trees::open(path)?)))),
        })
    }

    fn current(&self) -> (u64, Option<Arc<Trees>>) {
        self.trees.read().expect("lock").clone()
    }

    /// Runs `f`; if it fails, reopens the database and runs it once more.
    /// `f` must be safe to repeat (inserts and removes are).
    pub fn with<R>(&self, f: impl Fn(&Trees) -> sled::Result<R>) -> sled::Result<R> {
        let (generation, trees) = self.current();
        let first = match trees {
            Some(t) => f(&t),
            None => Err(reopening()),
        };
        match first {
            Ok(r) => Ok(r),
            Err(_) => {
                self.reopen(generation)?;
                match self.current().1 {
                    Some(t) => f(&t),
                    None => Err(reopening()),
                }
            }
        }
    }

    /// Replaces the handle of `generation` (unless another caller already did).
    fn reopen(&self, generation: u64) -> sled::Result<()> {
        let mut slot = self.trees.write().expect("lock");
        if slot.0 != generation && slot.1.is_some() {
            return Ok(());
        }
        // Let go of the old handle so that sled releases its file lock (it
        // does so once every clone is gone), then open again.
        if let Some(old) = slot.1.take() {
            let _ = old.db.flush();
        }
        let started = std::time::Instant::now();
        loop {
            match Trees::open(&self.path) {
                Ok(t) => {
                    *slot = (generation + 1, Some(Arc::new(t)));
                    return Ok(());
                }
                Err(e) if started.elapsed() >= REOPEN_WAIT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Makes what was written durable.
    pub fn flush(&self) -> sled::Result<()> {
        self.with(|t| t.db.flush().map(|_| ()))
    }
}
