//! `custody-verify verify` names exactly what is wrong (FORMAT.md §9): a
//! readable bundle that breaks a rule exits 1 with that rule's check failing
//! at the entry concerned and, where the damage allows, nothing else; only a
//! bundle that cannot be read exits 2.
//!
//! Each case starts from a bundle exported by a real store, edits what it
//! tests, and then does what a forger holding the keys would: re-signs an
//! edited event with its actor's key, re-chains the lines after it and
//! signs a new checkpoint and manifest with the ledger key. So the one check
//! that is left to fail is the rule under test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custody_identity::{Delegation, KeyPair};
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::bundle::{
    self, digest_file, CredentialRecord, DidRecord, FileDigest, Manifest,
};
use custody_ledger::canonical::to_canonical;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::export::export_bundle;
use custody_ledger::merkle::{hash_to_hex, CompactRange, Hash, TreeHead};
use custody_ledger::store::Store;
use custody_ledger::{
    actions, entry_hash, ActionType, ActorKind, Context, Entry, EntryHash, Event, Seq, SessionId,
    Timestamp,
};
use serde_json::{json, Value};

fn ledger_key() -> KeyPair {
    KeyPair::from_seed(&[1u8; 32])
}

fn human() -> KeyPair {
    KeyPair::from_seed(&[2u8; 32])
}

/// The lines of a valid ledger written by a real store: genesis, then five
/// prompts by one human (so a line the verifier cannot read leaves the
/// human's DID named by the others).
fn store_lines(dir: &Path) -> Vec<Vec<u8>> {
    let (ledger, human) = (ledger_key(), human());
    let store = Store::open(&dir.join("data"), Authority::new(Some(ledger.did()))).unwrap();
    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS).unwrap(),
    );
    g.details = TrustRoots {
        admins: [human.did()].into(),
        delegators: [human.did()].into(),
        ..Default::default()
    }
    .to_details();
    store.append(g.sign(&ledger).unwrap()).unwrap();
    for i in 0..5 {
        let mut e = Event::new(
            human.did(),
            ActorKind::Human,
            ActionType::new("prompt").unwrap(),
        );
        e.details.insert("i".into(), i.into());
        store.append(e.sign(&human).unwrap()).unwrap();
    }
    let out = dir.join("exported");
    export_bundle(&store, &ledger, &Origin::for_ledger(&ledger.did()), &out).unwrap();
    lines_of(&out)
}

