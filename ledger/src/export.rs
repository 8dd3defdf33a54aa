//! Export: sign a checkpoint of the whole ledger and write the bundle.

use std::path::Path;

use custody_identity::KeyPair;
use time::OffsetDateTime;

use crate::bundle::{BundleError, BundleWriter, Manifest};
use crate::checkpoint::{Origin, SignedCheckpoint};
use crate::merkle::hash_to_hex;
use crate::store::{Gate, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("the ledger is empty")]
    Empty,
}

/// Signs a checkpoint at the current size (kept in the store too) and writes
/// every entry, payload, credential, DID and checkpoint into `out`.
pub fn export_bundle<G: Gate>(
    store: &Store<G>,
    ledger_key: &KeyPair,
    origin: &Origin,
    out: &Path,
) -> Result<Manifest, ExportError> {
    let head = store.head()?;
    if head.size == 0 {
        return Err(ExportError::Empty);
    }
    let latest = store.checkpoints()?.last().map(|(s, _)| *s);
    if latest != Some(head.size) {
        let cp = SignedCheckpoint::sign(ledger_key, origin, head, OffsetDateTime::now_utc())?;
        store.save_checkpoint(head.size, &cp.to_bytes())?;
    }
    let checkpoints: Vec<(u64, Vec<u8>)> = store
        .checkpoints()?
        .into_iter()
        .filter(|(s, _)| *s <= head.size)
        .collect();
    let mut w = BundleWriter::create(out)?;
    for (i, line) in store.lines()?.enumerate() {
        if i as u64 >= head.size {
            break;
        }
        let line = line?;
        w.push_line(&line, |d| store.payload(d).ok().flatten())?;
    }
    Ok(w.finish(
        &ledger_key.did(),
        origin.as_str(),
        &hash_to_hex(&head.root),
        &checkpoints,
    )?)
}
