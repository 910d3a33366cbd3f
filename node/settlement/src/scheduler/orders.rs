//! Purchase orders kept with the batches: stored per payer and number in the settlement store
//! (durable before the answer), one PO per payer at any second, each line's consumption read
//! from the settled batches.

use super::*;
use crate::procurement::{LineConsumption, PoError, PurchaseOrder, consumption};

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
    pub async fn set_purchase_order(
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
        for other in self.purchase_orders(po.payer).await? {
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
        self.store.put_order(po).await?;
        self.order_alerts_due.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The payer's purchase orders, by number.
    pub async fn purchase_orders(
        &self,
        payer: Address,
    ) -> Result<Vec<PurchaseOrder>, SchedulerError> {
        self.store.orders(Some(payer)).await
    }

    /// The payer's PO `number`, if stored.
    pub async fn purchase_order(
        &self,
        payer: Address,
        number: &str,
    ) -> Result<Option<PurchaseOrder>, SchedulerError> {
        self.store.order(payer, number).await
    }

    /// Each line's consumption of `po` over every stored batch.
    pub async fn consumption(
        &self,
        po: &PurchaseOrder,
    ) -> Result<Vec<LineConsumption>, SchedulerError> {
        Ok(consumption(po, &self.store.batches().await?))
    }
}
