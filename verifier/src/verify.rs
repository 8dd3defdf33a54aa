//! Streaming verification of an export bundle.
//!
//! One pass over `entries.jsonl` checks, per entry: canonical encoding, `seq`
//! contiguity, the `prev` chain, the actor's signature, authorization (the same
//! [`Authority`] rules the broker applies before appending), monotonic receive
//! times; a compact Merkle range is extended with each leaf and, whenever the
//! stream reaches a checkpoint's tree size, the root is compared with the signed
//! checkpoint. Memory is bounded by the authorization state (sessions,
//! revocations, nonces) and a logarithmic Merkle range, never by the bundle size.
//!
//! What cannot be read (a line that is not a JSON object, an unsupported
//! version, a truncated file) sets [`Verification::unreadable`], exit 2; a
//! readable line that breaks a rule fails the check that owns the rule, exit
//! 1, and the other checks go on (FORMAT.md §9, [`LineError::is_unreadable`]).

use std::path::{Path, PathBuf};

use custody_identity::Did;
use custody_ledger::actions::Role;
use custody_ledger::authority::{Authority, Denial, DenialCode};
use custody_ledger::bundle::{self, Bundle, CredentialRecord, DidRecord, PayloadRecord};
use custody_ledger::canonical::{decode_line, Decoded, LineError};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange};
use custody_ledger::{actions, entry_hash, Entry, EntryHash, Seq, Timestamp};

use crate::report::{Check, Stats, Verification};

/// What the caller pins.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The ledger DID the auditor expects. Without it the genesis entry's key is
    /// used and its fingerprint printed.
    pub ledger_key: Option<Did>,
    /// Witnesses that must have cosigned a checkpoint of this ledger
    /// (`--witness`): anchors against a rewritten ledger.
    pub witnesses: Vec<custody_ledger::witness::WitnessKey>,
}

/// Names of the checks, in the order they are reported.
pub mod checks {
    pub const MANIFEST: &str = "manifest";
    pub const ENCODING: &str = "encoding";
    pub const SEQUENCE: &str = "sequence";
    pub const CHAIN: &str = "chain";
    pub const SIGNATURES: &str = "signatures";
    pub const AUTHORIZATION: &str = "authorization";
    pub const RECEIVE_TIMES: &str = "receive_times";
    pub const MERKLE: &str = "merkle";
    pub const CHECKPOINTS: &str = "checkpoints";
    pub const PAYLOADS: &str = "payloads";
    pub const CREDENTIALS: &str = "credentials";
}

struct Checks {
    manifest: Check,
    encoding: Check,
    sequence: Check,
    chain: Check,
    signatures: Check,
    authorization: Check,
    receive_times: Check,
    merkle: Check,
    checkpoints: Check,
    payloads: Check,
    credentials: Check,
}

impl Checks {
    fn new() -> Self {
        use checks::*;
        Self {
            manifest: Check::new(MANIFEST, "manifest format, file sizes and SHA-256 digests"),
            encoding: Check::new(ENCODING, "every line is a canonical (RFC 8785) entry"),
            sequence: Check::new(SEQUENCE, "seq numbers are 0, 1, 2, … without gaps"),
            chain: Check::new(CHAIN, "each prev is the hash of the entry before"),
            signatures: Check::new(SIGNATURES, "every event signature verifies (verify_strict)"),
            authorization: Check::new(
                AUTHORIZATION,
                "every actor was delegated, in scope and context, unexpired, unrevoked",
            ),
            receive_times: Check::new(RECEIVE_TIMES, "receive times never go backwards"),
            merkle: Check::new(
                MERKLE,
                "RFC 6962 root over all entries matches the manifest",
            ),
            checkpoints: Check::new(
                CHECKPOINTS,
                "checkpoints signed by the ledger key, roots match, latest covers all entries",
            ),
            payloads: Check::new(PAYLOADS, "payload bodies match their salted digests"),
            credentials: Check::new(
                CREDENTIALS,
                "credentials and DID documents match the ledger",
            ),
        }
    }

    fn into_vec(self) -> Vec<Check> {
        vec![
            self.manifest,
            self.encoding,
            self.sequence,
            self.chain,
            self.signatures,
            self.authorization,
            self.receive_times,
            self.merkle,
            self.checkpoints,
            self.payloads,
            self.credentials,
        ]
    }
}

/// Reasons the verifier cannot even start (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("{}: entries.jsonl has no entries", .0.display())]
    NoEntries(PathBuf),
}