fn lines_of(bundle: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(bundle.join(bundle::ENTRIES)).unwrap();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Sets each canonical entry's `prev` to the entry hash of the line before
/// (`prev` is outside the signature); lines that are not canonical entries
/// are kept byte for byte, and their hash is what the next line chains to.
fn rechain(lines: &mut [Vec<u8>]) {
    let mut prev = EntryHash::ZERO;
    for l in lines.iter_mut() {
        if let Ok(mut e) = Entry::parse_line(l) {
            if e.prev != prev {
                e.prev = prev;
                *l = e.to_line().unwrap();
            }
        }
        prev = entry_hash(l);
    }
}

/// What a bundle writer would make of `lines` (taken as they are): the
/// credentials and DIDs of the lines that hold entries, a checkpoint of
/// every line signed by the ledger key under `origin`, and the manifest.
fn write_bundle_as(dir: &Path, lines: &[Vec<u8>], origin: &Origin) {
    let ledger = ledger_key();
    std::fs::create_dir_all(dir.join(bundle::CHECKPOINTS_DIR)).unwrap();
    let mut entries = Vec::new();
    let mut credentials = Vec::new();
    let mut dids = BTreeSet::from([ledger.did()]);
    let mut range = CompactRange::new();
    for (n, l) in lines.iter().enumerate() {
        entries.extend_from_slice(l);
        entries.push(b'\n');
        range.push(Hash(entry_hash(l).0));
        let Ok(read) = Entry::read_line(l) else {
            continue;
        };
        let ev = &read.value.event;
        dids.insert(ev.actor.clone());
        dids.extend(ev.on_behalf_of.clone());
        let credential = match ev.action.as_str() {
            actions::SESSION_START => ev.detail_str("delegation").map(|j| ("delegation", j)),
            actions::IDENTITY_REVOKE => ev.detail_str("revocation").map(|j| ("revocation", j)),
            _ => None,
        };
        if let Some((kind, jws)) = credential {
            let rec = CredentialRecord {
                kind: kind.into(),
                seq: Seq(n as u64),
                jws: jws.into(),
            };
            credentials.extend(to_canonical(&rec).unwrap());
            credentials.push(b'\n');
        }
    }
    let dids: Vec<u8> = dids
        .into_iter()
        .flat_map(|did| {
            let mut l = to_canonical(&DidRecord {
                document: did.document(),
                did,
            })
            .unwrap();
            l.push(b'\n');
            l
        })
        .collect();
    let size = lines.len() as u64;
    let head = TreeHead {
        size,
        root: range.root(),
    };
    let time = time::macros::datetime!(2026-11-24 19:30:00 UTC);
    let note = SignedCheckpoint::sign(&ledger, origin, head, time)
        .unwrap()
        .to_bytes();
    let cp = format!(
        "{}/{}",
        bundle::CHECKPOINTS_DIR,
        bundle::checkpoint_file_name(size)
    );
    for (rel, bytes) in [
        (bundle::ENTRIES, &entries),
        (bundle::CREDENTIALS, &credentials),
        (bundle::DIDS, &dids),
        (bundle::PAYLOADS, &Vec::new()),
        (cp.as_str(), &note),
    ] {
        std::fs::write(dir.join(rel), bytes).unwrap();
    }
    let manifest = Manifest {
        format: bundle::BUNDLE_FORMAT.into(),
        version: bundle::BUNDLE_VERSION,
        ledger: ledger.did(),
        origin: origin.as_str().into(),
        tree_size: size,
        root: hash_to_hex(&range.root()),
        created_at: Timestamp::parse("2026-11-24T19:30:00.000Z").unwrap(),
        files: [
            bundle::ENTRIES,
            bundle::CREDENTIALS,
            bundle::DIDS,
            bundle::PAYLOADS,
        ]
        .into_iter()
        .chain([cp.as_str()])
        .map(|rel| (rel.to_string(), digest_file(&dir.join(rel)).unwrap()))
        .collect(),
    };
    write_manifest(dir, &manifest);
}

fn write_bundle(dir: &Path, lines: &[Vec<u8>]) {
    write_bundle_as(dir, lines, &Origin::for_ledger(&ledger_key().did()));
}

fn write_manifest(dir: &Path, m: &Manifest) {
    let mut bytes = to_canonical(m).unwrap();
    bytes.push(b'\n');
    std::fs::write(dir.join(bundle::MANIFEST), bytes).unwrap();
}

fn read_manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(bundle::MANIFEST)).unwrap()).unwrap()
}

/// Lists `rel` in the manifest with its current digest.
fn relist(dir: &Path, rel: &str) {
    let mut m = read_manifest(dir);
    let d: FileDigest = digest_file(&dir.join(rel)).unwrap();
    m.files.insert(rel.into(), d);
    write_manifest(dir, &m);
}

/// `line` with its event edited as JSON and signed again by `key`: the
/// signature is over the prefix and the JCS form of the edited event,
/// whatever that event holds, as any holder of the key can produce.
fn resigned(line: &[u8], key: &KeyPair, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(line).unwrap();
    edit(&mut v["event"]);
    let mut msg = b"custody/event/v1\n".to_vec();
    msg.extend(to_canonical(&v["event"]).unwrap());
    v["sig"] = key.sign(&msg).to_base64url().into();
    to_canonical(&v).unwrap()
}

/// The same JSON with its entry-level members edited (nothing signed changes).
fn edited(line: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(line).unwrap();
    edit(&mut v);
    to_canonical(&v).unwrap()
}

fn custody_verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custody-verify"))
        .args(args)
        .output()
        .expect("run custody-verify")
}

