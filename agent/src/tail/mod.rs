//! `custody tail`: the ledger's entry feed (`GET /v1/entries`), checked and
//! forwarded to a SIEM as OCSF events (or as the canonical entry lines).
//!
//! Delivery is at-least-once, in `seq` order, with (`seq`, entry hash) as
//! the idempotency key:
//!
//! 1. a page is fetched after the last delivered `seq` (long poll in
//!    `--follow` mode);
//! 2. it is checked before anything of it is delivered ([`Follower`]): the
//!    ledger is the one followed so far (or pinned), the `seq`s continue
//!    where the last page ended, each line's entry hash is what the broker
//!    says and each `prev` is the hash of the entry before; when the range
//!    of entries received from seq 0 reaches the size of a checkpoint the
//!    page carries, its Merkle root must be the one the ledger key signed;
//! 3. every sink takes the whole page, each retried with backoff until it
//!    does ([`sinks`]): a failing sink is never skipped; one that refuses for
//!    good (a bad token, a rejected record) stops the tail, its state not
//!    advanced;
//! 4. only then is the state file written ([`TailState::save`]: temporary
//!    file, fsync, rename, fsync of the directory), so a restart resumes
//!    after the last page every sink took. A kill between 3 and 4 delivers
//!    that page again: the receiver drops what it holds by key.

pub mod sinks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_identity::{Did, KeyPair};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{
    hash_from_hex, hash_to_hex, verify_consistency, CompactRange, Hash, TreeHead,
};
use custody_ledger::{entry_hash, Entry};
use custody_wire::api::{FeedPage, FeedQuery, MAX_FEED_PAGE, MAX_FEED_WAIT_SECS};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use crate::BoxFuture;
use sinks::{Event, Sink};

/// What `custody tail` writes for each entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One OCSF 1.1.0 event per entry (docs/SIEM.md).
    Ocsf,
    /// The canonical entry line itself, byte for byte as in `entries.jsonl`.
    Jsonl,
}

/// Why tailing stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The broker refused the feed for good (not an auditor, revoked, …).
    #[error("the broker refused the feed: {0}")]
    Refused(ClientError),
    /// What the broker sent does not hold together: nothing of it was
    /// delivered.
    #[error("the feed does not check out: {0}")]
    Inconsistent(String),
    #[error("sink {sink}: {message}")]
    Sink { sink: String, message: String },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// Backoff between attempts: from [`FIRST_RETRY`] doubling up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// The state file: where delivery stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TailState {
    pub version: u64,
    /// The ledger followed: a state never resumes against another one.
    pub ledger: String,
    /// The next `seq` to deliver (every one below it was taken by every sink).
    pub next: u64,
    /// The entry hash of `next - 1`, which entry `next` must name as `prev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// The Merkle range of entries `0..next`, when the tail started at 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<SavedRange>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SavedRange {
    pub size: u64,
    pub peaks: Vec<String>,
}

pub const STATE_VERSION: u64 = 1;
/// A state file is a few hundred bytes; anything larger is not one.
const MAX_STATE_BYTES: u64 = 64 * 1024;

impl TailState {
    /// The state at `path`, or `None` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<Self>, TailError> {
        use std::io::Read;
        let err = |message: String| TailError::State {
            path: path.to_path_buf(),
            message,
        };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut buf = Vec::new();
        f.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        if buf.len() as u64 > MAX_STATE_BYTES {
            return Err(err("too large to be a state file".into()));
        }
        let s: TailState = serde_json::from_slice(&buf).map_err(|e| err(e.to_string()))?;
        if s.version != STATE_VERSION {
            return Err(err(format!(
                "version {} (this build: {STATE_VERSION})",
                s.version
            )));
        }
        Ok(Some(s))
    }

    /// Writes the state so that a crash at any point leaves either the old
    /// or the new one: a temporary file beside it, synced, renamed over it,
    /// and the directory synced so the rename itself survives a power loss.
    pub fn save(&self, path: &Path) -> Result<(), TailError> {
        use std::io::Write;
        let err = |message: String| TailError::State {
            path: path.to_path_buf(),
            message,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| err("not a file name".into()))?;
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        let bytes = serde_json::to_vec(self).map_err(|e| err(e.to_string()))?;
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        f.write_all(&bytes)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        custody_ledger::fsutil::sync_dir(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))
    }
}