/// Verifies the bundle at `dir`.
pub fn verify_bundle(dir: &Path, opts: &VerifyOptions) -> Result<Verification, VerifyError> {
    verify_bundle_with(dir, opts, |_, _| {})
}

/// [`verify_bundle`], calling `visit` with every entry that parses, in order,
/// and the role the rules accepted its signer as (`None`: refused, or its
/// signature failed). The report is built from this: what the rules accepted
/// and who signed it, never from raw action names.
pub fn verify_bundle_with(
    dir: &Path,
    opts: &VerifyOptions,
    mut visit: impl FnMut(&Entry, Option<Role>),
) -> Result<Verification, VerifyError> {
    let b = Bundle::open(dir)?;
    let mut c = Checks::new();
    let mut stats = Stats::default();
    // Set by anything that cannot be read (FORMAT.md §9): the verdict is
    // then exit 2 whatever the checks found.
    let mut unreadable = false;

    // Which ledger key do we hold the checkpoints to?
    let pinned = opts.ledger_key.is_some();
    let ledger = opts
        .ledger_key
        .clone()
        .unwrap_or_else(|| b.manifest.ledger.clone());
    check_manifest(&b, &ledger, &mut c.manifest, &mut unreadable);

    // Checkpoints: parse and check signatures up front (there are few). A
    // failure of the note itself names no entry (FORMAT.md §9).
    let mut cps: Vec<(u64, SignedCheckpoint, String)> = Vec::new();
    for (size, note, rel) in &b.checkpoints {
        match SignedCheckpoint::parse(note) {
            Err(e) => c.checkpoints.fail(None, format!("{rel}: {e}")),
            Ok(cp) => {
                if cp.head().size != *size {
                    c.checkpoints.fail(
                        None,
                        format!(
                            "{rel}: file name says size {size}, note says {}",
                            cp.head().size
                        ),
                    );
                }
                if cp.origin().as_str() != b.manifest.origin {
                    c.checkpoints.fail(
                        None,
                        format!(
                            "{rel}: origin {:?} is not the manifest's {:?}",
                            cp.origin().as_str(),
                            b.manifest.origin
                        ),
                    );
                }
                match cp.verify(&ledger.public_key()) {
                    // The root is held to the size the ledger key signed,
                    // whatever the file is called.
                    Ok(()) => cps.push((cp.head().size, cp, rel.clone())),
                    Err(e) => c.checkpoints.fail(
                        None,
                        format!("{rel}: signature by ledger key {ledger}: {e}"),
                    ),
                }
            }
        }
    }
    cps.sort_by_key(|cp| cp.0);
    stats.checkpoints = b.checkpoints.len() as u64;
    // Each pinned witness must have cosigned some checkpoint; the streaming
    // pass below then holds the entries to that checkpoint's root.
    for w in &opts.witnesses {
        let best = cps
            .iter()
            .filter(|(_, cp, _)| cp.verify_cosignature(w).is_ok())
            .map(|(size, _, _)| *size)
            .max();
        match best {
            Some(size) => {
                stats.witnessed.insert(w.name().to_string(), size);
            }
            None => c.checkpoints.fail(
                None,
                format!(
                    "no checkpoint signed by the ledger key carries a valid cosignature by pinned witness {}",
                    w.name()
                ),
            ),
        }
    }

    let mut authority = Authority::new(Some(ledger.clone()));
    let credentials: Vec<CredentialRecord> =
        read_records(&b, bundle::CREDENTIALS, &mut c.credentials, &mut unreadable);
    let mut cred_iter = credentials.iter().peekable();
    let mut payloads = PayloadStream::open(&b, &mut c.payloads, &mut unreadable);
    // Every DID the entries name, for the dids.jsonl check (few: one per identity).
    let mut seen_dids: std::collections::BTreeSet<Did> = std::collections::BTreeSet::new();
    // Lines that hold no entry: whatever they named is unknown.
    let mut unread_lines = 0u64;

    let mut range = CompactRange::new();
    let mut prev_hash = EntryHash::ZERO;
    let mut prev_time: Option<Timestamp> = None;
    let mut cp_idx = 0usize;
    check_checkpoint_roots(&cps, &mut cp_idx, &range, &mut c.checkpoints);
    let lines = Prepared::new(b.entry_lines()?);
    for item in lines {
        let line = match item {
            Ok(x) => x,
            // The reader stops here (a truncated or over-long line, an I/O
            // error): nothing after it can be located.
            Err(e) => {
                c.encoding.fail(Some(range.size()), e.to_string());
                unreadable = true;
                break;
            }
        };
        let n = line.n;
        // The raw line is the leaf and the next entry's `prev`, whatever it
        // holds: a line that is not an entry still takes its place in the
        // chain and the tree.
        range.push(tlog_hash(&line.hash));

        match line.read {
            Err(e) => {
                unreadable |= e.is_unreadable();
                c.encoding.fail(Some(n), e.to_string());
                unread_lines += 1;
                // No seq, prev, signature or event to judge; it changes no
                // state, and records that name it cannot be held to it.
                authority.skip();
                pass_credential_records(n, &mut cred_iter, &mut c.credentials);
                payloads.match_entry(n, None, &mut c.payloads, &mut unreadable, &mut stats);
            }
            Ok(ReadEntry {
                entry,
                canonical,
                sig,
            }) => {
                if !canonical {
                    c.encoding.fail(
                        Some(n),
                        "not in canonical form (RFC 8785): the line differs from the JCS form of the entry it holds",
                    );
                }
                if entry.seq != Seq(n) {
                    c.sequence.fail(
                        Some(n),
                        format!("line {n} holds seq {} (expected {n})", entry.seq),
                    );
                }
                if entry.prev != prev_hash {
                    c.chain.fail(
                        Some(n),
                        format!(
                            "prev {} is not the hash of the entry before ({})",
                            entry.prev, prev_hash
                        ),
                    );
                }
                if let Some(t) = prev_time {
                    if entry.received_at < t {
                        c.receive_times.fail(
                            Some(n),
                            format!(
                                "received_at {} is before the previous entry's {t}",
                                entry.received_at
                            ),
                        );
                    }
                }
                prev_time = Some(entry.received_at);
                let sig_ok = match sig {
                    Ok(()) => true,
                    Err(e) => {
                        c.signatures.fail(Some(n), e.to_string());
                        false
                    }
                };
                // An entry whose signature fails is not authorized (it is
                // reported under `signatures`), and an entry the rules refuse
                // changes nothing: later entries are judged against the state
                // the accepted ones built (FORMAT.md §9).
                let verdict = if sig_ok {
                    match authority.check_verified(&entry.event, entry.received_at) {
                        Ok(a) => Ok(a),
                        Err(d) => {
                            c.authorization
                                .fail(Some(n), format!("{} ({})", d.message, d.code.as_str()));
                            Err(d)
                        }
                    }
                } else {
                    Err(Denial::new(
                        DenialCode::BadSignature,
                        "signature does not verify",
                    ))
                };
                let role = verdict.as_ref().ok().map(|a| a.role());
                match verdict {
                    Ok(a) => authority.apply(&entry, a),
                    Err(_) => authority.skip(),
                }
                visit(&entry, role);
                count_stats(&mut stats, &entry);
                if !seen_dids.contains(&entry.event.actor) {
                    seen_dids.insert(entry.event.actor.clone());
                }
                if let Some(b) = &entry.event.on_behalf_of {
                    if !seen_dids.contains(b) {
                        seen_dids.insert(b.clone());
                    }
                }
                check_credential_records(n, &entry, &mut cred_iter, &mut c.credentials);
                payloads.match_entry(
                    n,
                    Some(&entry),
                    &mut c.payloads,
                    &mut unreadable,
                    &mut stats,
                );
                if entry.event.payload.is_some() {
                    stats.payloads_redacted += 1;
                }
            }
        }
        prev_hash = line.hash;
        check_checkpoint_roots(&cps, &mut cp_idx, &range, &mut c.checkpoints);
    }
    stats.payloads_redacted -= stats.payloads_present.min(stats.payloads_redacted);
    payloads.finish(&mut c.payloads, &mut unreadable);

    let size = range.size();
    stats.entries = size;
    if size == 0 {
        return Err(VerifyError::NoEntries(dir.to_path_buf()));
    }
    for (csize, _, rel) in &cps[cp_idx..] {
        c.checkpoints.fail(
            Some(size),
            format!("{rel}: signed for {csize} entries, but the bundle has {size} (entries missing after seq {})", size - 1),
        );
    }
    match cps.iter().map(|c| c.0).max() {
        Some(max) if max == size => {}
        Some(max) if max < size => c.checkpoints.fail(
            Some(max),
            format!(
                "entries {max}..{} are not covered by any signed checkpoint",
                size - 1
            ),
        ),
        Some(_) => {}
        None => c
            .checkpoints
            .fail(None, "no valid checkpoint signed by the ledger key"),
    }
    let root_hex = hash_to_hex(&range.root());
    if b.manifest.tree_size != size {
        c.merkle.fail(
            None,
            format!(
                "manifest says {} entries, entries.jsonl has {size}",
                b.manifest.tree_size
            ),
        );
    }
    if b.manifest.root != root_hex {
        c.merkle.fail(
            None,
            format!(
                "manifest root {} differs from the computed root {root_hex}",
                b.manifest.root
            ),
        );
    }
    for rec in cred_iter {
        c.credentials.fail(
            Some(rec.seq.0),
            format!("{} credential has no matching entry", rec.kind),
        );
    }
    let dids: Vec<DidRecord> = read_records(&b, bundle::DIDS, &mut c.credentials, &mut unreadable);
    // Sorted, no duplicates, exactly the DIDs the entries name and the
    // ledger's (FORMAT.md §8.2).
    let mut listed = std::collections::BTreeSet::new();
    let mut last: Option<&Did> = None;
    for d in &dids {
        if last.is_some_and(|l| l >= &d.did) {
            c.credentials.fail(
                None,
                format!("dids.jsonl is not sorted without duplicates at {}", d.did),
            );
        }
        last = Some(&d.did);
        listed.insert(d.did.clone());
        if d.document != d.did.document() {
            c.credentials.fail(
                None,
                format!("DID document for {} is not its did:key resolution", d.did),
            );
        }
    }
    seen_dids.insert(ledger.clone());
    for missing in seen_dids.difference(&listed) {
        c.credentials.fail(
            None,
            format!("dids.jsonl lacks {missing}, which the ledger names"),
        );
    }
    // A line that holds no entry may name any DID, so an extra one is only
    // an extra when every line was read (the encoding failure stands anyway).
    if unread_lines == 0 {
        for extra in listed.difference(&seen_dids) {
            c.credentials.fail(
                None,
                format!("dids.jsonl lists {extra}, which no entry names"),
            );
        }
    }
    stats.sessions = authority.sessions().count() as u64;

    let checks = c.into_vec();
    let valid = checks.iter().all(|c| c.ok) && !unreadable;
    Ok(Verification {
        valid,
        unreadable,
        bundle: dir.display().to_string(),
        ledger: Some(ledger.to_string()),
        ledger_key_pinned: pinned,
        ledger_key_fingerprint: Origin::new(&b.manifest.origin)
            .ok()
            .map(|o| custody_ledger::checkpoint::verifier_key_string(&o, &ledger.public_key())),
        origin: Some(b.manifest.origin.clone()),
        tree_size: size,
        root: Some(root_hex),
        checks,
        stats,
    })
}

