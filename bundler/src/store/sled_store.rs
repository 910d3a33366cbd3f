//! The bundler's state in the node's sled database (the embedded default: one node, which
//! always leads its bundler key, so nothing is fenced). The trees are those of earlier versions:
//! a node's pool, index and records carry over.

use alloy::primitives::{Address, B256};
use settled_contracts::{EntryPointVersion, UserOperation};

use super::{
    BundlerFuture, BundlerStore, BundlerStoreError, ReputationRow, SentOps, Submission, Verdict,
    store_error,
};
use crate::{pool::PoolEntry, reputation::ReputationCounts, service::MinedOp};

/// The bundler's trees in one sled database.
#[derive(Debug, Clone)]
pub struct SledBundler {
    pool: sled::Tree,
    mined: sled::Tree,
    /// `block hash ‖ op hash` of every indexed op: a reorg finds its blocks' ops directly.
    mined_by_block: sled::Tree,
    sent: sled::Tree,
    reputation: sled::Tree,
}

fn reputation_key(entry_point: EntryPointVersion, address: Address) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[0] = match entry_point {
        EntryPointVersion::V07 => 7,
        EntryPointVersion::V08 => 8,
    };
    key[1..].copy_from_slice(address.as_slice());
    key
}

fn from_reputation_key(key: &[u8]) -> Option<(EntryPointVersion, Address)> {
    let version = match key.first()? {
        7 => EntryPointVersion::V07,
        8 => EntryPointVersion::V08,
        _ => return None,
    };
    (key.len() == 21).then(|| (version, Address::from_slice(&key[1..])))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BundlerStoreError> {
    serde_json::to_vec(value).map_err(store_error)
}

impl SledBundler {
    /// The bundler's trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, BundlerStoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(store_error);
        Ok(Self {
            pool: tree("bundler.pool")?,
            mined: tree("bundler.mined")?,
            mined_by_block: tree("bundler.mined_by_block")?,
            sent: tree("bundler.sent")?,
            reputation: tree("bundler.reputation")?,
        })
    }

    /// Waits until every write to `tree` so far is on disk. A blocking `flush` on a blocking
    /// thread, not `flush_async`: concurrent `flush_async` calls can hang forever in sled 0.34
    /// (spacejam/sled#1308, seen here under load); concurrent flushes share one fsync.
    async fn durable(tree: &sled::Tree) -> Result<(), BundlerStoreError> {
        let tree = tree.clone();
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .map_err(store_error)?
            .map(drop)
            .map_err(store_error)
    }

    fn get_mined(&self, hash: B256) -> Result<Option<MinedOp>, BundlerStoreError> {
        let Some(value) = self.mined.get(hash).map_err(store_error)? else { return Ok(None) };
        serde_json::from_slice(&value).map(Some).map_err(store_error)
    }

    fn unindex(&self, blocks: &[B256]) -> Result<Vec<MinedOp>, BundlerStoreError> {
        let mut keys = Vec::new();
        for block in blocks {
            for item in self.mined_by_block.scan_prefix(block) {
                keys.push(item.map_err(store_error)?.0);
            }
        }
        let mut removed = Vec::new();
        for key in keys {
            self.mined_by_block.remove(&key).map_err(store_error)?;
            let Some(hash) = key.get(32..).map(B256::from_slice) else { continue };
            let Some(mined) = self.get_mined(hash)? else { continue };
            // Indexed again in a block that stayed: not this reorg's.
            if !blocks.contains(&mined.block_hash) {
                continue;
            }
            self.mined.remove(hash).map_err(store_error)?;
            if let Some(entry) = mined.requeued() {
                self.pool.insert(hash, json(&entry)?).map_err(store_error)?;
            }
            removed.push(mined);
        }
        Ok(removed)
    }
}

const NO_SUBMISSIONS: &str = "an embedded store has no other nodes to take ops from";

