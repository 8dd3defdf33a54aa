//! The store's signed checkpoints, `checkpoints/<size, 20 digits>.checkpoint`,
//! and which of them are kept.
//!
//! A broker signs a checkpoint every minute or every thousand entries for as
//! long as the ledger lives, an export carries every checkpoint the store
//! holds (each one a line of the bundle's manifest, capped at
//! [`MAX_MANIFEST_BYTES`](crate::bundle::MAX_MANIFEST_BYTES)), and the
//! verifier loads them all (at most
//! [`MAX_CHECKPOINTS`](crate::bundle::MAX_CHECKPOINTS)). Kept forever, five
//! years at the default period would be 2.6 million files. So the store keeps
//! ([`unkept`] is the rule):
//!
//! - the newest [`RetentionPolicy::keep_recent`] checkpoints (by tree size);
//! - of the others, per UTC day of the note's `time` line, the last checkpoint
//!   of that day and the last one of that day that carries a cosignature (a
//!   signature line besides the ledger's own): at most two per day;
//! - every file that does not parse as a checkpoint of its size. The store
//!   never writes one (it refuses such a note), so one is damage or someone
//!   else's doing, and deleting it would destroy the evidence.
//!
//! That bounds the count by `keep_recent + 2 × days`. The largest checkpoint
//! is always kept (it is the newest, and the last of its day), so an export
//! still has one that covers every entry. A day's last checkpoint is what an
//! auditor compares against a checkpoint published or witnessed that day; the
//! last cosigned one keeps the day's witness evidence.
//!
//! What retention needs of each file (its UTC day, whether it is cosigned) is
//! read once at open and then kept in memory with every save, so reads
//! ([`Checkpoints::latest`], which HTTP handlers call) never list the
//! directory. The rule is applied after every save: the set it is applied to
//! is bounded, and deleting what it no longer keeps is then incremental.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use time::Date;

use crate::bundle::checkpoint_file_name;
use crate::checkpoint::{SignedCheckpoint, MAX_CHECKPOINT_BYTES};
use crate::fsutil::{create_dir_durable, sync_dir};
use crate::store::{io, StoreError};

/// Default of [`RetentionPolicy::keep_recent`]: at the broker's default
/// period (one a minute) about 16 hours of checkpoints, every one of which a
/// witness or an inclusion-proof client may still ask about, while five years
/// stay at about 4,700 files.
pub const DEFAULT_KEEP_RECENT: usize = 1000;
/// Largest [`RetentionPolicy::keep_recent`] a configuration should ask for:
/// an export lists every kept checkpoint in its manifest (under 140 bytes a
/// line, capped at [`MAX_MANIFEST_BYTES`](crate::bundle::MAX_MANIFEST_BYTES)),
/// and this many plus five years of two a day still fit. The store itself
/// takes any value.
pub const MAX_KEEP_RECENT: usize = 3000;

/// Which checkpoints the store keeps (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest this many are kept whatever their day.
    pub keep_recent: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_recent: DEFAULT_KEEP_RECENT,
        }
    }
}

/// What retention knows of one stored checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointInfo {
    /// UTC day of the note's `time` line; `None` for a file that does not
    /// parse as the checkpoint of its size, which is always kept.
    pub(crate) day: Option<Date>,
    /// The note carries more than the ledger's own signature line.
    pub(crate) cosigned: bool,
}

impl CheckpointInfo {
    const UNREADABLE: Self = Self {
        day: None,
        cosigned: false,
    };

    /// Reads a note's day and cosignature count. Signatures are not checked
    /// (the store does not hold the witnesses' keys); a cosignature line
    /// only ever makes a checkpoint more likely to be kept.
    fn of(size: u64, note: &[u8]) -> Result<Self, String> {
        let cp = SignedCheckpoint::parse(note).map_err(|e| e.to_string())?;
        if cp.head().size != size {
            return Err(format!("the note is for tree size {}", cp.head().size));
        }
        Ok(Self {
            day: Some(cp.time().date()),
            cosigned: cp.signature_count() > 1,
        })
    }
}