/// Runs `verify --json --ledger-key` and returns the exit code, the output
/// and the failing checks with the seqs they name.
fn verify(dir: &Path) -> (Option<i32>, String, BTreeMap<String, Vec<Option<u64>>>) {
    let o = custody_verify(&[
        "verify",
        dir.to_str().unwrap(),
        "--json",
        "--ledger-key",
        ledger_key().did().as_str(),
    ]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains("panicked"), "{out}");
    let mut failing = BTreeMap::new();
    if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
        for c in v["checks"].as_array().into_iter().flatten() {
            if c["ok"] == false {
                let seqs = c["failures"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["seq"].as_u64())
                    .collect();
                failing.insert(c["name"].as_str().unwrap().to_string(), seqs);
            }
        }
    }
    (o.status.code(), out, failing)
}

/// Exactly one check fails, at the given seqs, and the verdict is exit 1.
fn assert_only(dir: &Path, check: &str, seqs: &[Option<u64>]) -> String {
    let (code, out, failing) = verify(dir);
    assert_eq!(code, Some(1), "{out}");
    let want = BTreeMap::from([(check.to_string(), seqs.to_vec())]);
    assert_eq!(failing, want, "{out}");
    out
}

struct Case {
    tmp: tempfile::TempDir,
    /// The store's lines, untouched.
    lines: Vec<Vec<u8>>,
    /// Bundles made so far (each gets its own directory).
    n: usize,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let lines = store_lines(tmp.path());
        Self { tmp, lines, n: 0 }
    }

    /// A fresh bundle directory holding `lines`, re-chained and re-signed.
    fn bundle(&mut self, mut lines: Vec<Vec<u8>>) -> PathBuf {
        self.n += 1;
        let dir = self.tmp.path().join(format!("b{}", self.n));
        rechain(&mut lines);
        write_bundle(&dir, &lines);
        dir
    }

    /// The bundle with line `i` replaced.
    fn with_line(&mut self, i: usize, line: Vec<u8>) -> PathBuf {
        let mut lines = self.lines.clone();
        lines[i] = line;
        self.bundle(lines)
    }
}

// ---- Task: exact verdicts for entries.jsonl ------------------------------------------------

#[test]
fn the_rewritten_but_unchanged_bundle_is_valid() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    let (code, out, failing) = verify(&dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(failing.is_empty());
}

/// A line re-encoded (spacing, key order, escaped characters) still holds
/// the signed entry: only `encoding` fails, at its seq, and every other
/// check still judges it (its signature verifies over the JCS form).
#[test]
fn a_reencoded_line_fails_encoding_at_its_seq_and_exits_1() {
    let mut c = Case::new();
    let line = String::from_utf8(c.lines[3].clone()).unwrap();
    assert!(line.contains("\"action\":\"prompt\""));
    let reordered = format!("{{\"v\":1,{}}}", &line[1..line.len() - 7]);
    for re in [
        line.replacen("\"seq\":3", "\"seq\": 3", 1),
        line.replacen("\"action\":\"prompt\"", "\"action\":\"\\u0070rompt\"", 1),
        reordered,
    ] {
        assert!(Entry::parse_line(re.as_bytes()).is_err(), "{re}");
        let dir = c.with_line(3, re.into_bytes());
        let out = assert_only(&dir, "encoding", &[Some(3)]);
        assert!(out.contains("canonical"), "{out}");
    }
}

#[test]
fn a_timestamp_in_another_form_fails_encoding_and_exits_1() {
    let mut c = Case::new();
    let human = human();
    let cases: Vec<Vec<u8>> = vec![
        // received_at is the ledger's, outside the signature.
        edited(&c.lines[2], |v| {
            v["received_at"] = "2026-11-24T19:20:00Z".into()
        }),
        edited(&c.lines[2], |v| {
            v["received_at"] = "2026-11-24T19:20:00.000+00:00".into()
        }),
        // client_time is signed: the event is signed again as it now reads.
        resigned(&c.lines[2], &human, |e| {
            e["client_time"] = "2026-11-24T19:20:00Z".into()
        }),
        resigned(&c.lines[2], &human, |e| {
            e["client_time"] = "2026-11-24T19:20:00.000+00:00".into()
        }),
    ];
    for line in cases {
        let dir = c.with_line(2, line);
        let out = assert_only(&dir, "encoding", &[Some(2)]);
        assert!(out.contains("timestamp"), "{out}");
    }
}

