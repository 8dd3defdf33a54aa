//! The single-node backend: the ledger's segment-log store (entries durable
//! by fdatasync group commit before they are acknowledged; see
//! `custody_ledger::store`) and the broker's sled database for accessors and
//! ingest credentials ([`crate::brokerdb`]). Both are blocking, so every
//! call runs on the blocking pool, never on the runtime's workers.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use custody_identity::{Did, KeyPair};
use custody_ledger::authority::Authority;
use custody_ledger::checkpoint::Origin;
use custody_ledger::merkle::{Hash, TreeHead};
use custody_ledger::store::{AppendError, RetentionPolicy, Store, StoreError, StoreOptions};
use custody_ledger::{PayloadDigest, SignedEvent};

use super::{AppendFailure, AppendResults, PayloadItem, Storage, StorageError};
use crate::brokerdb::BrokerDb;

pub struct Embedded {
    store: Arc<Store<Authority>>,
    db: Arc<BrokerDb>,
}

impl Embedded {
    /// Opens `DATA/ledger` (replaying every entry through the rules; a torn
    /// tail that was never acknowledged is moved aside and logged) and
    /// `DATA/broker`. `keep_recent` is the checkpoint retention
    /// (`[checkpoint] keep_recent`).
    pub fn open(data: &Path, ledger: Did, keep_recent: usize) -> Result<Self, StorageError> {
        let store = Store::open_with(
            &data.join("ledger"),
            Authority::new(Some(ledger)),
            StoreOptions {
                retention: RetentionPolicy { keep_recent },
                ..StoreOptions::default()
            },
        )
        .map_err(store_error)?;
        for r in store.recovered() {
            tracing::warn!(
                seq = r.seq,
                bytes = r.bytes,
                segment = %r.segment.display(),
                saved_to = %r.saved_to.display(),
                reason = %r.reason,
                "ledger: cut a torn tail that was never acknowledged (power loss during a write); its bytes are kept"
            );
        }
        let db = BrokerDb::open(&data.join("broker"))
            .map_err(|e| StorageError::Failed(format!("{}: {e}", data.join("broker").display())))?;
        Ok(Self {
            store: Arc::new(store),
            db: Arc::new(db),
        })
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store<Authority>, &BrokerDb) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let (store, db) = (self.store.clone(), self.db.clone());
        tokio::task::spawn_blocking(move || f(&store, &db))
            .await
            .map_err(|e| StorageError::Failed(e.to_string()))?
    }
}

/// A store failure: 503 when the ledger cannot be written just now (a full
/// disk, a read-only directory: retry later, nothing was stored).
fn store_error(e: StoreError) -> StorageError {
    match e {
        StoreError::WriteFailed(_) | StoreError::Poisoned(_) => {
            StorageError::Unavailable(format!("ledger: {e}"))
        }
        e => StorageError::Failed(format!("ledger: {e}")),
    }
}

fn db_error(e: sled::Error) -> StorageError {
    StorageError::Failed(format!("broker database: {e}"))
}

/// `<session DID> 0x00 <accessor>`.
fn accessor_key(did: &Did, accessor: &str) -> Vec<u8> {
    let mut k = did.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(accessor.as_bytes());
    k
}

