//! Settlement's state in PostgreSQL, shared by every node. A round's writes run in a
//! transaction fenced by the operator key's lease ([`PgStore::fenced`]): a node that lost the
//! lease writes nothing. A usage report holds the meta row shared while it checks the floor and
//! inserts; closing a period raises the floor under the row's exclusive lock, so it waits for
//! reports in flight and no report lands in a period after it was read.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use settled_store::{Fence, PgStore};
use sqlx::{Postgres, Row as _, Transaction, postgres::PgRow};

use super::{
    OpenPeriod, PeriodCursor, SettlementFuture, SettlementStore, fold_reports, storage,
    usage_storage,
};
use crate::{OrderAlert, PurchaseOrder, SchedulerError, StoredBatch, UsageError};

/// Settlement's tables (migration `0005_settlement.sql`).
#[derive(Debug, Clone)]
pub struct PgSettlement {
    store: PgStore,
}

fn int(value: u64) -> Result<i64, SchedulerError> {
    i64::try_from(value).map_err(storage)
}

fn uint(row: &PgRow, column: &str) -> Result<u64, SchedulerError> {
    let value: i64 = row.try_get(column).map_err(storage)?;
    u64::try_from(value).map_err(storage)
}

fn body<T: serde::de::DeserializeOwned>(row: &PgRow) -> Result<T, SchedulerError> {
    let bytes: Vec<u8> = row.try_get("body").map_err(storage)?;
    serde_json::from_slice(&bytes).map_err(storage)
}

