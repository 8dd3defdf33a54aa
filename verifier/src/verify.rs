//! Streaming verification of an export bundle.
//!
//! One pass over `entries.jsonl` checks, per entry: canonical encoding, `seq`
//! contiguity, the `prev` chain, the actor's signature, authorization (the same
//! [`Authority`] rules the broker applies before appending), monotonic receive
//! times; a compact Merkle range is extended with each leaf and, whenever the
//! stream reaches a checkpoint's tree size, the root is compared with the signed
//! checkpoint. Memory is bounded by the authorization state (sessions,
//! revocations, nonces) and a logarithmic Merkle range, never by the bundle size.

use std::path::Path;

use custody_identity::Did;
use custody_ledger::actions::Role;
use custody_ledger::authority::{Authority, Denial, DenialCode};
use custody_ledger::bundle::{self, Bundle, PayloadRecord};
use custody_ledger::checkpoint::SignedCheckpoint;
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
    #[error("{0}")]
    Unreadable(String),
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
    let mut unreadable = false;

    // Which ledger key do we hold the checkpoints to?
    let pinned = opts.ledger_key.is_some();
    let ledger = opts
        .ledger_key
        .clone()
        .unwrap_or_else(|| b.manifest.ledger.clone());
    if b.manifest.ledger != ledger {
        c.manifest.fail(
            None,
            format!(
                "manifest names ledger {}, but the pinned ledger key is {}",
                b.manifest.ledger, ledger
            ),
        );
    }

    check_file_digests(&b, &mut c.manifest);

    // Checkpoints: parse and check signatures up front (there are few).
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
                            "{rel}: origin {:?} is not the ledger's {:?}",
                            cp.origin().as_str(),
                            b.manifest.origin
                        ),
                    );
                }
                match cp.verify(&ledger.public_key()) {
                    Ok(()) => cps.push((*size, cp, rel.clone())),
                    Err(e) => c.checkpoints.fail(
                        None,
                        format!("{rel}: signature by ledger key {ledger}: {e}"),
                    ),
                }
            }
        }
    }
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
    let credentials = match b.credentials() {
        Ok(v) => v,
        Err(e) => {
            c.credentials.fail(None, e.to_string());
            unreadable = true;
            Vec::new()
        }
    };
    let mut cred_iter = credentials.iter().peekable();

    // Payloads stream in seq order beside the entries.
    let mut payloads = match b.payload_lines() {
        Ok(p) => p,
        Err(e) => {
            c.payloads.fail(None, e.to_string());
            unreadable = true;
            None
        }
    };
    let mut pending_payload: Option<PayloadRecord> = None;
    // Every DID the entries name, for the dids.jsonl check (few: one per identity).
    let mut seen_dids: std::collections::BTreeSet<Did> = std::collections::BTreeSet::new();
    let mut next_payload = |c: &mut Checks, unreadable: &mut bool| -> Option<PayloadRecord> {
        let reader = payloads.as_mut()?;
        match reader.next()? {
            Ok((n, line)) => match bundle::parse_canonical_line::<PayloadRecord>(&line) {
                Ok(p) => Some(p),
                Err(e) => {
                    c.payloads
                        .fail(None, format!("payloads.jsonl line {n}: {e}"));
                    *unreadable = true;
                    None
                }
            },
            Err(e) => {
                c.payloads.fail(None, e.to_string());
                *unreadable = true;
                None
            }
        }
    };
    pending_payload = pending_payload.or_else(|| next_payload(&mut c, &mut unreadable));

    let mut range = CompactRange::new();
    let mut prev_hash = EntryHash::ZERO;
    let mut prev_time: Option<Timestamp> = None;
    let mut cp_idx = 0usize;
    let lines = Prepared::new(b.entry_lines()?);
    for item in lines {
        let (n, hash, parsed, sig) = match item {
            Ok(x) => x,
            Err(e) => {
                c.encoding.fail(Some(range.size()), e.to_string());
                unreadable = true;
                break;
            }
        };
        range.push(tlog_hash(&hash));

        match parsed {
            Err(e) => {
                c.encoding.fail(Some(n), e.to_string());
                unreadable = true;
            }
            Ok(entry) => {
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
                check_credential_records(&entry, &mut cred_iter, &mut c.credentials);

                // Payload records for this entry (at most one).
                let mut seen_payload = false;
                while let Some(p) = pending_payload.take() {
                    if p.seq.0 < n {
                        c.payloads.fail(
                            Some(p.seq.0),
                            "payload record out of seq order or for an entry without a payload",
                        );
                    } else if p.seq.0 > n {
                        pending_payload = Some(p);
                        break;
                    } else if std::mem::replace(&mut seen_payload, true) {
                        c.payloads
                            .fail(Some(n), "more than one payload record for this entry");
                    } else {
                        match (&entry.event.payload, p.open()) {
                            (None, _) => c
                                .payloads
                                .fail(Some(n), "payload record for an entry without a payload"),
                            (_, Err(e)) => c.payloads.fail(Some(n), e.to_string()),
                            (Some(r), Ok(body)) => {
                                if r.digest != p.digest {
                                    c.payloads
                                        .fail(Some(n), "payload digest differs from the entry's");
                                } else if r.size != body.len() as u64 {
                                    c.payloads
                                        .fail(Some(n), "payload size differs from the entry's");
                                } else {
                                    stats.payloads_present += 1;
                                }
                            }
                        }
                    }
                    pending_payload = next_payload(&mut c, &mut unreadable);
                }
                if entry.event.payload.is_some() {
                    stats.payloads_redacted += 1;
                }
            }
        }
        prev_hash = hash;

        // Checkpoints at this size.
        while cp_idx < cps.len() && cps[cp_idx].0 <= range.size() {
            let (size, cp, rel) = &cps[cp_idx];
            if *size == range.size() && cp.head().root != range.root() {
                c.checkpoints.fail(
                    Some(size.saturating_sub(1)),
                    format!(
                        "{rel}: signed root {} differs from the root of the first {size} entries {}",
                        hash_to_hex(&cp.head().root),
                        hash_to_hex(&range.root())
                    ),
                );
            }
            cp_idx += 1;
        }
    }
    stats.payloads_redacted -= stats.payloads_present.min(stats.payloads_redacted);
    if let Some(p) = pending_payload {
        c.payloads.fail(
            Some(p.seq.0),
            "payload record for an entry not in the bundle",
        );
    }

    let size = range.size();
    stats.entries = size;
    if size == 0 {
        return Err(VerifyError::Unreadable(format!(
            "{}: entries.jsonl has no entries",
            dir.display()
        )));
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
    match b.dids() {
        Ok(dids) => {
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
            for extra in listed.difference(&seen_dids) {
                c.credentials.fail(
                    None,
                    format!("dids.jsonl lists {extra}, which no entry names"),
                );
            }
        }
        Err(e) => {
            c.credentials.fail(None, e.to_string());
            unreadable = true;
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
        ledger_key_fingerprint: custody_ledger::checkpoint::Origin::new(&b.manifest.origin)
            .ok()
            .map(|o| custody_ledger::checkpoint::verifier_key_string(&o, &ledger.public_key())),
        origin: Some(b.manifest.origin.clone()),
        tree_size: size,
        root: Some(root_hex),
        checks,
        stats,
    })
}