/// The consumer's side of the feed's checks, across pages and restarts.
#[derive(Debug)]
pub struct Follower {
    ledger: Option<Did>,
    pinned: bool,
    next: u64,
    prev: Option<String>,
    range: Option<CompactRange>,
    /// A checkpoint verified by the ledger key whose size the range has not
    /// reached yet.
    pending: Option<TreeHead>,
    /// Checkpoint roots the received entries were checked against.
    pub checkpoints_checked: u64,
}

/// A checked page: what to deliver and the state after it.
pub struct Checked {
    pub entries: Vec<(u64, String, Vec<u8>)>,
    pub size: u64,
}

impl Follower {
    /// Starts at `from` (a range is kept only when starting at entry 0).
    pub fn new(pinned: Option<Did>, from: u64) -> Self {
        Self {
            pinned: pinned.is_some(),
            ledger: pinned,
            next: from,
            prev: None,
            range: (from == 0).then(CompactRange::new),
            pending: None,
            checkpoints_checked: 0,
        }
    }

    /// Resumes from a saved state.
    pub fn resume(pinned: Option<Did>, s: &TailState) -> Result<Self, TailError> {
        let bad = |m: String| TailError::Inconsistent(format!("the state file: {m}"));
        let ledger = Did::parse(&s.ledger).map_err(|e| bad(e.to_string()))?;
        if let Some(p) = &pinned {
            if p != &ledger {
                return Err(bad(format!(
                    "it follows ledger {ledger}, not the pinned {p}"
                )));
            }
        }
        let range = match &s.range {
            None => None,
            Some(r) => {
                let peaks = r
                    .peaks
                    .iter()
                    .map(|h| hash_from_hex(h))
                    .collect::<Result<Vec<Hash>, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                let range = CompactRange::from_parts(r.size, peaks)
                    .ok_or_else(|| bad("the Merkle range does not fit its size".into()))?;
                if range.size() != s.next {
                    return Err(bad("the Merkle range does not end at `next`".into()));
                }
                Some(range)
            }
        };
        Ok(Self {
            pinned: pinned.is_some(),
            ledger: Some(ledger),
            next: s.next,
            prev: s.prev.clone(),
            range,
            pending: None,
            checkpoints_checked: 0,
        })
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn ledger(&self) -> Option<&Did> {
        self.ledger.as_ref()
    }

    /// The state to save once everything before [`next`](Self::next) is delivered.
    pub fn state(&self) -> Option<TailState> {
        Some(TailState {
            version: STATE_VERSION,
            ledger: self.ledger.as_ref()?.to_string(),
            next: self.next,
            prev: self.prev.clone(),
            range: self.range.as_ref().map(|r| SavedRange {
                size: r.size(),
                peaks: r.peaks().iter().map(hash_to_hex).collect(),
            }),
        })
    }

    /// Checks a page; on success the follower stands after it.
    pub fn check(&mut self, page: FeedPage) -> Result<Checked, TailError> {
        let bad = |m: String| TailError::Inconsistent(m);
        let ledger = Did::parse(&page.ledger).map_err(|e| bad(format!("ledger: {e}")))?;
        match &self.ledger {
            Some(l) if l != &ledger => {
                return Err(bad(format!(
                    "the broker serves ledger {ledger}, but this tail follows {l}{}",
                    if self.pinned {
                        " (pinned)"
                    } else {
                        " (its state file)"
                    }
                )))
            }
            Some(_) => {}
            None => self.ledger = Some(ledger.clone()),
        }
        if page.size < self.next {
            return Err(bad(format!(
                "the ledger has {} entries, but entries up to {} were delivered: it was rolled back or replaced",
                page.size,
                self.next.saturating_sub(1)
            )));
        }
        if let Some(note) = &page.checkpoint {
            let cp = SignedCheckpoint::parse(note.as_bytes())
                .map_err(|e| bad(format!("checkpoint: {e}")))?;
            if cp.origin() != &Origin::for_ledger(&ledger) {
                return Err(bad("the checkpoint is not this ledger's".into()));
            }
            cp.verify(&ledger.public_key())
                .map_err(|e| bad(format!("checkpoint signature: {e}")))?;
            let head = cp.head();
            if head.size > page.size {
                return Err(bad(format!(
                    "a checkpoint of size {} from a ledger of {} entries",
                    head.size, page.size
                )));
            }
            if let Some(r) = &self.range {
                // The range is the tree of every entry before the page.
                if head.size == r.size() {
                    self.check_root(r.root(), head)?;
                } else if head.size < r.size() {
                    let proof = page
                        .consistency
                        .as_deref()
                        .ok_or_else(|| {
                            bad("a checkpoint behind the page without its consistency proof".into())
                        })?
                        .iter()
                        .map(|h| hash_from_hex(h))
                        .collect::<Result<Vec<Hash>, _>>()
                        .map_err(|e| bad(format!("consistency proof: {e}")))?;
                    verify_consistency(&proof, r.size(), r.root(), head.size, head.root).map_err(
                        |_| {
                            bad(format!(
                                "the entries received are not consistent with the checkpoint the ledger key signed at size {}",
                                head.size
                            ))
                        },
                    )?;
                    self.checkpoints_checked += 1;
                } else if self.pending.is_none_or(|p| p.size < head.size) {
                    self.pending = Some(head);
                }
            }
        }
        // Checked on copies: a page that fails leaves the follower as it was.
        let (mut next, mut prev, mut range, mut pending) = (
            self.next,
            self.prev.clone(),
            self.range.clone(),
            self.pending,
        );
        let mut out = Vec::with_capacity(page.entries.len());
        for fe in page.entries {
            if fe.seq != next {
                return Err(bad(format!("expected entry {next}, got {}", fe.seq)));
            }
            if fe.seq >= page.size {
                return Err(bad(format!(
                    "entry {} beyond the size {}",
                    fe.seq, page.size
                )));
            }
            let line = fe.line.into_bytes();
            let hash = entry_hash(&line);
            if hash.to_hex() != fe.hash {
                return Err(bad(format!(
                    "entry {}: the hash sent is not its hash",
                    fe.seq
                )));
            }
            let entry =
                Entry::parse_line(&line).map_err(|e| bad(format!("entry {}: {e}", fe.seq)))?;
            if entry.seq.0 != fe.seq {
                return Err(bad(format!("entry {} holds seq {}", fe.seq, entry.seq)));
            }
            match &prev {
                Some(p) if &entry.prev.to_hex() != p => {
                    return Err(bad(format!(
                        "entry {}: prev is not the hash of entry {}",
                        fe.seq,
                        fe.seq - 1
                    )))
                }
                None if fe.seq == 0 && entry.prev.0 != [0u8; 32] => {
                    return Err(bad("entry 0 has a prev".into()))
                }
                _ => {}
            }
            if let Some(r) = &mut range {
                r.push(Hash(hash.0));
                if let Some(head) = pending.filter(|h| h.size == r.size()) {
                    self.check_root(r.root(), head)?;
                    pending = None;
                }
            }
            next = fe.seq + 1;
            prev = Some(hash.to_hex());
            out.push((fe.seq, hash.to_hex(), line));
        }
        (self.next, self.prev, self.range, self.pending) = (next, prev, range, pending);
        Ok(Checked {
            entries: out,
            size: page.size,
        })
    }

    fn check_root(&mut self, root: Hash, head: TreeHead) -> Result<(), TailError> {
        if root != head.root {
            return Err(TailError::Inconsistent(format!(
                "the entries received do not hash to the root the ledger key signed at size {}",
                head.size
            )));
        }
        self.checkpoints_checked += 1;
        Ok(())
    }
}

/// What `custody tail` was asked to do.
pub struct TailOptions {
    pub key: KeyPair,
    pub follow: bool,
    pub format: Format,
    /// First seq to deliver when there is no state (inclusive).
    pub since: Option<u64>,
    pub state: Option<PathBuf>,
    pub ledger_key: Option<Did>,
    /// Entries per page asked for (at most the broker's page size).
    pub page: usize,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct TailSummary {
    pub delivered: u64,
    pub next: u64,
    pub checkpoints_checked: u64,
}

/// Follows the feed and delivers it to `sinks` until caught up (or, with
/// `follow`, until stopped).
pub fn run<'a>(
    client: &'a Client,
    opts: &'a TailOptions,
    sinks: &'a mut [Sink],
) -> BoxFuture<'a, Result<TailSummary, TailError>> {
    Box::pin(run_body(client, opts, sinks))
}