#[test]
fn an_unknown_member_fails_encoding_and_exits_1() {
    let mut c = Case::new();
    let human = human();
    let in_entry = edited(&c.lines[4], |v| v["witness"] = "x".into());
    let in_event = resigned(&c.lines[4], &human, |e| e["mood"] = "calm".into());
    for line in [in_entry, in_event] {
        let dir = c.with_line(4, line);
        let out = assert_only(&dir, "encoding", &[Some(4)]);
        assert!(out.contains("unknown field"), "{out}");
    }
}

/// A known member of the wrong type (or a value that is not of its type,
/// such as a DID that is not a did:key) is a readable line that breaks
/// §4: `encoding`, exit 1.
#[test]
fn a_wrong_type_for_a_known_member_fails_encoding_and_exits_1() {
    let mut c = Case::new();
    let human = human();
    let line = String::from_utf8(c.lines[1].clone()).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        edited(&c.lines[1], |v| v["seq"] = "1".into()),
        edited(&c.lines[1], |v| v["prev"] = json!(null)),
        resigned(&c.lines[1], &human, |e| e["details"] = json!([1])),
        resigned(&c.lines[1], &human, |e| e["actor_kind"] = "robot".into()),
        line.replacen("did:key:z6Mk", "did:key:z7Mk", 1)
            .into_bytes(),
    ];
    for bad in cases {
        let dir = c.with_line(1, bad);
        assert_only(&dir, "encoding", &[Some(1)]);
    }
}

#[test]
fn an_event_of_version_2_is_unreadable_and_named() {
    let mut c = Case::new();
    let line = resigned(&c.lines[2], &human(), |e| e["v"] = 2.into());
    let dir = c.with_line(2, line);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unsupported event version 2"), "{out}");
    assert!(out.contains("\"unreadable\": true"), "{out}");

    let line = edited(&c.lines[2], |v| v["v"] = 2.into());
    let dir = c.with_line(2, line);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unsupported entry version 2"), "{out}");
}

/// Even chained and checkpointed as the ledger would, a line that is not a
/// JSON object cannot be read.
#[test]
fn a_line_that_is_not_a_json_object_is_unreadable() {
    let mut c = Case::new();
    for bad in ["{\"event\":", "[1,2,3]", "\"prompt\"", "{\"a\":1}x"] {
        let dir = c.with_line(2, bad.as_bytes().to_vec());
        let (code, out, failing) = verify(&dir);
        assert_eq!(code, Some(2), "{bad}: {out}");
        assert!(out.contains("not a JSON object"), "{bad}: {out}");
        assert_eq!(failing.get("encoding"), Some(&vec![Some(2)]), "{out}");
    }
}

/// The rest of the ledger is still judged after a line that is not an
/// entry: its hash extends the chain and the tree, and a later forged entry
/// is still caught.
#[test]
fn checks_go_on_after_a_line_that_is_not_an_entry() {
    let mut c = Case::new();
    let mut lines = c.lines.clone();
    lines[1] = edited(&lines[1], |v| v["extra"] = 1.into());
    // Line 4: its event edited without signing it again.
    lines[4] = edited(&lines[4], |v| v["event"]["details"]["i"] = 99.into());
    let dir = c.bundle(lines.clone());
    let (code, out, failing) = verify(&dir);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        failing,
        BTreeMap::from([
            ("encoding".to_string(), vec![Some(1)]),
            ("signatures".to_string(), vec![Some(4)]),
        ]),
        "{out}"
    );

    // Not re-chained: the next line's prev names the old line's hash.
    let mut unchained = c.lines.clone();
    unchained[1] = lines[1].clone();
    let dir = c.tmp.path().join("unchained");
    write_bundle(&dir, &unchained);
    let (code, out, failing) = verify(&dir);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failing.get("chain"), Some(&vec![Some(2)]), "{out}");
    assert_eq!(failing.get("encoding"), Some(&vec![Some(1)]), "{out}");
}

