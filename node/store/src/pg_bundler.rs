//! The bundler's state in PostgreSQL, shared by every node (migration `0007_bundler.sql`). The
//! writes only the bundler key's leader may make (admitting an op, clearing, recording a bundle,
//! reputation, answering a submission) run in a transaction fenced by its lease
//! ([`PgStore::fenced`]): a node that lost the lease writes nothing. Indexing mined ops and
//! taking them out of the pool are idempotent and made by every node, so every node answers
//! receipts whoever leads.

use alloy::primitives::{Address, B256};
use settled_bundler::{
    BundlerFuture, BundlerStore, BundlerStoreError, MinedOp, PoolEntry, ReputationCounts,
    ReputationRow, SentOps, Submission, UserOperation, Verdict,
};
use settled_contracts::EntryPointVersion;
use sqlx::{Postgres, Row as _, Transaction, types::Json};
use tokio::sync::watch;

use crate::{Fence, FenceError, PgStore};

/// The bundler's tables, fenced by this node's lease of the bundler key while it holds one.
#[derive(Debug, Clone)]
pub struct PgBundler {
    store: PgStore,
    fence: watch::Receiver<Option<Fence>>,
}

fn store_error(e: impl std::fmt::Display) -> BundlerStoreError {
    BundlerStoreError::Store(e.to_string())
}

fn version_code(version: EntryPointVersion) -> i16 {
    match version {
        EntryPointVersion::V07 => 7,
        EntryPointVersion::V08 => 8,
    }
}

fn version_of(code: i16) -> Result<EntryPointVersion, BundlerStoreError> {
    match code {
        7 => Ok(EntryPointVersion::V07),
        8 => Ok(EntryPointVersion::V08),
        other => Err(BundlerStoreError::Store(format!("unknown EntryPoint version {other}"))),
    }
}

fn int(value: u64) -> Result<i64, BundlerStoreError> {
    i64::try_from(value).map_err(store_error)
}

impl PgBundler {
    /// The bundler's state on `store`, its writes fenced by `fence` (this node's lease of the
    /// bundler key, `None` while another node holds it).
    pub fn new(store: PgStore, fence: watch::Receiver<Option<Fence>>) -> Self {
        Self { store, fence }
    }

