//! The node's sled database: opened once under the datadir, shared by every component.

use std::path::{Path, PathBuf};

use alloy::primitives::B256;
use tracing::warn;

use crate::error::NodeError;

/// Tree of node-wide facts (which chain this datadir belongs to, ...).
const META_TREE: &str = "meta";
const CHAIN_ID_KEY: &[u8] = b"chain_id";
const GENESIS_KEY: &[u8] = b"genesis";

/// Which chain a datadir holds data of: its id and its genesis block. A new chain with the same
/// id (a restarted Anvil, a testnet reset) has another genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainIdentity {
    /// `eth_chainId`.
    pub chain_id: u64,
    /// The hash of block 0.
    pub genesis: B256,
}

/// What to do with a datadir that holds another chain's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOtherChain {
    /// Refuse to start (`settled run`, `settled dev --dev.attach`): nothing of one chain may
    /// leak into another, and nothing is deleted behind the operator's back.
    Refuse,
    /// Delete it and start clean (`settled dev` with its own Anvil, a new chain at every start).
    StartClean,
}

/// The node's database.
#[derive(Debug, Clone)]
pub struct Storage {
    db: sled::Db,
    path: PathBuf,
}

impl Storage {
    /// Opens (or creates) the database in `datadir/db`, bound to `chain`: a datadir used with one
    /// chain never serves another (refused, or wiped first, per `on_other_chain`).
    pub async fn open(
        datadir: &Path,
        chain: ChainIdentity,
        on_other_chain: OnOtherChain,
    ) -> Result<Self, NodeError> {
        let path = datadir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, chain, on_other_chain))
            .await
            .map_err(|e| NodeError::Storage {
                path: datadir.to_path_buf(),
                reason: e.to_string(),
            })?
    }

    fn open_blocking(
        datadir: PathBuf,
        chain: ChainIdentity,
        on_other_chain: OnOtherChain,
    ) -> Result<Self, NodeError> {
        let db = Self::open_db(&datadir)?;
        match Self::bind(&db, &datadir, chain) {
            Err(NodeError::WrongChainData { stored, .. })
                if on_other_chain == OnOtherChain::StartClean =>
            {
                warn!(datadir = %datadir.display(), ?stored, ?chain, "the datadir's chain is gone; starting clean");
                drop(db);
                let wiped = datadir.join("db");
                std::fs::remove_dir_all(&wiped)
                    .map_err(|e| NodeError::Storage { path: wiped, reason: e.to_string() })?;
                let db = Self::open_db(&datadir)?;
                Self::bind(&db, &datadir, chain)?;
                Ok(Self { db, path: datadir })
            }
            Err(other) => Err(other),
            Ok(()) => Ok(Self { db, path: datadir }),
        }
    }

    fn open_db(datadir: &Path) -> Result<sled::Db, NodeError> {
        let err = |reason: String| NodeError::Storage { path: datadir.to_path_buf(), reason };
        std::fs::create_dir_all(datadir).map_err(|e| err(e.to_string()))?;
        sled::open(datadir.join("db")).map_err(|e| match e {
            // sled reports a held lock as an `Other` I/O error with this wording.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                err("in use by another settled process".into())
            }
            other => err(other.to_string()),
        })
    }

    /// Records `chain` in a new database, or checks that an existing one holds its data. A
    /// datadir from before genesis binding (chain id only) adopts the chain's genesis.
    fn bind(db: &sled::Db, datadir: &Path, chain: ChainIdentity) -> Result<(), NodeError> {
        let err = |reason: String| NodeError::Storage { path: datadir.to_path_buf(), reason };
        let meta = db.open_tree(META_TREE).map_err(|e| err(e.to_string()))?;
        let stored_id = meta.get(CHAIN_ID_KEY).map_err(|e| err(e.to_string()))?;
        let stored_genesis = meta.get(GENESIS_KEY).map_err(|e| err(e.to_string()))?;
        let stored = match (stored_id, stored_genesis) {
            (None, _) => None,
            (Some(id), genesis) => {
                let id: [u8; 8] =
                    id.as_ref().try_into().map_err(|_| err("corrupt chain id record".into()))?;
                let genesis = genesis
                    .map(|g| {
                        B256::try_from(g.as_ref()).map_err(|_| err("corrupt genesis record".into()))
                    })
                    .transpose()?;
                Some((u64::from_be_bytes(id), genesis))
            }
        };
        match stored {
            Some((id, Some(genesis))) if id == chain.chain_id && genesis == chain.genesis => Ok(()),
            Some((id, None)) if id == chain.chain_id => {
                meta.insert(GENESIS_KEY, chain.genesis.as_slice())
                    .map_err(|e| err(e.to_string()))?;
                meta.flush().map(drop).map_err(|e| err(e.to_string()))
            }
            Some((id, genesis)) => Err(NodeError::WrongChainData {
                path: datadir.to_path_buf(),
                stored: ChainIdentity { chain_id: id, genesis: genesis.unwrap_or_default() },
                actual: chain,
            }),
            None => {
                meta.insert(CHAIN_ID_KEY, &chain.chain_id.to_be_bytes())
                    .map_err(|e| err(e.to_string()))?;
                meta.insert(GENESIS_KEY, chain.genesis.as_slice())
                    .map_err(|e| err(e.to_string()))?;
                meta.flush().map(drop).map_err(|e| err(e.to_string()))
            }
        }
    }

    /// The underlying database, for components that keep their own trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Flushes everything to disk (at shutdown). A blocking `flush` on a blocking thread:
    /// sled 0.34's `flush_async` can hang when another flush runs (spacejam/sled#1308).
    pub async fn flush(&self) -> Result<(), NodeError> {
        let db = self.db.clone();
        let storage_error = |reason: String| NodeError::Storage { path: self.path.clone(), reason };
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| storage_error(e.to_string()))?
            .map(drop)
            .map_err(|e| storage_error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(chain_id: u64, genesis: u8) -> ChainIdentity {
        ChainIdentity { chain_id, genesis: B256::repeat_byte(genesis) }
    }

    /// Another chain id, or the same id with another genesis (a restarted Anvil): refused, the
    /// data kept; with `StartClean` (dev's own Anvil) wiped and bound to the new chain.
    #[tokio::test]
    async fn datadir_is_bound_to_one_chain() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let storage = Storage::open(dir.path(), chain(1, 1), OnOtherChain::Refuse).await?;
        storage.db().insert(b"kept", b"yes")?;
        storage.flush().await?;
        drop(storage);
        let same = Storage::open(dir.path(), chain(1, 1), OnOtherChain::Refuse).await?;
        assert!(same.db().get(b"kept")?.is_some(), "same chain reopens with its data");
        drop(same);
        for other in [chain(2, 1), chain(1, 2)] {
            let err = Storage::open(dir.path(), other, OnOtherChain::Refuse)
                .await
                .err()
                .ok_or("opened for another chain")?;
            assert!(matches!(err, NodeError::WrongChainData { .. }), "{err}");
            assert!(err.to_string().contains("another chain"), "{err}");
        }
        let clean = Storage::open(dir.path(), chain(1, 2), OnOtherChain::StartClean).await?;
        assert!(clean.db().get(b"kept")?.is_none(), "started clean");
        drop(clean);
        assert!(Storage::open(dir.path(), chain(1, 2), OnOtherChain::Refuse).await.is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn a_datadir_in_use_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _held = Storage::open(dir.path(), chain(1, 1), OnOtherChain::Refuse).await?;
        let err = Storage::open(dir.path(), chain(1, 1), OnOtherChain::StartClean)
            .await
            .err()
            .ok_or("opened twice")?;
        assert!(err.to_string().contains("in use"), "{err}");
        Ok(())
    }
}
