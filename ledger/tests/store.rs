//! The durable store against real files: chain continuity across reopen, group
//! commit under concurrency, torn-tail recovery, corruption detection, index
//! rebuild, gate refusals that change nothing, redaction, exclusive lock.

use std::sync::Arc;

use custody_identity::KeyPair;
use custody_ledger::authority::DenialCode;
use custody_ledger::bundle::payload_digest;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{self, MemoryHashStore, TreeHead};
use custody_ledger::store::{AcceptAll, AppendError, Gate, Rejection, Store, StoreError};
use custody_ledger::{
    entry_hash, ActionType, ActorKind, Entry, EntryHash, Event, PayloadRef, Seq, SignedEvent,
    Timestamp,
};

fn event(key: &KeyPair, i: u64) -> SignedEvent {
    let mut e = Event::new(
        key.did(),
        ActorKind::Human,
        ActionType::new("prompt").unwrap(),
    );
    e.details.insert("i".into(), i.into());
    e.sign(key).unwrap()
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn all_lines(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in segment_files(dir) {
        let b = std::fs::read(p).unwrap();
        out.extend(
            b.split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| l.to_vec()),
        );
    }
    out
}

/// Checks seq contiguity and the prev chain of the lines on disk.
fn check_chain(lines: &[Vec<u8>]) {
    let mut prev = EntryHash::ZERO;
    for (i, l) in lines.iter().enumerate() {
        let e = Entry::parse_line(l).unwrap();
        assert_eq!(e.seq, Seq(i as u64));
        assert_eq!(e.prev, prev, "prev of {i}");
        prev = entry_hash(l);
    }
}

#[test]
fn reopen_continues_the_chain() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    {
        let s = Store::open(t.path(), AcceptAll).unwrap();
        for i in 0..10 {
            assert_eq!(s.append(event(&k, i)).unwrap().seq, Seq(i));
        }
    }
    let s = Store::open(t.path(), AcceptAll).unwrap();
    assert_eq!(s.len(), 10);
    let a = s.append(event(&k, 10)).unwrap();
    assert_eq!(a.seq, Seq(10));
    assert_eq!(a.entry.prev, entry_hash(&s.line(9).unwrap()));
    drop(s);
    check_chain(&all_lines(t.path()));
}

#[test]
fn concurrent_appends_share_syncs() {
    let t = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(t.path(), AcceptAll).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let k = KeyPair::generate();
                (0..200)
                    .map(|i| {
                        let a = s.append(event(&k, i)).unwrap();
                        (a.seq.0, a.hash)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, EntryHash)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort_by_key(|a| a.0);
    assert_eq!(acked.len(), 3200);
    for (i, (seq, _)) in acked.iter().enumerate() {
        assert_eq!(*seq, i as u64);
    }
    let stats = s.stats();
    assert_eq!(stats.appends, 3200);
    assert!(
        stats.syncs < stats.appends,
        "group commit: {} syncs for {} appends",
        stats.syncs,
        stats.appends
    );
    eprintln!("syncs/appends = {}/{}", stats.syncs, stats.appends);
    let lines = all_lines(t.path());
    check_chain(&lines);
    for (seq, hash) in &acked {
        assert_eq!(entry_hash(&lines[*seq as usize]), *hash);
    }
}

#[test]
fn torn_final_line_is_truncated() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    {
        let s = Store::open(t.path(), AcceptAll).unwrap();
        for i in 0..5 {
            s.append(event(&k, i)).unwrap();
        }
    }
    let seg = segment_files(t.path()).pop().unwrap();
    let good = std::fs::read(&seg).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"event\":{\"act");
    std::fs::write(&seg, &torn).unwrap();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(std::fs::read(&seg).unwrap(), good);
    // Cut, but kept aside (ledger/tests/recovery.rs covers the rest).
    let r = s.recovered();
    assert_eq!((r.len(), r[0].seq, r[0].bytes), (1, 5, 14));
    assert_eq!(std::fs::read(&r[0].saved_to).unwrap(), b"{\"event\":{\"act");
    assert_eq!(s.append(event(&k, 5)).unwrap().seq, Seq(5));
    drop(s);
    check_chain(&all_lines(t.path()));
}

