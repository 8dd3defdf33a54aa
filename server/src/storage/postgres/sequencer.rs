//! The sequencer: each broker's group commit into the shared ledger.
//!
//! **Durability.** One writer task per broker drains every queued append (up
//! to [`MAX_BATCH`] events) and commits them in one transaction, in two
//! round trips (each a pipeline of prepared statements), that:
//! locks the head row (`SELECT … FROM custody_head FOR UPDATE`), so brokers
//! sequence one batch at a time, and reads with it the tree's right edge
//! the last batch left there; brings this broker's rules' state up to the
//! locked head (other brokers' entries that change it, see `rules.rs`);
//! remembers the nonces of the signed append requests that sent the batch
//! (`custody_request_nonces`; a request whose nonce was already used is a
//! replay, and none of its events is judged); refuses event nonces already
//! in `custody_entries` or twice in the batch; admits
//! each event with [`Authority::check_verified`] at `received_at = max(now,
//! last received_at)`; builds each line exactly as the embedded writer does
//! (`Entry::to_line_with_event` around the event's canonical bytes), so the
//! entries are byte-identical to the embedded backend's; inserts the lines,
//! the new Merkle stored hashes and the rules' state they change; moves the
//! head with the new right edge (notifying `custody_head` of its new size,
//! for other brokers' feed followers); `NOTIFY custody_changes` if the
//! rules' state changed; and commits.
//! Only after the commit returns is any event of the batch acknowledged. The
//! commit is as durable as the server's `synchronous_commit` makes it (on:
//! the WAL is flushed locally; with a synchronous standby and `on` /
//! `remote_apply`, also on the standby before the commit returns).
//!
//! **Failure.** If any statement or the commit fails (the database is down,
//! a failover, a full disk), every event of the batch is answered
//! [`StorageError::Unavailable`] naming the cause — nothing of it was
//! committed, or, if the connection died during `COMMIT` itself, the caller
//! could not know, exactly as with a lost answer — the connection is dropped,
//! and the rules' state, which already folded in the batch, is rebuilt from
//! the database before anything is admitted again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use custody_ledger::actions;
use custody_ledger::authority::Authority;
use custody_ledger::denial::{Denial, DenialCode};
use custody_ledger::merkle::{Hash, HashReader};
use custody_ledger::store::Appended;
use custody_ledger::{entry_hash, Entry, EntryHash, Seq, SignedEvent, Timestamp, MAX_ENTRY_BYTES};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::nonces;
use super::rules::{self, millis, trust_text};
use super::{cause, Shared};
use crate::storage::{AppendFailure, RequestNonce, StorageError};

/// Most events one transaction sequences: large enough to amortize the
/// round trips and the commit over many appends, small enough to bound a
/// batch's memory and how long it holds the head lock.
pub const MAX_BATCH: usize = 1024;

pub(crate) type Reply = oneshot::Sender<Answer>;

/// Events that passed the signature check, with their canonical JSON, and
/// the nonce of the signed request that sent them when it is remembered in
/// the batch's transaction (then the request may carry no event: all of
/// them failed their signature check).
pub(crate) struct Request {
    pub events: Vec<(SignedEvent, Vec<u8>)>,
    pub nonce: Option<RequestNonce>,
    pub reply: Reply,
}

/// One result per event; `replayed`: the request's nonce was already used,
/// and none of its events was judged.
pub(crate) struct Answer {
    pub replayed: bool,
    pub results: Vec<Result<Appended, AppendFailure>>,
}

/// Stored hashes by index: the right edge of the tree (the roots of its
/// perfect subtrees, `tlog_tiles::sub_tree_index(0, size)`), which is all
/// that appending and computing the root read.
#[derive(Default)]
struct Frontier {
    size: Option<u64>,
    hashes: HashMap<u64, Hash>,
}