#[async_trait]
impl Storage for Embedded {
    async fn append(&self, events: Vec<SignedEvent>) -> AppendResults {
        let n = events.len();
        match self.blocking(move |s, _| Ok(s.append_many(events))).await {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.map_err(|e| match e {
                        AppendError::Rejected(d) => AppendFailure::Refused(d),
                        AppendError::Store(e) => AppendFailure::Storage(store_error(e)),
                    })
                })
                .collect(),
            Err(e) => (0..n)
                .map(|_| Err(AppendFailure::Storage(StorageError::Failed(e.to_string()))))
                .collect(),
        }
    }

    fn size(&self) -> u64 {
        self.store.len()
    }

    async fn visible_size(&self) -> Result<u64, StorageError> {
        self.blocking(|s, _| Ok(s.len())).await
    }

    fn with_rules(&self, f: &mut dyn FnMut(&Authority)) {
        self.store.with_gate(|a| f(a))
    }

    async fn head(&self) -> Result<TreeHead, StorageError> {
        self.blocking(|s, _| s.head().map_err(store_error)).await
    }

    async fn line(&self, seq: u64) -> Result<Vec<u8>, StorageError> {
        self.blocking(move |s, _| s.line(seq).map_err(store_error))
            .await
    }

    async fn lines(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        self.blocking(move |s, _| {
            // Acknowledged entries only: `len` moves after the sync.
            let end = s.len().min(from.saturating_add(max_count as u64));
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for seq in from..end {
                let line = s.line(seq).map_err(store_error)?;
                bytes += line.len();
                out.push(line);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, StorageError> {
        self.blocking(move |s, _| s.inclusion_proof(seq, size).map_err(store_error))
            .await
    }

    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StorageError> {
        self.blocking(move |s, _| s.consistency_proof(old, new).map_err(store_error))
            .await
    }

    async fn export(
        &self,
        ledger_key: &KeyPair,
        origin: &Origin,
        out: &Path,
    ) -> Result<(), StorageError> {
        let (key, origin, out) = (ledger_key.clone(), origin.clone(), out.to_path_buf());
        self.blocking(move |s, _| {
            custody_ledger::export::export_bundle(s, &key, &origin, &out)
                .map(|_| ())
                .map_err(|e| StorageError::Failed(format!("export: {e}")))
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        self.blocking(|s, _| s.latest_checkpoint().map_err(store_error))
            .await
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.blocking(move |s, _| s.checkpoint(size).map_err(store_error))
            .await
    }

    async fn save_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<(), StorageError> {
        self.blocking(move |s, _| s.save_checkpoint(size, &note).map_err(store_error))
            .await
    }

    async fn put_payloads(&self, items: Vec<PayloadItem>) -> Result<(), StorageError> {
        self.blocking(move |s, _| {
            let refs: Vec<_> = items
                .iter()
                .map(|(d, salt, b)| (*d, *salt, b.as_slice()))
                .collect();
            s.put_payloads(&refs).map_err(store_error)
        })
        .await
    }

    async fn payload(
        &self,
        digest: PayloadDigest,
    ) -> Result<Option<([u8; 32], Vec<u8>)>, StorageError> {
        self.blocking(move |s, _| s.payload(&digest).map_err(store_error))
            .await
    }

    async fn redact(&self, digest: PayloadDigest) -> Result<bool, StorageError> {
        self.blocking(move |s, _| s.redact(&digest).map_err(store_error))
            .await
    }

    async fn record_accessor(
        &self,
        session: &Did,
        accessor: &str,
        expires_unix: i64,
    ) -> Result<(), StorageError> {
        let key = accessor_key(session, accessor);
        self.blocking(move |_, db| {
            db.with(|t| {
                t.accessors.insert(&key, &expires_unix.to_be_bytes())?;
                t.db.flush().map(|_| ())
            })
            .map_err(db_error)
        })
        .await
    }

    async fn accessors_of(&self, sessions: &[Did]) -> Result<Vec<(Did, String)>, StorageError> {
        let sessions = sessions.to_vec();
        self.blocking(move |_, db| {
            let mut out = Vec::new();
            for did in sessions {
                let mut prefix = did.as_str().as_bytes().to_vec();
                prefix.push(0);
                let keys = db
                    .with(|t| {
                        t.accessors
                            .scan_prefix(&prefix)
                            .map(|kv| kv.map(|(k, _)| k))
                            .collect::<sled::Result<Vec<_>>>()
                    })
                    .map_err(db_error)?;
                for k in keys {
                    out.push((
                        did.clone(),
                        String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    ));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_accessor(&self, session: &Did, accessor: &str) -> Result<(), StorageError> {
        let key = accessor_key(session, accessor);
        self.blocking(move |_, db| {
            db.with(|t| t.accessors.remove(&key).map(|_| ()))
                .map_err(db_error)
        })
        .await
    }

    async fn record_ingest(&self, token_sha256: &str, session: &Did) -> Result<(), StorageError> {
        let (key, did) = (token_sha256.to_string(), session.clone());
        self.blocking(move |_, db| {
            db.with(|t| {
                t.ingest.insert(key.as_bytes(), did.as_str().as_bytes())?;
                t.db.flush().map(|_| ())
            })
            .map_err(db_error)
        })
        .await
    }

    async fn ingest_session(&self, token_sha256: &str) -> Result<Option<Did>, StorageError> {
        let key = token_sha256.to_string();
        self.blocking(move |_, db| {
            let v = db
                .with(|t| t.ingest.get(key.as_bytes()))
                .map_err(db_error)?;
            Ok(v.and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|d| Did::parse(d).ok())
            }))
        })
        .await
    }

    async fn forget_ingest_of(&self, sessions: &[Did]) -> Result<(), StorageError> {
        let dead = sessions.to_vec();
        self.blocking(move |_, db| {
            db.with(|t| {
                for kv in t.ingest.iter() {
                    let (k, v) = kv?;
                    if dead.iter().any(|d| v.as_ref() == d.as_str().as_bytes()) {
                        t.ingest.remove(k)?;
                    }
                }
                Ok(())
            })
            .map_err(db_error)?;
            db.flush().map_err(db_error)
        })
        .await
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.blocking(|s, db| {
            s.close().map_err(store_error)?;
            db.flush().map_err(db_error)
        })
        .await
    }
}
