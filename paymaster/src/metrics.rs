//! The paymaster's Prometheus metrics, scoped `settled_paymaster_`, each described once
//! ([`describe_metrics`], called by the node after it installs the recorder).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter: sponsorships signed (`pm_getPaymasterData` answered).
pub(crate) const SIGNATURES: &str = "settled_paymaster_signatures_total";
/// Counter: requests refused, labelled with the policy `rule` (or `request` for bad input).
pub(crate) const REJECTIONS: &str = "settled_paymaster_rejections_total";
/// Counter: sponsored ops seen mined.
pub(crate) const SPONSORED_OPS: &str = "settled_paymaster_sponsored_ops_total";
/// Gauge: wei the deposit paid for sponsored ops, all time (the ledger's exact total, as float).
pub(crate) const SPONSORED_WEI: &str = "settled_paymaster_sponsored_wei";
/// Gauge: open reservations (signed, not mined, not expired).
pub(crate) const RESERVATIONS_OPEN: &str = "settled_paymaster_reservations_open";
/// Gauge: worst-case wei of the open reservations.
pub(crate) const RESERVED_WEI: &str = "settled_paymaster_reserved_wei";
/// Gauge: the paymaster's deposit at each `entry_point`.
pub(crate) const DEPOSIT_WEI: &str = "settled_paymaster_deposit_wei";
/// Gauge: the paymaster's stake at each `entry_point`.
pub(crate) const STAKE_WEI: &str = "settled_paymaster_stake_wei";
/// Gauge: 1 when the deposit at `entry_point` is below the warning threshold.
pub(crate) const DEPOSIT_LOW: &str = "settled_paymaster_deposit_low";
/// Histogram: seconds to answer `pm_getPaymasterData` (policy, reservation, signature, guard).
pub(crate) const SIGN_SECONDS: &str = "settled_paymaster_sign_seconds";

/// Registers the descriptions (`# HELP`) of the paymaster's metrics.
pub fn describe_metrics() {
    describe_counter!(SIGNATURES, "Sponsorships signed (pm_getPaymasterData answered)");
    describe_counter!(REJECTIONS, "Sponsorship requests refused, by policy rule");
    describe_counter!(SPONSORED_OPS, "Sponsored UserOperations seen mined");
    describe_gauge!(SPONSORED_WEI, "Wei the paymaster deposit paid for sponsored ops, all time");
    describe_gauge!(RESERVATIONS_OPEN, "Sponsorships signed and not yet mined or expired");
    describe_gauge!(RESERVED_WEI, "Worst-case wei of the open sponsorships");
    describe_gauge!(DEPOSIT_WEI, "Paymaster deposit at the EntryPoint");
    describe_gauge!(STAKE_WEI, "Paymaster stake at the EntryPoint");
    describe_gauge!(DEPOSIT_LOW, "1 when the paymaster deposit is below the warning threshold");
    describe_histogram!(SIGN_SECONDS, Unit::Seconds, "Answering pm_getPaymasterData");
    // Served from the start at zero, not only after their first event.
    for counter in [SIGNATURES, SPONSORED_OPS] {
        metrics::counter!(counter).increment(0);
    }
}
