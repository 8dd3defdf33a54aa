//! Mutation test of the offline verifier (issue #8).
//!
//! A small valid bundle is built in-process (genesis, a human prompt, an agent
//! session with tool calls and payloads, an approval, a revocation, a denial;
//! checkpoints at 3, 6 and 8 entries). Each case then damages it — flips,
//! sets, inserts and deletes bytes, swaps tokens between places, deletes,
//! duplicates, swaps and moves lines, truncates and deletes files, copies a
//! checkpoint under another size — and, in half of the cases, rewrites the
//! manifest to match the damaged files, as anyone can (the manifest is not
//! signed). `verify_bundle` is called directly and must never panic, and
//! whenever it says *valid* the bundle must still mean what the original
//! meant:
//!
//! - `entries.jsonl` is byte for byte a prefix of the original, ending at a
//!   checkpointed size (a snapshot of the same ledger taken earlier: nothing
//!   short of pinning the expected size can tell the two apart);
//! - every checkpoint present states a tree head and time of the original;
//! - credentials are the original records for those entries; payload records
//!   are original records (dropping one is a redaction, which the format
//!   allows); DID records are original records;
//! - the manifest names the same ledger and origin.
//!
//! One case in ten also builds the attestation report (and renders it) and
//! inclusion proofs from the damaged bundle: no panics, and a proof that checks
//! names an original entry.
//!
//! Cases: `CUSTODY_MUTATION_CASES` (default 10,000). In a debug build on two
//! cores the default run takes about 30 s; `--nocapture` prints the count,
//! the time and how the verdicts split.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use custody_identity::jws::sign_compact;
use custody_identity::{Delegation, Did, KeyPair, Revocation};
use custody_ledger::authority::TrustRoots;
use custody_ledger::bundle::{
    self, digest_file, BundleWriter, CredentialRecord, DidRecord, Manifest, PayloadRecord,
};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::{
    actions, entry_hash, ActionType, ActorKind, Approval, Context, Entry, EntryHash, Event, Nonce,
    PayloadDigest, PayloadRef, Seq, SessionId, Timestamp,
};
use custody_verifier::attest::build_report;
use custody_verifier::proof::{check_proof, prove, InclusionProof};
use custody_verifier::{verify_bundle, Verification, VerifyOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use time::OffsetDateTime;

// ---- the original bundle ----------------------------------------------------------

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed(&[i; 32])
}

fn ts(sec: u64) -> Timestamp {
    Timestamp::parse(&format!("2026-11-24T19:20:{sec:02}.000Z")).unwrap()
}

struct Original {
    ledger: Did,
    /// Relative path → bytes, manifest included.
    files: BTreeMap<String, Vec<u8>>,
    lines: Vec<Vec<u8>>,
    manifest: Manifest,
    /// size → (head, time) of each checkpoint.
    checkpoints: BTreeMap<u64, (TreeHead, OffsetDateTime)>,
    credentials: Vec<CredentialRecord>,
    payloads: Vec<PayloadRecord>,
    dids: Vec<DidRecord>,
}

