//! `custody migrate --from DATA --to postgres://…`: copies a broker's
//! embedded data directory into an empty PostgreSQL database, every entry
//! byte for byte.
//!
//! Opening the embedded store scans its segments (the chain, the torn-tail
//! rule) and replays every entry through the rules, so what is copied is
//! what that broker would serve; the rules' state that replay ends in
//! becomes the state tables. Lines, nonces and stored hashes go in with
//! `COPY … (FORMAT binary)`, then payload bodies, checkpoints, token
//! accessors and ingest credentials, and last the head row — all in one
//! transaction, so a failed or interrupted migration leaves the database as
//! it was and can simply be run again. A database that already holds a
//! ledger is refused. Before committing, the root computed from the copied
//! stored hashes must equal the embedded store's.

use std::collections::HashMap;
use std::path::Path;

use custody_identity::Did;
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::merkle::{hash_to_hex, Hash};
use custody_ledger::store::{CheckpointInfo, Store};
use custody_ledger::{actions, entry_hash, Entry, EntryHash, Seq};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::rules::{self, millis, trust_text};
use super::sequencer::push_leaf;
use super::{cause, connect, pg_config, schema};
use crate::brokerdb::BrokerDb;
use crate::config::PgUrl;
use crate::BoxFuture;

/// What a migration copied.
#[derive(Debug)]
pub struct Migrated {
    pub ledger: Did,
    pub entries: u64,
    pub root: String,
    pub payloads: u64,
    pub checkpoints: u64,
    pub accessors: u64,
    pub ingest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Source(String),
    #[error("ledger database: {0}")]
    Db(String),
    #[error("the target database already holds a ledger ({0} entries, ledger {1}): custody migrate copies into an empty database only")]
    NotEmpty(u64, String),
    #[error("{0}")]
    Mismatch(String),
}

fn db(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Db(cause(&e))
}

/// Copies the embedded ledger and records in `data` into the database at
/// `url`. The broker of `data` must be stopped (the store's lock says so).
pub fn migrate<'a>(
    data: &'a Path,
    url: &'a PgUrl,
) -> BoxFuture<'a, Result<Migrated, MigrateError>> {
    Box::pin(migrate_body(data, url))
}