#[test]
fn corrupted_acknowledged_entry_is_a_hard_error() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    {
        let s = Store::open(t.path(), AcceptAll).unwrap();
        for i in 0..5 {
            s.append(event(&k, i)).unwrap();
        }
    }
    let seg = segment_files(t.path()).pop().unwrap();
    let text = String::from_utf8(std::fs::read(&seg).unwrap()).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2].replace("\"i\":2", "\"i\":7");
    std::fs::write(&seg, lines.join("\n") + "\n").unwrap();
    match Store::open(t.path(), AcceptAll) {
        Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 3, "the chain breaks at 3"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a corrupted store"),
    }
}

#[test]
fn index_is_rebuilt_from_segments() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let (head, proof, cons) = {
        let s = Store::open(t.path(), AcceptAll).unwrap();
        for i in 0..100 {
            s.append(event(&k, i)).unwrap();
        }
        (
            s.head().unwrap(),
            s.inclusion_proof(37, 100).unwrap(),
            s.consistency_proof(40, 100).unwrap(),
        )
    };
    std::fs::remove_dir_all(t.path().join("index")).unwrap();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    assert_eq!(s.head().unwrap(), head);
    assert_eq!(s.inclusion_proof(37, 100).unwrap(), proof);
    assert_eq!(s.consistency_proof(40, 100).unwrap(), cons);
    assert_eq!(s.seqs_for_actor(&k.did()).unwrap().len(), 100);
}

/// The index tables are derived state: whatever a crash or an editor left in
/// them (cut short, garbage past the claimed size, a changed hash), reopening
/// gives the same roots, proofs and lines as the segments say.
#[test]
fn damaged_index_tables_are_repaired_on_open() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let (head, proof) = {
        let s = Store::open(t.path(), AcceptAll).unwrap();
        for i in 0..300 {
            s.append(event(&k, i)).unwrap();
        }
        (s.head().unwrap(), s.inclusion_proof(123, 300).unwrap())
    };
    let hashes = t.path().join("index").join("hashes.table");
    let offsets = t.path().join("index").join("offsets.table");
    let full_hashes = std::fs::read(&hashes).unwrap();
    let full_offsets = std::fs::read(&offsets).unwrap();
    type Damage<'a> = Box<dyn Fn() + 'a>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "hashes cut short",
            Box::new(|| std::fs::write(&hashes, &full_hashes[..full_hashes.len() / 3]).unwrap()),
        ),
        (
            "offsets cut mid-record",
            Box::new(|| std::fs::write(&offsets, &full_offsets[..full_offsets.len() - 7]).unwrap()),
        ),
        (
            "garbage past the end",
            Box::new(|| {
                let mut h = full_hashes.clone();
                h.extend_from_slice(&[0xAB; 32 * 9]);
                std::fs::write(&hashes, h).unwrap();
                let mut o = full_offsets.clone();
                o.extend_from_slice(&[0xCD; 20 * 3]);
                std::fs::write(&offsets, o).unwrap();
            }),
        ),
        (
            "the last stored hash changed",
            Box::new(|| {
                let mut h = full_hashes.clone();
                let n = h.len();
                h[n - 1] ^= 1;
                std::fs::write(&hashes, h).unwrap();
            }),
        ),
        (
            "tables deleted",
            Box::new(|| {
                std::fs::remove_file(&hashes).unwrap();
                std::fs::remove_file(&offsets).unwrap();
            }),
        ),
    ];
    for (what, damage) in damages {
        damage();
        let s = Store::open(t.path(), AcceptAll).unwrap();
        assert_eq!(s.head().unwrap(), head, "{what}");
        assert_eq!(s.inclusion_proof(123, 300).unwrap(), proof, "{what}");
        let leaf = merkle::leaf_hash(&s.line(299).unwrap());
        merkle::verify_inclusion(
            &s.inclusion_proof(299, 300).unwrap(),
            300,
            head.root,
            299,
            leaf,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(s.seqs_for_actor(&k.did()).unwrap().len(), 300, "{what}");
        drop(s);
        assert_eq!(std::fs::read(&hashes).unwrap(), full_hashes, "{what}");
        assert_eq!(std::fs::read(&offsets).unwrap(), full_offsets, "{what}");
    }
}