/// Writes the bundle into `dir` and returns what it holds.
/// `extra` entries are appended after the eight (their seq and prev are set).
fn build(dir: &Path, extra: Vec<Entry>) -> Original {
    let ledger = key(1);
    let human = key(2);
    let admin = key(3);
    let session = key(4);

    let delegation = Delegation::new(
        human.did(),
        session.did(),
        "claude-code".into(),
        vec!["repo-read".into()],
        "ci".into(),
        time::macros::datetime!(2026-11-24 19:00:00 UTC),
        time::macros::datetime!(2026-11-24 20:00:00 UTC),
    )
    .unwrap();
    let djws = delegation.issue(&human).unwrap();
    let revocation = Revocation::new(
        admin.did(),
        session.did(),
        "done".into(),
        time::macros::datetime!(2026-11-24 19:20:30 UTC),
    )
    .unwrap();
    let rjws = revocation.issue(&admin).unwrap();

    let mut payload_bodies: BTreeMap<PayloadDigest, ([u8; 32], Vec<u8>)> = BTreeMap::new();
    let mut payload = |n: u8, body: &str, keep: bool| {
        let salt = [n; 32];
        let d = bundle::payload_digest(&salt, body.as_bytes());
        if keep {
            payload_bodies.insert(d, (salt, body.as_bytes().to_vec()));
        }
        PayloadRef {
            digest: d,
            size: body.len() as u64,
        }
    };

    let session_ev = |action: &str| {
        let mut e = Event::new(
            session.did(),
            ActorKind::Agent,
            ActionType::new(action).unwrap(),
        );
        e.session = Some(SessionId::new(delegation.id.clone()).unwrap());
        e.on_behalf_of = Some(human.did());
        e.context = Some(Context::new("ci").unwrap());
        e
    };
    let mut events: Vec<(Event, &KeyPair)> = Vec::new();

    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS).unwrap(),
    );
    g.details = TrustRoots {
        admins: [admin.did()].into(),
        delegators: [human.did()].into(),
        ..Default::default()
    }
    .to_details();
    events.push((g, &ledger));

    let mut p = Event::new(
        human.did(),
        ActorKind::Human,
        ActionType::new(actions::PROMPT).unwrap(),
    );
    p.details
        .insert("summary".into(), "fix the flaky test".into());
    p.payload = Some(payload(1, "please fix the flaky test in ci", true));
    events.push((p, &human));

    let mut s = session_ev(actions::SESSION_START);
    s.details.insert("delegation".into(), djws.clone().into());
    s.details.insert("agent".into(), "claude-code".into());
    events.push((s, &session));

    let mut c = session_ev(actions::TOOL_CALL);
    c.details.insert("scope".into(), "repo-read".into());
    c.details.insert("tool".into(), "Read".into());
    // What approved it is not claimed here (a claim must name the entry
    // that backs it, FORMAT.md §3.1).
    c.approval = Some(Approval::None);
    c.payload = Some(payload(2, "{\"file_path\":\"src/lib.rs\"}", true));
    events.push((c, &session));

    let mut r = session_ev(actions::TOOL_RESULT);
    r.details.insert("ok".into(), true.into());
    r.payload = Some(payload(3, "fn main() {}", false));
    events.push((r, &session));

    let mut a = Event::new(
        human.did(),
        ActorKind::Human,
        ActionType::new(actions::APPROVAL).unwrap(),
    );
    a.details.insert("decision".into(), "approve".into());
    a.approval = Some(Approval::Human {
        approver: human.did(),
        seq: None,
    });
    events.push((a, &human));

    let mut v = Event::new(
        admin.did(),
        ActorKind::Human,
        ActionType::new(actions::IDENTITY_REVOKE).unwrap(),
    );
    v.details.insert("revocation".into(), rjws.into());
    v.details
        .insert("subject".into(), session.did().to_string().into());
    events.push((v, &admin));

    let mut d = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::REQUEST_DENIED).unwrap(),
    );
    d.details
        .insert("actor".into(), session.did().to_string().into());
    d.details.insert("code".into(), "revoked".into());
    events.push((d, &ledger));

    let mut lines = Vec::new();
    let mut prev = EntryHash::ZERO;
    for (i, (mut e, k)) in events.into_iter().enumerate() {
        e.client_time = ts(i as u64 * 5);
        e.nonce = Nonce([i as u8 + 1; 16]);
        let entry = Entry::new(
            Seq(i as u64),
            prev,
            ts(i as u64 * 5 + 1),
            e.sign(k).unwrap(),
        );
        let line = entry.to_line().unwrap();
        prev = entry_hash(&line);
        lines.push(line);
    }
    for mut e in extra {
        e.seq = Seq(lines.len() as u64);
        e.prev = prev;
        let line = e.to_line().unwrap();
        prev = entry_hash(&line);
        lines.push(line);
    }

    let origin = Origin::for_ledger(&ledger.did());
    let mut range = CompactRange::new();
    let mut cps = Vec::new();
    let mut heads = BTreeMap::new();
    let n = lines.len() as u64;
    for (i, l) in lines.iter().enumerate() {
        range.push(Hash(entry_hash(l).0));
        let size = i as u64 + 1;
        if size == 3 || size == 6 || size == n {
            let head = TreeHead {
                size,
                root: range.root(),
            };
            let t = time::macros::datetime!(2026-11-24 19:21:00 UTC)
                + time::Duration::seconds(size as i64);
            let cp = SignedCheckpoint::sign(&ledger, &origin, head, t).unwrap();
            cps.push((size, cp.to_bytes()));
            heads.insert(size, (head, t));
        }
    }
    let mut w = BundleWriter::create(dir).unwrap();
    for l in &lines {
        w.push_line(l, |d| payload_bodies.get(d).cloned()).unwrap();
    }
    let manifest = w
        .finish(
            &ledger.did(),
            origin.as_str(),
            &hash_to_hex(&range.root()),
            &cps,
        )
        .unwrap();

    let files = read_dir_files(dir);
    let parse_jsonl = |name: &str| -> Vec<Vec<u8>> {
        split_lines(files.get(name).unwrap())
            .0
            .into_iter()
            .map(|l| l.to_vec())
            .collect()
    };
    let credentials = parse_jsonl(bundle::CREDENTIALS)
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let payloads = parse_jsonl(bundle::PAYLOADS)
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let dids = parse_jsonl(bundle::DIDS)
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    Original {
        ledger: ledger.did(),
        files,
        lines,
        manifest,
        checkpoints: heads,
        credentials,
        payloads,
        dids,
    }
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            for c in std::fs::read_dir(e.path()).unwrap() {
                let c = c.unwrap();
                let rel = format!("{name}/{}", c.file_name().to_string_lossy());
                out.insert(rel, std::fs::read(c.path()).unwrap());
            }
        } else {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// The '\n'-terminated lines of a file, and whether a partial line follows.
fn split_lines(b: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    let partial = !lines.pop().unwrap_or_default().is_empty();
    (lines, partial)
}

// ---- mutations -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Target {
    Entries,
    Checkpoint(usize),
    Manifest,
    Credentials,
    Payloads,
    Dids,
}

