//! Purchase-order alerts, like the streams' `lowBalance`: after each settlement round, every
//! capped PO line whose consumption crossed into `80%`, `100%` or `over` (its cap plus
//! tolerance) raises one alert. What was alerted is stored per line (fsynced before sending), so
//! a restart neither repeats an alert nor, on the next round, misses one; a line that jumps two
//! states raises the higher only; a lowered state (a raised cap) re-arms silently.

use super::*;
use crate::procurement::{PurchaseOrder, consumption};
use crate::store::alert_key;

/// One PO line crossing into a higher state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderAlert {
    /// Who pays.
    pub payer: Address,
    /// The PO.
    pub po_number: String,
    /// The line.
    pub line_id: String,
    /// `80%`, `100%` or `over`.
    pub state: String,
    /// Base units its streams paid within the PO's validity.
    pub consumed: String,
    /// Its cap (base units).
    pub amount_cap: String,
    /// The PO's tolerance (percent).
    pub tolerance_percent: u32,
    /// The payees of the streams that paid the line (keys see alerts of their payees).
    pub payees: Vec<Address>,
}

fn rank(state: &str) -> u8 {
    match state {
        "80%" => 1,
        "100%" => 2,
        "over" => 3,
        _ => 0,
    }
}

impl Settler {
    /// New PO alerts as they are raised.
    pub fn subscribe_order_alerts(&self) -> tokio::sync::broadcast::Receiver<OrderAlert> {
        self.order_alerts.subscribe()
    }

    /// Where this node's subscribers get PO alerts from (a shared store's relay sends into it).
    pub fn order_alert_sender(&self) -> tokio::sync::broadcast::Sender<OrderAlert> {
        self.order_alerts.clone()
    }

    /// Raises the alerts of every PO line that crossed into a higher state since it was last
    /// looked at; returns them. The states are stored (fenced: the rounds' node) before any
    /// alert is sent.
    pub async fn check_order_alerts(&self) -> Result<Vec<OrderAlert>, SchedulerError> {
        let batches = self.store.batches().await?;
        let known = self.store.alert_states().await?;
        let (mut raised, mut changed) = (Vec::new(), Vec::new());
        for po in self.store.orders(None).await? {
            for line in consumption(&po, &batches) {
                let key = alert_key(&po, &line.line_id);
                let before = known.get(&key).map(String::as_str).unwrap_or_default();
                if line.state == before {
                    continue;
                }
                let higher = rank(&line.state) > rank(before);
                changed.push((key, line.state.clone()));
                if higher {
                    raised.push(self.alert_of(&po, &batches, line));
                }
            }
        }
        if !changed.is_empty() {
            self.store.put_alert_states(&self.fence()?, &changed, &raised).await?;
        }
        for alert in &raised {
            ::metrics::counter!(crate::metrics::PO_ALERTS, "state" => alert.state.clone())
                .increment(1);
            warn!(payer = %alert.payer, po = %alert.po_number, line = %alert.line_id, state = %alert.state, consumed = %alert.consumed, "purchase order line alert");
            // No subscriber is not an error: `billing_getPurchaseOrder` shows the states too.
            // A shared store relays them to every node's subscribers (this one's included).
            if !self.store.relays_alerts() {
                let _ = self.order_alerts.send(alert.clone());
            }
        }
        Ok(raised)
    }

    fn alert_of(
        &self,
        po: &PurchaseOrder,
        batches: &[StoredBatch],
        line: crate::LineConsumption,
    ) -> OrderAlert {
        let mut payees: Vec<Address> = batches
            .iter()
            .flat_map(|b| &b.records)
            .filter(|r| r.payer == po.payer)
            .filter(|r| po.line_of(r.stream_id, r.payee).is_some_and(|l| l.line_id == line.line_id))
            .map(|r| r.payee)
            .collect();
        payees.sort_unstable();
        payees.dedup();
        let cap =
            po.lines.iter().find(|l| l.line_id == line.line_id).and_then(|l| l.amount_cap.clone());
        OrderAlert {
            payer: po.payer,
            po_number: po.po_number.clone(),
            line_id: line.line_id,
            state: line.state,
            consumed: line.consumed,
            amount_cap: cap.unwrap_or_default(),
            tolerance_percent: po.tolerance_percent,
            payees,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{JAN_1_2026, batch, payer, po, record, settler};

    async fn store(settler: &Settler, batch: &StoredBatch) -> Result<(), SchedulerError> {
        settler.store.put_batch(&Fence::Exclusive, batch).await
    }

    fn states(alerts: &[OrderAlert]) -> Vec<(&str, &str)> {
        alerts.iter().map(|a| (a.line_id.as_str(), a.state.as_str())).collect()
    }

    /// 80% then over (100% skipped: one alert, the higher), never twice, not after a reopen.
    #[tokio::test]
    async fn alerts_fire_once_per_crossing_and_survive_a_restart()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let compute = Address::repeat_byte(0x22);
        {
            let db = sled::open(dir.path())?;
            let settler = settler(&db).await?;
            settler.set_purchase_order(&po(Some(5_000_000)), &[]).await?;
            let mut subscriber = settler.subscribe_order_alerts();
            assert!(settler.check_order_alerts().await?.is_empty(), "nothing consumed");
            store(
                &settler,
                &batch(
                    1,
                    JAN_1_2026,
                    JAN_1_2026 + 99,
                    vec![record(1, payer(), compute, 100, 4_100_000)],
                ),
            )
            .await?;
            let raised = settler.check_order_alerts().await?;
            assert_eq!(states(&raised), vec![("10", "80%")]);
            assert_eq!(raised[0].payees, vec![compute]);
            assert_eq!(subscriber.try_recv()?.state, "80%");
            assert!(settler.check_order_alerts().await?.is_empty(), "once per crossing");
            store(
                &settler,
                &batch(
                    2,
                    JAN_1_2026 + 100,
                    JAN_1_2026 + 199,
                    vec![record(1, payer(), compute, 100, 1_300_000)],
                ),
            )
            .await?;
            assert_eq!(states(&settler.check_order_alerts().await?), vec![("10", "over")]);
        }
        let db = settled_contracts::reopen_sled(dir.path())?;
        let settler = settler(&db).await?;
        assert!(settler.check_order_alerts().await?.is_empty(), "a restart does not repeat them");
        let mut raised_cap = po(Some(10_000_000));
        raised_cap.lines[0].amount_cap = Some("10000000".into());
        settler.set_purchase_order(&raised_cap, &[]).await?;
        assert!(settler.check_order_alerts().await?.is_empty(), "a raised cap re-arms silently");
        store(
            &settler,
            &batch(
                3,
                JAN_1_2026 + 200,
                JAN_1_2026 + 299,
                vec![record(1, payer(), compute, 100, 2_700_000)],
            ),
        )
        .await?;
        assert_eq!(states(&settler.check_order_alerts().await?), vec![("10", "80%")], "8.1 of 10");
        Ok(())
    }
}