/// credentials.jsonl, dids.jsonl and payloads.jsonl split the same way: a
/// line that is not a JSON object cannot be read (exit 2); a record in
/// another form, or an object that is not a record, fails the check that
/// owns the file (exit 1).
#[test]
fn record_files_split_unreadable_from_invalid_the_same_way() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    let dids = std::fs::read_to_string(dir.join(bundle::DIDS)).unwrap();
    let first = dids.lines().next().unwrap();
    let rest = &dids[first.len()..];

    let spaced = format!("{}{rest}", first.replacen("\"did\":", "\"did\": ", 1));
    std::fs::write(dir.join(bundle::DIDS), spaced).unwrap();
    relist(&dir, bundle::DIDS);
    let out = assert_only(&dir, "credentials", &[None]);
    assert!(out.contains("dids.jsonl line 0: not in canonical"), "{out}");

    std::fs::write(dir.join(bundle::DIDS), format!("{{\"did\"{rest}")).unwrap();
    relist(&dir, bundle::DIDS);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("dids.jsonl line 0: not a JSON object"),
        "{out}"
    );
    std::fs::write(dir.join(bundle::DIDS), &dids).unwrap();
    relist(&dir, bundle::DIDS);

    let record = format!(
        "{{\"body\":\"\",\"digest\":\"{}\",\"note\":1,\"salt\":\"\",\"seq\":1}}\n",
        "0".repeat(64)
    );
    std::fs::write(dir.join(bundle::PAYLOADS), record).unwrap();
    relist(&dir, bundle::PAYLOADS);
    let out = assert_only(&dir, "payloads", &[None]);
    assert!(out.contains("unknown field `note`"), "{out}");
}

// ---- Task: the rules of §1, §6, §7 are checks --------------------------------------------

#[test]
fn a_manifest_not_in_jcs_form_fails_manifest() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    let jcs = std::fs::read(dir.join(bundle::MANIFEST)).unwrap();
    let text = String::from_utf8(jcs.clone()).unwrap();
    let pretty = serde_json::to_string_pretty(&read_manifest(&dir)).unwrap() + "\n";
    for bad in [
        pretty,
        text.trim_end().to_string(),
        format!("{text}\n"),
        text.replacen("\"format\":", "\"format\": ", 1),
    ] {
        std::fs::write(dir.join(bundle::MANIFEST), &bad).unwrap();
        let out = assert_only(&dir, "manifest", &[None]);
        assert!(out.contains("JCS"), "{out}");
    }
}

#[test]
fn a_file_the_manifest_does_not_list_fails_manifest() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    for (rel, what) in [
        ("notes.txt", "not listed"),
        ("checkpoints/README", "not listed"),
        ("checkpoints/7.checkpoint", "not listed"),
    ] {
        std::fs::write(dir.join(rel), "x").unwrap();
        let out = assert_only(&dir, "manifest", &[None]);
        assert!(out.contains(rel) && out.contains(what), "{out}");
        // Listing it does not make it part of the bundle.
        let before = read_manifest(&dir);
        relist(&dir, rel);
        let out = assert_only(&dir, "manifest", &[None]);
        assert!(out.contains("not a file of the bundle layout"), "{out}");
        write_manifest(&dir, &before);
        std::fs::remove_file(dir.join(rel)).unwrap();
    }
    std::fs::create_dir(dir.join("extra")).unwrap();
    assert_only(&dir, "manifest", &[None]);
    std::fs::remove_dir(dir.join("extra")).unwrap();

    // A required file gone, and gone from the manifest too.
    std::fs::remove_file(dir.join(bundle::PAYLOADS)).unwrap();
    let mut m = read_manifest(&dir);
    m.files.remove(bundle::PAYLOADS);
    write_manifest(&dir, &m);
    let out = assert_only(&dir, "manifest", &[None]);
    assert!(out.contains("does not list payloads.jsonl"), "{out}");
}

