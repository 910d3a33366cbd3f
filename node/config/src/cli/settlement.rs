//! `--settlement.*`: settlement periods, batches and commit fees.

use super::*;

/// Settlement periods, batches and commit fees.
#[derive(Debug, Clone, Args)]
pub struct SettlementArgs {
    /// Do not settle on a timer (batches are built and committed only when asked:
    /// `settlement_runNow`, served with `--rpc.admin`).
    #[arg(
        long = "settlement.disable",
        id = "settlement.disable",
        env = "SETTLED_SETTLEMENT_DISABLE"
    )]
    pub disable: bool,

    /// Seconds between settlement periods.
    #[arg(
        long = "settlement.interval-secs",
        id = "settlement.interval-secs",
        env = "SETTLED_SETTLEMENT_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub interval_secs: u64,

    /// Streams per `withdrawBatch` transaction.
    #[arg(
        long = "settlement.withdraw-batch",
        id = "settlement.withdraw-batch",
        env = "SETTLED_SETTLEMENT_WITHDRAW_BATCH",
        default_value_t = 100
    )]
    pub withdraw_batch: usize,

    /// The highest blob base fee (wei) a commit pays; above it the batch waits for the next
    /// period.
    #[arg(
        long = "settlement.max-blob-fee-wei",
        id = "settlement.max-blob-fee-wei",
        env = "SETTLED_SETTLEMENT_MAX_BLOB_FEE_WEI",
        default_value_t = 50_000_000_000
    )]
    pub max_blob_fee_wei: u128,

    /// Seconds a settlement transaction may stay unmined before it is sent again at the same
    /// nonce with higher fees (blob fee included, within the bound).
    #[arg(
        long = "settlement.reprice-after-secs",
        id = "settlement.reprice-after-secs",
        env = "SETTLED_SETTLEMENT_REPRICE_AFTER_SECS",
        default_value_t = 60
    )]
    pub reprice_after_secs: u64,
}

impl SettlementArgs {
    /// The settlement scheduler's settings.
    pub fn into_settings(self) -> settled_settlement::SettlementSettings {
        settled_settlement::SettlementSettings {
            enabled: !self.disable,
            interval: Duration::from_secs(self.interval_secs.max(1)),
            withdraw_batch: self.withdraw_batch.max(1),
            max_blob_fee_wei: self.max_blob_fee_wei,
            reprice_after: Duration::from_secs(self.reprice_after_secs.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<SettlementArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_settings(), settled_settlement::SettlementSettings::default());
        Ok(())
    }
}
