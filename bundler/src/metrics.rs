//! The bundler's Prometheus metrics, scoped `settled_bundler_`, each described once
//! ([`describe_metrics`], called by the node after it installs the recorder).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Gauge: ops in the mempool.
pub(crate) const MEMPOOL_OPS: &str = "settled_bundler_mempool_ops";
/// Counter: `eth_sendUserOperation` calls.
pub(crate) const OPS_RECEIVED: &str = "settled_bundler_ops_received_total";
/// Counter: ops accepted into the mempool.
pub(crate) const OPS_ACCEPTED: &str = "settled_bundler_ops_accepted_total";
/// Counter: ops refused, labelled with the ERC-7769 `code`.
pub(crate) const OPS_REJECTED: &str = "settled_bundler_ops_rejected_total";
/// Counter: ops dropped from the mempool before inclusion, labelled with the `reason`.
pub(crate) const OPS_DROPPED: &str = "settled_bundler_ops_dropped_total";
/// Counter: ops seen mined (`UserOperationEvent`), by anyone.
pub(crate) const OPS_MINED: &str = "settled_bundler_ops_mined_total";
/// Counter: bundles sent.
pub(crate) const BUNDLES_SENT: &str = "settled_bundler_bundles_sent_total";
/// Counter: bundles mined.
pub(crate) const BUNDLES_MINED: &str = "settled_bundler_bundles_mined_total";
/// Counter: bundle transactions replaced with higher fees (not mined in time).
pub(crate) const BUNDLES_REPLACED: &str = "settled_bundler_bundles_replaced_total";
/// Counter: bundles that reverted or could not be sent.
pub(crate) const BUNDLES_FAILED: &str = "settled_bundler_bundles_failed_total";
/// Counter: bundles not sent because they would cost more than their ops pay (L1 fee chains).
pub(crate) const BUNDLES_UNPROFITABLE: &str = "settled_bundler_bundles_unprofitable_total";
/// Gauge: the L1 data fee of the last bundle built (wei; OP stack).
pub(crate) const BUNDLE_L1_FEE_WEI: &str = "settled_bundler_bundle_l1_fee_wei";
/// Histogram: gas used by mined bundles.
pub(crate) const BUNDLE_GAS: &str = "settled_bundler_bundle_gas_used";
/// Histogram: seconds from picking a bundle's ops to sending it (second validation, estimate).
pub(crate) const BUNDLE_BUILD_SECONDS: &str = "settled_bundler_bundle_build_seconds";
/// Histogram: seconds per first validation of an op.
pub(crate) const VALIDATION_SECONDS: &str = "settled_bundler_validation_seconds";

/// Registers the descriptions (`# HELP`) of the bundler's metrics.
pub fn describe_metrics() {
    describe_gauge!(MEMPOOL_OPS, "UserOperations in the mempool");
    describe_counter!(OPS_RECEIVED, "eth_sendUserOperation calls");
    describe_counter!(OPS_ACCEPTED, "UserOperations accepted into the mempool");
    describe_counter!(OPS_REJECTED, "UserOperations refused, by ERC-7769 error code");
    describe_counter!(OPS_DROPPED, "UserOperations dropped from the mempool before inclusion");
    describe_counter!(OPS_MINED, "UserOperationEvents seen on chain");
    describe_counter!(
        BUNDLES_UNPROFITABLE,
        "Bundles not sent: their gas and L1 data fee exceed what their ops pay"
    );
    describe_gauge!(BUNDLE_L1_FEE_WEI, Unit::Count, "L1 data fee of the last bundle built, wei");
    describe_counter!(BUNDLES_SENT, "Bundles (handleOps transactions) sent");
    describe_counter!(BUNDLES_MINED, "Bundles mined");
    describe_counter!(BUNDLES_REPLACED, "Bundle transactions replaced with higher fees");
    describe_counter!(BUNDLES_FAILED, "Bundles that reverted or could not be sent");
    describe_histogram!(BUNDLE_GAS, "Gas used by mined bundles");
    describe_histogram!(
        BUNDLE_BUILD_SECONDS,
        Unit::Seconds,
        "Building a bundle: second validation of its ops and the node's gas estimate"
    );
    describe_histogram!(VALIDATION_SECONDS, Unit::Seconds, "First validation of a UserOperation");
    // Served from the start at zero, not only after their first event: a dashboard or an alert
    // on a rate needs the series before anything happened.
    for counter in [
        OPS_RECEIVED,
        OPS_ACCEPTED,
        OPS_MINED,
        BUNDLES_SENT,
        BUNDLES_MINED,
        BUNDLES_REPLACED,
        BUNDLES_FAILED,
    ] {
        metrics::counter!(counter).increment(0);
    }
}
