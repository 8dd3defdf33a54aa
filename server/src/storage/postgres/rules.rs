//! The rules' state of a broker on PostgreSQL: restored from the tables on
//! start (no replay), and caught up with what other brokers append.
//!
//! Each broker keeps an [`Authority`] in memory for its cached decisions
//! (policy checks, OTLP ingest, admin checks) and for admitting its own
//! batches. It is built with [`Authority::restore`] from `custody_head`,
//! `custody_sessions` and `custody_revocations`, which the sequencer writes
//! in the same transaction as the entries that change them; the nonce set is
//! the unique index of `custody_entries`, never broker memory. What the
//! oversight rule (A8) holds — open approvals, holds, allowing decisions and
//! their use — has no table: every such record ends within a day, so it is
//! rebuilt from the entries received within [`RESTORE_WINDOW_MS`] (two
//! days and ten minutes) before the head that the sequencer marked as
//! making or using such a record ([`Authority::restore_oversight`]). Catching up reads only the entries
//! that change the state (`changes`) and skips the rest
//! ([`Authority::advance_to`]).

use std::time::Instant;

use custody_identity::{Delegation, Did, Revocation};
use custody_ledger::authority::{Authority, RevocationRecord, SessionGrant, TrustRoots};
use custody_ledger::oversight::RESTORE_HORIZON_MS;
use custody_ledger::{Entry, EntryHash, Seq, Timestamp};
use tokio_postgres::GenericClient;

use super::cause;

/// What `custody_head` says.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub ledger: Did,
    pub size: u64,
    pub prev: EntryHash,
    pub root: [u8; 32],
    pub last_received_at: Option<Timestamp>,
    pub trust: TrustRoots,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{0}")]
    Db(String),
    #[error("the ledger database is damaged: {0}")]
    Corrupt(String),
}

impl From<tokio_postgres::Error> for LoadError {
    fn from(e: tokio_postgres::Error) -> Self {
        LoadError::Db(cause(&e))
    }
}

fn corrupt(what: impl Into<String>) -> LoadError {
    LoadError::Corrupt(what.into())
}

fn bytes32(v: &[u8], what: &str) -> Result<[u8; 32], LoadError> {
    v.try_into()
        .map_err(|_| corrupt(format!("{what} is {} bytes, not 32", v.len())))
}

pub(crate) fn millis(t: Timestamp) -> i64 {
    t.unix_millis() as i64
}

pub(crate) fn timestamp(ms: i64) -> Result<Timestamp, LoadError> {
    Timestamp::from_unix_millis(ms as i128).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn trust_text(t: &TrustRoots) -> String {
    serde_json::Value::Object(t.to_details()).to_string()
}

fn parse_trust(text: &str) -> Result<TrustRoots, LoadError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("custody_head.trust: {e}")))?;
    match v.as_object() {
        Some(m) if m.is_empty() => Ok(TrustRoots::default()),
        Some(m) => TrustRoots::from_details(m)
            .map_err(|d| corrupt(format!("custody_head.trust: {}", d.message))),
        None => Err(corrupt("custody_head.trust is not an object")),
    }
}

/// The head row, locked: what the sequencer's transaction starts with
/// (with, last, the right edge of the tree it moved the head to).
pub(crate) const HEAD_FOR_UPDATE: &str =
    "SELECT ledger, size, prev, root, last_received_at, trust, edge FROM custody_head WHERE id = 1 FOR UPDATE";

/// Reads the head row (`FOR UPDATE` when `lock`).
pub(crate) async fn read_head(
    c: &impl GenericClient,
    lock: bool,
) -> Result<Option<Head>, LoadError> {
    let sql = if lock {
        HEAD_FOR_UPDATE
    } else {
        "SELECT ledger, size, prev, root, last_received_at, trust FROM custody_head WHERE id = 1"
    };
    match c.query_opt(sql, &[]).await? {
        Some(row) => head_of(&row).map(Some),
        None => Ok(None),
    }
}

