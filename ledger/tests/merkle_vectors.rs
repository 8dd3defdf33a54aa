//! RFC 6962 Merkle tree against the published reference vectors, and property
//! tests for inclusion and consistency proofs.
//!
//! Vectors: the RFC 6962 reference test data (8 leaves) used by
//! certificate-transparency's `merkle_tree_test` and Go's `sumdb/tlog` /
//! transparency-dev `merkle` test suites.

use custody_ledger::merkle::*;
use proptest::prelude::*;

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn h(s: &str) -> Hash {
    hash_from_hex(s).unwrap()
}

fn store(n: usize) -> MemoryHashStore {
    let mut s = MemoryHashStore::new();
    for l in &LEAVES[..n] {
        s.append(leaf_hash(&hex::decode(l).unwrap()));
    }
    s
}

#[test]
fn empty_tree_root() {
    assert_eq!(
        hash_to_hex(&CompactRange::new().root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn roots_match_reference() {
    let mut cr = CompactRange::new();
    for (i, l) in LEAVES.iter().enumerate() {
        cr.push(leaf_hash(&hex::decode(l).unwrap()));
        assert_eq!(hash_to_hex(&cr.root()), ROOTS[i], "size {}", i + 1);
        assert_eq!(hash_to_hex(&store(i + 1).root()), ROOTS[i]);
    }
}

#[test]
fn inclusion_proofs_match_reference() {
    let s = store(8);
    let cases: [(u64, u64, &[&str]); 4] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
    ];
    for (index, size, want) in cases {
        let got = inclusion_proof(&s, size, index).unwrap();
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(got, want, "leaf {index} in tree {size}");
        let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
        verify_inclusion(&got, size, h(ROOTS[size as usize - 1]), index, leaf).unwrap();
    }
}

#[test]
fn consistency_proofs_match_reference() {
    let s = store(8);
    let cases: [(u64, u64, &[&str]); 3] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, want) in cases {
        let got = consistency_proof(&s, new, old).unwrap();
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(got, want, "{old} -> {new}");
        verify_consistency(
            &got,
            new,
            h(ROOTS[new as usize - 1]),
            old,
            h(ROOTS[old as usize - 1]),
        )
        .unwrap();
    }
}

fn random_store(n: u64) -> (MemoryHashStore, Vec<Hash>) {
    let mut s = MemoryHashStore::new();
    let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    for l in &leaves {
        s.append(*l);
    }
    (s, leaves)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inclusion_verifies_and_any_change_fails(n in 1u64..600, pick in any::<u64>(), bit in 0usize..256) {
        let (s, leaves) = random_store(n);
        let index = pick % n;
        let root = s.root();
        let proof = inclusion_proof(&s, n, index).unwrap();
        prop_assert!(verify_inclusion(&proof, n, root, index, leaves[index as usize]).is_ok());

        let flip = |h: &Hash| { let mut x = *h; x.0[bit / 8] ^= 1 << (bit % 8); x };
        prop_assert!(verify_inclusion(&proof, n, flip(&root), index, leaves[index as usize]).is_err());
        prop_assert!(verify_inclusion(&proof, n, root, index, flip(&leaves[index as usize])).is_err());
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i]);
            prop_assert!(verify_inclusion(&p, n, root, index, leaves[index as usize]).is_err());
        }
        if !proof.is_empty() {
            prop_assert!(verify_inclusion(&proof[..proof.len() - 1], n, root, index, leaves[index as usize]).is_err());
        }
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(verify_inclusion(&longer, n, root, index, leaves[index as usize]).is_err());
        if n > 1 {
            let other = (index + 1) % n;
            prop_assert!(verify_inclusion(&proof, n, root, other, leaves[index as usize]).is_err());
        }
    }

    #[test]
    fn consistency_verifies_and_any_change_fails(n in 1u64..600, pick in any::<u64>(), bit in 0usize..256) {
        let (s, _) = random_store(n);
        let old = 1 + pick % n;
        let old_root = s.root_at(old).unwrap();
        let new_root = s.root();
        let proof = consistency_proof(&s, n, old).unwrap();
        prop_assert!(verify_consistency(&proof, n, new_root, old, old_root).is_ok());

        let flip = |h: &Hash| { let mut x = *h; x.0[bit / 8] ^= 1 << (bit % 8); x };
        prop_assert!(verify_consistency(&proof, n, flip(&new_root), old, old_root).is_err());
        prop_assert!(verify_consistency(&proof, n, new_root, old, flip(&old_root)).is_err());
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i]);
            prop_assert!(verify_consistency(&p, n, new_root, old, old_root).is_err());
        }
        let mut longer = proof.clone();
        longer.push(new_root);
        prop_assert!(verify_consistency(&longer, n, new_root, old, old_root).is_err());
    }
}