impl BundlerStore for SledBundler {
    fn pool(&self) -> BundlerFuture<'_, Vec<PoolEntry>> {
        Box::pin(async move {
            let mut entries = Vec::new();
            for item in self.pool.iter() {
                let (_, value) = item.map_err(store_error)?;
                match serde_json::from_slice::<PoolEntry>(&value) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => {
                        tracing::warn!(%error, "skipping an unreadable persisted UserOperation")
                    }
                }
            }
            Ok(entries)
        })
    }

    fn pool_entry(&self, hash: B256) -> BundlerFuture<'_, Option<PoolEntry>> {
        Box::pin(async move {
            let Some(value) = self.pool.get(hash).map_err(store_error)? else { return Ok(None) };
            serde_json::from_slice(&value).map(Some).map_err(store_error)
        })
    }

    fn admit<'a>(
        &'a self,
        entry: &'a PoolEntry,
        displaced: &'a [B256],
        answers: Option<i64>,
    ) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            if answers.is_some() {
                return Err(BundlerStoreError::Store(NO_SUBMISSIONS.into()));
            }
            for hash in displaced {
                self.pool.remove(hash).map_err(store_error)?;
            }
            self.pool.insert(entry.hash, json(entry)?).map_err(store_error)?;
            Self::durable(&self.pool).await
        })
    }

    fn remove<'a>(&'a self, hashes: &'a [B256]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            for hash in hashes {
                self.pool.remove(hash).map_err(store_error)?;
            }
            Ok(())
        })
    }

    fn clear_pool(&self) -> BundlerFuture<'_, ()> {
        Box::pin(async move { self.pool.clear().map_err(store_error) })
    }

    fn index_mined<'a>(&'a self, ops: &'a [MinedOp]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            for mined in ops {
                self.mined.insert(mined.hash, json(mined)?).map_err(store_error)?;
                let key = [mined.block_hash.as_slice(), mined.hash.as_slice()].concat();
                self.mined_by_block.insert(key, &[]).map_err(store_error)?;
                self.pool.remove(mined.hash).map_err(store_error)?;
            }
            Ok(())
        })
    }

    fn unindex_blocks<'a>(&'a self, blocks: &'a [B256]) -> BundlerFuture<'a, Vec<MinedOp>> {
        Box::pin(async move { self.unindex(blocks) })
    }

    fn mined(&self, hash: B256) -> BundlerFuture<'_, Option<MinedOp>> {
        Box::pin(async move { self.get_mined(hash) })
    }

    fn record_sent<'a>(&'a self, nonce: u64, sent: &'a SentOps) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            self.sent.insert(nonce.to_be_bytes(), json(sent)?).map_err(store_error)?;
            Self::durable(&self.sent).await
        })
    }

    fn remove_sent<'a>(&'a self, nonce: u64, ops: &'a [(B256, Address)]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let key = nonce.to_be_bytes();
            let Some(current) = self.sent.get(key).map_err(store_error)? else { return Ok(()) };
            let recorded: SentOps = serde_json::from_slice(&current).map_err(store_error)?;
            // Another bundle recorded at this nonce since is not this one's to forget.
            if recorded.ops == ops {
                let _ = self
                    .sent
                    .compare_and_swap(key, Some(current), None as Option<&[u8]>)
                    .map_err(store_error)?;
            }
            Ok(())
        })
    }

    fn sent(&self) -> BundlerFuture<'_, Vec<(u64, SentOps)>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for item in self.sent.iter() {
                let (key, value) = item.map_err(store_error)?;
                let Ok(nonce) = key.as_ref().try_into().map(u64::from_be_bytes) else { continue };
                all.push((nonce, serde_json::from_slice(&value).map_err(store_error)?));
            }
            Ok(all)
        })
    }

    fn reputation(&self) -> BundlerFuture<'_, Vec<ReputationRow>> {
        Box::pin(async move {
            let mut rows = Vec::new();
            for item in self.reputation.iter() {
                let (key, value) = item.map_err(store_error)?;
                if let (Some((entry_point, address)), Ok(counts)) =
                    (from_reputation_key(&key), serde_json::from_slice(&value))
                {
                    rows.push((entry_point, address, counts));
                }
            }
            Ok(rows)
        })
    }

    fn put_reputation<'a>(&'a self, rows: &'a [ReputationRow]) -> BundlerFuture<'a, ()> {
        // Not fsynced per change: counters are advisory, and sled flushes on its own within
        // half a second.
        Box::pin(async move {
            for (entry_point, address, counts) in rows {
                let key = reputation_key(*entry_point, *address);
                if *counts == ReputationCounts::default() {
                    self.reputation.remove(key).map_err(store_error)?;
                } else {
                    self.reputation.insert(key, json(counts)?).map_err(store_error)?;
                }
            }
            Ok(())
        })
    }

    fn clear_reputation(&self) -> BundlerFuture<'_, ()> {
        Box::pin(async move { self.reputation.clear().map_err(store_error) })
    }

    fn submit<'a>(&'a self, _: Address, _: &'a UserOperation) -> BundlerFuture<'a, i64> {
        Box::pin(async move { Err(BundlerStoreError::Store(NO_SUBMISSIONS.into())) })
    }

    fn submissions(&self) -> BundlerFuture<'_, Vec<Submission>> {
        Box::pin(async move { Ok(Vec::new()) })
    }

    fn answer<'a>(&'a self, _: i64, _: &'a Verdict) -> BundlerFuture<'a, ()> {
        Box::pin(async move { Err(BundlerStoreError::Store(NO_SUBMISSIONS.into())) })
    }

    fn verdict(&self, _: i64, _: bool) -> BundlerFuture<'_, Option<Verdict>> {
        Box::pin(async move { Ok(None) })
    }
}
