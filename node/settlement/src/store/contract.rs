//! The contract every [`SettlementStore`] keeps, run against sled here and against PostgreSQL
//! in `tests/tests/store.rs` (through [`crate::store_contract`]).

use alloy::primitives::B256;
use settled_store::Fence;

use super::{OpenPeriod, PeriodCursor, SettlementStore, alert_key};
use crate::fixtures::{JAN_1_2026, batch, payer, po, record};
use crate::{UsageError, fold_usage};

/// A contract check's result.
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Usage reports fold per stream by (at, digest), a repeat counts once, the end is inclusive,
/// and a closed second is refused.
pub async fn usage_reports_fold_and_close(store: &dyn SettlementStore, fence: &Fence) -> Outcome {
    let (a, b, c) = (B256::repeat_byte(0xa), B256::repeat_byte(0xb), B256::repeat_byte(0xc));
    store.close_usage(fence, 0, 100).await?;
    assert_eq!(
        store.record_usage(1, 100, a).await,
        Err(UsageError::Settled { at: 100, settled_through: 100 })
    );
    store.record_usage(1, 150, b).await?;
    store.record_usage(1, 120, a).await?;
    store.record_usage(1, 120, a).await?;
    store.record_usage(2, 200, c).await?;
    store.record_usage(1, 201, c).await?;
    let folds = store.close_usage(fence, 100, 200).await?;
    let expected = fold_usage(fold_usage(B256::ZERO, 120, a), 150, b);
    assert_eq!(folds.get(&1), Some(&expected), "by (at, digest), the repeat once");
    assert_eq!(folds.get(&2), Some(&fold_usage(B256::ZERO, 200, c)), "the end is inclusive");
    assert_eq!(folds.len(), 2);
    assert_eq!(
        store.record_usage(1, 200, a).await,
        Err(UsageError::Settled { at: 200, settled_through: 200 }),
        "closed as soon as the period is read"
    );
    let next = store.close_usage(fence, 200, 300).await?;
    assert_eq!(next.get(&1), Some(&fold_usage(B256::ZERO, 201, c)));
    Ok(())
}

/// The open period, the cursor and the batches move together; POs and alert states round-trip.
pub async fn periods_batches_and_orders(store: &dyn SettlementStore, fence: &Fence) -> Outcome {
    assert_eq!(store.cursor().await?, PeriodCursor::default());
    assert_eq!(store.open_period().await?, None);
    let open = OpenPeriod { withdrawals: vec![B256::repeat_byte(7)] };
    store.put_open_period(fence, &open).await?;
    assert_eq!(store.open_period().await?, Some(open));
    let first = batch(1, JAN_1_2026, JAN_1_2026 + 99, vec![record(1, payer(), payer(), 100, 5)]);
    let second = batch(2, JAN_1_2026, JAN_1_2026 + 99, vec![record(2, payer(), payer(), 100, 7)]);
    let next = PeriodCursor { period_end: JAN_1_2026 + 99, next_batch_id: 3 };
    store.close_period(fence, &[first.clone(), second.clone()], next).await?;
    assert_eq!(store.cursor().await?, next);
    assert_eq!(store.open_period().await?, None, "closed with the batches");
    assert_eq!(store.batches().await?, vec![first.clone(), second]);
    let mut sent = first;
    sent.stage = crate::BatchStage::Committed { transaction: B256::repeat_byte(9), block: 4 };
    store.put_batch(fence, &sent).await?;
    assert_eq!(store.batch(1).await?, Some(sent));
    assert_eq!(store.batch(3).await?, None);
    let order = po(Some(5_000_000));
    store.put_order(&order).await?;
    store.put_order(&order).await?;
    assert_eq!(store.orders(Some(order.payer)).await?, vec![order.clone()]);
    assert_eq!(store.orders(None).await?.len(), 1);
    assert_eq!(store.order(order.payer, &order.po_number).await?, Some(order.clone()));
    assert_eq!(store.order(order.payer, "other").await?, None);
    let key = alert_key(&order, "10");
    store.put_alert_states(fence, &[(key.clone(), "80%".into())], &[]).await?;
    store.put_alert_states(fence, &[(key.clone(), "over".into())], &[]).await?;
    assert_eq!(store.alert_states().await?.get(&key).map(String::as_str), Some("over"));
    Ok(())
}

#[cfg(test)]
mod sled_backend {
    use super::*;
    use crate::store::SledSettlement;

    fn open() -> (tempfile::TempDir, SledSettlement) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        (dir, SledSettlement::open(&db).expect("trees"))
    }

    #[tokio::test]
    async fn usage_reports() -> Outcome {
        let (_dir, store) = open();
        usage_reports_fold_and_close(&store, &Fence::Exclusive).await
    }

    #[tokio::test]
    async fn periods_and_orders() -> Outcome {
        let (_dir, store) = open();
        periods_batches_and_orders(&store, &Fence::Exclusive).await
    }

    /// The floor survives a restart: it is the cursor's period end.
    #[tokio::test]
    async fn a_reopened_store_refuses_settled_seconds() -> Outcome {
        let dir = tempfile::tempdir()?;
        {
            let db = sled::open(dir.path())?;
            let store = SledSettlement::open(&db)?;
            let next = PeriodCursor { period_end: 500, next_batch_id: 1 };
            store.close_period(&Fence::Exclusive, &[], next).await?;
        }
        let db = settled_contracts::reopen_sled(dir.path())?;
        let store = SledSettlement::open(&db)?;
        assert!(matches!(
            store.record_usage(1, 500, B256::ZERO).await,
            Err(UsageError::Settled { .. })
        ));
        store.record_usage(1, 501, B256::ZERO).await?;
        Ok(())
    }
}
