//! The RFC 6962 / RFC 9162 Merkle tree over ledger entries.
//!
//! `leaf = SHA-256(0x00 ‖ entry line)`, `node = SHA-256(0x01 ‖ left ‖ right)`.
//! Hashing, stored-hash layout and proofs come from Cloudflare's `tlog_tiles`
//! (a port of Go's `sumdb/tlog`); this module adds a streaming root computation
//! for the verifier ([`CompactRange`]), an in-memory store ([`MemoryHashStore`])
//! and wrappers that check untrusted inputs before `tlog_tiles` sees them.

pub use tlog_tiles::{Hash, HashReader, EMPTY_HASH};

use crate::LedgerError;

/// Longest proof accepted: a tree of 2^64 leaves needs at most 64 hashes for an
/// inclusion proof and 2·64 for a consistency proof; anything longer is malformed
/// and is refused before it is processed.
pub const MAX_PROOF_HASHES: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    #[error("index {index} is not in a tree of size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("sizes must satisfy 1 <= old ({old}) <= new ({new})")]
    BadSizes { old: u64, new: u64 },
    #[error("proof has {0} hashes, more than any valid proof")]
    TooLong(usize),
    #[error("proof does not verify")]
    Invalid,
    #[error("stored hashes unavailable: {0}")]
    Storage(String),
}

/// A tree size and its root.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// RFC 6962 leaf hash of an entry line.
pub fn leaf_hash(entry_bytes: &[u8]) -> Hash {
    tlog_tiles::record_hash(entry_bytes)
}

pub fn hash_to_hex(h: &Hash) -> String {
    hex::encode(h.0)
}

pub fn hash_from_hex(text: &str) -> Result<Hash, LedgerError> {
    let bad = || LedgerError::InvalidHex {
        what: "hash",
        expected: 64,
    };
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| bad())?;
    Ok(Hash(out))
}

/// The roots of the perfect subtrees covering leaves `0..size`, largest first:
/// enough to compute the tree's root and to extend it, in O(log n) memory.
#[derive(Clone, Debug, Default)]
pub struct CompactRange {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit to the lowest.
    peaks: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks, largest subtree first (one per set bit of the size).
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// A range saved with [`size`](Self::size) and [`peaks`](Self::peaks)
    /// (a consumer's state file); `None` unless there is exactly one peak per
    /// set bit of `size`.
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        (peaks.len() == size.count_ones() as usize).then_some(Self { size, peaks })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a peak that merges with the
        // new subtree, exactly as binary addition carries.
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.peaks.pop().expect("one peak per set bit");
            h = tlog_tiles::node_hash(left, h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// MTH of the leaves so far (RFC 6962 §2.1): the peaks folded right to left.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        match it.next() {
            None => EMPTY_HASH,
            Some(last) => it.fold(*last, |acc, left| tlog_tiles::node_hash(*left, acc)),
        }
    }
}

/// All stored hashes of a tree in memory, in `tlog_tiles` stored-hash order.
#[derive(Clone, Debug, Default)]
pub struct MemoryHashStore {
    hashes: Vec<Hash>,
    size: u64,
}

impl MemoryHashStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn append(&mut self, leaf: Hash) {
        let new = tlog_tiles::stored_hashes_for_record_hash(self.size, leaf, &*self)
            .expect("in-memory reads cannot fail");
        self.hashes.extend(new);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.size).expect("size is in range")
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        if size > self.size {
            return Err(MerkleError::OutOfRange {
                index: size,
                size: self.size,
            });
        }
        tlog_tiles::tree_hash(size, self).map_err(|e| MerkleError::Storage(e.to_string()))
    }
}

impl HashReader for MemoryHashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// The inclusion proof of leaf `index` in the tree of size `tree_size`.
pub fn inclusion_proof<R: HashReader>(
    r: &R,
    tree_size: u64,
    index: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= tree_size {
        return Err(MerkleError::OutOfRange {
            index,
            size: tree_size,
        });
    }
    tlog_tiles::prove_record(tree_size, index, r).map_err(|e| MerkleError::Storage(e.to_string()))
}

/// Checks that `leaf` is leaf `index` of the tree `(tree_size, root)`.
pub fn verify_inclusion(
    proof: &[Hash],
    tree_size: u64,
    root: Hash,
    index: u64,
    leaf: Hash,
) -> Result<(), MerkleError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(MerkleError::TooLong(proof.len()));
    }
    if index >= tree_size {
        return Err(MerkleError::OutOfRange {
            index,
            size: tree_size,
        });
    }
    tlog_tiles::check_record(&proof.to_vec(), tree_size, root, index, leaf)
        .map_err(|_| MerkleError::Invalid)
}

/// The consistency proof from `old_size` to `new_size`.
pub fn consistency_proof<R: HashReader>(
    r: &R,
    new_size: u64,
    old_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size == 0 || old_size > new_size {
        return Err(MerkleError::BadSizes {
            old: old_size,
            new: new_size,
        });
    }
    tlog_tiles::prove_tree(new_size, old_size, r).map_err(|e| MerkleError::Storage(e.to_string()))
}

/// Checks that the tree `(old_size, old_root)` is a prefix of `(new_size, new_root)`.
pub fn verify_consistency(
    proof: &[Hash],
    new_size: u64,
    new_root: Hash,
    old_size: u64,
    old_root: Hash,
) -> Result<(), MerkleError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(MerkleError::TooLong(proof.len()));
    }
    if old_size == 0 || old_size > new_size {
        return Err(MerkleError::BadSizes {
            old: old_size,
            new: new_size,
        });
    }
    tlog_tiles::check_tree(&proof.to_vec(), new_size, new_root, old_size, old_root)
        .map_err(|_| MerkleError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn compact_range_matches_tree_hash() {
        let mut cr = CompactRange::new();
        let mut ms = MemoryHashStore::new();
        assert_eq!(cr.root(), EMPTY_HASH);
        for (i, l) in leaves(300).into_iter().enumerate() {
            cr.push(l);
            ms.append(l);
            assert_eq!(cr.root(), ms.root(), "size {}", i + 1);
        }
    }

    #[test]
    fn untrusted_inputs_do_not_panic() {
        let h = Hash([0; 32]);
        assert!(verify_inclusion(&[], 0, h, 0, h).is_err());
        assert!(verify_inclusion(&vec![h; 200], 10, h, 1, h).is_err());
        assert!(verify_consistency(&[], 5, h, 0, h).is_err());
        assert!(verify_consistency(&[], 5, h, 6, h).is_err());
        assert!(verify_consistency(&[h, h, h], 5, h, 5, h).is_err());
    }
}
