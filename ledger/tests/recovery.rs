//! Recovery on open after a power loss: what the last, unacknowledged batch
//! can leave at the end of the last segment (zeros, a torn line, garbage,
//! lines after a lost page) is moved to `torn/` and the store opens with
//! every acknowledged entry; damage that cannot be that (below the index's
//! synced claim, in an earlier segment, longer than a batch) is refused
//! with the seq named and the files untouched.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use custody_identity::KeyPair;
use custody_ledger::store::{
    AcceptAll, Store, StoreError, StoreOptions, MAX_BATCH, MAX_TORN_BYTES, TORN,
};
use custody_ledger::{
    entry_hash, ActionType, ActorKind, Entry, EntryHash, Event, Seq, SignedEvent,
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

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    segment_files(dir)
        .into_iter()
        .flat_map(|p| lines_of(&fs::read(p).unwrap()))
        .collect()
}

/// Seq contiguity and the prev chain of every line on disk.
fn check_chain(lines: &[Vec<u8>]) {
    let mut prev = EntryHash::ZERO;
    for (i, l) in lines.iter().enumerate() {
        let e = Entry::parse_line(l).unwrap();
        assert_eq!(e.seq, Seq(i as u64));
        assert_eq!(e.prev, prev, "prev of {i}");
        prev = entry_hash(l);
    }
}

/// Appends `n` events one at a time and closes the store cleanly, so the
/// index has synced its claim over all of them.
fn write_entries(dir: &Path, k: &KeyPair, from: u64, n: u64) {
    let s = Store::open(dir, AcceptAll).unwrap();
    for i in from..from + n {
        assert_eq!(s.append(event(k, i)).unwrap().seq, Seq(i));
    }
    s.close().unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn torn_files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir.join(TORN)) {
        Ok(it) => it.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Opens a store whose last segment ends with `good` followed by `tail`, and
/// checks that exactly `tail` was moved aside as entry `seq` onwards, that
/// the store holds the same entries as before, and that appends continue the
/// chain.
fn expect_repaired(dir: &Path, k: &KeyPair, good: &[u8], tail: &[u8], seq: u64) {
    let seg = last_segment(dir);
    let before: Vec<Vec<u8>> = all_lines(dir);
    let s = Store::open(dir, AcceptAll).unwrap();
    assert_eq!(s.len(), seq);
    assert_eq!(
        fs::read(&seg).unwrap(),
        good,
        "cut back to the last good line"
    );
    let r = s.recovered();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].seq, seq);
    assert_eq!(r[0].bytes, tail.len() as u64);
    assert_eq!(r[0].segment, seg);
    assert!(r[0].saved_to.starts_with(dir.join(TORN)));
    let name = r[0]
        .saved_to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("{seq:020}-")) && name.ends_with(".bin"),
        "{name}"
    );
    assert_eq!(
        fs::read(&r[0].saved_to).unwrap(),
        tail,
        "the cut bytes are kept"
    );
    for (i, l) in before.iter().take(seq as usize).enumerate() {
        assert_eq!(&s.line(i as u64).unwrap(), l);
    }
    // Appends continue the chain from the last good entry.
    let a = s.append(event(k, 1000 + seq)).unwrap();
    assert_eq!(a.seq, Seq(seq));
    if seq > 0 {
        assert_eq!(a.entry.prev, entry_hash(&s.line(seq - 1).unwrap()));
    }
    s.close().unwrap();
    drop(s);
    check_chain(&all_lines(dir));
    // A second open finds nothing more to repair.
    let s = Store::open(dir, AcceptAll).unwrap();
    assert_eq!(s.len(), seq + 1);
    assert!(s.recovered().is_empty());
}