/// Compares every checkpoint of the tree size `range` has reached with its
/// root. A mismatch names entry size − 1, the last one the root covers (none
/// for a checkpoint of size 0, which covers no entry).
fn check_checkpoint_roots(
    cps: &[(u64, SignedCheckpoint, String)],
    next: &mut usize,
    range: &CompactRange,
    check: &mut Check,
) {
    while let Some((size, cp, rel)) = cps.get(*next) {
        if *size > range.size() {
            break;
        }
        if cp.head().root != range.root() {
            check.fail(
                size.checked_sub(1),
                format!(
                    "{rel}: signed root {} differs from the root of the first {size} entries {}",
                    hash_to_hex(&cp.head().root),
                    hash_to_hex(&range.root())
                ),
            );
        }
        *next += 1;
    }
}

/// One line of `entries.jsonl` that holds an entry, prepared off the ordered
/// path: the entry, whether the line is its JCS form, and its signature.
struct ReadEntry {
    entry: Entry,
    canonical: bool,
    sig: Result<(), custody_ledger::LedgerError>,
}

/// A line as the ordered checks receive it: position, entry hash of the raw
/// bytes, and what it holds.
struct PreparedLine {
    n: u64,
    hash: EntryHash,
    read: Result<ReadEntry, LineError>,
}

