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
//! for a second already settled is refused rather than silently left out of every record.

use std::{collections::BTreeMap, sync::Mutex};

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

/// The usage reports, keyed `at ‖ stream ‖ digest` so a period is one range scan.
#[derive(Debug)]
pub(crate) struct UsageLog {
    tree: sled::Tree,
    /// The lowest second still accepted: raised before a period's digests are read, under the
    /// same lock as every insert, so no report lands in a period after it was read.
    floor: Mutex<u64>,
}

fn storage(e: impl std::fmt::Display) -> UsageError {
    UsageError::Storage(e.to_string())
}

impl UsageLog {
    /// The log in `db`, accepting seconds after `settled_through`.
    pub(crate) fn open(db: &sled::Db, settled_through: u64) -> Result<Self, sled::Error> {
        Ok(Self {
            tree: db.open_tree("settlement.usage")?,
            floor: Mutex::new(settled_through.saturating_add(1)),
        })
    }

    /// Records `digest` for `stream` at second `at`.
    pub(crate) fn record(&self, stream: u64, at: u64, digest: B256) -> Result<(), UsageError> {
        let floor = self.floor.lock().map_err(storage)?;
        if at < *floor {
            return Err(UsageError::Settled { at, settled_through: *floor - 1 });
        }
        self.tree.insert(key(at, stream, digest), &[]).map_err(storage)?;
        self.tree.flush().map_err(storage)?;
        Ok(())
    }

    /// Closes the seconds up to `end` to new reports and returns each stream's fold over
    /// `(start, end]`.
    pub(crate) fn close_period(
        &self,
        start: u64,
        end: u64,
    ) -> Result<BTreeMap<u64, B256>, UsageError> {
        {
            let mut floor = self.floor.lock().map_err(storage)?;
            *floor = (*floor).max(end.saturating_add(1));
        }
        let mut folds = BTreeMap::new();
        let from = start.saturating_add(1).to_be_bytes();
        let through = end.saturating_add(1).to_be_bytes();
        for entry in self.tree.range(from..through) {
            let (key, _) = entry.map_err(storage)?;
            let (at, stream, digest) = parse(&key).ok_or_else(|| storage("malformed usage key"))?;
            let fold: &mut B256 = folds.entry(stream).or_default();
            *fold = fold_usage(*fold, at, digest);
        }
        Ok(folds)
    }
}

fn key(at: u64, stream: u64, digest: B256) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..16].copy_from_slice(&stream.to_be_bytes());
    key[16..].copy_from_slice(digest.as_slice());
    key
}

fn parse(key: &[u8]) -> Option<(u64, u64, B256)> {
    let key: &[u8; 48] = key.try_into().ok()?;
    let at = u64::from_be_bytes(key[..8].try_into().ok()?);
    let stream = u64::from_be_bytes(key[8..16].try_into().ok()?);
    Some((at, stream, B256::from_slice(&key[16..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, UsageLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let log = UsageLog::open(&db, 100).expect("tree");
        (dir, log)
    }

    #[test]
    fn a_period_folds_its_streams_reports_in_order() {
        let (_dir, log) = log();
        let (a, b, c) = (B256::repeat_byte(0xa), B256::repeat_byte(0xb), B256::repeat_byte(0xc));
        log.record(1, 150, b).expect("recorded");
        log.record(1, 120, a).expect("recorded");
        log.record(1, 120, a).expect("a repeat changes nothing");
        log.record(2, 200, c).expect("recorded");
        log.record(1, 201, c).expect("next period");
        let folds = log.close_period(100, 200).expect("period");
        let expected = fold_usage(fold_usage(B256::ZERO, 120, a), 150, b);
        assert_eq!(folds.get(&1), Some(&expected), "by (at, digest), the repeat once");
        assert_eq!(folds.get(&2), Some(&fold_usage(B256::ZERO, 200, c)), "the end is inclusive");
        assert_eq!(folds.len(), 2);
        let next = log.close_period(200, 300).expect("next");
        assert_eq!(next.get(&1), Some(&fold_usage(B256::ZERO, 201, c)));
    }

    #[test]
    fn settled_seconds_are_refused() {
        let (_dir, log) = log();
        assert_eq!(
            log.record(1, 100, B256::ZERO),
            Err(UsageError::Settled { at: 100, settled_through: 100 })
        );
        log.close_period(100, 160).expect("period");
        assert_eq!(
            log.record(1, 160, B256::ZERO),
            Err(UsageError::Settled { at: 160, settled_through: 160 }),
            "closed as soon as the period is read"
        );
        log.record(1, 161, B256::ZERO).expect("after it");
    }

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