fn expect_corrupt(dir: &Path, seq: u64) -> String {
    let before: Vec<(PathBuf, Vec<u8>)> = segment_files(dir)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let why = match Store::open(dir, AcceptAll) {
        Err(e @ StoreError::Corrupt { seq: at, .. }) => {
            assert_eq!(at, seq, "{e}");
            e.to_string()
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a store with acknowledged entries damaged"),
    };
    for (p, b) in before {
        assert_eq!(fs::read(&p).unwrap(), b, "{} was changed", p.display());
    }
    assert!(torn_files(dir).is_empty());
    why
}

#[test]
fn a_zero_filled_tail_is_moved_aside() {
    for zeros in [4096usize, 64 << 10] {
        let t = tempfile::tempdir().unwrap();
        let k = KeyPair::generate();
        write_entries(t.path(), &k, 0, 20);
        let seg = last_segment(t.path());
        let good = fs::read(&seg).unwrap();
        let tail = vec![0u8; zeros];
        append_bytes(&seg, &tail);
        expect_repaired(t.path(), &k, &good, &tail, 20);
    }
}

#[test]
fn a_torn_line_followed_by_garbage_is_moved_aside() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 8);
    let seg = last_segment(t.path());
    let good = fs::read(&seg).unwrap();
    let mut tail = b"{\"event\":{\"action\":\"pro".to_vec();
    tail.extend_from_slice(&[0xff, 0x00, 0x13, 0x37].repeat(300));
    tail.extend_from_slice(b"\nnot json at all\n\x00\x00\x00");
    append_bytes(&seg, &tail);
    expect_repaired(t.path(), &k, &good, &tail, 8);
}

/// A valid entry after garbage, or at the right seq but from another chain,
/// is not an acknowledged entry of this ledger: it goes with the tail.
#[test]
fn lines_that_do_not_chain_go_with_the_tail() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 6);
    let seg = last_segment(t.path());
    let good = fs::read(&seg).unwrap();
    let lines = lines_of(&good);
    let mut tail = b"garbage\n".to_vec();
    tail.extend_from_slice(&lines[5]);
    tail.push(b'\n');
    append_bytes(&seg, &tail);
    expect_repaired(t.path(), &k, &good, &tail, 6);

    // Entry 7 of another ledger: right seq, complete, canonical, but its
    // prev is that ledger's.
    let other = tempfile::tempdir().unwrap();
    write_entries(other.path(), &k, 0, 8);
    let foreign = lines_of(&fs::read(last_segment(other.path())).unwrap())[7].clone();
    let good = fs::read(&seg).unwrap();
    let mut tail = foreign;
    tail.push(b'\n');
    append_bytes(&seg, &tail);
    expect_repaired(t.path(), &k, &good, &tail, 7);
}

/// The index synced its claim at 20 entries; 40 more lines were written
/// after it (the in-flight batch) and a page among them was lost. The
/// complete lines after that page are cut too: the batch was never synced.
#[test]
fn a_lost_page_inside_the_tail_takes_the_lines_after_it() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 20);
    let index_at_20 = tempfile::tempdir().unwrap();
    copy_dir(&t.path().join("index"), index_at_20.path());
    let seg = last_segment(t.path());
    let good_20 = fs::read(&seg).unwrap();
    write_entries(t.path(), &k, 20, 40);
    fs::remove_dir_all(t.path().join("index")).unwrap();
    copy_dir(index_at_20.path(), &t.path().join("index"));

    let mut bytes = fs::read(&seg).unwrap();
    let page = ((good_20.len() + 4096) / 4096 + 1) * 4096;
    assert!(page + 4096 < bytes.len() - 2000, "lines after the page");
    bytes[page..page + 4096].fill(0);
    fs::write(&seg, &bytes).unwrap();
    // The first damaged line is the one the page starts in.
    let first_bad = bytes[..page].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let seq = lines_of(&bytes[..first_bad]).len() as u64;
    assert!(seq > 20);
    expect_repaired(t.path(), &k, &bytes[..first_bad], &bytes[first_bad..], seq);
}

/// Entry 3 of 50 is damaged after the index synced all 50: acknowledged,
/// so the store refuses to open and changes nothing.
#[test]
fn damage_below_the_synced_claim_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 50);
    let seg = last_segment(t.path());
    let mut bytes = fs::read(&seg).unwrap();
    let start_of_3: usize = lines_of(&bytes)[..3].iter().map(|l| l.len() + 1).sum();
    bytes[start_of_3 + 10..start_of_3 + 20].copy_from_slice(b"XXXXXXXXXX");
    fs::write(&seg, &bytes).unwrap();
    let why = expect_corrupt(t.path(), 3);
    assert!(why.contains("synced 50"), "{why}");

    // Zeros over the same entry, the rest intact: the same.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[start_of_3..start_of_3 + 100].fill(0);
    fs::write(&seg, &bytes).unwrap();
    expect_corrupt(t.path(), 3);
}