/// Signatures checked together in one batch equation. Larger batches cost
/// less per signature (above about 95 signatures dalek's multiscalar
/// multiplication switches from Straus to Pippenger): one signature cost
/// about 2.1× less than `verify_strict` in batches of 64 and 2.6–2.9× less
/// in batches of 256–512 (docs/PERFORMANCE.md).
pub const SIGNATURE_BATCH: usize = 256;

/// Parses and hashes a line; its signature is checked by [`check_signatures`].
fn read_line(n: u64, line: &[u8]) -> PreparedLine {
    let read = Entry::read_line(line).map(|Decoded { value, canonical }| ReadEntry {
        entry: value,
        canonical,
        sig: Ok(()),
    });
    PreparedLine {
        n,
        hash: entry_hash(line),
        read,
    }
}

/// Checks the signatures of parsed lines in batches
/// (`custody_identity::batch::verify_batch_strict`); when a batch fails, each
/// of its signatures is checked on its own with `verify_strict`, so every
/// failing line is named. A signature that fails the strict pre-checks
/// (non-canonical `S` or `R`, small-order `R`, a key with a torsion
/// component) is checked on its own straight away, so it does not take a
/// batch of good ones with it. A re-encoded line's signature is checked over
/// its event's JCS form, not the bytes in the line (they are not what was
/// signed).
fn check_signatures(lines: &[(u64, Vec<u8>)], prepared: &mut [PreparedLine]) {
    use custody_identity::batch::{prechecks, verify_batch_strict, BatchItem, TorsionFreeKeys};
    thread_local! {
        static KEYS: std::cell::RefCell<TorsionFreeKeys> = Default::default();
    }
    let strict = |p: &mut PreparedLine, line: &[u8]| {
        if let Ok(r) = &mut p.read {
            r.sig = if r.canonical {
                r.entry.verify_signature_in(line)
            } else {
                r.entry.verify_signature()
            };
        }
    };
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        // (index into `prepared`, key, message) of every line that parsed
        // and passes the pre-checks.
        let mut pending = Vec::with_capacity(prepared.len());
        for (i, (p, (_, line))) in prepared.iter_mut().zip(lines).enumerate() {
            let Ok(r) = &mut p.read else { continue };
            match r.entry.signed_message(line, r.canonical) {
                Ok(msg) => {
                    let key = r.entry.event.actor.public_key();
                    let item = BatchItem {
                        key: &key,
                        msg: &msg,
                        sig: &r.entry.sig,
                    };
                    if prechecks(&item, &mut keys) {
                        pending.push((i, key, msg));
                    } else {
                        strict(p, line);
                    }
                }
                Err(e) => r.sig = Err(e),
            }
        }
        for batch in pending.chunks(SIGNATURE_BATCH) {
            let items: Vec<BatchItem<'_>> = batch
                .iter()
                .filter_map(|(i, key, msg)| {
                    let r = prepared[*i].read.as_ref().ok()?;
                    Some(BatchItem {
                        key,
                        msg,
                        sig: &r.entry.sig,
                    })
                })
                .collect();
            if verify_batch_strict(&items, &mut keys).is_ok() {
                continue;
            }
            for (i, _, _) in batch {
                strict(&mut prepared[*i], &lines[*i].1);
            }
        }
    });
}