/// Indexing runs behind the acknowledgement; every read that follows an
/// acknowledgement must still see the entry: its line, a root over it, a
/// proof of it, the actor index.
#[test]
fn reads_after_an_acknowledgement_see_the_entry() {
    let t = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Store::open(t.path(), AcceptAll).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let k = KeyPair::generate();
                for i in 0..150 {
                    let a = s.append(event(&k, i)).unwrap();
                    let seq = a.seq.0;
                    assert_eq!(s.line(seq).unwrap(), a.entry.to_line().unwrap());
                    let head = s.head().unwrap();
                    assert!(head.size > seq);
                    let leaf = merkle::leaf_hash(&s.line(seq).unwrap());
                    let p = s.inclusion_proof(seq, head.size).unwrap();
                    merkle::verify_inclusion(&p, head.size, head.root, seq, leaf).unwrap();
                    assert_eq!(s.seqs_for_actor(&k.did()).unwrap().len() as u64, i + 1);
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
    assert_eq!(s.len(), 1200);
}

#[test]
fn roots_and_proofs_agree_with_an_independent_tree() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let mut mem = MemoryHashStore::new();
    for i in 0..77 {
        s.append(event(&k, i)).unwrap();
        mem.append(merkle::leaf_hash(&s.line(i).unwrap()));
        assert_eq!(s.head().unwrap().root, mem.root());
    }
    for size in [1u64, 2, 33, 64, 77] {
        for idx in [0u64, size / 2, size - 1] {
            let p = s.inclusion_proof(idx, size).unwrap();
            assert_eq!(p, merkle::inclusion_proof(&mem, size, idx).unwrap());
            let leaf = merkle::leaf_hash(&s.line(idx).unwrap());
            merkle::verify_inclusion(&p, size, mem.root_at(size).unwrap(), idx, leaf).unwrap();
        }
    }
    let lines: Vec<_> = s.lines().unwrap().map(|l| l.unwrap()).collect();
    assert_eq!(lines.len(), 77);
    assert_eq!(lines[5], s.line(5).unwrap());
}

/// Refuses events whose `details.i` is odd.
struct OddRefuser;
impl Gate for OddRefuser {
    type Admitted = ();
    fn precheck(_: &SignedEvent, _: &[u8]) -> Result<(), Rejection> {
        Ok(())
    }
    fn admit(&mut self, e: &SignedEvent, _: Timestamp) -> Result<(), Rejection> {
        match e.event.details.get("i").and_then(|v| v.as_u64()) {
            Some(i) if i % 2 == 1 => Err(Rejection::new(DenialCode::Malformed, "odd")),
            _ => Ok(()),
        }
    }
    fn applied(&mut self, _: &Entry, _: ()) {}
    fn replay(&mut self, _: &Entry) {}
    fn fresh(&self) -> Self {
        OddRefuser
    }
}

#[test]
fn rejected_events_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let s = Store::open(t.path(), OddRefuser).unwrap();
    s.append(event(&k, 0)).unwrap();
    let before = std::fs::read(segment_files(t.path()).pop().unwrap()).unwrap();
    match s.append(event(&k, 1)) {
        Err(AppendError::Rejected(r)) => assert_eq!(r.message, "odd"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.len(), 1);
    assert_eq!(
        std::fs::read(segment_files(t.path()).pop().unwrap()).unwrap(),
        before
    );
    // In a batch, a refusal in the middle leaves its neighbours' chain intact.
    let rs = s.append_many(vec![event(&k, 2), event(&k, 3), event(&k, 4)]);
    assert!(rs[0].is_ok() && rs[1].is_err() && rs[2].is_ok());
    assert_eq!(rs[2].as_ref().unwrap().seq, Seq(2));
    drop(s);
    check_chain(&all_lines(t.path()));
}

