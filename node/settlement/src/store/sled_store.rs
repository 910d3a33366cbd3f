//! Settlement's state in sled: one node (the database file is locked by one process, so every
//! fence is that process's). Trees as before this store existed, so a node's data carries over.

use std::collections::BTreeMap;
use std::sync::Mutex;

use alloy::primitives::{Address, B256};
use settled_store::Fence;

use super::{
    OpenPeriod, PeriodCursor, SettlementFuture, SettlementStore, fold_reports, order_key, storage,
    usage_storage,
};
use crate::{OrderAlert, PurchaseOrder, SchedulerError, StoredBatch, UsageError};

const CURSOR: &[u8] = b"cursor";
const OPEN: &[u8] = b"open";

/// Settlement's trees in one sled database.
#[derive(Debug)]
pub struct SledSettlement {
    meta: sled::Tree,
    batches: sled::Tree,
    usage: sled::Tree,
    orders: sled::Tree,
    alerts: sled::Tree,
    /// The lowest second still accepted: raised before a period's reports are read, under the
    /// same lock as every insert, so no report lands in a period after it was read.
    floor: Mutex<u64>,
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, SchedulerError> {
    serde_json::from_slice(bytes).map_err(storage)
}

/// A blocking flush (sled 0.34's `flush_async` can hang: spacejam/sled#1308).
fn flush(tree: &sled::Tree) -> Result<(), SchedulerError> {
    tree.flush().map(|_| ()).map_err(storage)
}

impl SledSettlement {
    /// Settlement's trees in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, SchedulerError> {
        let meta = db.open_tree("settlement.meta").map_err(storage)?;
        let settled_through = match meta.get(CURSOR).map_err(storage)? {
            Some(v) => json::<PeriodCursor>(&v)?.period_end,
            None => 0,
        };
        Ok(Self {
            meta,
            batches: db.open_tree("settlement.batches").map_err(storage)?,
            usage: db.open_tree("settlement.usage").map_err(storage)?,
            orders: db.open_tree("procurement.orders").map_err(storage)?,
            alerts: db.open_tree("procurement.alerts").map_err(storage)?,
            floor: Mutex::new(settled_through.saturating_add(1)),
        })
    }

    fn cursor_now(&self) -> Result<PeriodCursor, SchedulerError> {
        Ok(self
            .meta
            .get(CURSOR)
            .map_err(storage)?
            .map(|v| json(&v))
            .transpose()?
            .unwrap_or_default())
    }

    fn write_batch(&self, batch: &StoredBatch) -> Result<(), SchedulerError> {
        let value = serde_json::to_vec(batch).map_err(storage)?;
        self.batches.insert(batch.context.batch_id.to_be_bytes(), value).map_err(storage)?;
        flush(&self.batches)
    }