/// Lines read ahead and prepared on every core: the per-line work that does
/// not depend on order (parsing, canonical-form check, entry hash, signature).
/// The ordered checks (chain, authorization, Merkle) then run on the results,
/// in line order. One thread reads chunks of lines; one long-lived worker per
/// core takes the next chunk as soon as it is done with the last (no worker
/// waits for another), and the chunks are put back in order here. Memory
/// stays bounded by the chunks in flight ([`CHUNKS_IN_FLIGHT`]).
struct Prepared {
    rx: std::sync::mpsc::Receiver<(usize, Prep)>,
    /// One credit per chunk consumed: lets the reader start another.
    credits: std::sync::mpsc::SyncSender<()>,
    /// Chunks that arrived before the one due next.
    early: std::collections::BTreeMap<usize, Prep>,
    /// The index of the chunk due next.
    next_chunk: usize,
    ready: std::vec::IntoIter<PreparedLine>,
    error: Option<bundle::BundleError>,
    done: bool,
}

/// What the reader and the workers send: chunks, and how reading ended,
/// each with its place in the order.
enum Prep {
    Chunk(Vec<PreparedLine>),
    Failed(bundle::BundleError),
    End,
    /// A worker panicked while preparing this chunk.
    Panicked,
}

/// Lines per chunk: whole signature batches, small enough that the last
/// chunk does not leave a core idle for long.
const PREPARE_CHUNK: usize = 4 * SIGNATURE_BATCH;
/// Chunks read but not yet consumed by the ordered checks, per worker: each
/// worker has one to start on when it finishes the one in hand. A few MiB.
const CHUNKS_IN_FLIGHT_PER_WORKER: usize = 3;

