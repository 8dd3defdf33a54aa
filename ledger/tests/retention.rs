//! Checkpoint retention in the store: the newest `keep_recent` checkpoints,
//! and of the older ones at most two per UTC day (the day's last, and its
//! last cosigned); cosignatures merged later count; reopening keeps the same
//! set; the latest is always the newest. The five-year bound is a unit test
//! in `ledger/src/store/checkpoints.rs` (no need for 2.6 million files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use custody_identity::KeyPair;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{leaf_hash, TreeHead};
use custody_ledger::store::{AcceptAll, RetentionPolicy, Store, StoreOptions, DEFAULT_KEEP_RECENT};
use time::{Date, Duration, OffsetDateTime};

struct Ledger {
    key: KeyPair,
    witness: KeyPair,
    origin: Origin,
    /// Every checkpoint ever saved: size → (UTC day, cosigned, latest note).
    history: BTreeMap<u64, (Date, bool, Vec<u8>)>,
}

impl Ledger {
    fn new() -> Self {
        let key = KeyPair::generate();
        Self {
            origin: Origin::for_ledger(&key.did()),
            key,
            witness: KeyPair::generate(),
            history: BTreeMap::new(),
        }
    }

    fn sign(&mut self, store: &Store<AcceptAll>, size: u64, at: OffsetDateTime) {
        let head = TreeHead {
            size,
            root: leaf_hash(&size.to_be_bytes()),
        };
        let note = SignedCheckpoint::sign(&self.key, &self.origin, head, at)
            .unwrap()
            .to_bytes();
        store.save_checkpoint(size, &note).unwrap();
        self.history.insert(size, (at.date(), false, note));
    }

    /// Merges a witness's cosignature into the stored note, as the broker's
    /// cosignature endpoint does.
    fn cosign(&mut self, store: &Store<AcceptAll>, size: u64) {
        let stored = store.checkpoint(size).unwrap().expect("kept");
        let mut cosigned = SignedCheckpoint::parse(&stored).unwrap();
        let at = cosigned.time();
        cosigned.cosign(&self.witness, at).unwrap();
        let mut cp = SignedCheckpoint::parse(&stored).unwrap();
        cp.merge_signatures(&cosigned).unwrap();
        let note = cp.to_bytes();
        store.save_checkpoint(size, &note).unwrap();
        let h = self.history.get_mut(&size).unwrap();
        h.1 = true;
        h.2 = note;
    }

    /// The rule, written out here independently of the store's code.
    fn expected(&self, keep_recent: usize) -> BTreeSet<u64> {
        let mut keep: BTreeSet<u64> = self
            .history
            .keys()
            .rev()
            .take(keep_recent)
            .copied()
            .collect();
        let mut days: BTreeMap<Date, (u64, Option<u64>)> = BTreeMap::new();
        for (size, (day, cosigned, _)) in &self.history {
            let d = days.entry(*day).or_insert((*size, None));
            d.0 = d.0.max(*size);
            if *cosigned {
                d.1 = Some(d.1.unwrap_or(0).max(*size));
            }
        }
        for (last, last_cosigned) in days.into_values() {
            keep.insert(last);
            keep.extend(last_cosigned);
        }
        keep
    }