#[derive(Clone, Debug)]
enum Op {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// Replace a byte by another of its class (digit, hex, base64url, …), so
    /// the file often still parses and the deeper checks are reached.
    SetSameClass(usize, usize),
    Insert(usize, u8),
    DeleteRange(usize, usize),
    Truncate(usize),
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    MoveLine(usize, usize),
    /// Replace one token (a run of `[A-Za-z0-9+/=_.:-]`: a hash, a DID, a
    /// timestamp, a signature, a number) with another token of the same file.
    SwapToken(usize, usize),
    DeleteFile,
    /// Copy this file to `checkpoints/<other size>.checkpoint`.
    CopyCheckpoint(u64),
}

#[derive(Clone, Debug)]
struct Mutation {
    target: Target,
    op: Op,
}

#[derive(Clone, Debug)]
struct Case {
    mutations: Vec<Mutation>,
    /// Rewrite the manifest (digests, size, root) to match the damaged files.
    fix_manifest: bool,
    pinned: bool,
    /// Also build the attestation report and an inclusion proof.
    report: bool,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        8 => Just(Target::Entries),
        3 => (0usize..3).prop_map(Target::Checkpoint),
        3 => Just(Target::Manifest),
        2 => Just(Target::Credentials),
        2 => Just(Target::Payloads),
        2 => Just(Target::Dids),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let p = any::<usize>();
    prop_oneof![
        3 => (p, 0u8..8).prop_map(|(a, b)| Op::FlipBit(a, b)),
        2 => (p, any::<u8>()).prop_map(|(a, b)| Op::SetByte(a, b)),
        4 => (p, p).prop_map(|(a, b)| Op::SetSameClass(a, b)),
        1 => (p, any::<u8>()).prop_map(|(a, b)| Op::Insert(a, b)),
        1 => (p, 1usize..16).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        1 => p.prop_map(Op::Truncate),
        2 => p.prop_map(Op::DeleteLine),
        1 => p.prop_map(Op::DuplicateLine),
        2 => (p, p).prop_map(|(a, b)| Op::SwapLines(a, b)),
        1 => (p, p).prop_map(|(a, b)| Op::MoveLine(a, b)),
        4 => (p, p).prop_map(|(a, b)| Op::SwapToken(a, b)),
        1 => Just(Op::DeleteFile),
        1 => (1u64..10).prop_map(Op::CopyCheckpoint),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            (target(), op()).prop_map(|(target, op)| Mutation { target, op }),
            1..=3,
        ),
        any::<bool>(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(mutations, fix_manifest, pinned, report)| Case {
            mutations,
            fix_manifest,
            pinned,
            report,
        })
}