impl Prepared {
    /// Starts the reader and the workers.
    fn new(mut lines: bundle::LineReader) -> Self {
        use std::sync::mpsc::{channel, sync_channel};
        use std::sync::{Arc, Mutex};
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16);
        let in_flight = workers * CHUNKS_IN_FLIGHT_PER_WORKER;
        let (credits, credit_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = credits.send(());
        }
        let (tx, rx) = channel::<(usize, Prep)>();
        let (job_tx, job_rx) = channel::<(usize, Vec<(u64, Vec<u8>)>)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers {
            let (job_rx, tx) = (job_rx.clone(), tx.clone());
            std::thread::spawn(move || loop {
                // The lock is held only while waiting for the next chunk.
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((i, raw)) = job else {
                    return; // the reader is done
                };
                let prepared =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare_chunk(&raw)));
                let msg = match prepared {
                    Ok(c) => Prep::Chunk(c),
                    Err(_) => Prep::Panicked,
                };
                if tx.send((i, msg)).is_err() {
                    return; // the verifier stopped reading
                }
            });
        }
        std::thread::spawn(move || {
            for i in 0.. {
                // Waits until the ordered checks have consumed a chunk; an
                // error means they stopped.
                if credit_rx.recv().is_err() {
                    return;
                }
                let mut raw = Vec::with_capacity(PREPARE_CHUNK);
                let mut end = None;
                while raw.len() < PREPARE_CHUNK {
                    match lines.next() {
                        Some(Ok(x)) => raw.push(x),
                        Some(Err(e)) => {
                            end = Some(Prep::Failed(e));
                            break;
                        }
                        None => {
                            end = Some(Prep::End);
                            break;
                        }
                    }
                }
                let mut at = i;
                if !raw.is_empty() {
                    if job_tx.send((i, raw)).is_err() {
                        return;
                    }
                    at += 1;
                }
                if let Some(end) = end {
                    let _ = tx.send((at, end));
                    return;
                }
            }
        });
        Self {
            rx,
            credits,
            early: Default::default(),
            next_chunk: 0,
            ready: Vec::new().into_iter(),
            error: None,
            done: false,
        }
    }

    /// The message for the chunk due next, in order.
    fn next_in_order(&mut self) -> Prep {
        loop {
            if let Some(p) = self.early.remove(&self.next_chunk) {
                self.next_chunk += 1;
                return p;
            }
            match self.rx.recv() {
                Ok((i, p)) => {
                    self.early.insert(i, p);
                }
                // Never a silent end: the reader and the workers only hang
                // up without `End` if one of them panicked.
                Err(_) => panic!("preparing entries failed (a thread panicked)"),
            }
        }
    }
}

/// Parses, hashes and checks the signatures of one chunk of lines.
fn prepare_chunk(raw: &[(u64, Vec<u8>)]) -> Vec<PreparedLine> {
    let mut prepared: Vec<PreparedLine> = raw.iter().map(|(n, line)| read_line(*n, line)).collect();
    check_signatures(raw, &mut prepared);
    prepared
}

impl Iterator for Prepared {
    type Item = Result<PreparedLine, bundle::BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(x) = self.ready.next() {
                return Some(Ok(x));
            }
            if self.done {
                return self.error.take().map(Err);
            }
            match self.next_in_order() {
                Prep::Chunk(c) => {
                    self.ready = c.into_iter();
                    // The reader may start another chunk.
                    let _ = self.credits.try_send(());
                }
                Prep::Failed(e) => {
                    self.error = Some(e);
                    self.done = true;
                }
                Prep::End => self.done = true,
                Prep::Panicked => panic!("preparing entries failed (a worker panicked)"),
            }
        }
    }
}

fn tlog_hash(h: &EntryHash) -> custody_ledger::merkle::Hash {
    custody_ledger::merkle::Hash(h.0)
}