/// [`run`]'s body.
async fn run_body(
    client: &Client,
    opts: &TailOptions,
    sinks: &mut [Sink],
) -> Result<TailSummary, TailError> {
    let saved = match &opts.state {
        Some(p) => TailState::load(p)?,
        None => None,
    };
    let mut f = match &saved {
        Some(s) => Follower::resume(opts.ledger_key.clone(), s)?,
        None => Follower::new(opts.ledger_key.clone(), opts.since.unwrap_or(0)),
    };
    let mut summary = TailSummary::default();
    let mut backoff = FIRST_RETRY;
    loop {
        let from = f.next();
        let q = FeedQuery {
            after: from.checked_sub(1),
            limit: Some(opts.page.clamp(1, MAX_FEED_PAGE)),
            wait: opts.follow.then_some(MAX_FEED_WAIT_SECS),
        };
        let page = match client.feed(&opts.key, &q).await {
            Ok(p) => {
                backoff = FIRST_RETRY;
                p
            }
            Err(e) if retryable(&e) => {
                eprintln!("custody tail: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY);
                continue;
            }
            Err(e) => return Err(TailError::Refused(e)),
        };
        let checked = f.check(page)?;
        if !checked.entries.is_empty() {
            let ledger = f
                .ledger()
                .cloned()
                .ok_or_else(|| TailError::Inconsistent("a page without a ledger".into()))?;
            let events = render(&checked, &ledger, opts.format)?;
            for sink in sinks.iter_mut() {
                sinks::deliver(sink, &events).await?;
            }
            summary.delivered += events.len() as u64;
            if let (Some(path), Some(state)) = (&opts.state, f.state()) {
                state.save(path)?;
            }
        }
        summary.next = f.next();
        summary.checkpoints_checked = f.checkpoints_checked;
        if !opts.follow && f.next() >= checked.size {
            return Ok(summary);
        }
    }
}

/// Transport failures, timeouts, overload and server errors are worth
/// retrying; a refusal (401, 403, 400, 404) is not.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => *status == 408 || *status == 429 || *status >= 500,
        ClientError::Decode(_) => false,
    }
}