fn class_of(b: u8) -> &'static [u8] {
    match b {
        b'0'..=b'9' => b"0123456789",
        b'a'..=b'f' => b"0123456789abcdef",
        b'A'..=b'Z' | b'g'..=b'z' | b'_' | b'-' => {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        }
        b'+' | b'/' | b'=' => b"+/=",
        _ => b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\n",
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=_.:-".contains(&b)
}

fn tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_token(b[i]) {
            let s = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

fn edit_lines(b: &mut Vec<u8>, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let (lines, partial) = split_lines(b);
    let mut owned: Vec<Vec<u8>> = lines.into_iter().map(|l| l.to_vec()).collect();
    let tail = if partial {
        b[b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1)..].to_vec()
    } else {
        Vec::new()
    };
    f(&mut owned);
    let mut out = Vec::new();
    for l in owned {
        out.extend(l);
        out.push(b'\n');
    }
    out.extend(tail);
    *b = out;
}

/// The damaged bundle: relative path → bytes.
type Files = BTreeMap<String, Vec<u8>>;

fn target_path(files: &Files, t: Target) -> Option<String> {
    Some(match t {
        Target::Entries => bundle::ENTRIES.into(),
        Target::Manifest => bundle::MANIFEST.into(),
        Target::Credentials => bundle::CREDENTIALS.into(),
        Target::Payloads => bundle::PAYLOADS.into(),
        Target::Dids => bundle::DIDS.into(),
        Target::Checkpoint(i) => {
            let cps: Vec<&String> = files
                .keys()
                .filter(|k| k.starts_with("checkpoints/"))
                .collect();
            if cps.is_empty() {
                return None;
            }
            cps[i % cps.len()].clone()
        }
    })
}

fn apply(files: &mut Files, m: &Mutation) {
    let Some(path) = target_path(files, m.target) else {
        return;
    };
    if let Op::DeleteFile = m.op {
        files.remove(&path);
        return;
    }
    if let Op::CopyCheckpoint(size) = m.op {
        if let Some(b) = files.get(&path).cloned() {
            let to = format!(
                "{}/{}",
                bundle::CHECKPOINTS_DIR,
                bundle::checkpoint_file_name(size)
            );
            files.insert(to, b);
        }
        return;
    }
    let Some(b) = files.get_mut(&path) else {
        return;
    };
    let n = b.len();
    match m.op {
        Op::FlipBit(p, bit) if n > 0 => b[p % n] ^= 1 << bit,
        Op::SetByte(p, x) if n > 0 => b[p % n] = x,
        Op::SetSameClass(p, k) if n > 0 => {
            let class = class_of(b[p % n]);
            b[p % n] = class[k % class.len()];
        }
        Op::Insert(p, x) => b.insert(p % (n + 1), x),
        Op::DeleteRange(p, len) if n > 0 => {
            let s = p % n;
            b.drain(s..(s + len).min(n));
        }
        Op::Truncate(p) => b.truncate(p % (n + 1)),
        Op::DeleteLine(i) => edit_lines(b, |l| {
            if !l.is_empty() {
                let i = i % l.len();
                l.remove(i);
            }
        }),
        Op::DuplicateLine(i) => edit_lines(b, |l| {
            if !l.is_empty() {
                let i = i % l.len();
                let d = l[i].clone();
                l.insert(i, d);
            }
        }),
        Op::SwapLines(i, j) => edit_lines(b, |l| {
            if !l.is_empty() {
                let n = l.len();
                l.swap(i % n, j % n);
            }
        }),
        Op::MoveLine(i, j) => edit_lines(b, |l| {
            if !l.is_empty() {
                let x = l.remove(i % l.len());
                let n = l.len();
                l.insert(j % (n + 1), x);
            }
        }),
        Op::SwapToken(i, j) => {
            let t = tokens(b);
            if !t.is_empty() {
                let (s1, e1) = t[i % t.len()];
                let (s2, e2) = t[j % t.len()];
                let src = b[s2..e2].to_vec();
                b.splice(s1..e1, src);
            }
        }
        _ => {}
    }
}