/// The head from its row (the columns of [`HEAD_FOR_UPDATE`]).
pub(crate) fn head_of(row: &tokio_postgres::Row) -> Result<Head, LoadError> {
    let ledger: String = row.get(0);
    Ok(Head {
        ledger: Did::parse(&ledger).map_err(|e| corrupt(format!("custody_head.ledger: {e}")))?,
        size: row.get::<_, i64>(1) as u64,
        prev: EntryHash(bytes32(row.get(2), "custody_head.prev")?),
        root: bytes32(row.get(3), "custody_head.root")?,
        last_received_at: row.get::<_, Option<i64>>(4).map(timestamp).transpose()?,
        trust: parse_trust(row.get(5))?,
    })
}

/// The rules' state as of `head`, from the tables. Call it in a transaction
/// that holds the head lock, or in a repeatable-read snapshot, so the three
/// reads agree.
pub(crate) async fn load_authority(
    c: &impl GenericClient,
    head: &Head,
) -> Result<Authority, LoadError> {
    let mut sessions = Vec::new();
    for row in c
        .query(
            "SELECT did, delegation, started_at, ended_at FROM custody_sessions",
            &[],
        )
        .await?
    {
        let did: String = row.get(0);
        let did = Did::parse(&did).map_err(|e| corrupt(format!("custody_sessions.did: {e}")))?;
        let jws: String = row.get(1);
        let delegation = Delegation::verify(&jws)
            .map_err(|e| corrupt(format!("the delegation of session {did}: {e}")))?;
        sessions.push((
            did,
            SessionGrant {
                delegation,
                started_at: Seq(row.get::<_, i64>(2) as u64),
                ended_at: row.get::<_, Option<i64>>(3).map(|s| Seq(s as u64)),
            },
        ));
    }
    let mut revocations = Vec::new();
    for row in c
        .query(
            "SELECT subject, jws, seq, effective FROM custody_revocations",
            &[],
        )
        .await?
    {
        let jws: String = row.get(1);
        let revocation = Revocation::verify(&jws).map_err(|e| {
            corrupt(format!(
                "the revocation of {}: {e}",
                row.get::<_, String>(0)
            ))
        })?;
        revocations.push(RevocationRecord {
            revocation,
            jws,
            seq: Seq(row.get::<_, i64>(2) as u64),
            effective: timestamp(row.get(3))?,
        });
    }
    let mut a = Authority::restore(
        head.ledger.clone(),
        head.trust.clone(),
        sessions,
        revocations,
        Seq(head.size),
    );
    restore_oversight(c, head, &mut a).await?;
    Ok(a)
}

/// How far before the last entry's receive time the oversight rebuild
/// reads: [`RESTORE_HORIZON_MS`] plus a margin of ten minutes. Every
/// lifetime is measured in the ledger's receive time, which the sequencer
/// never lets go back (`received_at = max(now, last received_at)`), so
/// brokers' clock skew cannot make an entry of the horizon look older than
/// it is and the horizon alone is exact; the margin only keeps the boundary
/// away from equal timestamps.
pub(crate) const RESTORE_WINDOW_MS: i64 = RESTORE_HORIZON_MS + 10 * 60 * 1000;

/// The entries the oversight rebuild reads: those of the window that the
/// sequencer marked `oversight` (they made or used an oversight record, or
/// set the trust roots: `Admitted::restores_oversight`), by the partial
/// index on their receive time.
const OVERSIGHT_ENTRIES: &str = "SELECT seq, line FROM custody_entries WHERE oversight AND received_at >= $1 AND seq < $2 ORDER BY seq";

/// Whether the entry at `seq`, admitted as using the policy's allow at
/// `used` (`Admitted::used_decision`), is the call "decided with" it: the
/// allow just before it, the two written in one transaction (the hook's
/// check and call, one request). Neither of such a pair is marked
/// `oversight` — the allow is used up by the call next to it, so the
/// rebuild on start has nothing to restore from them. The sequencer and
/// `custody migrate` both mark by this rule; any other use of an allow is
/// marked and read on start.
pub(crate) fn decided_with_call(seq: u64, used: Option<u64>) -> bool {
    seq > 0 && used == Some(seq - 1)
}