/// The manifest's own rules (FORMAT.md §1, §7, §9 `manifest`): its
/// encoding, its origin, and that `files` lists exactly the files of the
/// bundle with their sizes and digests.
fn check_manifest(b: &Bundle, ledger: &Did, check: &mut Check, unreadable: &mut bool) {
    let m = &b.manifest;
    if m.ledger != *ledger {
        check.fail(
            None,
            format!(
                "manifest names ledger {}, but the pinned ledger key is {}",
                m.ledger, ledger
            ),
        );
    }
    if !b.manifest_canonical {
        check.fail(
            None,
            "manifest.json is not one JCS (RFC 8785) object followed by a single \\n",
        );
    }
    let origin = Origin::for_ledger(&m.ledger);
    if m.origin != origin.as_str() {
        check.fail(
            None,
            format!(
                "origin {:?} is not custody/<multibase of the ledger DID>, {:?}",
                m.origin,
                origin.as_str()
            ),
        );
    }
    for (rel, want) in &m.files {
        // Only the layout's own names: this also keeps every path inside
        // the bundle directory.
        if !bundle::is_layout_file(rel) {
            check.fail(
                None,
                format!("manifest lists {rel:?}, which is not a file of the bundle layout"),
            );
            continue;
        }
        match bundle::digest_file(&b.dir.join(rel)) {
            // Listed but absent is the manifest's fault; a file that is
            // there but cannot be read is not (exit 2).
            Err(e) => {
                let absent = matches!(
                    &e,
                    bundle::BundleError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound
                );
                *unreadable |= !absent;
                check.fail(None, format!("{rel}: {e}"));
            }
            Ok(got) => {
                if got != *want {
                    check.fail(
                        None,
                        format!(
                            "{rel}: {} bytes, SHA-256 {} (manifest: {} bytes, {})",
                            got.bytes, got.sha256, want.bytes, want.sha256
                        ),
                    );
                }
            }
        }
    }
    for required in bundle::REQUIRED_FILES {
        if !m.files.contains_key(required) {
            check.fail(None, format!("the manifest does not list {required}"));
        }
    }
    match b.present_files() {
        Ok(present) => {
            for rel in present {
                if !m.files.contains_key(&rel) {
                    check.fail(
                        None,
                        format!("{rel} is in the bundle but not listed in the manifest"),
                    );
                }
            }
        }
        Err(e) => {
            check.fail(None, e.to_string());
            *unreadable = true;
        }
    }
}