/// [`migrate`]'s body.
async fn migrate_body(data: &Path, url: &PgUrl) -> Result<Migrated, MigrateError> {
    let cfg = pg_config(url).map_err(|e| MigrateError::Db(e.to_string()))?;
    let mut client = connect(&cfg)
        .await
        .map_err(|e| MigrateError::Db(e.to_string()))?;
    schema::migrate(&mut client)
        .await
        .map_err(|e| MigrateError::Db(e.to_string()))?;

    // Opening replays every entry through the rules (blocking work).
    let dir = data.join("ledger");
    if !dir.join("segments").is_dir() {
        return Err(MigrateError::Source(format!(
            "{} holds no ledger (no segments/ directory)",
            dir.display()
        )));
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, Authority::new(None)))
        .await
        .map_err(|e| MigrateError::Source(e.to_string()))?
        .map_err(|e| MigrateError::Source(format!("the embedded ledger: {e}")))?;
    let head = store
        .head()
        .map_err(|e| MigrateError::Source(e.to_string()))?;
    let (ledger, trust, sessions, revocations) = store.with_gate(|a| {
        (
            a.ledger().cloned(),
            a.trust().clone(),
            a.sessions()
                .map(|(d, g)| (d.clone(), g.clone()))
                .collect::<Vec<_>>(),
            a.revocations().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        )
    });
    let ledger = ledger.ok_or_else(|| {
        MigrateError::Source("the embedded ledger has no accepted genesis entry".into())
    })?;

    let tx = client.transaction().await.map_err(db)?;
    if let Some(row) = tx
        .query_opt(
            "SELECT size, ledger FROM custody_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(db)?
    {
        let size: i64 = row.get(0);
        let other: String = row.get(1);
        if size > 0 || other != ledger.as_str() {
            return Err(MigrateError::NotEmpty(size as u64, other));
        }
        tx.execute("DELETE FROM custody_head", &[])
            .await
            .map_err(db)?;
    }

    // Entries, streamed (COPY holds the connection: stored hashes follow in
    // a second pass over the segments).
    let mut delegations: HashMap<Did, (u64, String)> = HashMap::new();
    let mut payload_digests: Vec<[u8; 32]> = Vec::new();
    let (mut prev, mut last_ms, mut count) = (EntryHash::ZERO, None, 0u64);
    // The entries the oversight rebuild reads are those the rules marked
    // when admitting them (`Admitted::restores_oversight`): a second pass of
    // the rules over the lines says which, from a state that leaves the
    // nonces to the database (so it does not hold a million of them).
    let mut rules = Authority::restore(
        ledger.clone(),
        TrustRoots::default(),
        Vec::new(),
        Vec::new(),
        Seq(0),
    );
    let mut paired: Vec<i64> = Vec::new();
    {
        let sink = tx
            .copy_in(
                "COPY custody_entries (seq, line, hash, nonce, received_at, payload, changes, oversight) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(db)?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::BYTEA,
                Type::BYTEA,
                Type::BYTEA,
                Type::INT8,
                Type::BYTEA,
                Type::BOOL,
                Type::BOOL,
            ],
        );
        pin_mut!(writer);
        let lines = store
            .lines()
            .map_err(|e| MigrateError::Source(e.to_string()))?;
        for line in lines {
            let line = line.map_err(|e| MigrateError::Source(e.to_string()))?;
            if count >= head.size {
                break;
            }
            let entry = Entry::parse_line(&line)
                .map_err(|e| MigrateError::Source(format!("entry {count}: {e}")))?;
            if entry.seq.0 != count || entry.prev != prev {
                return Err(MigrateError::Source(format!(
                    "entry {count}: out of sequence or off the chain"
                )));
            }
            let hash = entry_hash(&line);
            let action = entry.event.action.as_str();
            if action == actions::SESSION_START {
                if let Some(jws) = entry.event.detail_str("delegation") {
                    delegations.insert(entry.event.actor.clone(), (count, jws.to_string()));
                }
            }
            let payload = entry.event.payload.as_ref().map(|p| p.digest.0);
            if let Some(d) = payload {
                payload_digests.push(d);
            }
            let seq = count as i64;
            let nonce = entry.event.nonce.0.to_vec();
            let at = millis(entry.received_at);
            let changes = actions::changes_state(action);
            let oversight = match rules.check_verified(&entry.event, entry.received_at) {
                Ok(admitted) => {
                    let mut marked = admitted.restores_oversight();
                    // The migration is one transaction: every adjacent
                    // allow and call is a pair.
                    if rules::decided_with_call(count, admitted.used_decision()) {
                        paired.push((count - 1) as i64);
                        marked = false;
                    }
                    rules.apply(&entry, admitted);
                    marked
                }
                Err(_) => {
                    // Refused on the store's replay too: it changes nothing.
                    rules.skip();
                    false
                }
            };
            let payload_bytes = payload.map(|d| d.to_vec());
            writer
                .as_mut()
                .write(&[
                    &seq,
                    &line,
                    &hash.0.as_slice(),
                    &nonce,
                    &at,
                    &payload_bytes,
                    &changes,
                    &oversight,
                ])
                .await
                .map_err(db)?;
            prev = hash;
            last_ms = Some(at);
            count += 1;
        }
        writer.finish().await.map_err(db)?;
    }
    if !paired.is_empty() {
        tx.execute(
            "UPDATE custody_entries SET oversight = false WHERE seq = ANY($1)",
            &[&paired],
        )
        .await
        .map_err(db)?;
    }
    if count != head.size {
        return Err(MigrateError::Source(format!(
            "read {count} entries, the store holds {}",
            head.size
        )));
    }
    // Stored hashes, keeping only the tree's right edge in memory.
    let mut frontier = HashMap::new();
    {
        let sink = tx
            .copy_in("COPY custody_hashes (idx, hash) FROM STDIN (FORMAT binary)")
            .await
            .map_err(db)?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::BYTEA]);
        pin_mut!(writer);
        let lines = store
            .lines()
            .map_err(|e| MigrateError::Source(e.to_string()))?;
        for (n, line) in lines.enumerate().take(count as usize) {
            let line = line.map_err(|e| MigrateError::Source(e.to_string()))?;
            let n = n as u64;
            for (i, h) in push_leaf(&mut frontier, n, Hash(entry_hash(&line).0))
                .map_err(MigrateError::Source)?
            {
                writer
                    .as_mut()
                    .write(&[&(i as i64), &h.0.as_slice()])
                    .await
                    .map_err(db)?;
            }
            if n % 4096 == 4095 {
                prune(&mut frontier, n + 1);
            }
        }
        writer.finish().await.map_err(db)?;
    }
    prune(&mut frontier, count);
    let root = tlog_tiles::tree_hash(count, &super::sequencer::MapReader(&frontier))
        .map_err(|e| MigrateError::Source(format!("the root: {e}")))?;
    if root != head.root {
        return Err(MigrateError::Mismatch(format!(
            "the copied tree's root {} differs from the embedded store's {}",
            hash_to_hex(&root),
            hash_to_hex(&head.root)
        )));
    }

    // The rules' state the replay ended in.
    for (did, g) in &sessions {
        let Some((seq, jws)) = delegations.get(did).filter(|(s, _)| *s == g.started_at.0) else {
            return Err(MigrateError::Source(format!(
                "session {did}: its session.start entry {} was not found",
                g.started_at
            )));
        };
        tx.execute(
            "INSERT INTO custody_sessions (did, delegation, started_at, ended_at) VALUES ($1, $2, $3, $4)",
            &[&did.as_str(), jws, &(*seq as i64), &g.ended_at.map(|s| s.0 as i64)],
        )
        .await
        .map_err(db)?;
    }
    for r in &revocations {
        tx.execute(
            "INSERT INTO custody_revocations (subject, jws, seq, effective) VALUES ($1, $2, $3, $4)",
            &[
                &r.revocation.subject.as_str(),
                &r.jws,
                &(r.seq.0 as i64),
                &millis(r.effective),
            ],
        )
        .await
        .map_err(db)?;
    }

    // Payload bodies still kept.
    let mut payloads = 0u64;
    for d in payload_digests {
        let body = store
            .payload(&custody_ledger::PayloadDigest(d))
            .map_err(|e| MigrateError::Source(e.to_string()))?;
        if let Some((salt, body)) = body {
            tx.execute(
                "INSERT INTO custody_payloads (digest, salt, body) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING",
                &[&d.as_slice(), &salt.as_slice(), &body],
            )
            .await
            .map_err(db)?;
            payloads += 1;
        }
    }
    // Checkpoints, as kept.
    let cps = store
        .checkpoints()
        .map_err(|e| MigrateError::Source(e.to_string()))?;
    for (size, note) in &cps {
        let info = CheckpointInfo::of(*size, note).unwrap_or(CheckpointInfo::UNREADABLE);
        let sigs = custody_ledger::checkpoint::SignedCheckpoint::parse(note)
            .map(|c| c.signature_count() as i32)
            .unwrap_or(1);
        tx.execute(
            "INSERT INTO custody_checkpoints (size, note, day, cosigned, signatures) VALUES ($1, $2, $3, $4, $5)",
            &[
                &(*size as i64),
                note,
                &info.day.map(|d| d.to_julian_day()),
                &info.cosigned,
                &sigs,
            ],
        )
        .await
        .map_err(db)?;
    }
    // The broker's records.
    let (mut accessors, mut ingest) = (0u64, 0u64);
    let broker = data.join("broker");
    if broker.exists() {
        let records = BrokerDb::open(&broker)
            .map_err(|e| MigrateError::Source(format!("{}: {e}", broker.display())))?;
        let (acc, ing) = records
            .with(|t| {
                let acc = t.accessors.iter().collect::<sled::Result<Vec<_>>>()?;
                let ing = t.ingest.iter().collect::<sled::Result<Vec<_>>>()?;
                Ok((acc, ing))
            })
            .map_err(|e| MigrateError::Source(format!("{}: {e}", broker.display())))?;
        for (k, v) in acc {
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let session = String::from_utf8_lossy(&k[..sep]).into_owned();
            let accessor = String::from_utf8_lossy(&k[sep + 1..]).into_owned();
            let expires = <[u8; 8]>::try_from(v.as_ref())
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            tx.execute(
                "INSERT INTO custody_accessors (session, accessor, expires) VALUES ($1, $2, $3)",
                &[&session, &accessor, &expires],
            )
            .await
            .map_err(db)?;
            accessors += 1;
        }
        for (k, v) in ing {
            tx.execute(
                "INSERT INTO custody_ingest (token_sha256, session) VALUES ($1, $2)",
                &[
                    &String::from_utf8_lossy(&k).into_owned(),
                    &String::from_utf8_lossy(&v).into_owned(),
                ],
            )
            .await
            .map_err(db)?;
            ingest += 1;
        }
    }
    tx.execute(
        "INSERT INTO custody_head (id, ledger, size, prev, root, last_received_at, trust) VALUES (1, $1, $2, $3, $4, $5, $6)",
        &[
            &ledger.as_str(),
            &(count as i64),
            &prev.0.as_slice(),
            &root.0.as_slice(),
            &last_ms,
            &trust_text(&trust),
        ],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    // Statistics for the tables just filled, so the planner reads a
    // broker's start-up queries (the marked entries of the last two days)
    // through their partial indexes from the first start rather than
    // scanning a table it believes empty; and the vacuum a bulk insert
    // calls for (visibility map, hint bits) done now, not by autovacuum
    // while the first brokers start.
    client
        .batch_execute("VACUUM (ANALYZE) custody_entries, custody_hashes")
        .await
        .map_err(db)?;
    Ok(Migrated {
        ledger,
        entries: count,
        root: hash_to_hex(&root),
        payloads,
        checkpoints: cps.len() as u64,
        accessors,
        ingest,
    })
}

/// Keeps only the right edge of the tree of `size`.
fn prune(frontier: &mut HashMap<u64, Hash>, size: u64) {
    let keep: std::collections::HashSet<u64> = tlog_tiles::sub_tree_index(0, size, vec![])
        .into_iter()
        .collect();
    frontier.retain(|i, _| keep.contains(i));
}