/// Rewrites the manifest as an attacker would: digests of the files present,
/// tree size and root of the complete lines of entries.jsonl.
fn fix_manifest(dir: &Path, files: &Files, orig: &Original) -> Vec<u8> {
    let mut m = orig.manifest.clone();
    m.files.clear();
    for rel in files.keys() {
        if rel != bundle::MANIFEST {
            m.files
                .insert(rel.clone(), digest_file(&dir.join(rel)).unwrap());
        }
    }
    let mut range = CompactRange::new();
    if let Some(b) = files.get(bundle::ENTRIES) {
        for l in split_lines(b).0 {
            range.push(Hash(entry_hash(l).0));
        }
    }
    m.tree_size = range.size();
    m.root = hash_to_hex(&range.root());
    let mut out = custody_ledger::canonical::to_canonical(&m).unwrap();
    out.push(b'\n');
    out
}

fn write_files(dir: &Path, files: &Files) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join(bundle::CHECKPOINTS_DIR)).unwrap();
    for (rel, b) in files {
        std::fs::write(dir.join(rel), b).unwrap();
    }
}

// ---- the oracle ------------------------------------------------------------------------

/// Checks that a bundle the verifier called valid means what the original meant.
fn same_meaning(orig: &Original, files: &Files, v: &Verification) -> Result<(), String> {
    let get = |name: &str| files.get(name).map(Vec::as_slice).unwrap_or_default();
    let entries = get(bundle::ENTRIES);
    let (lines, partial) = split_lines(entries);
    let k = lines.len();
    if partial {
        return Err("valid with a partial last line".into());
    }
    if k == 0 || k > orig.lines.len() {
        return Err(format!("valid with {k} entries"));
    }
    for (i, l) in lines.iter().enumerate() {
        if *l != orig.lines[i].as_slice() {
            return Err(format!("entry {i} differs: {}", String::from_utf8_lossy(l)));
        }
    }
    if !orig.checkpoints.contains_key(&(k as u64)) {
        return Err(format!("valid with {k} entries, not a checkpointed size"));
    }
    if v.tree_size != k as u64 {
        return Err(format!("reported tree size {} for {k} lines", v.tree_size));
    }
    let mut largest = 0;
    for (rel, b) in files.iter().filter(|(r, _)| r.starts_with("checkpoints/")) {
        if !rel.ends_with(".checkpoint") {
            continue;
        }
        let cp = SignedCheckpoint::parse(b).map_err(|e| format!("{rel}: {e}"))?;
        let size = cp.head().size;
        match orig.checkpoints.get(&size) {
            Some((head, t)) if *head == cp.head() && *t == cp.time() => {}
            _ => return Err(format!("{rel}: not an original checkpoint")),
        }
        largest = largest.max(size);
    }
    if largest != k as u64 {
        return Err(format!("largest checkpoint {largest}, {k} entries"));
    }
    let records = |name: &str| -> Result<Vec<serde_json::Value>, String> {
        split_lines(get(name))
            .0
            .iter()
            .map(|l| serde_json::from_slice(l).map_err(|e| format!("{name}: {e}")))
            .collect()
    };
    let creds: Vec<CredentialRecord> = records(bundle::CREDENTIALS)?
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let want: Vec<CredentialRecord> = orig
        .credentials
        .iter()
        .filter(|c| c.seq.0 < k as u64)
        .cloned()
        .collect();
    if creds != want {
        return Err(format!("credentials differ: {creds:?}"));
    }
    let payloads: Vec<PayloadRecord> = records(bundle::PAYLOADS)?
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut it = orig.payloads.iter();
    for p in &payloads {
        // An ordered subset of the originals: records may only be dropped.
        if !it.any(|o| o == p) || p.seq.0 >= k as u64 {
            return Err(format!("payload record {p:?} is not an original"));
        }
    }
    for d in records(bundle::DIDS)? {
        let d: DidRecord = serde_json::from_value(d).map_err(|e| e.to_string())?;
        if !orig.dids.contains(&d) {
            return Err(format!("DID record {} is not an original", d.did));
        }
    }
    let m: Manifest = serde_json::from_slice(get(bundle::MANIFEST)).map_err(|e| e.to_string())?;
    if m.ledger != orig.ledger || m.origin != orig.manifest.origin {
        return Err("manifest names another ledger".into());
    }
    Ok(())
}

