//! Usage digests: a billing backend records, for a stream, digests of the usage it billed
//! (`stream_recordUsage`: a 32-byte digest of its own usage rows, and the second it belongs to).
//! Each settlement record carries the fold of its stream's digests in the period, so the
//! receipt commits to the usage behind the amount and the backend (or an auditor with its
//! rows) can recompute it:
//!
//! ```text
//! d = 0x00…00
//! for each report of the stream with period_start < at <= period_end, by (at, digest):
//!     d = keccak256(d ‖ uint64_be(at) ‖ digest)
//! usage_digest = d   (zero when nothing was reported)
//! ```
//!
//! A report is identified by (stream, at, digest): sending it again changes nothing. A report
//! for a second already settled is refused rather than silently left out of every record. The
//! reports are kept by the [`SettlementStore`](crate::SettlementStore).

use alloy::primitives::{B256, keccak256};

/// Why a usage report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `at` is in a period already settled.
    #[error("second {at} is already settled (reports must be after {settled_through})")]
    Settled {
        /// The report's second.
        at: u64,
        /// The last settled second.
        settled_through: u64,
    },
    /// The database.
    #[error("usage storage: {0}")]
    Storage(String),
}

/// One step of the fold (see the module docs).
pub fn fold_usage(previous: B256, at: u64, digest: B256) -> B256 {
    let mut input = [0u8; 72];
    input[..32].copy_from_slice(previous.as_slice());
    input[32..40].copy_from_slice(&at.to_be_bytes());
    input[40..].copy_from_slice(digest.as_slice());
    keccak256(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_binds_the_second_and_the_digest() {
        let d = B256::repeat_byte(1);
        assert_ne!(fold_usage(B256::ZERO, 1, d), fold_usage(B256::ZERO, 2, d));
        assert_ne!(fold_usage(B256::ZERO, 1, d), fold_usage(B256::ZERO, 1, B256::ZERO));
        let mut input = vec![0u8; 32];
        input.extend_from_slice(&7u64.to_be_bytes());
        input.extend_from_slice(d.as_slice());
        assert_eq!(fold_usage(B256::ZERO, 7, d), keccak256(&input));
    }
}