    /// The store holds exactly the expected set, on disk too, each with the
    /// last note saved for it.
    fn check(&self, store: &Store<AcceptAll>, dir: &Path, keep_recent: usize) {
        let want = self.expected(keep_recent);
        let got = store.checkpoints().unwrap();
        let sizes: BTreeSet<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(sizes, want);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
        for (size, note) in &got {
            assert_eq!(note, &self.history[size].2, "note at {size}");
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let names: Vec<String> = want.iter().map(|s| format!("{s:020}.checkpoint")).collect();
        assert_eq!(files, names);
        let newest = *self.history.keys().last().unwrap();
        let (size, note) = store.latest_checkpoint().unwrap().unwrap();
        assert_eq!((size, &note), (newest, &self.history[&newest].2));
    }
}

fn start() -> OffsetDateTime {
    time::macros::datetime!(2026-01-01 00:30:00 UTC)
}

/// 1,500 checkpoints over 400 days (one every 6.4 hours), every fourth
/// cosigned right after it is signed; then an old day's last checkpoint is
/// cosigned late, which retires that day's earlier cosigned one.
#[test]
fn old_days_keep_their_last_and_last_cosigned_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), AcceptAll).unwrap();
    let mut l = Ledger::new();
    let step = Duration::days(400) / 1500;
    for i in 0..1500u64 {
        let size = 10 * (i + 1);
        l.sign(&s, size, start() + step * i as u32);
        if i % 4 == 1 {
            l.cosign(&s, size);
        }
    }
    l.check(&s, t.path(), DEFAULT_KEEP_RECENT);
    let kept = s.checkpoints().unwrap().len();
    let older_days: BTreeSet<Date> = l
        .history
        .iter()
        .rev()
        .skip(DEFAULT_KEEP_RECENT)
        .map(|(_, (d, _, _))| *d)
        .collect();
    assert!(kept > DEFAULT_KEEP_RECENT && kept <= DEFAULT_KEEP_RECENT + 2 * older_days.len());

    // A day, well past the recent ones, whose last checkpoint is not
    // cosigned but an earlier one is.
    let (day, last, earlier) = older_days
        .iter()
        .find_map(|day| {
            let of_day: Vec<(u64, bool)> = l
                .history
                .iter()
                .filter(|(_, (d, _, _))| d == day)
                .map(|(s, (_, c, _))| (*s, *c))
                .collect();
            let (last, last_cosigned) = *of_day.last()?;
            let earlier = of_day.iter().rev().find(|(_, c)| *c)?.0;
            (!last_cosigned).then_some((*day, last, earlier))
        })
        .expect("such a day");
    assert!(s.checkpoint(earlier).unwrap().is_some());
    l.cosign(&s, last);
    assert!(
        s.checkpoint(earlier).unwrap().is_none(),
        "{day}: {earlier} retired"
    );
    l.check(&s, t.path(), DEFAULT_KEEP_RECENT);

    // Reopening keeps the same set, and the next save applies the same rule.
    drop(s);
    let s = Store::open(t.path(), AcceptAll).unwrap();
    l.check(&s, t.path(), DEFAULT_KEEP_RECENT);
    l.sign(&s, 10 * 1501, start() + step * 1500);
    l.check(&s, t.path(), DEFAULT_KEEP_RECENT);
}

/// With a small window, every save applies the rule: after each one the
/// store holds exactly what the rule keeps of all checkpoints so far.
#[test]
fn every_save_applies_the_rule() {
    let t = tempfile::tempdir().unwrap();
    let keep_recent = 5;
    let options = StoreOptions {
        retention: RetentionPolicy { keep_recent },
        ..StoreOptions::default()
    };
    let s = Store::open_with(t.path(), AcceptAll, options).unwrap();
    let mut l = Ledger::new();
    for i in 0..60u64 {
        // Ten a day, 2.4 hours apart.
        l.sign(&s, i + 1, start() + Duration::minutes(144) * i as u32);
        if i % 7 == 2 {
            l.cosign(&s, i + 1);
        }
        l.check(&s, t.path(), keep_recent);
    }
    // Days 0-4 are older: each keeps its last and its last cosigned one
    // (the same checkpoint on day 0); day 5 is all within the window.
    assert_eq!(s.checkpoints().unwrap().len(), keep_recent + 1 + 2 * 4);
    // A smaller window at the next open applies from the next save on.
    drop(s);
    let options = StoreOptions {
        retention: RetentionPolicy { keep_recent: 1 },
        ..StoreOptions::default()
    };
    let s = Store::open_with(t.path(), AcceptAll, options).unwrap();
    l.check(&s, t.path(), keep_recent);
    l.sign(&s, 61, start() + Duration::minutes(144) * 60);
    l.check(&s, t.path(), 1);
    // With no window at all the newest is still kept: it is its day's last.
    drop(s);
    let options = StoreOptions {
        retention: RetentionPolicy { keep_recent: 0 },
        ..StoreOptions::default()
    };
    let s = Store::open_with(t.path(), AcceptAll, options).unwrap();
    l.sign(&s, 62, start() + Duration::minutes(144) * 61);
    l.check(&s, t.path(), 0);
}

/// A file under a checkpoint's name that is not that checkpoint (damage,
/// or someone else's doing) is never deleted: it may be evidence.
#[test]
fn files_that_are_not_checkpoints_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        retention: RetentionPolicy { keep_recent: 1 },
        ..StoreOptions::default()
    };
    let mut l = Ledger::new();
    {
        let s = Store::open_with(t.path(), AcceptAll, options).unwrap();
        l.sign(&s, 1, start());
    }
    let dir = t.path().join("checkpoints");
    std::fs::write(dir.join("00000000000000000002.checkpoint"), b"not a note").unwrap();
    // The note of size 1 under the name of size 3.
    std::fs::copy(
        dir.join("00000000000000000001.checkpoint"),
        dir.join("00000000000000000003.checkpoint"),
    )
    .unwrap();
    std::fs::write(dir.join("7.checkpoint"), b"not a checkpoint name").unwrap();
    let s = Store::open_with(t.path(), AcceptAll, options).unwrap();
    for i in 4..10 {
        l.sign(&s, i, start() + Duration::hours(i as i64));
    }
    let sizes: Vec<u64> = s.checkpoints().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(sizes, vec![2, 3, 9]);
    assert!(dir.join("7.checkpoint").exists());
}