/// Folds the oversight effects of the last two days of entries into a
/// restored state (see the module documentation). The read grows with the
/// oversight entries of two days (approvals, the policy's decisions, the
/// calls that used them), not with the ledger.
async fn restore_oversight(
    c: &impl GenericClient,
    head: &Head,
    a: &mut Authority,
) -> Result<(), LoadError> {
    let Some(last) = head.last_received_at else {
        return Ok(());
    };
    let t0 = Instant::now();
    let since = millis(last) - RESTORE_WINDOW_MS;
    let rows = c
        .query(OVERSIGHT_ENTRIES, &[&since, &(head.size as i64)])
        .await?;
    // Only approvals, the policy's decisions and tool calls are parsed.
    let entries = rows
        .iter()
        .filter(|row| Authority::may_change_oversight(row.get(1)))
        .map(parse_row)
        .collect::<Result<Vec<_>, _>>()?;
    let done = a.restore_oversight(&entries);
    tracing::info!(
        since,
        read = rows.len(),
        parsed = done.entries,
        records = a.oversight().len(),
        ms = t0.elapsed().as_millis() as u64,
        "ledger database: oversight records rebuilt from the last two days of entries"
    );
    if done.forgotten_approvals > 0 {
        tracing::warn!(
            approvals = done.forgotten_approvals,
            "ledger database: approvals recorded before the latest trust update were not restored (the trust roots they were signed under are not kept); their calls are held again"
        );
    }
    Ok(())
}

/// The entries from `$1` on that change the rules' state: sent with the head
/// lock (before its answer), so "on" is "up to the locked head".
pub(crate) const STATE_CHANGES_FROM: &str =
    "SELECT seq, line FROM custody_entries WHERE changes AND seq >= $1 ORDER BY seq";

/// The entries in `$1..$2` that change the rules' state.
pub(crate) const STATE_CHANGES: &str =
    "SELECT seq, line FROM custody_entries WHERE changes AND seq >= $1 AND seq < $2 ORDER BY seq";

/// The entries in `from..to` that change the rules' state, parsed.
pub(crate) async fn state_changes(
    c: &impl GenericClient,
    from: u64,
    to: u64,
) -> Result<Vec<Entry>, LoadError> {
    if from >= to {
        return Ok(Vec::new());
    }
    let rows = c
        .query(STATE_CHANGES, &[&(from as i64), &(to as i64)])
        .await?;
    entries_of(&rows)
}

/// The entries of [`STATE_CHANGES`]' rows, parsed.
pub(crate) fn entries_of(rows: &[tokio_postgres::Row]) -> Result<Vec<Entry>, LoadError> {
    rows.iter().map(parse_row).collect()
}

/// An entry from its `(seq, line)` row.
fn parse_row(row: &tokio_postgres::Row) -> Result<Entry, LoadError> {
    let seq: i64 = row.get(0);
    let entry = Entry::parse_line(row.get(1)).map_err(|e| corrupt(format!("entry {seq}: {e}")))?;
    if entry.seq.0 != seq as u64 {
        return Err(corrupt(format!("entry {seq} says it is {}", entry.seq)));
    }
    Ok(entry)
}

/// Folds entries `from..to` into `a` (at `from`): the state-changing ones in
/// `changes` are checked again and applied, the rest skipped. Returns false
/// (and changes nothing) when `a` is not in `from..=to`.
pub(crate) fn fold(a: &mut Authority, changes: &[Entry], from: u64, to: u64) -> bool {
    let next = a.next_seq().0;
    if next < from || next > to {
        return false;
    }
    for e in changes.iter().filter(|e| e.seq.0 >= next && e.seq.0 < to) {
        a.advance_to(e.seq);
        // Admitted when it was appended; a refusal here (never expected)
        // folds nothing, as on the embedded backend's reopen.
        if let Err(d) = a.replay(e) {
            tracing::warn!(seq = e.seq.0, code = d.code.as_str(), "ledger database: an entry that changes the rules' state is refused on catch-up: {}", d.message);
        }
    }
    a.advance_to(Seq(to));
    true
}

#[cfg(test)]
mod tests {
    use super::decided_with_call;

    #[test]
    fn only_the_allow_just_before_a_call_pairs_with_it() {
        assert!(decided_with_call(8, Some(7)));
        // An allow used later, or none used: both stay marked.
        assert!(!decided_with_call(8, Some(6)));
        assert!(!decided_with_call(8, None));
        // A claim on a later entry cannot pair (the rules refuse it anyway).
        assert!(!decided_with_call(8, Some(8)));
        assert!(!decided_with_call(0, Some(0)));
    }
}