impl PgSettlement {
    /// Settlement on `store` (migrated when it connected).
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// A transaction fenced by `fence` (a lease: a shared store has no exclusive writer).
    async fn fenced(
        &self,
        fence: &Fence,
    ) -> Result<Transaction<'static, Postgres>, SchedulerError> {
        let Fence::Lease(lease) = fence else {
            return Err(SchedulerError::Lost(
                "a shared store needs the operator key's lease".into(),
            ));
        };
        self.store.fenced(lease).await.map_err(|e| SchedulerError::Lost(e.to_string()))
    }

    async fn upsert_batch(
        tx: &mut Transaction<'static, Postgres>,
        batch: &StoredBatch,
    ) -> Result<(), SchedulerError> {
        sqlx::query(
            "INSERT INTO settled_batches (id, body) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(int(batch.context.batch_id)?)
        .bind(serde_json::to_vec(batch).map_err(storage)?)
        .execute(&mut **tx)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn close(
        &self,
        fence: &Fence,
        batches: &[StoredBatch],
        next: PeriodCursor,
    ) -> Result<(), SchedulerError> {
        let mut tx = self.fenced(fence).await?;
        for batch in batches {
            Self::upsert_batch(&mut tx, batch).await?;
        }
        sqlx::query(
            "UPDATE settled_settlement_meta SET period_end = $1, next_batch_id = $2, \
             open_period = NULL, usage_floor = GREATEST(usage_floor, $1 + 1)",
        )
        .bind(int(next.period_end)?)
        .bind(int(next.next_batch_id)?)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)
    }

    async fn record(&self, stream: u64, at: u64, digest: B256) -> Result<(), UsageError> {
        let at_i = i64::try_from(at).map_err(usage_storage)?;
        let mut tx = self.store.pool().begin().await.map_err(usage_storage)?;
        let floor: i64 = sqlx::query("SELECT usage_floor FROM settled_settlement_meta FOR SHARE")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("usage_floor"))
            .map_err(usage_storage)?;
        if at_i < floor {
            let settled_through = u64::try_from(floor - 1).unwrap_or_default();
            return Err(UsageError::Settled { at, settled_through });
        }
        sqlx::query(
            "INSERT INTO settled_usage_reports (at, stream, digest) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(at_i)
        .bind(i64::try_from(stream).map_err(usage_storage)?)
        .bind(digest.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(usage_storage)?;
        tx.commit().await.map_err(usage_storage)
    }

    async fn close_reports(
        &self,
        fence: &Fence,
        start: u64,
        end: u64,
    ) -> Result<BTreeMap<u64, B256>, UsageError> {
        let lost = |e: SchedulerError| usage_storage(e);
        let mut tx = self.fenced(fence).await.map_err(lost)?;
        let (start, end) = (
            i64::try_from(start).map_err(usage_storage)?,
            i64::try_from(end).map_err(usage_storage)?,
        );
        sqlx::query(
            "UPDATE settled_settlement_meta SET usage_floor = GREATEST(usage_floor, $1 + 1)",
        )
        .bind(end)
        .execute(&mut *tx)
        .await
        .map_err(usage_storage)?;
        let rows = sqlx::query(
            "SELECT at, stream, digest FROM settled_usage_reports \
             WHERE at > $1 AND at <= $2 ORDER BY stream, at, digest",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&mut *tx)
        .await
        .map_err(usage_storage)?;
        tx.commit().await.map_err(usage_storage)?;
        let reports = rows
            .iter()
            .map(|row| {
                let at = uint(row, "at").map_err(lost)?;
                let stream = uint(row, "stream").map_err(lost)?;
                let digest: Vec<u8> = row.try_get("digest").map_err(usage_storage)?;
                let digest = B256::try_from(digest.as_slice()).map_err(usage_storage)?;
                Ok((at, stream, digest))
            })
            .collect::<Result<Vec<_>, UsageError>>()?;
        Ok(fold_reports(reports))
    }

    async fn orders_of(
        &self,
        payer: Option<Address>,
    ) -> Result<Vec<PurchaseOrder>, SchedulerError> {
        let rows = match payer {
            Some(payer) => {
                sqlx::query(
                    "SELECT body FROM settled_purchase_orders WHERE payer = $1 ORDER BY number",
                )
                .bind(payer.as_slice())
                .fetch_all(self.store.pool())
                .await
            }
            None => {
                sqlx::query("SELECT body FROM settled_purchase_orders ORDER BY payer, number")
                    .fetch_all(self.store.pool())
                    .await
            }
        };
        rows.map_err(storage)?.iter().map(body).collect()
    }

    async fn put_alerts(
        &self,
        fence: &Fence,
        states: &[(Vec<u8>, String)],
        raised: &[OrderAlert],
    ) -> Result<(), SchedulerError> {
        let mut tx = self.fenced(fence).await?;
        for (key, state) in states {
            sqlx::query(
                "INSERT INTO settled_order_alerts (key, state) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(key.as_slice())
            .bind(state)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        }
        for alert in raised {
            let payload = serde_json::to_value(alert).map_err(storage)?;
            PgStore::publish_in(&mut tx, ORDER_ALERTS, &payload).await.map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }

    /// Sends every PO alert published from now on (by whichever node leads) to `to`, until
    /// `cancel`; a lost connection resumes after the last alert relayed.
    pub async fn relay_alerts(
        self,
        to: tokio::sync::broadcast::Sender<OrderAlert>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        self.store.relay(ORDER_ALERTS, to, cancel).await
    }
}

/// The notice channel PO alerts are published on.
const ORDER_ALERTS: &str = "settled_po_alerts";

impl SettlementStore for PgSettlement {
    fn cursor(&self) -> SettlementFuture<'_, PeriodCursor> {
        Box::pin(async move {
            let row = sqlx::query("SELECT period_end, next_batch_id FROM settled_settlement_meta")
                .fetch_one(self.store.pool())
                .await
                .map_err(storage)?;
            Ok(PeriodCursor {
                period_end: uint(&row, "period_end")?,
                next_batch_id: uint(&row, "next_batch_id")?,
            })
        })
    }

    fn open_period(&self) -> SettlementFuture<'_, Option<OpenPeriod>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT open_period FROM settled_settlement_meta")
                .fetch_one(self.store.pool())
                .await
                .map_err(storage)?;
            let open: Option<Vec<u8>> = row.try_get("open_period").map_err(storage)?;
            open.map(|v| serde_json::from_slice(&v).map_err(storage)).transpose()
        })
    }

    fn put_open_period<'a>(
        &'a self,
        fence: &'a Fence,
        open: &'a OpenPeriod,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced(fence).await?;
            sqlx::query("UPDATE settled_settlement_meta SET open_period = $1")
                .bind(serde_json::to_vec(open).map_err(storage)?)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
            tx.commit().await.map_err(storage)
        })
    }

    fn close_period<'a>(
        &'a self,
        fence: &'a Fence,
        batches: &'a [StoredBatch],
        next: PeriodCursor,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(self.close(fence, batches, next))
    }

    fn batch(&self, id: u64) -> SettlementFuture<'_, Option<StoredBatch>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT body FROM settled_batches WHERE id = $1")
                .bind(int(id)?)
                .fetch_optional(self.store.pool())
                .await
                .map_err(storage)?;
            row.as_ref().map(body).transpose()
        })
    }

    fn batches(&self) -> SettlementFuture<'_, Vec<StoredBatch>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT body FROM settled_batches ORDER BY id")
                .fetch_all(self.store.pool())
                .await
                .map_err(storage)?;
            rows.iter().map(body).collect()
        })
    }

    fn put_batch<'a>(
        &'a self,
        fence: &'a Fence,
        batch: &'a StoredBatch,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.fenced(fence).await?;
            Self::upsert_batch(&mut tx, batch).await?;
            tx.commit().await.map_err(storage)
        })
    }

    fn record_usage(
        &self,
        stream: u64,
        at: u64,
        digest: B256,
    ) -> SettlementFuture<'_, (), UsageError> {
        Box::pin(self.record(stream, at, digest))
    }

    fn close_usage<'a>(
        &'a self,
        fence: &'a Fence,
        start: u64,
        end: u64,
    ) -> SettlementFuture<'a, BTreeMap<u64, B256>, UsageError> {
        Box::pin(self.close_reports(fence, start, end))
    }

    fn put_order<'a>(&'a self, po: &'a PurchaseOrder) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO settled_purchase_orders (payer, number, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (payer, number) DO UPDATE SET body = EXCLUDED.body",
            )
            .bind(po.payer.as_slice())
            .bind(&po.po_number)
            .bind(serde_json::to_vec(po).map_err(storage)?)
            .execute(self.store.pool())
            .await
            .map_err(storage)?;
            Ok(())
        })
    }

    fn orders(&self, payer: Option<Address>) -> SettlementFuture<'_, Vec<PurchaseOrder>> {
        Box::pin(self.orders_of(payer))
    }

    fn order<'a>(
        &'a self,
        payer: Address,
        number: &'a str,
    ) -> SettlementFuture<'a, Option<PurchaseOrder>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT body FROM settled_purchase_orders WHERE payer = $1 AND number = $2",
            )
            .bind(payer.as_slice())
            .bind(number)
            .fetch_optional(self.store.pool())
            .await
            .map_err(storage)?;
            row.as_ref().map(body).transpose()
        })
    }

    fn alert_states(&self) -> SettlementFuture<'_, BTreeMap<Vec<u8>, String>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT key, state FROM settled_order_alerts")
                .fetch_all(self.store.pool())
                .await
                .map_err(storage)?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("key").map_err(storage)?,
                        row.try_get("state").map_err(storage)?,
                    ))
                })
                .collect()
        })
    }

    fn put_alert_states<'a>(
        &'a self,
        fence: &'a Fence,
        states: &'a [(Vec<u8>, String)],
        raised: &'a [OrderAlert],
    ) -> SettlementFuture<'a, ()> {
        Box::pin(self.put_alerts(fence, states, raised))
    }

    fn relays_alerts(&self) -> bool {
        true
    }
}
