//! `custody export` from PostgreSQL: the same bundle as the embedded
//! backend's ([`BundleWriter`]), streamed in chunks of [`CHUNK`] entries so
//! memory stays bounded whatever the ledger's size. A reader task queries
//! chunk after chunk (entries joined with their payload bodies) while a
//! blocking thread writes the previous one; at most two chunks are in flight.

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use custody_identity::KeyPair;
use custody_ledger::bundle::BundleWriter;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, TreeHead};
use time::OffsetDateTime;

use super::{unavailable, Postgres, CHUNK};
use crate::storage::{Storage, StorageError};

/// One entry line and its payload body, if it has one that is kept.
type Item = (Vec<u8>, Option<([u8; 32], Vec<u8>)>);

pub(super) async fn export(
    pg: &Postgres,
    ledger_key: &KeyPair,
    origin: &Origin,
    out: &Path,
) -> Result<(), StorageError> {
    let head: TreeHead = pg.head().await?;
    if head.size == 0 {
        return Err(StorageError::Failed("export: the ledger is empty".into()));
    }
    let latest = pg.latest_checkpoint().await?.map(|(s, _)| s);
    if latest != Some(head.size) {
        let cp = SignedCheckpoint::sign(ledger_key, origin, head, OffsetDateTime::now_utc())
            .map_err(|e| StorageError::Failed(format!("export: checkpoint: {e}")))?;
        pg.save_checkpoint(head.size, cp.to_bytes()).await?;
    }
    let checkpoints: Vec<(u64, Vec<u8>)> = {
        let c = pg.client().await?;
        c.query(
            "SELECT size, note FROM custody_checkpoints WHERE size <= $1 ORDER BY size",
            &[&(head.size as i64)],
        )
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
        .collect()
    };

    let (tx, rx) = std_mpsc::sync_channel::<Vec<Item>>(1);
    let (ledger, origin_text, root, dir) = (
        ledger_key.did(),
        origin.as_str().to_string(),
        hash_to_hex(&head.root),
        out.to_path_buf(),
    );
    let writer = tokio::task::spawn_blocking(move || {
        let failed =
            |e: custody_ledger::bundle::BundleError| StorageError::Failed(format!("export: {e}"));
        let mut w = BundleWriter::create(&dir).map_err(failed)?;
        for chunk in rx {
            for (line, payload) in chunk {
                w.push_line(&line, |_| payload).map_err(failed)?;
            }
        }
        w.finish(&ledger, &origin_text, &root, &checkpoints)
            .map_err(failed)?;
        Ok::<_, StorageError>(())
    });

    let read = async {
        let c = pg.client().await?;
        let stmt = c
            .prepare(
                "SELECT e.line, p.salt, p.body FROM custody_entries e
                 LEFT JOIN custody_payloads p ON p.digest = e.payload
                 WHERE e.seq >= $1 AND e.seq < $2 ORDER BY e.seq",
            )
            .await
            .map_err(unavailable)?;
        let mut from = 0i64;
        let size = head.size as i64;
        while from < size {
            let to = (from + CHUNK).min(size);
            let rows = c.query(&stmt, &[&from, &to]).await.map_err(unavailable)?;
            if rows.len() as i64 != to - from {
                return Err(StorageError::Failed(format!(
                    "export: the ledger database holds {} of entries {from}..{to}",
                    rows.len()
                )));
            }
            let chunk: Vec<Item> = rows
                .into_iter()
                .map(|r| {
                    let salt: Option<&[u8]> = r.get(1);
                    let body: Option<Vec<u8>> = r.get(2);
                    let payload = match (salt.and_then(|s| <[u8; 32]>::try_from(s).ok()), body) {
                        (Some(s), Some(b)) => Some((s, b)),
                        _ => None,
                    };
                    (r.get::<_, Vec<u8>>(0), payload)
                })
                .collect();
            // The writer holds at most one chunk besides this one.
            let tx = tx.clone();
            let sent = tokio::task::spawn_blocking(move || tx.send(chunk).is_ok())
                .await
                .unwrap_or(false);
            if !sent {
                break;
            }
            from = to;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| StorageError::Failed(format!("export: {e}")))?;
    read?;
    written
}
