//! Purchase orders kept with the batches: stored per payer and number in sled (fsynced), one
//! PO per payer at any second, each line's consumption read from the settled batches.

use super::*;
use crate::procurement::{LineConsumption, PoError, PurchaseOrder, consumption};

/// `payer ‖ po number`.
fn order_key(payer: Address, number: &str) -> Vec<u8> {
    let mut key = payer.to_vec();
    key.extend_from_slice(number.as_bytes());
    key
}

/// Why a purchase order could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The PO itself.
    #[error(transparent)]
    Refused(#[from] PoError),
    /// The currency is not the one of the payer's tokens.
    #[error("currency {po} is not the payer's token currency {token}")]
    Currency {
        /// The PO's.
        po: String,
        /// The token's.
        token: String,
    },
    /// The store.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

impl Settler {
    /// The currency code of `token` (`None`: not configured).
    pub fn currency_of(&self, token: Address) -> Option<&str> {
        self.currencies.get(&token).map(|c| c.code.as_str())
    }

    /// Stores `po` (replacing the payer's PO of the same number) after its own checks, its
    /// currency against `tokens` (the payer's tokens) and the payer's other POs' validity.
    pub fn set_purchase_order(
        &self,
        po: &PurchaseOrder,
        tokens: &[Address],
    ) -> Result<(), OrderError> {
        po.check()?;
        for token in tokens {
            let currency = self.currency_of(*token).unwrap_or("unconfigured");
            if currency != po.currency {
                return Err(OrderError::Currency {
                    po: po.currency.clone(),
                    token: currency.into(),
                });
            }
        }
        for other in self.purchase_orders(po.payer)? {
            if other.po_number != po.po_number && po.overlaps(&other) {
                return Err(PoError::Overlaps {
                    po: po.po_number.clone(),
                    other: other.po_number,
                    from: other.valid_from,
                    to: other.valid_to,
                }
                .into());
            }
        }
        let value = serde_json::to_vec(po).map_err(storage)?;
        self.orders.insert(order_key(po.payer, &po.po_number), value).map_err(storage)?;
        self.orders.flush().map_err(storage)?;
        self.order_alerts_due.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The payer's purchase orders, by number.
    pub fn purchase_orders(&self, payer: Address) -> Result<Vec<PurchaseOrder>, SchedulerError> {
        self.orders
            .scan_prefix(payer.as_slice())
            .map(|entry| {
                let (_, value) = entry.map_err(storage)?;
                serde_json::from_slice(&value).map_err(storage)
            })
            .collect()
    }

    /// The payer's PO `number`, if stored.
    pub fn purchase_order(
        &self,
        payer: Address,
        number: &str,
    ) -> Result<Option<PurchaseOrder>, SchedulerError> {
        self.orders
            .get(order_key(payer, number))
            .map_err(storage)?
            .map(|v| serde_json::from_slice(&v).map_err(storage))
            .transpose()
    }

    /// Each line's consumption of `po` over every stored batch.
    pub fn consumption(&self, po: &PurchaseOrder) -> Result<Vec<LineConsumption>, SchedulerError> {
        Ok(consumption(po, &self.stored_batches()?))
    }

    /// Every stored batch, in id order (purchase orders and documents read them all).
    pub(crate) fn stored_batches(&self) -> Result<Vec<StoredBatch>, SchedulerError> {
        self.batches
            .iter()
            .map(|entry| {
                let (_, value) = entry.map_err(storage)?;
                serde_json::from_slice::<StoredBatch>(&value).map_err(storage)
            })
            .collect()
    }
}