#[test]
fn redaction_keeps_the_chain() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let body = b"cat ~/.aws/credentials";
    let salt = [9u8; 32];
    let digest = payload_digest(&salt, body);
    assert!(
        s.put_payload(digest, [8u8; 32], body).is_err(),
        "wrong salt refused"
    );
    s.put_payload(digest, salt, body).unwrap();
    let mut e = Event::new(
        k.did(),
        ActorKind::Agent,
        ActionType::new("tool.call").unwrap(),
    );
    e.payload = Some(PayloadRef {
        digest,
        size: body.len() as u64,
    });
    s.append(e.sign(&k).unwrap()).unwrap();
    let root = s.head().unwrap().root;
    assert_eq!(s.payload(&digest).unwrap().unwrap().1, body);
    assert!(s.redact(&digest).unwrap());
    assert!(s.payload(&digest).unwrap().is_none());
    assert_eq!(s.head().unwrap().root, root);
    drop(s);
    let s = Store::open(t.path(), AcceptAll).unwrap();
    assert!(s.payload(&digest).unwrap().is_none());
    assert_eq!(s.head().unwrap().root, root);
}

#[test]
fn a_second_open_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let _s = Store::open(t.path(), AcceptAll).unwrap();
    match Store::open(t.path(), AcceptAll) {
        Err(e @ StoreError::Locked(_)) => assert!(e.to_string().contains("in use")),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("opened twice"),
    }
}

#[test]
fn checkpoints_are_kept_in_order() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let k = KeyPair::generate();
    let origin = Origin::for_ledger(&k.did());
    // One fixed time: notes built twice must be the same bytes, whatever the clock does
    // between building and comparing.
    let signed_at = time::OffsetDateTime::now_utc();
    let note = |size: u64| {
        let head = TreeHead {
            size,
            root: merkle::leaf_hash(&size.to_be_bytes()),
        };
        SignedCheckpoint::sign(&k, &origin, head, signed_at)
            .unwrap()
            .to_bytes()
    };
    s.save_checkpoint(10, &note(10)).unwrap();
    s.save_checkpoint(2, &note(2)).unwrap();
    let cps = s.checkpoints().unwrap();
    assert_eq!(cps, vec![(2, note(2)), (10, note(10))]);
    assert_eq!(s.latest_checkpoint().unwrap().unwrap().0, 10);
    assert_eq!(s.checkpoint(2).unwrap(), Some(note(2)));
    assert_eq!(s.checkpoint(3).unwrap(), None);
    // What retention could not classify is refused, and nothing is written.
    for (size, bytes) in [(11, b"eleven".to_vec()), (12, note(13))] {
        match s.save_checkpoint(size, &bytes) {
            Err(StoreError::Checkpoint { size: at, .. }) => assert_eq!(at, size),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.checkpoints().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_dir(t.path().join("checkpoints"))
            .unwrap()
            .count(),
        2
    );
}

/// Signatures are checked at append (in the caller's thread), whatever the
/// gate: a forged, re-signed-by-another-key or malleated event is refused and
/// nothing is stored; the good events around it keep their order.
#[test]
fn bad_signatures_are_refused_at_append() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let good = event(&k, 0);
    let mut edited = event(&k, 1);
    edited.event.details.insert("i".into(), 99.into());
    let mut other_key = event(&k, 2);
    other_key.sig = KeyPair::generate().sign(b"whatever");
    let mut malleated = event(&k, 3);
    // S + L: the same signature in non-canonical form (verify_strict refuses it).
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, li) in malleated.sig.0[32..].iter_mut().zip(l) {
        let v = *b as u16 + li as u16 + carry;
        *b = v as u8;
        carry = v >> 8;
    }
    let last = event(&k, 4);
    let rs = s.append_many(vec![good, edited, other_key, malleated, last]);
    let codes: Vec<_> = rs
        .iter()
        .map(|r| match r {
            Ok(a) => format!("ok {}", a.seq.0),
            Err(AppendError::Rejected(rej)) => rej.code.as_str().to_string(),
            Err(e) => format!("{e}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            "ok 0",
            "bad_signature",
            "bad_signature",
            "bad_signature",
            "ok 1"
        ]
    );
    assert_eq!(s.len(), 2);
    assert_eq!(all_lines(t.path()).len(), 2);
}