    /// A transaction fenced by this node's lease of the bundler key.
    async fn fenced(&self) -> Result<Transaction<'static, Postgres>, BundlerStoreError> {
        self.store.fenced_by(&self.fence).await.map_err(|e| match e {
            FenceError::NotLeading(why) => BundlerStoreError::Lost(why),
            FenceError::Store(why) => BundlerStoreError::Store(why),
        })
    }

    async fn commit(tx: Transaction<'static, Postgres>) -> Result<(), BundlerStoreError> {
        tx.commit().await.map_err(store_error)
    }

    async fn admit_in(
        tx: &mut Transaction<'static, Postgres>,
        entry: &PoolEntry,
        displaced: &[B256],
        answers: Option<i64>,
    ) -> Result<(), BundlerStoreError> {
        let displaced: Vec<&[u8]> = displaced.iter().map(|h| h.as_slice()).collect();
        sqlx::query("DELETE FROM settled_bundler_pool WHERE hash = ANY($1)")
            .bind(displaced)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO settled_bundler_pool (hash, entry) VALUES ($1, $2) \
             ON CONFLICT (hash) DO UPDATE SET entry = EXCLUDED.entry",
        )
        .bind(entry.hash.as_slice())
        .bind(Json(entry))
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        if let Some(id) = answers {
            Self::answer_in(tx, id, &Verdict::Accepted(entry.hash)).await?;
        }
        Ok(())
    }

    async fn answer_in(
        tx: &mut Transaction<'static, Postgres>,
        id: i64,
        verdict: &Verdict,
    ) -> Result<(), BundlerStoreError> {
        let answered = sqlx::query(
            "UPDATE settled_bundler_submissions SET verdict = $2 \
             WHERE id = $1 AND verdict IS NULL",
        )
        .bind(id)
        .bind(Json(verdict))
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        match answered.rows_affected() {
            1 => Ok(()),
            // Withdrawn by its node (or answered already): the op must not be pooled.
            _ => Err(BundlerStoreError::Store(format!("submission {id} is no longer waiting"))),
        }
    }

    async fn unindex(&self, blocks: &[B256]) -> Result<Vec<MinedOp>, BundlerStoreError> {
        let blocks: Vec<&[u8]> = blocks.iter().map(|h| h.as_slice()).collect();
        let mut tx = self.store.pool().begin().await.map_err(store_error)?;
        let rows = sqlx::query(
            "DELETE FROM settled_bundler_mined WHERE block_hash = ANY($1) RETURNING mined",
        )
        .bind(blocks)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut moved = Vec::with_capacity(rows.len());
        for row in rows {
            let Json(mined): Json<MinedOp> = row.try_get("mined").map_err(store_error)?;
            if let Some(entry) = mined.requeued() {
                sqlx::query(
                    "INSERT INTO settled_bundler_pool (hash, entry) VALUES ($1, $2) \
                     ON CONFLICT (hash) DO NOTHING",
                )
                .bind(entry.hash.as_slice())
                .bind(Json(&entry))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            }
            moved.push(mined);
        }
        Self::commit(tx).await?;
        Ok(moved)
    }

    async fn index(&self, ops: &[MinedOp]) -> Result<(), BundlerStoreError> {
        let mut tx = self.store.pool().begin().await.map_err(store_error)?;
        for mined in ops {
            // The first node to index an op in a block keeps its record; the op in another
            // block (after a reorg) replaces it.
            sqlx::query(
                "INSERT INTO settled_bundler_mined (hash, block_hash, mined) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO UPDATE SET block_hash = EXCLUDED.block_hash, \
                   mined = EXCLUDED.mined \
                 WHERE settled_bundler_mined.block_hash <> EXCLUDED.block_hash",
            )
            .bind(mined.hash.as_slice())
            .bind(mined.block_hash.as_slice())
            .bind(Json(mined))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            sqlx::query("DELETE FROM settled_bundler_pool WHERE hash = $1")
                .bind(mined.hash.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        Self::commit(tx).await
    }
}

impl BundlerStore for PgBundler {
    fn pool(&self) -> BundlerFuture<'_, Vec<PoolEntry>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT entry FROM settled_bundler_pool ORDER BY added_at")
                .fetch_all(self.store.pool())
                .await
                .map_err(store_error)?;
            rows.iter()
                .map(|row| row.try_get::<Json<PoolEntry>, _>("entry").map(|j| j.0))
                .collect::<Result<_, _>>()
                .map_err(store_error)
        })
    }

    fn pool_entry(&self, hash: B256) -> BundlerFuture<'_, Option<PoolEntry>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT entry FROM settled_bundler_pool WHERE hash = $1")
                .bind(hash.as_slice())
                .fetch_optional(self.store.pool())
                .await
                .map_err(store_error)?;
            row.map(|row| row.try_get::<Json<PoolEntry>, _>("entry").map(|j| j.0))
                .transpose()
                .map_err(store_error)
        })
    }

    fn admit<'a>(
        &'a self,
        entry: &'a PoolEntry,
        displaced: &'a [B256],
        answers: Option<i64>,
    ) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            Self::admit_in(&mut tx, entry, displaced, answers).await?;
            Self::commit(tx).await
        })
    }

    fn remove<'a>(&'a self, hashes: &'a [B256]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let hashes: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
            sqlx::query("DELETE FROM settled_bundler_pool WHERE hash = ANY($1)")
                .bind(hashes)
                .execute(self.store.pool())
                .await
                .map_err(store_error)?;
            Ok(())
        })
    }

    fn clear_pool(&self) -> BundlerFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            sqlx::query("DELETE FROM settled_bundler_pool")
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            Self::commit(tx).await
        })
    }

    fn index_mined<'a>(&'a self, ops: &'a [MinedOp]) -> BundlerFuture<'a, ()> {
        Box::pin(self.index(ops))
    }

    fn unindex_blocks<'a>(&'a self, blocks: &'a [B256]) -> BundlerFuture<'a, Vec<MinedOp>> {
        Box::pin(self.unindex(blocks))
    }

    fn mined(&self, hash: B256) -> BundlerFuture<'_, Option<MinedOp>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT mined FROM settled_bundler_mined WHERE hash = $1")
                .bind(hash.as_slice())
                .fetch_optional(self.store.pool())
                .await
                .map_err(store_error)?;
            row.map(|row| row.try_get::<Json<MinedOp>, _>("mined").map(|j| j.0))
                .transpose()
                .map_err(store_error)
        })
    }

    fn record_sent<'a>(&'a self, nonce: u64, sent: &'a SentOps) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            sqlx::query(
                "INSERT INTO settled_bundler_sent (nonce, ops) VALUES ($1, $2) \
                 ON CONFLICT (nonce) DO UPDATE SET ops = EXCLUDED.ops",
            )
            .bind(int(nonce)?)
            .bind(Json(sent))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            Self::commit(tx).await
        })
    }

    fn remove_sent<'a>(&'a self, nonce: u64, ops: &'a [(B256, Address)]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            // Fenced: a node that stopped leading leaves the record to the leader holding its
            // ops. Another bundle recorded at this nonce since is not this one's to forget.
            let mut tx = self.fenced().await?;
            sqlx::query("DELETE FROM settled_bundler_sent WHERE nonce = $1 AND ops -> 'ops' = $2")
                .bind(int(nonce)?)
                .bind(Json(ops))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            Self::commit(tx).await
        })
    }

    fn sent(&self) -> BundlerFuture<'_, Vec<(u64, SentOps)>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT nonce, ops FROM settled_bundler_sent ORDER BY nonce")
                .fetch_all(self.store.pool())
                .await
                .map_err(store_error)?;
            let mut all = Vec::with_capacity(rows.len());
            for row in rows {
                let nonce: i64 = row.try_get("nonce").map_err(store_error)?;
                let Json(ops): Json<SentOps> = row.try_get("ops").map_err(store_error)?;
                all.push((u64::try_from(nonce).map_err(store_error)?, ops));
            }
            Ok(all)
        })
    }

    fn reputation(&self) -> BundlerFuture<'_, Vec<ReputationRow>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT entry_point, address, ops_seen, ops_included \
                 FROM settled_bundler_reputation ORDER BY entry_point, address",
            )
            .fetch_all(self.store.pool())
            .await
            .map_err(store_error)?;
            let mut all = Vec::with_capacity(rows.len());
            for row in rows {
                let version = version_of(row.try_get("entry_point").map_err(store_error)?)?;
                let address: Vec<u8> = row.try_get("address").map_err(store_error)?;
                let seen: i64 = row.try_get("ops_seen").map_err(store_error)?;
                let included: i64 = row.try_get("ops_included").map_err(store_error)?;
                let counts = ReputationCounts {
                    ops_seen: u64::try_from(seen).map_err(store_error)?,
                    ops_included: u64::try_from(included).map_err(store_error)?,
                };
                all.push((
                    version,
                    Address::try_from(address.as_slice()).map_err(store_error)?,
                    counts,
                ));
            }
            Ok(all)
        })
    }

    fn put_reputation<'a>(&'a self, rows: &'a [ReputationRow]) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            for (version, address, counts) in rows {
                sqlx::query(
                    "DELETE FROM settled_bundler_reputation WHERE entry_point = $1 AND address = $2",
                )
                .bind(version_code(*version))
                .bind(address.as_slice())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
                if *counts == ReputationCounts::default() {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO settled_bundler_reputation \
                     (entry_point, address, ops_seen, ops_included) VALUES ($1, $2, $3, $4)",
                )
                .bind(version_code(*version))
                .bind(address.as_slice())
                .bind(int(counts.ops_seen)?)
                .bind(int(counts.ops_included)?)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            }
            Self::commit(tx).await
        })
    }

    fn clear_reputation(&self) -> BundlerFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            sqlx::query("DELETE FROM settled_bundler_reputation")
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            Self::commit(tx).await
        })
    }

    fn submit<'a>(&'a self, entry_point: Address, op: &'a UserOperation) -> BundlerFuture<'a, i64> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO settled_bundler_submissions (entry_point, op) VALUES ($1, $2) \
                 RETURNING id",
            )
            .bind(entry_point.as_slice())
            .bind(Json(op))
            .fetch_one(self.store.pool())
            .await
            .map_err(store_error)?;
            row.try_get("id").map_err(store_error)
        })
    }

    fn submissions(&self) -> BundlerFuture<'_, Vec<Submission>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, entry_point, op FROM settled_bundler_submissions \
                 WHERE verdict IS NULL ORDER BY id",
            )
            .fetch_all(self.store.pool())
            .await
            .map_err(store_error)?;
            let mut all = Vec::with_capacity(rows.len());
            for row in rows {
                let entry_point: Vec<u8> = row.try_get("entry_point").map_err(store_error)?;
                let Json(op): Json<UserOperation> = row.try_get("op").map_err(store_error)?;
                all.push(Submission {
                    id: row.try_get("id").map_err(store_error)?,
                    entry_point: Address::try_from(entry_point.as_slice()).map_err(store_error)?,
                    op,
                });
            }
            Ok(all)
        })
    }

    fn answer<'a>(&'a self, id: i64, verdict: &'a Verdict) -> BundlerFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced().await?;
            Self::answer_in(&mut tx, id, verdict).await?;
            Self::commit(tx).await
        })
    }

    fn verdict(&self, id: i64, withdraw: bool) -> BundlerFuture<'_, Option<Verdict>> {
        Box::pin(async move {
            // Taken once answered (its node reads it once); withdrawn only while unanswered.
            let row = sqlx::query(
                "DELETE FROM settled_bundler_submissions \
                 WHERE id = $1 AND (verdict IS NOT NULL OR $2) RETURNING verdict",
            )
            .bind(id)
            .bind(withdraw)
            .fetch_optional(self.store.pool())
            .await
            .map_err(store_error)?;
            let Some(row) = row else { return Ok(None) };
            let verdict: Option<Json<Verdict>> = row.try_get("verdict").map_err(store_error)?;
            Ok(verdict.map(|j| j.0))
        })
    }
}
