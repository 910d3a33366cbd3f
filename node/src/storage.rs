//! The node's sled database: opened once under the datadir, shared by every component.

use std::path::{Path, PathBuf};

use crate::error::NodeError;

/// Tree of node-wide facts (which chain this datadir belongs to, ...).
const META_TREE: &str = "meta";
const CHAIN_ID_KEY: &[u8] = b"chain_id";

/// The node's database.
#[derive(Debug, Clone)]
pub struct Storage {
    db: sled::Db,
    path: PathBuf,
}

impl Storage {
    /// Opens (or creates) the database in `datadir/db` and binds it to `chain_id`: a datadir
    /// used with one chain refuses to serve another, so no state of one chain leaks into another.
    pub async fn open(datadir: &Path, chain_id: u64) -> Result<Self, NodeError> {
        let path = datadir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, chain_id)).await.map_err(
            |e| NodeError::Storage { path: datadir.to_path_buf(), reason: e.to_string() },
        )?
    }

    fn open_blocking(datadir: PathBuf, chain_id: u64) -> Result<Self, NodeError> {
        let err = |reason: String| NodeError::Storage { path: datadir.clone(), reason };
        std::fs::create_dir_all(&datadir).map_err(|e| err(e.to_string()))?;
        let db = sled::open(datadir.join("db")).map_err(|e| match e {
            // sled reports a held lock as an `Other` I/O error with this wording.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                err("in use by another settled process".into())
            }
            other => err(other.to_string()),
        })?;
        let meta = db.open_tree(META_TREE).map_err(|e| err(e.to_string()))?;
        match meta.get(CHAIN_ID_KEY).map_err(|e| err(e.to_string()))? {
            Some(stored) => {
                let bytes: [u8; 8] = stored
                    .as_ref()
                    .try_into()
                    .map_err(|_| err("corrupt chain id record".into()))?;
                let stored = u64::from_be_bytes(bytes);
                if stored != chain_id {
                    return Err(NodeError::WrongChainData {
                        path: datadir,
                        stored,
                        actual: chain_id,
                    });
                }
            }
            None => {
                meta.insert(CHAIN_ID_KEY, &chain_id.to_be_bytes())
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        Ok(Self { db, path: datadir })
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

    #[tokio::test]
    async fn datadir_is_bound_to_one_chain() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let storage = Storage::open(dir.path(), 1).await?;
        storage.flush().await?;
        drop(storage);
        assert!(Storage::open(dir.path(), 1).await.is_ok(), "same chain reopens");
        let err = Storage::open(dir.path(), 2).await.err().ok_or("opened for another chain")?;
        assert!(matches!(err, NodeError::WrongChainData { stored: 1, actual: 2, .. }), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_datadir_in_use_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _held = Storage::open(dir.path(), 1).await?;
        let err = Storage::open(dir.path(), 1).await.err().ok_or("opened twice")?;
        assert!(err.to_string().contains("in use"), "{err}");
        Ok(())
    }
}
