//! The index in PostgreSQL, shared by every node (migration `0008_stream_index.sql`): one node,
//! the holder of the index's lease, writes each block in a transaction fenced by that lease
//! (with the block's notices, published to every node at commit); every node reads.

use alloy::primitives::{Address, B256};
use settled_contracts::BlockRef;
use settled_store::{Fence, FenceError, PgStore};
use sqlx::{Postgres, Row as _, Transaction, postgres::PgRow};
use tokio::sync::watch;

use super::{
    IndexCursor, IndexError, StreamId, StreamSelector, storage,
    store::{BlockWrite, IndexFuture, IndexStore, Undo},
};
use crate::{accrual::StreamState, alerts::StreamNotice};

/// The channel the index's notices are published on.
const NOTICES: &str = "settled_stream_notices";

/// The index's tables for the vault at `vault`, written under this node's lease of the index.
#[derive(Debug, Clone)]
pub struct PgIndex {
    store: PgStore,
    vault: Address,
    fence: watch::Receiver<Option<Fence>>,
}

fn int(value: u64) -> Result<i64, IndexError> {
    i64::try_from(value).map_err(storage)
}

fn uint(row: &PgRow, column: &str) -> Result<u64, IndexError> {
    let value: i64 = row.try_get(column).map_err(storage)?;
    u64::try_from(value).map_err(storage)
}

fn state_of(row: &PgRow) -> Result<StreamState, IndexError> {
    let text: String = row.try_get("state").map_err(storage)?;
    serde_json::from_str(&text).map_err(storage)
}

fn text<T: serde::Serialize>(value: &T) -> Result<String, IndexError> {
    serde_json::to_string(value).map_err(storage)
}

type Tx = Transaction<'static, Postgres>;

impl PgIndex {
    /// The index of the vault at `vault` on `store`, its writes fenced by `fence` (this node's
    /// lease of the index, `None` while another node holds it).
    pub fn new(store: PgStore, vault: Address, fence: watch::Receiver<Option<Fence>>) -> Self {
        Self { store, vault, fence }
    }

    /// Sends the notices the index's writer publishes from now on to `to` (this node's
    /// subscribers), until `cancel`.
    pub async fn relay(
        self,
        to: tokio::sync::broadcast::Sender<StreamNotice>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        self.store.relay(NOTICES, to, cancel).await
    }

    async fn fenced(&self) -> Result<Tx, IndexError> {
        self.store.fenced_by(&self.fence).await.map_err(|e| match e {
            FenceError::NotLeading(why) => IndexError::NotLeading(why),
            FenceError::Store(why) => IndexError::Storage(why),
        })
    }

    async fn read_cursor(&self, tx: Option<&mut Tx>) -> Result<Option<IndexCursor>, IndexError> {
        // In a write, the cursor row is locked: the block's parent stays the stored cursor.
        let lock = if tx.is_some() { " FOR UPDATE" } else { "" };
        let sql =
            format!("SELECT number, hash, at FROM settled_stream_cursor WHERE vault = $1{lock}");
        let query = sqlx::query(&sql).bind(self.vault.as_slice());
        let row = match tx {
            Some(tx) => query.fetch_optional(&mut **tx).await,
            None => query.fetch_optional(self.store.pool()).await,
        }
        .map_err(storage)?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.try_get("hash").map_err(storage)?;
        Ok(Some(IndexCursor {
            number: uint(&row, "number")?,
            hash: B256::try_from(hash.as_slice()).map_err(storage)?,
            timestamp: uint(&row, "at")?,
        }))
    }