/// Reads a small `.jsonl` file of records (credentials, DIDs) line by line.
/// A line that cannot be read makes the bundle unreadable; a JSON object that
/// is not a record, or a record not in JCS form, fails `check`. A record in
/// the wrong form is still used, so one bad line is not also reported as a
/// missing record. An absent file reads as empty (the manifest check reports
/// it missing).
fn read_records<T: serde::de::DeserializeOwned>(
    b: &Bundle,
    name: &str,
    check: &mut Check,
    unreadable: &mut bool,
) -> Vec<T> {
    let reader = match b.lines(name) {
        Ok(Some(r)) => r,
        Ok(None) => return Vec::new(),
        Err(e) => {
            check.fail(None, e.to_string());
            *unreadable = true;
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in reader {
        match item {
            Err(e) => {
                check.fail(None, e.to_string());
                *unreadable = true;
            }
            Ok((n, line)) => match decode_line::<T>(&line) {
                Ok(d) => {
                    if !d.canonical {
                        check.fail(
                            None,
                            format!("{name} line {n}: not in canonical (RFC 8785) form"),
                        );
                    }
                    out.push(d.value);
                }
                Err(e) => {
                    *unreadable |= e.is_unreadable();
                    check.fail(None, format!("{name} line {n}: {e}"));
                }
            },
        }
    }
    out
}

/// `payloads.jsonl`, read in step with the entries (records in seq order).
struct PayloadStream {
    reader: Option<bundle::LineReader>,
    /// The next record, read but not yet matched to its entry.
    pending: Option<PayloadRecord>,
}

impl PayloadStream {
    fn open(b: &Bundle, check: &mut Check, unreadable: &mut bool) -> Self {
        let reader = match b.lines(bundle::PAYLOADS) {
            Ok(r) => r,
            Err(e) => {
                check.fail(None, e.to_string());
                *unreadable = true;
                None
            }
        };
        Self {
            reader,
            pending: None,
        }
    }

    /// The next record that decodes; lines that do not are reported and
    /// passed over.
    fn read_next(&mut self, check: &mut Check, unreadable: &mut bool) -> Option<PayloadRecord> {
        let reader = self.reader.as_mut()?;
        loop {
            match reader.next()? {
                // The reader ends after an error.
                Err(e) => {
                    check.fail(None, e.to_string());
                    *unreadable = true;
                }
                Ok((n, line)) => match decode_line::<PayloadRecord>(&line) {
                    Ok(d) => {
                        if !d.canonical {
                            check.fail(
                                None,
                                format!(
                                    "payloads.jsonl line {n}: not in canonical (RFC 8785) form"
                                ),
                            );
                        }
                        return Some(d.value);
                    }
                    Err(e) => {
                        *unreadable |= e.is_unreadable();
                        check.fail(None, format!("payloads.jsonl line {n}: {e}"));
                    }
                },
            }
        }
    }

    /// Holds the records for line `n` to its entry (at most one, matching
    /// the entry's digest and size). `entry` is `None` when the line holds
    /// no entry: its records are passed over, there being nothing to hold
    /// them to.
    fn match_entry(
        &mut self,
        n: u64,
        entry: Option<&Entry>,
        check: &mut Check,
        unreadable: &mut bool,
        stats: &mut Stats,
    ) {
        let mut seen = false;
        loop {
            if self.pending.is_none() {
                self.pending = self.read_next(check, unreadable);
            }
            let Some(p) = self.pending.take() else {
                return;
            };
            if p.seq.0 > n {
                self.pending = Some(p);
                return;
            }
            if p.seq.0 < n {
                check.fail(
                    Some(p.seq.0),
                    "payload record out of seq order or for an entry without a payload",
                );
                continue;
            }
            let Some(entry) = entry else {
                continue;
            };
            if std::mem::replace(&mut seen, true) {
                check.fail(Some(n), "more than one payload record for this entry");
                continue;
            }
            match (&entry.event.payload, p.open()) {
                (None, _) => check.fail(Some(n), "payload record for an entry without a payload"),
                (_, Err(e)) => check.fail(Some(n), e.to_string()),
                (Some(r), Ok(body)) => {
                    if r.digest != p.digest {
                        check.fail(Some(n), "payload digest differs from the entry's");
                    } else if r.size != body.len() as u64 {
                        check.fail(Some(n), "payload size differs from the entry's");
                    } else {
                        stats.payloads_present += 1;
                    }
                }
            }
        }
    }

    /// Records left after the last entry name entries the bundle lacks.
    fn finish(mut self, check: &mut Check, unreadable: &mut bool) {
        let report = |check: &mut Check, p: PayloadRecord| {
            check.fail(
                Some(p.seq.0),
                "payload record for an entry not in the bundle",
            )
        };
        if let Some(p) = self.pending.take() {
            report(check, p);
        }
        while let Some(p) = self.read_next(check, unreadable) {
            report(check, p);
        }
    }
}

fn count_stats(stats: &mut Stats, entry: &Entry) {
    let ev = &entry.event;
    *stats
        .by_actor_kind
        .entry(ev.actor_kind.as_str().to_string())
        .or_default() += 1;
    let n = stats.actors.entry(ev.actor.to_string()).or_default();
    if *n == 0 {
        *stats
            .identities_by_kind
            .entry(ev.actor_kind.as_str().to_string())
            .or_default() += 1;
    }
    *n += 1;
    match ev.action.as_str() {
        actions::IDENTITY_REVOKE => stats.revocations += 1,
        actions::REQUEST_DENIED => stats.denied_requests += 1,
        _ => {}
    }
}

/// credentials.jsonl lists, in seq order, the credential each session.start and
/// identity.revoke entry carries; check entry `n`'s against the next record.
fn check_credential_records<'a>(
    n: u64,
    entry: &Entry,
    records: &mut std::iter::Peekable<impl Iterator<Item = &'a CredentialRecord>>,
    check: &mut Check,
) {
    let ev = &entry.event;
    let expected = match ev.action.as_str() {
        actions::SESSION_START => ev.detail_str("delegation").map(|j| ("delegation", j)),
        actions::IDENTITY_REVOKE => ev.detail_str("revocation").map(|j| ("revocation", j)),
        _ => None,
    };
    report_records_before(n, records, check);
    if let Some((kind, jws)) = expected {
        match records.peek() {
            Some(rec) if rec.seq.0 == n && rec.kind == kind && rec.jws == jws => {
                records.next();
            }
            _ => check.fail(
                Some(n),
                format!("the entry's {kind} credential is missing from credentials.jsonl"),
            ),
        }
    }
}

/// Line `n` holds no entry: records before it are still reported, records
/// for it are passed over, there being nothing to hold them to.
fn pass_credential_records<'a>(
    n: u64,
    records: &mut std::iter::Peekable<impl Iterator<Item = &'a CredentialRecord>>,
    check: &mut Check,
) {
    report_records_before(n, records, check);
    while records.next_if(|rec| rec.seq.0 == n).is_some() {}
}

/// Records for entries before `n` that were not matched when their entry was read.
fn report_records_before<'a>(
    n: u64,
    records: &mut std::iter::Peekable<impl Iterator<Item = &'a CredentialRecord>>,
    check: &mut Check,
) {
    while let Some(rec) = records.next_if(|rec| rec.seq.0 < n) {
        check.fail(
            Some(rec.seq.0),
            format!("{} credential does not match its entry", rec.kind),
        );
    }
}