/// The sizes the retention rule does not keep. `checkpoints` must be in
/// ascending order of size (a `BTreeMap`'s order), since the newest are the
/// last [`RetentionPolicy::keep_recent`] of them.
pub(crate) fn unkept<I>(checkpoints: I, policy: &RetentionPolicy) -> Vec<u64>
where
    I: ExactSizeIterator<Item = (u64, CheckpointInfo)> + Clone,
{
    // Per day: the largest size, and the largest cosigned size. By size
    // rather than by time, so a clock stepping back cannot make an older
    // checkpoint the day's last.
    let mut last: HashMap<Date, (u64, Option<u64>)> = HashMap::new();
    for (size, info) in checkpoints.clone() {
        let Some(day) = info.day else { continue };
        let l = last.entry(day).or_insert((size, None));
        l.0 = l.0.max(size);
        if info.cosigned {
            l.1 = Some(l.1.map_or(size, |c| c.max(size)));
        }
    }
    let recent_from = checkpoints.len().saturating_sub(policy.keep_recent);
    checkpoints
        .enumerate()
        .filter_map(|(i, (size, info))| {
            let kept = i >= recent_from
                || match info.day {
                    None => true,
                    Some(day) => last
                        .get(&day)
                        .is_some_and(|(any, cosigned)| *any == size || *cosigned == Some(size)),
                };
            (!kept).then_some(size)
        })
        .collect()
}

/// The checkpoint files and what retention knows of each.
pub(crate) struct Checkpoints {
    dir: PathBuf,
    policy: RetentionPolicy,
    known: BTreeMap<u64, CheckpointInfo>,
}