/// An origin other than `custody/<multibase of the ledger DID>` fails
/// `manifest` even when every checkpoint carries it and the ledger key
/// signed them all.
#[test]
fn an_origin_not_derived_from_the_ledger_did_fails_manifest() {
    let c = Case::new();
    let dir = c.tmp.path().join("origin");
    write_bundle_as(&dir, &c.lines, &Origin::new("example.com/log").unwrap());
    let out = assert_only(&dir, "manifest", &[None]);
    assert!(out.contains("custody/<multibase"), "{out}");
}

/// FORMAT.md §9: which seq a checkpoint failure names.
#[test]
fn checkpoint_failures_name_the_documented_seq() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    let ledger = ledger_key();
    let origin = Origin::for_ledger(&ledger.did());
    let time = time::macros::datetime!(2026-11-24 19:30:00 UTC);
    let put = |size: u64, root: Hash| {
        let note = SignedCheckpoint::sign(&ledger, &origin, TreeHead { size, root }, time)
            .unwrap()
            .to_bytes();
        let rel = format!(
            "{}/{}",
            bundle::CHECKPOINTS_DIR,
            bundle::checkpoint_file_name(size)
        );
        std::fs::write(dir.join(&rel), note).unwrap();
        relist(&dir, &rel);
        rel
    };
    let remove = |rel: &str| {
        std::fs::remove_file(dir.join(rel)).unwrap();
        let mut m = read_manifest(&dir);
        m.files.remove(rel);
        write_manifest(&dir, &m);
    };
    // A root that is not the root of the first 3 entries: entry 2.
    let rel = put(3, Hash([7; 32]));
    assert_only(&dir, "checkpoints", &[Some(2)]);
    remove(&rel);
    // Size 0 has one root, SHA-256 of nothing; another names no entry.
    let rel = put(0, Hash([7; 32]));
    assert_only(&dir, "checkpoints", &[None]);
    remove(&rel);
    let rel = put(0, custody_ledger::merkle::EMPTY_HASH);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(0), "{out}");
    remove(&rel);
    // Beyond the bundle: the first entry it lacks, the line count.
    let n = c.lines.len() as u64;
    let rel = put(n + 2, Hash([7; 32]));
    assert_only(&dir, "checkpoints", &[Some(n)]);
    remove(&rel);
    // A note that does not verify names no entry.
    let rel = put(4, Hash([7; 32]));
    let note = std::fs::read_to_string(dir.join(&rel)).unwrap();
    let sig_at = note.rfind(' ').unwrap() + 1;
    let mut forged = note.into_bytes();
    forged[sig_at + 10] = if forged[sig_at + 10] == b'A' {
        b'B'
    } else {
        b'A'
    };
    std::fs::write(dir.join(&rel), &forged).unwrap();
    relist(&dir, &rel);
    assert_only(&dir, "checkpoints", &[None]);
    remove(&rel);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(0), "{out}");
}

