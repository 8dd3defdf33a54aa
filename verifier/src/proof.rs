//! Inclusion proofs for one entry that stand on their own.
//!
//! `custody-verify prove` writes a JSON file holding the entry line, its RFC 9162
//! inclusion path and the signed checkpoint it leads to; `check-proof` checks it
//! with nothing else: the actor's signature (the DID is the key), the leaf hash,
//! the path to the checkpoint's root, the checkpoint's signature by the ledger
//! key and its origin. An incident responder can hand one entry to a third
//! party without the rest of the ledger. FORMAT.md §11 specifies the file.

use std::path::Path;

use custody_identity::Did;
use custody_ledger::bundle::Bundle;
use custody_ledger::canonical::{to_canonical, Decoded};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{self, hash_from_hex, hash_to_hex, MemoryHashStore};
use custody_ledger::{entry_hash, Entry};
use serde::{Deserialize, Serialize};

pub const PROOF_FORMAT: &str = "custody-inclusion-proof";
pub const PROOF_VERSION: u64 = 1;
/// A proof file is an entry plus ~20 hashes and a checkpoint.
pub const MAX_PROOF_FILE_BYTES: u64 = 256 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub format: String,
    pub version: u64,
    pub ledger: Did,
    pub seq: u64,
    pub tree_size: u64,
    /// The entry's canonical line, as in entries.jsonl (without the newline).
    pub entry: String,
    /// Lowercase hex hashes, leaf to root (RFC 9162 §2.1.3 order).
    pub path: Vec<String>,
    /// The signed checkpoint note for `tree_size`.
    pub checkpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("cannot read: {0}")]
    Unreadable(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Builds the proof for `seq` against the bundle's latest checkpoint.
pub fn prove(dir: &Path, seq: u64) -> Result<InclusionProof, ProofError> {
    let b = Bundle::open(dir).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    let (size, note, rel) = b
        .checkpoints
        .last()
        .ok_or_else(|| ProofError::Unreadable("the bundle has no checkpoint".into()))?;
    let cp =
        SignedCheckpoint::parse(note).map_err(|e| ProofError::Unreadable(format!("{rel}: {e}")))?;
    cp.verify(&b.manifest.ledger.public_key())
        .map_err(|e| ProofError::Invalid(format!("{rel}: {e}")))?;
    if seq >= *size {
        return Err(ProofError::Unreadable(format!(
            "seq {seq} is not covered by the latest checkpoint (tree size {size})"
        )));
    }
    let mut store = MemoryHashStore::new();
    let mut line_at_seq = None;
    for item in b
        .entry_lines()
        .map_err(|e| ProofError::Unreadable(e.to_string()))?
    {
        let (n, line) = item.map_err(|e| ProofError::Unreadable(e.to_string()))?;
        if n >= *size {
            break;
        }
        if n == seq {
            line_at_seq = Some(line.clone());
        }
        store.append(merkle::Hash(entry_hash(&line).0));
    }
    if store.size() != *size {
        return Err(ProofError::Invalid(format!(
            "the checkpoint covers {size} entries but the bundle has {}",
            store.size()
        )));
    }
    if store.root() != cp.head().root {
        return Err(ProofError::Invalid(
            "the bundle's entries do not match its latest checkpoint".into(),
        ));
    }
    let line = line_at_seq.ok_or_else(|| ProofError::Unreadable(format!("no entry {seq}")))?;
    let entry = String::from_utf8(line)
        .map_err(|_| ProofError::Invalid(format!("entry {seq} is not UTF-8")))?;
    let path = merkle::inclusion_proof(&store, *size, seq)
        .map_err(|e| ProofError::Invalid(e.to_string()))?;
    let checkpoint = String::from_utf8(note.clone())
        .map_err(|_| ProofError::Invalid("checkpoint is not UTF-8".into()))?;
    Ok(InclusionProof {
        format: PROOF_FORMAT.into(),
        version: PROOF_VERSION,
        ledger: b.manifest.ledger.clone(),
        seq,
        tree_size: *size,
        entry,
        path: path.iter().map(hash_to_hex).collect(),
        checkpoint,
    })
}

/// The bytes `prove` writes: the proof's JCS form and a newline
/// (FORMAT.md §11).
pub fn proof_file_bytes(p: &InclusionProof) -> Result<Vec<u8>, ProofError> {
    let mut bytes = to_canonical(p).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// What a checked proof establishes.
#[derive(Clone, Debug, Serialize)]
pub struct ProofCheck {
    pub seq: u64,
    pub tree_size: u64,
    pub root: String,
    pub ledger: String,
    pub ledger_key_pinned: bool,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub received_at: String,
}

/// Reads a proof file.
pub fn read_proof(path: &Path) -> Result<InclusionProof, ProofError> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| ProofError::Unreadable(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_PROOF_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ProofError::Unreadable(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_PROOF_FILE_BYTES {
        return Err(ProofError::Unreadable(format!(
            "{}: larger than {MAX_PROOF_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let p: InclusionProof = serde_json::from_slice(&buf)
        .map_err(|e| ProofError::Unreadable(format!("{}: {e}", path.display())))?;
    if p.format != PROOF_FORMAT || p.version != PROOF_VERSION {
        return Err(ProofError::Unreadable(format!(
            "{}: not a {PROOF_FORMAT} version {PROOF_VERSION} file",
            path.display()
        )));
    }
    Ok(p)
}

/// Checks a proof on its own. `pinned` is the ledger DID the caller trusts; when
/// absent, the proof's own `ledger` field is used (and the caller should say so).
/// What cannot be read (the entry line not a JSON object, or of a version this
/// build does not read) is told apart before anything is checked, as in
/// `verify`; the checks then run in the order of FORMAT.md §11.
pub fn check_proof(p: &InclusionProof, pinned: Option<&Did>) -> Result<ProofCheck, ProofError> {
    let entry = match Entry::read_line(p.entry.as_bytes()) {
        Ok(Decoded {
            value,
            canonical: true,
        }) => value,
        Ok(Decoded {
            canonical: false, ..
        }) => {
            return Err(ProofError::Invalid(
                "entry: not in canonical form (RFC 8785)".into(),
            ))
        }
        Err(e) if e.is_unreadable() => return Err(ProofError::Unreadable(format!("entry: {e}"))),
        Err(e) => return Err(ProofError::Invalid(format!("entry: {e}"))),
    };
    let ledger = pinned.unwrap_or(&p.ledger);
    if pinned.is_some() && pinned != Some(&p.ledger) {
        return Err(ProofError::Invalid(format!(
            "the proof is for ledger {}, not the pinned {}",
            p.ledger, ledger
        )));
    }
    let cp = SignedCheckpoint::parse(p.checkpoint.as_bytes())
        .map_err(|e| ProofError::Invalid(format!("checkpoint: {e}")))?;
    // The key id binds the signature to the note's origin, but not the
    // origin to this ledger: a note the ledger key signed under another
    // name is not this ledger's checkpoint.
    let origin = Origin::for_ledger(ledger);
    if cp.origin() != &origin {
        return Err(ProofError::Invalid(format!(
            "checkpoint origin {:?} is not the ledger's {:?}",
            cp.origin().as_str(),
            origin.as_str()
        )));
    }
    cp.verify(&ledger.public_key())
        .map_err(|e| ProofError::Invalid(format!("checkpoint signature: {e}")))?;
    if cp.head().size != p.tree_size {
        return Err(ProofError::Invalid(format!(
            "the checkpoint is for tree size {}, the proof claims {}",
            cp.head().size,
            p.tree_size
        )));
    }
    if entry.seq.0 != p.seq {
        return Err(ProofError::Invalid(format!(
            "the entry is seq {}, the proof claims {}",
            entry.seq, p.seq
        )));
    }
    entry
        .verify_signature_in(p.entry.as_bytes())
        .map_err(|e| ProofError::Invalid(format!("entry signature: {e}")))?;
    let path = p
        .path
        .iter()
        .map(|h| hash_from_hex(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProofError::Invalid(format!("path: {e}")))?;
    let leaf = merkle::Hash(entry_hash(p.entry.as_bytes()).0);
    merkle::verify_inclusion(&path, p.tree_size, cp.head().root, p.seq, leaf)
        .map_err(|e| ProofError::Invalid(format!("inclusion path: {e}")))?;
    Ok(ProofCheck {
        seq: p.seq,
        tree_size: p.tree_size,
        root: hash_to_hex(&cp.head().root),
        ledger: ledger.to_string(),
        ledger_key_pinned: pinned.is_some(),
        actor: entry.event.actor.to_string(),
        actor_kind: entry.event.actor_kind.as_str().into(),
        action: entry.event.action.to_string(),
        received_at: entry.received_at.to_string(),
    })
}
