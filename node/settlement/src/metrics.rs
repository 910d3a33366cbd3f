//! The settlement scheduler's metrics (scope `settled_settlement_`).

use metrics::{describe_counter, describe_gauge};

/// Counter: batches committed on chain.
pub(crate) const BATCHES: &str = "settled_settlement_batches_committed_total";
/// Gauge: records in the last committed batch (one blob).
pub(crate) const RECORDS_PER_BLOB: &str = "settled_settlement_records_per_blob";
/// Gauge: gas of the last commit transaction.
pub(crate) const COMMIT_GAS: &str = "settled_settlement_commit_gas";
/// Gauge: blob gas of the last commit transaction.
pub(crate) const COMMIT_BLOB_GAS: &str = "settled_settlement_commit_blob_gas";
/// Counter: `withdrawBatch` transactions sent.
pub(crate) const WITHDRAWALS: &str = "settled_settlement_withdrawal_transactions_total";
/// Counter: settlement transactions sent again at their nonce with higher fees, by kind.
pub(crate) const REPRICED: &str = "settled_settlement_repriced_total";
/// Gauge: seconds from the last settled period's end to the last round.
pub(crate) const LAG: &str = "settled_settlement_lag_seconds";
/// Counter: what settling cost (gwei, rounded down; exact wei per batch in
/// `settlement_getBatch`), by kind: withdrawal_gas, withdrawal_l1_fee, anchor_gas, anchor_blob.
pub(crate) const COST_GWEI: &str = "settled_settlement_cost_gwei_total";
/// Counter: purchase-order line alerts raised, by state (80%, 100%, over).
pub(crate) const PO_ALERTS: &str = "settled_settlement_purchase_order_alerts_total";
/// Counter: rounds that failed or waited, by cause.
pub(crate) const FAILURES: &str = "settled_settlement_failures_total";

/// Registers the descriptions of the settlement metrics.
pub fn describe_metrics() {
    describe_counter!(BATCHES, "Settlement batches committed on chain");
    describe_gauge!(RECORDS_PER_BLOB, "Records in the last committed settlement batch (one blob)");
    describe_gauge!(COMMIT_GAS, "Gas used by the last settlement commit transaction");
    describe_gauge!(COMMIT_BLOB_GAS, "Blob gas used by the last settlement commit transaction");
    describe_counter!(WITHDRAWALS, "withdrawBatch transactions sent by settlement");
    describe_counter!(
        REPRICED,
        "Settlement transactions re-priced after --settlement.reprice-after-secs unmined, by kind (commit, withdrawal)"
    );
    describe_counter!(
        COST_GWEI,
        "What settlement cost in gwei, by kind (withdrawal_gas, withdrawal_l1_fee on the streams' chain; anchor_gas, anchor_blob on the anchor chain)"
    );
    describe_counter!(
        PO_ALERTS,
        "Purchase-order line alerts raised, by state (80%, 100%, over of the line's cap)"
    );
    describe_gauge!(LAG, "Seconds between the last settled period's end and the last round");
    describe_counter!(
        FAILURES,
        "Settlement rounds that failed or waited, by cause (chain, storage, index, settlement, blob_fee)"
    );
    // Served from the start at zero, not only after their first event.
    for counter in [BATCHES, WITHDRAWALS, REPRICED] {
        metrics::counter!(counter).increment(0);
    }
    for kind in ["withdrawal_gas", "withdrawal_l1_fee", "anchor_gas", "anchor_blob"] {
        metrics::counter!(COST_GWEI, "kind" => kind).increment(0);
    }
}

/// Adds `wei` to the cost counter of `kind` (in gwei).
pub(crate) fn add_cost(kind: &'static str, wei: u128) {
    let gwei = u64::try_from(wei / 1_000_000_000).unwrap_or(u64::MAX);
    metrics::counter!(COST_GWEI, "kind" => kind).increment(gwei);
}
