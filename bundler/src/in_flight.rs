//! Bundles about to be sent, recorded durably first: the ops of a bundle broadcast just before
//! a kill -9 are still in the restored mempool, and without the record a restarted bundler would
//! put them in a second bundle at the next nonce (found by the fault-injection suite: one op,
//! two bundle transactions, the second reverting). The record holds them until the chain has
//! settled that nonce.

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};

/// What a sent bundle carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SentOps {
    /// Each op's hash and sender.
    pub ops: Vec<(B256, Address)>,
}

/// The durable records, keyed by the bundle transaction's nonce.
#[derive(Debug, Clone)]
pub(crate) struct SentBundles {
    tree: sled::Tree,
}

impl SentBundles {
    pub(crate) fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self { tree: db.open_tree("bundler.sent")? })
    }

    /// Records `ops` as sent at `nonce` and waits until the record is on disk: called before the
    /// transaction is broadcast.
    pub(crate) async fn record(&self, nonce: u64, ops: &[(B256, Address)]) -> Result<(), String> {
        let value =
            serde_json::to_vec(&SentOps { ops: ops.to_vec() }).map_err(|e| e.to_string())?;
        self.tree.insert(nonce.to_be_bytes(), value).map_err(|e| e.to_string())?;
        let tree = self.tree.clone();
        // A blocking flush on a blocking thread (sled 0.34's flush_async can hang: #1308).
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .map_err(|e| e.to_string())?
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The chain has settled `nonce` (mined, or nothing is pending at it): forget its record, if
    /// it still holds `ops` (a bundle sent again at a nonce nothing was pending at has a record
    /// of its own, which a watcher of the old one must not drop).
    pub(crate) fn remove_if(&self, nonce: u64, ops: &[(B256, Address)]) {
        let Ok(current) = serde_json::to_vec(&SentOps { ops: ops.to_vec() }) else { return };
        let _ =
            self.tree.compare_and_swap(nonce.to_be_bytes(), Some(current), None as Option<&[u8]>);
    }

    /// Every record, oldest nonce first (start-up).
    pub(crate) fn all(&self) -> Vec<(u64, SentOps)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, value)| {
                let nonce = u64::from_be_bytes(key.as_ref().try_into().ok()?);
                Some((nonce, serde_json::from_slice(&value).ok()?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopening_until_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ops = vec![(B256::repeat_byte(1), Address::repeat_byte(2))];
        {
            let db = sled::open(dir.path())?;
            let sent = SentBundles::open(&db)?;
            sent.record(7, &ops).await?;
            sent.record(8, &ops).await?;
            sent.remove_if(8, &ops);
            // Nonce 7 sent again with other ops: the old watcher's removal leaves it.
            let other = vec![(B256::repeat_byte(3), Address::repeat_byte(4))];
            sent.record(7, &other).await?;
            sent.remove_if(7, &ops);
            assert_eq!(sent.all(), vec![(7, SentOps { ops: other })]);
            sent.record(7, &ops).await?;
        }
        let db = settled_contracts::reopen_sled(dir.path())?;
        let sent = SentBundles::open(&db)?;
        assert_eq!(sent.all(), vec![(7, SentOps { ops })]);
        Ok(())
    }
}
