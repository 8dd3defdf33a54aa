//! A witness: cosigns a ledger's checkpoints, but only those that extend the
//! last one it cosigned.
//!
//! The witness keeps, per ledger origin, the last tree head it cosigned (a
//! small JSON file in its state directory). A new checkpoint is cosigned only
//! if it is signed by the pinned ledger key and is the same head, or a larger
//! tree with a valid RFC 9162 consistency proof from the remembered one (as
//! served by the broker's `GET /v1/proof/consistency`). A smaller tree
//! (rollback) or a different root at the same size (fork) is refused: that is
//! what makes a rewritten ledger detectable to anyone pinning this witness.
//! The first checkpoint of an origin is trusted on first use.

use std::path::{Path, PathBuf};

use custody_identity::{Did, KeyPair};
use custody_ledger::checkpoint::SignedCheckpoint;
use custody_ledger::merkle::{hash_from_hex, hash_to_hex, verify_consistency};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] custody_ledger::checkpoint::CheckpointError),
    #[error(
        "refused: tree size {new} is smaller than the {old} entries already cosigned (rollback)"
    )]
    Rollback { old: u64, new: u64 },
    #[error("refused: tree size {size} was cosigned with root {old}, this checkpoint has root {new} (fork)")]
    Fork { size: u64, old: String, new: String },
    #[error("refused: the tree grew from {old} to {new} entries; a consistency proof (--consistency) is needed")]
    NeedProof { old: u64, new: u64 },
    #[error("refused: the consistency proof from {old} to {new} entries does not verify")]
    BadProof { old: u64, new: u64 },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl WitnessError {
    /// A refusal (exit 1) rather than unreadable input (exit 2).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Rollback { .. }
                | Self::Fork { .. }
                | Self::NeedProof { .. }
                | Self::BadProof { .. }
        ) || matches!(self, Self::Checkpoint(e) if matches!(e,
            custody_ledger::checkpoint::CheckpointError::BadSignature
            | custody_ledger::checkpoint::CheckpointError::NotSigned(_)))
    }
}

/// What the witness remembers per origin.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    origin: String,
    size: u64,
    root: String,
}

/// The body of `GET /v1/proof/consistency`.
#[derive(Debug, Deserialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    pub path: Vec<String>,
}

fn state_file(dir: &Path, origin: &str) -> PathBuf {
    let safe: String = origin
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{safe}.json"))
}

/// Checks `checkpoint` against the ledger key and the witness's memory, and
/// returns it with this witness's cosignature added.
pub fn cosign(
    checkpoint: &[u8],
    ledger: &Did,
    witness: &KeyPair,
    state_dir: &Path,
    proof: Option<&ConsistencyProof>,
) -> Result<Vec<u8>, WitnessError> {
    let mut cp = SignedCheckpoint::parse(checkpoint)?;
    cp.verify(&ledger.public_key())?;
    let head = cp.head();
    let path = state_file(state_dir, cp.origin().as_str());
    let state_err = |reason: String| WitnessError::State {
        path: path.clone(),
        reason,
    };
    let seen: Option<Seen> = match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| state_err(e.to_string()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(state_err(e.to_string())),
    };
    if let Some(s) = &seen {
        let old_root = hash_from_hex(&s.root).map_err(|e| state_err(e.to_string()))?;
        if head.size < s.size {
            return Err(WitnessError::Rollback {
                old: s.size,
                new: head.size,
            });
        }
        if head.size == s.size && head.root != old_root {
            return Err(WitnessError::Fork {
                size: s.size,
                old: s.root.clone(),
                new: hash_to_hex(&head.root),
            });
        }
        if head.size > s.size && s.size > 0 {
            let bad = || WitnessError::BadProof {
                old: s.size,
                new: head.size,
            };
            let p = proof.ok_or(WitnessError::NeedProof {
                old: s.size,
                new: head.size,
            })?;
            if p.old_size != s.size || p.new_size != head.size {
                return Err(bad());
            }
            let hashes = p
                .path
                .iter()
                .map(|h| hash_from_hex(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad())?;
            verify_consistency(&hashes, head.size, head.root, s.size, old_root)
                .map_err(|_| bad())?;
        }
    }
    cp.cosign(witness, OffsetDateTime::now_utc())?;
    std::fs::create_dir_all(state_dir).map_err(|e| state_err(e.to_string()))?;
    let new = Seen {
        origin: cp.origin().as_str().to_string(),
        size: head.size,
        root: hash_to_hex(&head.root),
    };
    // Remember before answering: a crash must not let the witness forget.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&new).unwrap_or_default())
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| state_err(e.to_string()))?;
    Ok(cp.to_bytes())
}
