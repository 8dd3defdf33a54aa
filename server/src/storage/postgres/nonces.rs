//! Signed-request nonces in the shared database (`custody_request_nonces`),
//! so a request replayed to any broker of the ledger is refused. Requests
//! that do not append are remembered in batches by [`remember`] (one round
//! trip and one commit for all that arrive meanwhile); append requests in
//! the sequencer's own transaction ([`INSERT`] with [`Distinct`], answered
//! by [`first_uses`]); [`sweep`] deletes them once their timestamps would no
//! longer be accepted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{cause, pool_error, unavailable, Shared};
use crate::storage::{RequestNonce, StorageError};

/// Inserts the nonces not already used; returns the ones it inserted.
pub(crate) const INSERT: &str = "INSERT INTO custody_request_nonces (nonce, forget_at)
     SELECT * FROM unnest($1::bytea[], $2::bigint[]) ON CONFLICT (nonce) DO NOTHING RETURNING nonce";

/// Nonces [`remember`] gathers into one insert.
pub(crate) const BATCH: usize = 4096;
/// How often expired nonces are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A nonce to remember, when it may be forgotten, and where to say whether
/// it was new.
pub(crate) type Ask = (RequestNonce, oneshot::Sender<Result<bool, StorageError>>);

/// A batch's nonces as [`INSERT`]'s parameters, each once.
pub(crate) struct Distinct {
    keys: Vec<Vec<u8>>,
    forget_at: Vec<i64>,
}

impl Distinct {
    pub(crate) fn of<'a>(asked: impl IntoIterator<Item = &'a RequestNonce>) -> Self {
        let mut seen = HashSet::new();
        let (mut keys, mut forget_at) = (Vec::new(), Vec::new());
        for n in asked {
            if seen.insert(n.nonce) {
                keys.push(n.nonce.to_vec());
                forget_at.push(n.forget_at_ms);
            }
        }
        Self { keys, forget_at }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 2] {
        [&self.keys, &self.forget_at]
    }
}

/// For each ask of a batch, in order, whether it is the first use of its
/// nonce: [`INSERT`] returned it (`inserted`, its rows) and no earlier ask
/// of the batch had it — an equal later one is a replay whatever the
/// database says. `None` (nothing asked) is no first use.
pub(crate) fn first_uses(
    inserted: Vec<Row>,
    asked: impl IntoIterator<Item = Option<[u8; 16]>>,
) -> Vec<bool> {
    let mut new: HashSet<Vec<u8>> = inserted.into_iter().map(|r| r.get(0)).collect();
    asked
        .into_iter()
        .map(|n| n.is_some_and(|n| new.remove(n.as_slice())))
        .collect()
}

/// Remembers the nonces asked on `rx` in batches, answering each.
pub(crate) async fn remember(shared: Arc<Shared>, mut rx: mpsc::Receiver<Ask>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let distinct = Distinct::of(batch.iter().map(|(n, _)| n));
        let inserted: Result<Vec<Row>, StorageError> = async {
            let c = shared.pool.get().await.map_err(pool_error)?;
            c.query(INSERT, &distinct.params())
                .await
                .map_err(unavailable)
        }
        .await;
        match inserted {
            Ok(rows) => {
                let firsts = first_uses(rows, batch.iter().map(|(n, _)| Some(n.nonce)));
                for ((_, reply), first) in batch.into_iter().zip(firsts) {
                    let _ = reply.send(Ok(first));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Deletes the nonces whose timestamps would no longer be accepted
/// (whichever broker or transaction remembered them), every
/// [`SWEEP_EVERY`]; a failure is retried at the next tick.
pub(crate) async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = custody_wire::signing::now_ms();
        let swept = match shared.pool.get().await {
            Ok(c) => c
                .execute(
                    "DELETE FROM custody_request_nonces WHERE forget_at < $1",
                    &[&now],
                )
                .await
                .map(|_| ())
                .map_err(|e| cause(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = swept {
            tracing::debug!("ledger database: deleting expired request nonces: {e}");
        }
    }
}