impl HashReader for Frontier {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                self.hashes
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl Frontier {
    /// The right edge as `custody_head.edge` holds it: the hashes of
    /// `sub_tree_index(0, size)`, in that order (call after [`Self::prune`]).
    fn edge_bytes(&self) -> Vec<u8> {
        let size = self.size.unwrap_or(0);
        tlog_tiles::sub_tree_index(0, size, vec![])
            .into_iter()
            .filter_map(|i| self.hashes.get(&i))
            .flat_map(|h| h.0)
            .collect()
    }

    /// Keeps only the right edge of the tree of `size`.
    fn prune(&mut self, size: u64) {
        let keep: HashSet<u64> = tlog_tiles::sub_tree_index(0, size, vec![])
            .into_iter()
            .collect();
        self.hashes.retain(|i, _| keep.contains(i));
        self.size = Some(size);
    }
}

/// Stored hashes read from a map of the ones at hand (a frontier, or those
/// fetched for one proof); any other index is not in the tree as far as the
/// caller knows.
pub(crate) struct MapReader<'a>(pub &'a HashMap<u64, Hash>);

impl HashReader for MapReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|i| {
                self.0
                    .get(i)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Appends leaf `n` (its hash `leaf`) to a tree whose right edge is in
/// `frontier`: returns the stored hashes to write from
/// `stored_hash_index(0, n)` on, and adds them to `frontier`.
pub(crate) fn push_leaf(
    frontier: &mut HashMap<u64, Hash>,
    n: u64,
    leaf: Hash,
) -> Result<Vec<(u64, Hash)>, String> {
    let new = tlog_tiles::stored_hashes_for_record_hash(n, leaf, &MapReader(frontier))
        .map_err(|e| format!("stored hashes for entry {n}: {e}"))?;
    let first = tlog_tiles::stored_hash_index(0, n);
    let out: Vec<(u64, Hash)> = new
        .into_iter()
        .enumerate()
        .map(|(i, h)| (first + i as u64, h))
        .collect();
    for (i, h) in &out {
        frontier.insert(*i, *h);
    }
    Ok(out)
}

pub(crate) struct Sequencer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Request>,
    client: Option<(Client, Statements)>,
    frontier: Frontier,
}

/// Moves the head and notifies its new size in one statement (no round
/// trip of its own under the lock); delivered at commit, the notification
/// wakes other brokers' feed followers.
/// The trust roots are written only when the batch changed them (`$5` not
/// NULL).
const MOVE_HEAD: &str = "WITH moved AS (UPDATE custody_head SET size = $1, prev = $2, root = $3, last_received_at = $4, trust = coalesce($5, trust), edge = $7 WHERE id = 1 RETURNING size)
     SELECT pg_notify($6, size::text) FROM moved";

/// The sequencer's statements, prepared once per connection (a statement
/// given as text is parsed in a round trip of its own first). A batch sends
/// them in two pipelined groups, so it costs two round trips: `BEGIN`, the
/// head lock and the reads admission needs; then the writes and `COMMIT`.
struct Statements {
    head: Statement,
    changes: Statement,
    frontier: Statement,
    nonces: Statement,
    request_nonces: Statement,
    entries: Statement,
    hashes: Statement,
    session: Statement,
    ended: Statement,
    revocation: Statement,
    move_head: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        let (head, changes, frontier, nonces, entries, hashes) = futures_util::try_join!(
            c.prepare(rules::HEAD_FOR_UPDATE),
            c.prepare(rules::STATE_CHANGES_FROM),
            c.prepare("SELECT idx, hash FROM custody_hashes WHERE idx = ANY($1)"),
            c.prepare("SELECT nonce FROM custody_entries WHERE nonce = ANY($1)"),
            c.prepare(
                "INSERT INTO custody_entries (seq, line, hash, nonce, received_at, payload, changes, oversight)
                 SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bigint[], $6::bytea[], $7::boolean[], $8::boolean[])"
            ),
            c.prepare(
                "INSERT INTO custody_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])"
            ),
        )?;
        let (request_nonces, session, ended, revocation, move_head, notify) = futures_util::try_join!(
            c.prepare(nonces::INSERT),
            c.prepare(
                "INSERT INTO custody_sessions (did, delegation, started_at) VALUES ($1, $2, $3)
                 ON CONFLICT (did) DO UPDATE SET delegation = EXCLUDED.delegation, started_at = EXCLUDED.started_at, ended_at = NULL"
            ),
            c.prepare(
                "UPDATE custody_sessions SET ended_at = $2 WHERE did = $1 AND ended_at IS NULL"
            ),
            c.prepare(
                "INSERT INTO custody_revocations (subject, jws, seq, effective) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (subject) DO UPDATE SET jws = EXCLUDED.jws, seq = EXCLUDED.seq, effective = EXCLUDED.effective"
            ),
            c.prepare(MOVE_HEAD),
            c.prepare("SELECT pg_notify('custody_changes', $1)"),
        )?;
        Ok(Self {
            head,
            changes,
            frontier,
            nonces,
            request_nonces,
            entries,
            hashes,
            session,
            ended,
            revocation,
            move_head,
            notify,
        })
    }
}