/// FORMAT.md §8.1: the JWS header is exactly alg, kid and typ. A session
/// whose delegation carries any other header member does not start.
#[test]
fn a_delegation_with_an_extra_header_member_is_refused() {
    let mut c = Case::new();
    let human = human();
    let session = KeyPair::from_seed(&[4u8; 32]);
    let now = time::OffsetDateTime::now_utc();
    let d = Delegation::new(
        human.did(),
        session.did(),
        "claude-code".into(),
        vec!["repo-read".into()],
        "ci".into(),
        now - time::Duration::minutes(5),
        now + time::Duration::hours(1),
    )
    .unwrap();
    let good = d.issue(&human).unwrap();
    let payload = good.split('.').nth(1).unwrap().to_string();
    let with_header = |header: Value| {
        let h = URL_SAFE_NO_PAD.encode(to_canonical(&header).unwrap());
        let sig = human.sign(format!("{h}.{payload}").as_bytes());
        format!("{h}.{payload}.{}", sig.to_base64url())
    };
    let kid = human.did().verification_method();
    let extra = with_header(
        json!({"alg": "EdDSA", "kid": kid, "typ": "vc+jwt", "x5u": "https://example.com/k"}),
    );
    let plain = with_header(json!({"alg": "EdDSA", "kid": kid, "typ": "vc+jwt"}));
    assert_eq!(plain, good);

    let n = c.lines.len();
    let start = |jws: &str| {
        let mut e = Event::new(
            session.did(),
            ActorKind::Agent,
            ActionType::new(actions::SESSION_START).unwrap(),
        );
        e.session = Some(SessionId::new(d.id.clone()).unwrap());
        e.on_behalf_of = Some(human.did());
        e.context = Some(Context::new("ci").unwrap());
        e.details.insert("delegation".into(), jws.into());
        e.details.insert("agent".into(), "claude-code".into());
        Entry::new(
            Seq(n as u64),
            EntryHash::ZERO,
            Timestamp::now(),
            e.sign(&session).unwrap(),
        )
        .to_line()
        .unwrap()
    };
    let mut lines = c.lines.clone();
    lines.push(start(&good));
    let dir = c.bundle(lines);
    let (code, out, _) = verify(&dir);
    assert_eq!(code, Some(0), "{out}");

    let mut lines = c.lines.clone();
    lines.push(start(&extra));
    let dir = c.bundle(lines);
    let out = assert_only(&dir, "authorization", &[Some(n as u64)]);
    assert!(
        out.contains("delegation_invalid") && out.contains("JWS header"),
        "{out}"
    );
}

// ---- the inclusion proof file (FORMAT.md §11) ----------------------------------------------

#[test]
fn prove_writes_jcs_and_check_proof_holds_the_origin() {
    let mut c = Case::new();
    let dir = c.bundle(c.lines.clone());
    let proof = c.tmp.path().join("proof.json");
    let o = custody_verify(&[
        "prove",
        dir.to_str().unwrap(),
        "--seq",
        "3",
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let bytes = std::fs::read(&proof).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let mut jcs = to_canonical(&v).unwrap();
    jcs.push(b'\n');
    assert_eq!(bytes, jcs, "the proof file is one JCS object and a newline");
    let members: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        members,
        [
            "checkpoint",
            "entry",
            "format",
            "ledger",
            "path",
            "seq",
            "tree_size",
            "version"
        ]
    );
    assert_eq!(
        v["entry"].as_str().unwrap().as_bytes(),
        c.lines[3].as_slice()
    );

    let pin = ledger_key().did();
    let check = |v: &Value, name: &str| {
        let p = c.tmp.path().join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        let o = custody_verify(&[
            "check-proof",
            p.to_str().unwrap(),
            "--ledger-key",
            pin.as_str(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err)
    };
    // Any JSON text of the object is read (the file is not signed; what it
    // carries is).
    assert_eq!(check(&v, "pretty.json").0, Some(0));

    // A checkpoint the ledger key signed under another origin is not this
    // ledger's checkpoint.
    let cp = SignedCheckpoint::parse(v["checkpoint"].as_str().unwrap().as_bytes()).unwrap();
    let other = SignedCheckpoint::sign(
        &ledger_key(),
        &Origin::new("example.com/other").unwrap(),
        cp.head(),
        cp.time(),
    )
    .unwrap();
    let mut w = v.clone();
    w["checkpoint"] = String::from_utf8(other.to_bytes()).unwrap().into();
    let (code, err) = check(&w, "origin.json");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("origin"), "{err}");

    // An entry line of another version cannot be read; one that is not
    // canonical is invalid.
    let mut w = v.clone();
    let line = v["entry"].as_str().unwrap();
    w["entry"] = format!("{},\"v\":2}}", &line[..line.len() - 7]).into();
    let (code, err) = check(&w, "v2.json");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unsupported entry version 2"), "{err}");
    let mut w = v.clone();
    w["entry"] = line.replacen("\"seq\":3", "\"seq\": 3", 1).into();
    assert_eq!(check(&w, "spaced.json").0, Some(1));
    let mut w = v.clone();
    w["comment"] = "x".into();
    assert_eq!(check(&w, "member.json").0, Some(2));
}