/// The page's entries as events. The tree size each event names is the
/// smallest tree holding its entry (`seq + 1`), not the page's: a page
/// redelivered after a restart is read at another size, and the same key
/// must always carry the same event. Any later tree proves it as well.
fn render(c: &Checked, ledger: &Did, format: Format) -> Result<Vec<Event>, TailError> {
    c.entries
        .iter()
        .map(|(seq, hash, line)| {
            let entry = Entry::parse_line(line)
                .map_err(|e| TailError::Inconsistent(format!("entry {seq}: {e}")))?;
            let json = match format {
                Format::Jsonl => line.clone(),
                Format::Ocsf => {
                    let v = custody_siem::to_ocsf(line, ledger, seq + 1)
                        .map_err(|e| TailError::Inconsistent(format!("entry {seq}: {e}")))?;
                    serde_json::to_vec(&v)
                        .map_err(|e| TailError::Inconsistent(format!("entry {seq}: {e}")))?
                }
            };
            Ok(Event {
                seq: *seq,
                hash: hash.clone(),
                ledger: ledger.to_string(),
                tree_size: seq + 1,
                received_ms: i64::try_from(entry.received_at.unix_millis()).unwrap_or(i64::MAX),
                failure: matches!(
                    entry.event.action.as_str(),
                    "request.denied" | "identity.revoke"
                ),
                format,
                json,
            })
        })
        .collect()
}