/// What an admitted event adds to the transaction.
struct Row {
    seq: i64,
    line: Vec<u8>,
    hash: Vec<u8>,
    nonce: Vec<u8>,
    received_at: i64,
    payload: Option<Vec<u8>>,
    changes: bool,
    /// Read by the oversight rebuild on start (`rules::restore_oversight`).
    oversight: bool,
}

/// The rules' state an admitted batch changes.
#[derive(Default)]
struct StateRows {
    /// (session DID, delegation JWS, started at)
    sessions: Vec<(String, String, i64)>,
    /// (session DID, ended at)
    ended: Vec<(String, i64)>,
    /// (subject, JWS, seq, effective)
    revocations: Vec<(String, String, i64, i64)>,
    trust: bool,
}

impl StateRows {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.ended.is_empty()
            && self.revocations.is_empty()
            && !self.trust
    }
}

type Outcome = Result<Appended, AppendFailure>;

impl Sequencer {
    pub fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Request>) -> Self {
        Self {
            shared,
            rx,
            client: None,
            frontier: Frontier::default(),
        }
    }

    pub async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut count = first.events.len();
            let mut batch = vec![first];
            while count < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => {
                        count += r.events.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&mut self, batch: Vec<Request>) {
        let mut events = Vec::new();
        let mut owners = Vec::new();
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (i, r) in batch.into_iter().enumerate() {
            replies.push((r.reply, r.events.len()));
            owners.extend(std::iter::repeat_n(i, r.events.len()));
            events.extend(r.events);
            requests.push(r.nonce);
        }
        // The fold lock keeps the catch-up task out while this batch is
        // admitted and committed.
        let fold = self.shared.fold.clone();
        let _folding = fold.lock().await;
        let outcome = self.try_commit(events, &owners, &requests).await;
        let (mut outcomes, replayed): (Box<dyn Iterator<Item = Outcome>>, Vec<bool>) = match outcome
        {
            Ok((results, replayed)) => (Box::new(results.into_iter()), replayed),
            Err(e) => {
                // Nothing of the batch may be taken as appended: drop the
                // connection (it may be broken) and rebuild the rules'
                // state, which folded the batch in, before the next one.
                self.client = None;
                self.frontier = Frontier::default();
                self.shared.local().dirty = true;
                tracing::warn!("ledger database: appending a batch failed: {e}");
                (
                    Box::new(std::iter::repeat_with(move || {
                        Err(AppendFailure::Storage(StorageError::Unavailable(
                            e.to_string(),
                        )))
                    })),
                    vec![false; replies.len()],
                )
            }
        };
        for ((reply, n), replayed) in replies.into_iter().zip(replayed) {
            let results: Vec<_> = outcomes.by_ref().take(n).collect();
            let _ = reply.send(Answer { replayed, results });
        }
    }

    async fn client(&mut self) -> Result<&mut (Client, Statements), StorageError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let c = self.shared.connect().await?;
            let st = Statements::prepare(&c).await.map_err(|e| {
                StorageError::Unavailable(format!("ledger database: {}", cause(&e)))
            })?;
            self.client = Some((c, st));
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Sequences `events` (event `i` sent by request `owners[i]`) and
    /// remembers the `requests`' nonces; returns one outcome per event and,
    /// per request, whether it was a replay.
    async fn try_commit(
        &mut self,
        events: Vec<(SignedEvent, Vec<u8>)>,
        owners: &[usize],
        requests: &[Option<RequestNonce>],
    ) -> Result<(Vec<Outcome>, Vec<bool>), StorageError> {
        let unavailable = |e: tokio_postgres::Error| {
            StorageError::Unavailable(format!("ledger database: {}", cause(&e)))
        };
        let loaded = |e: rules::LoadError| match e {
            rules::LoadError::Db(m) => StorageError::Unavailable(format!("ledger database: {m}")),
            e => StorageError::Failed(e.to_string()),
        };
        let shared = self.shared.clone();
        let mut frontier = std::mem::take(&mut self.frontier);
        let (client, st) = self.client().await?;
        let (client, st): (&Client, &Statements) = (client, st);

        // The first round trip: BEGIN, the head lock, and what admission
        // needs, executed in this order once the lock is held — the entries
        // changing the rules' state that other brokers appended since this
        // broker's last batch (none if it was the last to append), which
        // of the batch's nonces are already in the ledger (the unique index
        // is the nonce set), and the requests' nonces, inserted unless
        // already used (by another broker's request too: the insert waits
        // for a concurrent one of the same nonce to commit, then skips it).
        // A broker whose state must be rebuilt reads the tables instead.
        let (dirty, next) = {
            let l = shared.local();
            (l.dirty, l.authority.next_seq().0)
        };
        let event_nonces: Vec<Vec<u8>> = events
            .iter()
            .map(|(e, _)| e.event.nonce.0.to_vec())
            .collect();
        let from = next as i64;
        let asked = nonces::Distinct::of(requests.iter().flatten());
        let (from_params, nonce_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&from], [&event_nonces]);
        let request_params = asked.params();
        let (_, head_row, changes, used, kept) = futures_util::try_join!(
            client.batch_execute("BEGIN"),
            client.query_opt(&st.head, &[]),
            async {
                match dirty {
                    false => client.query(&st.changes, &from_params).await.map(Some),
                    true => Ok(None),
                }
            },
            client.query(&st.nonces, &nonce_params),
            async {
                match asked.is_empty() {
                    false => client.query(&st.request_nonces, &request_params).await,
                    true => Ok(Vec::new()),
                }
            },
        )
        .map_err(unavailable)?;
        let Some(head_row) = head_row else {
            return Err(StorageError::Failed(
                "the ledger database has no head row".into(),
            ));
        };
        let head = rules::head_of(&head_row).map_err(loaded)?;

        // This broker's rules' state, as of the locked head.
        let rebuild = dirty || next > head.size;
        if rebuild {
            if next > head.size && !dirty {
                tracing::error!(
                    database = head.size,
                    broker = next,
                    "ledger database: the database holds fewer entries than this broker saw acknowledged (restored from an older backup, or a failover to a standby that was not synchronous?); rebuilding from the database"
                );
            }
            let a = rules::load_authority(client, &head).await.map_err(loaded)?;
            let mut l = shared.local();
            l.authority = a;
            l.dirty = false;
        } else if let Some(rows) = changes {
            let changes = rules::entries_of(&rows).map_err(loaded)?;
            let mut l = shared.local();
            rules::fold(&mut l.authority, &changes, next, head.size);
        }
        // The tree's right edge, if another broker moved it: from the head
        // row, or (a head written before the row kept it) from the stored
        // hashes.
        if frontier.size != Some(head.size) {
            frontier = match head_row.get::<_, Option<&[u8]>>(6) {
                Some(edge) => edge_of(head.size, edge).map_err(loaded)?,
                None => {
                    let edge: Vec<i64> = tlog_tiles::sub_tree_index(0, head.size, vec![])
                        .into_iter()
                        .map(|i| i as i64)
                        .collect();
                    let rows = client
                        .query(&st.frontier, &[&edge])
                        .await
                        .map_err(unavailable)?;
                    frontier_of(head.size, &edge, &rows).map_err(loaded)?
                }
            };
        }
        let used: HashSet<Vec<u8>> = used.into_iter().map(|r| r.get::<_, Vec<u8>>(0)).collect();
        // A request whose nonce this transaction did not insert is a replay
        // (of an earlier request, or of one earlier in this batch): none of
        // its events is judged.
        let first = nonces::first_uses(kept, requests.iter().map(|r| r.map(|n| n.nonce)));
        let remembered = first.iter().any(|f| *f);
        let replayed: Vec<bool> = requests
            .iter()
            .zip(&first)
            .map(|(r, first)| r.is_some() && !first)
            .collect();
        // Admission, in sequence order, with the state as of the head.
        let mut outcomes = Vec::with_capacity(events.len());
        let mut rows: Vec<Row> = Vec::new();
        let mut hashes: Vec<(u64, Hash)> = Vec::new();
        let mut state = StateRows::default();
        let (mut next, mut prev, mut last) = (head.size, head.prev, head.last_received_at);
        {
            let mut l = shared.local();
            let mut fresh: HashSet<[u8; 16]> = HashSet::new();
            for ((ev, canonical), owner) in events.into_iter().zip(owners) {
                if replayed[*owner] {
                    outcomes.push(Err(AppendFailure::ReplayedRequest));
                    continue;
                }
                let nonce = ev.event.nonce;
                if used.contains(nonce.0.as_slice()) || fresh.contains(&nonce.0) {
                    outcomes.push(Err(refused(
                        DenialCode::ReplayedNonce,
                        format!("nonce {nonce} was already used"),
                    )));
                    continue;
                }
                let now = Timestamp::now();
                let at = match last {
                    Some(t) if t > now => t,
                    _ => now,
                };
                let admitted = match l.authority.check_verified(&ev.event, at) {
                    Ok(a) => a,
                    Err(d) => {
                        outcomes.push(Err(AppendFailure::Refused(d)));
                        continue;
                    }
                };
                let entry = Entry::new(Seq(next), prev, at, ev);
                let line = match entry.to_line_with_event(&canonical) {
                    Ok(l) if l.len() <= MAX_ENTRY_BYTES => l,
                    Ok(l) => {
                        outcomes.push(Err(refused(
                            DenialCode::TooLarge,
                            format!(
                                "entry would be {} bytes; the limit is {MAX_ENTRY_BYTES}",
                                l.len()
                            ),
                        )));
                        continue;
                    }
                    Err(e) => {
                        outcomes.push(Err(refused(DenialCode::Malformed, e.to_string())));
                        continue;
                    }
                };
                let hash = entry_hash(&line);
                let stored = push_leaf(&mut frontier.hashes, next, Hash(hash.0))
                    .map_err(StorageError::Failed)?;
                hashes.extend(stored);
                let action = entry.event.action.as_str().to_string();
                let changes = actions::changes_state(&action);
                fresh.insert(nonce.0);
                let mut oversight = admitted.restores_oversight();
                // The hook's call decided with its check, the allow just
                // before it in this transaction: neither is read on start.
                if rules::decided_with_call(next, admitted.used_decision()) {
                    if let Some(allow) = rows.last_mut().filter(|r| r.seq as u64 + 1 == next) {
                        allow.oversight = false;
                        oversight = false;
                    }
                }
                l.authority.apply(&entry, admitted);
                if changes {
                    collect_state(&l.authority, &entry, &action, &mut state);
                }
                rows.push(Row {
                    seq: next as i64,
                    line,
                    hash: hash.0.to_vec(),
                    nonce: nonce.0.to_vec(),
                    received_at: millis(at),
                    payload: entry.event.payload.as_ref().map(|p| p.digest.0.to_vec()),
                    changes,
                    oversight,
                });
                outcomes.push(Ok(Appended {
                    seq: entry.seq,
                    hash,
                    entry,
                }));
                prev = hash;
                last = Some(at);
                next += 1;
            }
        }
        if rows.is_empty() {
            // Every event was refused: nothing to write but the requests'
            // nonces, if any were new (otherwise the rollback only releases
            // the head lock).
            let end = if remembered { "COMMIT" } else { "ROLLBACK" };
            client.batch_execute(end).await.map_err(unavailable)?;
            self.frontier = frontier;
            return Ok((outcomes, replayed));
        }
        let root = tlog_tiles::tree_hash(next, &frontier)
            .map_err(|e| StorageError::Failed(format!("the root at {next}: {e}")))?;

        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let lines: Vec<&[u8]> = rows.iter().map(|r| r.line.as_slice()).collect();
        let entry_hashes: Vec<&[u8]> = rows.iter().map(|r| r.hash.as_slice()).collect();
        let row_nonces: Vec<&[u8]> = rows.iter().map(|r| r.nonce.as_slice()).collect();
        let times: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
        let payloads: Vec<Option<&[u8]>> = rows.iter().map(|r| r.payload.as_deref()).collect();
        let changes: Vec<bool> = rows.iter().map(|r| r.changes).collect();
        let oversight: Vec<bool> = rows.iter().map(|r| r.oversight).collect();
        let idx: Vec<i64> = hashes.iter().map(|(i, _)| *i as i64).collect();
        let hs: Vec<&[u8]> = hashes.iter().map(|(_, h)| h.0.as_slice()).collect();
        let trust = state
            .trust
            .then(|| trust_text(shared.local().authority.trust()));
        let last_ms = last.map(millis);
        let size = next as i64;
        let notified = next.to_string();
        let (prev_bytes, root_bytes): (&[u8], &[u8]) = (&prev.0, &root.0);
        type P<'p> = &'p (dyn ToSql + Sync);
        type Params<'p> = Vec<P<'p>>;
        let mut writes: Vec<(&Statement, Params<'_>)> = vec![
            (
                &st.entries,
                vec![
                    &seqs as P,
                    &lines,
                    &entry_hashes,
                    &row_nonces,
                    &times,
                    &payloads,
                    &changes,
                    &oversight,
                ],
            ),
            (&st.hashes, vec![&idx as P, &hs]),
        ];
        for (did, jws, at) in &state.sessions {
            writes.push((&st.session, vec![did as P, jws, at]));
        }
        for (did, at) in &state.ended {
            writes.push((&st.ended, vec![did as P, at]));
        }
        for (subject, jws, seq, effective) in &state.revocations {
            writes.push((&st.revocation, vec![subject as P, jws, seq, effective]));
        }
        let head_channel = super::HEAD_CHANNEL;
        frontier.prune(next);
        let edge = frontier.edge_bytes();
        writes.push((
            &st.move_head,
            vec![
                &size as P,
                &prev_bytes,
                &root_bytes,
                &last_ms,
                &trust,
                &head_channel,
                &edge,
            ],
        ));
        if !state.is_empty() {
            // Other brokers' cached decisions catch up on this (and, if the
            // notification is lost, on their periodic check).
            writes.push((&st.notify, vec![&notified as P]));
        }
        // The second round trip: the writes and COMMIT, sent at once and
        // executed in order. If a write fails, PostgreSQL ends the
        // transaction without committing it (COMMIT of an aborted
        // transaction is a rollback) and the error is returned here.
        futures_util::future::try_join(
            futures_util::future::try_join_all(
                writes
                    .iter()
                    .map(|(statement, params)| client.execute(*statement, params)),
            ),
            client.batch_execute("COMMIT"),
        )
        .await
        .map_err(unavailable)?;
        self.frontier = frontier;
        shared.acknowledged(next);
        Ok((outcomes, replayed))
    }
}