impl Checkpoints {
    /// Creates the directory if needed and reads every checkpoint in it once.
    /// Files under other names (a temporary file left by a crash, a stray
    /// copy) are not checkpoints and are left alone.
    pub(crate) fn open(dir: &Path, policy: RetentionPolicy) -> Result<Self, StoreError> {
        create_dir_durable(dir).map_err(io(dir))?;
        let mut known = BTreeMap::new();
        for item in fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(size) = name
                .strip_suffix(".checkpoint")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|s| checkpoint_file_name(*s) == name)
            else {
                continue;
            };
            let path = item.path();
            let mut note = Vec::new();
            // One byte past the limit tells an oversized file from one at it.
            File::open(&path)
                .and_then(|f| {
                    f.take(MAX_CHECKPOINT_BYTES as u64 + 1)
                        .read_to_end(&mut note)
                })
                .map_err(io(&path))?;
            let info = CheckpointInfo::of(size, &note).unwrap_or(CheckpointInfo::UNREADABLE);
            known.insert(size, info);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            policy,
            known,
        })
    }

    fn path(&self, size: u64) -> PathBuf {
        self.dir.join(checkpoint_file_name(size))
    }

    /// Stores the checkpoint note for `size` (temp file, fsync, rename, fsync
    /// of the directory), replacing one of the same size (a cosignature
    /// merged in), then deletes what the retention rule no longer keeps.
    /// Refuses a note that is not a checkpoint of tree size `size`, since
    /// retention could never classify it.
    pub(crate) fn save(&mut self, size: u64, note: &[u8]) -> Result<(), StoreError> {
        let info = CheckpointInfo::of(size, note)
            .map_err(|reason| StoreError::Checkpoint { size, reason })?;
        let path = self.path(size);
        let tmp = self.dir.join(format!(".{size:020}.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(note)
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.known.insert(size, info);
        self.prune()
    }

    /// Deletes the files the rule does not keep. A file that cannot be
    /// deleted stays known, so the next save tries again.
    fn prune(&mut self) -> Result<(), StoreError> {
        let gone = unkept(self.known.iter().map(|(s, i)| (*s, *i)), &self.policy);
        if gone.is_empty() {
            return Ok(());
        }
        let mut failed = None;
        for size in gone {
            let path = self.path(size);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    failed = Some(io(&path)(e));
                    break;
                }
            }
            self.known.remove(&size);
        }
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        failed.map_or(Ok(()), Err)
    }

    fn read(&self, size: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(size);
        fs::read(&path).map_err(io(&path))
    }

    /// The note at `size`, if the store keeps one.
    pub(crate) fn get(&self, size: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.known.contains_key(&size) {
            return Ok(None);
        }
        match self.read(size) {
            Ok(note) => Ok(Some(note)),
            Err(StoreError::Io { error, .. }) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The checkpoint with the largest size: one file read.
    pub(crate) fn latest(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.known.last_key_value() {
            Some((size, _)) => Ok(Some((*size, self.read(*size)?))),
            None => Ok(None),
        }
    }

    /// Every kept checkpoint, ascending by size.
    pub(crate) fn all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.known
            .keys()
            .map(|size| Ok((*size, self.read(*size)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{FileDigest, Manifest, MAX_MANIFEST_BYTES};
    use crate::canonical::to_canonical;

    /// Days from 2026-01-01 through 2030-12-31 plus a leap day: more than
    /// five years of 365 days.
    const FIVE_YEARS_DAYS: u64 = 1827;

    fn day(n: u64) -> Date {
        time::macros::date!(2026 - 01 - 01)
            .checked_add(time::Duration::days(n as i64))
            .expect("in range")
    }

    /// A ledger signing one checkpoint a minute for five years, every tenth
    /// cosigned, keeps at most `keep_recent + 2 × days` of them.
    #[test]
    fn five_years_at_the_default_period_stay_bounded() {
        const PER_DAY: u64 = 24 * 60;
        let all: Vec<(u64, CheckpointInfo)> = (0..FIVE_YEARS_DAYS * PER_DAY)
            .map(|i| {
                (
                    (i + 1) * 1000,
                    CheckpointInfo {
                        day: Some(day(i / PER_DAY)),
                        cosigned: i % 10 == 3,
                    },
                )
            })
            .collect();
        let policy = RetentionPolicy::default();
        let gone = unkept(all.iter().copied(), &policy);
        let kept = all.len() - gone.len();
        let bound = policy.keep_recent + 2 * FIVE_YEARS_DAYS as usize;
        assert!(kept <= bound, "{kept} kept, bound {bound}");
        // Each older day keeps its last and its last cosigned checkpoint.
        assert!(kept > bound - 10, "{kept} kept, expected close to {bound}");
        assert_eq!(
            gone.last(),
            Some(&all[all.len() - policy.keep_recent - 1].0)
        );
        // Applying the rule again to what it kept deletes nothing more.
        let gone: std::collections::HashSet<u64> = gone.into_iter().collect();
        let rest: Vec<_> = all.into_iter().filter(|(s, _)| !gone.contains(s)).collect();
        assert!(unkept(rest.iter().copied(), &policy).is_empty());
    }

    /// The manifest of a bundle holding five years of kept checkpoints
    /// stays under its cap, at the default window and at the largest one a
    /// configuration may ask for, with sizes as long as they get (20 digits)
    /// and every file as large as a checkpoint may be.
    #[test]
    fn five_years_of_kept_checkpoints_fit_in_a_manifest() {
        for keep_recent in [DEFAULT_KEEP_RECENT, MAX_KEEP_RECENT] {
            let count = keep_recent + 2 * FIVE_YEARS_DAYS as usize;
            let bytes = manifest_bytes(count);
            let per_line = bytes / count;
            assert!(
                (bytes as u64) < MAX_MANIFEST_BYTES,
                "{bytes} bytes ({per_line} per checkpoint) for {count} checkpoints; the cap is {MAX_MANIFEST_BYTES}"
            );
            eprintln!("{count} checkpoints: {bytes} bytes, about {per_line} per checkpoint");
        }
    }

    /// Bytes of a manifest listing `count` checkpoints besides the other files.
    fn manifest_bytes(count: usize) -> usize {
        let digest = || FileDigest {
            bytes: MAX_CHECKPOINT_BYTES as u64,
            sha256: "ab".repeat(32),
        };
        let mut files = BTreeMap::new();
        for name in [
            "credentials.jsonl",
            "dids.jsonl",
            "entries.jsonl",
            "payloads.jsonl",
        ] {
            files.insert(
                name.to_string(),
                FileDigest {
                    bytes: u64::MAX,
                    ..digest()
                },
            );
        }
        for i in 0..count as u64 {
            files.insert(
                format!(
                    "{}/{}",
                    crate::bundle::CHECKPOINTS_DIR,
                    checkpoint_file_name(u64::MAX - i)
                ),
                digest(),
            );
        }
        let key = custody_identity::KeyPair::from_seed(&[7u8; 32]);
        let manifest = Manifest {
            format: "custody-bundle".into(),
            version: 1,
            ledger: key.did(),
            origin: crate::checkpoint::Origin::for_ledger(&key.did())
                .as_str()
                .into(),
            tree_size: u64::MAX,
            root: "cd".repeat(32),
            created_at: crate::Timestamp::now(),
            files,
        };
        to_canonical(&manifest).expect("canonical").len() + 1
    }
}