/// Lines read ahead and prepared on every core: the per-line work that does
/// not depend on order (parsing, canonical-form check, entry hash, signature).
/// The ordered checks (chain, authorization, Merkle) then run on the results.
/// Memory stays bounded by the chunk size.
struct Prepared {
    rx: std::sync::mpsc::Receiver<Prep>,
    ready: std::collections::VecDeque<PreparedLine>,
    error: Option<bundle::BundleError>,
    done: bool,
}

type PreparedLine = (
    u64,
    EntryHash,
    Result<Entry, custody_ledger::LedgerError>,
    Result<(), custody_ledger::LedgerError>,
);

/// What the preparing thread sends: chunks in order, then how reading ended.
enum Prep {
    Chunk(Vec<PreparedLine>),
    Failed(bundle::BundleError),
    End,
}

/// Lines prepared per round; a few MiB at most.
const PREPARE_CHUNK: usize = 4096;
/// Prepared chunks waiting for the ordered checks: bounds memory to about
/// three chunks (one queued, one being prepared, one being checked).
const CHUNKS_AHEAD: usize = 1;

impl Prepared {
    /// Starts a thread that reads `lines` and prepares them (parse, canonical
    /// form, leaf hash, signature) on every core, chunk by chunk, while the
    /// caller runs the ordered checks on the chunk before.
    fn new(mut lines: bundle::LineReader) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
        std::thread::spawn(move || loop {
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
            if !raw.is_empty() && tx.send(Prep::Chunk(prepare_chunk(&raw))).is_err() {
                return; // the verifier stopped reading
            }
            if let Some(end) = end {
                let _ = tx.send(end);
                return;
            }
        });
        Self {
            rx,
            ready: Default::default(),
            error: None,
            done: false,
        }
    }
}

