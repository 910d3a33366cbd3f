//! Where settlement keeps its state, one atomic, durable step per method: the period cursor and
//! the open period, the batches, the billing backends' usage reports, the purchase orders and
//! their alerted states. Two backends: sled ([`SledSettlement`], one node, the embedded default)
//! and PostgreSQL ([`PgSettlement`], shared by every node: any node stores POs and usage reports
//! and answers receipts and invoices; the operator key's leader runs the rounds, and each of its
//! writes is fenced by that lease in the write's own transaction).

mod pg;
mod sled_store;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};
use settled_store::Fence;

pub use pg::PgSettlement;
pub use sled_store::SledSettlement;

use crate::{OrderAlert, PurchaseOrder, SchedulerError, StoredBatch, UsageError};

/// A boxed future, so the store is usable as `dyn SettlementStore` (the node picks the backend
/// at start).
pub type SettlementFuture<'a, T, E = SchedulerError> =
    Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// The settled periods so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodCursor {
    /// The last settled period's end (0: none yet; the first period starts at 0).
    pub period_end: u64,
    /// The next batch id.
    pub next_batch_id: u64,
}

impl Default for PeriodCursor {
    fn default() -> Self {
        Self { period_end: 0, next_batch_id: 1 }
    }
}

/// A period whose withdrawals are under way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPeriod {
    /// The withdrawal transactions sent for it so far.
    pub withdrawals: Vec<B256>,
}

/// Settlement's state. Writes that only the rounds make carry the operator key's fence.
pub trait SettlementStore: Send + Sync + std::fmt::Debug {
    /// The period cursor.
    fn cursor(&self) -> SettlementFuture<'_, PeriodCursor>;

    /// The period whose withdrawals are under way, if any.
    fn open_period(&self) -> SettlementFuture<'_, Option<OpenPeriod>>;

    /// Stores the open period under `fence`.
    fn put_open_period<'a>(
        &'a self,
        fence: &'a Fence,
        open: &'a OpenPeriod,
    ) -> SettlementFuture<'a, ()>;

    /// Closes the open period under `fence`: stores `batches` and `next` and drops the open
    /// period, together.
    fn close_period<'a>(
        &'a self,
        fence: &'a Fence,
        batches: &'a [StoredBatch],
        next: PeriodCursor,
    ) -> SettlementFuture<'a, ()>;

    /// Batch `id`.
    fn batch(&self, id: u64) -> SettlementFuture<'_, Option<StoredBatch>>;

    /// Every batch, by id.
    fn batches(&self) -> SettlementFuture<'_, Vec<StoredBatch>>;

    /// Stores `batch` (a new stage) under `fence`.
    fn put_batch<'a>(
        &'a self,
        fence: &'a Fence,
        batch: &'a StoredBatch,
    ) -> SettlementFuture<'a, ()>;

    /// Records a usage report (idempotent); refused for a second already closed.
    fn record_usage(
        &self,
        stream: u64,
        at: u64,
        digest: B256,
    ) -> SettlementFuture<'_, (), UsageError>;

    /// Closes the seconds up to `end` to new reports under `fence` and returns each stream's
    /// fold over `(start, end]` ([`crate::fold_usage`], reports by `(at, digest)`).
    fn close_usage<'a>(
        &'a self,
        fence: &'a Fence,
        start: u64,
        end: u64,
    ) -> SettlementFuture<'a, BTreeMap<u64, B256>, UsageError>;

    /// Stores `po`, replacing the payer's PO of the same number.
    fn put_order<'a>(&'a self, po: &'a PurchaseOrder) -> SettlementFuture<'a, ()>;

    /// The POs of `payer` (of everyone: `None`), by payer and number.
    fn orders(&self, payer: Option<Address>) -> SettlementFuture<'_, Vec<PurchaseOrder>>;

    /// The payer's PO `number`.
    fn order<'a>(
        &'a self,
        payer: Address,
        number: &'a str,
    ) -> SettlementFuture<'a, Option<PurchaseOrder>>;

    /// Each PO line's last alerted state, by [`alert_key`].
    fn alert_states(&self) -> SettlementFuture<'_, BTreeMap<Vec<u8>, String>>;

    /// Stores PO lines' alerted states under `fence`, together — and on a store that relays
    /// alerts ([`Self::relays_alerts`]), publishes `raised` to every node in the same step.
    fn put_alert_states<'a>(
        &'a self,
        fence: &'a Fence,
        states: &'a [(Vec<u8>, String)],
        raised: &'a [OrderAlert],
    ) -> SettlementFuture<'a, ()>;

    /// Whether [`Self::put_alert_states`] publishes the alerts to every node (which relay them
    /// to their subscribers); else the node that raised them sends them to its own.
    fn relays_alerts(&self) -> bool {
        false
    }
}

/// `payer ‖ po number`: a PO's key.
pub(crate) fn order_key(payer: Address, number: &str) -> Vec<u8> {
    let mut key = payer.to_vec();
    key.extend_from_slice(number.as_bytes());
    key
}

/// `payer ‖ po number ‖ 0 ‖ line id`: a PO line's alert key.
pub(crate) fn alert_key(po: &PurchaseOrder, line: &str) -> Vec<u8> {
    let mut key = order_key(po.payer, &po.po_number);
    key.push(0);
    key.extend_from_slice(line.as_bytes());
    key
}

/// Each stream's fold of `reports`, given in `(at, digest)` order per stream.
pub(crate) fn fold_reports(
    reports: impl IntoIterator<Item = (u64, u64, B256)>,
) -> BTreeMap<u64, B256> {
    let mut folds = BTreeMap::new();
    for (at, stream, digest) in reports {
        let fold: &mut B256 = folds.entry(stream).or_default();
        *fold = crate::fold_usage(*fold, at, digest);
    }
    folds
}

pub(crate) fn storage(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Storage(e.to_string())
}

pub(crate) fn usage_storage(e: impl std::fmt::Display) -> UsageError {
    UsageError::Storage(e.to_string())
}

#[cfg(any(test, feature = "testing"))]
pub mod contract;