/// Segments that end cleanly, but short of what the index synced, lost
/// acknowledged entries.
#[test]
fn segments_cut_short_of_the_synced_claim_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 50);
    let seg = last_segment(t.path());
    let bytes = fs::read(&seg).unwrap();
    let first_40: usize = lines_of(&bytes)[..40].iter().map(|l| l.len() + 1).sum();
    fs::write(&seg, &bytes[..first_40]).unwrap();
    let why = expect_corrupt(t.path(), 40);
    assert!(why.contains("synced 50"), "{why}");
}

/// A damaged region longer than one batch can leave unsynced is not a torn
/// write, even past the claim; exactly one batch's worth is.
#[test]
fn a_tail_longer_than_a_batch_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    write_entries(t.path(), &k, 0, 5);
    let seg = last_segment(t.path());
    let good = fs::read(&seg).unwrap().len() as u64;
    // Zeros, as a file system extends a file (sparse: cheap to make).
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(good + MAX_TORN_BYTES + 1).unwrap();
    let why = expect_corrupt(t.path(), 5);
    assert!(why.contains("more than one unsynced batch"), "{why}");

    f.set_len(good + MAX_TORN_BYTES).unwrap();
    drop(f);
    let s = Store::open(t.path(), AcceptAll).unwrap();
    assert_eq!(s.len(), 5);
    let r = s.recovered();
    assert_eq!((r[0].seq, r[0].bytes), (5, MAX_TORN_BYTES));
    assert_eq!(fs::metadata(&r[0].saved_to).unwrap().len(), MAX_TORN_BYTES);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good);
}

/// Only the last segment can hold a torn write: damage at the end of an
/// earlier one is refused even with no index claim at all; the same damage
/// in the last segment is repaired.
#[test]
fn damage_in_an_earlier_segment_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let small = StoreOptions {
        max_segment_bytes: 2000,
        ..StoreOptions::default()
    };
    {
        let s = Store::open_with(t.path(), AcceptAll, small).unwrap();
        for i in 0..30 {
            s.append(event(&k, i)).unwrap();
        }
    }
    let segs = segment_files(t.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let in_first = lines_of(&fs::read(&segs[0]).unwrap()).len() as u64;
    let first = fs::read(&segs[0]).unwrap();
    append_bytes(&segs[0], &[0u8; 4096]);
    let why = expect_corrupt(t.path(), in_first);
    assert!(why.contains("before the last"), "{why}");
    // Without the index (claim 0) too: the segment rule stands alone.
    fs::remove_dir_all(t.path().join("index")).unwrap();
    expect_corrupt(t.path(), in_first);
    // A torn line there is refused as well.
    fs::write(&segs[0], [&first[..], b"{\"event\":{"].concat()).unwrap();
    expect_corrupt(t.path(), in_first);
    fs::write(&segs[0], &first).unwrap();

    // In the last segment it is a torn tail.
    let last = segs.last().unwrap();
    let good = fs::read(last).unwrap();
    let before = all_lines(t.path()).len() as u64;
    append_bytes(last, &[0u8; 4096]);
    {
        let s = Store::open_with(t.path(), AcceptAll, small).unwrap();
        assert_eq!(s.len(), before);
        assert_eq!(s.recovered()[0].seq, before);
        assert_eq!(fs::read(last).unwrap(), good);
        s.append(event(&k, 99)).unwrap();
    }
    check_chain(&all_lines(t.path()));
}

/// One request larger than a batch is synced at least every MAX_BATCH
/// lines, so no more than MAX_TORN_BYTES are ever unsynced.
#[test]
fn a_large_request_is_synced_every_batch() {
    let t = tempfile::tempdir().unwrap();
    let k = KeyPair::generate();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let n = MAX_BATCH as u64 * 2 + 10;
    let rs = s.append_many((0..n).map(|i| event(&k, i)).collect());
    assert!(rs.iter().all(|r| r.is_ok()));
    assert_eq!(s.stats().syncs, 3);
    assert_eq!(s.len(), n);
    drop(s);
    check_chain(&all_lines(t.path()));
}