fn refused(code: DenialCode, message: String) -> AppendFailure {
    AppendFailure::Refused(Denial::new(code, message))
}

/// The rows an admitted, state-changing entry adds, read from the state it
/// was just folded into (so what is written is what the rules hold).
fn collect_state(a: &Authority, entry: &Entry, action: &str, state: &mut StateRows) {
    let actor = &entry.event.actor;
    match action {
        actions::GENESIS | actions::TRUST_UPDATE => state.trust = true,
        actions::SESSION_START => {
            if let (Some(g), Some(jws)) = (a.session(actor), entry.event.detail_str("delegation")) {
                state
                    .sessions
                    .push((actor.to_string(), jws.to_string(), g.started_at.0 as i64));
            }
        }
        actions::SESSION_END => state.ended.push((actor.to_string(), entry.seq.0 as i64)),
        actions::IDENTITY_REVOKE => {
            // Only if it is now the revocation that holds for its subject
            // (the earliest effective one wins).
            if let Some((subject, r)) = a.revocations().find(|(_, r)| r.seq == entry.seq) {
                state.revocations.push((
                    subject.to_string(),
                    r.jws.clone(),
                    r.seq.0 as i64,
                    millis(r.effective),
                ));
            }
        }
        _ => {}
    }
}

/// The right edge of the tree of `size` from `custody_head.edge`.
fn edge_of(size: u64, edge: &[u8]) -> Result<Frontier, rules::LoadError> {
    let want = tlog_tiles::sub_tree_index(0, size, vec![]);
    if edge.len() != want.len() * 32 {
        return Err(rules::LoadError::Corrupt(format!(
            "custody_head.edge is {} bytes; the tree of size {size} has {} edge hashes",
            edge.len(),
            want.len()
        )));
    }
    let hashes = want
        .into_iter()
        .zip(edge.chunks_exact(32))
        .map(|(i, h)| {
            let mut b = [0u8; 32];
            b.copy_from_slice(h);
            (i, Hash(b))
        })
        .collect();
    Ok(Frontier {
        size: Some(size),
        hashes,
    })
}