// ---- the test -----------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    unchanged: u64,
    valid: u64,
    valid_changed: u64,
    invalid: u64,
    unreadable: u64,
    refused: u64,
    by_check: BTreeMap<&'static str, u64>,
    /// For bundles changed but still valid: which files differed.
    valid_changes: BTreeMap<String, u64>,
}

fn cases() -> u32 {
    match std::env::var("CUSTODY_MUTATION_CASES") {
        Ok(s) => s.parse().expect("CUSTODY_MUTATION_CASES must be a number"),
        Err(_) => 10_000,
    }
}

fn run_case(
    dir: &Path,
    orig: &Original,
    c: &Case,
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let mut files = orig.files.clone();
    let (late, early): (Vec<&Mutation>, Vec<&Mutation>) = c
        .mutations
        .iter()
        .partition(|m| matches!(m.target, Target::Manifest));
    for m in early {
        apply(&mut files, m);
    }
    if c.fix_manifest {
        write_files(dir, &files);
        let m = fix_manifest(dir, &files, orig);
        files.insert(bundle::MANIFEST.into(), m);
    }
    for m in late {
        apply(&mut files, m);
    }
    write_files(dir, &files);

    let opts = VerifyOptions {
        ledger_key: c.pinned.then(|| orig.ledger.clone()),
        ..Default::default()
    };
    let result = verify_bundle(dir, &opts);
    let unchanged = files == orig.files;
    let mut t = tally.borrow_mut();
    t.cases += 1;
    t.unchanged += unchanged as u64;
    match &result {
        Err(_) => t.refused += 1,
        Ok(v) => {
            prop_assert_eq!(v.valid, v.checks.iter().all(|c| c.ok) && !v.unreadable);
            if v.valid {
                t.valid += 1;
                if !unchanged {
                    t.valid_changed += 1;
                    let mut changed: Vec<&str> = files
                        .keys()
                        .chain(orig.files.keys())
                        .filter(|k| files.get(*k) != orig.files.get(*k))
                        .map(String::as_str)
                        .collect();
                    changed.dedup();
                    changed.sort();
                    changed.dedup();
                    *t.valid_changes.entry(changed.join(" ")).or_default() += 1;
                }
                if let Err(why) = same_meaning(orig, &files, v) {
                    return Err(TestCaseError::fail(format!(
                        "verified as valid but means something else: {why}"
                    )));
                }
            } else if v.unreadable {
                t.unreadable += 1;
            } else {
                t.invalid += 1;
            }
            for ch in v.checks.iter().filter(|c| !c.ok) {
                *t.by_check.entry(ch.name).or_default() += 1;
            }
        }
    }
    drop(t);
    if unchanged {
        prop_assert!(
            matches!(&result, Ok(v) if v.valid),
            "the untouched bundle must verify: {:?}",
            result.as_ref().map(|v| v.to_text())
        );
    }
    if c.report {
        // Report and proofs over the damaged bundle: no panics; a proof that
        // checks names an original entry.
        let _ = build_report(dir, &opts).map(|(r, _)| {
            let _ = custody_verifier::render::markdown(&r);
            let _ = custody_verifier::render::html(&r);
        });
        for seq in [0u64, 4, 7] {
            if let Ok(p) = prove(dir, seq) {
                if let Ok(chk) = check_proof(&p, Some(&orig.ledger)) {
                    prop_assert_eq!(p.entry.as_bytes(), orig.lines[seq as usize].as_slice());
                    prop_assert_eq!(chk.seq, seq);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn mutated_bundles_never_panic_and_never_verify_as_something_else() {
    let t = tempfile::tempdir().unwrap();
    let orig = build(&t.path().join("original"), Vec::new());
    let v = verify_bundle(
        &t.path().join("original"),
        &VerifyOptions {
            ledger_key: Some(orig.ledger.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(v.valid, "{}", v.to_text());
    assert_eq!(v.stats.payloads_present, 2);
    assert_eq!(v.stats.payloads_redacted, 1);
    assert_eq!(orig.checkpoints.len(), 3);
    assert_eq!(orig.credentials.len(), 2);

    let dir: PathBuf = t.path().join("case");
    let tally = RefCell::new(Tally::default());
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let start = Instant::now();
    let result = runner.run(&case(), |c| run_case(&dir, &orig, &c, &tally));
    let took = start.elapsed();
    let t = tally.into_inner();
    println!(
        "{} mutation cases in {:.1} s: {} refused (unreadable), {} unreadable parts, {} invalid, \
         {} valid ({} of them changed, all with the original meaning), {} unchanged; failing checks: {:?}; \
         files changed in valid bundles: {:?}",
        t.cases,
        took.as_secs_f64(),
        t.refused,
        t.unreadable,
        t.invalid,
        t.valid,
        t.valid_changed,
        t.unchanged,
        t.by_check,
        t.valid_changes
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The mutations must reach the deep checks, not only the parsers.
    if n >= 1000 {
        for check in [
            "signatures",
            "chain",
            "sequence",
            "checkpoints",
            "payloads",
            "credentials",
            "manifest",
        ] {
            assert!(
                t.by_check.get(check).copied().unwrap_or(0) > 0,
                "no case failed the {check} check: the mutations are too shallow"
            );
        }
    }
}

// ---- forged bundles ------------------------------------------------------------------------

/// A correctly signed entry by a stranger, carrying a revocation it signed
/// itself whose `effective_at` is in year 10000 in UTC. Before the fix in
/// custody-identity (credential times are converted to UTC when verified, and
/// refused when that is out of range), `Authority::apply` converted it with
/// `to_offset` and the verifier panicked on this bundle.
#[test]
fn forged_revocation_with_an_unrepresentable_time_is_invalid_not_a_panic() {
    let stranger = key(9);
    let jws = sign_compact(
        &stranger,
        "custody-revocation+jwt",
        &json!({"type": "CustodyRevocation", "issuer": stranger.did().to_string(),
                "subject": key(4).did().to_string(), "reason": "x",
                "effective_at": "9999-12-31T00:12:00-23:48"}),
    )
    .unwrap();
    let mut e = Event::new(
        stranger.did(),
        ActorKind::Human,
        ActionType::new(actions::IDENTITY_REVOKE).unwrap(),
    );
    e.details.insert("revocation".into(), jws.into());
    e.client_time = ts(50);
    e.nonce = Nonce([0x99; 16]);
    let entry = Entry::new(Seq(0), EntryHash::ZERO, ts(51), e.sign(&stranger).unwrap());
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("b");
    let orig = build(&dir, vec![entry]);
    assert_eq!(orig.lines.len(), 9);
    let opts = VerifyOptions {
        ledger_key: Some(orig.ledger.clone()),
        ..Default::default()
    };
    let v = verify_bundle(&dir, &opts).unwrap();
    assert!(!v.valid);
    assert_eq!(v.check("authorization").unwrap().failing_seqs(), vec![8]);
    let _ = build_report(&dir, &opts).unwrap();

    // The same with a delegation whose window ends in year 10000 in UTC.
    let session = key(10);
    let djws = sign_compact(
        &stranger,
        "vc+jwt",
        &json!({"@context": ["https://www.w3.org/ns/credentials/v2"],
                "type": ["VerifiableCredential", "CustodyDelegation"], "id": "urn:uuid:x",
                "issuer": stranger.did().to_string(),
                "validFrom": "9999-12-31T00:00:00-23:00", "validUntil": "9999-12-31T00:12:00-23:48",
                "credentialSubject": {"id": session.did().to_string(), "agent": "a",
                                      "scopes": [], "context": "ci"}}),
    )
    .unwrap();
    let mut e = Event::new(
        session.did(),
        ActorKind::Agent,
        ActionType::new(actions::SESSION_START).unwrap(),
    );
    e.details.insert("delegation".into(), djws.into());
    e.session = Some(SessionId::new("urn:uuid:x").unwrap());
    e.on_behalf_of = Some(stranger.did());
    e.context = Some(Context::new("ci").unwrap());
    e.client_time = ts(50);
    e.nonce = Nonce([0x98; 16]);
    let start = Entry::new(Seq(0), EntryHash::ZERO, ts(51), e.sign(&session).unwrap());
    // An event of that session, matching the delegation in every field.
    let mut e = Event::new(
        session.did(),
        ActorKind::Agent,
        ActionType::new(actions::TOOL_CALL).unwrap(),
    );
    e.session = Some(SessionId::new("urn:uuid:x").unwrap());
    e.on_behalf_of = Some(stranger.did());
    e.context = Some(Context::new("ci").unwrap());
    e.client_time = ts(52);
    e.nonce = Nonce([0x97; 16]);
    let call = Entry::new(Seq(0), EntryHash::ZERO, ts(53), e.sign(&session).unwrap());
    let dir = t.path().join("c");
    let orig = build(&dir, vec![start, call]);
    let opts = VerifyOptions {
        ledger_key: Some(orig.ledger.clone()),
        ..Default::default()
    };
    let v = verify_bundle(&dir, &opts).unwrap();
    assert!(!v.valid);
    assert_eq!(v.check("authorization").unwrap().failing_seqs(), vec![8, 9]);
    assert!(v.check("credentials").unwrap().ok, "{}", v.to_text());
    let _ = build_report(&dir, &opts).unwrap();
}

// ---- inclusion proofs ------------------------------------------------------------------------

/// Damaged proof files: never a panic, and a proof that still checks names an
/// original entry at its original position.
#[test]
fn mutated_proofs_never_check_another_entry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("b");
    let orig = build(&dir, Vec::new());
    let proofs: Vec<InclusionProof> = (0..8).map(|seq| prove(&dir, seq).unwrap()).collect();
    for p in &proofs {
        check_proof(p, Some(&orig.ledger)).unwrap();
    }
    let strategy = (
        0usize..8,
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(seq, ops, pinned)| {
        let mut text = serde_json::to_vec(&proofs[seq]).unwrap();
        for (pos, x, kind) in ops {
            let n = text.len();
            let i = pos % n;
            match kind {
                0 => text[i] = x,
                1 => text[i] = class_of(text[i])[x as usize % class_of(text[i]).len()],
                _ => {
                    text.remove(i);
                }
            }
        }
        if let Ok(q) = serde_json::from_slice::<InclusionProof>(&text) {
            if let Ok(chk) = check_proof(&q, pinned.then_some(&orig.ledger)) {
                prop_assert_eq!(q.entry.as_bytes(), orig.lines[chk.seq as usize].as_slice());
                prop_assert_eq!(chk.ledger, orig.ledger.to_string());
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
