//! The PostgreSQL schema, as versioned migrations applied on start.
//!
//! Every broker runs [`migrate`] when it opens the database. The migrations
//! are applied under a transaction-level advisory lock, so brokers starting
//! together apply each once; `custody_schema` records which were applied.
//! A database whose schema is newer than this build is refused rather than
//! written with rules it does not know.
//!
//! What lives where (all of a broker's state; none stays on its disk):
//!
//! | table | holds |
//! |---|---|
//! | `custody_head` | the one coordination row: ledger DID, size, last entry hash, root, last receive time, trust roots, the tree's right edge. Every append batch locks it (`FOR UPDATE`). |
//! | `custody_entries` | each entry's canonical line, byte for byte, with its hash, nonce (unique: the ledger's nonce set), receive time, payload digest, whether it changes the rules' state, and whether the oversight rebuild reads it (indexed by receive time: the last two days of those) |
//! | `custody_hashes` | the RFC 6962 stored hashes in `tlog_tiles` order |
//! | `custody_checkpoints` | signed notes and what retention needs of them |
//! | `custody_sessions`, `custody_revocations` | the rules' state, written in the transaction of the entry that changes it, so a broker starts without replaying the ledger (its oversight records come from the last two days of the entries marked `oversight`) |
//! | `custody_payloads` | salted payload bodies (deletable) |
//! | `custody_accessors`, `custody_ingest` | token accessors (to revoke tokens) and OTLP ingest credentials |
//! | `custody_request_nonces` | signed-request nonces while their timestamps are acceptable |

use tokio_postgres::Client;

/// Key of the advisory lock migrations run under ("custody" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_7573_746f_6479;

/// The migrations in order; version = position + 1. Never edit one that
/// has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the ledger, its rules' state and the broker's records.
    r#"
CREATE TABLE custody_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    ledger text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    prev bytea NOT NULL,
    root bytea NOT NULL,
    last_received_at bigint,
    trust text NOT NULL
);
CREATE TABLE custody_entries (
    seq bigint PRIMARY KEY,
    line bytea NOT NULL,
    hash bytea NOT NULL,
    nonce bytea NOT NULL UNIQUE,
    received_at bigint NOT NULL,
    payload bytea,
    changes boolean NOT NULL
);
CREATE INDEX custody_entries_changes ON custody_entries (seq) WHERE changes;
CREATE TABLE custody_hashes (
    idx bigint PRIMARY KEY,
    hash bytea NOT NULL
);
CREATE TABLE custody_checkpoints (
    size bigint PRIMARY KEY,
    note bytea NOT NULL,
    day integer,
    cosigned boolean NOT NULL,
    signatures integer NOT NULL
);
CREATE TABLE custody_sessions (
    did text PRIMARY KEY,
    delegation text NOT NULL,
    started_at bigint NOT NULL,
    ended_at bigint
);
CREATE TABLE custody_revocations (
    subject text PRIMARY KEY,
    jws text NOT NULL,
    seq bigint NOT NULL,
    effective bigint NOT NULL
);
CREATE TABLE custody_payloads (
    digest bytea PRIMARY KEY,
    salt bytea NOT NULL,
    body bytea NOT NULL
);
CREATE TABLE custody_accessors (
    session text NOT NULL,
    accessor text NOT NULL,
    expires bigint NOT NULL,
    PRIMARY KEY (session, accessor)
);
CREATE TABLE custody_ingest (
    token_sha256 text PRIMARY KEY,
    session text NOT NULL
);
CREATE INDEX custody_ingest_session ON custody_ingest (session);
CREATE TABLE custody_request_nonces (
    nonce bytea PRIMARY KEY,
    forget_at bigint NOT NULL
);
CREATE INDEX custody_request_nonces_forget ON custody_request_nonces (forget_at);
"#,
    // 2: where the last two days of the ledger start, so a broker rebuilds
    // its oversight records (approvals, holds) from them on start with one
    // index probe. Built once, in the migration's
    // transaction: on a large ledger the first broker of the new version
    // takes a moment longer to start, and appends wait for it.
    r#"
CREATE INDEX custody_entries_received ON custody_entries (received_at, seq);
"#,
    // 3: which entries the oversight rebuild reads (`rules::restore_oversight`):
    // those that made or used an oversight record, or set the trust roots,
    // marked by the sequencer as it appends them, so a broker's start reads
    // those of the last two days and not every entry received in them.
    // Existing rows are marked by what could be such an entry (every entry
    // that changes the rules' state, within the last two days and ten
    // minutes — 173,400,000 ms, `rules::RESTORE_WINDOW_MS`): a superset the
    // rebuild checks again, so a database written by an older broker
    // restores exactly what it did before. Version 2's index on every
    // entry's receive time is no longer read: dropped (one index write less
    // per append).
    r#"
ALTER TABLE custody_entries ADD COLUMN oversight boolean NOT NULL DEFAULT false;
UPDATE custody_entries SET oversight = true
 WHERE changes
   AND received_at >= (SELECT coalesce(max(last_received_at), 0) FROM custody_head) - 173400000;
CREATE INDEX custody_entries_oversight ON custody_entries (received_at, seq) WHERE oversight;
DROP INDEX custody_entries_received;
"#,
    // 4: the right edge of the tree (the stored hashes `tlog_tiles::sub_tree_index(0, size)`,
    // 32 bytes each, in that order) kept in the head row by the sequencer, so
    // a batch that follows another broker's does not read `custody_hashes`
    // for it under the head lock. NULL (a database from an older broker, or
    // `custody migrate`): read from `custody_hashes` once.
    r#"
ALTER TABLE custody_head ADD COLUMN edge bytea;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Db(String),
    #[error("the database's schema is version {found}, newer than this build's {SCHEMA_VERSION}: upgrade custody")]
    TooNew { found: i32 },
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction under the
/// migration lock: a broker killed half-way leaves the schema as it was.
pub async fn migrate(client: &mut Client) -> Result<(), MigrateError> {
    let db = |e: tokio_postgres::Error| MigrateError::Db(super::cause(&e));
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS custody_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM custody_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(MigrateError::TooNew { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO custody_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db)?;
        tracing::info!(version, "ledger database: schema migration applied");
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_oversight_backfill_covers_the_restore_window() {
        let window = super::super::rules::RESTORE_WINDOW_MS.to_string();
        assert!(super::MIGRATIONS[2].contains(&window), "{window}");
    }
}
