//! The batch's Merkle tree, as `SettlementAnchor.verify` (OpenZeppelin's `MerkleProof`) checks
//! it: leaves in stream-id order; each level pairs nodes `(2j, 2j + 1)` and hashes the two in
//! sorted order (`keccak256(min ‖ max)`); an odd last node is carried up unchanged. A proof is
//! the siblings met from the leaf to the root (none at levels where the node was carried).

use alloy::primitives::{B256, keccak256};

/// `keccak256` of the two nodes, smaller first.
fn hash_pair(a: &B256, b: &B256) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(low.as_slice());
    buf[32..].copy_from_slice(high.as_slice());
    keccak256(buf)
}

/// Every level of the tree over some leaves, the leaves first.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    /// The tree over `leaves` (at least one).
    pub fn new(leaves: Vec<B256>) -> Self {
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(a, b),
                    [a] => *a,
                    _ => B256::ZERO,
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// The root (zero for no leaves).
    pub fn root(&self) -> B256 {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_default()
    }

    /// How many leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The proof of leaf `index`.
    pub fn proof(&self, mut index: usize) -> Option<Vec<B256>> {
        if index >= self.len() {
            return None;
        }
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        Some(proof)
    }
}

/// Whether `proof` takes `leaf` to `root`.
pub fn verify_proof(leaf: B256, proof: &[B256], root: B256) -> bool {
    proof.iter().fold(leaf, |node, sibling| hash_pair(&node, sibling)) == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<B256> {
        (0..n).map(|i| keccak256(i.to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for n in 1..=33 {
            let tree = MerkleTree::new(leaves(n));
            for i in 0..n as usize {
                let proof = tree.proof(i).unwrap_or_default();
                assert!(verify_proof(tree.levels[0][i], &proof, tree.root()), "n {n} leaf {i}");
                assert!(!verify_proof(B256::repeat_byte(7), &proof, tree.root()), "n {n} forged");
            }
            assert!(tree.proof(n as usize).is_none());
        }
    }

    #[test]
    fn a_single_leaf_is_its_own_root() {
        let tree = MerkleTree::new(leaves(1));
        assert_eq!(tree.root(), tree.levels[0][0]);
        assert_eq!(tree.proof(0), Some(Vec::new()));
    }
}