    async fn write_cursor(
        &self,
        tx: &mut Tx,
        cursor: Option<IndexCursor>,
    ) -> Result<(), IndexError> {
        let Some(c) = cursor else {
            sqlx::query("DELETE FROM settled_stream_cursor WHERE vault = $1")
                .bind(self.vault.as_slice())
                .execute(&mut **tx)
                .await
                .map_err(storage)?;
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO settled_stream_cursor (vault, number, hash, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (vault) DO UPDATE SET number = $2, hash = $3, at = $4",
        )
        .bind(self.vault.as_slice())
        .bind(int(c.number)?)
        .bind(c.hash.as_slice())
        .bind(int(c.timestamp)?)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
        Ok(())
    }

    /// Upserts streams `ids` with their parties and states (parties never change).
    async fn put_streams(
        &self,
        tx: &mut Tx,
        ids: &[i64],
        payers: &[Vec<u8>],
        payees: &[Vec<u8>],
        states: &[String],
    ) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO settled_streams (vault, id, payer, payee, state) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::bytea[], $4::bytea[], $5::text[]) \
             ON CONFLICT (vault, id) DO UPDATE SET state = EXCLUDED.state",
        )
        .bind(self.vault.as_slice())
        .bind(ids)
        .bind(payers)
        .bind(payees)
        .bind(states)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn delete_streams(&self, tx: &mut Tx, ids: &[i64]) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM settled_streams WHERE vault = $1 AND id = ANY($2)")
            .bind(self.vault.as_slice())
            .bind(ids)
            .execute(&mut **tx)
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// The block's streams, history entries and undo record: one statement each, whatever
    /// the number of streams (arrays unnested), so a busy block costs a handful of round trips.
    async fn write_touched(&self, tx: &mut Tx, block: &BlockWrite) -> Result<(), IndexError> {
        let (at, number) = (int(block.cursor.timestamp)?, int(block.cursor.number)?);
        let (mut ids, mut payers, mut payees, mut states, mut gone) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, _, after) in &block.touched {
            match after {
                Some(state) => {
                    ids.push(int(*id)?);
                    payers.push(state.payer.to_vec());
                    payees.push(state.payee.to_vec());
                    states.push(text(state)?);
                }
                None => gone.push(int(*id)?),
            }
        }
        self.delete_streams(tx, &gone).await?;
        self.put_streams(tx, &ids, &payers, &payees, &states).await?;
        sqlx::query(
            "INSERT INTO settled_stream_history (vault, id, at, block, state) \
             SELECT $1, id, $3, $4, state FROM UNNEST($2::bigint[], $5::text[]) AS t(id, state) \
             ON CONFLICT DO NOTHING",
        )
        .bind(self.vault.as_slice())
        .bind(&ids)
        .bind(at)
        .bind(number)
        .bind(&states)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
        sqlx::query(
            "INSERT INTO settled_stream_undo (vault, number, hash, undo) VALUES ($1, $2, $3, $4)",
        )
        .bind(self.vault.as_slice())
        .bind(number)
        .bind(block.cursor.hash.as_slice())
        .bind(text(&block.undo())?)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn write_block(&self, block: &BlockWrite) -> Result<(), IndexError> {
        let mut tx = self.fenced().await?;
        let stored = self.read_cursor(Some(&mut tx)).await?;
        if stored != block.previous {
            return Err(IndexError::Gap {
                cursor: stored.map_or(0, |c| c.number),
                block: block.cursor.number,
                reason: "the shared cursor moved",
            });
        }
        self.write_touched(&mut tx, block).await?;
        self.write_cursor(&mut tx, Some(block.cursor)).await?;
        let notices: Vec<serde_json::Value> = block
            .notices
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        PgStore::publish_all_in(&mut tx, NOTICES, &notices).await.map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn undo_block(&self, block: BlockRef) -> Result<bool, IndexError> {
        let mut tx = self.fenced().await?;
        let row = sqlx::query(
            "DELETE FROM settled_stream_undo WHERE vault = $1 AND number = $2 AND hash = $3 \
             RETURNING undo",
        )
        .bind(self.vault.as_slice())
        .bind(int(block.number)?)
        .bind(block.hash.as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage)?;
        let Some(row) = row else { return Ok(false) };
        let undo: String = row.try_get("undo").map_err(storage)?;
        let undo: Undo = serde_json::from_str(&undo).map_err(storage)?;
        for (id, before) in &undo.before {
            sqlx::query(
                "DELETE FROM settled_stream_history WHERE vault = $1 AND id = $2 AND at = $3 \
                 AND block = $4",
            )
            .bind(self.vault.as_slice())
            .bind(int(*id)?)
            .bind(int(undo.timestamp)?)
            .bind(int(block.number)?)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            match before {
                Some(state) => {
                    let (payer, payee) = ([state.payer.to_vec()], [state.payee.to_vec()]);
                    self.put_streams(&mut tx, &[int(*id)?], &payer, &payee, &[text(state)?]).await?
                }
                None => self.delete_streams(&mut tx, &[int(*id)?]).await?,
            }
        }
        self.write_cursor(&mut tx, undo.previous_cursor).await?;
        tx.commit().await.map_err(storage)?;
        Ok(true)
    }

    async fn read_one(
        &self,
        sql: &str,
        id: StreamId,
        at: Option<u64>,
    ) -> Result<Option<StreamState>, IndexError> {
        let mut query = sqlx::query(sql).bind(self.vault.as_slice()).bind(int(id)?);
        if let Some(at) = at {
            query = query.bind(int(at)?);
        }
        let row = query.fetch_optional(self.store.pool()).await.map_err(storage)?;
        row.as_ref().map(state_of).transpose()
    }

    async fn read_changes(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, StreamState)>, IndexError> {
        if until <= after {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT at, state FROM settled_stream_history WHERE vault = $1 AND id = $2 \
             AND at > $3 AND at <= $4 ORDER BY at, block",
        )
        .bind(self.vault.as_slice())
        .bind(int(id)?)
        .bind(int(after)?)
        .bind(int(until)?)
        .fetch_all(self.store.pool())
        .await
        .map_err(storage)?;
        rows.iter().map(|row| Ok((uint(row, "at")?, state_of(row)?))).collect()
    }

    async fn read_page(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<(StreamId, StreamState)>, IndexError> {
        let (column, party) = match selector {
            StreamSelector::All => ("vault", self.vault),
            StreamSelector::Payer(payer) => ("payer", payer),
            StreamSelector::Payee(payee) => ("payee", payee),
        };
        // `column` is one of three fixed names; the party is bound.
        let sql = format!(
            "SELECT id, state FROM settled_streams WHERE vault = $1 AND {column} = $2 \
             AND id > $3 ORDER BY id LIMIT $4"
        );
        let after = after.map_or(Ok(-1), int)?;
        let rows = sqlx::query(&sql)
            .bind(self.vault.as_slice())
            .bind(party.as_slice())
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await
            .map_err(storage)?;
        rows.iter().map(|row| Ok((uint(row, "id")?, state_of(row)?))).collect()
    }

    async fn prune_below(&self, number: u64) -> Result<(), IndexError> {
        // Old undo records are never read again: any node may drop them.
        sqlx::query("DELETE FROM settled_stream_undo WHERE vault = $1 AND number < $2")
            .bind(self.vault.as_slice())
            .bind(int(number)?)
            .execute(self.store.pool())
            .await
            .map_err(storage)?;
        Ok(())
    }
}

impl IndexStore for PgIndex {
    fn cursor(&self) -> IndexFuture<'_, Option<IndexCursor>> {
        Box::pin(self.read_cursor(None))
    }

    fn get(&self, id: StreamId) -> IndexFuture<'_, Option<StreamState>> {
        let sql = "SELECT state FROM settled_streams WHERE vault = $1 AND id = $2";
        Box::pin(self.read_one(sql, id, None))
    }

    fn get_many<'a>(
        &'a self,
        ids: &'a [StreamId],
    ) -> IndexFuture<'a, Vec<(StreamId, StreamState)>> {
        Box::pin(async move {
            let ids: Vec<i64> = ids.iter().map(|id| int(*id)).collect::<Result<_, _>>()?;
            let rows = sqlx::query(
                "SELECT id, state FROM settled_streams WHERE vault = $1 AND id = ANY($2)",
            )
            .bind(self.vault.as_slice())
            .bind(&ids)
            .fetch_all(self.store.pool())
            .await
            .map_err(storage)?;
            rows.iter().map(|row| Ok((uint(row, "id")?, state_of(row)?))).collect()
        })
    }

    fn get_at(&self, id: StreamId, at: u64) -> IndexFuture<'_, Option<StreamState>> {
        let sql = "SELECT state FROM settled_stream_history WHERE vault = $1 AND id = $2 \
                   AND at <= $3 ORDER BY at DESC, block DESC LIMIT 1";
        Box::pin(self.read_one(sql, id, Some(at)))
    }

    fn changes_between(
        &self,
        id: StreamId,
        after: u64,
        until: u64,
    ) -> IndexFuture<'_, Vec<(u64, StreamState)>> {
        Box::pin(self.read_changes(id, after, until))
    }

    fn page(
        &self,
        selector: StreamSelector,
        after: Option<StreamId>,
        limit: usize,
    ) -> IndexFuture<'_, Vec<(StreamId, StreamState)>> {
        Box::pin(self.read_page(selector, after, limit))
    }

    fn commit<'a>(&'a self, block: &'a BlockWrite) -> IndexFuture<'a, ()> {
        Box::pin(self.write_block(block))
    }

    fn unwind(&self, block: BlockRef) -> IndexFuture<'_, bool> {
        Box::pin(self.undo_block(block))
    }

    fn prune(&self, number: u64) -> IndexFuture<'_, ()> {
        Box::pin(self.prune_below(number))
    }

    fn publishes_notices(&self) -> bool {
        true
    }
}