fn prepare_chunk(raw: &[(u64, Vec<u8>)]) -> Vec<PreparedLine> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);
    let per = raw.len().div_ceil(workers).max(1);
    let prepare = |(n, line): &(u64, Vec<u8>)| -> PreparedLine {
        let hash = entry_hash(line);
        let parsed = Entry::parse_line(line);
        let sig = match &parsed {
            Ok(e) => e.verify_signature_in(line),
            Err(_) => Ok(()),
        };
        (*n, hash, parsed, sig)
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = raw
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(prepare).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

impl Iterator for Prepared {
    type Item = Result<PreparedLine, bundle::BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.done {
            match self.rx.recv() {
                Ok(Prep::Chunk(c)) => self.ready.extend(c),
                Ok(Prep::Failed(e)) => {
                    self.error = Some(e);
                    self.done = true;
                }
                Ok(Prep::End) => self.done = true,
                // Never a silent end: the preparing thread only hangs up
                // without `End` if it panicked.
                Err(_) => panic!("preparing entries failed (a worker panicked)"),
            }
        }
        match self.ready.pop_front() {
            Some(x) => Some(Ok(x)),
            None => self.error.take().map(Err),
        }
    }
}

fn tlog_hash(h: &EntryHash) -> custody_ledger::merkle::Hash {
    custody_ledger::merkle::Hash(h.0)
}

fn check_file_digests(b: &Bundle, check: &mut Check) {
    for (rel, want) in &b.manifest.files {
        if rel.contains("..") || rel.starts_with('/') {
            check.fail(
                None,
                format!("manifest lists a path outside the bundle: {rel:?}"),
            );
            continue;
        }
        match bundle::digest_file(&b.dir.join(rel)) {
            Err(e) => check.fail(None, format!("{rel}: {e}")),
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
    for (_, _, rel) in &b.checkpoints {
        if !b.manifest.files.contains_key(rel) {
            check.fail(None, format!("{rel} is not listed in the manifest"));
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
/// identity.revoke entry carries; check this entry's against the next record.
fn check_credential_records<'a>(
    entry: &Entry,
    records: &mut std::iter::Peekable<impl Iterator<Item = &'a bundle::CredentialRecord>>,
    check: &mut Check,
) {
    let ev = &entry.event;
    let expected = match ev.action.as_str() {
        actions::SESSION_START => ev.detail_str("delegation").map(|j| ("delegation", j)),
        actions::IDENTITY_REVOKE => ev.detail_str("revocation").map(|j| ("revocation", j)),
        _ => None,
    };
    while let Some(rec) = records.peek() {
        if rec.seq.0 < entry.seq.0 {
            check.fail(
                Some(rec.seq.0),
                format!("{} credential does not match its entry", rec.kind),
            );
            records.next();
        } else {
            break;
        }
    }
    if let Some((kind, jws)) = expected {
        match records.peek() {
            Some(rec) if rec.seq == entry.seq && rec.kind == kind && rec.jws == jws => {
                records.next();
            }
            _ => check.fail(
                Some(entry.seq.0),
                format!("the entry's {kind} credential is missing from credentials.jsonl"),
            ),
        }
    }
}