    fn close(&self, batches: &[StoredBatch], next: PeriodCursor) -> Result<(), SchedulerError> {
        let mut writes = sled::Batch::default();
        for batch in batches {
            writes.insert(
                &batch.context.batch_id.to_be_bytes(),
                serde_json::to_vec(batch).map_err(storage)?,
            );
        }
        let cursor = serde_json::to_vec(&next).map_err(storage)?;
        use sled::Transactional;
        (&self.batches, &self.meta)
            .transaction(|(b, m)| {
                b.apply_batch(&writes)?;
                m.insert(CURSOR, cursor.clone())?;
                m.remove(OPEN)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| storage(format!("{e:?}")))?;
        flush(&self.batches)
    }

    fn record(&self, stream: u64, at: u64, digest: B256) -> Result<(), UsageError> {
        let floor = self.floor.lock().map_err(usage_storage)?;
        if at < *floor {
            return Err(UsageError::Settled { at, settled_through: *floor - 1 });
        }
        self.usage.insert(usage_key(at, stream, digest), &[]).map_err(usage_storage)?;
        self.usage.flush().map_err(usage_storage)?;
        Ok(())
    }

    fn close_reports(&self, start: u64, end: u64) -> Result<BTreeMap<u64, B256>, UsageError> {
        {
            let mut floor = self.floor.lock().map_err(usage_storage)?;
            *floor = (*floor).max(end.saturating_add(1));
        }
        let from = start.saturating_add(1).to_be_bytes();
        let through = end.saturating_add(1).to_be_bytes();
        let reports = self
            .usage
            .range(from..through)
            .map(|entry| {
                let (key, _) = entry.map_err(usage_storage)?;
                parse_usage_key(&key).ok_or_else(|| usage_storage("malformed usage key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Keys are `at ‖ stream ‖ digest`: per stream, already in (at, digest) order.
        Ok(fold_reports(reports))
    }

    fn all_orders(&self, payer: Option<Address>) -> Result<Vec<PurchaseOrder>, SchedulerError> {
        let prefix = payer.map(|p| p.to_vec()).unwrap_or_default();
        self.orders.scan_prefix(prefix).map(|entry| json(&entry.map_err(storage)?.1)).collect()
    }

    fn put_alerts(&self, states: &[(Vec<u8>, String)]) -> Result<(), SchedulerError> {
        for (key, state) in states {
            self.alerts.insert(key.as_slice(), state.as_bytes()).map_err(storage)?;
        }
        flush(&self.alerts)
    }
}

fn usage_key(at: u64, stream: u64, digest: B256) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..16].copy_from_slice(&stream.to_be_bytes());
    key[16..].copy_from_slice(digest.as_slice());
    key
}

fn parse_usage_key(key: &[u8]) -> Option<(u64, u64, B256)> {
    let key: &[u8; 48] = key.try_into().ok()?;
    let at = u64::from_be_bytes(key[..8].try_into().ok()?);
    let stream = u64::from_be_bytes(key[8..16].try_into().ok()?);
    Some((at, stream, B256::from_slice(&key[16..])))
}

/// Runs `f` now: sled's calls block briefly (a flush is one fsync), as they did before this
/// store was a trait.
fn ready<'a, T: Send + 'a, E: Send + 'a>(result: Result<T, E>) -> SettlementFuture<'a, T, E> {
    Box::pin(std::future::ready(result))
}

impl SettlementStore for SledSettlement {
    fn cursor(&self) -> SettlementFuture<'_, PeriodCursor> {
        ready(self.cursor_now())
    }

    fn open_period(&self) -> SettlementFuture<'_, Option<OpenPeriod>> {
        ready(self.meta.get(OPEN).map_err(storage).and_then(|v| v.map(|v| json(&v)).transpose()))
    }

    fn put_open_period<'a>(
        &'a self,
        _fence: &'a Fence,
        open: &'a OpenPeriod,
    ) -> SettlementFuture<'a, ()> {
        let result = serde_json::to_vec(open)
            .map_err(storage)
            .and_then(|v| self.meta.insert(OPEN, v).map_err(storage))
            .and_then(|_| flush(&self.meta));
        ready(result)
    }

    fn close_period<'a>(
        &'a self,
        _fence: &'a Fence,
        batches: &'a [StoredBatch],
        next: PeriodCursor,
    ) -> SettlementFuture<'a, ()> {
        ready(self.close(batches, next))
    }

    fn batch(&self, id: u64) -> SettlementFuture<'_, Option<StoredBatch>> {
        let got = self.batches.get(id.to_be_bytes()).map_err(storage);
        ready(got.and_then(|v| v.map(|v| json(&v)).transpose()))
    }

    fn batches(&self) -> SettlementFuture<'_, Vec<StoredBatch>> {
        ready(self.batches.iter().map(|entry| json(&entry.map_err(storage)?.1)).collect())
    }

    fn put_batch<'a>(
        &'a self,
        _fence: &'a Fence,
        batch: &'a StoredBatch,
    ) -> SettlementFuture<'a, ()> {
        ready(self.write_batch(batch))
    }

    fn record_usage(
        &self,
        stream: u64,
        at: u64,
        digest: B256,
    ) -> SettlementFuture<'_, (), UsageError> {
        ready(self.record(stream, at, digest))
    }

    fn close_usage<'a>(
        &'a self,
        _fence: &'a Fence,
        start: u64,
        end: u64,
    ) -> SettlementFuture<'a, BTreeMap<u64, B256>, UsageError> {
        ready(self.close_reports(start, end))
    }

    fn put_order<'a>(&'a self, po: &'a PurchaseOrder) -> SettlementFuture<'a, ()> {
        let result = serde_json::to_vec(po)
            .map_err(storage)
            .and_then(|v| {
                self.orders.insert(order_key(po.payer, &po.po_number), v).map_err(storage)
            })
            .and_then(|_| flush(&self.orders));
        ready(result)
    }

    fn orders(&self, payer: Option<Address>) -> SettlementFuture<'_, Vec<PurchaseOrder>> {
        ready(self.all_orders(payer))
    }

    fn order<'a>(
        &'a self,
        payer: Address,
        number: &'a str,
    ) -> SettlementFuture<'a, Option<PurchaseOrder>> {
        let got = self.orders.get(order_key(payer, number)).map_err(storage);
        ready(got.and_then(|v| v.map(|v| json(&v)).transpose()))
    }

    fn alert_states(&self) -> SettlementFuture<'_, BTreeMap<Vec<u8>, String>> {
        let states = self
            .alerts
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(storage)?;
                Ok((key.to_vec(), String::from_utf8_lossy(&value).into_owned()))
            })
            .collect();
        ready(states)
    }

    fn put_alert_states<'a>(
        &'a self,
        _fence: &'a Fence,
        states: &'a [(Vec<u8>, String)],
        _raised: &'a [OrderAlert],
    ) -> SettlementFuture<'a, ()> {
        ready(self.put_alerts(states))
    }
}