/// The right edge of the tree of `size` (stored hashes `want`), from the
/// rows of `custody_hashes` read for it.
fn frontier_of(
    size: u64,
    want: &[i64],
    rows: &[tokio_postgres::Row],
) -> Result<Frontier, rules::LoadError> {
    let mut hashes = HashMap::new();
    for row in rows {
        let h: &[u8] = row.get(1);
        let h: [u8; 32] = h
            .try_into()
            .map_err(|_| rules::LoadError::Corrupt("a stored hash is not 32 bytes".into()))?;
        hashes.insert(row.get::<_, i64>(0) as u64, Hash(h));
    }
    if hashes.len() != want.len() {
        return Err(rules::LoadError::Corrupt(format!(
            "custody_hashes lacks the right edge of the tree of size {size}"
        )));
    }
    Ok(Frontier {
        size: Some(size),
        hashes,
    })
}

/// The entry hash of nothing: `prev` of entry 0.
pub(crate) const NO_PREV: EntryHash = EntryHash::ZERO;

#[cfg(test)]
mod tests {
    use super::*;

    /// The head row's edge is read back as the frontier it was written
    /// from, at sizes with one and with many edge hashes; a wrong length is
    /// refused, not misread.
    #[test]
    fn the_edge_in_the_head_row_round_trips() {
        let mut frontier = Frontier::default();
        for n in 0..300u64 {
            let mut leaf = [0u8; 32];
            leaf[..8].copy_from_slice(&n.to_be_bytes());
            push_leaf(&mut frontier.hashes, n, Hash(leaf)).unwrap();
            frontier.prune(n + 1);
            let edge = frontier.edge_bytes();
            let back = edge_of(n + 1, &edge).unwrap();
            assert_eq!(back.hashes, frontier.hashes, "size {}", n + 1);
            assert_eq!(
                tlog_tiles::tree_hash(n + 1, &back).unwrap(),
                tlog_tiles::tree_hash(n + 1, &frontier).unwrap()
            );
            if (n + 2).count_ones() != (n + 1).count_ones() {
                assert!(edge_of(n + 2, &edge).is_err(), "size {}", n + 2);
            }
            assert!(edge_of(n + 1, &edge[..edge.len() - 1]).is_err());
        }
    }
}
